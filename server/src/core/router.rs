//! Where every stanza goes (RFC 6120 §10, RFC 6121 §8 for the parts that need no roster).
//!
//! [`Router::route`] classifies the `to` address — a hosted service (module route), a
//! virtual host itself, a local account (bare or full JID), or a remote domain — and hands
//! the stanza to a module, a session's outbox, or bounces it with the RFC's error.
//! Sessions are found through [`Registry`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use dashmap::DashMap;
pub use openspimed_module_api::Interest;
use openspimed_module_api::jid::Jid;
use openspimed_module_api::{
    AccountTarget, BoundSession, BoxFuture, Condition, Context, Created, Element, Flow, Identity,
    IqError, MessageType, Outcome, Route, ServerHandle, StanzaError, StanzaKind, StorageFailure,
};
use tokio::sync::{mpsc, oneshot};

use crate::core::hooks::{HookLists, HookTable};
pub use crate::core::mount::Host;
use crate::core::mount::{Mounted, TableSlot, Tables};
use crate::error::{StreamError, StreamErrorCondition, module_failure, storage_failure};
use crate::storage::AccountStore;

/// What a session's writer receives.
#[derive(Debug)]
pub enum Outgoing {
    /// A stanza to write. Boxed so that each queue slot is small: a queue's first block of
    /// slots is allocated per session, idle or not.
    Stanza(Box<Element>),
    /// A stanza to write past the session's to-session hooks (one a handler held and
    /// releases).
    Unfiltered(Box<Element>),
    /// End the session with this stream error (e.g. `conflict` when replaced). Boxed like
    /// the stanza, for the same reason.
    Kick(Box<StreamError>),
}

/// One bound resource in the registry.
#[derive(Clone, Debug)]
struct SessionEntry {
    /// The resourcepart.
    resource: String,
    /// Unique per session, so a late unbind cannot remove a newer session's entry.
    id: u64,
    /// The session's outbox.
    tx: mpsc::Sender<Outgoing>,
    /// Presence priority once available (RFC 6121 §4.7.2.3); `None` until initial presence.
    priority: Option<i8>,
    /// The last available presence the resource broadcast, for the user's other resources
    /// and for probes (RFC 6121 §4.3.2); `None` while unavailable.
    presence: Option<Arc<Element>>,
    /// What the resource asked to be kept up to date about ([`Interest`] bits).
    interests: u8,
}

/// Connected sessions by bare JID.
#[derive(Default)]
pub struct Registry {
    /// `user@domain` → its bound resources.
    by_bare: DashMap<String, Vec<SessionEntry>>,
}

impl Registry {
    /// Binds a resource. Returns the outbox of a session it replaces (RFC 6120 §7.7.2.2:
    /// the new session wins; the old one must be told `conflict`).
    pub fn bind(
        &self,
        bare: &str,
        resource: &str,
        id: u64,
        tx: mpsc::Sender<Outgoing>,
    ) -> Option<mpsc::Sender<Outgoing>> {
        let mut entry = self.by_bare.entry(bare.to_owned()).or_default();
        let old = entry
            .iter()
            .position(|s| s.resource == resource)
            .map(|i| entry.remove(i).tx);
        entry.push(SessionEntry {
            resource: resource.to_owned(),
            id,
            tx,
            priority: None,
            presence: None,
            interests: 0,
        });
        old
    }

    /// Removes a session, unless it was already replaced.
    pub fn unbind(&self, bare: &str, id: u64) {
        if let Some(mut e) = self.by_bare.get_mut(bare) {
            e.retain(|s| s.id != id);
            if e.is_empty() {
                drop(e);
                self.by_bare.remove_if(bare, |_, v| v.is_empty());
            }
        }
    }

    /// Whether a resource name is in use for this account.
    pub fn resource_taken(&self, bare: &str, resource: &str) -> bool {
        self.by_bare
            .get(bare)
            .is_some_and(|e| e.iter().any(|s| s.resource == resource))
    }

    /// Records a session's broadcast presence (`None`: unavailable) and so its availability
    /// and priority. Returns whether it was available before.
    pub fn set_presence(&self, bare: &str, id: u64, presence: Option<Element>) -> bool {
        let priority = presence.as_ref().map(|p| {
            p.get_child("priority", openspimed_module_api::ns::CLIENT)
                .and_then(|p| p.text().trim().parse::<i8>().ok())
                .unwrap_or(0)
        });
        let mut was = false;
        if let Some(mut e) = self.by_bare.get_mut(bare) {
            for s in e.iter_mut().filter(|s| s.id == id) {
                was = s.presence.is_some();
                s.priority = priority;
                s.presence = presence.clone().map(Arc::new);
            }
        }
        was
    }

    /// Marks a session as interested in pushes of a list.
    pub fn set_interest(&self, bare: &str, id: u64, what: Interest) {
        if let Some(mut e) = self.by_bare.get_mut(bare) {
            for s in e.iter_mut().filter(|s| s.id == id) {
                s.interests |= what as u8;
            }
        }
    }

    /// Resources that asked for a list, with their outboxes.
    pub fn interested(&self, bare: &str, what: Interest) -> Vec<(String, mpsc::Sender<Outgoing>)> {
        self.by_bare
            .get(bare)
            .map(|e| {
                e.iter()
                    .filter(|s| s.interests & what as u8 != 0)
                    .map(|s| (s.resource.clone(), s.tx.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every bound session of an account, as modules see them.
    pub fn sessions(&self, bare: &str) -> Vec<BoundSession> {
        self.by_bare
            .get(bare)
            .map(|e| {
                e.iter()
                    .map(|s| {
                        BoundSession::new(
                            s.resource.clone(),
                            s.id,
                            s.presence.clone(),
                            s.priority,
                            s.interests,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The last presence of every available resource, by resource.
    pub fn presences(&self, bare: &str) -> Vec<(String, Arc<Element>)> {
        self.by_bare
            .get(bare)
            .map(|e| {
                e.iter()
                    .filter_map(|s| s.presence.clone().map(|p| (s.resource.clone(), p)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Outboxes of every available resource (presence to a bare JID, RFC 6121 §8.5.2.1.2).
    pub fn available(&self, bare: &str) -> Vec<mpsc::Sender<Outgoing>> {
        self.by_bare
            .get(bare)
            .map(|e| {
                e.iter()
                    .filter(|s| s.presence.is_some())
                    .map(|s| s.tx.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The outbox of one resource.
    pub fn full(&self, bare: &str, resource: &str) -> Option<mpsc::Sender<Outgoing>> {
        self.by_bare.get(bare).and_then(|e| {
            e.iter()
                .find(|s| s.resource == resource)
                .map(|s| s.tx.clone())
        })
    }

    /// Outboxes of the available resources with the highest non-negative priority
    /// (RFC 6121 §8.5.2.1.1).
    fn best(&self, bare: &str) -> Vec<mpsc::Sender<Outgoing>> {
        let Some(e) = self.by_bare.get(bare) else {
            return Vec::new();
        };
        let Some(top) = e
            .iter()
            .filter_map(|s| s.priority)
            .filter(|p| *p >= 0)
            .max()
        else {
            return Vec::new();
        };
        e.iter()
            .filter(|s| s.priority == Some(top))
            .map(|s| s.tx.clone())
            .collect()
    }

    /// Ends every session of accounts on `domain` with `err` (a host that was removed);
    /// returns how many were told.
    pub fn kick_domain(&self, domain: &str, err: &StreamError) -> usize {
        let mut told = 0;
        for entry in self.by_bare.iter() {
            let on_domain = entry
                .key()
                .rsplit_once('@')
                .is_some_and(|(_, d)| d == domain);
            if on_domain {
                for s in entry.value() {
                    if s.tx.try_send(Outgoing::Kick(Box::new(err.clone()))).is_ok() {
                        told += 1;
                    }
                }
            }
        }
        told
    }

    /// Outboxes of the available resources with non-negative priority.
    fn non_negative(&self, bare: &str) -> Vec<mpsc::Sender<Outgoing>> {
        self.by_bare
            .get(bare)
            .map(|e| {
                e.iter()
                    .filter(|s| s.priority.is_some_and(|p| p >= 0))
                    .map(|s| s.tx.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Outboxes of every session of an account (to end them all, e.g. when it is removed).
    pub fn sessions_of(&self, bare: &str) -> Vec<mpsc::Sender<Outgoing>> {
        self.by_bare
            .get(bare)
            .map(|e| e.iter().map(|s| s.tx.clone()).collect())
            .unwrap_or_default()
    }

    /// Number of bound sessions.
    pub fn session_count(&self) -> usize {
        self.by_bare.iter().map(|e| e.len()).sum()
    }
}

/// How accounts made through the server ([`ServerHandle::create_account`]) are made.
#[derive(Clone, Copy, Debug)]
pub struct AccountSettings {
    /// PBKDF2 iterations of new SCRAM credentials (`[auth] scram_iterations`).
    pub scram_iterations: u32,
    /// In-band registrations per client address and hour (`[auth]
    /// registrations_per_ip_per_hour`; 0: no limit).
    pub registrations_per_ip_per_hour: u32,
}

/// The routing table and session registry.
pub struct Router {
    /// Hosts and module routes: empty until the modules are built (they need the router),
    /// replaced as a whole when a reload changes hosts or modules.
    tables: std::sync::RwLock<Arc<Tables>>,
    /// Bound sessions.
    pub registry: Registry,
    /// To tell "no such account" from "account offline", and to make, change and remove
    /// accounts for modules (in-band registration).
    pub(crate) accounts: Arc<dyn AccountStore>,
    /// How those accounts are made.
    account_settings: AccountSettings,
    /// Iqs modules sent and wait on, by (requesting JID, id): their answer goes here
    /// instead of to the module's handler.
    pending: DashMap<(String, String), oneshot::Sender<Element>>,
    /// Federation: where stanzas for other domains go; set once at start.
    remote: OnceLock<Arc<dyn Remote>>,
    /// The server's own hook handlers (IM and registration register theirs at start): each
    /// host fires them merged with its modules' ([`Host::hooks`]).
    pub own_hooks: HookTable,
    /// Bumped whenever the tables change: a session compares it (one load of a value
    /// nobody writes in between) with the one its host was looked up at, and looks the
    /// host up again only after a reload.
    generation: AtomicU64,
}

/// Where stanzas for domains not served here go (RFC 6120 §10.4). The router holds
/// federation as this trait, so that it never imports the s2s sessions (and a cluster can
/// put another hop here).
pub trait Remote: Send + Sync {
    /// Queues `stanza` (`from` on a local domain, `to` on a remote one), or gives it back
    /// with the reason it cannot go.
    fn send(self: Arc<Self>, stanza: Element) -> Result<(), (Element, RemoteRefusal)>;
}

/// Why a stanza could not be queued for a remote domain.
#[derive(Debug, PartialEq, Eq)]
pub enum RemoteRefusal {
    /// The `from` or `to` address is not usable for server-to-server routing.
    Addressing,
    /// The remote domain's queue is full.
    QueueFull,
}

impl Router {
    /// An empty router; [`crate::core::mount::install`] puts the hosts and modules in
    /// before routing.
    pub fn new(accounts: Arc<dyn AccountStore>, account_settings: AccountSettings) -> Arc<Router> {
        Arc::new(Router {
            account_settings,
            tables: Default::default(),
            registry: Registry::default(),
            accounts,
            pending: DashMap::new(),
            remote: OnceLock::new(),
            own_hooks: HookTable::default(),
            generation: AtomicU64::new(0),
        })
    }

    /// The handle modules get: it does not keep the router alive.
    pub fn handle(self: &Arc<Self>) -> Arc<dyn ServerHandle> {
        Arc::new(RouterRef(Arc::downgrade(self)))
    }

    /// The server's own hook handlers, as the hosts' lists start from.
    pub fn server_hooks(&self) -> Arc<HookLists> {
        Arc::new(self.own_hooks.lists())
    }

    /// How many times the tables were replaced; see [`Router::host_since`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// `host` as the tables in force have it, with the generation they were read at:
    /// `None` when the tables did not change since `generation` (or the host is gone).
    pub fn host_since(&self, domain: &str, generation: u64) -> Option<(Arc<Host>, u64)> {
        let now = self.generation();
        if now == generation {
            return None;
        }
        self.host(domain).map(|h| (h, now))
    }

    /// Tells every module of every host that the server stops (`Module::stop`), in
    /// configuration order, before the sessions are told.
    pub async fn stop_modules(&self) {
        let tables = self.tables();
        for host in tables.hosts.values() {
            for m in &host.modules {
                m.module.stop(&host.cx).await;
            }
        }
    }

    /// Hosts and module routes in force.
    fn tables(&self) -> Arc<Tables> {
        match self.tables.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Connects federation: stanzas for domains not served here go to `s2s`.
    pub fn set_remote(&self, s2s: Arc<dyn Remote>) {
        let _ = self.remote.set(s2s);
    }

    /// Whether a domain is served here: a virtual host or a hosted service domain.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        let t = self.tables();
        t.hosts.contains_key(domain) || t.domain_routes.contains_key(domain)
    }

    /// A virtual host by domain.
    pub fn host(&self, domain: &str) -> Option<Arc<Host>> {
        self.tables().hosts.get(domain).cloned()
    }

    /// The host for streams whose header names none (the first configured domain).
    pub fn default_host(&self) -> String {
        self.tables().default_host.clone()
    }

    /// Routes a stanza whose `from` is already authenticated.
    pub async fn route(&self, stanza: Element) {
        let start = std::time::Instant::now();
        self.route_inner(stanza).await;
        crate::telemetry::routing_took(start.elapsed());
    }

    async fn route_inner(&self, stanza: Element) {
        let to = match stanza.attr("to") {
            None => None,
            Some(t) => match Jid::new(t) {
                Ok(j) => Some(j),
                Err(_) => {
                    return self
                        .bounce(&stanza, StanzaError::new(Condition::JidMalformed))
                        .await;
                }
            },
        };
        let Some(to) = to else {
            return self.route_to_own_account(stanza).await;
        };
        let to_str = to.to_string();
        if matches!(StanzaKind::of(&stanza), Some(StanzaKind::Iq(Some(t))) if t.is_answer()) {
            let key = (to_str.clone(), stanza.attr("id").unwrap_or("").to_owned());
            if let Some((_, waiter)) = self.pending.remove(&key) {
                let _ = waiter.send(stanza);
                return;
            }
        }
        let domain = to.domain().as_str();
        let target = {
            let t = self.tables();
            match t
                .jid_routes
                .get(&to_str)
                .or_else(|| t.domain_routes.get(domain))
            {
                Some((host, module)) => Err((host.clone(), module.clone())),
                None => Ok(t.hosts.get(domain).cloned()),
            }
        };
        let host = match target {
            Err((host, module)) => return self.call(&module, &host.cx, stanza).await,
            Ok(None) => return self.to_remote(stanza).await,
            Ok(Some(host)) => host,
        };
        match to.node() {
            None => self.to_host(&host, stanza).await,
            Some(node) => {
                let bare = format!("{}@{}", node.as_str(), domain);
                self.to_account(&host, &bare, to.resource().map(|r| r.as_str()), stanza)
                    .await
            }
        }
    }

    /// Hands a copy of an account's initial presence to the modules of its host that
    /// watch for it (PEP sends the last published items).
    pub async fn initial_presence(&self, bare: &str, presence: &Element) {
        let domain = bare.rsplit_once('@').map_or("", |(_, d)| d);
        let Some(host) = self.host(domain) else {
            return;
        };
        for m in &host.presence_watchers {
            self.call(m, &host.cx, presence.clone()).await;
        }
    }

    /// A stanza for another domain: queued for federation (RFC 6120 §10.4).
    async fn to_remote(&self, stanza: Element) {
        let Some(s2s) = self.remote.get() else {
            return self
                .bounce(&stanza, StanzaError::new(Condition::RemoteServerNotFound))
                .await;
        };
        let from_local = stanza
            .attr("from")
            .and_then(|f| Jid::new(f).ok())
            .is_some_and(|f| self.is_local_domain(f.domain().as_str()));
        if !from_local {
            // Never relay between two remote domains.
            return self
                .bounce(&stanza, StanzaError::new(Condition::NotAllowed))
                .await;
        }
        if let Err((stanza, why)) = s2s.clone().send(stanza) {
            let err = match why {
                RemoteRefusal::Addressing => StanzaError::new(Condition::JidMalformed),
                RemoteRefusal::QueueFull => StanzaError::new(Condition::ResourceConstraint)
                    .with_text("too many stanzas waiting for that domain"),
            };
            self.bounce(&stanza, err).await;
        }
    }

    /// A stanza without `to` is for the sender's own account (RFC 6120 §10.3.3); the
    /// server answers iqs on the account's behalf.
    async fn route_to_own_account(&self, stanza: Element) {
        let from = stanza.attr("from").and_then(|f| Jid::new(f).ok());
        let Some(host) = from.and_then(|f| self.host(f.domain().as_str())) else {
            return;
        };
        // Presence without `to` was already taken by the session (availability); messages
        // to one's own account without `to` have nowhere else to go.
        if matches!(StanzaKind::of(&stanza), Some(StanzaKind::Iq(_))) {
            // The server's own handler for the payload first (service discovery without
            // `to` is what clients ask the server for; an account's disco is asked at its
            // bare JID), else the account's (PEP publishes without `to`).
            let server_handles = stanza
                .first_child()
                .is_some_and(|p| host.iq_handlers.contains_key(p.ns()));
            if !server_handles && let Some(m) = account_handler(&host, &stanza) {
                return self.call(&m, &host.cx, stanza).await;
            }
            self.to_host(&host, stanza).await
        }
    }

    /// Stanzas to a virtual host's own address.
    async fn to_host(&self, host: &Arc<Host>, stanza: Element) {
        // Messages and presence to the server itself have no handler yet: ignored, as RFC
        // 6120 §10.3.3 allows for messages to the server; results and errors for the
        // server: nothing is waiting for them.
        if !StanzaKind::of(&stanza).is_some_and(StanzaKind::is_request) {
            return;
        }
        let module = stanza
            .first_child()
            .and_then(|p| host.iq_handlers.get(p.ns()))
            .cloned();
        match module {
            Some(m) => self.call(&m, &host.cx, stanza).await,
            None => {
                self.bounce(&stanza, StanzaError::new(Condition::ServiceUnavailable))
                    .await
            }
        }
    }

    /// Stanzas to a local account (RFC 6121 §8.5): the hooks first (IM's presence,
    /// blocking and vCard handlers), then delivery.
    async fn to_account(&self, host: &Host, bare: &str, resource: Option<&str>, stanza: Element) {
        let stanza = match host
            .hooks
            .to_account(AccountTarget { bare, resource }, stanza)
            .await
        {
            Flow::Pass(s) => s,
            Flow::Done => return,
            Flow::Reply(r) => return Box::pin(self.route(r)).await,
            Flow::Refuse(s, err) => return self.bounce(&s, err).await,
        };
        let kind = StanzaKind::of(&stanza);
        if let Some(res) = resource {
            if let Some(tx) = self.registry.full(bare, res) {
                return self.push(&tx, stanza).await;
            }
            // RFC 6121 §8.5.3.2: no such resource.
            return match kind {
                Some(StanzaKind::Message(MessageType::Normal | MessageType::Chat)) => {
                    self.message_to_bare(host, bare, stanza).await
                }
                Some(StanzaKind::Message(MessageType::Groupchat)) => {
                    self.bounce(&stanza, StanzaError::new(Condition::ServiceUnavailable))
                        .await
                }
                Some(k) if k.is_request() => {
                    self.bounce(&stanza, StanzaError::new(Condition::ServiceUnavailable))
                        .await
                }
                // Headlines, errors and iq answers for a gone resource are dropped.
                _ => {}
            };
        }
        match kind {
            Some(StanzaKind::Message(_)) => self.message_to_bare(host, bare, stanza).await,
            // The server answers iqs to a bare JID on the account's behalf (RFC 6121
            // §8.5.2.1.3): the modules' account handlers (PEP) here, the hooks' (vCard)
            // above.
            Some(k) if k.is_request() => {
                if let Some(m) = account_handler(host, &stanza) {
                    return self.call(&m, &host.cx, stanza).await;
                }
                self.bounce(&stanza, StanzaError::new(Condition::ServiceUnavailable))
                    .await
            }
            _ => {}
        }
    }

    /// A message a session of `bare` accepted and never delivered (it ended without
    /// acknowledging it, XEP-0198 §5), routed again to the account's other resources or
    /// to offline storage. The to-account hooks saw it once already (blocking, archiving,
    /// carbons) and are not asked again: the archive holds it once.
    pub async fn redeliver(&self, bare: &str, stanza: Element) {
        let domain = bare.rsplit_once('@').map_or("", |(_, d)| d);
        if let Some(host) = self.host(domain) {
            self.message_to_bare(&host, bare, stanza).await;
        }
    }

    /// RFC 6121 §8.5.2: a message to a bare JID.
    async fn message_to_bare(&self, host: &Host, bare: &str, stanza: Element) {
        let mtype = MessageType::of(&stanza);
        if mtype == MessageType::Groupchat {
            return self
                .bounce(&stanza, StanzaError::new(Condition::ServiceUnavailable))
                .await;
        }
        // §8.5.2.1.1: headlines to every resource with non-negative priority, the rest to
        // the highest-priority ones.
        let targets = if mtype == MessageType::Headline {
            self.registry.non_negative(bare)
        } else {
            self.registry.best(bare)
        };
        if let Some((last, rest)) = targets.split_last() {
            for tx in rest {
                self.push(tx, stanza.clone()).await;
            }
            return self.push(last, stanza).await;
        }
        if matches!(mtype, MessageType::Headline | MessageType::Error) {
            return;
        }
        // No available resource: stored for the next login (XEP-0160), if the account
        // exists (RFC 6121 §8.5.2.2.1: otherwise service-unavailable).
        let (user, domain) = bare.split_once('@').unwrap_or((bare, ""));
        match self.accounts.account_exists(user, domain).await {
            // XEP-0160 (IM's handler) keeps it; without one, as a bare RFC 6120 server.
            Ok(true) => match host.hooks.to_offline(bare, stanza).await {
                Flow::Done => {}
                Flow::Reply(r) => Box::pin(self.route(r)).await,
                Flow::Refuse(s, err) => self.bounce(&s, err).await,
                Flow::Pass(s) => {
                    self.bounce(&s, StanzaError::new(Condition::ServiceUnavailable))
                        .await
                }
            },
            Ok(false) => {
                self.bounce(&stanza, StanzaError::new(Condition::ServiceUnavailable))
                    .await
            }
            Err(e) => {
                let err = storage_failure("checking an account", &e);
                self.bounce(&stanza, err).await
            }
        }
    }

    async fn push(&self, tx: &mpsc::Sender<Outgoing>, stanza: Element) {
        match tx.try_send(Outgoing::Stanza(Box::new(stanza))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(Outgoing::Stanza(s))) => {
                tracing::warn!("a session's queue is full; bouncing a stanza");
                let err = StanzaError::new(Condition::ResourceConstraint);
                Box::pin(self.bounce(&s, err)).await;
            }
            // The session ended between lookup and send: as if it was never there.
            Err(_) => {}
        }
    }

    async fn call(&self, mounted: &Arc<Mounted>, cx: &Context, stanza: Element) {
        let Some(_inside) = mounted.enter().await else {
            // Replaced (or removed) by a reload while the stanza waited: the tables in
            // force name what took its place.
            return Box::pin(self.route_inner(stanza)).await;
        };
        let module = &mounted.module;
        let envelope = shallow(&stanza);
        let outcome = match module.handle(cx, stanza).await {
            Ok(o) => o,
            Err(e) => Outcome::Error(module_failure(module.name(), &e)),
        };
        match outcome {
            Outcome::Reply(reply) => Box::pin(self.route(reply)).await,
            Outcome::Error(err) => self.bounce(&envelope, err).await,
            Outcome::Handled => {}
        }
    }

    /// Answers `stanza` with `err` (never an error to an error, RFC 6120 §8.3.1).
    pub async fn bounce(&self, stanza: &Element, err: StanzaError) {
        metrics::counter!(crate::telemetry::STANZA_ERRORS, "condition" => err.condition.as_str())
            .increment(1);
        if let Some(reply) = err.reply_to(stanza) {
            Box::pin(self.route(reply)).await;
        }
    }
}

impl TableSlot for Router {
    fn tables(&self) -> Arc<Tables> {
        Router::tables(self)
    }

    fn set_tables(&self, tables: Tables) {
        match self.tables.write() {
            Ok(mut t) => *t = Arc::new(tables),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(tables),
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// What the host of local account `bare` answers with its [`HookLists`].
fn ask_host<T: Default + Send + 'static>(
    router: Option<Arc<Router>>,
    bare: String,
    ask: for<'a> fn(&'a HookLists, &'a str) -> BoxFuture<'a, T>,
) -> BoxFuture<'static, T> {
    Box::pin(async move {
        let host = router.and_then(|r| r.host(bare.rsplit_once('@').map_or("", |(_, d)| d)));
        match host {
            Some(h) => ask(&h.hooks, &bare).await,
            None => T::default(),
        }
    })
}

/// The module that answers this iq (get/set) on an account's behalf, by payload namespace.
fn account_handler(host: &Host, iq: &Element) -> Option<Arc<Mounted>> {
    if !StanzaKind::of(iq).is_some_and(StanzaKind::is_request) {
        return None;
    }
    iq.first_child()
        .and_then(|p| host.account_iq.get(p.ns()))
        .cloned()
}

/// A copy of a stanza's name and attributes, to address an error after the module took
/// the stanza.
fn shallow(stanza: &Element) -> Element {
    let mut e = Element::new(stanza.name(), stanza.ns_handle().clone());
    for (k, v) in stanza.attrs() {
        e.set_attr(k, v);
    }
    e
}

/// What modules hold: a weak reference, so modules never keep a stopped server alive.
struct RouterRef(Weak<Router>);

impl RouterRef {
    /// The outbox of the bound session `full`.
    fn outbox(&self, full: &str) -> Option<mpsc::Sender<Outgoing>> {
        let (bare, resource) = full.split_once('/')?;
        self.0.upgrade()?.registry.full(bare, resource)
    }
}

impl ServerHandle for RouterRef {
    fn send(&self, stanza: Element) {
        if let Some(router) = self.0.upgrade() {
            tokio::spawn(async move { router.route(stanza).await });
        }
    }

    fn route(&self, stanza: Element) -> BoxFuture<'static, ()> {
        let router = self.0.upgrade();
        Box::pin(async move {
            if let Some(r) = router {
                r.route(stanza).await;
            }
        })
    }

    fn bounce(&self, stanza: Element, error: StanzaError) -> BoxFuture<'static, ()> {
        let router = self.0.upgrade();
        Box::pin(async move {
            if let Some(r) = router {
                r.bounce(&stanza, error).await;
            }
        })
    }

    fn deliver(&self, full: &str, stanza: Element) -> bool {
        self.outbox(full)
            .is_some_and(|tx| tx.try_send(Outgoing::Stanza(Box::new(stanza))).is_ok())
    }

    fn deliver_unfiltered(&self, full: &str, stanza: Element) -> bool {
        self.outbox(full)
            .is_some_and(|tx| tx.try_send(Outgoing::Unfiltered(Box::new(stanza))).is_ok())
    }

    fn sessions(&self, bare: &str) -> Vec<BoundSession> {
        match self.0.upgrade() {
            Some(r) => r.registry.sessions(bare),
            None => Vec::new(),
        }
    }

    fn set_presence(&self, bare: &str, id: u64, presence: Option<Element>) -> bool {
        self.0
            .upgrade()
            .is_some_and(|r| r.registry.set_presence(bare, id, presence))
    }

    fn set_interest(&self, bare: &str, id: u64, what: Interest) {
        if let Some(r) = self.0.upgrade() {
            r.registry.set_interest(bare, id, what);
        }
    }

    fn account_exists(&self, bare: &str) -> BoxFuture<'static, Result<bool, StorageFailure>> {
        let router = self.0.upgrade();
        let bare = bare.to_owned();
        Box::pin(async move {
            let (Some(r), Some((user, domain))) = (router, bare.split_once('@')) else {
                return Ok(false);
            };
            r.accounts
                .account_exists(user, domain)
                .await
                .map_err(|e| StorageFailure(e.to_string()))
        })
    }

    fn account_name(&self, username: &str) -> String {
        crate::sasl::normalize_user(username)
    }

    fn registration_limit(&self, host: &str) -> Option<u32> {
        let r = self.0.upgrade()?;
        let allowed = r.host(host).is_some_and(|h| h.allow_registration);
        allowed.then_some(r.account_settings.registrations_per_ip_per_hour)
    }

    fn create_account(
        &self,
        username: &str,
        host: &str,
        password: &str,
    ) -> BoxFuture<'static, Result<Created, StorageFailure>> {
        let router = self.0.upgrade();
        let (node, host) = (crate::sasl::normalize_user(username), host.to_owned());
        let password = password.to_owned();
        Box::pin(async move {
            let Some(r) = router else {
                return Err(StorageFailure("the server is stopping".into()));
            };
            if node.is_empty() {
                return Ok(Created::Invalid);
            }
            let creds =
                crate::sasl::derive_credentials(&password, r.account_settings.scram_iterations);
            let created = r
                .accounts
                .create_account(&node, &host, &creds)
                .await
                .map_err(|e| StorageFailure(e.to_string()))?;
            if !created {
                return Ok(Created::Taken);
            }
            let bare = format!("{node}@{host}");
            if let Some(h) = r.host(&host) {
                h.hooks.account_created(&bare).await;
            }
            Ok(Created::Account(bare))
        })
    }

    fn set_password(
        &self,
        bare: &str,
        password: &str,
    ) -> BoxFuture<'static, Result<bool, StorageFailure>> {
        let router = self.0.upgrade();
        let (bare, password) = (bare.to_owned(), password.to_owned());
        Box::pin(async move {
            let (Some(r), Some((user, domain))) = (router, bare.split_once('@')) else {
                return Ok(false);
            };
            let creds =
                crate::sasl::derive_credentials(&password, r.account_settings.scram_iterations);
            r.accounts
                .set_credentials(user, domain, &creds)
                .await
                .map_err(|e| StorageFailure(e.to_string()))
        })
    }

    fn delete_account(&self, bare: &str) -> BoxFuture<'static, Result<bool, StorageFailure>> {
        let router = self.0.upgrade();
        let bare = bare.to_owned();
        Box::pin(async move {
            let (Some(r), Some((user, domain))) = (router, bare.split_once('@')) else {
                return Ok(false);
            };
            let deleted = r
                .accounts
                .delete_account(user, domain)
                .await
                .map_err(|e| StorageFailure(e.to_string()))?;
            if let Some(h) = r.host(domain) {
                h.hooks.account_deleted(&bare).await;
            }
            // XEP-0077 §3.2: every session of a removed account ends (the one that asked
            // after the answer, which is queued before this).
            let gone = StreamError::with_text(
                StreamErrorCondition::NotAuthorized,
                "the account was removed",
            );
            for tx in r.registry.sessions_of(&bare) {
                let _ = tx.try_send(Outgoing::Kick(Box::new(gone.clone())));
            }
            Ok(deleted)
        })
    }

    fn initial_presence(&self, bare: &str, presence: Element) -> BoxFuture<'static, ()> {
        let router = self.0.upgrade();
        let bare = bare.to_owned();
        Box::pin(async move {
            if let Some(r) = router {
                r.initial_presence(&bare, &presence).await;
            }
        })
    }

    fn host_features(&self, host: &str) -> Vec<String> {
        let Some(r) = self.0.upgrade() else {
            return Vec::new();
        };
        let Some(h) = r.host(host) else {
            return Vec::new();
        };
        // What the hooks implement for accounts (IM: blocking, vCard, offline storage).
        let mut out = h.hooks.account_features().to_vec();
        out.extend(h.modules.iter().flat_map(|m| m.module.features()));
        out
    }

    fn host_identities(&self, host: &str) -> Vec<Identity> {
        let Some(r) = self.0.upgrade() else {
            return Vec::new();
        };
        let mut out = vec![Identity {
            category: "server".into(),
            kind: "im".into(),
            name: Some("openspimed".into()),
        }];
        if let Some(h) = r.host(host) {
            out.extend(h.modules.iter().flat_map(|m| m.module.identities()));
        }
        out
    }

    fn host_items(&self, host: &str) -> Vec<String> {
        let Some(r) = self.0.upgrade() else {
            return Vec::new();
        };
        let Some(h) = r.host(host) else {
            return Vec::new();
        };
        let mut out: Vec<String> = h
            .modules
            .iter()
            .flat_map(|m| m.module.routes())
            .filter_map(|route| match route {
                Route::Jid(j) | Route::Domain(j) => Some(j),
                Route::ServerIq(_) | Route::AccountIq(_) | Route::InitialPresence => None,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    fn software(&self) -> (&'static str, &'static str) {
        ("openspimed", env!("CARGO_PKG_VERSION"))
    }

    fn send_iq(
        &self,
        iq: Element,
        timeout: std::time::Duration,
    ) -> BoxFuture<'static, Result<Element, IqError>> {
        let router = self.0.upgrade();
        Box::pin(async move {
            let router = router.ok_or(IqError::Gone)?;
            if !StanzaKind::of(&iq).is_some_and(StanzaKind::is_request) {
                return Err(IqError::Invalid("only iq get/set are requests"));
            }
            let from = iq
                .attr("from")
                .and_then(|f| Jid::new(f).ok())
                .ok_or(IqError::Invalid("a request needs a valid from"))?;
            let id = iq
                .attr("id")
                .ok_or(IqError::Invalid("a request needs an id"))?;
            let key = (from.to_string(), id.to_owned());
            let (tx, rx) = oneshot::channel();
            router.pending.insert(key.clone(), tx);
            router.route(iq).await;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(answer)) => Ok(answer),
                _ => {
                    router.pending.remove(&key);
                    Err(IqError::Timeout)
                }
            }
        })
    }

    fn receives_presence(&self, owner: &str, contact: &str) -> BoxFuture<'static, bool> {
        let subscribers = self.presence_subscribers(owner);
        let contact = contact.to_owned();
        Box::pin(async move { subscribers.await.contains(&contact) })
    }

    fn presence_subscribers(&self, owner: &str) -> BoxFuture<'static, Vec<String>> {
        ask_host(self.0.upgrade(), owner.to_owned(), |h, o| {
            Box::pin(h.presence_subscribers(o))
        })
    }

    fn presence_sources(&self, user: &str) -> BoxFuture<'static, Vec<String>> {
        ask_host(self.0.upgrade(), user.to_owned(), |h, u| {
            Box::pin(h.presence_sources(u))
        })
    }

    fn roster_contains(&self, owner: &str, contact: &str) -> BoxFuture<'static, bool> {
        let router = self.0.upgrade();
        let (owner, contact) = (owner.to_owned(), contact.to_owned());
        Box::pin(async move {
            match router.and_then(|r| r.host(owner.rsplit_once('@').map_or("", |(_, d)| d))) {
                Some(h) => h.hooks.roster_contains(&owner, &contact).await,
                None => false,
            }
        })
    }

    fn bare_jid_features(&self, host: &str) -> Vec<String> {
        match self.0.upgrade().and_then(|r| r.host(host)) {
            Some(h) => h.hooks.bare_jid_features().to_vec(),
            None => Vec::new(),
        }
    }

    fn blocks(&self, user: &str, other: &str) -> BoxFuture<'static, bool> {
        let router = self.0.upgrade();
        let (user, other) = (user.to_owned(), other.to_owned());
        Box::pin(async move {
            match router {
                Some(r) => match r.host(user.rsplit_once('@').map_or("", |(_, d)| d)) {
                    Some(h) => h.hooks.blocks(&user, &other).await,
                    None => false,
                },
                None => false,
            }
        })
    }

    fn available_presences(&self, bare: &str) -> Vec<(String, Arc<Element>)> {
        match self.0.upgrade() {
            Some(r) => r
                .registry
                .presences(bare)
                .into_iter()
                .map(|(resource, p)| (format!("{bare}/{resource}"), p))
                .collect(),
            None => Vec::new(),
        }
    }

    fn is_hosted_service(&self, jid: &str) -> bool {
        let Some(r) = self.0.upgrade() else {
            return false;
        };
        let Ok(j) = Jid::new(jid) else {
            return false;
        };
        let t = r.tables();
        t.jid_routes.contains_key(&j.to_string())
            || t.domain_routes.contains_key(j.domain().as_str())
    }
}
