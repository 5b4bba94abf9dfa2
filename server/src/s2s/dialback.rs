//! Server Dialback keys (XEP-0220 §2.1.1, generated as XEP-0185 recommends). Sans-IO.

use hmac::{Hmac, Mac};
use openspimed_module_api::element::{Node, escape_attr, escape_text};
use openspimed_module_api::{Element, ns};
use sha2::{Digest, Sha256};

/// The namespace of `<db:result/>` and `<db:verify/>` (XEP-0220).
pub const NS: &str = "jabber:server:dialback";
/// The stream feature that says dialback is offered, with error support (XEP-0220 §2.4).
pub const FEATURE_NS: &str = "urn:xmpp:features:dialback";

/// The secret keys are derived from: held as hex(SHA-256(secret)), the HMAC key XEP-0185
/// prescribes, so the configured text itself is not kept.
#[derive(Clone)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// From the configured secret, or a random one for this process.
    pub fn new(configured: Option<&str>) -> Secret {
        let random;
        let text = match configured {
            Some(t) => t,
            None => {
                let mut b = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
                random = hex(&b);
                &random
            }
        };
        Secret(hex(&Sha256::digest(text.as_bytes())))
    }

    /// The key the originating server sends in `<db:result/>` and the authoritative server
    /// checks in `<db:verify/>`: HMAC-SHA256(hex(SHA256(secret)), "receiving originating id"),
    /// in lower-case hex.
    pub fn key(&self, receiving: &str, originating: &str, stream_id: &str) -> String {
        // HMAC accepts keys of any length.
        let mut mac = match Hmac::<Sha256>::new_from_slice(self.0.as_bytes()) {
            Ok(m) => m,
            Err(_) => return String::new(),
        };
        mac.update(receiving.as_bytes());
        mac.update(b" ");
        mac.update(originating.as_bytes());
        mac.update(b" ");
        mac.update(stream_id.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// Whether `key` is the one this server would have generated (constant-time compare).
    pub fn verify(&self, receiving: &str, originating: &str, stream_id: &str, key: &str) -> bool {
        let want = self.key(receiving, originating, stream_id);
        let got = key.trim().as_bytes();
        want.len() == got.len()
            && want
                .as_bytes()
                .iter()
                .zip(got)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Serializes `<db:result/>` or `<db:verify/>` with the `db:` prefix that every server
/// stream header declares (`xmlns:db='jabber:server:dialback'`), the form XEP-0220's
/// examples use and Prosody and ejabberd write. ejabberd only answers that form: a
/// default-namespace `<result xmlns='jabber:server:dialback'/>` is never answered, and it
/// bounces everything for the domain. Children (a dialback `<error/>`) are in the stream's
/// `jabber:server` namespace.
pub fn to_wire(el: &Element) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"<db:");
    out.extend_from_slice(el.name().as_bytes());
    for (name, value) in el.attrs() {
        out.push(b' ');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"='");
        escape_attr(&mut out, value);
        out.push(b'\'');
    }
    out.push(b'>');
    for node in el.nodes() {
        match node {
            Node::Element(child) => child.write_to(&mut out, ns::SERVER),
            Node::Text(t) => escape_text(&mut out, t),
        }
    }
    out.extend_from_slice(b"</db:");
    out.extend_from_slice(el.name().as_bytes());
    out.push(b'>');
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xep_0185_example_key() {
        // XEP-0185 §3: receiving server xmpp.example.com, originating example.org.
        let s = Secret::new(Some("s3cr3tf0rd14lb4ck"));
        let key = s.key("xmpp.example.com", "example.org", "D60000229F");
        assert_eq!(
            key,
            "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643"
        );
        assert!(s.verify("xmpp.example.com", "example.org", "D60000229F", &key));
        assert!(!s.verify("example.org", "xmpp.example.com", "D60000229F", &key));
        assert!(!s.verify("xmpp.example.com", "example.org", "D60000229G", &key));
        assert!(!s.verify("xmpp.example.com", "example.org", "D60000229F", ""));
    }

    #[test]
    fn dialback_elements_go_out_with_the_db_prefix() {
        let result = Element::new("result", NS)
            .with_attr("from", "a.example")
            .with_attr("to", "b.example")
            .with_text("k<1>");
        assert_eq!(
            String::from_utf8(to_wire(&result)).unwrap(),
            "<db:result from='a.example' to='b.example'>k&lt;1&gt;</db:result>"
        );
        let error = Element::new("result", NS)
            .with_attr("type", "error")
            .with_child(
                Element::new("error", ns::SERVER)
                    .with_attr("type", "cancel")
                    .with_child(Element::new("item-not-found", ns::XMPP_STANZAS)),
            );
        let wire = String::from_utf8(to_wire(&error)).unwrap();
        assert_eq!(
            wire,
            "<db:result type='error'><error type='cancel'><item-not-found \
             xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>"
        );
        // Read back inside a server stream that declares the prefix, it is the same element.
        let stream = format!(
            "<stream:stream xmlns='jabber:server' xmlns:db='{NS}' \
             xmlns:stream='http://etherx.jabber.org/streams'>{wire}"
        );
        let mut p = crate::xml::StreamParser::new(crate::xml::Limits::default());
        let mut buf = stream.as_bytes();
        let mut got = None;
        while let Ok(Some(ev)) = p.next(&mut buf) {
            if let crate::xml::StreamEvent::Element(e) = ev {
                got = Some(e);
            }
        }
        let got = got.unwrap();
        assert!(got.is("result", NS), "{got}");
        assert!(got.get_child("error", ns::SERVER).is_some(), "{got}");
    }

    #[test]
    fn random_secrets_differ() {
        let a = Secret::new(None).key("r", "o", "id");
        let b = Secret::new(None).key("r", "o", "id");
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
    }
}
