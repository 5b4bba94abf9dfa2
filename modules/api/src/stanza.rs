//! Small helpers over [`Element`] for the three stanza kinds.

use crate::element::Element;

/// An empty `type='result'` answer to an iq (RFC 6120 §8.2.3).
pub fn iq_result(request: &Element) -> Element {
    let mut reply = Element::new("iq", request.ns_handle().clone()).with_attr("type", "result");
    if let Some(id) = request.attr("id") {
        reply.set_attr("id", id);
    }
    if let Some(to) = request.attr("to") {
        reply.set_attr("from", to);
    }
    if let Some(from) = request.attr("from") {
        reply.set_attr("to", from);
    }
    reply
}

/// The payload of an iq: its only child element.
pub fn iq_payload(iq: &Element) -> Option<&Element> {
    iq.first_child()
}
