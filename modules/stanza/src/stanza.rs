//! Small helpers over [`Element`] for the three stanza kinds.

use crate::element::Element;

/// An empty `type='result'` answer to an iq (RFC 6120 §8.2.3).
pub fn iq_result(request: &Element) -> Element {
    reply_skeleton(request, "result")
}

/// A reply to `stanza` of the given type: same name, namespace and id, addresses swapped.
pub fn reply_skeleton(stanza: &Element, kind: &str) -> Element {
    let mut reply = Element::new(stanza.name(), stanza.ns_handle().clone());
    if let Some(id) = stanza.attr("id") {
        reply.set_attr("id", id);
    }
    if let Some(to) = stanza.attr("to") {
        reply.set_attr("from", to);
    }
    if let Some(from) = stanza.attr("from") {
        reply.set_attr("to", from);
    }
    reply.set_attr("type", kind);
    reply
}

/// The payload of an iq: its only child element.
pub fn iq_payload(iq: &Element) -> Option<&Element> {
    iq.first_child()
}
