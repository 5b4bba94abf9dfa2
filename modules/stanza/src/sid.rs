//! XEP-0359 stanza ids on a message: the ids an archive (an account's, a room's) stamps,
//! and the forged ones it removes first.

use crate::element::Element;
use crate::ns::SID;

/// Removes every `<stanza-id/>` whose `by` is `by` (XEP-0359 §3: an entity MUST remove
/// those claiming to be its own before it adds one, or a sender could forge them).
pub fn strip_by(message: &mut Element, by: &str) {
    message.retain_children(|e| {
        !(e.is("stanza-id", SID) && e.attr("by").is_some_and(|b| b.eq_ignore_ascii_case(by)))
    });
}

/// Adds `<stanza-id xmlns='urn:xmpp:sid:0' by='by' id='id'/>`.
pub fn add(message: &mut Element, by: &str, id: &str) {
    message.push_child(
        Element::new("stanza-id", SID)
            .with_attr("by", by)
            .with_attr("id", id),
    );
}
