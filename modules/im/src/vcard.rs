//! vCard-temp (XEP-0054): an account's vCard, stored as the client sent it and served to
//! anyone who asks the account's bare JID.

use openspimed_module_api::{Condition, Element, IqType, StanzaError, iq_result};

use crate::Im;
use crate::storage_failure;

/// `vcard-temp`.
pub const NS: &str = "vcard-temp";
/// Largest vCard stored, in bytes of XML (photos included).
pub const MAX_BYTES: usize = 128 * 1024;

/// A vCard iq for the account `owner`; `own` when the owner itself asks (only the owner
/// may set it). Returns the answer.
pub async fn iq(im: &Im, owner: &str, iq: &Element, own: bool) -> Element {
    let answer = async {
        let payload = iq
            .get_child("vCard", NS)
            .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
        if IqType::of(iq) == Some(IqType::Get) {
            let stored = im
                .data
                .vcard(owner)
                .await
                .map_err(|e| storage_failure("reading a vCard", &e))?;
            // §3.1: no vCard is an empty one.
            let card = stored
                .and_then(|x| Element::parse(&x).ok())
                .unwrap_or_else(|| Element::new("vCard", NS));
            let mut reply = iq_result(iq);
            reply.push_child(card);
            return Ok(reply);
        }
        if !own {
            return Err(StanzaError::new(Condition::Forbidden));
        }
        let xml = payload.to_string();
        if xml.len() > MAX_BYTES {
            return Err(StanzaError::new(Condition::NotAcceptable).with_text("vCard too large"));
        }
        im.data
            .set_vcard(owner, &xml)
            .await
            .map_err(|e| storage_failure("storing a vCard", &e))?;
        Ok(iq_result(iq))
    }
    .await;
    match answer {
        Ok(r) => r,
        Err(err) => err.reply_to(iq).unwrap_or_else(|| iq_result(iq)),
    }
}
