//! The state every session shares: the configuration in force (limits and hosts replaced
//! on reload), accounts, module storage, TLS, the authentication throttle, the router, the
//! shutdown token. What only one kind of session uses (resumable client sessions, the
//! registration limit, federation) is that kind's own.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use openspimed_config::{Config, HostConfig, LimitsConfig};
use openspimed_module_api::{ModuleFactory, ModuleStorage};
use tokio_util::sync::CancellationToken;

use crate::core::mount::TableSlot;
use crate::core::router::Router;
use crate::sasl::AuthThrottle;
use crate::storage::AccountStore;
use crate::tls::TlsSetup;
use crate::xml::Limits;

/// State shared by every connection.
pub struct Shared {
    /// The configuration the server started with (`limits` excepted: see below).
    pub config: Config,
    /// `[limits]` as currently in force: replaced on reload, read by each new connection.
    pub(crate) limits: std::sync::RwLock<LimitsConfig>,
    /// Routing and sessions.
    pub router: Arc<Router>,
    /// Accounts, for authentication.
    pub accounts: Arc<dyn AccountStore>,
    /// The storage modules use (for the admin commands and tests).
    pub module_storage: Arc<dyn ModuleStorage>,
    /// Failed-authentication throttle.
    pub throttle: AuthThrottle,
    /// TLS configurations.
    pub tls: TlsSetup,
    /// Cancelled once to stop everything.
    pub shutdown: CancellationToken,
    /// Open connections, clients and servers (for `max_connections`).
    pub connections: AtomicUsize,
    /// Source of unique session ids.
    pub next_session_id: AtomicU64,
    /// `[hosts]` as currently in force (replaced when a reload adds or removes hosts):
    /// where each host's certificate files are.
    pub(crate) hosts: std::sync::RwLock<BTreeMap<String, HostConfig>>,
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

    /// Puts new `[limits]` in force for connections (and stream restarts) from now on
    /// (the router's share is the caller's: see `control`).
    pub fn set_limits(&self, limits: LimitsConfig) {
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
    pub(crate) fn certificate_files(&self) -> Vec<(String, PathBuf, PathBuf)> {
        self.hosts()
            .iter()
            .map(|(domain, host)| {
                let (cert, key) = crate::tls::certificate_paths(&self.config, domain, host);
                (domain.clone(), cert, key)
            })
            .collect()
    }

    /// Sets the certificate-expiry gauge of every host from its certificate file.
    pub(crate) fn record_certificate_expiry(&self) {
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
    /// changes nothing; then the routing tables switch ([`crate::core::mount::switch`]) and the
    /// sessions of removed hosts end with `host-gone` (RFC 6120 §4.9.3.5).
    pub async fn set_hosts(
        &self,
        hosts: &BTreeMap<String, HostConfig>,
        modules: &BTreeMap<String, openspimed_module_api::toml::Table>,
        factories: &[Box<dyn ModuleFactory>],
    ) -> Result<HostsChanged, Vec<String>> {
        let before = self.hosts();
        let parts = crate::core::mount::Parts {
            factories,
            server: &self.router.handle(),
            storage: &self.module_storage,
            base_hooks: &self.router.server_hooks(),
        };
        let built = crate::core::mount::build(
            hosts,
            modules,
            &parts,
            &TableSlot::tables(self.router.as_ref()),
        )
        .map_err(|e| vec![e.to_string()])?;
        let certificates = self.load_certificates(hosts)?;
        match self.hosts.write() {
            Ok(mut h) => *h = hosts.clone(),
            Err(poisoned) => *poisoned.into_inner() = hosts.clone(),
        }
        let modules = crate::core::mount::switch(self.router.as_ref(), built).await;
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
    pub modules: crate::core::mount::Switched,
}
