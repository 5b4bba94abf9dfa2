//! The core container (profile §1) and the three core extensions, as typed values.
//!
//! Parsing accepts the namespaced form and pyopenspime's legacy form (`xmlsn=` typo, so
//! everything sits in the stream's default namespace); building emits the namespaced form.

use std::borrow::Cow;

use openspimed_stanza::Element;
use openspimed_stanza::element::{escape_attr, escape_text};
use rsa::{RsaPrivateKey, RsaPublicKey};

use crate::crypto::{self, EncryptedTransport};
use crate::error::OpenSpimeError;
use crate::ns;

/// Whether `el` is the OpenSpime element `name`: in its own namespace, in the core
/// namespace, or — legacy form — in the stream's default namespace (or none, once
/// decrypted standalone).
pub fn is_os(el: &Element, name: &str, own_ns: &str) -> bool {
    el.name() == name
        && (el.ns() == own_ns
            || matches!(el.ns(), ns::CORE | "jabber:client" | "jabber:server" | ""))
}

fn malformed(why: impl Into<String>) -> OpenSpimeError {
    OpenSpimeError::Malformed(why.into())
}

/// `<originator/>`: who signed, with which certification service, and a claim key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Originator {
    /// Certification service that holds the originator's key (`cert`).
    pub cert: Option<String>,
    /// The originator (`osid`); absent means the stanza's `from`.
    pub osid: Option<String>,
    /// Base64 signature over the payload.
    pub sign: Option<String>,
    /// A claim key proving the originator may act for a claimed spime.
    pub claimkey: Option<ClaimKeyRef>,
}

/// `<claimkey cert='…' claims='…'>B64</claimkey>` inside `<originator/>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimKeyRef {
    /// Certification service holding the claimed spime's key.
    pub cert: String,
    /// The claimed spime.
    pub claims: String,
    /// The claim key blob (base64).
    pub blob: String,
}

/// `<transport/>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A payload in clear, with the namespace its canonical form is taken in.
    Clear {
        /// The first element child.
        payload: Element,
        /// `<transport>`'s own namespace (the C14N context).
        context_ns: String,
    },
    /// An encrypted payload.
    Encrypted(EncryptedTransport),
}

/// The `<openspime/>` container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// Signer information, if any.
    pub originator: Option<Originator>,
    /// The payload.
    pub transport: Transport,
}

impl Container {
    /// The `<openspime/>` child of a stanza (or of a PubSub item), in either form.
    pub fn find(parent: &Element) -> Option<&Element> {
        parent.children().find(|c| is_os(c, "openspime", ns::CORE))
    }

    /// Parses a container element.
    pub fn parse(el: &Element) -> Result<Container, OpenSpimeError> {
        if !is_os(el, "openspime", ns::CORE) {
            return Err(malformed("not an <openspime/> element"));
        }
        let originator = match el.children().find(|c| is_os(c, "originator", ns::CORE)) {
            None => None,
            Some(o) => Some(Originator {
                cert: o.attr("cert").map(str::to_owned),
                osid: o.attr("osid").map(|s| s.trim().to_owned()),
                sign: o
                    .children()
                    .find(|c| is_os(c, "sign", ns::CORE))
                    .map(|s| s.text()),
                claimkey: match o.children().find(|c| is_os(c, "claimkey", ns::CORE)) {
                    None => None,
                    Some(ck) => Some(ClaimKeyRef {
                        cert: ck
                            .attr("cert")
                            .ok_or_else(|| malformed("<claimkey/> without cert"))?
                            .to_owned(),
                        claims: ck
                            .attr("claims")
                            .ok_or_else(|| malformed("<claimkey/> without claims"))?
                            .trim()
                            .to_owned(),
                        blob: ck.text(),
                    }),
                },
            }),
        };
        let t = el
            .children()
            .find(|c| is_os(c, "transport", ns::CORE))
            .ok_or_else(|| malformed("no <transport/>"))?;
        let transport = match t.attr("transport-key") {
            Some(key) => Transport::Encrypted(EncryptedTransport {
                text: t.text(),
                key: key.to_owned(),
            }),
            None => {
                if t.attr("content-type")
                    .is_some_and(|c| c == ns::CONTENT_TYPE_AES)
                {
                    return Err(malformed("encrypted <transport/> without transport-key"));
                }
                let payload = t
                    .first_child()
                    .ok_or(OpenSpimeError::MalformedTransport)?
                    .clone();
                Transport::Clear {
                    payload,
                    context_ns: t.ns().to_owned(),
                }
            }
        };
        Ok(Container {
            originator,
            transport,
        })
    }

    /// Whether the payload is encrypted.
    pub fn is_encrypted(&self) -> bool {
        matches!(self.transport, Transport::Encrypted(_))
    }

    /// The signature, if the container is signed.
    pub fn signature(&self) -> Option<&str> {
        self.originator.as_ref().and_then(|o| o.sign.as_deref())
    }

    /// The payload and its C14N context, decrypting with `key` if needed.
    pub fn open(&self, key: Option<&RsaPrivateKey>) -> Result<(Element, String), OpenSpimeError> {
        self.open_borrowed(key)
            .map(|(payload, ctx)| (payload.into_owned(), ctx.into_owned()))
    }

    /// Like [`Container::open`], borrowing a clear payload instead of copying it (a report's
    /// payload is read once: copying its tree was a measurable part of storing it).
    pub fn open_borrowed(
        &self,
        key: Option<&RsaPrivateKey>,
    ) -> Result<(Cow<'_, Element>, Cow<'_, str>), OpenSpimeError> {
        match &self.transport {
            Transport::Clear {
                payload,
                context_ns,
            } => Ok((Cow::Borrowed(payload), Cow::Borrowed(context_ns))),
            Transport::Encrypted(enc) => {
                let key = key.ok_or(OpenSpimeError::DecryptionNotEnabled)?;
                // Decrypted payloads were serialized standalone: their context is empty.
                Ok((
                    Cow::Owned(crypto::decrypt(&enc.text, &enc.key, key)?),
                    Cow::Borrowed(""),
                ))
            }
        }
    }

    /// Builds a container in the namespaced form: signs the payload (if a signer is
    /// given), then encrypts it (if a recipient key is given).
    pub fn seal(
        payload: Element,
        signer: Option<(&RsaPrivateKey, &str, Option<&str>)>,
        claimkey: Option<ClaimKeyRef>,
        recipient: Option<&RsaPublicKey>,
    ) -> Result<Container, OpenSpimeError> {
        let originator = match signer {
            Some((key, cert, osid)) => Some(Originator {
                cert: Some(cert.to_owned()),
                osid: osid.map(str::to_owned),
                sign: Some(crypto::sign(&payload, ns::CORE, key)?),
                claimkey,
            }),
            None => claimkey.map(|ck| Originator {
                claimkey: Some(ck),
                ..Originator::default()
            }),
        };
        let transport = match recipient {
            Some(pk) => {
                let mut plain = Vec::new();
                payload.write_to(&mut plain, ns::CORE);
                Transport::Encrypted(crypto::encrypt(&plain, pk)?)
            }
            None => Transport::Clear {
                payload,
                context_ns: ns::CORE.to_owned(),
            },
        };
        Ok(Container {
            originator,
            transport,
        })
    }

    /// The namespaced `<openspime/>` element.
    pub fn to_element(&self) -> Element {
        let mut root = Element::new("openspime", ns::CORE).with_attr("version", ns::VERSION);
        if let Some(o) = &self.originator {
            let mut el = Element::new("originator", ns::CORE);
            if let Some(c) = &o.cert {
                el.set_attr("cert", c.clone());
            }
            if let Some(id) = &o.osid {
                el.set_attr("osid", id.clone());
            }
            if let Some(s) = &o.sign {
                el.push_child(Element::new("sign", ns::CORE).with_text(s.clone()));
            }
            if let Some(ck) = &o.claimkey {
                el.push_child(
                    Element::new("claimkey", ns::CORE)
                        .with_attr("cert", ck.cert.clone())
                        .with_attr("claims", ck.claims.clone())
                        .with_text(ck.blob.clone()),
                );
            }
            root.push_child(el);
        }
        let t = match &self.transport {
            Transport::Clear { payload, .. } => {
                Element::new("transport", ns::CORE).with_child(payload.clone())
            }
            Transport::Encrypted(enc) => Element::new("transport", ns::CORE)
                .with_attr("content-type", ns::CONTENT_TYPE_AES)
                .with_attr("transport-key", enc.key.clone())
                .with_text(enc.text.clone()),
        };
        root.push_child(t);
        root
    }
}

/// One field of a data entry (`<ppm>176.4</ppm>`, `<ele unit='m'>120.0</ele>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// Element name.
    pub name: String,
    /// Text value, trimmed.
    pub value: String,
    /// Attributes (e.g. `unit`).
    pub attrs: Vec<(String, String)>,
}

/// One `<entry/>`: a flat list of fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// The fields in order.
    pub fields: Vec<Field>,
}

impl Entry {
    /// The value of a field.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value.as_str())
    }

    fn parse(el: &Element) -> Result<Entry, OpenSpimeError> {
        let mut fields = Vec::new();
        for f in el.children() {
            if f.children().next().is_some() {
                return Err(malformed(format!("field <{}/> is not flat", f.name())));
            }
            fields.push(Field {
                name: f.name().to_owned(),
                value: f.text().trim().to_owned(),
                attrs: f
                    .attrs()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            });
        }
        Ok(Entry { fields })
    }

    /// Writes the entry the way its `<data/>` parent would serialize it (the form a
    /// ScopeNode stores): the bytes of `to_element(ns::DATA)` written under that parent,
    /// without building the tree first.
    pub fn write_in_data(&self, out: &mut Vec<u8>) {
        if self
            .fields
            .iter()
            .any(|f| f.attrs.iter().any(|(k, _)| k.starts_with('{')))
        {
            // Namespaced attributes need the serializer's prefix declarations.
            self.to_element(ns::DATA).write_to(out, ns::DATA);
            return;
        }
        if self.fields.is_empty() {
            out.extend_from_slice(b"<entry/>");
            return;
        }
        out.extend_from_slice(b"<entry>");
        for f in &self.fields {
            out.push(b'<');
            out.extend_from_slice(f.name.as_bytes());
            for (k, v) in &f.attrs {
                out.push(b' ');
                out.extend_from_slice(k.as_bytes());
                out.extend_from_slice(b"='");
                escape_attr(out, v);
                out.push(b'\'');
            }
            if f.value.is_empty() {
                out.extend_from_slice(b"/>");
            } else {
                out.push(b'>');
                escape_text(out, &f.value);
                out.extend_from_slice(b"</");
                out.extend_from_slice(f.name.as_bytes());
                out.push(b'>');
            }
        }
        out.extend_from_slice(b"</entry>");
    }

    fn to_element(&self, ns_: &str) -> Element {
        let mut e = Element::new("entry", ns_.to_owned());
        for f in &self.fields {
            let mut fe = Element::new(f.name.clone(), ns_.to_owned()).with_text(f.value.clone());
            for (k, v) in &f.attrs {
                fe.set_attr(k, v.clone());
            }
            e.push_child(fe);
        }
        e
    }
}

fn entries(el: &Element) -> Result<Vec<Entry>, OpenSpimeError> {
    el.children()
        .filter(|c| c.name() == "entry")
        .map(Entry::parse)
        .collect()
}

/// The data reporting extension (seed §1.0).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Data {
    /// Reported entries.
    pub entries: Vec<Entry>,
}

impl Data {
    /// Parses a `<data/>` payload.
    pub fn parse(el: &Element) -> Result<Data, OpenSpimeError> {
        if !is_os(el, "data", ns::DATA) {
            return Err(malformed("not a <data/> payload"));
        }
        Ok(Data {
            entries: entries(el)?,
        })
    }

    /// The namespaced `<data/>` element.
    pub fn to_element(&self) -> Element {
        let mut d = Element::new("data", ns::DATA).with_attr("version", ns::VERSION);
        for e in &self.entries {
            d.push_child(e.to_element(ns::DATA));
        }
        d
    }
}

/// The claim extension (seed §1.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// An owner asks to claim a spime.
    Request {
        /// The spime claimed.
        claims: String,
    },
    /// The spime's answer with a claim key.
    Response {
        /// Who is authorized.
        authorizes: String,
        /// The claim key (base64).
        claimkey: String,
    },
}

impl Claim {
    /// Parses a `<claim/>` payload.
    pub fn parse(el: &Element) -> Result<Claim, OpenSpimeError> {
        if !is_os(el, "claim", ns::CLAIM) {
            return Err(malformed("not a <claim/> payload"));
        }
        if let Some(r) = el.children().find(|c| c.name() == "request") {
            let claims = r
                .attr("claims")
                .ok_or_else(|| malformed("<request/> without claims"))?;
            return Ok(Claim::Request {
                claims: claims.trim().to_owned(),
            });
        }
        if let Some(r) = el.children().find(|c| c.name() == "response") {
            let authorizes = r
                .attr("authorizes")
                .ok_or_else(|| malformed("<response/> without authorizes"))?;
            let ck = r
                .children()
                .find(|c| c.name() == "claimkey")
                .ok_or_else(|| malformed("<response/> without <claimkey/>"))?;
            return Ok(Claim::Response {
                authorizes: authorizes.trim().to_owned(),
                claimkey: ck.text().trim().to_owned(),
            });
        }
        Err(malformed("<claim/> needs <request/> or <response/>"))
    }

    /// The namespaced `<claim/>` element.
    pub fn to_element(&self) -> Element {
        let c = Element::new("claim", ns::CLAIM).with_attr("version", ns::VERSION);
        match self {
            Claim::Request { claims } => {
                c.with_child(Element::new("request", ns::CLAIM).with_attr("claims", claims.clone()))
            }
            Claim::Response {
                authorizes,
                claimkey,
            } => c.with_child(
                Element::new("response", ns::CLAIM)
                    .with_attr("authorizes", authorizes.clone())
                    .with_child(Element::new("claimkey", ns::CLAIM).with_text(claimkey.clone())),
            ),
        }
    }
}

/// A SpimeSeek request (seed §1.2, profile §9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeekRequest {
    /// Request id, with the originator the de-duplication key.
    pub id: String,
    /// The sought spime (full JID, trimmed).
    pub spimeid: String,
    /// Expiry as written.
    pub expdate: String,
    /// Whether the answer must be encrypted to the originator.
    pub encrequired: bool,
}

/// The SpimeSeek extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpimeSeek {
    /// A request.
    Request(SeekRequest),
    /// A ScopeNode's answer.
    Response {
        /// The request id answered.
        id: String,
        /// Entries found.
        entries: Vec<Entry>,
    },
}

impl SpimeSeek {
    /// Parses a `<spimeseek/>` payload.
    pub fn parse(el: &Element) -> Result<SpimeSeek, OpenSpimeError> {
        if !is_os(el, "spimeseek", ns::SPIMESEEK) {
            return Err(malformed("not a <spimeseek/> payload"));
        }
        if let Some(r) = el.children().find(|c| c.name() == "request") {
            let text = |name: &str| {
                r.children()
                    .find(|c| c.name() == name)
                    .map(|c| c.text().trim().to_owned())
                    .ok_or_else(|| malformed(format!("<request/> without <{name}/>")))
            };
            let encrequired = match text("encrequired").as_deref() {
                Ok("true") | Ok("1") => true,
                Ok("false") | Ok("0") | Err(_) => false,
                Ok(other) => return Err(malformed(format!("encrequired {other:?}"))),
            };
            return Ok(SpimeSeek::Request(SeekRequest {
                id: r
                    .attr("id")
                    .ok_or_else(|| malformed("<request/> without id"))?
                    .to_owned(),
                spimeid: text("spimeid")?,
                expdate: text("expdate")?,
                encrequired,
            }));
        }
        if let Some(r) = el.children().find(|c| c.name() == "response") {
            return Ok(SpimeSeek::Response {
                id: r
                    .attr("id")
                    .ok_or_else(|| malformed("<response/> without id"))?
                    .to_owned(),
                entries: entries(r)?,
            });
        }
        Err(malformed("<spimeseek/> needs <request/> or <response/>"))
    }

    /// The namespaced `<spimeseek/>` element.
    pub fn to_element(&self) -> Element {
        let s = Element::new("spimeseek", ns::SPIMESEEK).with_attr("version", ns::VERSION);
        let t = |name: &str, v: &str| Element::new(name, ns::SPIMESEEK).with_text(v.to_owned());
        match self {
            SpimeSeek::Request(r) => s.with_child(
                Element::new("request", ns::SPIMESEEK)
                    .with_attr("id", r.id.clone())
                    .with_child(t("spimeid", &r.spimeid))
                    .with_child(t("expdate", &r.expdate))
                    .with_child(t(
                        "encrequired",
                        if r.encrequired { "true" } else { "false" },
                    )),
            ),
            SpimeSeek::Response { id, entries } => {
                let mut resp = Element::new("response", ns::SPIMESEEK).with_attr("id", id.clone());
                for e in entries {
                    resp.push_child(e.to_element(ns::SPIMESEEK));
                }
                s.with_child(resp)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_writes_the_bytes_its_element_would() {
        let field = |name: &str, value: &str, attrs: &[(&str, &str)]| Field {
            name: name.into(),
            value: value.into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        };
        let entries = [
            Entry::default(),
            Entry {
                fields: vec![
                    field("date", "2008-04-02T17:54:22+01:00", &[]),
                    field("exposure", "", &[]),
                    field("ele", "120.0", &[("unit", "m"), ("note", "a'b\"<&>\t\n")]),
                    field("text", "1 < 2 & 3 > 2\r", &[]),
                ],
            },
            Entry {
                fields: vec![field("x", "1", &[("{urn:other}y", "2")])],
            },
        ];
        for entry in entries {
            let mut direct = Vec::new();
            entry.write_in_data(&mut direct);
            let mut via_tree = Vec::new();
            entry.to_element(ns::DATA).write_to(&mut via_tree, ns::DATA);
            assert_eq!(
                String::from_utf8(direct).unwrap(),
                String::from_utf8(via_tree).unwrap()
            );
        }
    }
}
