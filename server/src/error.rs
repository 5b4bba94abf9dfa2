//! The one place where internal failures become XMPP errors.
//!
//! Stream errors (RFC 6120 §4.9) end a connection; stanza errors (RFC 6120 §8.3) answer one
//! stanza. Internal details (storage messages, module bugs) are logged here and never sent.

use openspimed_module_api::{Condition, Element, ErrorType, ModuleError, StanzaError, ns};

macro_rules! stream_conditions {
    ($($variant:ident => $name:literal,)*) => {
        /// RFC 6120 §4.9.3: the defined stream error conditions.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum StreamErrorCondition {
            $(
                #[doc = concat!("`<", $name, "/>`")]
                $variant,
            )*
        }
        impl StreamErrorCondition {
            /// The element name.
            pub fn as_str(self) -> &'static str {
                match self { $(StreamErrorCondition::$variant => $name,)* }
            }
            /// Looks a condition up by element name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($name => Some(StreamErrorCondition::$variant),)* _ => None }
            }
        }
    };
}

stream_conditions! {
    BadFormat => "bad-format",
    BadNamespacePrefix => "bad-namespace-prefix",
    Conflict => "conflict",
    ConnectionTimeout => "connection-timeout",
    HostGone => "host-gone",
    HostUnknown => "host-unknown",
    ImproperAddressing => "improper-addressing",
    InternalServerError => "internal-server-error",
    InvalidFrom => "invalid-from",
    InvalidNamespace => "invalid-namespace",
    InvalidXml => "invalid-xml",
    NotAuthorized => "not-authorized",
    NotWellFormed => "not-well-formed",
    PolicyViolation => "policy-violation",
    RemoteConnectionFailed => "remote-connection-failed",
    Reset => "reset",
    ResourceConstraint => "resource-constraint",
    RestrictedXml => "restricted-xml",
    SeeOtherHost => "see-other-host",
    SystemShutdown => "system-shutdown",
    UndefinedCondition => "undefined-condition",
    UnsupportedEncoding => "unsupported-encoding",
    UnsupportedFeature => "unsupported-feature",
    UnsupportedStanzaType => "unsupported-stanza-type",
    UnsupportedVersion => "unsupported-version",
}

/// A stream error about to be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamError {
    /// The condition.
    pub condition: StreamErrorCondition,
    /// Optional explanation for the peer.
    pub text: Option<String>,
}

impl StreamError {
    /// A stream error without text.
    pub fn new(condition: StreamErrorCondition) -> Self {
        StreamError {
            condition,
            text: None,
        }
    }

    /// A stream error with an explanation.
    pub fn with_text(condition: StreamErrorCondition, text: impl Into<String>) -> Self {
        StreamError {
            condition,
            text: Some(text.into()),
        }
    }

    /// `<stream:error>` as bytes (the `stream` prefix is the one every header declares).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = b"<stream:error>".to_vec();
        Element::new(self.condition.as_str(), ns::XMPP_STREAMS).write_to(&mut out, "");
        if let Some(text) = &self.text {
            Element::new("text", ns::XMPP_STREAMS)
                .with_text(text.clone())
                .write_to(&mut out, "");
        }
        out.extend_from_slice(b"</stream:error>");
        out
    }
}

/// Maps a storage failure to what the sender sees: a temporary internal error.
pub fn storage_failure(context: &str, err: &dyn std::fmt::Display) -> StanzaError {
    tracing::error!(%err, "storage failure while {context}");
    StanzaError::new(Condition::InternalServerError).with_type(ErrorType::Wait)
}

/// Maps a module failure to what the sender sees; the details go to the log only.
pub fn module_failure(module: &str, err: &ModuleError) -> StanzaError {
    tracing::error!(module, %err, "module failed to handle a stanza");
    StanzaError::new(Condition::InternalServerError)
}
