//! Hooks: a handler sees stanzas at a point of their path and may take them over, change
//! them or refuse them, as Prosody's `module:hook(event, handler, priority)` and ejabberd's
//! `ejabberd_hooks:add(Hook, Host, Fun, Seq)` do.
//!
//! Each point has its own handler list, ordered by priority (higher first, as Prosody
//! orders them); the first handler that does not [`Flow::Pass`] decides, and a point
//! nobody listens to costs one check of an empty list. A handler registers only the points
//! it needs, through [`Hooks`].

use std::sync::Arc;

use async_trait::async_trait;

use crate::element::Element;
use crate::error::StanzaError;

/// Which stanzas a handler wants to see: the others pass it by without a call. (Prosody
/// names its events by stanza kind for the same reason: `message/bare`, `presence/full`,
/// `iq/bare`…)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kinds(u8);

impl Kinds {
    /// `<message/>`.
    pub const MESSAGE: Kinds = Kinds(1);
    /// `<presence/>`.
    pub const PRESENCE: Kinds = Kinds(2);
    /// `<iq/>`.
    pub const IQ: Kinds = Kinds(4);
    /// Every stanza.
    pub const ALL: Kinds = Kinds(7);

    /// The kind of a stanza named `name` (nothing for a name that is not a stanza's).
    pub fn of(name: &str) -> Kinds {
        match name {
            "message" => Kinds::MESSAGE,
            "presence" => Kinds::PRESENCE,
            "iq" => Kinds::IQ,
            _ => Kinds(0),
        }
    }

    /// Whether every kind in `other` is in `self` (and `other` is a kind at all).
    pub fn contains(self, other: Kinds) -> bool {
        other.0 != 0 && self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Kinds {
    type Output = Kinds;
    fn bitor(self, other: Kinds) -> Kinds {
        Kinds(self.0 | other.0)
    }
}

/// What a handler decided about a stanza.
#[derive(Debug)]
pub enum Flow {
    /// Not mine: the stanza (changed or not) goes on to the next handler, then its usual
    /// way.
    Pass(Element),
    /// Taken over: the handler delivered, answered, stored or dropped it.
    Done,
    /// Answered: this reply goes back to the stanza's sender (to a client's own session
    /// directly, on the from-client hook).
    Reply(Element),
    /// Refused: the stanza is bounced to its sender with this error (RFC 6120 §8.3).
    Refuse(Element, StanzaError),
}

/// The local account a stanza is addressed to.
#[derive(Clone, Copy, Debug)]
pub struct AccountTarget<'a> {
    /// The account's bare JID (`user@domain`, as stored).
    pub bare: &'a str,
    /// The resource of a full-JID address, `None` for the bare JID.
    pub resource: Option<&'a str>,
}

/// A stanza to a local account, bare or full, before the server delivers it (RFC 6121
/// §8.5). IM needs it: presence to an account is the roster's business (RFC 6121 §3–4),
/// blocking (XEP-0191 §3.4) drops or bounces what a blocked JID sends, vCard-temp
/// (XEP-0054) answers iqs to the bare JID; later MAM (XEP-0313) and carbons (XEP-0280) see
/// messages here.
#[async_trait]
pub trait ToAccountHook: Send + Sync {
    /// Looks at `stanza`, addressed to `to`.
    async fn to_account(&self, to: AccountTarget<'_>, stanza: Element) -> Flow;
}

/// A message to an account with no available resource, about to be kept for its next
/// session (RFC 6121 §8.5.2.2). XEP-0160 (offline storage) takes it; push notifications
/// (XEP-0357) and MAM-based delivery will see it here. With no handler, the message
/// bounces with `service-unavailable`, as a bare RFC 6120 server answers.
#[async_trait]
pub trait ToOfflineHook: Send + Sync {
    /// Looks at `message`, for the account `bare`.
    async fn to_offline(&self, bare: &str, message: Element) -> Flow;
}

/// Whether one JID's stanzas to an account are refused by that account's privacy rules
/// (XEP-0191 blocking). What is routed is checked by the blocking handler itself; this is
/// for modules that send on an account's behalf, such as PEP (XEP-0163) notifications,
/// which ejabberd checks with its `privacy_check_packet` hook.
#[async_trait]
pub trait PrivacyHook: Send + Sync {
    /// Whether the account `user` (bare JID) blocks `other` (any JID).
    async fn blocks(&self, user: &str, other: &str) -> bool;
}

/// An account's presence subscriptions as other modules may ask them (RFC 6121 §2.1.2.5):
/// who receives its presence and whose presence it receives. PEP needs them for the
/// `presence` access model and its notifications (XEP-0163 §4; ejabberd asks its roster
/// module the same through the `roster_get_jid_info` hook). IM answers; on a host without
/// a handler nobody is subscribed to anybody.
#[async_trait]
pub trait RosterHook: Send + Sync {
    /// Bare JIDs that receive the presence of `owner`, a local account (subscription
    /// `from` or `both`).
    async fn subscribers(&self, owner: &str) -> Vec<String>;
    /// Bare JIDs whose presence `owner` receives (subscription `to` or `both`).
    async fn sources(&self, owner: &str) -> Vec<String>;
    /// Whether `contact` is in the roster of `owner` at all, whatever the subscription:
    /// the `roster` archiving default of XEP-0313 §6.1 asks it.
    async fn contains(&self, owner: &str, contact: &str) -> bool;
}

/// The client session a stanza comes from, or that was bound or closed.
#[derive(Clone, Copy, Debug)]
pub struct ClientSession<'a> {
    /// The account's bare JID (`user@domain`, as stored).
    pub bare: &'a str,
    /// The session's full JID, stamped as `from` on what it sends.
    pub full: &'a str,
    /// The session's registry id: what tells two sessions of one resource apart (one
    /// replaced, one resumed) and what per-session state is kept under.
    pub id: u64,
}

/// A stanza a client session sent, `from` stamped, before the server routes it (RFC 6120
/// §10). IM needs it: the client's roster, blocklist and vCard iqs to its own account
/// (RFC 6121 §2, XEP-0191, XEP-0054), its presence (broadcast, subscriptions, directed:
/// RFC 6121 §3–4), and XEP-0191 §3.5 (nothing goes to a JID the user blocks); carbons
/// (XEP-0280) and MAM (XEP-0313) will see sent messages here. [`Flow::Reply`] is written
/// to the session directly.
#[async_trait]
pub trait FromClientHook: Send + Sync {
    /// Looks at `stanza`, sent by `from`.
    async fn client_sent(&self, from: ClientSession<'_>, stanza: Element) -> Flow;
}

/// A client session was bound (RFC 6120 §7) or ended for good (a session detached for
/// XEP-0198 resumption ends when its resumption times out). IM sends the unavailable
/// presence of a session that ends (RFC 6121 §4.5.2) and keeps per-session state (the
/// directed presences of §4.6) by session id; client state indication (XEP-0352) and
/// push (XEP-0357) need the same.
#[async_trait]
pub trait SessionHook: Send + Sync {
    /// `session` can now send and receive stanzas.
    async fn bound(&self, session: ClientSession<'_>);
    /// `session` is gone; nothing more is delivered to it.
    async fn closed(&self, session: ClientSession<'_>);
}

/// A stanza about to be written to one client session, whatever brought it there (a
/// message, a presence, a push). Client state indication (XEP-0352) filters or holds what
/// an inactive client need not get at once, as Prosody's `mod_csi_simple` does on its
/// session filters. [`Flow::Pass`] writes the stanza (changed or not); [`Flow::Done`]
/// drops it, or keeps it for later — a handler releases what it kept with
/// [`crate::ServerHandle::deliver_unfiltered`], which no handler sees again;
/// [`Flow::Refuse`] bounces it to its sender, [`Flow::Reply`] routes the reply.
#[async_trait]
pub trait ToSessionHook: Send + Sync {
    /// Looks at `stanza`, about to be written to `session`.
    async fn to_session(&self, session: ClientSession<'_>, stanza: Element) -> Flow;
}

/// Stream features a module offers once a client has authenticated (RFC 6120 §4.3.2),
/// beside resource binding and stream management: the roster versioning feature of RFC
/// 6121 §2.6.1 (`<ver xmlns='urn:xmpp:features:rosterver'/>`), client state indication
/// (XEP-0352 §5).
pub trait StreamFeaturesHook: Send + Sync {
    /// Elements for `<stream:features/>` of an authenticated stream to `host`.
    fn features(&self, host: &str) -> Vec<Element>;
}

/// An account was created or deleted through the server: by in-band registration
/// (XEP-0077) or its removal. A module that keeps state per account sets it up or drops
/// it here (what every module stored under the account's bare JID goes with the account
/// anyway); ejabberd's `register_user` and `remove_user` hooks.
#[async_trait]
pub trait AccountHook: Send + Sync {
    /// `bare` was created.
    async fn created(&self, bare: &str);
    /// `bare` was deleted.
    async fn deleted(&self, bare: &str);
}

/// A client on a secured stream that has not authenticated yet.
#[derive(Clone, Copy, Debug)]
pub struct Unauthenticated<'a> {
    /// The host its stream is for.
    pub host: &'a str,
    /// Its address (for limits per address).
    pub ip: std::net::IpAddr,
}

/// Before authentication: what a handler adds to the stream features, and the stanzas a
/// client may send before it logs in. XEP-0077 §3.1 (in-band registration) needs both:
/// the `<register xmlns='http://jabber.org/features/iq-register'/>` feature and the
/// registration iqs. A stanza no handler takes ends the stream with `not-authorized`
/// (RFC 6120 §4.9.3.12).
#[async_trait]
pub trait PreAuthHook: Send + Sync {
    /// Elements for `<stream:features/>` of a stream to `host` before authentication.
    fn features(&self, host: &str) -> Vec<Element>;
    /// A stanza from `client` before authentication.
    async fn stanza(&self, client: Unauthenticated<'_>, stanza: Element) -> Flow;
}

/// Where handlers register. Priorities: higher runs first; equal priorities run in the
/// order registered.
pub trait Hooks: Send + Sync {
    /// Adds a [`ToAccountHook`] for the stanzas of `kinds`.
    fn on_to_account(&self, priority: i32, kinds: Kinds, hook: Arc<dyn ToAccountHook>);
    /// Adds a [`ToOfflineHook`].
    fn on_to_offline(&self, priority: i32, hook: Arc<dyn ToOfflineHook>);
    /// Adds a [`FromClientHook`] for the stanzas of `kinds`.
    fn on_from_client(&self, priority: i32, kinds: Kinds, hook: Arc<dyn FromClientHook>);
    /// Adds a [`PreAuthHook`] (run in the order added).
    fn on_pre_auth(&self, hook: Arc<dyn PreAuthHook>);
    /// Adds a [`SessionHook`] (run in the order added).
    fn on_session(&self, hook: Arc<dyn SessionHook>);
    /// Adds a [`PrivacyHook`].
    fn on_privacy(&self, hook: Arc<dyn PrivacyHook>);
    /// Adds a [`RosterHook`] (the first added answers).
    fn on_roster(&self, hook: Arc<dyn RosterHook>);
    /// Adds a [`ToSessionHook`] for the stanzas of `kinds`.
    fn on_to_session(&self, priority: i32, kinds: Kinds, hook: Arc<dyn ToSessionHook>);
    /// Adds a [`StreamFeaturesHook`] (run in the order added).
    fn on_stream_features(&self, hook: Arc<dyn StreamFeaturesHook>);
    /// Adds an [`AccountHook`] (run in the order added).
    fn on_account(&self, hook: Arc<dyn AccountHook>);
    /// Service-discovery features (XEP-0030) the handlers implement for every account of
    /// the server (`urn:xmpp:blocking`, `vcard-temp`, `msgoffline`…), listed in the
    /// server's disco#info beside the modules' features.
    fn add_account_features(&self, features: &[&str]);
    /// Features an account's bare JID lists in its own disco#info (XEP-0030 §3 of an
    /// account, what PEP answers): `urn:xmpp:mam:2` is discovered there (XEP-0313 §7),
    /// as Prosody's `account-disco-info` event adds it.
    fn add_bare_jid_features(&self, features: &[&str]);
}
