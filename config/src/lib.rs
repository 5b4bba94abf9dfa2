//! openspimed's configuration.
//!
//! These structs are the single source of truth: defaults live in their `Default` impls,
//! unknown keys are refused (`deny_unknown_fields`), and `openspimed.example.toml` beside
//! this crate is checked against them by this crate's tests, so the two cannot drift.
//! With no file at all, [`Config::default`] is the embedded default: domain `localhost`,
//! data in `./data`, a generated self-signed certificate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the SQLite database and generated certificates; relative paths are
    /// taken from the working directory, as operators expect of `./data`.
    pub data_dir: PathBuf,
    /// Logging.
    pub log: LogConfig,
    /// Addresses to listen on.
    pub listeners: ListenersConfig,
    /// Protocol limits that protect the server from abusive peers.
    pub limits: LimitsConfig,
    /// Authentication policy.
    pub auth: AuthConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// Certificate reloading.
    pub tls: TlsConfig,
    /// Server-to-server federation (RFC 6120, XEP-0178, XEP-0220).
    pub s2s: S2sConfig,
    /// Virtual hosts (self-hosted domains), keyed by domain.
    pub hosts: BTreeMap<String, HostConfig>,
    /// Options of each module, keyed by module name; shared by every host that enables it.
    pub modules: BTreeMap<String, toml::Table>,
}

/// `[log]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: a level (`info`) or per-target levels (`info,openspimed::c2s=debug`).
    /// The `RUST_LOG` environment variable overrides it.
    pub level: String,
    /// `text` for people, `json` for log collectors.
    pub format: LogFormat,
}

/// Log output format.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[listeners]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ListenersConfig {
    /// Client-to-server listeners with STARTTLS (RFC 6120). Port 0 picks a free port; the
    /// bound address is logged.
    pub c2s: Vec<SocketAddr>,
    /// Client-to-server listeners with direct TLS (XEP-0368, ALPN `xmpp-client`).
    pub c2s_direct_tls: Vec<SocketAddr>,
    /// Server-to-server listeners with STARTTLS (RFC 6120, port 5269). None in the embedded
    /// default: no remote server can address `localhost`.
    pub s2s: Vec<SocketAddr>,
    /// Server-to-server listeners with direct TLS (XEP-0368, ALPN `xmpp-server`, port 5270).
    pub s2s_direct_tls: Vec<SocketAddr>,
}

/// `[limits]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest stanza a client may send, in bytes of XML; larger gets `policy-violation`.
    pub c2s_stanza_bytes: usize,
    /// Deepest element nesting allowed inside a stanza.
    pub max_depth: usize,
    /// Most attributes allowed on one element.
    pub max_attributes: usize,
    /// Longest element or attribute name allowed, in bytes.
    pub max_name_length: usize,
    /// Seconds a new connection has to finish TLS, authentication and binding.
    pub handshake_timeout_secs: u64,
    /// Seconds of silence (not even a whitespace keepalive) before `connection-timeout`.
    pub c2s_idle_timeout_secs: u64,
    /// Stanzas queued for one session before it is considered stuck and disconnected.
    pub session_queue: usize,
    /// Most concurrent client connections; more are refused at accept.
    pub max_connections: usize,
    /// Moved to `[modules.im] offline_messages`; set here, it is reported as a problem
    /// that says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offline_messages: Option<usize>,
    /// Moved to `[modules.im] roster_items`, like `offline_messages`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roster_items: Option<usize>,
    /// Seconds a session whose connection dropped waits for its client to resume it
    /// (XEP-0198); unacknowledged messages then go to offline storage.
    pub resume_timeout_secs: u64,
}

/// `[auth]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// PBKDF2 iterations for new SCRAM credentials (RFC 7677 asks for at least 4096).
    pub scram_iterations: u32,
    /// Failed authentications tolerated per client IP and per account within the window
    /// before further attempts get `temporary-auth-failure`.
    pub max_failures: u32,
    /// The failure-counting window, in seconds.
    pub failure_window_secs: u64,
    /// In-band registrations accepted per client IP and hour (0: no limit).
    pub registrations_per_ip_per_hour: u32,
}

/// `[metrics]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics at `http://LISTEN/metrics`.
    pub enabled: bool,
    /// Address of the metrics endpoint; keep it private (loopback or an internal network).
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 5280)),
        }
    }
}

/// `[tls]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// How often (seconds) certificate and key files are checked for changes, so that
    /// certificates an ACME client renews in place are picked up without SIGHUP; 0 turns
    /// watching off.
    pub watch_secs: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig { watch_secs: 60 }
    }
}

/// `[s2s]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct S2sConfig {
    /// PEM files of the certificate authorities trusted to vouch for remote domains
    /// (RFC 6125 validation); the system bundle by default. Missing files are reported by
    /// `openspimed check` and leave dialback as the only way in.
    pub ca_files: Vec<PathBuf>,
    /// Whether Server Dialback (XEP-0220) may authenticate a remote domain whose certificate
    /// does not validate. On, as in Prosody and ejabberd; `[s2s.remote."x"] dialback`
    /// overrides it per domain.
    pub dialback: bool,
    /// The secret dialback keys are derived from (XEP-0185). Unset: a random one per start,
    /// which is right for one process; every node of a cluster needs the same value.
    pub dialback_secret: Option<String>,
    /// Seconds to resolve, connect, secure and authenticate an outgoing connection before
    /// queued stanzas bounce with `remote-server-timeout`.
    pub connect_timeout_secs: u64,
    /// Seconds without traffic after which a server-to-server connection is closed.
    pub idle_timeout_secs: u64,
    /// Stanzas queued for one remote domain (while connecting or when the peer is slow);
    /// more bounce with `resource-constraint`.
    pub queue_length: usize,
    /// Largest stanza a remote server may send, in bytes of XML.
    pub stanza_bytes: usize,
    /// Most incoming connections authenticated for one remote domain at a time.
    pub max_connections_per_domain: usize,
    /// Per remote domain: where it is (instead of DNS SRV) and its dialback policy.
    pub remote: BTreeMap<String, RemoteConfig>,
}

impl Default for S2sConfig {
    fn default() -> Self {
        S2sConfig {
            ca_files: vec![PathBuf::from("/etc/ssl/certs/ca-certificates.crt")],
            dialback: true,
            dialback_secret: None,
            connect_timeout_secs: 10,
            idle_timeout_secs: 600,
            queue_length: 1000,
            stanza_bytes: 512 * 1024,
            max_connections_per_domain: 4,
            remote: BTreeMap::new(),
        }
    }
}

/// The placeholder `openspimed.example.toml` shows for `s2s.dialback_secret`; a server
/// refuses to start with it (dialback keys would be forgeable by anyone who read the file).
pub const EXAMPLE_DIALBACK_SECRET: &str = "change me to a long random string";

/// `[s2s.remote."example.net"]`
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteConfig {
    /// Addresses to connect to instead of looking up SRV records, tried in order.
    pub addresses: Vec<SocketAddr>,
    /// Whether `addresses` speak direct TLS (XEP-0368) instead of STARTTLS.
    pub direct_tls: bool,
    /// Overrides `s2s.dialback` for this domain (`false`: its certificate must validate).
    pub dialback: Option<bool>,
}

/// `[hosts."example.org"]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// PEM certificate chain for this domain (and its service subdomains). When absent,
    /// openspimed generates a self-signed one in `data_dir/certs` and reuses it.
    pub certificate: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) matching `certificate`.
    pub key: Option<PathBuf>,
    /// Modules enabled on this host (like Prosody's `modules_enabled`), besides those of
    /// [`AUTOLOAD`].
    pub modules: Vec<String>,
    /// Modules this host goes without, whether [`AUTOLOAD`] or `modules` names them (like
    /// Prosody's `modules_disabled`): `["im"]` makes it a bare RFC 6120 router, `["mam"]`
    /// turns the default host's archives off. Left out of a written configuration when
    /// empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub modules_disabled: Vec<String>,
    /// SASL mechanisms offered, strongest first. PLAIN is only ever offered over TLS.
    pub sasl_mechanisms: Vec<String>,
    /// In-band registration (XEP-0077) of new accounts on this host. Off unless set; the
    /// embedded default turns it on for `localhost` so devices can register themselves.
    /// Password change and account removal work either way.
    pub allow_registration: bool,
}

impl Default for Config {
    fn default() -> Self {
        let mut hosts = BTreeMap::new();
        hosts.insert(
            "localhost".to_owned(),
            HostConfig {
                allow_registration: true,
                ..HostConfig::default()
            },
        );
        Config {
            data_dir: PathBuf::from("./data"),
            log: LogConfig::default(),
            listeners: ListenersConfig::default(),
            limits: LimitsConfig::default(),
            auth: AuthConfig::default(),
            metrics: MetricsConfig::default(),
            tls: TlsConfig::default(),
            s2s: S2sConfig::default(),
            hosts,
            modules: BTreeMap::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

impl Default for ListenersConfig {
    fn default() -> Self {
        ListenersConfig {
            c2s: vec![SocketAddr::from(([0, 0, 0, 0], 5222))],
            c2s_direct_tls: vec![SocketAddr::from(([0, 0, 0, 0], 5223))],
            s2s: Vec::new(),
            s2s_direct_tls: Vec::new(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            c2s_stanza_bytes: 256 * 1024,
            max_depth: 32,
            max_attributes: 64,
            max_name_length: 256,
            handshake_timeout_secs: 30,
            c2s_idle_timeout_secs: 900,
            session_queue: 1024,
            max_connections: 100_000,
            offline_messages: None,
            roster_items: None,
            resume_timeout_secs: 300,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            scram_iterations: 4096,
            max_failures: 5,
            failure_window_secs: 60,
            registrations_per_ip_per_hour: 10,
        }
    }
}

/// Modules every host runs unless its `modules_disabled` names them, as Prosody autoloads
/// its core modules: IM (rosters, presence, offline messages, blocking, vCards), which
/// clients take for granted.
pub const AUTOLOAD: &[&str] = &["im"];

impl HostConfig {
    /// The modules this host runs, in order: those of [`AUTOLOAD`], then `modules`, less
    /// those it disables.
    pub fn enabled_modules(&self) -> Vec<&str> {
        let mut out: Vec<&str> = AUTOLOAD
            .iter()
            .copied()
            .filter(|m| !self.modules_disabled.iter().any(|d| d == m))
            .collect();
        for m in &self.modules {
            if !out.contains(&m.as_str()) && !self.modules_disabled.contains(m) {
                out.push(m);
            }
        }
        out
    }
}

/// The SASL mechanisms openspimed implements, strongest first.
pub const SASL_MECHANISMS: &[&str] = &[
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-1",
    "PLAIN",
];

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            certificate: None,
            key: None,
            modules: vec![
                "disco".into(),
                "ping".into(),
                "version".into(),
                "mam".into(),
                "carbons".into(),
                "private".into(),
                "bookmarks".into(),
                "muc".into(),
                "certsvc".into(),
                "pubsub".into(),
                "scopenode".into(),
            ],
            modules_disabled: Vec::new(),
            sasl_mechanisms: SASL_MECHANISMS.iter().map(|s| (*s).to_owned()).collect(),
            allow_registration: false,
        }
    }
}

/// Why a configuration could not be used. Every problem is listed, one per line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys or wrong types.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, flattened to one line.
        message: String,
    },
    /// The values are individually valid but do not make a working server.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        let mut config = config;
        // Relative certificate paths are relative to the configuration file.
        let base = path.parent().unwrap_or(Path::new("."));
        for host in config.hosts.values_mut() {
            for p in [&mut host.certificate, &mut host.key].into_iter().flatten() {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        for p in &mut config.s2s.ca_files {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        let problems = config.problems(&[]);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Parses TOML text (no validation beyond types and known keys).
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().replace('\n', " ").trim().to_owned())
    }

    /// Everything wrong with this configuration, one line each. `known_modules` (when not
    /// empty) is the list of modules compiled in.
    pub fn problems(&self, known_modules: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for (key, set) in [
            ("offline_messages", self.limits.offline_messages),
            ("roster_items", self.limits.roster_items),
        ] {
            if set.is_some() {
                out.push(format!(
                    "limits.{key} moved to [modules.im] {key} (IM is a module now)"
                ));
            }
        }
        if self.hosts.is_empty() {
            out.push("no [hosts] configured: add at least one domain".to_owned());
        }
        if self.listeners.c2s.is_empty() && self.listeners.c2s_direct_tls.is_empty() {
            out.push("no client listeners configured in [listeners]".to_owned());
        }
        if self.limits.c2s_stanza_bytes < 10_000 {
            out.push(format!(
                "limits.c2s_stanza_bytes = {} is below RFC 6120's minimum of 10000",
                self.limits.c2s_stanza_bytes
            ));
        }
        if self.limits.max_depth < 4 {
            out.push("limits.max_depth must be at least 4".to_owned());
        }
        if self.limits.session_queue == 0 {
            out.push("limits.session_queue must be at least 1".to_owned());
        }
        if self.auth.scram_iterations < 4096 {
            out.push(format!(
                "auth.scram_iterations = {} is below RFC 7677's minimum of 4096",
                self.auth.scram_iterations
            ));
        }
        if self.s2s.stanza_bytes < 10_000 {
            out.push(format!(
                "s2s.stanza_bytes = {} is below RFC 6120's minimum of 10000",
                self.s2s.stanza_bytes
            ));
        }
        if self.s2s.queue_length == 0 || self.s2s.max_connections_per_domain == 0 {
            out.push(
                "s2s.queue_length and s2s.max_connections_per_domain must be at least 1".to_owned(),
            );
        }
        if self.s2s.connect_timeout_secs == 0 || self.s2s.idle_timeout_secs == 0 {
            out.push(
                "s2s.connect_timeout_secs and s2s.idle_timeout_secs must be at least 1".to_owned(),
            );
        }
        if let Some(secret) = &self.s2s.dialback_secret
            && secret.len() < 16
        {
            out.push(
                "s2s.dialback_secret is too short: use a long random string, or leave it out"
                    .to_owned(),
            );
        }
        for domain in self.s2s.remote.keys() {
            if !is_valid_domain(domain) {
                out.push(format!("s2s.remote.\"{domain}\": not a valid domain name"));
            }
            if self.hosts.contains_key(domain) {
                out.push(format!("s2s.remote.\"{domain}\": is also a hosted domain"));
            }
        }
        for (domain, host) in &self.hosts {
            if !is_valid_domain(domain) {
                out.push(format!("hosts.\"{domain}\": not a valid domain name"));
            }
            if host.certificate.is_some() != host.key.is_some() {
                out.push(format!(
                    "hosts.\"{domain}\": set both certificate and key, or neither (to generate one)"
                ));
            }
            for m in &host.sasl_mechanisms {
                if !SASL_MECHANISMS.contains(&m.as_str()) {
                    out.push(format!(
                        "hosts.\"{domain}\": unknown SASL mechanism {m:?} (known: {})",
                        SASL_MECHANISMS.join(", ")
                    ));
                }
            }
            if host.sasl_mechanisms.is_empty() {
                out.push(format!("hosts.\"{domain}\": sasl_mechanisms is empty"));
            }
            if !known_modules.is_empty() {
                for m in host.modules.iter().chain(&host.modules_disabled) {
                    if !known_modules.contains(&m.as_str()) {
                        out.push(format!(
                            "hosts.\"{domain}\": unknown module {m:?} (available: {})",
                            known_modules.join(", ")
                        ));
                    }
                }
            }
        }
        out
    }
}

/// A DNS domain as a JID domainpart may hold it (RFC 7622 §3.2, ASCII subset).
fn is_valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../openspimed.example.toml");

    fn keys(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
        if let toml::Value::Table(t) = v {
            for (k, child) in t {
                // Host and module tables are keyed by operator-chosen names.
                let seg = if prefix == "hosts" || prefix == "modules" || prefix == "s2s.remote" {
                    "*".to_owned()
                } else {
                    k.clone()
                };
                let path = if prefix.is_empty() {
                    seg
                } else {
                    format!("{prefix}.{seg}")
                };
                out.push(path.clone());
                keys(&path, child, out);
            }
        }
    }

    #[test]
    fn example_parses_with_every_key_known() {
        let cfg = Config::from_toml(EXAMPLE).expect("example must parse");
        assert!(cfg.problems(&[]).is_empty(), "{:?}", cfg.problems(&[]));
    }

    #[test]
    fn example_documents_every_key_of_the_structs() {
        // Every key the structs have (defaults plus the optional host keys) must appear in
        // the example, so a new field cannot ship undocumented.
        let mut full = Config::default();
        if let Some(h) = full.hosts.get_mut("localhost") {
            h.certificate = Some("x".into());
            h.key = Some("x".into());
        }
        full.s2s.dialback_secret = Some("x".into());
        full.s2s.remote.insert(
            "example.net".into(),
            RemoteConfig {
                dialback: Some(false),
                ..RemoteConfig::default()
            },
        );
        let structs = toml::Value::try_from(&full).expect("serializable");
        let mut want = Vec::new();
        keys("", &structs, &mut want);
        let example: toml::Value = toml::from_str(EXAMPLE).expect("toml");
        let mut have = Vec::new();
        keys("", &example, &mut have);
        for k in want {
            assert!(have.contains(&k), "openspimed.example.toml lacks key {k}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_reported() {
        let err = Config::from_toml("[limits]\nstanza_size = 3\n").unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
        let cfg = Config::from_toml(
            "[hosts.\"bad domain\"]\nsasl_mechanisms = [\"CRAM-MD5\"]\ncertificate = \"a.pem\"\n",
        )
        .unwrap();
        let p = cfg.problems(&["ping"]);
        assert!(p.iter().any(|l| l.contains("not a valid domain")), "{p:?}");
        assert!(p.iter().any(|l| l.contains("CRAM-MD5")), "{p:?}");
        assert!(
            p.iter().any(|l| l.contains("both certificate and key")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|l| l.contains("unknown module \"disco\"")),
            "{p:?}"
        );
    }

    #[test]
    fn the_example_dialback_secret_is_the_known_placeholder() {
        // The server refuses to start with it; the two must not drift apart.
        let cfg = Config::from_toml(EXAMPLE).expect("example must parse");
        assert_eq!(
            cfg.s2s.dialback_secret.as_deref(),
            Some(EXAMPLE_DIALBACK_SECRET)
        );
        let short = Config::from_toml("[s2s]\ndialback_secret = \"short\"\n").unwrap();
        assert!(
            short
                .problems(&[])
                .iter()
                .any(|p| p.contains("dialback_secret is too short"))
        );
    }

    #[test]
    fn embedded_default_serves_localhost() {
        let cfg = Config::default();
        assert_eq!(cfg.hosts.keys().collect::<Vec<_>>(), ["localhost"]);
        assert_eq!(cfg.data_dir, PathBuf::from("./data"));
        assert!(cfg.problems(&[]).is_empty());
    }
}
