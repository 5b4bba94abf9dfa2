//! XEP-0059 result set management: the paging request a query carries and the `<set/>` its
//! answer ends with. MAM (XEP-0313) pages archives with it, MUC (XEP-0045) room lists.

use crate::element::Element;
use crate::ns::RSM;

/// Where a page ends, seen from the request (XEP-0059 §2.2–2.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Before {
    /// `<before/>`: the last page.
    Last,
    /// `<before>id</before>`: the page just before that item.
    Id(String),
}

/// A `<set/>` in a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// `<max/>`: at most this many items (0: only the count).
    pub max: Option<u64>,
    /// `<after/>`: the page just after this item.
    pub after: Option<String>,
    /// `<before/>`: the page just before an item, or the last one.
    pub before: Option<Before>,
    /// `<index/>`: the page from this position (§2.4); servers may refuse it.
    pub index: Option<u64>,
}

/// Why a `<set/>` is not a request one can answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RsmError {
    /// `<max/>` or `<index/>` is not a non-negative integer.
    #[error("<{0}/> is not a non-negative integer")]
    NotANumber(&'static str),
}

impl Request {
    /// The `<set/>` child of `query`, `None` when it has none.
    pub fn find(query: &Element) -> Result<Option<Request>, RsmError> {
        let Some(set) = query.get_child("set", RSM) else {
            return Ok(None);
        };
        let number = |name: &'static str| -> Result<Option<u64>, RsmError> {
            set.get_child(name, RSM)
                .map(|e| {
                    e.text()
                        .trim()
                        .parse()
                        .map_err(|_| RsmError::NotANumber(name))
                })
                .transpose()
        };
        Ok(Some(Request {
            max: number("max")?,
            index: number("index")?,
            after: set.get_child("after", RSM).map(Element::text),
            before: set.get_child("before", RSM).map(|b| match b.text() {
                t if t.is_empty() => Before::Last,
                t => Before::Id(t),
            }),
        }))
    }
}

/// The `<set/>` that ends an answer (§2.1): the first and last item of the page and, when
/// known, how many the whole set holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// The id of the page's first item, with its position in the whole set when known.
    pub first: Option<(String, Option<u64>)>,
    /// The id of the page's last item.
    pub last: Option<String>,
    /// How many items the whole set holds.
    pub count: Option<u64>,
}

impl Page {
    /// The `<set xmlns='http://jabber.org/protocol/rsm'/>` element.
    pub fn to_element(&self) -> Element {
        let mut set = Element::new("set", RSM);
        if let Some((id, index)) = &self.first {
            let mut first = Element::new("first", RSM).with_text(id.clone());
            if let Some(i) = index {
                first.set_attr("index", i.to_string());
            }
            set.push_child(first);
        }
        if let Some(id) = &self.last {
            set.push_child(Element::new("last", RSM).with_text(id.clone()));
        }
        if let Some(n) = self.count {
            set.push_child(Element::new("count", RSM).with_text(n.to_string()));
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(set: &str) -> Element {
        Element::parse(&format!("<query xmlns='urn:q'>{set}</query>")).unwrap()
    }

    #[test]
    fn requests_read_every_paging_form() {
        assert_eq!(Request::find(&query("")).unwrap(), None);
        let r = Request::find(&query(
            "<set xmlns='http://jabber.org/protocol/rsm'><max>10</max><before/></set>",
        ))
        .unwrap()
        .unwrap();
        assert_eq!((r.max, r.before), (Some(10), Some(Before::Last)));
        let r = Request::find(&query(
            "<set xmlns='http://jabber.org/protocol/rsm'><after>a1</after><before>b2</before></set>",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(r.after.as_deref(), Some("a1"));
        assert_eq!(r.before, Some(Before::Id("b2".into())));
        let bad = Request::find(&query(
            "<set xmlns='http://jabber.org/protocol/rsm'><max>-1</max></set>",
        ));
        assert_eq!(bad, Err(RsmError::NotANumber("max")));
    }

    #[test]
    fn a_page_writes_first_last_and_count() {
        let page = Page {
            first: Some(("a".into(), Some(0))),
            last: Some("z".into()),
            count: Some(26),
        };
        assert_eq!(
            String::from_utf8(page.to_element().to_bytes()).unwrap(),
            "<set xmlns='http://jabber.org/protocol/rsm'><first index='0'>a</first>\
             <last>z</last><count>26</count></set>"
        );
        assert_eq!(
            String::from_utf8(Page::default().to_element().to_bytes()).unwrap(),
            "<set xmlns='http://jabber.org/protocol/rsm'/>"
        );
    }
}
