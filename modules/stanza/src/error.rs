//! Stanza errors (RFC 6120 §8.3) as values.

use crate::element::Element;
use crate::ns;

/// RFC 6120 §8.3.2: what the sender should do about an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    /// Retry after providing credentials.
    Auth,
    /// Do not retry (the error cannot be remedied).
    Cancel,
    /// Proceed (the condition was only a warning).
    Continue,
    /// Retry after changing the data sent.
    Modify,
    /// Retry after waiting (the error is temporary).
    Wait,
}

impl ErrorType {
    /// The `type` attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Auth => "auth",
            ErrorType::Cancel => "cancel",
            ErrorType::Continue => "continue",
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
        }
    }
}

macro_rules! conditions {
    ($($variant:ident => $name:literal, $ty:ident;)*) => {
        /// RFC 6120 §8.3.3: the defined stanza error conditions.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Condition {
            $(
                #[doc = concat!("`<", $name, "/>`")]
                $variant,
            )*
        }
        impl Condition {
            /// The element name of the condition.
            pub fn as_str(self) -> &'static str {
                match self { $(Condition::$variant => $name,)* }
            }
            /// The error type RFC 6120 §8.3.3 gives for this condition.
            pub fn default_type(self) -> ErrorType {
                match self { $(Condition::$variant => ErrorType::$ty,)* }
            }
            /// Looks a condition up by element name.
            pub fn from_name(name: &str) -> Option<Condition> {
                match name { $($name => Some(Condition::$variant),)* _ => None }
            }
        }
    };
}

conditions! {
    BadRequest => "bad-request", Modify;
    Conflict => "conflict", Cancel;
    FeatureNotImplemented => "feature-not-implemented", Cancel;
    Forbidden => "forbidden", Auth;
    Gone => "gone", Cancel;
    InternalServerError => "internal-server-error", Cancel;
    ItemNotFound => "item-not-found", Cancel;
    JidMalformed => "jid-malformed", Modify;
    NotAcceptable => "not-acceptable", Modify;
    NotAllowed => "not-allowed", Cancel;
    NotAuthorized => "not-authorized", Auth;
    PolicyViolation => "policy-violation", Modify;
    RecipientUnavailable => "recipient-unavailable", Wait;
    Redirect => "redirect", Modify;
    RegistrationRequired => "registration-required", Auth;
    RemoteServerNotFound => "remote-server-not-found", Cancel;
    RemoteServerTimeout => "remote-server-timeout", Wait;
    ResourceConstraint => "resource-constraint", Wait;
    ServiceUnavailable => "service-unavailable", Cancel;
    SubscriptionRequired => "subscription-required", Auth;
    UndefinedCondition => "undefined-condition", Cancel;
    UnexpectedRequest => "unexpected-request", Wait;
}

/// A stanza error ready to be sent: condition, type, optional text and application condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StanzaError {
    /// What the sender should do (RFC 6120 §8.3.2).
    pub kind: ErrorType,
    /// The defined condition.
    pub condition: Condition,
    /// Human-readable explanation; never internals.
    pub text: Option<String>,
    /// Application-specific condition (e.g. OpenSpime's `<inconsistent-data-with-scope/>`).
    pub app: Option<Element>,
}

impl StanzaError {
    /// An error with the condition's default type.
    pub fn new(condition: Condition) -> Self {
        StanzaError {
            kind: condition.default_type(),
            condition,
            text: None,
            app: None,
        }
    }

    /// Overrides the error type.
    #[must_use]
    pub fn with_type(mut self, kind: ErrorType) -> Self {
        self.kind = kind;
        self
    }

    /// Adds a human-readable text.
    #[must_use]
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    /// Adds an application-specific condition element.
    #[must_use]
    pub fn with_app(mut self, app: Element) -> Self {
        self.app = Some(app);
        self
    }

    /// The `<error/>` element: defined condition, application condition, then text.
    pub fn to_element(&self, stanza_ns: &str) -> Element {
        let mut err =
            Element::new("error", stanza_ns.to_owned()).with_attr("type", self.kind.as_str());
        err.push_child(Element::new(self.condition.as_str(), ns::XMPP_STANZAS));
        if let Some(app) = &self.app {
            err.push_child(app.clone());
        }
        if let Some(text) = &self.text {
            err.push_child(Element::new("text", ns::XMPP_STANZAS).with_text(text.clone()));
        }
        err
    }

    /// The error reply to `stanza` (RFC 6120 §8.3.1): same name and id, addresses swapped,
    /// `type='error'`. `None` when `stanza` is itself an error or an iq result, which must
    /// never be answered with an error.
    pub fn reply_to(&self, stanza: &Element) -> Option<Element> {
        match stanza.attr("type") {
            Some("error") => return None,
            Some("result") if stanza.name() == "iq" => return None,
            _ => {}
        }
        let mut reply = crate::stanza::reply_skeleton(stanza, "error");
        reply.push_child(self.to_element(stanza.ns()));
        Some(reply)
    }
}

impl From<Condition> for StanzaError {
    fn from(c: Condition) -> Self {
        StanzaError::new(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_swaps_addresses_and_orders_children() {
        let iq = Element::parse(
            "<iq xmlns='jabber:client' from='a@x/r' to='b@y/s' id='7' type='set'><q xmlns='urn:q'/></iq>",
        )
        .unwrap();
        let app = Element::new("inconsistent-data-with-scope", "urn:app");
        let reply = StanzaError::new(Condition::BadRequest)
            .with_app(app)
            .with_text("why")
            .reply_to(&iq)
            .unwrap();
        assert_eq!(reply.attr("from"), Some("b@y/s"));
        assert_eq!(reply.attr("to"), Some("a@x/r"));
        assert_eq!(reply.attr("id"), Some("7"));
        assert_eq!(reply.attr("type"), Some("error"));
        let err = reply.get_child("error", "jabber:client").unwrap();
        assert_eq!(err.attr("type"), Some("modify"));
        let names: Vec<_> = err.children().map(|c| c.name().to_owned()).collect();
        assert_eq!(
            names,
            ["bad-request", "inconsistent-data-with-scope", "text"]
        );
    }

    #[test]
    fn errors_and_results_are_never_answered() {
        let e = StanzaError::new(Condition::ServiceUnavailable);
        let m = Element::new("message", "jabber:client").with_attr("type", "error");
        assert!(e.reply_to(&m).is_none());
        let r = Element::new("iq", "jabber:client").with_attr("type", "result");
        assert!(e.reply_to(&r).is_none());
        let m = Element::new("message", "jabber:client").with_attr("type", "chat");
        assert!(e.reply_to(&m).is_some());
    }
}
