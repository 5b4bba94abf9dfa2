//! Errors, each tied to the wire condition of profile §7 it is reported as.

use openspimed_stanza::{Condition, Element, ErrorType, StanzaError};

use crate::ns;

/// Everything that can be wrong with an OpenSpime stanza.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenSpimeError {
    /// The container or an extension is not shaped as the protocol says.
    #[error("malformed OpenSpime element: {0}")]
    Malformed(String),
    /// Decryption failed. Deliberately one variant with no detail (profile §3).
    #[error("the transport could not be decrypted")]
    Decryption,
    /// The stanza is encrypted but this entity has no key to decrypt it.
    #[error("decryption is not enabled for this recipient")]
    DecryptionNotEnabled,
    /// The decrypted (or clear) transport does not hold well-formed XML.
    #[error("the transport node does not contain valid XML")]
    MalformedTransport,
    /// The certification service named in `cert` is not trusted.
    #[error("untrusted certification service {0}")]
    UntrustedCertService(String),
    /// The signature does not verify with the signer's key.
    #[error("the signature does not verify")]
    BadSignature,
    /// No public key could be obtained for the signer or recipient.
    #[error("no public key available for {0}")]
    NoPublicKey(String),
    /// A claim key could not be opened or does not authorize the request.
    #[error("invalid claim key: {0}")]
    InvalidClaimKey(String),
    /// Data does not fit the scope it was reported to.
    #[error("data is not consistent with the scope: {0}")]
    InconsistentData(String),
    /// A key could not be read, written or generated.
    #[error("key error: {0}")]
    Key(String),
}

impl OpenSpimeError {
    /// The profile §7 stanza error: `<bad-request/>`, the OpenSpime condition, a text.
    pub fn to_stanza_error(&self) -> StanzaError {
        let (name, ns, kind, text) = match self {
            OpenSpimeError::Decryption => (
                "decryption-error",
                ns::CORE_ERROR,
                ErrorType::Modify,
                "the incoming stanza was sent encrypted, though there were errors decrypting it",
            ),
            OpenSpimeError::DecryptionNotEnabled => (
                "decryption-not-enabled",
                ns::CORE_ERROR,
                ErrorType::Cancel,
                "the incoming stanza was sent encrypted, but the recipient entity is not enabled to decrypt it",
            ),
            OpenSpimeError::MalformedTransport | OpenSpimeError::Malformed(_) => (
                "xml-malformed-transport-node",
                ns::CORE_ERROR,
                ErrorType::Modify,
                "the <transport/> node contains non valid xml",
            ),
            OpenSpimeError::UntrustedCertService(_) => (
                "signature-error-invalid-cert-auth",
                ns::CORE_ERROR,
                ErrorType::Cancel,
                "the stanza is signed by a certification authority which is not accepted by recipient",
            ),
            OpenSpimeError::BadSignature | OpenSpimeError::InvalidClaimKey(_) => (
                "signature-error-public-key-corrupted",
                ns::CORE_ERROR,
                ErrorType::Cancel,
                "the stanza has a signature which could not be validated",
            ),
            OpenSpimeError::NoPublicKey(_) | OpenSpimeError::Key(_) => (
                "no-available-public-key",
                ns::CORE_ERROR,
                ErrorType::Cancel,
                "no public key is available for the signer",
            ),
            OpenSpimeError::InconsistentData(_) => (
                "inconsistent-data-with-scope",
                ns::DATA_ERROR,
                ErrorType::Modify,
                "data is not consistent with scope of this ScopeNode",
            ),
        };
        let err = StanzaError::new(Condition::BadRequest)
            .with_type(kind)
            .with_app(Element::new(name, ns));
        match self {
            // What is inconsistent, and where: the reporter can mend it. (Decryption and
            // signature failures keep their one fixed text, profile §3.)
            OpenSpimeError::InconsistentData(why) => err.with_text(format!("{text}: {why}")),
            _ => err.with_text(text),
        }
    }
}
