//! The stanza kinds as types (RFC 6120 §8.2.3, RFC 6121 §4.7.1 and §5.2.2): what a
//! stanza's name and `type` attribute say, read once, instead of string comparisons at
//! every decision.

use crate::element::Element;

/// An `<iq/>`'s type (RFC 6120 §8.2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IqType {
    /// A request for information.
    Get,
    /// A request to change something.
    Set,
    /// The answer to a get or set.
    Result,
    /// The error answer to a get or set.
    Error,
}

impl IqType {
    /// The type of `iq`: `None` when it has none or one RFC 6120 does not define.
    pub fn of(iq: &Element) -> Option<IqType> {
        match iq.attr("type")? {
            "get" => Some(IqType::Get),
            "set" => Some(IqType::Set),
            "result" => Some(IqType::Result),
            "error" => Some(IqType::Error),
            _ => None,
        }
    }

    /// A request (get or set), which must be answered (RFC 6120 §8.2.3).
    pub fn is_request(self) -> bool {
        matches!(self, IqType::Get | IqType::Set)
    }

    /// An answer (result or error).
    pub fn is_answer(self) -> bool {
        !self.is_request()
    }
}

/// A `<message/>`'s type (RFC 6121 §5.2.2): `normal` when the attribute is absent, and
/// for a value the RFC does not define (§5.2.2: treated as `normal`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    /// A single message, outside a conversation.
    Normal,
    /// One-to-one chat.
    Chat,
    /// Multi-user chat (XEP-0045).
    Groupchat,
    /// An alert or notice, no reply expected.
    Headline,
    /// The error answer to a message.
    Error,
}

impl MessageType {
    /// The type of `message`.
    pub fn of(message: &Element) -> MessageType {
        match message.attr("type") {
            Some("chat") => MessageType::Chat,
            Some("groupchat") => MessageType::Groupchat,
            Some("headline") => MessageType::Headline,
            Some("error") => MessageType::Error,
            _ => MessageType::Normal,
        }
    }
}

/// A `<presence/>`'s type (RFC 6121 §4.7.1; no attribute: available).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceType {
    /// Available (no `type`).
    Available,
    /// No longer available.
    Unavailable,
    /// A subscription request (RFC 6121 §3.1).
    Subscribe,
    /// A subscription approval.
    Subscribed,
    /// The cancellation of one's own subscription.
    Unsubscribe,
    /// The cancellation of another's subscription (or a refusal).
    Unsubscribed,
    /// A request for the current presence (RFC 6121 §4.3).
    Probe,
    /// The error answer to a presence.
    Error,
}

impl PresenceType {
    /// The type of `presence`: `None` for a value RFC 6121 does not define.
    pub fn of(presence: &Element) -> Option<PresenceType> {
        Some(match presence.attr("type") {
            None => PresenceType::Available,
            Some("unavailable") => PresenceType::Unavailable,
            Some("subscribe") => PresenceType::Subscribe,
            Some("subscribed") => PresenceType::Subscribed,
            Some("unsubscribe") => PresenceType::Unsubscribe,
            Some("unsubscribed") => PresenceType::Unsubscribed,
            Some("probe") => PresenceType::Probe,
            Some("error") => PresenceType::Error,
            Some(_) => return None,
        })
    }

    /// One of the four subscription types (RFC 6121 §3).
    pub fn is_subscription(self) -> bool {
        matches!(
            self,
            PresenceType::Subscribe
                | PresenceType::Subscribed
                | PresenceType::Unsubscribe
                | PresenceType::Unsubscribed
        )
    }
}

/// A stanza by kind, with its type: what routing decides on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StanzaKind {
    /// `<message/>`.
    Message(MessageType),
    /// `<presence/>` (`None`: a type RFC 6121 does not define).
    Presence(Option<PresenceType>),
    /// `<iq/>` (`None`: no type, or one RFC 6120 does not define).
    Iq(Option<IqType>),
}

impl StanzaKind {
    /// The kind of `stanza`; `None` for an element that is not a stanza.
    pub fn of(stanza: &Element) -> Option<StanzaKind> {
        match stanza.name() {
            "message" => Some(StanzaKind::Message(MessageType::of(stanza))),
            "presence" => Some(StanzaKind::Presence(PresenceType::of(stanza))),
            "iq" => Some(StanzaKind::Iq(IqType::of(stanza))),
            _ => None,
        }
    }

    /// An iq get or set.
    pub fn is_request(self) -> bool {
        matches!(self, StanzaKind::Iq(Some(t)) if t.is_request())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(name: &str, t: Option<&str>) -> Element {
        let e = Element::new(name, "jabber:client");
        match t {
            Some(t) => e.with_attr("type", t),
            None => e,
        }
    }

    #[test]
    fn kinds_read_the_name_and_type_as_the_rfcs_define_them() {
        assert_eq!(
            StanzaKind::of(&el("iq", Some("get"))),
            Some(StanzaKind::Iq(Some(IqType::Get)))
        );
        assert_eq!(StanzaKind::of(&el("iq", None)), Some(StanzaKind::Iq(None)));
        assert_eq!(
            StanzaKind::of(&el("iq", Some("bogus"))),
            Some(StanzaKind::Iq(None))
        );
        assert!(StanzaKind::of(&el("iq", Some("set"))).unwrap().is_request());
        assert!(
            !StanzaKind::of(&el("iq", Some("result")))
                .unwrap()
                .is_request()
        );
        // RFC 6121 §5.2.2: no type, or an unknown one, is normal.
        assert_eq!(MessageType::of(&el("message", None)), MessageType::Normal);
        assert_eq!(
            MessageType::of(&el("message", Some("x"))),
            MessageType::Normal
        );
        assert_eq!(
            MessageType::of(&el("message", Some("groupchat"))),
            MessageType::Groupchat
        );
        assert_eq!(
            PresenceType::of(&el("presence", None)),
            Some(PresenceType::Available)
        );
        assert_eq!(PresenceType::of(&el("presence", Some("x"))), None);
        assert!(PresenceType::Subscribed.is_subscription());
        assert!(!PresenceType::Probe.is_subscription());
        assert_eq!(StanzaKind::of(&el("stream", None)), None);
    }
}
