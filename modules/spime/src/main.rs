//! `spime`: the OpenSpime command line for devices and their owners.
//!
//! Credentials and keys live in a profile directory (`--profile`, `$SPIME_PROFILE`,
//! default `~/.spime`): `account.toml`, `key.pem`, `claims.toml`. Every option can also be
//! set through the environment variable shown in `--help`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use openspime::{ClaimKeyRef, Entry, Field, RsaPrivateKey};
use serde::{Deserialize, Serialize};
use spime::{ClientError, ConnectOptions, Spime};

/// The OpenSpime command line for devices (spimes) and their owners.
#[derive(Parser, Debug)]
#[command(name = "spime", version, about)]
struct Cli {
    /// Profile directory (account, key, claims).
    #[arg(long, global = true, env = "SPIME_PROFILE")]
    profile: Option<PathBuf>,
    /// Seconds to wait for any answer from the server.
    #[arg(long, global = true, env = "SPIME_TIMEOUT", default_value_t = 15)]
    timeout: u64,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create an RSA key pair in the profile.
    Keygen {
        /// Key size.
        #[arg(long, env = "SPIME_BITS", default_value_t = 2048)]
        bits: usize,
        /// Replace an existing key.
        #[arg(long, env = "SPIME_FORCE")]
        force: bool,
    },
    /// Create the account in-band, then publish the profile's key.
    Register {
        /// The JID (user@domain/resource; resource defaults to "spime").
        jid: String,
        /// The password.
        #[arg(long, env = "SPIME_PASSWORD")]
        password: String,
        /// The server's STARTTLS address (default: DOMAIN:5222).
        #[arg(long, env = "SPIME_SERVER")]
        server: Option<String>,
        /// PEM with the certificate or CA to trust (default: system roots).
        #[arg(long, env = "SPIME_CA")]
        ca: Option<PathBuf>,
        /// Certification service holding the key (default: cert.DOMAIN).
        #[arg(long, env = "SPIME_CERT")]
        cert: Option<String>,
        /// PubSub service of the spimeseek node (default: pubsub.DOMAIN).
        #[arg(long, env = "SPIME_PUBSUB")]
        pubsub: Option<String>,
    },
    /// Report entries to a ScopeNode scope.
    Report {
        /// The scope's JID (node@scopenode-domain/scope).
        #[arg(long, env = "SPIME_TO")]
        to: String,
        /// A field of the entry, name=value (repeat; `ele:m=120` adds unit='m').
        #[arg(long = "field", env = "SPIME_FIELD")]
        fields: Vec<String>,
        /// Entries from a CSV (header row = field names) or JSON (array of objects) file, or - for stdin.
        #[arg(long, env = "SPIME_FILE")]
        file: Option<PathBuf>,
        /// Sign with the profile's key.
        #[arg(long, env = "SPIME_SIGN")]
        sign: bool,
        /// Encrypt to the ScopeNode's key.
        #[arg(long, env = "SPIME_ENCRYPT")]
        encrypt: bool,
    },
    /// Ask a spime for a claim key and keep it in the profile.
    Claim {
        /// The spime's full JID.
        spime: String,
    },
    /// Device loop: answer claim requests from allowed owners, and report periodically
    /// what a command prints (`name=value` per line) when --every, --to and --command are set.
    Serve {
        /// Bare JIDs allowed to claim this spime (repeat, or comma-separated).
        #[arg(long = "allow", env = "SPIME_ALLOW", value_delimiter = ',')]
        allow: Vec<String>,
        /// Ask on the terminal for claimers not in --allow.
        #[arg(long, env = "SPIME_INTERACTIVE")]
        interactive: bool,
        /// Seconds between periodic reports.
        #[arg(long, env = "SPIME_EVERY")]
        every: Option<u64>,
        /// The scope to report to.
        #[arg(long, env = "SPIME_TO")]
        to: Option<String>,
        /// Shell command whose output (name=value lines) is one entry.
        #[arg(long, env = "SPIME_COMMAND")]
        command: Option<String>,
        /// Sign the periodic reports.
        #[arg(long, env = "SPIME_SIGN")]
        sign: bool,
        /// Days a claim key stays valid.
        #[arg(long, env = "SPIME_CLAIM_DAYS", default_value_t = 365)]
        days: u64,
        /// Stop after this many seconds (default: run until killed).
        #[arg(long = "for", env = "SPIME_FOR")]
        duration: Option<u64>,
    },
    /// Seek a spime's entries at the ScopeNodes and print them.
    Seek {
        /// The sought spime's full JID.
        spime: String,
        /// Ask for answers encrypted to the profile's key.
        #[arg(long, env = "SPIME_ENCRYPTED")]
        encrypted: bool,
        /// Seconds to collect answers.
        #[arg(long, env = "SPIME_WAIT", default_value_t = 5)]
        wait: u64,
        /// Print JSON instead of a table.
        #[arg(long, env = "SPIME_JSON")]
        json: bool,
    },
}

/// `account.toml`
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Account {
    /// Full JID.
    jid: String,
    /// Password.
    password: String,
    /// STARTTLS address.
    server: String,
    /// Certificate/CA to trust.
    ca: Option<PathBuf>,
    /// Certification service with our key.
    cert: String,
    /// PubSub service with the spimeseek node.
    pubsub: String,
}

/// One claim key we hold.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct HeldClaim {
    /// The claimed spime.
    spime: String,
    /// Who it authorizes (us).
    authorizes: String,
    /// The claim key.
    claimkey: String,
    /// Certification service of the spime's key.
    cert: String,
}

/// `claims.toml`
#[derive(Serialize, Deserialize, Debug, Default)]
struct Claims {
    /// Held claim keys.
    #[serde(default)]
    claims: Vec<HeldClaim>,
}

struct Profile {
    dir: PathBuf,
}

fn err(msg: impl std::fmt::Display) -> String {
    msg.to_string()
}

impl Profile {
    fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
    fn key(&self) -> Result<RsaPrivateKey, String> {
        let pem = std::fs::read_to_string(self.key_path()).map_err(|_| {
            format!(
                "no key in {} (run `spime keygen` or `spime register`)",
                self.dir.display()
            )
        })?;
        openspime::crypto::private_key_from_pem(&pem).map_err(err)
    }
    fn account(&self) -> Result<Account, String> {
        let text = std::fs::read_to_string(self.dir.join("account.toml")).map_err(|_| {
            format!(
                "no account in {} (run `spime register` first)",
                self.dir.display()
            )
        })?;
        toml::from_str(&text)
            .map_err(|e| format!("{}: {e}", self.dir.join("account.toml").display()))
    }
    fn save<T: Serialize>(&self, name: &str, value: &T) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        let text = toml::to_string(value).map_err(err)?;
        write_private(&self.dir.join(name), text.as_bytes())
    }
    fn claims(&self) -> Claims {
        std::fs::read_to_string(self.dir.join("claims.toml"))
            .ok()
            .and_then(|t| toml::from_str(&t).ok())
            .unwrap_or_default()
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
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

/// Splits `user@domain/resource`.
fn split_jid(jid: &str) -> Result<(String, String, String), String> {
    let j = openspimed_module_api::jid::Jid::new(jid)
        .map_err(|e| format!("{jid:?} is not a JID: {e}"))?;
    let user = j
        .node()
        .map(|n| n.to_string())
        .ok_or(format!("{jid:?} has no user part"))?;
    let resource = j
        .resource()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "spime".into());
    Ok((user, j.domain().to_string(), resource))
}

fn options(account: &Account, timeout: u64) -> ConnectOptions {
    ConnectOptions {
        server: account.server.clone(),
        ca: account.ca.clone(),
        timeout: Duration::from_secs(timeout),
    }
}

async fn login(account: &Account, timeout: u64) -> Result<Spime, String> {
    let (user, domain, resource) = split_jid(&account.jid)?;
    Spime::connect(
        &options(account, timeout),
        &user,
        &domain,
        &account.password,
        &resource,
    )
    .await
    .map_err(describe)
}

fn describe(e: ClientError) -> String {
    e.to_string()
}

fn parse_fields(fields: &[String]) -> Result<Entry, String> {
    let mut entry = Entry::default();
    for f in fields {
        let (name, value) = f
            .split_once('=')
            .ok_or(format!("--field {f:?}: expected name=value"))?;
        let (name, attrs) = match name.split_once(':') {
            // ele:m=120.0 → <ele unit='m'>120.0</ele>
            Some((n, unit)) => (n, vec![("unit".to_owned(), unit.to_owned())]),
            None => (name, vec![]),
        };
        entry.fields.push(Field {
            name: name.to_owned(),
            value: value.to_owned(),
            attrs,
        });
    }
    Ok(entry)
}

fn entries_from_file(path: &Path) -> Result<Vec<Entry>, String> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map_err(err)?;
    } else {
        text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    }
    if text.trim_start().starts_with('[') {
        let rows: Vec<serde_json::Map<String, serde_json::Value>> =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        return rows
            .into_iter()
            .map(|row| {
                parse_fields(
                    &row.into_iter()
                        .map(|(k, v)| {
                            format!(
                                "{k}={}",
                                v.as_str().map(str::to_owned).unwrap_or(v.to_string())
                            )
                        })
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
    }
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .ok_or("empty CSV file")?
        .split(',')
        .map(str::trim)
        .collect();
    lines
        .map(|l| {
            let values: Vec<&str> = l.split(',').map(str::trim).collect();
            if values.len() != header.len() {
                return Err(format!("CSV row {l:?} does not match the header"));
            }
            parse_fields(
                &header
                    .iter()
                    .zip(values)
                    .map(|(h, v)| format!("{h}={v}"))
                    .collect::<Vec<_>>(),
            )
        })
        .collect()
}

/// One entry from a command's output: `name=value` per line.
fn entry_from_command(cmd: &str) -> Result<Entry, String> {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let fields: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    parse_fields(&fields)
}

async fn run(cli: Cli) -> Result<(), String> {
    let dir = cli
        .profile
        .clone()
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".spime")))
        .unwrap_or_else(|| PathBuf::from(".spime"));
    let profile = Profile { dir };
    let timeout = cli.timeout;
    match cli.command {
        Command::Keygen { bits, force } => {
            if profile.key_path().exists() && !force {
                return Err(format!(
                    "{} exists (use --force to replace it)",
                    profile.key_path().display()
                ));
            }
            let key = openspime::crypto::generate_key(bits).map_err(err)?;
            std::fs::create_dir_all(&profile.dir).map_err(err)?;
            write_private(
                &profile.key_path(),
                openspime::crypto::private_key_to_pem(&key)
                    .map_err(err)?
                    .as_bytes(),
            )?;
            println!("wrote a {bits}-bit key to {}", profile.key_path().display());
        }
        Command::Register {
            jid,
            password,
            server,
            ca,
            cert,
            pubsub,
        } => {
            let (user, domain, resource) = split_jid(&jid)?;
            let account = Account {
                jid: format!("{user}@{domain}/{resource}"),
                password,
                server: server.unwrap_or_else(|| format!("{domain}:5222")),
                ca,
                cert: cert.unwrap_or_else(|| format!("cert.{domain}")),
                pubsub: pubsub.unwrap_or_else(|| format!("pubsub.{domain}")),
            };
            spime::register(
                &options(&account, timeout),
                &user,
                &domain,
                &account.password,
            )
            .await
            .map_err(describe)?;
            let key = match profile.key() {
                Ok(k) => k,
                Err(_) => {
                    let k = openspime::crypto::generate_key(2048).map_err(err)?;
                    std::fs::create_dir_all(&profile.dir).map_err(err)?;
                    write_private(
                        &profile.key_path(),
                        openspime::crypto::private_key_to_pem(&k)
                            .map_err(err)?
                            .as_bytes(),
                    )?;
                    k
                }
            };
            let mut s = login(&account, timeout).await?;
            s.publish_key(&account.cert, &key.to_public_key())
                .await
                .map_err(describe)?;
            profile.save("account.toml", &account)?;
            println!("registered {}; key published at {}", s.jid, account.cert);
        }
        Command::Report {
            to,
            fields,
            file,
            sign,
            encrypt,
        } => {
            let account = profile.account()?;
            let mut entries = match &file {
                Some(f) => entries_from_file(f)?,
                None => Vec::new(),
            };
            if !fields.is_empty() {
                entries.push(parse_fields(&fields)?);
            }
            if entries.is_empty() {
                return Err("nothing to report: give --field name=value or --file".into());
            }
            let key = if sign { Some(profile.key()?) } else { None };
            let mut s = login(&account, timeout).await?;
            let n = entries.len();
            // Batches go one entry per report so that each is answered (and counted) alone.
            for (i, e) in entries.into_iter().enumerate() {
                s.report(
                    &to,
                    vec![e],
                    key.as_ref().map(|k| (k, account.cert.as_str())),
                    encrypt.then_some(account.cert.as_str()),
                )
                .await
                .map_err(|e| format!("{to} refused the report: {e}"))?;
                if n > 1 {
                    eprint!("\rreported {}/{n}", i + 1);
                }
            }
            if n > 1 {
                eprintln!();
            }
            println!(
                "reported {n} entr{} to {to}",
                if n == 1 { "y" } else { "ies" }
            );
        }
        Command::Claim { spime: target } => {
            let account = profile.account()?;
            let mut s = login(&account, timeout).await?;
            let (authorizes, claimkey) = s.claim(&target).await.map_err(describe)?;
            let mut claims = profile.claims();
            claims.claims.retain(|c| c.spime != target);
            claims.claims.push(HeldClaim {
                spime: target.clone(),
                authorizes: authorizes.clone(),
                claimkey,
                cert: account.cert.clone(),
            });
            profile.save("claims.toml", &claims)?;
            println!("claimed {target}: it authorizes {authorizes}");
        }
        Command::Serve {
            allow,
            interactive,
            every,
            to,
            command,
            sign,
            days,
            duration,
        } => {
            let account = profile.account()?;
            let key = profile.key()?;
            let mut s = login(&account, timeout).await?;
            let periodic = match (every, to, command) {
                (Some(e), Some(t), Some(c)) => Some((Duration::from_secs(e.max(1)), t, c)),
                (None, _, None) => None,
                _ => {
                    return Err("periodic reports need --every, --to and --command together".into());
                }
            };
            let signer = sign.then_some((&key, account.cert.as_str()));
            if let Some((_, to, cmd)) = &periodic {
                s.report(to, vec![entry_from_command(cmd)?], signer, None)
                    .await
                    .map_err(|e| format!("{to} refused the report: {e}"))?;
            }
            println!("serving claims as {}", s.jid);
            let allowed = |jid: &str| {
                if allow.iter().any(|a| a == jid) {
                    return true;
                }
                if !interactive {
                    return false;
                }
                // Interactive policy: the device's operator decides on the terminal.
                eprint!("{jid} asks to claim this spime. Allow? [y/N] ");
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer).is_ok()
                    && matches!(answer.trim(), "y" | "Y" | "yes")
            };
            let validity = Duration::from_secs(days * 86_400);
            let until =
                std::time::Instant::now() + Duration::from_secs(duration.unwrap_or(u64::MAX / 4));
            let mut answered = 0;
            loop {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                let slice = periodic
                    .as_ref()
                    .map(|(e, _, _)| (*e).min(left))
                    .unwrap_or(left);
                answered += s
                    .answer_claims(&key, &allowed, validity, slice)
                    .await
                    .map_err(describe)?;
                if let Some((_, to, cmd)) = &periodic
                    && std::time::Instant::now() < until
                {
                    s.report(to, vec![entry_from_command(cmd)?], signer, None)
                        .await
                        .map_err(|e| format!("{to} refused the report: {e}"))?;
                }
            }
            println!("answered {answered} claim(s)");
        }
        Command::Seek {
            spime: target,
            encrypted,
            wait,
            json,
        } => {
            let account = profile.account()?;
            let key = profile.key()?;
            let claim = profile
                .claims()
                .claims
                .into_iter()
                .find(|c| c.spime == target)
                .map(|c| ClaimKeyRef {
                    cert: c.cert,
                    claims: c.spime,
                    blob: c.claimkey,
                });
            let mut s = login(&account, timeout).await?;
            let found = s
                .seek(
                    &account.pubsub,
                    "spimeseek",
                    &target,
                    &key,
                    &account.cert,
                    claim,
                    encrypted,
                    Duration::from_secs(wait),
                )
                .await
                .map_err(describe)?;
            if found.is_empty() {
                return Err(format!(
                    "no answer within {wait} s (no entries, or not authorized to seek {target})"
                ));
            }
            if json {
                let rows: Vec<serde_json::Value> = found
                    .iter()
                    .map(|(from, e)| {
                        let mut m = serde_json::Map::new();
                        m.insert("from".into(), from.clone().into());
                        for f in &e.fields {
                            m.insert(f.name.clone(), f.value.clone().into());
                        }
                        serde_json::Value::Object(m)
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows).map_err(err)?);
            } else {
                let mut cols: Vec<String> = found
                    .iter()
                    .flat_map(|(_, e)| e.fields.iter().map(|f| f.name.clone()))
                    .collect();
                cols.dedup();
                let mut seen = Vec::new();
                cols.retain(|c| {
                    if seen.contains(c) {
                        false
                    } else {
                        seen.push(c.clone());
                        true
                    }
                });
                println!(
                    "{}",
                    std::iter::once("from".to_owned())
                        .chain(cols.iter().cloned())
                        .collect::<Vec<_>>()
                        .join("\t")
                );
                for (from, e) in &found {
                    let row: Vec<String> = cols
                        .iter()
                        .map(|c| e.get(c).unwrap_or("").to_owned())
                        .collect();
                    println!("{from}\t{}", row.join("\t"));
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spime: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spime: error: {}", e.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
