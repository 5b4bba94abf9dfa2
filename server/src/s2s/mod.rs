//! Server-to-server federation (RFC 6120; XEP-0178 SASL EXTERNAL; XEP-0220 Server Dialback;
//! XEP-0368 direct TLS).
//!
//! - [`S2s::send`] takes a stanza for a remote domain: it is queued per (local domain,
//!   remote domain) pair and written by that pair's outgoing link ([`outgoing`]), which
//!   resolves, connects, secures and authenticates first; when that fails, everything
//!   queued bounces (`remote-server-not-found`, or `remote-server-timeout` when the
//!   connect timeout ran out).
//! - [`incoming::serve`] runs a connection a remote server opened: STARTTLS (required),
//!   then SASL EXTERNAL for a peer whose certificate is valid for its domain, or dialback
//!   when policy allows; stanzas whose `from` is not an authenticated domain end the
//!   stream with `invalid-from`.
//! - Certificates are checked per RFC 6125 by [`openspimed_certs::peer`], dialback keys
//!   by [`dialback`], addresses found by [`resolve`].

pub mod dialback;
pub mod incoming;
mod outgoing;
pub mod resolve;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use openspimed_certs::SniResolver;
use openspimed_certs::peer::PeerVerifier;
use openspimed_config::S2sConfig;
use openspimed_module_api::jid::Jid;
use openspimed_module_api::{Condition, Element, StanzaError};
use rustls::crypto::CryptoProvider;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::core::router::{Remote, RemoteRefusal, Router};
use crate::telemetry;
use crate::xml::Limits;

/// The federation state of one server process.
pub struct S2s {
    /// `[s2s]` as the server started with it.
    pub config: S2sConfig,
    /// Dialback keys derive from it.
    pub secret: dialback::Secret,
    /// Trusted roots for remote certificates.
    pub peers: PeerVerifier,
    /// Where remote domains are.
    pub resolver: Arc<dyn resolve::Resolve>,
    /// `[s2s.remote]` in force: static addresses (read by the resolver) and per-domain
    /// dialback policy; replaced by [`S2s::set_remotes`] on reload.
    remotes: resolve::Remotes,
    /// Our certificates, presented as client certificates on outgoing connections.
    pub certs: Arc<SniResolver>,
    /// The crypto provider, passed explicitly to every TLS configuration.
    pub provider: Arc<CryptoProvider>,
    /// Where stanzas from remote servers go, and bounces of ours. Weak: the router owns us.
    pub router: Weak<Router>,
    /// Outgoing links by (local domain, remote domain).
    links: DashMap<(String, String), Link>,
    /// Authenticated incoming connections per remote domain (`max_connections_per_domain`).
    incoming: DashMap<String, usize>,
    /// Source of link ids, so an ended link removes only its own table entry.
    next_link: AtomicU64,
    /// Stops links at shutdown.
    pub shutdown: CancellationToken,
    /// Link tasks, waited for at shutdown.
    pub tracker: TaskTracker,
}

/// One outgoing link's queue.
struct Link {
    /// Stanzas waiting for the link; bounded by `queue_length`.
    tx: mpsc::Sender<Element>,
    /// Tells this link from a later one for the same pair.
    id: u64,
}

impl Remote for S2s {
    fn send(self: Arc<Self>, stanza: Element) -> Result<(), (Element, RemoteRefusal)> {
        S2s::send(&self, stanza)
    }
}

impl S2s {
    /// Federation state for a server; `router` receives what remote servers send.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: S2sConfig,
        peers: PeerVerifier,
        remotes: resolve::Remotes,
        resolver: Arc<dyn resolve::Resolve>,
        certs: Arc<SniResolver>,
        provider: Arc<CryptoProvider>,
        router: Weak<Router>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Arc<S2s> {
        Arc::new(S2s {
            secret: dialback::Secret::new(config.dialback_secret.as_deref()),
            config,
            peers,
            resolver,
            remotes,
            certs,
            provider,
            router,
            links: DashMap::new(),
            incoming: DashMap::new(),
            next_link: AtomicU64::new(1),
            shutdown,
            tracker,
        })
    }

    /// Puts a new `[s2s.remote]` table in force (addresses and policies) for connections
    /// set up from now on.
    pub fn set_remotes(
        &self,
        remotes: std::collections::BTreeMap<String, openspimed_config::RemoteConfig>,
    ) {
        match self.remotes.write() {
            Ok(mut r) => *r = remotes,
            Err(poisoned) => *poisoned.into_inner() = remotes,
        }
    }

    /// Whether dialback may authenticate `domain` (its own policy or its nearest parent
    /// domain's, else the default).
    pub fn dialback_allowed(&self, domain: &str) -> bool {
        let remotes = match self.remotes.read() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut d = domain;
        loop {
            if let Some(p) = remotes.get(d).and_then(|r| r.dialback) {
                return p;
            }
            match d.split_once('.') {
                Some((_, parent)) => d = parent,
                None => return self.config.dialback,
            }
        }
    }

    /// Parser limits for server-to-server streams.
    pub fn limits(&self, base: Limits) -> Limits {
        Limits {
            stanza_bytes: self.config.stanza_bytes,
            ..base
        }
    }

    /// Connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.config.connect_timeout_secs.max(1))
    }

    /// Idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.config.idle_timeout_secs.max(1))
    }

    /// Queues a stanza (its `from` on a local domain, its `to` on a remote one) for the
    /// remote domain, starting the link if there is none.
    pub fn send(self: &Arc<Self>, stanza: Element) -> Result<(), (Element, RemoteRefusal)> {
        let domain = |a: Option<&str>| {
            a.and_then(|j| Jid::new(j).ok())
                .map(|j| j.domain().as_str().to_owned())
        };
        let (Some(local), Some(remote)) = (domain(stanza.attr("from")), domain(stanza.attr("to")))
        else {
            return Err((stanza, RemoteRefusal::Addressing));
        };
        let key = (local, remote);
        let mut stanza = stanza;
        // Two rounds at most: a link that ended between lookup and send is replaced once.
        for _ in 0..2 {
            let tx = {
                let entry = self
                    .links
                    .entry(key.clone())
                    .or_insert_with(|| self.start_link(&key.0, &key.1));
                entry.tx.clone()
            };
            match tx.try_send(stanza) {
                Ok(()) => {
                    metrics::gauge!(telemetry::S2S_QUEUED).increment(1.0);
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Full(s)) => {
                    return Err((s, RemoteRefusal::QueueFull));
                }
                Err(mpsc::error::TrySendError::Closed(s)) => {
                    self.links.remove_if(&key, |_, l| l.tx.same_channel(&tx));
                    stanza = s;
                }
            }
        }
        Err((stanza, RemoteRefusal::QueueFull))
    }

    fn start_link(self: &Arc<Self>, local: &str, remote: &str) -> Link {
        let (tx, rx) = mpsc::channel(self.config.queue_length.max(1));
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        let s2s = self.clone();
        let (l, r) = (local.to_owned(), remote.to_owned());
        self.tracker
            .spawn(async move { outgoing::run(s2s, l, r, id, rx).await });
        Link { tx, id }
    }

    /// Forgets a link that ended (unless a newer one took its place).
    fn link_ended(&self, local: &str, remote: &str, id: u64) {
        self.links
            .remove_if(&(local.to_owned(), remote.to_owned()), |_, l| l.id == id);
    }

    /// Bounces a stanza we could not deliver to a remote domain.
    async fn bounce(&self, stanza: &Element, condition: Condition, text: &str) {
        if let Some(router) = self.router.upgrade() {
            router
                .bounce(stanza, StanzaError::new(condition).with_text(text))
                .await;
        }
    }

    /// Counts an authenticated incoming connection from `domain`; `false` when the domain
    /// already has `max_connections_per_domain`.
    fn incoming_opened(&self, domain: &str) -> bool {
        let mut n = self.incoming.entry(domain.to_owned()).or_insert(0);
        if *n >= self.config.max_connections_per_domain {
            return false;
        }
        *n += 1;
        true
    }

    fn incoming_closed(&self, domain: &str) {
        if let Some(mut n) = self.incoming.get_mut(domain) {
            *n = n.saturating_sub(1);
        }
        self.incoming.remove_if(domain, |_, n| *n == 0);
    }
}
