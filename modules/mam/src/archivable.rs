//! What goes into an account's archive (XEP-0313 §5.1.1, with Prosody's reading of it) and
//! the stanza ids that tell clients where (XEP-0359).

use openspimed_module_api::{Element, MessageType, ns};

/// XEP-0085 chat states: never worth keeping (Prosody's `dont_archive_namespaces`
/// default); a message of nothing else is not archived.
pub const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";

/// Whether `message` is archived at all: a chat message, or a normal one with a body,
/// unless a XEP-0334 hint says not to (`<store/>` overrides); errors, headlines and
/// group chat are not (a room keeps its own archive).
pub fn archivable(message: &Element) -> bool {
    let kind = MessageType::of(message);
    let by_type = kind == MessageType::Chat
        || (kind == MessageType::Normal && message.get_child("body", ns::CLIENT).is_some());
    if !by_type {
        return false;
    }
    if message.get_child("store", ns::HINTS).is_some() {
        return true;
    }
    if message.get_child("no-store", ns::HINTS).is_some()
        || message.get_child("no-permanent-store", ns::HINTS).is_some()
    {
        return false;
    }
    message.children().any(|c| c.ns() != CHATSTATES)
}

/// The copy of `message` the archive keeps: without chat states and without stanza ids
/// (those a client is told are added when it is read back).
pub fn for_storage(message: &Element) -> Element {
    let mut copy = message.clone();
    copy.retain_children(|e| e.ns() != CHATSTATES && !e.is("stanza-id", ns::SID));
    copy
}

pub use openspimed_module_api::sid::{add as add_id, strip_by as strip_ids_by};

/// A new archive id: the time in milliseconds (48 bits) then 48 random bits, in hex. The
/// time first makes ids of one archive sort in the order they were made, so the store's
/// index by id grows at its end as messages come (random ids put every insert on another
/// page of it: one more page written per message and commit); the random half keeps them
/// unguessable (XEP-0359 §6), as Prosody's random ids are and ejabberd's timestamps are not.
pub fn new_id() -> String {
    let ms = openspimed_module_api::datetime::now_ms().max(0) as u64 & 0xffff_ffff_ffff;
    let r: u64 = rand::random::<u64>() & 0xffff_ffff_ffff;
    format!("{ms:012x}{r:012x}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn m(xml: &str) -> Element {
        Element::parse(xml).unwrap()
    }

    #[test]
    fn what_is_archived() {
        let yes = [
            "<message xmlns='jabber:client' type='chat'><body>hi</body></message>",
            "<message xmlns='jabber:client'><body>hi</body></message>",
            "<message xmlns='jabber:client' type='chat'><received xmlns='urn:xmpp:receipts' id='1'/></message>",
            "<message xmlns='jabber:client' type='headlinex'><body>hi</body></message>",
            "<message xmlns='jabber:client' type='chat'><body>x</body><no-store xmlns='urn:xmpp:hints'/><store xmlns='urn:xmpp:hints'/></message>",
        ];
        let no = [
            "<message xmlns='jabber:client'><subject>s</subject></message>",
            "<message xmlns='jabber:client' type='headline'><body>hi</body></message>",
            "<message xmlns='jabber:client' type='groupchat'><body>hi</body></message>",
            "<message xmlns='jabber:client' type='error'><body>hi</body></message>",
            "<message xmlns='jabber:client' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
            "<message xmlns='jabber:client' type='chat'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>",
            "<message xmlns='jabber:client' type='chat'><body>x</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>",
        ];
        for x in yes {
            assert!(archivable(&m(x)), "{x}");
        }
        for x in no {
            assert!(!archivable(&m(x)), "{x}");
        }
    }

    #[test]
    fn own_ids_are_replaced_and_others_kept() {
        let mut msg = m("<message xmlns='jabber:client' type='chat'><body>b</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='Juliet@capulet.lit' id='forged'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='room@muc.lit' id='r1'/>\
             <active xmlns='http://jabber.org/protocol/chatstates'/></message>");
        let stored = for_storage(&msg);
        assert!(stored.get_child("stanza-id", ns::SID).is_none());
        assert!(stored.get_child("active", CHATSTATES).is_none());
        assert!(stored.get_child("body", ns::CLIENT).is_some());
        strip_ids_by(&mut msg, "juliet@capulet.lit");
        add_id(&mut msg, "juliet@capulet.lit", "real");
        let ids: Vec<_> = msg
            .children()
            .filter(|c| c.is("stanza-id", ns::SID))
            .map(|c| c.attr("id").unwrap())
            .collect();
        assert_eq!(ids, ["r1", "real"]);
        assert_ne!(new_id(), new_id());
    }
}
