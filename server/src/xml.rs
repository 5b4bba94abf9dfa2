//! Sans-IO XML stream parsing: bytes in, stream events out.
//!
//! [`StreamParser`] turns the bytes of one XML stream (RFC 6120 §4) into a [`StreamEvent`]
//! per stream header, top-level element and stream close. It enforces restricted XML
//! (RFC 6120 §11: no DTD, comments, processing instructions or entity declarations — rxml
//! refuses them) and the configured limits, and never touches a socket: the session loop
//! feeds it whatever the socket produced.

use openspimed_module_api::{Element, TreeBuilder, ns};
use rxml::error::EndOrError;
use rxml::{Event, Options, Parse, Parser, WithOptions};

use crate::error::StreamErrorCondition;

/// Limits that keep one peer from exhausting the server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes of XML one top-level element may occupy.
    pub stanza_bytes: usize,
    /// Nesting depth inside one top-level element.
    pub max_depth: usize,
    /// Attributes per element.
    pub max_attributes: usize,
    /// Bytes in an element or attribute name.
    pub max_name_length: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            stanza_bytes: 256 * 1024,
            max_depth: 32,
            max_attributes: 64,
            max_name_length: 256,
        }
    }
}

/// The attributes of an opening `<stream:stream>` tag that negotiation needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamHeader {
    /// The domain the peer wants to talk to.
    pub to: Option<String>,
    /// Who the peer says it is (informational on c2s).
    pub from: Option<String>,
    /// `version`; absent means a pre-1.0 peer.
    pub version: Option<String>,
    /// Default language of the stream.
    pub lang: Option<String>,
    /// The stream id the responding side chose (server dialback keys are bound to it).
    pub id: Option<String>,
}

/// One unit of an XML stream.
#[derive(Debug, PartialEq)]
pub enum StreamEvent {
    /// The opening stream tag.
    Header(StreamHeader),
    /// A complete top-level element (stanza or negotiation element).
    Element(Element),
    /// The closing `</stream:stream>`.
    Close,
}

/// A violation that ends the stream, with the stream error condition to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{condition:?}: {text}")]
pub struct XmlError {
    /// Which RFC 6120 §4.9.3 condition to report.
    pub condition: StreamErrorCondition,
    /// A short explanation for the peer (no internals).
    pub text: String,
}

impl XmlError {
    fn new(condition: StreamErrorCondition, text: impl Into<String>) -> Self {
        XmlError {
            condition,
            text: text.into(),
        }
    }
}

/// Incremental parser for one stream (a new one after each stream restart).
pub struct StreamParser {
    /// rxml's push parser: restricted XML and namespace well-formedness.
    parser: Parser,
    /// Builds the current top-level element.
    builder: TreeBuilder,
    /// The limits in force.
    limits: Limits,
    /// Bytes consumed by the current top-level element so far.
    stanza_bytes: usize,
    /// Whether the stream header has been seen (depth 1 is then the stream's content).
    in_stream: bool,
}

impl StreamParser {
    /// A parser for a fresh stream.
    pub fn new(limits: Limits) -> Self {
        let options = Options {
            // A single token (name, attribute value, text chunk) can never exceed a stanza;
            // text longer than this is split into several events by rxml.
            max_token_length: limits.stanza_bytes.clamp(1024, 64 * 1024),
            ..Options::default()
        };
        StreamParser {
            parser: Parser::with_options(options),
            builder: TreeBuilder::default(),
            limits,
            stanza_bytes: 0,
            in_stream: false,
        }
    }

    /// Frees parser scratch memory; called when a connection goes idle.
    pub fn release_temporaries(&mut self) {
        self.parser.release_temporaries();
        self.builder.release();
    }

    /// Consumes bytes from `buf` until one event is complete (returned) or `buf` is used up
    /// (`Ok(None)`: feed more). Call again with the rest of `buf` after an event.
    pub fn next(&mut self, buf: &mut &[u8]) -> Result<Option<StreamEvent>, XmlError> {
        loop {
            let ev = match self.parser.parse(buf, false) {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ok(Some(StreamEvent::Close)),
                Err(EndOrError::NeedMoreData) => {
                    if self.builder.depth() > 0 {
                        // Bytes held inside rxml's lexer count too: cap what a peer can
                        // make us buffer without finishing an event.
                        self.check_size(0)?;
                    }
                    return Ok(None);
                }
                Err(EndOrError::Error(e)) => return Err(map_rxml_error(&e)),
            };
            if let Some(done) = self.on_event(ev)? {
                return Ok(Some(done));
            }
        }
    }

    fn check_size(&self, add: usize) -> Result<(), XmlError> {
        if self.stanza_bytes + add > self.limits.stanza_bytes {
            return Err(XmlError::new(
                StreamErrorCondition::PolicyViolation,
                format!("stanza exceeds {} bytes", self.limits.stanza_bytes),
            ));
        }
        Ok(())
    }

    fn on_event(&mut self, ev: Event) -> Result<Option<StreamEvent>, XmlError> {
        let len = ev.metrics().len();
        if !self.in_stream {
            return match ev {
                Event::XmlDeclaration(..) => Ok(None),
                Event::StartElement(_, (ens, name), attrs) => {
                    if name.as_str() != "stream" {
                        return Err(XmlError::new(
                            StreamErrorCondition::NotWellFormed,
                            "expected <stream:stream>",
                        ));
                    }
                    if &*ens != ns::STREAM {
                        return Err(XmlError::new(
                            StreamErrorCondition::InvalidNamespace,
                            "the stream element must be in http://etherx.jabber.org/streams",
                        ));
                    }
                    let mut header = StreamHeader::default();
                    for ((ans, aname), value) in attrs.into_iter() {
                        match (ans.is_none(), aname.as_str()) {
                            (true, "to") => header.to = Some(value),
                            (true, "from") => header.from = Some(value),
                            (true, "version") => header.version = Some(value),
                            (true, "id") => header.id = Some(value),
                            (false, "lang") if &*ans == ns::XML => header.lang = Some(value),
                            _ => {}
                        }
                    }
                    self.in_stream = true;
                    Ok(Some(StreamEvent::Header(header)))
                }
                _ => Err(XmlError::new(
                    StreamErrorCondition::NotWellFormed,
                    "expected <stream:stream>",
                )),
            };
        }
        let depth = self.builder.depth();
        match &ev {
            Event::EndElement(_) if depth == 0 => return Ok(Some(StreamEvent::Close)),
            Event::Text(_, text) if depth == 0 => {
                // Whitespace between stanzas is a keepalive (RFC 6120 §4.6.1); anything
                // else is not allowed at stream level.
                if text.bytes().all(|b| b.is_ascii_whitespace()) {
                    return Ok(None);
                }
                return Err(XmlError::new(
                    StreamErrorCondition::BadFormat,
                    "text is not allowed between stanzas",
                ));
            }
            Event::StartElement(_, (_, name), attrs) => {
                if depth == 0 {
                    self.stanza_bytes = 0;
                }
                if depth >= self.limits.max_depth {
                    return Err(XmlError::new(
                        StreamErrorCondition::PolicyViolation,
                        format!("elements nested deeper than {}", self.limits.max_depth),
                    ));
                }
                if attrs.len() > self.limits.max_attributes {
                    return Err(XmlError::new(
                        StreamErrorCondition::PolicyViolation,
                        format!("more than {} attributes", self.limits.max_attributes),
                    ));
                }
                let too_long = name.len() > self.limits.max_name_length
                    || attrs
                        .iter()
                        .any(|((_, an), _)| an.len() > self.limits.max_name_length);
                if too_long {
                    return Err(XmlError::new(
                        StreamErrorCondition::PolicyViolation,
                        format!("name longer than {} bytes", self.limits.max_name_length),
                    ));
                }
            }
            _ => {}
        }
        self.check_size(len)?;
        self.stanza_bytes += len;
        match self.builder.push(ev) {
            Ok(Some(el)) => {
                self.stanza_bytes = 0;
                Ok(Some(StreamEvent::Element(el)))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(XmlError::new(
                StreamErrorCondition::NotWellFormed,
                e.to_string(),
            )),
        }
    }
}

fn map_rxml_error(e: &rxml::Error) -> XmlError {
    match e {
        rxml::Error::RestrictedXml(what) => XmlError::new(
            StreamErrorCondition::RestrictedXml,
            format!("restricted XML (RFC 6120 §11.1) forbids {what}"),
        ),
        other => XmlError::new(StreamErrorCondition::NotWellFormed, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

    fn events(input: &[u8], limits: Limits) -> Result<Vec<StreamEvent>, XmlError> {
        let mut p = StreamParser::new(limits);
        let mut out = Vec::new();
        // Feed one byte at a time: the worst case for an incremental parser.
        for chunk in input.chunks(1) {
            let mut buf = chunk;
            while let Some(ev) = p.next(&mut buf)? {
                out.push(ev);
            }
            assert!(buf.is_empty());
        }
        Ok(out)
    }

    #[test]
    fn header_stanzas_and_close_byte_by_byte() {
        let input = format!(
            "{HEADER} <message to='a@b' id='1'><body>h\u{e9}llo &amp; &#x263A;</body></message>\n\
             <iq type='get' id='2'><ping xmlns='urn:xmpp:ping'/></iq></stream:stream>"
        );
        let evs = events(input.as_bytes(), Limits::default()).unwrap();
        assert_eq!(evs.len(), 4, "{evs:?}");
        let StreamEvent::Header(h) = &evs[0] else {
            panic!("{evs:?}")
        };
        assert_eq!(h.to.as_deref(), Some("localhost"));
        assert_eq!(h.version.as_deref(), Some("1.0"));
        let StreamEvent::Element(m) = &evs[1] else {
            panic!()
        };
        assert!(m.is("message", "jabber:client"));
        assert_eq!(
            m.get_child("body", "jabber:client").unwrap().text(),
            "h\u{e9}llo & \u{263a}"
        );
        let StreamEvent::Element(iq) = &evs[2] else {
            panic!()
        };
        assert!(iq.get_child("ping", "urn:xmpp:ping").is_some());
        assert_eq!(evs[3], StreamEvent::Close);
    }

    fn condition_of(input: &str, limits: Limits) -> StreamErrorCondition {
        events(input.as_bytes(), limits).unwrap_err().condition
    }

    #[test]
    fn restricted_xml_and_malformed_input_are_stream_errors() {
        let l = Limits::default();
        let bomb = "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>]><stream:stream>";
        let c = condition_of(bomb, l);
        assert!(
            matches!(
                c,
                StreamErrorCondition::RestrictedXml | StreamErrorCondition::NotWellFormed
            ),
            "{c:?}"
        );
        assert_eq!(
            condition_of(&format!("{HEADER}<!-- hi --><message/>"), l),
            StreamErrorCondition::RestrictedXml
        );
        assert_eq!(
            condition_of(&format!("{HEADER}<?evil pi?>"), l),
            StreamErrorCondition::RestrictedXml
        );
        assert_eq!(
            condition_of(&format!("{HEADER}<message><body>&lol;</body></message>"), l),
            StreamErrorCondition::NotWellFormed
        );
        assert_eq!(
            condition_of(&format!("{HEADER}<message></iq>"), l),
            StreamErrorCondition::NotWellFormed
        );
        assert_eq!(
            condition_of("<stream xmlns='urn:wrong'>", l),
            StreamErrorCondition::InvalidNamespace
        );
    }

    #[test]
    fn limits_are_policy_violations() {
        let small = Limits {
            stanza_bytes: 2048,
            ..Limits::default()
        };
        let big = format!(
            "{HEADER}<message><body>{}</body></message>",
            "x".repeat(4096)
        );
        assert_eq!(
            condition_of(&big, small),
            StreamErrorCondition::PolicyViolation
        );
        // A huge attribute value is held in rxml's lexer before any event: still refused.
        let big_attr = format!("{HEADER}<message id='{}'/>", "x".repeat(70_000));
        let c = condition_of(&big_attr, Limits::default());
        assert!(
            matches!(
                c,
                StreamErrorCondition::PolicyViolation | StreamErrorCondition::RestrictedXml
            ),
            "{c:?}"
        );
        let deep = format!("{HEADER}{}", "<a>".repeat(40));
        assert_eq!(
            condition_of(&deep, Limits::default()),
            StreamErrorCondition::PolicyViolation
        );
        let attrs: String = (0..70).map(|i| format!(" a{i}='v'")).collect();
        assert_eq!(
            condition_of(&format!("{HEADER}<message{attrs}/>"), Limits::default()),
            StreamErrorCondition::PolicyViolation
        );
        // Many small stanzas in a row are fine: the limit is per stanza.
        let many: String = (0..200)
            .map(|_| "<message><body>hi</body></message>")
            .collect();
        let evs = events(format!("{HEADER}{many}").as_bytes(), small).unwrap();
        assert_eq!(evs.len(), 201);
    }
}
