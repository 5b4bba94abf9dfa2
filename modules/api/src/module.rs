//! What a module is, what it declares, and the context it runs in.

use std::sync::Arc;

use async_trait::async_trait;

use crate::element::Element;
use crate::error::StanzaError;
use crate::future::BoxFuture;
use crate::hooks::Hooks;
use crate::storage::{ArchiveStore, KvStore, ModuleStorage, StorageFailure};

/// Why an iq a module sent got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IqError {
    /// No answer within the timeout.
    #[error("no answer in time")]
    Timeout,
    /// The stanza could not be sent (not an iq get/set with an id and from).
    #[error("not a request iq: {0}")]
    Invalid(&'static str),
    /// The server is shutting down.
    #[error("server shutting down")]
    Gone,
}

/// What a module wants delivered to it. The router owns the table built from these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `iq` get/set addressed to the virtual host itself (or without `to`) whose payload is
    /// in this namespace: `(ns::PING)` makes the module answer pings to the server.
    ServerIq(&'static str),
    /// Every stanza addressed to this exact JID (e.g. `services@example.org/cert`).
    Jid(String),
    /// Every stanza addressed to this domain or any JID in it (e.g. `pubsub.example.org`).
    Domain(String),
    /// `iq` get/set addressed to a local account's bare JID, or without `to` (the sender's
    /// own account), whose payload is in this namespace: the module answers on the
    /// account's behalf (PEP, XEP-0163).
    AccountIq(&'static str),
    /// A copy of each initial available presence of the host's accounts (RFC 6121 §4.2.2),
    /// `from` the resource's full JID, after the server broadcast it. The module must not
    /// hold the session up: slow work belongs in a task of its own.
    InitialPresence,
}

/// A disco identity (XEP-0030 §3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Category from the XSF registry (`server`, `pubsub`, `component`, …).
    pub category: String,
    /// Type within the category (`im`, `service`, …).
    pub kind: String,
    /// Human-readable name, optional.
    pub name: Option<String>,
}

/// What a handler decided about a stanza.
#[derive(Debug)]
pub enum Outcome {
    /// Send this reply (routed like any stanza).
    Reply(Element),
    /// Answer with this error (the core builds the error stanza).
    Error(StanzaError),
    /// Taken care of; nothing to send.
    Handled,
}

/// Failure inside a module that the sender must not see the details of.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The module's configuration is invalid (reported at start and by `check`).
    #[error("invalid configuration: modules.{module}{}: {reason}", if key.is_empty() { String::new() } else { format!(".{key}") })]
    Config {
        /// Module name.
        module: &'static str,
        /// The key within `[modules.NAME]` that is wrong (`nodes[0].scopes[0].name`);
        /// empty when the problem is not one key's.
        key: String,
        /// What is wrong, in one line.
        reason: String,
    },
    /// Storage or another dependency failed; answered as `internal-server-error`.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A list a client session asked to be kept up to date about: the server keeps the wish
/// with the session (so that it outlives a reload of the module that pushes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interest {
    /// Roster pushes (RFC 6121 §2.1.6): the session requested the roster.
    Roster = 1,
    /// Blocklist pushes (XEP-0191 §3.2): the session requested the blocklist.
    Blocklist = 2,
}

/// What creating an account came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// The account, by its bare JID (the username as stored: SASLprep'd, lower-cased).
    Account(String),
    /// The username is taken.
    Taken,
    /// The username is not a valid localpart.
    Invalid,
}

/// One bound session of a local account, as the session registry has it.
#[derive(Clone, Debug)]
pub struct BoundSession {
    /// The resourcepart.
    pub resource: String,
    /// The registry id (what [`crate::hooks::ClientSession::id`] names).
    pub id: u64,
    /// The last available presence it broadcast (RFC 6121 §4.2), `None` while it is
    /// unavailable: what the user's other resources and probes are answered with.
    pub presence: Option<Arc<Element>>,
    /// The priority of that presence (RFC 6121 §4.7.2.3, as the registry read it: what
    /// routing to the bare JID goes by), `None` while unavailable.
    pub priority: Option<i8>,
    /// The [`Interest`]s it asked for, as bits.
    interests: u8,
}

impl BoundSession {
    /// A session as the registry describes it.
    pub fn new(
        resource: String,
        id: u64,
        presence: Option<Arc<Element>>,
        priority: Option<i8>,
        interests: u8,
    ) -> BoundSession {
        BoundSession {
            resource,
            id,
            presence,
            priority,
            interests,
        }
    }

    /// Whether it asked to be kept up to date about `what`.
    pub fn wants(&self, what: Interest) -> bool {
        self.interests & what as u8 != 0
    }
}

/// The server as a module sees it: routing and what it knows about hosts.
pub trait ServerHandle: Send + Sync {
    /// Routes a stanza (its `from` must be an address the module owns), in a task of its
    /// own: the caller does not wait.
    fn send(&self, stanza: Element);
    /// Routes a stanza and returns once it was handed on (to a session's queue, a module,
    /// storage or federation): what keeps a handler's stanzas in the order it sends them.
    fn route(&self, stanza: Element) -> BoxFuture<'static, ()>;
    /// Answers `stanza` with `error` (never an error to an error, RFC 6120 §8.3.1).
    fn bounce(&self, stanza: Element, error: StanzaError) -> BoxFuture<'static, ()>;
    /// Writes `stanza` to the bound session `full` directly (no hooks, no routing): a
    /// push, or what the server sends a session on its own. `false` when there is no such
    /// session or its queue is full.
    fn deliver(&self, full: &str, stanza: Element) -> bool;
    /// Like [`ServerHandle::deliver`], past the session's [`crate::hooks::ToSessionHook`]s:
    /// what a handler that held a stanza releases.
    fn deliver_unfiltered(&self, full: &str, stanza: Element) -> bool;
    /// The bound sessions of the local account `bare`.
    fn sessions(&self, bare: &str) -> Vec<BoundSession>;
    /// Records the presence session `id` of `bare` broadcast (`None`: unavailable): its
    /// availability and priority decide where messages to the bare JID go (RFC 6121
    /// §8.5.2.1). Returns whether it was available before.
    fn set_presence(&self, bare: &str, id: u64, presence: Option<Element>) -> bool;
    /// Marks session `id` of `bare` as wanting pushes of `what`.
    fn set_interest(&self, bare: &str, id: u64, what: Interest);
    /// Whether `bare` is an account of a host here.
    fn account_exists(&self, bare: &str) -> BoxFuture<'static, Result<bool, StorageFailure>>;
    /// The username as accounts store it (SASLprep'd, lower-cased), what a login with
    /// `username` would be for; empty when it cannot be one.
    fn account_name(&self, username: &str) -> String;
    /// Registrations each client address may make per hour on `host` when the host allows
    /// in-band registration (`allow_registration`; 0: no limit), `None` when it does not.
    fn registration_limit(&self, host: &str) -> Option<u32>;
    /// Creates `username@host` with `password` (kept as SCRAM keys only) and tells the
    /// host's account hooks.
    fn create_account(
        &self,
        username: &str,
        host: &str,
        password: &str,
    ) -> BoxFuture<'static, Result<Created, StorageFailure>>;
    /// Replaces the password of the account `bare`; `false` if there is no such account.
    fn set_password(
        &self,
        bare: &str,
        password: &str,
    ) -> BoxFuture<'static, Result<bool, StorageFailure>>;
    /// Deletes the account `bare` with what every module kept for it, tells the host's
    /// account hooks, and ends every session of it with `not-authorized` (XEP-0077 §3.2);
    /// `false` if there was no such account.
    fn delete_account(&self, bare: &str) -> BoxFuture<'static, Result<bool, StorageFailure>>;
    /// Hands a copy of an account's initial presence to the modules of its host that
    /// asked for it ([`Route::InitialPresence`]: PEP sends the last published items).
    fn initial_presence(&self, bare: &str, presence: Element) -> BoxFuture<'static, ()>;
    /// Disco features of a virtual host: the union of its modules' features.
    fn host_features(&self, host: &str) -> Vec<String>;
    /// Disco identities of a virtual host.
    fn host_identities(&self, host: &str) -> Vec<Identity>;
    /// Addresses of the services hosted under a virtual host (disco#items of the server).
    fn host_items(&self, host: &str) -> Vec<String>;
    /// Software name and version, for XEP-0092.
    fn software(&self) -> (&'static str, &'static str);
    /// Sends an iq get/set (with `from` set to an address the module owns and an `id`)
    /// and waits for its result or error stanza.
    fn send_iq(
        &self,
        iq: Element,
        timeout: std::time::Duration,
    ) -> BoxFuture<'static, Result<Element, IqError>>;
    /// Whether a JID is handled by a module of this server (a hosted service).
    fn is_hosted_service(&self, jid: &str) -> bool;
    /// Whether `contact` (a bare JID) receives the presence of `owner`, a local account's
    /// bare JID: the owner's roster has the contact with a subscription of `from` or
    /// `both` (RFC 6121 §2.1.2.5). `false` for accounts not hosted here, and when the
    /// roster cannot be read. What the `presence` access model of XEP-0060 asks.
    fn receives_presence(&self, owner: &str, contact: &str) -> BoxFuture<'static, bool>;
    /// Bare JIDs that receive the presence of `owner`, a local account: its roster items
    /// with a subscription of `from` or `both`.
    fn presence_subscribers(&self, owner: &str) -> BoxFuture<'static, Vec<String>>;
    /// Bare JIDs whose presence `user`, a local account, receives: its roster items with a
    /// subscription of `to` or `both`.
    fn presence_sources(&self, user: &str) -> BoxFuture<'static, Vec<String>>;
    /// Whether `contact` (a bare JID) is in the roster of the local account `owner`,
    /// whatever the subscription; `false` when the roster cannot be read.
    fn roster_contains(&self, owner: &str, contact: &str) -> BoxFuture<'static, bool>;
    /// Features the bare JIDs of `host`'s accounts list in their own disco#info
    /// ([`crate::hooks::Hooks::add_bare_jid_features`]).
    fn bare_jid_features(&self, host: &str) -> Vec<String>;
    /// Whether the local account `user` blocks `other` (XEP-0191): a module sending on the
    /// account's behalf (PEP) must not reach it.
    fn blocks(&self, user: &str, other: &str) -> BoxFuture<'static, bool>;
    /// The available resources of a local account with the last presence each broadcast
    /// (full JID, presence): what a PEP service reads entity capabilities (XEP-0115) from.
    fn available_presences(&self, bare: &str) -> Vec<(String, Arc<Element>)>;
}

/// Handed to a module on every call: which host it serves and how to reach the server.
#[derive(Clone)]
pub struct Context {
    /// The virtual host this instance of the module serves.
    pub host: Arc<str>,
    /// The server's services.
    pub server: Arc<dyn ServerHandle>,
    /// Storage the module may use.
    pub storage: Arc<dyn ModuleStorage>,
}

impl Context {
    /// The key-value store `name` of this host (Prosody's `module:open_store(name)`): per
    /// account (owner = bare JID) or for the host (owner `""`). Two modules opening one
    /// name share it.
    pub fn open_store(&self, name: &str) -> Arc<dyn KvStore> {
        self.storage.kv(&self.host, name)
    }

    /// The archive `name` of this host (Prosody's `module:open_store(name, "archive")`).
    pub fn open_archive(&self, name: &str) -> Arc<dyn ArchiveStore> {
        self.storage.archive(&self.host, name)
    }
}

/// A plug-in. One instance per virtual host that enables it.
#[async_trait]
pub trait Module: Send + Sync + 'static {
    /// Name used in configuration, logs and metrics.
    fn name(&self) -> &'static str;
    /// What the module handles.
    fn routes(&self) -> Vec<Route>;
    /// Disco features this module adds to its host.
    fn features(&self) -> Vec<String> {
        Vec::new()
    }
    /// Disco identities this module adds to its host.
    fn identities(&self) -> Vec<Identity> {
        Vec::new()
    }
    /// Handles one stanza routed to it. `from` is already authenticated and stamped.
    async fn handle(&self, cx: &Context, stanza: Element) -> Result<Outcome, ModuleError>;
    /// Registers this instance's hook handlers ([`crate::hooks`]); called once, when the
    /// instance is built for `cx.host`. They see the stanzas and sessions of that host's
    /// accounts only, from the moment the routing tables name the instance — which may be
    /// before its `start` has ended, as the `module:hook` calls in a Prosody module's body
    /// are live before its `module.load` runs. A reload that replaces the instance drops
    /// its handlers with it; one that keeps it keeps them.
    fn hooks(self: Arc<Self>, _cx: &Context, _hooks: &dyn Hooks) {}
    /// Runs once when the server has started (routes installed, before clients connect):
    /// load state, create preconfigured nodes, subscribe to other services.
    async fn start(&self, _cx: &Context) -> Result<(), ModuleError> {
        Ok(())
    }
    /// Runs once when the server shuts down, before the sessions close: what a module
    /// tells those it serves (a conference service tells each occupant it is out, with
    /// XEP-0045's status 332). Stanzas it routes here still reach local sessions.
    async fn stop(&self, _cx: &Context) {}
}

/// Builds a module for one host from its configuration table.
pub trait ModuleFactory: Send + Sync {
    /// The name under which operators enable it (`modules = ["ping"]`).
    fn name(&self) -> &'static str;
    /// Builds the instance for `host` from `[modules.NAME]` (an empty table when absent).
    /// `openspimed check` calls it too, exactly as `run` does, and reports what it refuses.
    fn build(&self, host: &str, options: &toml::Table) -> Result<Arc<dyn Module>, ModuleError>;
    /// Every key of `[modules.NAME]` the module reads, as [`crate::options::keys`] lists
    /// them from a sample with every option set: a test holds them against the documented
    /// example configuration, so an option cannot ship undocumented.
    fn option_keys(&self) -> Vec<String> {
        Vec::new()
    }
    /// The admin subcommands the module supplies (`openspimed keys …`).
    fn admin_commands(&self) -> Vec<Box<dyn crate::admin::AdminCommand>> {
        Vec::new()
    }
}
