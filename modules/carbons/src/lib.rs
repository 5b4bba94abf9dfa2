//! XEP-0280 Message Carbons: a session that enables them gets a copy of every one-to-one
//! message its account receives on another resource (`<received/>`) or sends from one
//! (`<sent/>`), forwarded (XEP-0297) from the account's bare JID.
//!
//! What is copied follows Prosody's `mod_carbons`: chat messages, normal ones with a
//! body, and errors bounced to the bare JID; never a message marked `<private/>` or
//! `<no-copy/>`, never a MUC private message to a full JID, never a carbon. A session's
//! choice is kept by its registry id, which a XEP-0198 resumption keeps, and forgotten
//! when the session ends.

use std::sync::Arc;

use dashmap::DashSet;
use openspimed_module_api::jid::Jid;
use openspimed_module_api::{
    AccountTarget, BoundSession, ClientSession, Condition, Context, Element, Flow, FromClientHook,
    Hooks, IqType, Kinds, MessageType, Module, ModuleError, ModuleFactory, Outcome, Route,
    ServerHandle, SessionHook, StanzaError, StanzaKind, ToAccountHook, async_trait, iq_result, ns,
    options, toml,
};

/// The name operators enable it under.
pub const NAME: &str = "carbons";
/// XEP-0280's namespace.
pub const NS: &str = "urn:xmpp:carbons:2";
/// XEP-0045's `muc#user` payload, which marks private messages from a room's occupants.
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";

/// From-client priority: after MAM stamped its id (`openspimed-mod-mam`, 20) and before
/// it takes the id off again (-100).
pub const SENT: i32 = 0;
/// To-account priority: after blocking, presence, vCards and MAM (-10).
pub const RECEIVED: i32 = -20;
/// The enable/disable iqs, beside IM's own-account iqs (50).
pub const IQS: i32 = 45;

/// `[modules.carbons]`: nothing to set; a key there is a mistake worth reporting.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Options {}

/// Registers the `carbons` module.
pub struct Factory;

impl ModuleFactory for Factory {
    fn name(&self) -> &'static str {
        NAME
    }
    fn build(&self, _host: &str, table: &toml::Table) -> Result<Arc<dyn Module>, ModuleError> {
        let _: Options = options::parse(NAME, table)?;
        Ok(Arc::new(Carbons))
    }
}

/// The module instance of one host (its state lives with its handlers).
pub struct Carbons;

#[async_trait]
impl Module for Carbons {
    fn name(&self) -> &'static str {
        NAME
    }
    fn routes(&self) -> Vec<Route> {
        Vec::new()
    }
    fn features(&self) -> Vec<String> {
        // XEP-0280 §2: discovered at the server.
        vec![NS.to_owned()]
    }
    fn hooks(self: Arc<Self>, cx: &Context, hooks: &dyn Hooks) {
        let state = Arc::new(State {
            server: cx.server.clone(),
            enabled: DashSet::new(),
        });
        hooks.on_from_client(IQS, Kinds::IQ, Arc::new(Toggle(state.clone())));
        hooks.on_from_client(SENT, Kinds::MESSAGE, Arc::new(Sent(state.clone())));
        hooks.on_to_account(RECEIVED, Kinds::MESSAGE, Arc::new(Received(state.clone())));
        hooks.on_session(state);
    }
    async fn handle(&self, _cx: &Context, _stanza: Element) -> Result<Outcome, ModuleError> {
        Ok(Outcome::Error(Condition::ServiceUnavailable.into()))
    }
}

/// Which sessions enabled carbons.
struct State {
    /// The server: sessions and delivery.
    server: Arc<dyn ServerHandle>,
    /// Registry ids of the sessions that enabled carbons.
    enabled: DashSet<u64>,
}

/// Which way a copied message went.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// The account received it (`<received/>`).
    Received,
    /// One of the account's sessions sent it (`<sent/>`).
    Sent,
}

impl State {
    /// Sends a carbon of `message` to each of `sessions` (those of `bare`) that enabled
    /// carbons and is not in `skip` (the sender, the addressed resource, or those routing
    /// already gives the message to).
    fn copy(
        &self,
        bare: &str,
        sessions: Vec<BoundSession>,
        message: &Element,
        way: Direction,
        skip: impl Fn(&BoundSession) -> bool,
    ) {
        let mut targets = sessions
            .into_iter()
            .filter(|s| self.enabled.contains(&s.id) && !skip(s))
            .peekable();
        if targets.peek().is_none() {
            return;
        }
        let inner = message.clone();
        let wrapper = match way {
            Direction::Received => "received",
            Direction::Sent => "sent",
        };
        let mut carbon = Element::new("message", ns::CLIENT)
            .with_attr("from", bare)
            .with_child(
                Element::new(wrapper, NS)
                    .with_child(Element::new("forwarded", ns::FORWARD).with_child(inner)),
            );
        if let Some(t) = message.attr("type") {
            carbon.set_attr("type", t);
        }
        for s in targets {
            let full = format!("{bare}/{}", s.resource);
            let mut c = carbon.clone();
            c.set_attr("to", full.clone());
            self.server.deliver(&full, c);
        }
    }
}

/// Whether `message` is copied (XEP-0280 §6, Prosody's `should_copy`); `to_bare` is the
/// address it was sent to when it is one the account receives.
fn should_copy(message: &Element, received_at: Option<&AccountTarget<'_>>) -> bool {
    if message.get_child("private", NS).is_some()
        || message.get_child("no-copy", ns::HINTS).is_some()
    {
        return false;
    }
    // Never a carbon of a carbon (§6: nor anything already forwarded as one).
    if message.children().any(|c| c.ns() == NS) {
        return false;
    }
    if let Some(to) = received_at
        && to.resource.is_some()
        && message.get_child("x", MUC_USER).is_some()
    {
        // A room's private message reaches the joined resource only.
        return false;
    }
    match MessageType::of(message) {
        MessageType::Chat => true,
        MessageType::Normal => message.get_child("body", ns::CLIENT).is_some(),
        // An error bounced from a contact's bare JID (the answer to a message sent to it).
        MessageType::Error => {
            received_at.is_some() && message.attr("from").is_some_and(|f| !f.contains('/'))
        }
        MessageType::Groupchat | MessageType::Headline => false,
    }
}

/// Messages sent by one of the account's sessions.
struct Sent(Arc<State>);

#[async_trait]
impl FromClientHook for Sent {
    async fn client_sent(&self, from: ClientSession<'_>, stanza: Element) -> Flow {
        if should_copy(&stanza, None) {
            let mut copy = stanza.clone();
            if copy.attr("to").is_none() {
                copy.set_attr("to", from.bare);
            }
            let sessions = self.0.server.sessions(from.bare);
            self.0
                .copy(from.bare, sessions, &copy, Direction::Sent, |s| {
                    s.id == from.id
                });
        }
        // `<private/>` goes on with the message: the recipient's server must not copy it
        // either (§7); that server takes it off.
        Flow::Pass(stanza)
    }
}

/// Messages the account receives.
struct Received(Arc<State>);

#[async_trait]
impl ToAccountHook for Received {
    async fn to_account(&self, to: AccountTarget<'_>, stanza: Element) -> Flow {
        if !should_copy(&stanza, Some(&to)) {
            if stanza.get_child("private", NS).is_some() {
                // §7: it told the servers not to copy; the recipient's clients need not
                // see it (Prosody takes it off here too).
                return Flow::Pass(without_private(stanza));
            }
            return Flow::Pass(stanza);
        }
        match to.resource {
            // To one resource: every other one that asked gets a copy (if that resource is
            // gone the message goes to the bare JID's way instead, where carbons are not
            // needed by those who receive it anyway).
            Some(res) => {
                let sessions = self.0.server.sessions(to.bare);
                self.0
                    .copy(to.bare, sessions, &stanza, Direction::Received, |s| {
                        s.resource == res
                    })
            }
            // To the bare JID: the highest-priority resources receive it by routing
            // (RFC 6121 §8.5.2.1.1); the others that asked get a copy.
            None => {
                let sessions = self.0.server.sessions(to.bare);
                let top = sessions
                    .iter()
                    .filter_map(|s| s.priority)
                    .filter(|p| *p >= 0)
                    .max();
                self.0
                    .copy(to.bare, sessions, &stanza, Direction::Received, |s| {
                        top.is_some() && s.priority == top
                    });
            }
        }
        Flow::Pass(stanza)
    }
}

/// `message` without its `<private/>` element.
fn without_private(mut message: Element) -> Element {
    message.retain_children(|e| !e.is("private", NS));
    message
}

/// `<enable/>` and `<disable/>` (§3–4), sent to the user's own server or account.
struct Toggle(Arc<State>);

#[async_trait]
impl FromClientHook for Toggle {
    async fn client_sent(&self, from: ClientSession<'_>, stanza: Element) -> Flow {
        let Some(payload) = stanza.first_child().filter(|p| p.ns() == NS) else {
            return Flow::Pass(stanza);
        };
        let own_server = stanza.attr("to").is_none_or(|t| {
            t.eq_ignore_ascii_case(from.bare)
                || Jid::new(from.bare).is_ok_and(|b| t.eq_ignore_ascii_case(b.domain().as_str()))
        });
        if !own_server {
            return Flow::Pass(stanza);
        }
        let answer = match (StanzaKind::of(&stanza), payload.name()) {
            (Some(StanzaKind::Iq(Some(IqType::Set))), "enable") => {
                self.0.enabled.insert(from.id);
                Ok(iq_result(&stanza))
            }
            (Some(StanzaKind::Iq(Some(IqType::Set))), "disable") => {
                self.0.enabled.remove(&from.id);
                Ok(iq_result(&stanza))
            }
            (Some(StanzaKind::Iq(Some(IqType::Get | IqType::Set))), _) => {
                Err(StanzaError::new(Condition::BadRequest)
                    .with_text("enable or disable, as a set"))
            }
            _ => return Flow::Pass(stanza),
        };
        // The answer comes from what was addressed (the server or the account; nothing
        // without `to`), as RFC 6120 §8.1.2.1 has it.
        match answer {
            Ok(r) => Flow::Reply(r),
            Err(e) => e.reply_to(&stanza).map_or(Flow::Done, Flow::Reply),
        }
    }
}

#[async_trait]
impl SessionHook for State {
    async fn bound(&self, _session: ClientSession<'_>) {}
    async fn closed(&self, session: ClientSession<'_>) {
        self.enabled.remove(&session.id);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn m(xml: &str) -> Element {
        Element::parse(xml).unwrap()
    }

    #[test]
    fn what_is_copied() {
        let bare = AccountTarget {
            bare: "juliet@capulet.lit",
            resource: None,
        };
        let full = AccountTarget {
            bare: "juliet@capulet.lit",
            resource: Some("balcony"),
        };
        let chat = m("<message xmlns='jabber:client' type='chat'><body>hi</body></message>");
        assert!(should_copy(&chat, None));
        assert!(should_copy(&chat, Some(&full)));
        let normal = m("<message xmlns='jabber:client'><body>hi</body></message>");
        assert!(should_copy(&normal, Some(&bare)));
        let empty_normal = m("<message xmlns='jabber:client'><subject>s</subject></message>");
        assert!(!should_copy(&empty_normal, None));
        for no in [
            "<message xmlns='jabber:client' type='chat'><body>x</body><private xmlns='urn:xmpp:carbons:2'/></message>",
            "<message xmlns='jabber:client' type='chat'><body>x</body><no-copy xmlns='urn:xmpp:hints'/></message>",
            "<message xmlns='jabber:client' type='groupchat'><body>x</body></message>",
            "<message xmlns='jabber:client' type='headline'><body>x</body></message>",
            "<message xmlns='jabber:client' type='chat'><received xmlns='urn:xmpp:carbons:2'/></message>",
        ] {
            assert!(!should_copy(&m(no), Some(&bare)), "{no}");
        }
        let muc_pm = m(
            "<message xmlns='jabber:client' type='chat' from='room@muc.lit/nick'>\
             <body>x</body><x xmlns='http://jabber.org/protocol/muc#user'/></message>",
        );
        assert!(!should_copy(&muc_pm, Some(&full)));
        let bounce = m("<message xmlns='jabber:client' type='error' from='romeo@montague.lit'/>");
        assert!(should_copy(&bounce, Some(&bare)));
        assert!(!should_copy(&bounce, None));
        let stripped = without_private(m(
            "<message xmlns='jabber:client'><body>x</body><private xmlns='urn:xmpp:carbons:2'/></message>",
        ));
        assert!(stripped.get_child("private", NS).is_none());
        assert!(stripped.get_child("body", ns::CLIENT).is_some());
    }
}
