//! The one XML element tree every part of openspimed uses for stanzas and payloads.
//!
//! It is deliberately small: a name, a namespace, plain attributes and child nodes. The
//! stream parser builds it from rxml events ([`TreeBuilder`]), the session writer
//! serializes it ([`Element::write_to`]), and typed payload structs convert from and to it.

use std::fmt;
use std::sync::Arc;

use rxml::{Event, Parse, Parser};

/// A namespace name shared between the elements of a tree (cloning is a reference count).
pub type Ns = Arc<str>;

/// One child of an element: another element or character data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data, already unescaped.
    Text(String),
}

/// An XML element with its namespace, attributes and children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    /// Local name, without prefix: prefixes are a serialization detail.
    name: String,
    /// Namespace URI ("" for none); decides equality and routing, not the prefix.
    ns: Ns,
    /// Attributes in document order. Unnamespaced ones by local name; `xml:lang` as written;
    /// any other namespaced attribute as `{namespace}local`, so it survives a round trip.
    attrs: Vec<(String, String)>,
    /// Children in document order, so mixed content and signatures over it stay intact.
    children: Vec<Node>,
}

impl Element {
    /// A new element without attributes or children.
    pub fn new(name: impl Into<String>, ns: impl Into<Ns>) -> Self {
        Element {
            name: name.into(),
            ns: ns.into(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Builder form of [`Element::set_attr`].
    #[must_use]
    pub fn with_attr(mut self, name: &str, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Builder form of [`Element::push_child`].
    #[must_use]
    pub fn with_child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Builder form of [`Element::push_text`].
    #[must_use]
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.push_text(text);
        self
    }

    /// The local name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace URI ("" when unnamespaced).
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The shared namespace handle, to build children in the same namespace cheaply.
    pub fn ns_handle(&self) -> &Ns {
        &self.ns
    }

    /// Whether this element has the given local name and namespace.
    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && &*self.ns == ns
    }

    /// The value of an attribute.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// All attributes, in document order.
    pub fn attrs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attrs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of attributes.
    pub fn attr_count(&self) -> usize {
        self.attrs.len()
    }

    /// Sets (or replaces) an attribute.
    pub fn set_attr(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.attrs.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name.to_owned(), value)),
        }
    }

    /// Removes an attribute, returning its value.
    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let pos = self.attrs.iter().position(|(n, _)| n == name)?;
        Some(self.attrs.remove(pos).1)
    }

    /// Appends a child element.
    pub fn push_child(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    /// Appends character data.
    pub fn push_text(&mut self, text: impl Into<String>) {
        let text = text.into();
        if text.is_empty() {
            return;
        }
        if let Some(Node::Text(last)) = self.children.last_mut() {
            last.push_str(&text);
        } else {
            self.children.push(Node::Text(text));
        }
    }

    /// All child nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.children
    }

    /// Removes and returns all child nodes.
    pub fn take_nodes(&mut self) -> Vec<Node> {
        std::mem::take(&mut self.children)
    }

    /// Keeps the child elements `keep` says yes to (and all text): what removing a
    /// payload from a stanza takes (a forged stanza id, a client's hint).
    pub fn retain_children(&mut self, mut keep: impl FnMut(&Element) -> bool) {
        self.children.retain(|n| match n {
            Node::Element(e) => keep(e),
            Node::Text(_) => true,
        });
    }

    /// Child elements, skipping text.
    pub fn children(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// Mutable child elements, skipping text.
    pub fn children_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The first child element with this name and namespace.
    pub fn get_child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children().find(|c| c.is(name, ns))
    }

    /// The first child element, whatever it is (an iq's payload).
    pub fn first_child(&self) -> Option<&Element> {
        self.children().next()
    }

    /// Concatenated direct character data.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }

    /// Removes every child node.
    pub fn clear_children(&mut self) {
        self.children.clear();
    }

    /// Serializes into `out`. `parent_ns` is the namespace in scope as default (the stream's
    /// `jabber:client` for a stanza): `xmlns` is written only where the namespace changes.
    pub fn write_to(&self, out: &mut Vec<u8>, parent_ns: &str) {
        self.write_impl(out, parent_ns, None);
    }

    /// Serializes a stanza for a stream whose content namespace is `stream_ns`
    /// (`jabber:client` or `jabber:server`): stanzas are held in `jabber:client` inside the
    /// server whichever stream they came from, and take the namespace of the stream they
    /// leave on (RFC 6120 §4.8.3).
    pub fn write_stanza_to(&self, out: &mut Vec<u8>, stream_ns: &str) {
        self.write_impl(out, stream_ns, Some(stream_ns));
    }

    /// Renames the stanza namespace of an element and its descendants (`jabber:server` →
    /// `jabber:client` for a stanza that arrived over server-to-server).
    pub fn rename_ns(&mut self, from: &str, to: &Ns) {
        if &*self.ns == from {
            self.ns = to.clone();
        }
        for c in &mut self.children {
            if let Node::Element(e) = c {
                e.rename_ns(from, to);
            }
        }
    }

    fn write_impl(&self, out: &mut Vec<u8>, parent_ns: &str, stanza_ns: Option<&str>) {
        let ns: &str = match stanza_ns {
            Some(s) if &*self.ns == crate::ns::CLIENT || &*self.ns == crate::ns::SERVER => s,
            _ => &self.ns,
        };
        out.push(b'<');
        out.extend_from_slice(self.name.as_bytes());
        if ns != parent_ns {
            out.extend_from_slice(b" xmlns='");
            escape_attr(out, ns);
            out.push(b'\'');
        }
        let mut prefix_no = 0usize;
        for (name, value) in &self.attrs {
            out.push(b' ');
            if let Some(rest) = name.strip_prefix('{') {
                // A namespaced attribute other than xml:*: declare a private prefix for it.
                if let Some((ans, local)) = rest.split_once('}') {
                    let prefix = format!("a{prefix_no}");
                    prefix_no += 1;
                    out.extend_from_slice(b"xmlns:");
                    out.extend_from_slice(prefix.as_bytes());
                    out.extend_from_slice(b"='");
                    escape_attr(out, ans);
                    out.extend_from_slice(b"' ");
                    out.extend_from_slice(prefix.as_bytes());
                    out.push(b':');
                    out.extend_from_slice(local.as_bytes());
                } else {
                    out.extend_from_slice(name.as_bytes());
                }
            } else {
                out.extend_from_slice(name.as_bytes());
            }
            out.extend_from_slice(b"='");
            escape_attr(out, value);
            out.push(b'\'');
        }
        if self.children.is_empty() {
            out.extend_from_slice(b"/>");
            return;
        }
        out.push(b'>');
        for child in &self.children {
            match child {
                Node::Element(e) => e.write_impl(out, ns, stanza_ns),
                Node::Text(t) => escape_text(out, t),
            }
        }
        out.extend_from_slice(b"</");
        out.extend_from_slice(self.name.as_bytes());
        out.push(b'>');
    }

    /// Serializes standalone (with its own `xmlns`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.write_to(&mut out, "");
        out
    }

    /// Parses one complete element from text (tests, fixtures, configuration).
    pub fn parse(xml: &str) -> Result<Element, ParseError> {
        let mut parser = Parser::new();
        let mut builder = TreeBuilder::default();
        let mut buf = xml.as_bytes();
        loop {
            match parser.parse(&mut buf, true) {
                Ok(Some(ev)) => {
                    if let Some(done) = builder.push(ev)? {
                        return Ok(done);
                    }
                }
                Ok(None) => return Err(ParseError::Incomplete),
                Err(rxml::error::EndOrError::NeedMoreData) => return Err(ParseError::Incomplete),
                Err(rxml::error::EndOrError::Error(e)) => return Err(ParseError::Xml(e)),
            }
        }
    }
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

/// Why [`Element::parse`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The XML is not well-formed or uses what restricted XML forbids.
    #[error("not well-formed XML: {0}")]
    Xml(#[from] rxml::Error),
    /// The input ended before the element was closed.
    #[error("the XML ended before the element was closed")]
    Incomplete,
}

/// Appends `s` escaped for a single-quoted attribute value.
pub fn escape_attr(out: &mut Vec<u8>, s: &str) {
    escape(out, s, true);
}

/// Appends `s` escaped for character data.
pub fn escape_text(out: &mut Vec<u8>, s: &str) {
    escape(out, s, false);
}

/// XML escaping; attribute values (always single-quoted here) also escape quotes and the
/// whitespace that attribute-value normalization would otherwise fold.
fn escape(out: &mut Vec<u8>, s: &str, attr: bool) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        let rep: &[u8] = match (b, attr) {
            (b'&', _) => b"&amp;",
            (b'<', _) => b"&lt;",
            (b'>', _) => b"&gt;",
            (b'\r', _) => b"&#xD;",
            (b'\'', true) => b"&apos;",
            (b'"', true) => b"&quot;",
            (b'\t', true) => b"&#x9;",
            (b'\n', true) => b"&#xA;",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(rep);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Sans-IO construction of [`Element`] trees from rxml events.
///
/// Feed it the events of one element (start, its content, end); it returns the finished
/// element on the matching end event. Namespace names are interned per builder so that a
/// stanza's elements share one allocation per namespace.
#[derive(Default, Debug)]
pub struct TreeBuilder {
    /// Open elements, innermost last.
    stack: Vec<Element>,
    /// Recently seen namespace names, reused instead of allocating one per element.
    interned: Vec<Ns>,
}

impl TreeBuilder {
    /// Current nesting depth (0 when no element is open).
    pub fn depth(&self) -> usize {
        self.stack.len()
    }

    fn intern(&mut self, ns: &str) -> Ns {
        if let Some(found) = self.interned.iter().find(|n| &***n == ns) {
            return found.clone();
        }
        let n: Ns = Arc::from(ns);
        if self.interned.len() >= 16 {
            self.interned.remove(0);
        }
        self.interned.push(n.clone());
        n
    }

    /// Processes one event; returns the root element when it closes.
    pub fn push(&mut self, ev: Event) -> Result<Option<Element>, ParseError> {
        match ev {
            Event::XmlDeclaration(..) => Ok(None),
            Event::StartElement(_, (ns, name), attrs) => {
                let ns = self.intern(&ns);
                let mut el = Element::new(String::from(name), ns);
                el.attrs.reserve_exact(attrs.len());
                for ((ans, aname), value) in attrs.into_iter() {
                    let key = if ans.is_none() {
                        String::from(aname)
                    } else if &*ans == crate::ns::XML {
                        format!("xml:{}", aname.as_str())
                    } else {
                        format!("{{{}}}{}", &*ans, aname.as_str())
                    };
                    el.attrs.push((key, value));
                }
                self.stack.push(el);
                Ok(None)
            }
            Event::Text(_, text) => {
                if let Some(top) = self.stack.last_mut() {
                    top.push_text(text);
                }
                Ok(None)
            }
            Event::EndElement(_) => {
                let Some(done) = self.stack.pop() else {
                    return Ok(None);
                };
                match self.stack.last_mut() {
                    Some(parent) => {
                        parent.children.push(Node::Element(done));
                        Ok(None)
                    }
                    None => Ok(Some(done)),
                }
            }
        }
    }

    /// Drops any partly built element (after an error or a stream restart).
    pub fn reset(&mut self) {
        self.stack.clear();
    }

    /// Gives back memory kept between elements (the namespace cache and the stack's
    /// capacity); for a connection that has gone quiet. Only between elements.
    pub fn release(&mut self) {
        if self.stack.is_empty() {
            self.stack = Vec::new();
            self.interned = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_namespaces_attributes_and_text() {
        let xml = "<iq xmlns='jabber:client' type='get' id='a&amp;b' xml:lang='en'>\
                   <ping xmlns='urn:xmpp:ping'/><x>1 &lt; 2</x></iq>";
        let el = Element::parse(xml).unwrap();
        assert_eq!(el.name(), "iq");
        assert_eq!(el.ns(), "jabber:client");
        assert_eq!(el.attr("id"), Some("a&b"));
        assert_eq!(el.attr("xml:lang"), Some("en"));
        assert!(el.get_child("ping", "urn:xmpp:ping").is_some());
        assert_eq!(el.get_child("x", "jabber:client").unwrap().text(), "1 < 2");
        let again = Element::parse(&el.to_string()).unwrap();
        assert_eq!(el, again);
    }

    #[test]
    fn prefixed_input_serializes_with_default_namespaces() {
        let xml = "<a:root xmlns:a='urn:a' xmlns:b='urn:b' b:attr='v'><a:child/></a:root>";
        let el = Element::parse(xml).unwrap();
        assert_eq!(el.attr("{urn:b}attr"), Some("v"));
        let out = el.to_string();
        assert!(out.starts_with("<root xmlns='urn:a'"), "{out}");
        assert!(out.contains("<child/>"), "{out}");
        assert_eq!(Element::parse(&out).unwrap(), el);
    }

    #[test]
    fn escaping_covers_quotes_and_markup() {
        let el = Element::new("m", "urn:x")
            .with_attr("v", "it's \"<&>\"")
            .with_text("<&>");
        let s = el.to_string();
        assert_eq!(
            s,
            "<m xmlns='urn:x' v='it&apos;s &quot;&lt;&amp;&gt;&quot;'>&lt;&amp;&gt;</m>"
        );
    }

    #[test]
    fn stanzas_take_the_namespace_of_the_stream_they_leave_on() {
        let xml = "<message xmlns='jabber:client' to='a@b'><body>hi</body>\
                   <x xmlns='urn:x'><y/></x></message>";
        let mut el = Element::parse(xml).unwrap();
        let mut out = Vec::new();
        el.write_stanza_to(&mut out, crate::ns::SERVER);
        let s2s = String::from_utf8(out).unwrap();
        assert_eq!(
            s2s,
            "<message to='a@b'><body>hi</body><x xmlns='urn:x'><y/></x></message>"
        );
        let server =
            Element::parse(&s2s.replace("<message", "<message xmlns='jabber:server'")).unwrap();
        assert_eq!(server.ns(), crate::ns::SERVER);
        let mut back = server;
        back.rename_ns(crate::ns::SERVER, &Ns::from(crate::ns::CLIENT));
        el.rename_ns("unused", &Ns::from("x"));
        assert_eq!(back, el);
    }

    #[test]
    fn restricted_xml_is_refused() {
        assert!(Element::parse("<!DOCTYPE a><a/>").is_err());
        assert!(Element::parse("<a><!-- c --></a>").is_err());
        assert!(Element::parse("<a><?pi x?></a>").is_err());
        assert!(Element::parse("<a>&custom;</a>").is_err());
    }
}
