//! XEP-0048 `<storage/>` and XEP-0402 `<conference/>` items, one into the other (XEP-0402
//! §5.3: the same room, name, autojoin, nick and password).

use openspimed_module_api::Element;

/// XEP-0048's namespace (in private storage, XEP-0049).
pub const NS_LEGACY: &str = "storage:bookmarks";
/// XEP-0402's namespace: the PEP node and its payloads.
pub const NS: &str = "urn:xmpp:bookmarks:1";

/// One room bookmark, whichever way it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bookmark {
    /// The room's JID (XEP-0402: the item id).
    pub jid: String,
    /// What the user calls it.
    pub name: Option<String>,
    /// Whether clients join it at login.
    pub autojoin: bool,
    /// The nick to join with.
    pub nick: Option<String>,
    /// The room's password.
    pub password: Option<String>,
}

fn is_true(v: Option<&str>) -> bool {
    matches!(v, Some("true" | "1"))
}

fn text_child(el: &Element, name: &str, ns: &str) -> Option<String> {
    el.get_child(name, ns)
        .map(Element::text)
        .filter(|t| !t.is_empty())
}

/// The room bookmarks of a XEP-0048 `<storage/>` (URLs are not rooms: left out).
pub fn from_storage(storage: &Element) -> Vec<Bookmark> {
    storage
        .children()
        .filter(|c| c.is("conference", NS_LEGACY))
        .filter_map(|c| {
            Some(Bookmark {
                jid: c.attr("jid")?.to_owned(),
                name: c.attr("name").map(str::to_owned),
                autojoin: is_true(c.attr("autojoin")),
                nick: text_child(c, "nick", NS_LEGACY),
                password: text_child(c, "password", NS_LEGACY),
            })
        })
        .collect()
}

/// A XEP-0048 `<storage/>` holding `marks`.
pub fn to_storage(marks: &[Bookmark]) -> Element {
    let mut storage = Element::new("storage", NS_LEGACY);
    for m in marks {
        let mut c = Element::new("conference", NS_LEGACY).with_attr("jid", m.jid.clone());
        if let Some(n) = &m.name {
            c.set_attr("name", n.clone());
        }
        c.set_attr("autojoin", if m.autojoin { "true" } else { "false" });
        if let Some(n) = &m.nick {
            c.push_child(Element::new("nick", NS_LEGACY).with_text(n.clone()));
        }
        if let Some(p) = &m.password {
            c.push_child(Element::new("password", NS_LEGACY).with_text(p.clone()));
        }
        storage.push_child(c);
    }
    storage
}

/// The bookmark of a XEP-0402 item (`id` = the room).
pub fn from_item(id: &str, conference: &Element) -> Bookmark {
    Bookmark {
        jid: id.to_owned(),
        name: conference.attr("name").map(str::to_owned),
        autojoin: is_true(conference.attr("autojoin")),
        nick: text_child(conference, "nick", NS),
        password: text_child(conference, "password", NS),
    }
}

/// The XEP-0402 payload of `m`.
pub fn to_item(m: &Bookmark) -> Element {
    let mut c = Element::new("conference", NS);
    if let Some(n) = &m.name {
        c.set_attr("name", n.clone());
    }
    c.set_attr("autojoin", if m.autojoin { "true" } else { "false" });
    if let Some(n) = &m.nick {
        c.push_child(Element::new("nick", NS).with_text(n.clone()));
    }
    if let Some(p) = &m.password {
        c.push_child(Element::new("password", NS).with_text(p.clone()));
    }
    c
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn both_forms_carry_the_same_bookmarks() {
        let storage = Element::parse(
            "<storage xmlns='storage:bookmarks'>\
             <conference jid='council@chat.example' name='Council' autojoin='1'><nick>jc</nick><password>pw</password></conference>\
             <conference jid='lobby@chat.example'/>\
             <url name='home' url='https://example.org'/>\
             <conference name='no jid'/></storage>",
        )
        .unwrap();
        let marks = from_storage(&storage);
        assert_eq!(marks.len(), 2);
        assert_eq!(
            marks[0],
            Bookmark {
                jid: "council@chat.example".into(),
                name: Some("Council".into()),
                autojoin: true,
                nick: Some("jc".into()),
                password: Some("pw".into()),
            }
        );
        assert!(!marks[1].autojoin);
        let items: Vec<Bookmark> = marks
            .iter()
            .map(|m| from_item(&m.jid, &to_item(m)))
            .collect();
        assert_eq!(items, marks);
        assert_eq!(from_storage(&to_storage(&marks)), marks);
    }
}
