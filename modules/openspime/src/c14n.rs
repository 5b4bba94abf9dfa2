//! Canonical XML 1.0 (inclusive, without comments) of a payload, as wire profile §2 says.
//!
//! The payload is serialized standalone: `xmlns` is declared on it only if its namespace
//! differs from the context (`<transport>`'s namespace), and on a descendant only where
//! the namespace changes; attributes are sorted (unqualified first, then by namespace URI
//! and local name); empty elements are written as start/end pairs; text and attribute
//! values are escaped as C14N requires.

use openspimed_stanza::{Element, Node};

/// The canonical bytes of `payload` in a context whose default namespace is `context_ns`.
pub fn canonicalize(payload: &Element, context_ns: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write(payload, context_ns, &mut out);
    out
}

const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

fn write(el: &Element, parent_ns: &str, out: &mut Vec<u8>) {
    out.push(b'<');
    out.extend_from_slice(el.name().as_bytes());
    if el.ns() != parent_ns {
        out.extend_from_slice(b" xmlns=\"");
        escape_attr(el.ns(), out);
        out.push(b'"');
    }
    // (namespace URI, rendered name, value), sorted by URI then local name.
    let mut attrs: Vec<(&str, String, &str, &str)> = el
        .attrs()
        .map(|(name, value)| {
            if let Some(local) = name.strip_prefix("xml:") {
                (XML_NS, local.to_owned(), name, value)
            } else if let Some(rest) = name.strip_prefix('{') {
                match rest.split_once('}') {
                    Some((uri, local)) => (uri, local.to_owned(), name, value),
                    None => ("", name.to_owned(), name, value),
                }
            } else {
                ("", name.to_owned(), name, value)
            }
        })
        .collect();
    attrs.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    for (uri, local, raw, value) in &attrs {
        out.push(b' ');
        if uri.is_empty() || raw.starts_with("xml:") {
            out.extend_from_slice(raw.as_bytes());
        } else {
            // Prefixes are lost in the tree; such attributes do not occur in OpenSpime
            // payloads. Render them deterministically.
            out.extend_from_slice(format!("xmlns:ns=\"{uri}\" ns:{local}").as_bytes());
        }
        out.extend_from_slice(b"=\"");
        escape_attr(value, out);
        out.push(b'"');
    }
    out.push(b'>');
    for node in el.nodes() {
        match node {
            Node::Element(child) => write(child, el.ns(), out),
            Node::Text(t) => escape_text(t, out),
        }
    }
    out.extend_from_slice(b"</");
    out.extend_from_slice(el.name().as_bytes());
    out.push(b'>');
}

fn escape_text(s: &str, out: &mut Vec<u8>) {
    for b in s.bytes() {
        match b {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            b'\r' => out.extend_from_slice(b"&#xD;"),
            _ => out.push(b),
        }
    }
}

fn escape_attr(s: &str, out: &mut Vec<u8>) {
    for b in s.bytes() {
        match b {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'"' => out.extend_from_slice(b"&quot;"),
            b'\t' => out.extend_from_slice(b"&#x9;"),
            b'\n' => out.extend_from_slice(b"&#xA;"),
            b'\r' => out.extend_from_slice(b"&#xD;"),
            _ => out.push(b),
        }
    }
}
