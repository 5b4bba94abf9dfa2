//! Incoming server-to-server connections (RFC 6120 §5–6 for servers, XEP-0178, XEP-0220).
//!
//! A remote server must secure the stream first (STARTTLS, or direct TLS on the XEP-0368
//! port). It then authenticates a (its domain, our domain) pair with SASL EXTERNAL, which we
//! offer only when its certificate is valid for the domain its header claims, or with
//! dialback (`<db:result/>`), which we verify with its authoritative server unless its
//! certificate already vouches for the domain; several pairs may be authenticated on one
//! stream that way. We also answer `<db:verify/>` as the authoritative server for our own
//! domains. Stanzas must come from an authenticated domain (else `invalid-from`) and go to
//! a domain authenticated for it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use openspimed_module_api::jid::Jid;
use openspimed_module_api::{Element, Ns, ns};
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::{S2s, dialback, outgoing};
use crate::core::shared::Shared;
use crate::error::StreamErrorCondition as C;
use crate::stream::{Conn, Fail, stream_err};
use crate::telemetry;
use crate::xml::{StreamEvent, StreamHeader};

/// Serves one connection accepted on an s2s listener until it ends.
pub async fn serve(
    shared: Arc<Shared>,
    s2s: Arc<S2s>,
    tcp: TcpStream,
    peer: SocketAddr,
    direct_tls: bool,
) {
    let handshake = Duration::from_secs(shared.limits().handshake_timeout_secs);
    let deadline = tokio::time::Instant::now() + handshake;
    let limits = s2s.limits(shared.parser_limits());
    let tls = if direct_tls {
        let acceptor = TlsAcceptor::from(shared.tls.s2s_direct.clone());
        tokio::time::timeout(handshake, acceptor.accept(tcp))
            .await
            .ok()
            .and_then(Result::ok)
    } else {
        let mut conn = Conn::new(tcp, limits, shared.router.default_host(), ns::SERVER);
        match starttls(&shared, &mut conn, handshake).await {
            Ok(()) => {
                let acceptor = TlsAcceptor::from(shared.tls.s2s_starttls.clone());
                tokio::time::timeout(handshake, acceptor.accept(conn.io))
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            Err(f) => return conn.close(f).await,
        }
    };
    let outcome = if tls.is_some() { "ok" } else { "failed" };
    metrics::counter!(telemetry::TLS_HANDSHAKES, "result" => outcome).increment(1);
    let Some(tls) = tls else {
        tracing::debug!(%peer, "s2s TLS handshake failed");
        return;
    };
    let certs: Vec<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let conn = Conn::new(tls, limits, shared.router.default_host(), ns::SERVER);
    let mut session = Incoming {
        shared: shared.clone(),
        s2s,
        certs,
        peer,
        pairs: HashSet::new(),
        counted: HashSet::new(),
        claimed: None,
        external_done: false,
    };
    session.run(conn, deadline).await;
}

/// Reads a remote server's stream header and answers with ours: it must be XMPP 1.0 and
/// name one of our domains.
async fn open<S>(shared: &Shared, conn: &mut Conn<S>, limit: Duration) -> Result<StreamHeader, Fail>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let header = match conn.next_event_within(shared, limit).await? {
        StreamEvent::Header(h) => h,
        _ => return Err(stream_err(C::NotWellFormed, "expected a stream header")),
    };
    if header.version.as_deref().and_then(|v| v.split('.').next()) != Some("1") {
        conn.send_header(&header).await?;
        return Err(stream_err(C::UnsupportedVersion, "XMPP 1.0 is required"));
    }
    let to = header.to.as_deref().map(str::to_ascii_lowercase);
    match to {
        Some(d) if shared.router.is_local_domain(&d) => {
            conn.domain = d;
            conn.send_header(&header).await?;
            Ok(header)
        }
        _ => {
            conn.send_header(&header).await?;
            Err(stream_err(
                C::HostUnknown,
                "this server does not serve that domain",
            ))
        }
    }
}

/// The plain stream up to `<proceed/>`: TLS is required between servers.
async fn starttls(
    shared: &Shared,
    conn: &mut Conn<TcpStream>,
    limit: Duration,
) -> Result<(), Fail> {
    open(shared, conn, limit).await?;
    conn.write_raw(
        b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>",
    )
    .await?;
    match conn.next_event_within(shared, limit).await? {
        StreamEvent::Element(el) if el.is("starttls", ns::TLS) => {
            conn.write_raw(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                .await
        }
        StreamEvent::Close => Err(Fail::Closed),
        _ => Err(stream_err(C::PolicyViolation, "STARTTLS is required")),
    }
}

/// One incoming server-to-server stream after TLS.
struct Incoming {
    /// Server state.
    shared: Arc<Shared>,
    /// Federation state.
    s2s: Arc<S2s>,
    /// The certificate chain the peer presented (may be empty).
    certs: Vec<CertificateDer<'static>>,
    /// For the log.
    peer: SocketAddr,
    /// Authenticated (remote domain, local domain) pairs.
    pairs: HashSet<(String, String)>,
    /// Remote domains counted against `max_connections_per_domain` by this stream.
    counted: HashSet<String>,
    /// The domain the peer's stream header claims (`from`).
    claimed: Option<String>,
    /// Whether SASL EXTERNAL already succeeded (it is offered once per stream).
    external_done: bool,
}

impl Incoming {
    fn certificate_valid_for(&self, domain: &str) -> Result<(), String> {
        self.s2s.peers.check(&self.certs, domain)
    }

    async fn run(&mut self, mut conn: Conn<TlsStream<TcpStream>>, deadline: tokio::time::Instant) {
        let why = self.negotiate(&mut conn, deadline).await;
        for d in self.counted.drain() {
            self.s2s.incoming_closed(&d);
            metrics::gauge!(telemetry::SESSIONS, "kind" => "s2s_in", "host" => conn.domain.clone())
                .decrement(1.0);
        }
        conn.close(why).await;
    }

    /// Sends our header and features for the secured stream.
    async fn secured_stream(
        &mut self,
        conn: &mut Conn<TlsStream<TcpStream>>,
        limit: Duration,
    ) -> Result<(), Fail> {
        let header = open(&self.shared, conn, limit).await?;
        self.claimed = header.from.map(|f| f.to_ascii_lowercase());
        let mut features = String::from("<stream:features>");
        if !self.external_done {
            if let Some(c) = &self.claimed
                && self.certificate_valid_for(c).is_ok()
            {
                features.push_str(
                    "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms>",
                );
            }
            features.push_str("<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>");
        }
        features.push_str("</stream:features>");
        conn.write_raw(features.as_bytes()).await
    }

    async fn negotiate(
        &mut self,
        conn: &mut Conn<TlsStream<TcpStream>>,
        deadline: tokio::time::Instant,
    ) -> Fail {
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Err(f) = self.secured_stream(conn, left()).await {
            return f;
        }
        let idle = self.s2s.idle_timeout();
        loop {
            // Until something is authenticated the handshake deadline applies; after that,
            // an idle stream is closed without an error (RFC 6120 §4.4).
            let ev = if self.pairs.is_empty() {
                conn.next_event_within(&self.shared, left()).await
            } else {
                tokio::select! {
                    biased;
                    _ = self.shared.shutdown.cancelled() => {
                        Err(stream_err(C::SystemShutdown, "server shutting down"))
                    }
                    r = tokio::time::timeout(idle, conn.next_event()) => {
                        r.unwrap_or(Err(Fail::Closed))
                    }
                }
            };
            let ev = match ev {
                Ok(ev) => ev,
                Err(f) => return f,
            };
            let el = match ev {
                StreamEvent::Element(el) => el,
                StreamEvent::Close => return Fail::Closed,
                StreamEvent::Header(_) => {
                    return stream_err(C::NotWellFormed, "unexpected stream header");
                }
            };
            let step = if el.is("auth", ns::SASL) {
                self.external(conn, &el, left()).await
            } else if el.is("result", dialback::NS) {
                self.dialback_result(conn, &el).await
            } else if el.is("verify", dialback::NS) {
                self.dialback_verify(conn, &el).await
            } else if matches!(el.name(), "message" | "presence" | "iq") && el.ns() == ns::SERVER {
                self.stanza(el).await
            } else {
                Err(stream_err(
                    C::UnsupportedStanzaType,
                    "expected a stanza, SASL or dialback",
                ))
            };
            if let Err(f) = step {
                return f;
            }
        }
    }

    /// SASL EXTERNAL (XEP-0178): the certificate must be valid for the claimed domain.
    async fn external(
        &mut self,
        conn: &mut Conn<TlsStream<TcpStream>>,
        auth: &Element,
        limit: Duration,
    ) -> Result<(), Fail> {
        let authzid = match auth.text().trim() {
            "" | "=" => None,
            t => B64
                .decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .map(|s| s.to_ascii_lowercase()),
        };
        let domain = authzid.or_else(|| self.claimed.clone());
        let ok = auth.attr("mechanism") == Some("EXTERNAL")
            && !self.external_done
            && domain.as_deref().is_some_and(|d| {
                Some(d) == self.claimed.as_deref() && self.certificate_valid_for(d).is_ok()
            });
        let Some(domain) = domain.filter(|_| ok) else {
            metrics::counter!(telemetry::S2S_AUTHENTICATIONS, "direction" => "in", "method" => "sasl_external", "result" => "failure")
                .increment(1);
            return conn
                .write_raw(
                    b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>",
                )
                .await;
        };
        let local = conn.domain.clone();
        self.authenticated(&domain, &local, "sasl_external")?;
        conn.write_raw(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
            .await?;
        self.external_done = true;
        conn.restart(self.s2s.limits(self.shared.parser_limits()));
        self.secured_stream(conn, limit).await
    }

    /// Records an authenticated pair, within the per-domain connection limit.
    fn authenticated(
        &mut self,
        remote: &str,
        local: &str,
        method: &'static str,
    ) -> Result<(), Fail> {
        if !self.counted.contains(remote) {
            if !self.s2s.incoming_opened(remote) {
                return Err(stream_err(
                    C::ResourceConstraint,
                    "too many connections from your domain",
                ));
            }
            self.counted.insert(remote.to_owned());
            metrics::gauge!(telemetry::SESSIONS, "kind" => "s2s_in", "host" => local.to_owned())
                .increment(1.0);
        }
        metrics::counter!(telemetry::S2S_AUTHENTICATIONS, "direction" => "in", "method" => method, "result" => "success")
            .increment(1);
        tracing::info!(peer = %self.peer, %remote, %local, method, "incoming s2s stream authenticated");
        self.pairs.insert((remote.to_owned(), local.to_owned()));
        Ok(())
    }

    /// `<db:result/>` from an originating server (XEP-0220 §2.1.2–2.4).
    async fn dialback_result(
        &mut self,
        conn: &mut Conn<TlsStream<TcpStream>>,
        el: &Element,
    ) -> Result<(), Fail> {
        let (Some(remote), Some(local)) = (domain_attr(el, "from"), domain_attr(el, "to")) else {
            return Err(stream_err(
                C::ImproperAddressing,
                "db:result needs from and to domains",
            ));
        };
        let reply = |kind: &str| {
            Element::new("result", dialback::NS)
                .with_attr("from", local.clone())
                .with_attr("to", remote.clone())
                .with_attr("type", kind.to_owned())
        };
        let error = |condition: &str, kind: &str| {
            reply("error").with_child(
                Element::new("error", ns::SERVER)
                    .with_attr("type", kind.to_owned())
                    .with_child(Element::new(condition.to_owned(), ns::XMPP_STANZAS)),
            )
        };
        if !self.shared.router.is_local_domain(&local) {
            return conn
                .write_raw(&dialback::to_wire(&error("item-not-found", "cancel")))
                .await;
        }
        let verdict = if self.certificate_valid_for(&remote).is_ok() {
            // The certificate already proves the domain (XEP-0344 §2.4).
            Ok(true)
        } else if !self.s2s.dialback_allowed(&remote) {
            tracing::info!(peer = %self.peer, %remote, "dialback refused by policy: certificate not valid");
            metrics::counter!(telemetry::S2S_AUTHENTICATIONS, "direction" => "in", "method" => "dialback", "result" => "failure")
                .increment(1);
            return conn
                .write_raw(&dialback::to_wire(&error("not-authorized", "auth")))
                .await;
        } else {
            let key = el.text();
            outgoing::verify_key(&self.s2s, &local, &remote, &conn.stream_id, key.trim()).await
        };
        match verdict {
            Ok(true) => {
                conn.write_raw(&dialback::to_wire(&reply("valid"))).await?;
                self.authenticated(&remote, &local, "dialback")
            }
            Ok(false) => {
                metrics::counter!(telemetry::S2S_AUTHENTICATIONS, "direction" => "in", "method" => "dialback", "result" => "failure")
                    .increment(1);
                tracing::info!(peer = %self.peer, %remote, "dialback key invalid");
                conn.write_raw(&dialback::to_wire(&reply("invalid"))).await
            }
            Err(e) => {
                tracing::info!(peer = %self.peer, %remote, error = %e, "cannot verify a dialback key");
                conn.write_raw(&dialback::to_wire(&error(
                    "remote-server-not-found",
                    "cancel",
                )))
                .await
            }
        }
    }

    /// `<db:verify/>`: we are the authoritative server for `to` (XEP-0220 §2.3).
    async fn dialback_verify(
        &mut self,
        conn: &mut Conn<TlsStream<TcpStream>>,
        el: &Element,
    ) -> Result<(), Fail> {
        let (Some(receiving), Some(ours), Some(id)) = (
            domain_attr(el, "from"),
            domain_attr(el, "to"),
            el.attr("id"),
        ) else {
            return Err(stream_err(
                C::ImproperAddressing,
                "db:verify needs from, to and id",
            ));
        };
        let valid = self.shared.router.is_local_domain(&ours)
            && self.s2s.secret.verify(&receiving, &ours, id, &el.text());
        let answer = Element::new("verify", dialback::NS)
            .with_attr("from", ours)
            .with_attr("to", receiving)
            .with_attr("id", id)
            .with_attr("type", if valid { "valid" } else { "invalid" });
        conn.write_raw(&dialback::to_wire(&answer)).await
    }

    /// A stanza: checked against the authenticated pairs, then routed.
    async fn stanza(&mut self, mut el: Element) -> Result<(), Fail> {
        let (Some(from), Some(to)) = (domain_attr(&el, "from"), domain_attr(&el, "to")) else {
            return Err(stream_err(
                C::ImproperAddressing,
                "stanzas between servers need valid from and to addresses",
            ));
        };
        if self.pairs.is_empty() {
            return Err(stream_err(C::NotAuthorized, "authenticate first"));
        }
        if !self.pairs.iter().any(|(r, _)| *r == from) {
            return Err(stream_err(
                C::InvalidFrom,
                "the from domain is not authenticated on this stream",
            ));
        }
        if !self.pairs.contains(&(from, to)) {
            return Err(stream_err(
                C::HostUnknown,
                "the to domain is not authenticated on this stream",
            ));
        }
        telemetry::stanza_in(&el);
        el.rename_ns(ns::SERVER, &Ns::from(ns::CLIENT));
        self.shared.router.route(el).await;
        Ok(())
    }
}

/// The domain of a JID attribute, lower-cased; `None` when absent or invalid.
fn domain_attr(el: &Element, attr: &str) -> Option<String> {
    el.attr(attr)
        .and_then(|a| Jid::new(a).ok())
        .map(|j| j.domain().as_str().to_ascii_lowercase())
}
