//! An archive query (XEP-0313 §4): the form's filters and the XEP-0059 paging, read into
//! what an [`ArchiveQuery`] asks, and the form a client is offered. MUC room archives are
//! queried the same way.

use openspimed_module_api::form::{self, Form};
use openspimed_module_api::jid::Jid;
use openspimed_module_api::rsm::{self, Before};
use openspimed_module_api::{ArchiveQuery, Condition, Element, StanzaError, datetime, ns};

use crate::NS;

/// The fields of the query form this server understands: XEP-0313 §4.1 and the
/// `urn:xmpp:mam:2#extended` ones (§4.1.4–4.1.5).
pub const FIELDS: &[(&str, &str)] = &[
    ("with", "jid-single"),
    ("start", "text-single"),
    ("end", "text-single"),
    ("before-id", "text-single"),
    ("after-id", "text-single"),
    ("ids", "text-multi"),
];

/// One query, read from its `<query xmlns='urn:xmpp:mam:2'/>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// The client's `queryid`, echoed in every result and in `<fin/>`.
    pub queryid: Option<String>,
    /// What the form asks the archive for: the result set a `<count/>` counts.
    pub filter: ArchiveQuery,
    /// The XEP-0059 `<after/>`: where the page starts in that set.
    pub page_after: Option<String>,
    /// The XEP-0059 `<before/>` id: where the page ends in that set.
    pub page_before: Option<String>,
    /// The page size: the client's `<max/>` bounded by the server's.
    pub max: u64,
    /// Whether the client pages backwards (`<before/>`): the page is the newest items
    /// that match, and `complete` means the oldest one was reached.
    pub backwards: bool,
    /// `<flip-page/>` (XEP-0313 §4.3.2, part of `#extended`): the page's results come
    /// newest first.
    pub flip: bool,
}

/// The `<query/>` answer to an iq get: the form a client fills in (§4.1.5).
pub fn form() -> Element {
    let mut x = form::form("form", NS);
    for (var, kind) in FIELDS {
        x.push_child(form::blank_field(var, kind, ""));
    }
    Element::new("query", NS).with_child(x)
}

impl Query {
    /// Reads `query`, with page sizes `default_max` (none asked) and `max_max` (the most
    /// a client may ask).
    pub fn parse(query: &Element, default_max: u64, max_max: u64) -> Result<Query, StanzaError> {
        let bad = |text: String| StanzaError::new(Condition::BadRequest).with_text(text);
        // Read in time order, which is what XEP-0313 §4.1 orders results by: the store
        // enters its index by time (or by JID and time) at `start`, at the item of
        // `after-id`, or at the end, so a page costs the page whatever the archive holds.
        // Items are appended as they arrive: time order is append order unless the clock
        // went back.
        let mut filter = ArchiveQuery {
            named_only: true,
            by_time: true,
            ..ArchiveQuery::default()
        };
        if let Some(f) = Form::find(query) {
            if f.form_type.as_deref().is_some_and(|t| t != NS) {
                return Err(bad(format!("the form's FORM_TYPE must be {NS}")));
            }
            for (var, _) in &f.fields {
                // Prosody and ejabberd refuse what they cannot filter by rather than
                // answer with more than was asked.
                if var != "FORM_TYPE" && !FIELDS.iter().any(|(v, _)| v == var) {
                    return Err(bad(format!("the field {var} is not supported")));
                }
            }
            if let Some(w) = f.value("with").filter(|w| !w.is_empty()) {
                let jid = Jid::new(w.trim()).map_err(|_| {
                    StanzaError::new(Condition::JidMalformed).with_text("with is not a JID")
                })?;
                // Archives keep the peer's bare JID: a full JID matches nothing else.
                filter.with = Some(jid.to_bare().to_string());
            }
            let time = |var: &str| -> Result<Option<i64>, StanzaError> {
                match f.value(var).filter(|v| !v.is_empty()) {
                    None => Ok(None),
                    Some(v) => datetime::parse_ms(v.trim())
                        .map(Some)
                        .ok_or_else(|| bad(format!("{var} is not a XEP-0082 date-time"))),
                }
            };
            filter.start_ms = time("start")?;
            filter.end_ms = time("end")?;

            filter.before = f
                .value("before-id")
                .filter(|v| !v.is_empty())
                .map(str::to_owned);
            filter.after = f
                .value("after-id")
                .filter(|v| !v.is_empty())
                .map(str::to_owned);
            let ids: Vec<String> = f
                .values("ids")
                .iter()
                .filter(|v| !v.is_empty())
                .cloned()
                .collect();
            if !ids.is_empty() {
                filter.ids = Some(ids);
            }
        }
        let set = rsm::Request::find(query).map_err(|e| bad(e.to_string()))?;
        let mut backwards = false;
        let (mut page_after, mut page_before) = (None, None);
        let max = set
            .as_ref()
            .and_then(|s| s.max)
            .unwrap_or(default_max)
            .min(max_max);
        if let Some(set) = set {
            if set.index.is_some() {
                return Err(StanzaError::new(Condition::FeatureNotImplemented)
                    .with_text("paging by index is not supported; use before and after"));
            }
            // One archive query takes one bound each way: the form's and the page's
            // together would need a comparison of two ids first.
            if let Some(after) = set.after {
                if filter.after.is_some() {
                    return Err(bad("after-id and an RSM after cannot both be given".into()));
                }
                page_after = Some(after);
            }
            match set.before {
                None => {}
                Some(Before::Last) => backwards = true,
                Some(Before::Id(id)) => {
                    if filter.before.is_some() {
                        return Err(bad(
                            "before-id and an RSM before cannot both be given".into()
                        ));
                    }
                    page_before = Some(id);
                    backwards = true;
                }
            }
        }
        Ok(Query {
            queryid: query.attr("queryid").map(str::to_owned),
            filter,
            page_after,
            page_before,
            max,
            backwards,
            flip: query.get_child("flip-page", NS).is_some(),
        })
    }

    /// The archive query for one page: one item more than the page, which tells whether
    /// the page is the last one (Prosody asks the same way).
    pub fn page_query(&self) -> ArchiveQuery {
        let mut q = ArchiveQuery {
            limit: Some(self.max + 1),
            reverse: self.backwards,
            ..self.filter.clone()
        };
        if self.page_after.is_some() {
            q.after.clone_from(&self.page_after);
        }
        if self.page_before.is_some() {
            q.before.clone_from(&self.page_before);
        }
        q
    }

    /// The ids the query names that must exist (XEP-0313 §4.3.1: an unknown one is
    /// `item-not-found`).
    pub fn named_ids(&self) -> Vec<&str> {
        [
            &self.filter.after,
            &self.filter.before,
            &self.page_after,
            &self.page_before,
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect()
    }
}

/// One `<message><result/></message>` of an answer: `item`'s stanza forwarded (XEP-0297)
/// with when it was archived (XEP-0203).
pub fn result_message(
    queryid: Option<&str>,
    to: &str,
    from: Option<&str>,
    id: &str,
    at_ms: i64,
    stanza: Element,
) -> Element {
    let mut result = Element::new("result", NS).with_attr("id", id);
    if let Some(q) = queryid {
        result.set_attr("queryid", q);
    }
    result.push_child(
        Element::new("forwarded", ns::FORWARD)
            .with_child(
                Element::new("delay", ns::DELAY).with_attr("stamp", datetime::format_utc_ms(at_ms)),
            )
            .with_child(stanza),
    );
    let mut m = Element::new("message", ns::CLIENT)
        .with_attr("to", to)
        .with_attr("id", format!("{:016x}", rand::random::<u64>()))
        .with_child(result);
    if let Some(f) = from {
        m.set_attr("from", f);
    }
    m
}

/// The `<fin/>` that ends an answer (XEP-0313 §4.3: `complete` and the page; the iq's id
/// tells which query it ends).
pub fn fin(complete: bool, page: &rsm::Page) -> Element {
    let mut fin = Element::new("fin", NS);
    if complete {
        fin.set_attr("complete", "true");
    }
    fin.with_child(page.to_element())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn q(inner: &str) -> Result<Query, StanzaError> {
        Query::parse(
            &Element::parse(&format!(
                "<query xmlns='urn:xmpp:mam:2' queryid='f27'>{inner}</query>"
            ))
            .unwrap(),
            20,
            50,
        )
    }

    const FORM: &str = "<x xmlns='jabber:x:data' type='submit'>\
        <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>";

    #[test]
    fn filters_and_paging_read_into_an_archive_query() {
        let plain = q("").unwrap();
        assert_eq!((plain.max, plain.backwards), (20, false));
        assert_eq!(plain.queryid.as_deref(), Some("f27"));
        assert!(plain.filter.named_only);
        let full = q(&format!(
            "{FORM}<field var='with'><value>juliet@capulet.lit/balcony</value></field>\
             <field var='start'><value>2010-06-07T00:00:00Z</value></field>\
             <field var='end'><value>2010-07-07T13:23:54Z</value></field></x>\
             <set xmlns='http://jabber.org/protocol/rsm'><max>500</max><before/></set>"
        ))
        .unwrap();
        assert_eq!(full.filter.with.as_deref(), Some("juliet@capulet.lit"));
        assert_eq!(full.filter.start_ms, Some(1_275_868_800_000));
        assert!(full.filter.end_ms.is_some());
        assert_eq!((full.max, full.backwards), (50, true));
        assert_eq!(full.page_query().limit, Some(51));
        assert!(full.page_query().reverse);
        let by_id = q(&format!(
            "{FORM}<field var='after-id'><value>a</value></field>\
             <field var='ids'><value>x</value><value>y</value></field></x>\
             <set xmlns='http://jabber.org/protocol/rsm'><before>b</before></set>"
        ))
        .unwrap();
        assert_eq!(by_id.named_ids(), ["a", "b"]);
        assert_eq!(by_id.filter.ids, Some(vec!["x".into(), "y".into()]));
    }

    #[test]
    fn bad_queries_name_what_is_wrong() {
        let cond = |inner: &str| q(inner).err().unwrap().condition;
        assert_eq!(
            cond(&format!(
                "{FORM}<field var='start'><value>yesterday</value></field></x>"
            )),
            Condition::BadRequest
        );
        assert_eq!(
            cond(&format!(
                "{FORM}<field var='fulltext'><value>x</value></field></x>"
            )),
            Condition::BadRequest
        );
        assert_eq!(
            cond(&format!(
                "{FORM}<field var='with'><value>@@</value></field></x>"
            )),
            Condition::JidMalformed
        );
        assert_eq!(
            cond(
                "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:other</value></field></x>"
            ),
            Condition::BadRequest
        );
        assert_eq!(
            cond("<set xmlns='http://jabber.org/protocol/rsm'><index>3</index></set>"),
            Condition::FeatureNotImplemented
        );
        assert_eq!(
            cond("<set xmlns='http://jabber.org/protocol/rsm'><max>x</max></set>"),
            Condition::BadRequest
        );
    }
}
