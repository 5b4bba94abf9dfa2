//! OpenSpime 0.9 namespaces (seed document 001, wire profile §§1–9) and the XEP-0189 ones.

/// The core container `<openspime/>`.
pub const CORE: &str = "openspime:protocol:core";
/// The plaintext of a transport key (wire profile §3).
pub const TRANSPORTKEY: &str = "openspime:protocol:core:transportkey";
/// The plaintext of a claim key (wire profile §5).
pub const CLAIMKEY: &str = "openspime:protocol:core:claimkey";
/// Core error conditions (wire profile §7).
pub const CORE_ERROR: &str = "openspime:protocol:core:error";
/// The data reporting extension (seed §1.0).
pub const DATA: &str = "openspime:protocol:extension:data";
/// Data reporting error conditions.
pub const DATA_ERROR: &str = "openspime:protocol:extension:data:error";
/// The claim extension (seed §1.1).
pub const CLAIM: &str = "openspime:protocol:extension:claim";
/// The SpimeSeek extension (seed §1.2).
pub const SPIMESEEK: &str = "http://openspime.org/protocol/spimeseek";
/// XEP-0189 Public Key Publishing (the 2008 experimental namespace).
pub const PUBKEY: &str = "urn:xmpp:tmp:pubkey";
/// XML-DSig, for `<KeyInfo/>`.
pub const XMLDSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
/// `content-type` of an encrypted `<transport/>`.
pub const CONTENT_TYPE_AES: &str = "x-openspime/aes-base64";
/// The protocol version emitted.
pub const VERSION: &str = "0.9";
