//! Entity capabilities (XEP-0115) as a PEP service reads them: which `NODE+notify`
//! features a contact's resource advertises (XEP-0163 §4.2, filtered notifications).
//!
//! A presence carries `<c node ver hash/>`; `ver` names a disco#info result. Results are
//! asked of the resource itself (`node#ver`) and kept by `ver` once the hash recomputed
//! from the answer (§5.1, SHA-1) matches, so that one client cannot teach the cache wrong
//! features for another client's `ver`; an answer that does not match serves only the
//! resource that gave it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use openspimed_module_api::{Element, ns};
use sha1::{Digest, Sha1};

/// `http://jabber.org/protocol/caps`
pub const CAPS: &str = "http://jabber.org/protocol/caps";

/// `jabber:x:data`
use openspimed_module_api::ns::DATA;

/// Most `ver` values kept; the cache starts over when full (clients share few versions).
const MAX_ENTRIES: usize = 10_000;

/// What a presence's `<c/>` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caps {
    /// The software's node URI.
    pub node: String,
    /// The verification string (a hash of the disco#info result).
    pub ver: String,
    /// The hash function; only `sha-1` results are kept.
    pub hash: String,
}

/// The capabilities advertised in a presence, if any.
pub fn caps_of(presence: &Element) -> Option<Caps> {
    let c = presence.get_child("c", CAPS)?;
    Some(Caps {
        node: c.attr("node")?.to_owned(),
        ver: c.attr("ver")?.to_owned(),
        hash: c.attr("hash").unwrap_or("").to_owned(),
    })
}

/// The features of a disco#info `<query/>`.
pub fn features_of(query: &Element) -> Vec<String> {
    query
        .children()
        .filter(|c| c.is("feature", ns::DISCO_INFO))
        .filter_map(|c| c.attr("var").map(str::to_owned))
        .collect()
}

/// The XEP-0115 §5.1 verification string of a disco#info `<query/>`, hashed with SHA-1
/// and encoded in base64: what `ver` must equal.
pub fn ver_of(query: &Element) -> String {
    let mut s = String::new();
    let mut identities: Vec<String> = query
        .children()
        .filter(|c| c.is("identity", ns::DISCO_INFO))
        .map(|i| {
            format!(
                "{}/{}/{}/{}",
                i.attr("category").unwrap_or(""),
                i.attr("type").unwrap_or(""),
                i.attr("xml:lang").unwrap_or(""),
                i.attr("name").unwrap_or("")
            )
        })
        .collect();
    identities.sort();
    for i in identities {
        s.push_str(&i);
        s.push('<');
    }
    let mut features = features_of(query);
    features.sort();
    for f in features {
        s.push_str(&f);
        s.push('<');
    }
    let mut forms: Vec<(String, Vec<Field>)> = query
        .children()
        .filter(|c| c.is("x", DATA))
        .map(|x| {
            let mut form_type = String::new();
            let mut fields = Vec::new();
            for f in x.children().filter(|f| f.is("field", DATA)) {
                let var = f.attr("var").unwrap_or("").to_owned();
                let mut values: Vec<String> = f
                    .children()
                    .filter(|v| v.is("value", DATA))
                    .map(|v| v.text())
                    .collect();
                if var == "FORM_TYPE" {
                    form_type = values.first().cloned().unwrap_or_default();
                    continue;
                }
                values.sort();
                fields.push((var, values));
            }
            fields.sort();
            (form_type, fields)
        })
        .collect();
    forms.sort();
    for (form_type, fields) in forms {
        s.push_str(&form_type);
        s.push('<');
        for (var, values) in fields {
            s.push_str(&var);
            s.push('<');
            for v in values {
                s.push_str(&v);
                s.push('<');
            }
        }
    }
    base64::engine::general_purpose::STANDARD.encode(Sha1::digest(s.as_bytes()))
}

/// A data-form field in a disco#info result: its `var` and its values, sorted.
type Field = (String, Vec<String>);

/// Verified feature lists by `ver`.
#[derive(Default)]
pub struct CapsCache {
    /// `ver` → features.
    known: Mutex<HashMap<String, Arc<Vec<String>>>>,
}

impl CapsCache {
    /// The features behind a verified `ver`, if known.
    pub fn get(&self, ver: &str) -> Option<Arc<Vec<String>>> {
        self.known.lock().ok()?.get(ver).cloned()
    }

    /// Keeps the features of a `ver` verified against them.
    pub fn put(&self, ver: &str, features: Arc<Vec<String>>) {
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= MAX_ENTRIES {
                known.clear();
            }
            known.insert(ver.to_owned(), features);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XEP-0115 §5.2, the simple example: "QgayPKawpkPSDYmwT/WM94uAlu0=".
    #[test]
    fn simple_example_of_the_xep() {
        let q = Element::parse(
            "<query xmlns='http://jabber.org/protocol/disco#info' \
             node='http://code.google.com/p/exodus#QgayPKawpkPSDYmwT/WM94uAlu0='>\
             <identity category='client' name='Exodus 0.9.1' type='pc'/>\
             <feature var='http://jabber.org/protocol/caps'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='http://jabber.org/protocol/muc'/></query>",
        )
        .unwrap();
        assert_eq!(ver_of(&q), "QgayPKawpkPSDYmwT/WM94uAlu0=");
    }

    /// XEP-0115 §5.3, the complex example with a form: "q07IKJEyjvHSyhy//CH0CxmKi8w=".
    #[test]
    fn complex_example_of_the_xep() {
        let q = Element::parse(
            "<query xmlns='http://jabber.org/protocol/disco#info' \
             node='http://psi-im.org#q07IKJEyjvHSyhy//CH0CxmKi8w='>\
             <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
             <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>\
             <feature var='http://jabber.org/protocol/caps'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='http://jabber.org/protocol/muc'/>\
             <x xmlns='jabber:x:data' type='result'>\
             <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
             <field var='ip_version'><value>ipv4</value><value>ipv6</value></field>\
             <field var='os'><value>Mac</value></field>\
             <field var='os_version'><value>10.5.1</value></field>\
             <field var='software'><value>Psi</value></field>\
             <field var='software_version'><value>0.11</value></field></x></query>",
        )
        .unwrap();
        assert_eq!(ver_of(&q), "q07IKJEyjvHSyhy//CH0CxmKi8w=");
    }
}
