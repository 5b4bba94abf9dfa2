//! The `openspimed` command line: `run`, `check` and the account admin commands.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use openspimed_config::{Config, LogFormat};
use openspimed_module_api::jid::BareJid;

use crate::storage::AccountStore;
use crate::storage::sqlite::SqliteStore;

/// openspimed: an XMPP server that hosts the OpenSpime network.
#[derive(Parser, Debug)]
#[command(name = "openspimed", version, about)]
pub struct Cli {
    /// Configuration file. Without it, the embedded default serves `localhost` with data in
    /// ./data and a generated self-signed certificate.
    #[arg(long, short, global = true, env = "OPENSPIMED_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server until SIGTERM or SIGINT.
    Run,
    /// Check the configuration and certificates and say what is wrong.
    Check,
    /// Ask the running server (through its control socket in the data directory) to reload
    /// certificates, the log level and the limits, and print what it reloaded and what needs
    /// a restart.
    /// Same as sending it SIGHUP, with the answer.
    Reload,
    /// Create an account.
    Adduser {
        /// The account's JID (user@domain).
        jid: String,
        /// The password; prompted for (or read from standard input) when absent.
        #[arg(long, env = "OPENSPIMED_PASSWORD")]
        password: Option<String>,
    },
    /// Change an account's password.
    Passwd {
        /// The account's JID (user@domain).
        jid: String,
        /// The new password; prompted for when absent.
        #[arg(long, env = "OPENSPIMED_PASSWORD")]
        password: Option<String>,
    },
    /// Delete an account.
    Deluser {
        /// The account's JID (user@domain).
        jid: String,
    },
    /// List the accounts of a domain.
    Listusers {
        /// The domain.
        domain: String,
    },
    /// Inspect the ScopeNodes.
    Scopenode {
        /// What to show.
        #[command(subcommand)]
        action: ScopenodeAction,
    },
    /// Export stored sensor data.
    Data {
        /// What to do.
        #[command(subcommand)]
        action: DataAction,
    },
    /// Manage the keys of the hosted certification services (XEP-0189).
    Keys {
        /// What to do with keys.
        #[command(subcommand)]
        action: KeysAction,
        /// The certification service (needed when more than one is hosted).
        #[arg(long, global = true)]
        service: Option<String>,
    },
}

/// `openspimed scopenode …`
#[derive(Subcommand, Debug)]
pub enum ScopenodeAction {
    /// List the configured ScopeNodes with their scopes and entry counts.
    List,
    /// Show one ScopeNode: key, scopes and their fields, entry counts.
    Show {
        /// The ScopeNode's JID (node@domain).
        jid: String,
    },
}

/// `openspimed data …`
#[derive(Subcommand, Debug)]
pub enum DataAction {
    /// Export the entries a spime reported.
    Export {
        /// The spime (full JID, as it reported).
        #[arg(long)]
        spime: String,
        /// Only entries collected by this ScopeNode.
        #[arg(long)]
        node: Option<String>,
        /// Only entries measured at or after this date (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "csv")]
        format: ExportFormat,
    },
}

/// Export formats.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ExportFormat {
    /// One row per entry, one column per field.
    Csv,
    /// One JSON object per entry, in an array.
    Json,
}

/// `openspimed keys …`
#[derive(Subcommand, Debug)]
pub enum KeysAction {
    /// Store a public key (PEM: SPKI, PKCS#1, or a private key whose public half is used).
    Add {
        /// The JID the key belongs to.
        jid: String,
        /// The PEM file.
        pemfile: PathBuf,
    },
    /// List stored keys.
    List,
    /// Show one key (PEM and status).
    Show {
        /// The JID.
        jid: String,
    },
    /// Revoke a key: lookups answer item-not-found from now on.
    Revoke {
        /// The JID.
        jid: String,
    },
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    for line in msg.to_string().lines() {
        eprintln!("openspimed: error: {line}");
    }
    ExitCode::FAILURE
}

fn load(cli: &Cli) -> Result<Config, ExitCode> {
    match &cli.config {
        None => Ok(Config::default()),
        Some(p) => Config::load(p).map_err(fail),
    }
}

/// Runs the command line; the binary's `main` is just this.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load(&cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    match cli.command {
        Command::Run => rt.block_on(run(config, cli.config)),
        Command::Reload => rt.block_on(reload(&config)),
        Command::Check => check(&config, cli.config.as_deref()),
        Command::Adduser { jid, password } => {
            rt.block_on(set_password(&config, &jid, password, true))
        }
        Command::Passwd { jid, password } => {
            rt.block_on(set_password(&config, &jid, password, false))
        }
        Command::Deluser { jid } => rt.block_on(deluser(&config, &jid)),
        Command::Listusers { domain } => rt.block_on(listusers(&config, &domain)),
        Command::Keys { action, service } => rt.block_on(keys(&config, action, service)),
        Command::Scopenode { action } => rt.block_on(scopenode(&config, action)),
        Command::Data { action } => rt.block_on(data(&config, action)),
    }
}

/// Sets up logging; returns how to change the filter later (for reloads).
fn init_logging(config: &Config) -> Option<crate::control::SetLogFilter> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    fn setter<L, S: 'static>(
        handle: tracing_subscriber::reload::Handle<L, S>,
    ) -> crate::control::SetLogFilter
    where
        L: From<EnvFilter> + Send + Sync + 'static,
    {
        Box::new(move |level: &str| {
            let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
            handle.reload(filter).map_err(|e| e.to_string())
        })
    }
    match config.log.format {
        LogFormat::Json => {
            let b = builder.json().with_filter_reloading();
            let handle = b.reload_handle();
            b.try_init().ok().map(|()| setter(handle))
        }
        LogFormat::Text => {
            let b = builder.with_filter_reloading();
            let handle = b.reload_handle();
            b.try_init().ok().map(|()| setter(handle))
        }
    }
}

async fn run(config: Config, path: Option<PathBuf>) -> ExitCode {
    let set_log_filter = init_logging(&config);
    // Signal handlers go in before anything listens: a SIGTERM right after the "listening"
    // log line must stop the server gracefully, not kill it.
    #[cfg(unix)]
    let (term, int, hup) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::hangup()).ok(),
        )
    };
    let server = match crate::server::start(config).await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let reloader =
        std::sync::Arc::new(crate::control::Reloader::new(&server, path, set_log_filter));
    #[cfg(unix)]
    {
        let socket = crate::control::socket_path(&server.shared.config);
        let r = reloader.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::control::serve(&socket, r).await {
                tracing::warn!(socket = %socket.display(), error = %e, "no control socket; `openspimed reload` will not reach this server (SIGHUP still works)");
            }
        });
        let r = reloader.clone();
        let token = server.shutdown_token();
        tokio::spawn(async move {
            let Some(mut hup) = hup else {
                tracing::warn!("cannot listen for SIGHUP");
                return;
            };
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    got = hup.recv() => if got.is_none() { return },
                }
                r.reload().await;
            }
        });
    }
    #[cfg(not(unix))]
    drop(reloader);
    let token = server.shutdown_token();
    tokio::spawn(async move {
        #[cfg(unix)]
        wait_for_signal(term, int).await;
        #[cfg(not(unix))]
        wait_for_signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    server.wait(Duration::from_secs(5)).await;
    ExitCode::SUCCESS
}

/// `openspimed reload`: asks the running server to reload and prints its report.
async fn reload(config: &Config) -> ExitCode {
    #[cfg(unix)]
    {
        let socket = crate::control::socket_path(config);
        match crate::control::request(&socket, "reload").await {
            Ok(answer) => {
                print!("{answer}");
                if answer.lines().any(|l| l.starts_with("error:")) {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => fail(format!(
                "cannot reach the server at {}: {e} (is it running with this configuration?)",
                socket.display()
            )),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = config;
        fail("reload needs a Unix control socket; restart the server instead")
    }
}

/// Waits for SIGTERM or SIGINT (handlers registered by the caller before listening).
#[cfg(unix)]
async fn wait_for_signal(
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
) {
    match (term, int) {
        (Some(mut term), Some(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Waits for Ctrl-C.
#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// `openspimed check`: configuration, modules and certificates, like `prosodyctl check`.
/// Every module is built with its options exactly as `run` builds it; each problem is one
/// line naming the file and the key.
fn check(config: &Config, file: Option<&std::path::Path>) -> ExitCode {
    let mut errors = config.problems(&crate::server::builtin_module_names());
    errors.extend(crate::core::mount::problems(
        &config.hosts,
        &config.modules,
        &crate::server::builtin_modules(),
    ));
    if config.s2s.dialback_secret.as_deref() == Some(openspimed_config::EXAMPLE_DIALBACK_SECRET) {
        errors.push(
            "s2s.dialback_secret is the example's placeholder: set a long random string, or leave it out".to_owned(),
        );
    }
    let mut notes = Vec::new();
    let provider = crate::tls::provider();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    for (domain, host) in &config.hosts {
        if host.certificate.is_some() != host.key.is_some() {
            continue; // already reported by problems()
        }
        let (cert, key) = crate::tls::certificate_paths(config, domain, host);
        if host.certificate.is_none() && !cert.exists() {
            notes.push(format!(
                "hosts.\"{domain}\": no certificate configured; a self-signed one will be generated in {}",
                cert.display()
            ));
            continue;
        }
        if let Err(e) = openspimed_certs::load_pair(&cert, &key, &provider) {
            errors.push(format!("hosts.\"{domain}\": {e}"));
            continue;
        }
        match openspimed_certs::inspect(&cert) {
            Ok(info) => {
                if !info.covers(domain) {
                    errors.push(format!(
                        "hosts.\"{domain}\": certificate {} is not valid for {domain} (it names: {})",
                        cert.display(),
                        info.dns_names.join(", ")
                    ));
                }
                let days = (info.not_after_unix - now) / 86_400;
                if info.not_after_unix <= now {
                    errors.push(format!(
                        "hosts.\"{domain}\": certificate {} has expired",
                        cert.display()
                    ));
                } else if days < 14 {
                    notes.push(format!(
                        "hosts.\"{domain}\": certificate expires in {days} days"
                    ));
                }
            }
            Err(e) => errors.push(format!("hosts.\"{domain}\": {e}")),
        }
    }
    notes.extend(busy_ports(config));
    notes.extend(s2s_notes(config, &provider));
    for n in &notes {
        println!("note: {n}");
    }
    if errors.is_empty() {
        println!(
            "configuration OK: {} host(s): {}",
            config.hosts.len(),
            config.hosts.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        ExitCode::SUCCESS
    } else {
        let file = file
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "embedded default".to_owned());
        fail(
            errors
                .iter()
                .map(|e| format!("{file}: {e}"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }
}

/// `1 entry`, `2 entries`.
fn entries(n: u64) -> String {
    if n == 1 {
        "1 entry".to_owned()
    } else {
        format!("{n} entries")
    }
}

/// Federation: trust anchors, and (when listening for servers and DNS answers) the SRV
/// records remote servers will use to find each host.
fn s2s_notes(config: &Config, provider: &rustls::crypto::CryptoProvider) -> Vec<String> {
    let mut notes = Vec::new();
    let (peers, problems) =
        openspimed_certs::peer::PeerVerifier::from_files(&config.s2s.ca_files, provider);
    for p in problems {
        notes.push(format!(
            "s2s.ca_files: {p}; remote certificates cannot be checked against it"
        ));
    }
    if peers.root_count() == 0 && !config.s2s.dialback {
        notes.push(
            "s2s: no trusted CA and dialback off: no remote server can authenticate".to_owned(),
        );
    }
    let listening = !config.listeners.s2s.is_empty() || !config.listeners.s2s_direct_tls.is_empty();
    if !listening {
        return notes;
    }
    let ports: Vec<(bool, u16)> = config
        .listeners
        .s2s
        .iter()
        .map(|a| (false, a.port()))
        .chain(
            config
                .listeners
                .s2s_direct_tls
                .iter()
                .map(|a| (true, a.port())),
        )
        .collect();
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return notes;
    };
    for domain in config.hosts.keys().filter(|d| d.contains('.')) {
        let lookup = rt.block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                crate::s2s::resolve::srv_records(domain),
            )
            .await
        });
        let records = match lookup {
            Ok(Ok(r)) => r,
            Ok(Err(_)) | Err(_) => {
                notes.push("DNS not reachable: SRV records not checked (offline?)".to_owned());
                break;
            }
        };
        if records.is_empty() {
            let default_port = ports.iter().any(|(direct, p)| !direct && *p == 5269);
            notes.push(format!(
                "hosts.\"{domain}\": no _xmpp-server._tcp SRV record; remote servers will connect to {domain}:5269{}",
                if default_port { "" } else { ", where no s2s listener is configured" }
            ));
        }
        for r in records {
            let ours = ports
                .iter()
                .any(|(d, p)| *d == r.direct_tls && *p == r.port);
            let kind = if r.direct_tls {
                "_xmpps-server"
            } else {
                "_xmpp-server"
            };
            notes.push(format!(
                "hosts.\"{domain}\": {kind}._tcp SRV → {}:{}{}",
                r.target,
                r.port,
                if ours {
                    ""
                } else {
                    " (no matching listener here)"
                }
            ));
        }
    }
    notes
}

/// Listener addresses something else already listens on (possibly this server, running).
fn busy_ports(config: &Config) -> Vec<String> {
    let metrics = config
        .metrics
        .enabled
        .then_some(("metrics.listen", config.metrics.listen));
    config
        .listeners
        .c2s
        .iter()
        .map(|a| ("listeners.c2s", *a))
        .chain(
            config
                .listeners
                .c2s_direct_tls
                .iter()
                .map(|a| ("listeners.c2s_direct_tls", *a)),
        )
        .chain(config.listeners.s2s.iter().map(|a| ("listeners.s2s", *a)))
        .chain(
            config
                .listeners
                .s2s_direct_tls
                .iter()
                .map(|a| ("listeners.s2s_direct_tls", *a)),
        )
        .chain(metrics)
        .filter(|(_, addr)| addr.port() != 0)
        .filter_map(|(name, addr)| match std::net::TcpListener::bind(addr) {
            Ok(_) => None,
            Err(e) => Some(format!(
                "{name}: cannot listen on {addr} now ({e}); fine if openspimed is running there"
            )),
        })
        .collect()
}

fn parse_account(config: &Config, jid: &str) -> Result<(String, String), String> {
    let bare = BareJid::new(jid).map_err(|e| format!("{jid:?} is not a valid JID: {e}"))?;
    let Some(node) = bare.node() else {
        return Err(format!("{jid:?} has no user part (expected user@domain)"));
    };
    let domain = bare.domain().as_str().to_owned();
    if !config.hosts.contains_key(&domain) {
        return Err(format!(
            "{domain} is not a host of this server (see [hosts] in the configuration)"
        ));
    }
    Ok((node.as_str().to_owned(), domain))
}

fn open_store(config: &Config) -> Result<SqliteStore, ExitCode> {
    SqliteStore::open(&config.data_dir.join("openspimed.sqlite")).map_err(fail)
}

fn read_password() -> Result<String, String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password: {e}"))?;
    let pw = line.trim_end_matches(['\r', '\n']).to_owned();
    if pw.is_empty() {
        return Err("the password must not be empty".into());
    }
    Ok(pw)
}

async fn set_password(
    config: &Config,
    jid: &str,
    password: Option<String>,
    create: bool,
) -> ExitCode {
    let (user, domain) = match parse_account(config, jid) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let password = match password {
        Some(p) if !p.is_empty() => p,
        Some(_) => return fail("the password must not be empty"),
        None => match read_password() {
            Ok(p) => p,
            Err(e) => return fail(e),
        },
    };
    let store = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let creds = crate::sasl::derive_credentials(&password, config.auth.scram_iterations);
    let result = if create {
        store.create_account(&user, &domain, &creds).await
    } else {
        store.set_credentials(&user, &domain, &creds).await
    };
    match (result, create) {
        (Ok(true), true) => {
            println!("created {user}@{domain}");
            ExitCode::SUCCESS
        }
        (Ok(false), true) => fail(format!(
            "{user}@{domain} already exists (use passwd to change its password)"
        )),
        (Ok(true), false) => {
            println!("password changed for {user}@{domain}");
            ExitCode::SUCCESS
        }
        (Ok(false), false) => fail(format!("{user}@{domain} does not exist")),
        (Err(e), _) => fail(e),
    }
}

async fn deluser(config: &Config, jid: &str) -> ExitCode {
    let (user, domain) = match parse_account(config, jid) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let store = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match store.delete_account(&user, &domain).await {
        Ok(true) => {
            println!("deleted {user}@{domain}");
            ExitCode::SUCCESS
        }
        Ok(false) => fail(format!("{user}@{domain} does not exist")),
        Err(e) => fail(e),
    }
}

async fn listusers(config: &Config, domain: &str) -> ExitCode {
    let domain = domain.to_ascii_lowercase();
    if !config.hosts.contains_key(&domain) {
        return fail(format!("{domain} is not a host of this server"));
    }
    let store = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match store.list_accounts(&domain).await {
        Ok(users) => {
            for u in users {
                println!("{u}@{domain}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// The certification services this configuration hosts.
fn hosted_cert_services(config: &Config) -> Result<Vec<String>, String> {
    let empty = openspimed_module_api::toml::Table::new();
    let options = config.modules.get("certsvc").unwrap_or(&empty);
    let mut out = Vec::new();
    for (domain, host) in &config.hosts {
        if host.modules.iter().any(|m| m == "certsvc") {
            for s in openspimed_mod_certsvc::services_for_host(domain, options)
                .map_err(|e| e.to_string())?
            {
                out.push(s.jid);
            }
        }
    }
    Ok(out)
}

async fn keys(config: &Config, action: KeysAction, service: Option<String>) -> ExitCode {
    let hosted = match hosted_cert_services(config) {
        Ok(h) => h,
        Err(e) => return fail(e),
    };
    let service = match (service, hosted.as_slice()) {
        (Some(s), _) => {
            let norm = openspimed_module_api::jid::Jid::new(&s)
                .map(|j| j.to_string())
                .unwrap_or(s);
            if !hosted.contains(&norm) {
                return fail(format!(
                    "{norm} is not a certification service hosted here (hosted: {})",
                    hosted.join(", ")
                ));
            }
            norm
        }
        (None, [only]) => only.clone(),
        (None, []) => {
            return fail("no certification service is hosted (enable the certsvc module)");
        }
        (None, many) => {
            return fail(format!(
                "several certification services are hosted; pick one with --service ({})",
                many.join(", ")
            ));
        }
    };
    let store = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let keys: &dyn openspimed_module_api::KeyStore = &store;
    match action {
        KeysAction::Add { jid, pemfile } => {
            let pem = match std::fs::read_to_string(&pemfile) {
                Ok(p) => p,
                Err(e) => return fail(format!("cannot read {}: {e}", pemfile.display())),
            };
            let key = match openspime::crypto::public_key_from_pem(&pem).or_else(|_| {
                openspime::crypto::private_key_from_pem(&pem).map(|k| k.to_public_key())
            }) {
                Ok(k) => k,
                Err(e) => return fail(format!("{}: {e}", pemfile.display())),
            };
            match openspimed_mod_certsvc::store_key(keys, &service, &jid, &key).await {
                Ok(stored) => {
                    println!("stored key for {stored} at {service}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        KeysAction::List => match keys.list_keys(Some(&service)).await {
            Ok(list) => {
                for k in list {
                    let status = if k.revoked_unix.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!("{}\t{status}", k.jid);
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        KeysAction::Show { jid } => {
            let norm = openspimed_module_api::jid::Jid::new(&jid)
                .map(|j| j.to_string())
                .unwrap_or(jid.clone());
            match keys.key(&service, &norm).await {
                Ok(Some(k)) => {
                    use openspime::rsa_reexport::DecodePublicKey;
                    let status = if k.revoked_unix.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!("jid: {}\nservice: {service}\nstatus: {status}", k.jid);
                    match openspime::RsaPublicKey::from_public_key_der(&k.spki_der)
                        .map_err(|e| e.to_string())
                        .and_then(|pk| {
                            openspime::crypto::public_key_to_pem(&pk).map_err(|e| e.to_string())
                        }) {
                        Ok(pem) => print!("{pem}"),
                        Err(e) => return fail(format!("stored key unreadable: {e}")),
                    }
                    ExitCode::SUCCESS
                }
                Ok(None) => fail(format!("no key for {norm} at {service}")),
                Err(e) => fail(e),
            }
        }
        KeysAction::Revoke { jid } => {
            let norm = openspimed_module_api::jid::Jid::new(&jid)
                .map(|j| j.to_string())
                .unwrap_or(jid.clone());
            match keys.revoke_key(&service, &norm).await {
                Ok(true) => {
                    println!("revoked the key of {norm} at {service}");
                    ExitCode::SUCCESS
                }
                Ok(false) => fail(format!("no active key for {norm} at {service}")),
                Err(e) => fail(e),
            }
        }
    }
}

/// The ScopeNodes this configuration serves.
fn configured_scopenodes(
    config: &Config,
) -> Result<Vec<openspimed_mod_scopenode::NodeDef>, String> {
    let empty = openspimed_module_api::toml::Table::new();
    let options = config.modules.get("scopenode").unwrap_or(&empty);
    let mut out = Vec::new();
    for (domain, host) in &config.hosts {
        if host.modules.iter().any(|m| m == "scopenode") {
            out.extend(
                openspimed_mod_scopenode::configured_nodes(domain, options)
                    .map_err(|e| e.to_string())?,
            );
        }
    }
    Ok(out)
}

async fn scopenode(config: &Config, action: ScopenodeAction) -> ExitCode {
    use openspimed_module_api::SensorStore;
    let nodes = match configured_scopenodes(config) {
        Ok(n) => n,
        Err(e) => return fail(e),
    };
    let store = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let counts = match store.entry_counts().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let count = |node: &str, scope: &str| {
        counts
            .iter()
            .find(|(n, s, _)| n == node && s == scope)
            .map(|c| c.2)
            .unwrap_or(0)
    };
    match action {
        ScopenodeAction::List => {
            for n in &nodes {
                let scopes: Vec<String> = n
                    .scopes
                    .iter()
                    .map(|s| format!("{} ({})", s.name, entries(count(&n.jid, &s.name))))
                    .collect();
                println!("{}\t{}", n.jid, scopes.join(", "));
            }
            ExitCode::SUCCESS
        }
        ScopenodeAction::Show { jid } => {
            let jid = openspimed_module_api::jid::Jid::new(&jid)
                .map(|j| j.to_bare().to_string())
                .unwrap_or(jid);
            let Some(n) = nodes.iter().find(|n| n.jid == jid) else {
                return fail(format!(
                    "{jid} is not a ScopeNode of this server (see `openspimed scopenode list`)"
                ));
            };
            println!("jid: {}", n.jid);
            let key = match &n.key_file {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| e.to_string())
                    .and_then(|pem| {
                        openspime::crypto::private_key_from_pem(&pem).map_err(|e| e.to_string())
                    })
                    .map(Some),
                None => match store.node_key(&n.jid).await {
                    Ok(Some(der)) => {
                        use openspime::rsa_reexport::DecodePrivateKey;
                        openspime::RsaPrivateKey::from_pkcs8_der(&der)
                            .map(Some)
                            .map_err(|e| e.to_string())
                    }
                    Ok(None) => Ok(None),
                    Err(e) => Err(e.to_string()),
                },
            };
            match key {
                Ok(Some(k)) => match openspime::crypto::public_key_to_pem(&k.to_public_key()) {
                    Ok(pem) => print!("key:\n{pem}"),
                    Err(e) => return fail(e),
                },
                Ok(None) => println!("key: (generated at first start)"),
                Err(e) => return fail(format!("key of {}: {e}", n.jid)),
            }
            for s in &n.scopes {
                println!(
                    "scope {}: {}, signature {}, encryption {}, retention {}",
                    s.name,
                    entries(count(&n.jid, &s.name)),
                    if s.require_signature {
                        "required"
                    } else {
                        "optional"
                    },
                    if s.require_encryption {
                        "required"
                    } else {
                        "optional"
                    },
                    if s.retention_days == 0 {
                        "forever".to_owned()
                    } else {
                        format!("{} days", s.retention_days)
                    }
                );
                for f in &s.fields {
                    println!(
                        "  {}: {:?}{}{}",
                        f.name,
                        f.kind,
                        if f.required { ", required" } else { "" },
                        f.unit
                            .as_ref()
                            .map(|u| format!(", unit {u}"))
                            .unwrap_or_default()
                    );
                }
            }
            ExitCode::SUCCESS
        }
    }
}

async fn data(config: &Config, action: DataAction) -> ExitCode {
    use openspimed_module_api::SensorStore;
    let DataAction::Export {
        spime,
        node,
        since,
        format,
    } = action;
    let since = match since.map(|s| openspime::date::parse(&s)) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => return fail(e),
    };
    let spime = match openspimed_module_api::jid::Jid::new(&spime) {
        Ok(j) => j.to_string(),
        Err(e) => return fail(format!("{spime:?} is not a JID: {e}")),
    };
    let store = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let rows = match store
        .export_entries(node.as_deref(), Some(&spime), since)
        .await
    {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    // Each stored entry is an OpenSpime <entry/>: read its fields back.
    let parsed: Vec<(openspimed_module_api::SensorEntry, Vec<(String, String)>)> = rows
        .into_iter()
        .map(|r| {
            let fields = openspimed_module_api::Element::parse(&format!(
                "<data xmlns='{}'>{}</data>",
                openspime::ns::DATA,
                r.xml
            ))
            .ok()
            .and_then(|d| openspime::Data::parse(&d).ok())
            .and_then(|d| d.entries.into_iter().next())
            .map(|e| e.fields.into_iter().map(|f| (f.name, f.value)).collect())
            .unwrap_or_default();
            (r, fields)
        })
        .collect();
    match format {
        ExportFormat::Json => {
            let arr: Vec<serde_json::Value> = parsed
                .iter()
                .map(|(r, fields)| {
                    let mut f = serde_json::Map::new();
                    for (k, v) in fields {
                        f.insert(k.clone(), serde_json::Value::String(v.clone()));
                    }
                    serde_json::json!({
                        "node": r.node, "scope": r.scope, "spime": r.spime,
                        "time": openspime::date::format(r.at_unix, 0), "fields": f,
                    })
                })
                .collect();
            match serde_json::to_string_pretty(&arr) {
                Ok(s) => println!("{s}"),
                Err(e) => return fail(e),
            }
        }
        ExportFormat::Csv => {
            let mut columns: Vec<String> = parsed
                .iter()
                .flat_map(|(_, f)| f.iter().map(|(k, _)| k.clone()))
                .collect();
            columns.sort();
            columns.dedup();
            let esc = |v: &str| {
                if v.contains([',', '"', '\n']) {
                    format!("\"{}\"", v.replace('"', "\"\""))
                } else {
                    v.to_owned()
                }
            };
            println!(
                "node,scope,spime,time{}",
                columns
                    .iter()
                    .map(|c| format!(",{}", esc(c)))
                    .collect::<String>()
            );
            for (r, fields) in &parsed {
                let mut line = format!(
                    "{},{},{},{}",
                    esc(&r.node),
                    esc(&r.scope),
                    esc(&r.spime),
                    openspime::date::format(r.at_unix, 0)
                );
                for c in &columns {
                    line.push(',');
                    if let Some((_, v)) = fields.iter().find(|(k, _)| k == c) {
                        line.push_str(&esc(v));
                    }
                }
                println!("{line}");
            }
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn check_names_listener_addresses_in_use() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let mut config = Config::default();
        config.metrics.enabled = false;
        config.listeners.c2s = vec![addr];
        config.listeners.c2s_direct_tls = vec![];
        let busy = busy_ports(&config);
        assert_eq!(busy.len(), 1, "{busy:?}");
        assert!(busy[0].starts_with(&format!("listeners.c2s: cannot listen on {addr}")));
        drop(taken);
        assert_eq!(busy_ports(&config), Vec::<String>::new());
    }
}
