//! IM's handlers on the hooks of its host: what reaches an account goes through blocking
//! (XEP-0191), presence and subscriptions (RFC 6121 §3–4) and vCards (XEP-0054); what
//! finds no resource is stored offline (XEP-0160); what a client sends goes through
//! blocking (§3.5), its own roster, blocklist and vCard iqs, and its presence; a session
//! that ends is announced unavailable. [`crate::ImModule`] installs them.

use std::sync::Arc;

use dashmap::DashMap;
use openspimed_module_api::jid::Jid;
use openspimed_module_api::{
    AccountTarget, ClientSession, Condition, Element, Flow, FromClientHook, Hooks, Kinds,
    PresenceType, PrivacyHook, RosterHook, ServerHandle, SessionHook, StanzaError, StanzaKind,
    StreamFeaturesHook, ToAccountHook, ToOfflineHook, async_trait,
};

use crate::Im;
use crate::presence::SessionIm;

/// Priorities on the to-account hook: blocking before anything else sees the stanza
/// (XEP-0191 §3.4: nothing from a blocked JID arrives, not even to another handler), then
/// presence, then vCards.
const BLOCKING: i32 = 100;
const PRESENCE: i32 = 50;
const VCARD: i32 = 0;
/// Priorities on the from-client hook: the user's own blocklist first (XEP-0191 §3.5),
/// then the iqs to the user's own account, then presence.
const OUTBOUND_BLOCKING: i32 = 100;
const OWN_ACCOUNT: i32 = 50;
const OUTBOUND_PRESENCE: i32 = 40;

/// IM's state of each bound client session, by session id.
type SessionStates = Arc<DashMap<u64, SessionIm>>;

/// Adds IM's handlers, sharing `im`, to `hooks`; they reach sessions and contacts
/// through `server`.
pub fn install(server: Arc<dyn ServerHandle>, im: Arc<Im>, hooks: &dyn Hooks) {
    let blocking = Arc::new(Blocking { im: im.clone() });
    hooks.on_to_account(BLOCKING, Kinds::ALL, blocking.clone());
    hooks.on_privacy(blocking);
    let presence = Presence {
        server: server.clone(),
        im: im.clone(),
    };
    hooks.on_to_account(PRESENCE, Kinds::PRESENCE, Arc::new(presence));
    let vcard = VCard { im: im.clone() };
    hooks.on_to_account(VCARD, Kinds::IQ, Arc::new(vcard));
    let offline = Offline { im: im.clone() };
    hooks.on_to_offline(0, Arc::new(offline));
    let outbound = OutboundBlocking { im: im.clone() };
    hooks.on_from_client(OUTBOUND_BLOCKING, Kinds::ALL, Arc::new(outbound));
    let own = OwnAccount {
        server: server.clone(),
        im: im.clone(),
    };
    hooks.on_from_client(OWN_ACCOUNT, Kinds::IQ, Arc::new(own));
    let client = Arc::new(ClientPresence {
        server,
        im: im.clone(),
        sessions: SessionStates::default(),
    });
    hooks.on_from_client(OUTBOUND_PRESENCE, Kinds::PRESENCE, client.clone());
    hooks.on_session(client);
    hooks.on_roster(Arc::new(Roster(im)));
    hooks.on_stream_features(Arc::new(RosterVersioning));
}

/// RFC 6121 §2.6.1: a server that supports roster versioning says so in the stream
/// features after authentication, or clients never send `ver`.
struct RosterVersioning;

impl StreamFeaturesHook for RosterVersioning {
    fn features(&self, _host: &str) -> Vec<Element> {
        vec![Element::new("ver", NS_ROSTERVER)]
    }
}

/// The roster versioning stream feature (RFC 6121 §2.6.1).
pub const NS_ROSTERVER: &str = "urn:xmpp:features:rosterver";

/// The presence subscriptions other modules ask about (PEP).
struct Roster(Arc<Im>);

impl Roster {
    /// The roster items of `owner` whose subscription state passes `keep`.
    async fn jids(
        &self,
        owner: &str,
        keep: fn(&crate::subscription::SubState) -> bool,
    ) -> Vec<String> {
        match self.0.data.roster(owner).await {
            Ok((_, items)) => items
                .into_iter()
                .filter(|i| keep(&i.state))
                .map(|i| i.jid)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "roster not readable for a module");
                Vec::new()
            }
        }
    }
}

#[async_trait]
impl RosterHook for Roster {
    async fn subscribers(&self, owner: &str) -> Vec<String> {
        self.jids(owner, |s| s.from).await
    }
    async fn sources(&self, owner: &str) -> Vec<String> {
        self.jids(owner, |s| s.to).await
    }
    async fn contains(&self, owner: &str, contact: &str) -> bool {
        self.jids(owner, |_| true)
            .await
            .iter()
            .any(|j| j.eq_ignore_ascii_case(contact))
    }
}

/// XEP-0191 §3.4: nothing from a blocked JID arrives.
struct Blocking {
    /// IM's data (the blocklists).
    im: Arc<Im>,
}

#[async_trait]
impl ToAccountHook for Blocking {
    async fn to_account(&self, to: AccountTarget<'_>, stanza: Element) -> Flow {
        let blocked = match stanza.attr("from") {
            Some(from) => crate::blocking::blocks(&self.im, to.bare, from).await,
            None => false,
        };
        if !blocked {
            return Flow::Pass(stanza);
        }
        // Messages and requests learn it as if the account were not there; presence and
        // the rest are dropped.
        let request = StanzaKind::of(&stanza).is_some_and(StanzaKind::is_request);
        if matches!(StanzaKind::of(&stanza), Some(StanzaKind::Message(_))) || request {
            Flow::Refuse(stanza, StanzaError::new(Condition::ServiceUnavailable))
        } else {
            Flow::Done
        }
    }
}

#[async_trait]
impl PrivacyHook for Blocking {
    async fn blocks(&self, user: &str, other: &str) -> bool {
        crate::blocking::blocks(&self.im, user, other).await
    }
}

/// Presence to an account: subscriptions, probes, directed presence (RFC 6121 §3–4).
struct Presence {
    /// The server, to reach sessions and contacts.
    server: Arc<dyn ServerHandle>,
    /// IM's data.
    im: Arc<Im>,
}

#[async_trait]
impl ToAccountHook for Presence {
    async fn to_account(&self, to: AccountTarget<'_>, stanza: Element) -> Flow {
        if stanza.name() != "presence" {
            return Flow::Pass(stanza);
        }
        crate::presence::inbound_presence(
            self.server.as_ref(),
            &self.im,
            to.bare,
            to.resource,
            stanza,
        )
        .await;
        Flow::Done
    }
}

/// vCard iqs to an account's bare JID, answered on its behalf (RFC 6121 §8.5.2.1.3).
struct VCard {
    /// IM's data (the vCards).
    im: Arc<Im>,
}

#[async_trait]
impl ToAccountHook for VCard {
    async fn to_account(&self, to: AccountTarget<'_>, stanza: Element) -> Flow {
        let request = StanzaKind::of(&stanza).is_some_and(StanzaKind::is_request);
        if !request
            || to.resource.is_some()
            || stanza.get_child("vCard", crate::vcard::NS).is_none()
        {
            return Flow::Pass(stanza);
        }
        let own = stanza
            .attr("from")
            .and_then(|f| Jid::new(f).ok())
            .is_some_and(|f| f.to_bare().to_string() == to.bare);
        Flow::Reply(crate::vcard::iq(&self.im, to.bare, &stanza, own).await)
    }
}

/// XEP-0160: messages for an account with no available resource wait for its next
/// session.
struct Offline {
    /// IM's data (the offline archive).
    im: Arc<Im>,
}

#[async_trait]
impl ToOfflineHook for Offline {
    async fn to_offline(&self, bare: &str, message: Element) -> Flow {
        match crate::offline::store_offline(&self.im, bare, &message).await {
            Ok(()) => Flow::Done,
            Err(err) => Flow::Refuse(message, err),
        }
    }
}

/// XEP-0191 §3.5: nothing goes to a JID the user blocks; the client learns why.
struct OutboundBlocking {
    /// IM's data (the blocklists).
    im: Arc<Im>,
}

#[async_trait]
impl FromClientHook for OutboundBlocking {
    async fn client_sent(&self, from: ClientSession<'_>, stanza: Element) -> Flow {
        let blocked = match stanza.attr("to") {
            Some(to) => crate::blocking::blocks(&self.im, from.bare, to).await,
            None => false,
        };
        if !blocked {
            return Flow::Pass(stanza);
        }
        match crate::blocking::blocked_error().reply_to(&stanza) {
            Some(mut reply) => {
                reply.remove_attr("from");
                Flow::Reply(reply)
            }
            None => Flow::Done,
        }
    }
}

/// The client's iqs to its own account: roster (RFC 6121 §2), blocklist (XEP-0191),
/// vCard (XEP-0054).
struct OwnAccount {
    /// The server, to reach sessions and contacts.
    server: Arc<dyn ServerHandle>,
    /// IM's data.
    im: Arc<Im>,
}

#[async_trait]
impl FromClientHook for OwnAccount {
    async fn client_sent(&self, from: ClientSession<'_>, stanza: Element) -> Flow {
        let own = stanza
            .attr("to")
            .is_none_or(|t| t.eq_ignore_ascii_case(from.bare));
        let request = StanzaKind::of(&stanza).is_some_and(StanzaKind::is_request);
        if !(own && request) {
            return Flow::Pass(stanza);
        };
        let mut reply = match stanza.first_child().map(|p| p.ns()) {
            Some(crate::roster::NS_ROSTER) => {
                crate::roster::roster_iq(
                    self.server.as_ref(),
                    &self.im,
                    from.bare,
                    from.id,
                    &stanza,
                )
                .await
            }
            Some(crate::blocking::NS) => {
                crate::blocking::iq(self.server.as_ref(), &self.im, from.bare, from.id, &stanza)
                    .await
            }
            Some(crate::vcard::NS) => crate::vcard::iq(&self.im, from.bare, &stanza, true).await,
            _ => return Flow::Pass(stanza),
        };
        reply.remove_attr("from");
        Flow::Reply(reply)
    }
}

/// The client's presence (RFC 6121 §4: broadcast, directed; §3: subscriptions), and the
/// unavailable presence of a session that ends (§4.5.2).
struct ClientPresence {
    /// The server, to reach sessions and contacts.
    server: Arc<dyn ServerHandle>,
    /// IM's data.
    im: Arc<Im>,
    /// Each session's directed presences (§4.6).
    sessions: SessionStates,
}

#[async_trait]
impl FromClientHook for ClientPresence {
    async fn client_sent(&self, from: ClientSession<'_>, stanza: Element) -> Flow {
        if stanza.name() != "presence" {
            return Flow::Pass(stanza);
        }
        let ptype = PresenceType::of(&stanza);
        let kind = ptype.and_then(crate::subscription::Kind::of);
        use PresenceType::{Available, Unavailable};
        match (stanza.attr("to").is_some(), ptype) {
            // Broadcast presence (RFC 6121 §4.2, §4.5).
            (false, Some(Available | Unavailable)) => {
                let directed = self.directed(from.id);
                crate::presence::broadcast(
                    self.server.as_ref(),
                    &self.im,
                    from.bare,
                    from.full,
                    from.id,
                    stanza,
                    &directed,
                )
                .await;
            }
            (true, Some(_)) if kind.is_some() => {
                if let Some(kind) = kind {
                    crate::presence::outbound_subscription(
                        self.server.as_ref(),
                        &self.im,
                        from.bare,
                        stanza,
                        kind,
                    )
                    .await;
                }
            }
            // Directed presence (§4.6): remembered so the recipient learns when the
            // resource goes unavailable.
            (true, Some(Available | Unavailable)) => {
                if let Some(to) = stanza.attr("to") {
                    self.sessions.entry(from.id).or_default().directed_to(to);
                }
                self.server.route(stanza).await;
            }
            // Probes are the server's business; anything else without `to` is moot.
            _ => {}
        }
        Flow::Done
    }
}

impl ClientPresence {
    /// The directed presences of session `id`.
    fn directed(&self, id: u64) -> Vec<String> {
        self.sessions
            .get(&id)
            .map(|s| s.directed.clone())
            .unwrap_or_default()
    }
}

#[async_trait]
impl SessionHook for ClientPresence {
    async fn bound(&self, session: ClientSession<'_>) {
        // Every stanza to or from the account checks its blocklist: load it now, not on
        // the first message's path.
        let (im, bare) = (self.im.clone(), session.bare.to_owned());
        tokio::spawn(async move {
            crate::blocking::list(&im, &bare).await;
        });
    }

    async fn closed(&self, session: ClientSession<'_>) {
        let directed = self
            .sessions
            .remove(&session.id)
            .map(|(_, s)| s.directed)
            .unwrap_or_default();
        // RFC 6121 §4.5.2: contacts learn the resource went away.
        let gone = Element::new("presence", openspimed_module_api::ns::CLIENT)
            .with_attr("type", "unavailable");
        crate::presence::broadcast(
            self.server.as_ref(),
            &self.im,
            session.bare,
            session.full,
            session.id,
            gone,
            &directed,
        )
        .await;
    }
}
