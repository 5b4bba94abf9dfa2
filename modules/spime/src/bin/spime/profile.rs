//! The profile directory: `account.toml`, `key.pem`, `claims.toml`, `keys.toml` (the
//! ScopeNode keys found for `--encrypt`), and `serve.pid`/`serve.log` of `serve --daemon`.

use std::path::{Path, PathBuf};

use openspime::{RsaPrivateKey, RsaPublicKey};
use serde::{Deserialize, Serialize};
use spime::KeySource;

/// How long a found ScopeNode key is used before it is looked up again (a key that stops
/// working is looked up again at once: see `report` in main.rs).
pub const KEY_TTL_SECS: i64 = 86_400;

/// `account.toml`
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Account {
    /// Full JID we log in as.
    pub jid: String,
    /// Password of the account.
    pub password: String,
    /// STARTTLS address of the server.
    pub server: String,
    /// Certificate/CA to trust, when not the system roots.
    pub ca: Option<PathBuf>,
    /// Certification service with our key (and where ScopeNode keys are looked up first).
    pub cert: String,
    /// PubSub service with the spimeseek node.
    pub pubsub: String,
}

/// One claim key we hold.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct HeldClaim {
    /// The claimed spime.
    pub spime: String,
    /// Who it authorizes (us: our full JID, or our bare JID).
    pub authorizes: String,
    /// The claim key, as the spime issued it.
    pub claimkey: String,
    /// Certification service of the spime's key.
    pub cert: String,
}

/// `claims.toml`
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct Claims {
    /// Held claim keys.
    #[serde(default)]
    pub claims: Vec<HeldClaim>,
}

/// A ScopeNode key found for `--encrypt`, kept so the next report need not look it up.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct CachedKey {
    /// The scope JID it encrypts to (as given to `--to`).
    pub to: String,
    /// Where it was found (for `keys.toml` readers: "cert.localhost (demo@…)" or "… itself").
    pub source: String,
    /// When it was found (seconds since the epoch).
    pub found_unix: i64,
    /// The key (SubjectPublicKeyInfo PEM).
    pub pem: String,
}

/// `keys.toml`
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct KeyCache {
    /// Found keys, one per scope JID.
    #[serde(default)]
    pub keys: Vec<CachedKey>,
}

/// The profile directory.
pub struct Profile {
    /// Where it is.
    pub dir: PathBuf,
}

fn err(msg: impl std::fmt::Display) -> String {
    msg.to_string()
}

impl Profile {
    /// The profile at `--profile`, `$SPIME_PROFILE`, or `~/.spime`.
    pub fn at(dir: Option<PathBuf>) -> Profile {
        let dir = dir
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".spime")))
            .unwrap_or_else(|| PathBuf::from(".spime"));
        Profile { dir }
    }

    /// `key.pem`
    pub fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// Our private key.
    pub fn key(&self) -> Result<RsaPrivateKey, String> {
        let pem = std::fs::read_to_string(self.key_path()).map_err(|_| {
            format!(
                "no key in {} (run `spime keygen` or `spime register`)",
                self.dir.display()
            )
        })?;
        openspime::crypto::private_key_from_pem(&pem).map_err(err)
    }

    /// Writes a new private key (mode 0600).
    pub fn save_key(&self, key: &RsaPrivateKey) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        write_private(
            &self.key_path(),
            openspime::crypto::private_key_to_pem(key)
                .map_err(err)?
                .as_bytes(),
        )
    }

    /// `account.toml`
    pub fn account(&self) -> Result<Account, String> {
        let text = std::fs::read_to_string(self.dir.join("account.toml")).map_err(|_| {
            format!(
                "no account in {} (run `spime register` first)",
                self.dir.display()
            )
        })?;
        toml::from_str(&text)
            .map_err(|e| format!("{}: {e}", self.dir.join("account.toml").display()))
    }

    /// Writes `name` (mode 0600: it may hold a password or claim keys).
    pub fn save<T: Serialize>(&self, name: &str, value: &T) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        let text = toml::to_string(value).map_err(err)?;
        write_private(&self.dir.join(name), text.as_bytes())
    }

    /// `claims.toml` (empty when absent or unreadable).
    pub fn claims(&self) -> Claims {
        self.read_or_default("claims.toml")
    }

    /// The cached key for `to`, if it is younger than [`KEY_TTL_SECS`].
    pub fn cached_key(&self, to: &str, now_unix: i64) -> Option<RsaPublicKey> {
        let cache: KeyCache = self.read_or_default("keys.toml");
        cache
            .keys
            .into_iter()
            .find(|k| k.to == to && now_unix - k.found_unix < KEY_TTL_SECS)
            .and_then(|k| openspime::crypto::public_key_from_pem(&k.pem).ok())
    }

    /// Remembers the key found for `to`.
    pub fn cache_key(
        &self,
        to: &str,
        key: &RsaPublicKey,
        source: &KeySource,
        now_unix: i64,
    ) -> Result<(), String> {
        let mut cache: KeyCache = self.read_or_default("keys.toml");
        cache.keys.retain(|k| k.to != to);
        cache.keys.push(CachedKey {
            to: to.to_owned(),
            source: source.to_string(),
            found_unix: now_unix,
            pem: openspime::crypto::public_key_to_pem(key).map_err(err)?,
        });
        self.save("keys.toml", &cache)
    }

    /// `serve.pid` of `serve --daemon`.
    pub fn pid_path(&self) -> PathBuf {
        self.dir.join("serve.pid")
    }

    /// `serve.log` of `serve --daemon`.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("serve.log")
    }

    fn read_or_default<T: for<'de> Deserialize<'de> + Default>(&self, name: &str) -> T {
        std::fs::read_to_string(self.dir.join(name))
            .ok()
            .and_then(|t| toml::from_str(&t).ok())
            .unwrap_or_default()
    }
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        f.write_all(bytes)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}
