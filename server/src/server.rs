//! Start-up and shutdown: storage, certificates, modules, router, listeners.
//!
//! [`start`] binds every configured listener (port 0 works; the bound addresses are
//! returned and logged) and returns a [`RunningServer`]; shutdown is a value
//! ([`CancellationToken`]) every session loop selects on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use openspimed_config::Config;
use openspimed_module_api::{ModuleFactory, ModuleStorage};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::c2s;
use crate::core::router::Router;
pub use crate::core::shared::{HostsChanged, Shared};
use crate::sasl::AuthThrottle;
use crate::storage::AccountStore;
use crate::storage::sqlite::SqliteStore;

/// The modules compiled into this binary.
pub fn builtin_modules() -> Vec<Box<dyn ModuleFactory>> {
    vec![
        Box::new(openspimed_mod_im::Factory),
        Box::new(openspimed_mod_disco::Factory),
        Box::new(openspimed_mod_ping::Factory),
        Box::new(openspimed_mod_version::Factory),
        Box::new(openspimed_mod_mam::Factory),
        Box::new(openspimed_mod_carbons::Factory),
        Box::new(openspimed_mod_private::Factory),
        Box::new(openspimed_mod_bookmarks::Factory),
        Box::new(openspimed_mod_muc::Factory),
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
    /// Federation (its static remote addresses are replaced on reload).
    pub s2s: Arc<crate::s2s::S2s>,
    /// The modules it was started with: what a reload builds `[modules]` from.
    pub factories: Arc<[Box<dyn ModuleFactory>]>,
    /// Every listener and connection task, to wait for at shutdown.
    tracker: TaskTracker,
}

impl RunningServer {
    /// The token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shared.shutdown.clone()
    }

    /// Tells the modules ([`openspimed_module_api::Module::stop`]), then sends
    /// `system-shutdown` to every session and waits (at most `grace`) for them.
    pub async fn shutdown(self, grace: Duration) {
        if !self.shared.shutdown.is_cancelled() {
            self.shared.router.stop_modules().await;
        }
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

/// Starts the server described by `config` with the compiled-in modules.
pub async fn start(config: Config) -> Result<RunningServer, StartError> {
    start_with_modules(config, builtin_modules()).await
}

/// Starts the server described by `config` with the modules of `factories` (the
/// compiled-in ones, or those and a module of one's own, as the tests of the module API
/// do).
pub async fn start_with_modules(
    config: Config,
    factories: Vec<Box<dyn ModuleFactory>>,
) -> Result<RunningServer, StartError> {
    // The recorder first: modules route stanzas while they start, and the per-stanza
    // metric handles are registered on first use.
    crate::telemetry::handle();
    let factories: Arc<[Box<dyn ModuleFactory>]> = factories.into();
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
    let router = Router::new(
        accounts.clone(),
        crate::core::router::AccountSettings {
            scram_iterations: config.auth.scram_iterations,
            registrations_per_ip_per_hour: config.auth.registrations_per_ip_per_hour,
        },
    );
    let parts = crate::core::mount::Parts {
        factories: &factories,
        server: &router.handle(),
        storage: &module_storage,
        base_hooks: &router.server_hooks(),
    };
    crate::core::mount::install(router.as_ref(), &config, &parts).await?;

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
        hosts: std::sync::RwLock::new(config.hosts.clone()),
        config,
        limits,
        router,
        accounts,
        module_storage: module_storage.clone(),
        tls,
        shutdown,
        connections: AtomicUsize::new(0),
        next_session_id: AtomicU64::new(1),
    });
    let clients = Arc::new(c2s::Clients::new(shared.clone()));
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
            tracker.spawn(accept_loop(
                l,
                kind,
                clients.clone(),
                s2s.clone(),
                tracker.clone(),
            ));
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
        s2s,
        factories,
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
    clients: Arc<c2s::Clients>,
    s2s: Arc<crate::s2s::S2s>,
    tracker: TaskTracker,
) {
    let shared = clients.shared.clone();
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
            Listener::C2s => Box::pin(c2s::serve(clients.clone(), tcp, peer, false)),
            Listener::C2sDirectTls => Box::pin(c2s::serve(clients.clone(), tcp, peer, true)),
            Listener::S2s => Box::pin(crate::s2s::incoming::serve(
                shared.clone(),
                s2s.clone(),
                tcp,
                peer,
                false,
            )),
            Listener::S2sDirectTls => Box::pin(crate::s2s::incoming::serve(
                shared.clone(),
                s2s.clone(),
                tcp,
                peer,
                true,
            )),
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
        let problems =
            crate::core::mount::problems(&example.hosts, &example.modules, &builtin_modules());
        assert!(problems.is_empty(), "{problems:?}");
        // The embedded default builds too.
        let default = Config::default();
        let problems =
            crate::core::mount::problems(&default.hosts, &default.modules, &builtin_modules());
        assert!(problems.is_empty(), "{problems:?}");
    }
}
