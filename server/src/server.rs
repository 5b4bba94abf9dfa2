//! Start-up and shutdown: storage, certificates, modules, router, listeners.
//!
//! [`start`] binds every configured listener (port 0 works; the bound addresses are
//! returned and logged) and returns a [`RunningServer`]; shutdown is a value
//! ([`CancellationToken`]) every session loop selects on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use openspimed_config::{Config, HostConfig, LimitsConfig};
use openspimed_module_api::{ModuleFactory, ModuleStorage};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::c2s;
use crate::mount::TableSlot;
use crate::router::Router;
use crate::sasl::AuthThrottle;
use crate::storage::AccountStore;
use crate::storage::sqlite::SqliteStore;
use crate::tls::TlsSetup;
use crate::xml::Limits;

/// The modules compiled into this binary.
pub fn builtin_modules() -> Vec<Box<dyn ModuleFactory>> {
    vec![
        Box::new(openspimed_mod_disco::Factory),
        Box::new(openspimed_mod_ping::Factory),
        Box::new(openspimed_mod_version::Factory),
        Box::new(openspimed_mod_certsvc::Factory),
        Box::new(openspimed_mod_pubsub::Factory),
        Box::new(openspimed_mod_scopenode::Factory),
    ]
}

/// Names of the compiled-in modules, for configuration checks.
pub fn builtin_module_names() -> Vec<&'static str> {
    builtin_modules().iter().map(|f| f.name()).collect()
}

/// Why the server could not start. Each variant reads as one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration problems (one per line).
    #[error("{}", .0.join("\n"))]
    Config(Vec<String>),
    /// Certificate problems (one per line).
    #[error("{}", .0.join("\n"))]
    Certificates(Vec<String>),
    /// The database could not be opened.
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A module refused its configuration.
    #[error("{0}")]
    Module(#[from] openspimed_module_api::ModuleError),
}

/// State shared by every connection.
pub struct Shared {
    /// The configuration the server started with (`limits` excepted: see below).
    pub config: Config,
    /// `[limits]` as currently in force: replaced on reload, read by each new connection.
    limits: std::sync::RwLock<LimitsConfig>,
    /// Routing and sessions.
    pub router: Arc<Router>,
    /// Accounts, for authentication.
    pub accounts: Arc<dyn AccountStore>,
    /// The storage modules use (for the admin commands and tests).
    pub module_storage: Arc<dyn ModuleStorage>,
    /// Failed-authentication throttle.
    pub throttle: AuthThrottle,
    /// In-band registrations per client address.
    pub registrations: crate::ibr::RegistrationLimit,
    /// TLS configurations.
    pub tls: TlsSetup,
    /// Federation.
    pub s2s: Arc<crate::s2s::S2s>,
    /// Cancelled once to stop everything.
    pub shutdown: CancellationToken,
    /// Open connections, clients and servers (for `max_connections`).
    pub connections: AtomicUsize,
    /// Source of unique session ids.
    pub next_session_id: AtomicU64,
    /// `[hosts]` as currently in force (replaced when a reload adds or removes hosts):
    /// where each host's certificate files are.
    hosts: std::sync::RwLock<BTreeMap<String, HostConfig>>,
    /// Sessions waiting to be resumed (XEP-0198), by resumption id.
    pub detached: crate::c2s::DetachedSessions,
}

impl Shared {
    /// A fresh unique session id.
    pub fn session_id(&self) -> u64 {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The `[limits]` in force now.
    pub fn limits(&self) -> LimitsConfig {
        match self.limits.read() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts new `[limits]` in force for connections (and stream restarts) from now on.
    pub fn set_limits(&self, limits: LimitsConfig) {
        self.router.set_im_limits(im_limits(&limits));
        match self.limits.write() {
            Ok(mut l) => *l = limits,
            Err(poisoned) => *poisoned.into_inner() = limits,
        }
    }

    /// The XML parser's share of the limits in force.
    pub fn parser_limits(&self) -> Limits {
        let l = self.limits();
        Limits {
            stanza_bytes: l.c2s_stanza_bytes,
            max_depth: l.max_depth,
            max_attributes: l.max_attributes,
            max_name_length: l.max_name_length,
        }
    }

    /// Every host's certificate and key file (configured or generated), in host order.
    fn certificate_files(&self) -> Vec<(String, PathBuf, PathBuf)> {
        self.hosts()
            .iter()
            .map(|(domain, host)| {
                let (cert, key) = crate::tls::certificate_paths(&self.config, domain, host);
                (domain.clone(), cert, key)
            })
            .collect()
    }

    /// Sets the certificate-expiry gauge of every host from its certificate file.
    fn record_certificate_expiry(&self) {
        for (domain, cert, _) in self.certificate_files() {
            if let Ok(info) = openspimed_certs::inspect(&cert) {
                metrics::gauge!(crate::telemetry::CERT_EXPIRY, "host" => domain)
                    .set(info.not_after_unix as f64);
            }
        }
    }

    /// Re-reads every host's certificate and key. New TLS handshakes use the new set;
    /// established sessions keep theirs. When any file is missing, unreadable or does not
    /// match its key, the running set stays in place and the problems are returned.
    pub fn reload_certificates(&self) -> Result<usize, Vec<String>> {
        self.load_certificates(&self.hosts())
    }

    /// Puts new `[hosts]` and `[modules]` in force (reload): the module instances are built
    /// first and the certificates of the new host set loaded, so that a problem with either
    /// changes nothing; then the routing tables switch ([`crate::mount::switch`]) and the
    /// sessions of removed hosts end with `host-gone` (RFC 6120 §4.9.3.5).
    pub async fn set_hosts(
        &self,
        hosts: &BTreeMap<String, HostConfig>,
        modules: &BTreeMap<String, openspimed_module_api::toml::Table>,
    ) -> Result<HostsChanged, Vec<String>> {
        let before = self.hosts();
        let built = crate::mount::build(
            hosts,
            modules,
            &builtin_modules(),
            &self.router.handle(),
            &self.module_storage,
            &TableSlot::tables(self.router.as_ref()),
        )
        .map_err(|e| vec![e.to_string()])?;
        let certificates = self.load_certificates(hosts)?;
        match self.hosts.write() {
            Ok(mut h) => *h = hosts.clone(),
            Err(poisoned) => *poisoned.into_inner() = hosts.clone(),
        }
        let modules = crate::mount::switch(self.router.as_ref(), built).await;
        let added: Vec<String> = hosts
            .keys()
            .filter(|d| !before.contains_key(*d))
            .cloned()
            .collect();
        let removed: Vec<String> = before
            .keys()
            .filter(|d| !hosts.contains_key(*d))
            .cloned()
            .collect();
        let gone = crate::error::StreamError::new(crate::error::StreamErrorCondition::HostGone);
        for d in &removed {
            let sessions = self.router.registry.kick_domain(d, &gone);
            tracing::info!(host = %d, sessions, "host removed");
        }
        Ok(HostsChanged {
            certificates,
            added,
            removed,
            modules,
        })
    }

    /// `[hosts]` in force.
    pub fn hosts(&self) -> BTreeMap<String, HostConfig> {
        match self.hosts.read() {
            Ok(h) => h.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Loads the certificates of `hosts` and puts them in force.
    fn load_certificates(
        &self,
        hosts: &BTreeMap<String, HostConfig>,
    ) -> Result<usize, Vec<String>> {
        let table = crate::tls::load_table(&self.config.data_dir, hosts, &crate::tls::provider())?;
        let hosts = table.by_name.len();
        self.tls.resolver.replace(table);
        self.record_certificate_expiry();
        tracing::info!(hosts, "certificates reloaded");
        Ok(hosts)
    }
}

/// What [`Shared::set_hosts`] changed.
#[derive(Debug)]
pub struct HostsChanged {
    /// Hosts whose certificates are now loaded.
    pub certificates: usize,
    /// Domains served from now on.
    pub added: Vec<String>,
    /// Domains no longer served.
    pub removed: Vec<String>,
    /// Module instances started, retired or failed.
    pub modules: crate::mount::Switched,
}

fn im_limits(l: &LimitsConfig) -> crate::im::ImLimits {
    crate::im::ImLimits {
        offline_quota: l.offline_messages,
        roster_items: l.roster_items,
    }
}

/// What identifies a version of a certificate or key file: its modification time and size.
type FileStamp = Option<(std::time::SystemTime, u64)>;

fn stamps(shared: &Shared) -> Vec<FileStamp> {
    let stamp = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().unwrap_or(std::time::UNIX_EPOCH), m.len()))
    };
    shared
        .certificate_files()
        .iter()
        .flat_map(|(_, c, k)| [stamp(c), stamp(k)])
        .collect()
}

/// Reloads certificates when their files change on disk (ACME clients renew in place).
/// A half-written renewal (certificate and key not yet matching) keeps the running
/// certificates and is retried when the files change again.
async fn watch_certificates(shared: Arc<Shared>, every: Duration) {
    let mut seen = stamps(&shared);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = stamps(&shared);
        if now == seen {
            continue;
        }
        seen = now;
        match shared.reload_certificates() {
            Ok(_) => {}
            Err(problems) => {
                for p in problems {
                    tracing::warn!(problem = %p, "changed certificate files not loaded; keeping the current ones");
                }
            }
        }
    }
}

/// A started server.
pub struct RunningServer {
    /// Bound STARTTLS c2s addresses, in configuration order.
    pub c2s_addrs: Vec<SocketAddr>,
    /// Bound direct-TLS c2s addresses.
    pub direct_tls_addrs: Vec<SocketAddr>,
    /// Bound STARTTLS s2s addresses.
    pub s2s_addrs: Vec<SocketAddr>,
    /// Bound direct-TLS s2s addresses.
    pub s2s_direct_tls_addrs: Vec<SocketAddr>,
    /// Bound `/metrics` address, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// Shared state (accounts, router) for the admin API and tests.
    pub shared: Arc<Shared>,
    /// Every listener and connection task, to wait for at shutdown.
    tracker: TaskTracker,
}

impl RunningServer {
    /// The token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shared.shutdown.clone()
    }

    /// Sends `system-shutdown` to every session and waits (at most `grace`) for them.
    pub async fn shutdown(self, grace: Duration) {
        self.shared.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within {grace:?}");
        }
    }

    /// Waits until the server has been told to stop and has stopped.
    pub async fn wait(self, grace: Duration) {
        self.shared.shutdown.cancelled().await;
        self.shutdown(grace).await;
    }
}

/// Starts the server described by `config`.
pub async fn start(config: Config) -> Result<RunningServer, StartError> {
    // The recorder first: modules route stanzas while they start, and the per-stanza
    // metric handles are registered on first use.
    crate::telemetry::handle();
    let factories = builtin_modules();
    let names: Vec<&str> = factories.iter().map(|f| f.name()).collect();
    let mut problems = config.problems(&names);
    if config.s2s.dialback_secret.as_deref() == Some(openspimed_config::EXAMPLE_DIALBACK_SECRET) {
        problems.push(
            "s2s.dialback_secret is the example's placeholder: set a long random string, or leave it out".to_owned(),
        );
    }
    if !problems.is_empty() {
        return Err(StartError::Config(problems));
    }
    let tls = crate::tls::build(&config).map_err(StartError::Certificates)?;
    let store = Arc::new(SqliteStore::open(
        &config.data_dir.join("openspimed.sqlite"),
    )?);
    let accounts: Arc<dyn AccountStore> = store.clone();
    let module_storage: Arc<dyn ModuleStorage> = store.clone();
    let router = Router::new(accounts.clone(), store.clone(), im_limits(&config.limits));

    crate::mount::install(
        router.as_ref(),
        &config,
        &factories,
        &router.handle(),
        &module_storage,
    )
    .await?;

    let limits = std::sync::RwLock::new(config.limits.clone());
    let mut c2s_listeners = Vec::new();
    for addr in &config.listeners.c2s {
        c2s_listeners.push(bind(*addr).await?);
    }
    let mut direct_listeners = Vec::new();
    for addr in &config.listeners.c2s_direct_tls {
        direct_listeners.push(bind(*addr).await?);
    }
    let mut s2s_listeners = Vec::new();
    for addr in &config.listeners.s2s {
        s2s_listeners.push(bind(*addr).await?);
    }
    let mut s2s_direct_listeners = Vec::new();
    for addr in &config.listeners.s2s_direct_tls {
        s2s_direct_listeners.push(bind(*addr).await?);
    }
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let provider = crate::tls::provider();
    let (peers, trust_problems) =
        openspimed_certs::peer::PeerVerifier::from_files(&config.s2s.ca_files, &provider);
    for p in trust_problems {
        tracing::warn!(problem = %p, "s2s trust anchors: file skipped; remote domains without trusted certificates need dialback");
    }
    let remotes = Arc::new(std::sync::RwLock::new(config.s2s.remote.clone()));
    let s2s = crate::s2s::S2s::new(
        config.s2s.clone(),
        peers,
        remotes.clone(),
        Arc::new(crate::s2s::resolve::Resolver::new(remotes)),
        tls.resolver.clone(),
        provider,
        Arc::downgrade(&router),
        shutdown.clone(),
        tracker.clone(),
    );
    router.set_remote(s2s.clone());
    let shared = Arc::new(Shared {
        throttle: AuthThrottle::new(
            config.auth.max_failures,
            Duration::from_secs(config.auth.failure_window_secs),
        ),
        registrations: crate::ibr::RegistrationLimit::new(
            config.auth.registrations_per_ip_per_hour,
        ),
        hosts: std::sync::RwLock::new(config.hosts.clone()),
        config,
        limits,
        router,
        accounts,
        module_storage: module_storage.clone(),
        tls,
        s2s,
        shutdown,
        connections: AtomicUsize::new(0),
        next_session_id: AtomicU64::new(1),
        detached: Default::default(),
    });
    shared.record_certificate_expiry();
    tracker.spawn(crate::telemetry::upkeep(shared.shutdown.clone()));
    if shared.config.tls.watch_secs > 0 {
        tracker.spawn(watch_certificates(
            shared.clone(),
            Duration::from_secs(shared.config.tls.watch_secs),
        ));
    }
    let mut c2s_addrs = Vec::new();
    let mut direct_tls_addrs = Vec::new();
    let mut s2s_addrs = Vec::new();
    let mut s2s_direct_tls_addrs = Vec::new();
    for (listeners, kind, addrs) in [
        (c2s_listeners, Listener::C2s, &mut c2s_addrs),
        (
            direct_listeners,
            Listener::C2sDirectTls,
            &mut direct_tls_addrs,
        ),
        (s2s_listeners, Listener::S2s, &mut s2s_addrs),
        (
            s2s_direct_listeners,
            Listener::S2sDirectTls,
            &mut s2s_direct_tls_addrs,
        ),
    ] {
        for l in listeners {
            let local = l.local_addr().map_err(|source| StartError::Bind {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
            tracing::info!(addr = %local, kind = kind.describe(), "listening");
            addrs.push(local);
            tracker.spawn(accept_loop(l, kind, shared.clone(), tracker.clone()));
        }
    }
    let metrics_addr = if shared.config.metrics.enabled {
        let addr = shared.config.metrics.listen;
        let bound = crate::telemetry::serve(addr, shared.shutdown.clone())
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        tracing::info!(addr = %bound, kind = "metrics", "listening");
        Some(bound)
    } else {
        None
    };
    Ok(RunningServer {
        c2s_addrs,
        direct_tls_addrs,
        s2s_addrs,
        s2s_direct_tls_addrs,
        metrics_addr,
        shared,
        tracker,
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// What a listener serves.
#[derive(Clone, Copy, Debug)]
enum Listener {
    /// Clients, STARTTLS.
    C2s,
    /// Clients, direct TLS.
    C2sDirectTls,
    /// Servers, STARTTLS.
    S2s,
    /// Servers, direct TLS.
    S2sDirectTls,
}

impl Listener {
    /// The `listener` metric label.
    fn label(self) -> &'static str {
        match self {
            Listener::C2s => "c2s",
            Listener::C2sDirectTls => "c2s_direct_tls",
            Listener::S2s => "s2s",
            Listener::S2sDirectTls => "s2s_direct_tls",
        }
    }

    /// For the "listening" log line.
    fn describe(self) -> &'static str {
        match self {
            Listener::C2s => "c2s STARTTLS",
            Listener::C2sDirectTls => "c2s direct TLS",
            Listener::S2s => "s2s STARTTLS",
            Listener::S2sDirectTls => "s2s direct TLS",
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    kind: Listener,
    shared: Arc<Shared>,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let open = shared.connections.fetch_add(1, Ordering::Relaxed);
        let listener_kind = kind.label();
        if open >= shared.limits().max_connections {
            metrics::counter!(crate::telemetry::CONNECTIONS_REFUSED, "listener" => listener_kind)
                .increment(1);
            shared.connections.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(%peer, "connection refused: max_connections reached");
            drop(tcp);
            continue;
        }
        metrics::counter!(crate::telemetry::CONNECTIONS_ACCEPTED, "listener" => listener_kind)
            .increment(1);
        let _ = tcp.set_nodelay(true);
        // Each kind's future is boxed: a task's future is as large as the largest of the
        // kinds it may run, and an idle client must not carry the size of an incoming
        // server-to-server stream (massif: 16 KiB per idle c2s session before this).
        let serve: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match kind {
            Listener::C2s => Box::pin(c2s::serve(shared.clone(), tcp, peer, false)),
            Listener::C2sDirectTls => Box::pin(c2s::serve(shared.clone(), tcp, peer, true)),
            Listener::S2s => Box::pin(crate::s2s::incoming::serve(
                shared.clone(),
                tcp,
                peer,
                false,
            )),
            Listener::S2sDirectTls => {
                Box::pin(crate::s2s::incoming::serve(shared.clone(), tcp, peer, true))
            }
        };
        let shared2 = shared.clone();
        tracker.spawn(async move {
            serve.await;
            shared2.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../config/openspimed.example.toml");

    /// Every option every module reads is in the example's `[modules.NAME]`, so none ships
    /// undocumented (the config crate checks its own structs the same way); and the
    /// example's module sections build, host by host, as `run` builds them.
    #[test]
    fn the_example_documents_and_builds_every_module_option() {
        let example = Config::from_toml(EXAMPLE).expect("the example parses");
        let empty = openspimed_module_api::toml::Table::new();
        for f in builtin_modules() {
            let section = example.modules.get(f.name()).unwrap_or(&empty);
            let have = openspimed_module_api::options::keys(section);
            for key in f.option_keys() {
                assert!(
                    have.contains(&key),
                    "openspimed.example.toml lacks modules.{}.{key}",
                    f.name()
                );
            }
        }
        let problems = crate::mount::problems(&example.hosts, &example.modules, &builtin_modules());
        assert!(problems.is_empty(), "{problems:?}");
        // The embedded default builds too.
        let default = Config::default();
        let problems = crate::mount::problems(&default.hosts, &default.modules, &builtin_modules());
        assert!(problems.is_empty(), "{problems:?}");
    }
}
