//! A small XMPP client connection: TCP, STARTTLS, SASL (SCRAM-SHA-256 or PLAIN), binding,
//! then element in, element out. In-band registration (XEP-0077) before authentication.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use openspimed_stanza::{Element, TreeBuilder, ns};
use rsasl::prelude::{Mechname, SASLClient, SASLConfig, State};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use rxml::error::EndOrError;
use rxml::{Parse, Parser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// What can go wrong, each in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server cannot be reached.
    #[error("cannot reach the server at {addr}: {reason}")]
    Unreachable {
        /// Where we tried.
        addr: String,
        /// Why it failed.
        reason: String,
    },
    /// TLS failed (often: the server's certificate is not trusted; see --ca).
    #[error("TLS with {0} failed: {1} (pass the server's certificate or CA with --ca)")]
    Tls(String, String),
    /// Wrong username or password.
    #[error("the server refused the login: wrong username or password")]
    NotAuthorized,
    /// The server speaks something unexpected.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server answered a request with an error.
    #[error("{0}")]
    Refused(String),
    /// An entity answered a request with an error stanza.
    #[error("{from} answered: {}", describe_conditions(.conditions, .text.as_deref()))]
    Answered {
        /// Who answered (the request's addressee).
        from: String,
        /// The error's condition elements, the defined one first (RFC 6120 §8.3.3), then
        /// any application-specific one (such as OpenSpime's `decryption-error`).
        conditions: Vec<String>,
        /// The error's human-readable text, if it had one.
        text: Option<String>,
    },
    /// Nothing came back in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A local file could not be used.
    #[error("{0}")]
    Local(String),
}

/// `cond / app-cond (text)`, for one-line messages.
pub(crate) fn describe_conditions(conditions: &[String], text: Option<&str>) -> String {
    let names = if conditions.is_empty() {
        "unknown error".to_owned()
    } else {
        conditions.join(" / ")
    };
    match text {
        Some(t) => format!("{names} ({t})"),
        None => names,
    }
}

impl ClientError {
    /// Whether an entity answered with an error carrying `condition` (defined or
    /// application-specific).
    pub fn has_condition(&self, condition: &str) -> bool {
        matches!(self, ClientError::Answered { conditions, .. } if conditions.iter().any(|c| c == condition))
    }
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// `host:port` of the server's STARTTLS listener.
    pub server: String,
    /// PEM file with the certificate(s) to trust; system roots when absent.
    pub ca: Option<std::path::PathBuf>,
    /// How long to wait for any answer.
    pub timeout: Duration,
}

fn tls_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, ClientError> {
    let path = ca.unwrap_or(Path::new("/etc/ssl/certs/ca-certificates.crt"));
    let pem = std::fs::read(path)
        .map_err(|e| ClientError::Local(format!("cannot read {}: {e}", path.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem).flatten() {
        let _ = roots.add(c);
    }
    if roots.is_empty() {
        return Err(ClientError::Local(format!(
            "{} holds no certificate",
            path.display()
        )));
    }
    let cfg =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Local(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// An XML stream over TLS.
pub struct Conn {
    /// The transport.
    io: TlsStream<TcpStream>,
    /// rxml parser for the current stream.
    parser: Parser,
    /// Builds top-level elements.
    builder: TreeBuilder,
    /// Bytes read, not parsed yet.
    pending: Vec<u8>,
    /// Whether the server's stream header was seen.
    in_stream: bool,
    /// Elements read while waiting for something else.
    pub backlog: VecDeque<Element>,
    /// The answer timeout.
    timeout: Duration,
}

/// The server's `<stream:features/>`.
pub type Features = Element;

async fn read_plain_until(
    tcp: &mut TcpStream,
    marker: &str,
    limit: Duration,
) -> Result<String, ClientError> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    tokio::time::timeout(limit, async {
        while !String::from_utf8_lossy(&got).contains(marker) {
            let n = tcp
                .read(&mut buf)
                .await
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            if n == 0 {
                return Err(ClientError::Protocol(
                    "the server closed the connection".into(),
                ));
            }
            got.extend_from_slice(&buf[..n]);
        }
        Ok(())
    })
    .await
    .map_err(|_| ClientError::Timeout(limit))??;
    Ok(String::from_utf8_lossy(&got).into_owned())
}

fn header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
    )
}

impl Conn {
    /// TCP + STARTTLS to `domain`; returns the secured stream and its features.
    pub async fn secure(
        opts: &ConnectOptions,
        domain: &str,
    ) -> Result<(Conn, Features), ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            addr: opts.server.clone(),
            reason,
        };
        let mut tcp = tokio::time::timeout(opts.timeout, TcpStream::connect(&opts.server))
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        tcp.write_all(header(domain).as_bytes())
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let features = read_plain_until(&mut tcp, "</stream:features>", opts.timeout).await?;
        if !features.contains("urn:ietf:params:xml:ns:xmpp-tls") {
            return Err(ClientError::Protocol(
                "the server does not offer STARTTLS".into(),
            ));
        }
        tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        read_plain_until(&mut tcp, "proceed", opts.timeout).await?;
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| ClientError::Local(format!("{domain}: {e}")))?;
        let io = TlsConnector::from(tls_config(opts.ca.as_deref())?)
            .connect(name, tcp)
            .await
            .map_err(|e| ClientError::Tls(domain.to_owned(), e.to_string()))?;
        let mut conn = Conn {
            io,
            parser: Parser::new(),
            builder: TreeBuilder::default(),
            pending: Vec::new(),
            in_stream: false,
            backlog: VecDeque::new(),
            timeout: opts.timeout,
        };
        let features = conn.open(domain).await?;
        Ok((conn, features))
    }

    async fn open(&mut self, domain: &str) -> Result<Features, ClientError> {
        self.parser = Parser::new();
        self.builder = TreeBuilder::default();
        self.in_stream = false;
        self.pending.clear();
        self.send_raw(&header(domain)).await?;
        let f = self.read_element().await?;
        if !f.is("features", ns::STREAM) {
            return Err(ClientError::Protocol(format!(
                "expected stream features, got {}",
                f.name()
            )));
        }
        Ok(f)
    }

    /// Sends raw XML.
    pub async fn send_raw(&mut self, text: &str) -> Result<(), ClientError> {
        self.io
            .write_all(text.as_bytes())
            .await
            .map_err(|e| ClientError::Protocol(format!("write: {e}")))?;
        self.io
            .flush()
            .await
            .map_err(|e| ClientError::Protocol(format!("write: {e}")))
    }

    /// Sends an element.
    pub async fn send(&mut self, el: &Element) -> Result<(), ClientError> {
        let mut out = Vec::new();
        el.write_to(&mut out, ns::CLIENT);
        self.send_raw(&String::from_utf8_lossy(&out)).await
    }

    /// The next top-level element from the server.
    pub async fn read_element(&mut self) -> Result<Element, ClientError> {
        let limit = self.timeout;
        tokio::time::timeout(limit, self.read_inner())
            .await
            .map_err(|_| ClientError::Timeout(limit))?
    }

    async fn read_inner(&mut self) -> Result<Element, ClientError> {
        loop {
            let mut buf = &self.pending[..];
            let mut done = None;
            loop {
                match self.parser.parse(&mut buf, false) {
                    Ok(Some(ev)) => {
                        if !self.in_stream {
                            if matches!(ev, rxml::Event::StartElement(..)) {
                                self.in_stream = true;
                            }
                            continue;
                        }
                        if self.builder.depth() == 0 {
                            match &ev {
                                rxml::Event::Text(..) => continue,
                                rxml::Event::EndElement(_) => {
                                    return Err(ClientError::Protocol(
                                        "the server closed the stream".into(),
                                    ));
                                }
                                _ => {}
                            }
                        }
                        match self.builder.push(ev) {
                            Ok(Some(el)) => {
                                done = Some(el);
                                break;
                            }
                            Ok(None) => {}
                            Err(e) => return Err(ClientError::Protocol(e.to_string())),
                        }
                    }
                    Ok(None) => return Err(ClientError::Protocol("the stream ended".into())),
                    Err(EndOrError::NeedMoreData) => break,
                    Err(EndOrError::Error(e)) => return Err(ClientError::Protocol(e.to_string())),
                }
            }
            let used = self.pending.len() - buf.len();
            self.pending.drain(..used);
            if let Some(el) = done {
                if el.is("error", ns::STREAM) {
                    let cond = el
                        .first_child()
                        .map(|c| c.name().to_owned())
                        .unwrap_or_default();
                    return Err(ClientError::Protocol(format!(
                        "stream error from the server: {cond}"
                    )));
                }
                return Ok(el);
            }
            let mut chunk = [0u8; 8192];
            let n = self
                .io
                .read(&mut chunk)
                .await
                .map_err(|e| ClientError::Protocol(format!("read: {e}")))?;
            if n == 0 {
                return Err(ClientError::Protocol(
                    "the server closed the connection".into(),
                ));
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next element, from the backlog first.
    pub async fn next(&mut self) -> Result<Element, ClientError> {
        if let Some(e) = self.backlog.pop_front() {
            return Ok(e);
        }
        self.read_element().await
    }

    /// Sends an iq and returns its answer; other stanzas meanwhile go to the backlog.
    pub async fn iq(&mut self, iq: Element) -> Result<Element, ClientError> {
        let id = iq.attr("id").unwrap_or("").to_owned();
        self.send(&iq).await?;
        loop {
            let el = self.read_element().await?;
            if el.name() == "iq" && el.attr("id") == Some(id.as_str()) {
                return Ok(el);
            }
            self.backlog.push_back(el);
        }
    }

    /// SASL with SCRAM-SHA-256 when offered, else PLAIN (over TLS); then binds `resource`.
    pub async fn login(
        mut self,
        features: &Features,
        domain: &str,
        user: &str,
        password: &str,
        resource: &str,
    ) -> Result<(Conn, String), ClientError> {
        let offered: Vec<String> = features
            .get_child("mechanisms", ns::SASL)
            .map(|m| m.children().map(|c| c.text()).collect())
            .unwrap_or_default();
        let mech = if offered.iter().any(|m| m == "SCRAM-SHA-256") {
            "SCRAM-SHA-256"
        } else if offered.iter().any(|m| m == "PLAIN") {
            "PLAIN"
        } else {
            return Err(ClientError::Protocol(format!(
                "no usable SASL mechanism in {offered:?}"
            )));
        };
        let config = SASLConfig::with_credentials(None, user.to_owned(), password.to_owned())
            .map_err(|e| ClientError::Local(e.to_string()))?;
        let name =
            Mechname::parse(mech.as_bytes()).map_err(|e| ClientError::Local(e.to_string()))?;
        let mut session = SASLClient::new(config)
            .start_suggested(&[name])
            .map_err(|e| ClientError::Local(e.to_string()))?;
        let mut out = Vec::new();
        session
            .step(None, &mut out)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.send_raw(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mech}'>{}</auth>",
            B64.encode(&out)
        ))
        .await?;
        loop {
            let el = self.read_element().await?;
            match el.name() {
                "challenge" => {
                    let data = B64
                        .decode(el.text().trim())
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    let mut out = Vec::new();
                    let state = session
                        .step(Some(&data), &mut out)
                        .map_err(|_| ClientError::NotAuthorized)?;
                    let _ = matches!(state, State::Running);
                    self.send_raw(&format!(
                        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
                        B64.encode(&out)
                    ))
                    .await?;
                }
                "success" => break,
                "failure" => return Err(ClientError::NotAuthorized),
                other => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected <{other}/> during SASL"
                    )));
                }
            }
        }
        self.open(domain).await?;
        let bind = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", "bind")
            .with_child(
                Element::new("bind", ns::BIND)
                    .with_child(Element::new("resource", ns::BIND).with_text(resource)),
            );
        let answer = self.iq(bind).await?;
        let jid = answer
            .get_child("bind", ns::BIND)
            .and_then(|b| b.get_child("jid", ns::BIND))
            .map(|j| j.text())
            .ok_or_else(|| ClientError::Protocol("binding failed".into()))?;
        Ok((self, jid))
    }
}
