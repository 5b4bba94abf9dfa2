//! OpenSpime 0.9 as it goes on the wire (`shared/spec/openspime-wire-profile.md`).
//!
//! - [`container`]: the `<openspime/>` container and the data, claim and SpimeSeek
//!   extensions as typed values, legacy (`xmlsn`) and namespaced forms in, namespaced out;
//! - [`c14n`]: the canonical form signatures are computed over;
//! - [`crypto`]: signatures, transport encryption (uniform failure), claim keys, RSA keys
//!   and PEM;
//! - [`keyinfo`]: XEP-0189 `<KeyInfo/>` in CryptoBinary and MPI encodings;
//! - [`date`]: OpenSpime dates, including pyopenspime's broken offsets;
//! - [`error`]: errors and their profile §7 stanza errors.
//!
//! No server dependency: the server modules and client tools both use this crate.

pub mod c14n;
pub mod container;
pub mod crypto;
pub mod date;
pub mod error;
pub mod keyinfo;
pub mod ns;

pub use container::{
    Claim, ClaimKeyRef, Container, Data, Entry, Field, Originator, SeekRequest, SpimeSeek,
    Transport,
};
pub use error::OpenSpimeError;
pub use keyinfo::KeyForm;
pub use rsa::{RsaPrivateKey, RsaPublicKey};

/// Key encoding traits, for callers that store keys as DER.
pub mod rsa_reexport {
    pub use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
}
