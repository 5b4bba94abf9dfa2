//! XEP-0189 public keys as OpenSpime puts them on the wire (profile §4): `<KeyInfo/>` with
//! `<RSAKeyValue/>`, with or without `<KeyValue/>`, numbers as XML-DSig CryptoBinary or as
//! OpenSSL MPI (what pyopenspime reads and writes).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use openspimed_stanza::Element;
use rsa::traits::PublicKeyParts;
use rsa::{BoxedUint, RsaPublicKey};

use crate::crypto::b64_decode;
use crate::error::OpenSpimeError;
use crate::ns;

/// How a certification service writes keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeyForm {
    /// The seed's form: `<KeyValue>` wrapper, CryptoBinary numbers (the default).
    #[default]
    Standard,
    /// pyopenspime's form: no wrapper, MPI numbers (the only one it can read).
    Legacy,
}

/// Whether an XEP-0189 key request has the shape of the 2008 client's (pyopenspime on
/// xmpppy), which reads only the legacy form: its stanza ids are 16 characters of
/// `[a-z0-9]` (pyopenspime's `serialize()`, `generate_rnd_str(16)`), and its `<pubkeys/>`
/// carries `jid` and nothing else. A modern client that happens to match gets the legacy
/// form, which every reader following the profile accepts.
pub fn looks_like_2008_request(iq: &Element) -> bool {
    let id_2008 = iq.attr("id").is_some_and(|id| {
        id.len() == 16
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    });
    let bare_request = iq.children().count() == 1
        && iq.first_child().is_some_and(|p| {
            p.is("pubkeys", ns::PUBKEY)
                && p.attr_count() == 1
                && p.attr("jid").is_some()
                && p.children().next().is_none()
        });
    id_2008 && bare_request
}

/// The magnitude of a number written either way: an MPI is recognised by its first four
/// bytes equalling the length of the rest (its leading `00` is then dropped).
pub fn decode_number(bytes: &[u8]) -> Vec<u8> {
    if bytes.len() >= 4 {
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if len == bytes.len() - 4 {
            let mag = &bytes[4..];
            let start = mag.iter().position(|b| *b != 0).unwrap_or(mag.len());
            return mag[start..].to_vec();
        }
    }
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes[start..].to_vec()
}

/// OpenSSL MPI of a magnitude: 4-byte big-endian length, a `00` first if the top bit is set.
pub fn encode_mpi(magnitude: &[u8]) -> Vec<u8> {
    let start = magnitude
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(magnitude.len());
    let mag = &magnitude[start..];
    let pad = mag.first().is_some_and(|b| b & 0x80 != 0);
    let len = mag.len() + usize::from(pad);
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    if pad {
        out.push(0);
    }
    out.extend_from_slice(mag);
    out
}

/// The `<KeyInfo/>` element for a key.
pub fn key_info(key: &RsaPublicKey, form: KeyForm) -> Element {
    let n = key.n_bytes();
    let e = key.e_bytes();
    let (n, e) = match form {
        KeyForm::Standard => (decode_number(&n), decode_number(&e)),
        KeyForm::Legacy => (encode_mpi(&n), encode_mpi(&e)),
    };
    let rsa = Element::new("RSAKeyValue", ns::XMLDSIG)
        .with_child(Element::new("Modulus", ns::XMLDSIG).with_text(B64.encode(n)))
        .with_child(Element::new("Exponent", ns::XMLDSIG).with_text(B64.encode(e)));
    let inner = match form {
        KeyForm::Standard => Element::new("KeyValue", ns::XMLDSIG).with_child(rsa),
        KeyForm::Legacy => rsa,
    };
    Element::new("KeyInfo", ns::XMLDSIG).with_child(inner)
}

/// The key in a `<KeyInfo/>` element (either form, either number encoding).
pub fn parse_key_info(key_info: &Element) -> Result<RsaPublicKey, OpenSpimeError> {
    let bad = |why: &str| OpenSpimeError::Key(format!("unusable KeyInfo: {why}"));
    let rsa = key_info
        .children()
        .find(|c| c.name() == "RSAKeyValue")
        .or_else(|| {
            key_info
                .children()
                .find(|c| c.name() == "KeyValue")
                .and_then(|kv| kv.children().find(|c| c.name() == "RSAKeyValue"))
        })
        .ok_or_else(|| bad("no RSAKeyValue"))?;
    let number = |name: &str| -> Result<Vec<u8>, OpenSpimeError> {
        let el = rsa
            .children()
            .find(|c| c.name() == name)
            .ok_or_else(|| bad(&format!("no {name}")))?;
        let raw = b64_decode(&el.text()).ok_or_else(|| bad(&format!("{name} is not base64")))?;
        Ok(decode_number(&raw))
    };
    let n = number("Modulus")?;
    let e = number("Exponent")?;
    RsaPublicKey::new(
        BoxedUint::from_be_slice_vartime(&n),
        BoxedUint::from_be_slice_vartime(&e),
    )
    .map_err(|e| bad(&e.to_string()))
}

/// A `<pubkeys/>` answer payload: the requested JID echoed byte for byte, then the key.
pub fn pubkeys(jid: &str, key: &RsaPublicKey, form: KeyForm) -> Element {
    Element::new("pubkeys", ns::PUBKEY)
        .with_attr("jid", jid)
        .with_child(key_info(key, form))
}

/// The key inside a `<pubkeys/>` payload, with the JID it is for.
pub fn parse_pubkeys(pubkeys: &Element) -> Result<(String, RsaPublicKey), OpenSpimeError> {
    let jid = pubkeys
        .attr("jid")
        .ok_or_else(|| OpenSpimeError::Malformed("<pubkeys/> without jid".into()))?;
    let ki = pubkeys
        .children()
        .find(|c| c.name() == "KeyInfo")
        .ok_or_else(|| OpenSpimeError::NoPublicKey(jid.to_owned()))?;
    Ok((jid.to_owned(), parse_key_info(ki)?))
}
