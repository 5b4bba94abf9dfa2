//! Blocking (XEP-0191): the blocklist iqs, their pushes, and the check every stanza to or
//! from an account goes through.

use std::sync::Arc;

use openspimed_module_api::jid::Jid;
use openspimed_module_api::{
    Condition, Element, Interest, IqType, ServerHandle, StanzaError, iq_result, ns,
};

use crate::Im;
use crate::storage_failure;

/// `urn:xmpp:blocking`.
pub const NS: &str = "urn:xmpp:blocking";
/// `urn:xmpp:blocking:errors`: the application condition of a stanza to a blocked JID.
pub const NS_ERRORS: &str = "urn:xmpp:blocking:errors";

/// Whether the blocklist entry `item` covers `jid` (XEP-0191 §3.4, with the JID matching of
/// XEP-0016 §2.1: full JID, bare JID, domain/resource, domain).
pub fn covers(item: &str, jid: &Jid) -> bool {
    let Ok(i) = Jid::new(item) else {
        return false;
    };
    match (i.node(), i.resource()) {
        (Some(_), Some(_)) => i == *jid,
        (Some(_), None) => i.to_bare() == jid.to_bare(),
        (None, Some(r)) => i.domain() == jid.domain() && jid.resource() == Some(r),
        (None, None) => i.domain() == jid.domain(),
    }
}

/// An account's blocklist, from the cache or the store (empty when the store fails: a
/// failing store must not stop delivery; the failure is logged).
pub async fn list(im: &Im, bare: &str) -> Arc<Vec<String>> {
    if let Some(l) = im.blocklists.get(bare) {
        return l.clone();
    }
    match im.data.blocklist(bare).await {
        Ok(l) => {
            let l = Arc::new(l);
            im.blocklists.insert(bare.to_owned(), l.clone());
            l
        }
        Err(e) => {
            tracing::error!(%e, "cannot read a blocklist");
            Arc::new(Vec::new())
        }
    }
}

/// Whether the account `bare` blocks `other`.
pub async fn blocks(im: &Im, bare: &str, other: &str) -> bool {
    // Almost every list is empty: decide that before parsing any JID.
    let l = list(im, bare).await;
    if l.is_empty() {
        return false;
    }
    let Ok(j) = Jid::new(other) else {
        return false;
    };
    j.to_bare().to_string() != bare && l.iter().any(|i| covers(i, &j))
}

/// The error a user gets for a stanza to a contact it blocks (XEP-0191 §3.5).
pub fn blocked_error() -> StanzaError {
    StanzaError::new(Condition::NotAcceptable).with_app(Element::new("blocked", NS_ERRORS))
}

/// A blocklist get, block or unblock from one of the user's resources; returns the answer.
pub async fn iq(
    server: &dyn ServerHandle,
    im: &Im,
    bare: &str,
    session_id: u64,
    iq: &Element,
) -> Element {
    let answer = async {
        let payload = iq
            .first_child()
            .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
        if IqType::of(iq) == Some(IqType::Get) {
            if payload.name() != "blocklist" {
                return Err(StanzaError::new(Condition::BadRequest));
            }
            server.set_interest(bare, session_id, Interest::Blocklist);
            let mut list_el = Element::new("blocklist", NS);
            for j in list(im, bare).await.iter() {
                list_el.push_child(Element::new("item", NS).with_attr("jid", j.clone()));
            }
            let mut reply = iq_result(iq);
            reply.push_child(list_el);
            return Ok(reply);
        }
        let block = match payload.name() {
            "block" => true,
            "unblock" => false,
            _ => return Err(StanzaError::new(Condition::BadRequest)),
        };
        let mut jids = Vec::new();
        for item in payload.children().filter(|c| c.is("item", NS)) {
            let j = item
                .attr("jid")
                .and_then(|j| Jid::new(j).ok())
                .ok_or_else(|| StanzaError::new(Condition::JidMalformed))?;
            jids.push(j.to_string());
        }
        // §3.3: blocking needs at least one item; unblocking none means everything.
        if block && jids.is_empty() {
            return Err(StanzaError::new(Condition::BadRequest).with_text("nothing to block"));
        }
        im.data
            .set_blocked(bare, &jids, block)
            .await
            .map_err(|e| storage_failure("changing a blocklist", &e))?;
        im.blocklists.remove(bare);
        for session in server
            .sessions(bare)
            .iter()
            .filter(|s| s.wants(Interest::Blocklist))
        {
            let to = format!("{bare}/{}", session.resource);
            let mut change = Element::new(payload.name().to_owned(), NS);
            for j in &jids {
                change.push_child(Element::new("item", NS).with_attr("jid", j.clone()));
            }
            let push = Element::new("iq", ns::CLIENT)
                .with_attr("type", "set")
                .with_attr("id", format!("block{session_id}"))
                .with_attr("to", to.clone())
                .with_child(change);
            server.deliver(&to, push);
        }
        Ok(iq_result(iq))
    }
    .await;
    let mut reply = match answer {
        Ok(r) => r,
        Err(err) => err.reply_to(iq).unwrap_or_else(|| iq_result(iq)),
    };
    reply.remove_attr("from");
    reply
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn items_cover_jids_as_xep_0016_matches_them() {
        let j = |s: &str| Jid::new(s).unwrap();
        let full = j("eve@evil.example/phone");
        assert!(covers("eve@evil.example/phone", &full));
        assert!(!covers("eve@evil.example/laptop", &full));
        assert!(covers("eve@evil.example", &full));
        assert!(covers("evil.example", &full));
        assert!(covers("evil.example/phone", &full));
        assert!(!covers("evil.example/laptop", &full));
        assert!(!covers("good.example", &full));
        assert!(!covers("not a jid@@", &full));
    }
}
