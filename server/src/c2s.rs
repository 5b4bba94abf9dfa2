//! Client-to-server sessions: stream negotiation (RFC 6120 §4–7) and the session loop.
//!
//! Negotiation goes through its states in order, each a function: plain stream →
//! STARTTLS (skipped on direct TLS) → SASL → resource binding → established. Only
//! [`Conn`] touches the socket; parsing is [`crate::xml::StreamParser`]'s, routing the router's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use openspimed_module_api::jid::FullJid;
use openspimed_module_api::{
    ClientSession, Condition, Element, Flow, IqType, MessageType, StanzaError, StanzaKind,
    Unauthenticated, iq_result, ns,
};
use rand::RngCore;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::core::router::{Host, Outgoing};
use crate::core::shared::Shared;
use crate::error::{StreamError, StreamErrorCondition as C};
use crate::sasl::{self, AuthFailure, Exchange, Step};
use crate::stream::{Conn, Fail, stream_err};
use crate::telemetry;
use crate::xml::{StreamEvent, StreamHeader};

/// What client sessions share: the server's [`Shared`] state, and what only they use.
/// Derefs to [`Shared`], so a session reads `clients.router`, `clients.limits()` alike.
pub struct Clients {
    /// The state every kind of session shares.
    pub shared: Arc<Shared>,
    /// Sessions waiting to be resumed (XEP-0198), by resumption id.
    pub detached: DetachedSessions,
}

impl Clients {
    /// The client side of `shared`.
    pub fn new(shared: Arc<Shared>) -> Clients {
        Clients {
            shared,
            detached: Default::default(),
        }
    }
}

impl std::ops::Deref for Clients {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// Serves one accepted TCP connection until it ends.
///
/// Every negotiation step is boxed and dropped before the session loop starts: a task is
/// as large as its largest state, and what an idle session keeps is what matters at
/// 10,000 sessions.
pub async fn serve(shared: Arc<Clients>, tcp: TcpStream, peer: SocketAddr, direct_tls: bool) {
    let handshake = Duration::from_secs(shared.limits().handshake_timeout_secs);
    let tls = if direct_tls {
        let acceptor = TlsAcceptor::from(shared.tls.direct.clone());
        match Box::pin(tokio::time::timeout(handshake, acceptor.accept(tcp))).await {
            Ok(Ok(s)) => {
                metrics::counter!(telemetry::TLS_HANDSHAKES, "result" => "ok").increment(1);
                s
            }
            Ok(Err(e)) => {
                metrics::counter!(telemetry::TLS_HANDSHAKES, "result" => "failed").increment(1);
                tracing::debug!(%peer, %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                metrics::counter!(telemetry::TLS_HANDSHAKES, "result" => "failed").increment(1);
                return;
            }
        }
    } else {
        match Box::pin(negotiate_starttls(&shared, tcp, handshake)).await {
            Some(s) => s,
            None => return,
        }
    };
    let conn = Conn::new(
        tls,
        shared.parser_limits(),
        shared.router.default_host(),
        ns::CLIENT,
    );
    let deadline = tokio::time::Instant::now() + handshake;
    // Only the session loop's own (boxed) future stays alive while the client idles.
    let session = Box::pin(async move {
        let ready = negotiate_session(&shared, conn, peer, deadline).await;
        ready.map(|(conn, session, fresh)| {
            Box::pin(established(
                shared,
                Box::new(Live { conn, s: session }),
                fresh,
            ))
        })
    })
    .await;
    if let Some(session) = session {
        session.await;
    }
}

/// Reads the client's stream header, answers with ours, and picks the virtual host; a
/// header we cannot serve gets its stream error after our header (RFC 6120 §4.9.1.1).
async fn open_stream<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    shared: &Clients,
    limit: Duration,
) -> Result<Arc<Host>, Fail> {
    let header = match conn.next_event_within(shared, limit).await? {
        StreamEvent::Header(h) => h,
        _ => return Err(stream_err(C::NotWellFormed, "expected a stream header")),
    };
    let host = pick_host(shared, &header);
    if let Ok(h) = &host {
        conn.domain = h.domain.clone();
    }
    conn.send_header(&header).await?;
    host
}

/// Validates a stream header and picks the virtual host (RFC 6120 §4.7, §4.9.3).
fn pick_host(shared: &Clients, header: &StreamHeader) -> Result<Arc<Host>, Fail> {
    match header.version.as_deref() {
        Some(v) if v.split('.').next() == Some("1") => {}
        _ => {
            return Err(stream_err(
                C::UnsupportedVersion,
                "XMPP 1.0 (version='1.0') is required",
            ));
        }
    }
    let domain = match &header.to {
        Some(to) => to.to_ascii_lowercase(),
        None => shared.router.default_host(),
    };
    shared
        .router
        .host(&domain)
        .ok_or_else(|| stream_err(C::HostUnknown, "this server does not serve that domain"))
}

/// Plain stream up to `<proceed/>` and the TLS handshake (RFC 6120 §5).
async fn negotiate_starttls(
    shared: &Arc<Clients>,
    tcp: TcpStream,
    handshake: Duration,
) -> Option<TlsStream<TcpStream>> {
    let mut conn = Conn::new(
        tcp,
        shared.parser_limits(),
        shared.router.default_host(),
        ns::CLIENT,
    );
    let result: Result<(), Fail> = async {
        open_stream(&mut conn, shared, handshake).await?;
        conn.write_raw(
            b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>",
        )
        .await?;
        match conn.next_event_within(shared, handshake).await? {
            StreamEvent::Element(el) if el.is("starttls", ns::TLS) => {
                conn.write_raw(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                    .await
            }
            StreamEvent::Element(el) if el.ns() == ns::SASL => {
                // RFC 6120 §5.3.1: TLS is mandatory-to-negotiate here.
                conn.write_raw(
                    b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><encryption-required/></failure>",
                )
                .await?;
                Err(stream_err(
                    C::PolicyViolation,
                    "TLS is required before authentication",
                ))
            }
            StreamEvent::Element(el) if is_stanza(&el) => {
                Err(stream_err(C::NotAuthorized, "negotiate TLS and authenticate first"))
            }
            StreamEvent::Element(_) => {
                Err(stream_err(C::PolicyViolation, "STARTTLS is required"))
            }
            StreamEvent::Header(_) => {
                Err(stream_err(C::NotWellFormed, "unexpected stream header"))
            }
            StreamEvent::Close => Err(Fail::Closed),
        }
    }
    .await;
    match result {
        Ok(()) => {
            let acceptor = TlsAcceptor::from(shared.tls.starttls.clone());
            // Bytes the client sent after <starttls/> before the handshake are discarded
            // (RFC 6120 §5.4.3.3): only the raw socket moves on.
            match tokio::time::timeout(handshake, acceptor.accept(conn.io)).await {
                Ok(Ok(s)) => {
                    metrics::counter!(telemetry::TLS_HANDSHAKES, "result" => "ok").increment(1);
                    Some(s)
                }
                _ => {
                    metrics::counter!(telemetry::TLS_HANDSHAKES, "result" => "failed").increment(1);
                    None
                }
            }
        }
        Err(f) => {
            conn.close(f).await;
            None
        }
    }
}

fn is_stanza(el: &Element) -> bool {
    matches!(el.name(), "message" | "presence" | "iq")
}

fn tls_exporter(io: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    let (_, session) = io.get_ref();
    if session.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return None;
    }
    session
        .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
        .ok()
}

/// After TLS: SASL and binding (or resumption). Returns the stream and the session ready for
/// [`established`], or `None` when negotiation ended the connection.
async fn negotiate_session(
    shared: &Arc<Clients>,
    mut conn: Conn<TlsStream<TcpStream>>,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
) -> Option<(Conn<TlsStream<TcpStream>>, Session, bool)> {
    let cb_data = tls_exporter(&conn.io);
    let remaining =
        |d: tokio::time::Instant| d.saturating_duration_since(tokio::time::Instant::now());
    let auth = Box::pin(authenticate(shared, &mut conn, peer, cb_data, deadline)).await;
    let (host, user) = match auth {
        Ok(v) => v,
        Err(f) => {
            conn.close(f).await;
            return None;
        }
    };
    conn.restart(shared.parser_limits());
    let bound = async {
        let header = match conn.next_event_within(shared, remaining(deadline)).await? {
            StreamEvent::Header(h) => h,
            _ => return Err(stream_err(C::NotWellFormed, "expected a stream header")),
        };
        conn.send_header(&header).await?;
        if header.to.as_deref().map(str::to_ascii_lowercase).as_deref()
            != Some(host.domain.as_str())
            && header.to.is_some()
        {
            return Err(stream_err(
                C::HostUnknown,
                "the stream must stay on the same domain",
            ));
        }
        let mut features = String::from(
            "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>\
             <session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>\
             <sm xmlns='urn:xmpp:sm:3'/>",
        );
        // What the host's modules offer (IM: roster versioning, RFC 6121 §2.6.1).
        for f in host.hooks.stream_features(&host.domain) {
            features.push_str(&f.to_string());
        }
        features.push_str("</stream:features>");
        conn.write_raw(features.as_bytes()).await?;
        Box::pin(bind_resource(
            shared,
            &mut conn,
            &host,
            &user,
            remaining(deadline),
        ))
        .await
    }
    .await;
    match bound {
        Ok(Bound::New(session)) => Some((conn, session, true)),
        Ok(Bound::Resumed(session, h)) => match resume(&mut conn, session, h).await {
            Ok(session) => Some((conn, session, false)),
            Err((session, f)) => {
                finish(shared, session).await;
                conn.close(f).await;
                None
            }
        },
        Err(f) => {
            conn.close(f).await;
            None
        }
    }
}

/// What the client did after authenticating: bound a new resource, or resumed a session.
enum Bound {
    /// A fresh session.
    New(Session),
    /// A detached session to resume, with the client's `h`.
    Resumed(Session, u32),
}

/// XEP-0198 §5: `<resumed/>`, then what the client did not acknowledge, again.
async fn resume(
    conn: &mut Conn<TlsStream<TcpStream>>,
    mut s: Session,
    h: u32,
) -> Result<Session, (Session, Fail)> {
    let Some(sm) = s.sm.as_mut() else {
        return Err((
            s,
            stream_err(C::InternalServerError, "no stream management"),
        ));
    };
    if let Err(e) = sm.ack(h) {
        tracing::debug!(?e, "resumption acknowledged more than was sent");
        return Err((
            s,
            stream_err(C::UndefinedCondition, "handled-count-too-high"),
        ));
    }
    let answer = format!(
        "<resumed xmlns='urn:xmpp:sm:3' previd='{}' h='{}'/>",
        sm.id.clone().unwrap_or_default(),
        sm.inbound
    );
    let resent: Vec<Element> = sm.unacked().cloned().collect();
    if let Err(f) = conn.write_raw(answer.as_bytes()).await {
        return Err((s, f));
    }
    for el in &resent {
        conn.queue(el);
    }
    if let Err(f) = conn.flush_queued().await {
        return Err((s, f));
    }
    tracing::debug!(jid = %s.full, resent = resent.len(), "session resumed");
    Ok(s)
}

/// SASL negotiation (RFC 6120 §6). Returns the host and the authenticated localpart.
async fn authenticate(
    shared: &Arc<Clients>,
    conn: &mut Conn<TlsStream<TcpStream>>,
    peer: SocketAddr,
    cb_data: Option<Vec<u8>>,
    deadline: tokio::time::Instant,
) -> Result<(Arc<Host>, String), Fail> {
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    let host = open_stream(conn, shared, left()).await?;
    let offered: Vec<&str> = host
        .mechanisms
        .iter()
        .map(String::as_str)
        .filter(|m| cb_data.is_some() || !m.ends_with("-PLUS"))
        .collect();
    let mut features =
        String::from("<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>");
    for m in &offered {
        features.push_str(&format!("<mechanism>{m}</mechanism>"));
    }
    features.push_str("</mechanisms>");
    // What the pre-auth hooks offer (XEP-0077: in-band registration).
    for f in host.hooks.pre_auth_features(&host.domain) {
        features.push_str(&f.to_string());
    }
    if cb_data.is_some() {
        // XEP-0440: which channel-binding types the server can use.
        features.push_str(
            "<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/></sasl-channel-binding>",
        );
    }
    features.push_str("</stream:features>");
    conn.write_raw(features.as_bytes()).await?;

    // RFC 6120 §6.4.5: a few retries, then the connection goes.
    let mut attempts = 0;
    loop {
        let el = match conn.next_event_within(shared, left()).await? {
            StreamEvent::Element(el) => el,
            StreamEvent::Close => return Err(Fail::Closed),
            StreamEvent::Header(_) => {
                return Err(stream_err(C::NotWellFormed, "unexpected stream header"));
            }
        };
        if is_stanza(&el) {
            // The pre-auth hooks (XEP-0077 registration) take what they know.
            let client = Unauthenticated {
                host: &host.domain,
                ip: peer.ip(),
            };
            match host.hooks.pre_auth(client, el).await {
                Flow::Reply(answer) => conn.send(&answer).await?,
                Flow::Done => {}
                Flow::Refuse(el, err) => {
                    if let Some(answer) = err.reply_to(&el) {
                        conn.send(&answer).await?;
                    }
                }
                Flow::Pass(_) => return Err(stream_err(C::NotAuthorized, "authenticate first")),
            }
            continue;
        }
        if !el.is("auth", ns::SASL) {
            return Err(stream_err(C::PolicyViolation, "expected <auth/>"));
        }
        attempts += 1;
        match sasl_exchange(
            shared,
            conn,
            &host,
            &offered,
            el,
            peer,
            cb_data.clone(),
            left(),
        )
        .await?
        {
            Some(user) => return Ok((host, user)),
            None if attempts >= 3 => {
                return Err(stream_err(
                    C::PolicyViolation,
                    "too many failed authentication attempts",
                ));
            }
            None => continue,
        }
    }
}

async fn send_failure(conn: &mut Conn<TlsStream<TcpStream>>, condition: &str) -> Result<(), Fail> {
    conn.write_raw(
        format!("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><{condition}/></failure>")
            .as_bytes(),
    )
    .await
}

/// One `<auth/>` exchange: `Some(user)` on success, `None` after a `<failure/>`.
#[allow(clippy::too_many_arguments)]
async fn sasl_exchange(
    shared: &Arc<Clients>,
    conn: &mut Conn<TlsStream<TcpStream>>,
    host: &Arc<Host>,
    offered: &[&str],
    auth: Element,
    peer: SocketAddr,
    cb_data: Option<Vec<u8>>,
    limit: Duration,
) -> Result<Option<String>, Fail> {
    let mechanism = auth.attr("mechanism").unwrap_or("");
    if !offered.contains(&mechanism) {
        send_failure(conn, "invalid-mechanism").await?;
        return Ok(None);
    }
    let mechanism = mechanism.to_owned();
    let Ok(mut input) = sasl::decode_b64(&auth.text()) else {
        send_failure(conn, "incorrect-encoding").await?;
        return Ok(None);
    };
    if input.is_empty() {
        // No initial response: ask for it with an empty challenge (RFC 6120 §6.4.2).
        conn.write_raw(b"<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>=</challenge>")
            .await?;
        match read_sasl_response(shared, conn, limit).await? {
            Some(data) => input = data,
            None => return Ok(None),
        }
    }
    let Some(raw_user) = sasl::username_from_initial(&mechanism, &input) else {
        send_failure(conn, "malformed-request").await?;
        return Ok(None);
    };
    let user = sasl::normalize_user(&raw_user);
    let account = format!("{user}@{}", host.domain);
    if shared.throttle.is_blocked(peer.ip(), &account) {
        send_failure(conn, AuthFailure::Temporary.condition()).await?;
        return Ok(None);
    }
    let creds = if user.is_empty() {
        None
    } else {
        match shared.accounts.credentials(&user, &host.domain).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(%e, "cannot read credentials");
                send_failure(conn, "temporary-auth-failure").await?;
                return Ok(None);
            }
        }
    };
    let plain = mechanism == "PLAIN";
    let plus_offered = offered.iter().any(|m| m.ends_with("-PLUS"));
    let mut exchange = match Exchange::start(
        &mechanism,
        &user,
        &host.domain,
        creds,
        cb_data,
        plus_offered,
    ) {
        Ok(e) => e,
        Err(f) => {
            send_failure(conn, f.condition()).await?;
            return Ok(None);
        }
    };
    loop {
        // PLAIN runs PBKDF2 over the password: keep it off the async workers.
        let step = if plain {
            let data = std::mem::take(&mut input);
            match tokio::task::spawn_blocking(move || {
                let s = exchange.step(&data);
                (exchange, s)
            })
            .await
            {
                Ok((ex, s)) => {
                    exchange = ex;
                    s
                }
                Err(_) => {
                    send_failure(conn, AuthFailure::Temporary.condition()).await?;
                    return Ok(None);
                }
            }
        } else {
            exchange.step(&input)
        };
        match step {
            Step::Challenge(data) => {
                conn.write_raw(
                    format!(
                        "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</challenge>",
                        B64.encode(data)
                    )
                    .as_bytes(),
                )
                .await?;
                match read_sasl_response(shared, conn, limit).await? {
                    Some(data) => input = data,
                    None => return Ok(None),
                }
            }
            Step::Success { user, data } => {
                metrics::counter!(telemetry::SASL_AUTHENTICATIONS, "mechanism" => mechanism.clone(), "result" => "success")
                    .increment(1);
                shared.throttle.succeeded(&account);
                let body = if data.is_empty() {
                    String::new()
                } else {
                    B64.encode(data)
                };
                conn.write_raw(
                    format!("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{body}</success>")
                        .as_bytes(),
                )
                .await?;
                tracing::info!(%peer, account = %format!("{user}@{}", host.domain), mechanism, "authenticated");
                return Ok(Some(user));
            }
            Step::Failure(f) => {
                metrics::counter!(telemetry::SASL_AUTHENTICATIONS, "mechanism" => mechanism.clone(), "result" => "failure")
                    .increment(1);
                shared.throttle.failed(peer.ip(), &account);
                tracing::info!(%peer, mechanism, condition = f.condition(), "authentication failed");
                send_failure(conn, f.condition()).await?;
                return Ok(None);
            }
        }
    }
}

/// Waits for `<response/>` (data) or `<abort/>` (None, after answering `<aborted/>`).
async fn read_sasl_response(
    shared: &Arc<Clients>,
    conn: &mut Conn<TlsStream<TcpStream>>,
    limit: Duration,
) -> Result<Option<Vec<u8>>, Fail> {
    match conn.next_event_within(shared, limit).await? {
        StreamEvent::Element(el) if el.is("response", ns::SASL) => {
            match sasl::decode_b64(&el.text()) {
                Ok(d) => Ok(Some(d)),
                Err(_) => {
                    send_failure(conn, "incorrect-encoding").await?;
                    Ok(None)
                }
            }
        }
        StreamEvent::Element(el) if el.is("abort", ns::SASL) => {
            send_failure(conn, "aborted").await?;
            Ok(None)
        }
        StreamEvent::Close => Err(Fail::Closed),
        _ => Err(stream_err(
            C::PolicyViolation,
            "expected <response/> or <abort/>",
        )),
    }
}

/// A bound session's identity and outbox.
struct Session {
    /// `user@domain`.
    bare: String,
    /// The full JID as a string, stamped as `from` on everything the client sends.
    full: String,
    /// Registry id.
    id: u64,
    /// Stanzas for this session.
    rx: mpsc::Receiver<Outgoing>,
    /// The host as the routing tables of [`Session::generation`] have it: its hook lists
    /// are fired for what the session sends.
    host: Arc<Host>,
    /// The router's table generation `host` was read at; a reload bumps it, and the
    /// session reads its host again.
    generation: u64,
    /// Stream management, once the client enabled it (XEP-0198).
    sm: Option<crate::sm::Sm>,
}

impl Session {
    /// The host with the modules and hooks in force: read again after a reload.
    fn host_now(&mut self, router: &crate::core::router::Router) -> &Host {
        if let Some((host, generation)) = router.host_since(&self.host.domain, self.generation) {
            self.host = host;
            self.generation = generation;
        }
        &self.host
    }

    /// The session as the hooks see it.
    fn client(&self) -> ClientSession<'_> {
        ClientSession {
            bare: &self.bare,
            full: &self.full,
            id: self.id,
        }
    }

    /// Writes a stanza to the client, counting it for stream management.
    async fn send(
        &mut self,
        conn: &mut Conn<TlsStream<TcpStream>>,
        el: &Element,
    ) -> Result<(), Fail> {
        if let Some(sm) = self.sm.as_mut() {
            sm.sent(el);
        }
        conn.send(el).await
    }
}

/// A session whose connection dropped with resumption enabled, waiting for its client.
pub struct Detached {
    /// The session as it was (its outbox keeps filling meanwhile).
    session: Session,
    /// Tells this detachment from a later one of the same session, so an old expiry timer
    /// cannot end a resumed-and-detached-again session early.
    generation: u64,
}

/// Detached sessions by resumption id.
pub type DetachedSessions = dashmap::DashMap<String, Detached>;

/// Waits for the bind iq (RFC 6120 §7) and registers the session.
async fn bind_resource(
    shared: &Arc<Clients>,
    conn: &mut Conn<TlsStream<TcpStream>>,
    host: &Arc<Host>,
    user: &str,
    limit: Duration,
) -> Result<Bound, Fail> {
    let bare = format!("{user}@{}", host.domain);
    loop {
        let iq = match conn.next_event_within(shared, limit).await? {
            StreamEvent::Element(el) => el,
            StreamEvent::Close => return Err(Fail::Closed),
            StreamEvent::Header(_) => {
                return Err(stream_err(C::NotWellFormed, "unexpected stream header"));
            }
        };
        if iq.is("resume", crate::sm::NS) {
            // XEP-0198 §5: only the same account may resume, and only a session that is
            // still waiting.
            let h = iq.attr("h").and_then(|h| h.parse::<u32>().ok());
            let previd = iq.attr("previd").unwrap_or("");
            let found = match h {
                Some(_) => shared
                    .detached
                    .remove_if(previd, |_, d| d.session.bare == bare)
                    .map(|(_, d)| d.session),
                None => None,
            };
            match (found, h) {
                (Some(session), Some(h)) => return Ok(Bound::Resumed(session, h)),
                (_, None) => {
                    conn.write_raw(
                        b"<failed xmlns='urn:xmpp:sm:3'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>",
                    )
                    .await?
                }
                _ => {
                    conn.write_raw(
                        b"<failed xmlns='urn:xmpp:sm:3'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>",
                    )
                    .await?
                }
            }
            continue;
        }
        if iq.is("enable", crate::sm::NS) {
            // XEP-0198 §3: after binding only.
            conn.write_raw(
                b"<failed xmlns='urn:xmpp:sm:3'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>",
            )
            .await?;
            continue;
        }
        let bind = iq.get_child("bind", ns::BIND);
        let iq_type = IqType::of(&iq).filter(|_| iq.is("iq", ns::CLIENT));
        let is_bind = iq_type == Some(IqType::Set) && bind.is_some();
        if !is_bind {
            if iq_type.is_some_and(IqType::is_request) {
                // RFC 6120 §7.2: stanzas before binding are not allowed.
                let err =
                    StanzaError::new(Condition::NotAllowed).with_text("bind a resource first");
                if let Some(reply) = err.reply_to(&iq) {
                    conn.send(&reply).await?;
                }
                continue;
            }
            return Err(stream_err(C::NotAuthorized, "bind a resource first"));
        }
        let requested = bind
            .and_then(|b| b.get_child("resource", ns::BIND))
            .map(|r| r.text().trim().to_owned())
            .filter(|r| !r.is_empty());
        let resource = match requested {
            Some(r) => r,
            None => loop {
                let mut raw = [0u8; 9];
                rand::rng().fill_bytes(&mut raw);
                let r = format!("openspimed-{}", B64.encode(raw).replace(['+', '/'], "x"));
                if !shared.router.registry.resource_taken(&bare, &r) {
                    break r;
                }
            },
        };
        let full = match FullJid::new(&format!("{bare}/{resource}")) {
            Ok(j) => j,
            Err(_) => {
                let err = StanzaError::new(Condition::BadRequest).with_text("invalid resource");
                if let Some(reply) = err.reply_to(&iq) {
                    conn.send(&reply).await?;
                }
                continue;
            }
        };
        let id = shared.session_id();
        let (tx, rx) = mpsc::channel(shared.limits().session_queue);
        let full_str = full.to_string();
        if let Some(old) = shared
            .router
            .registry
            .bind(&bare, full.resource().as_str(), id, tx)
        {
            // RFC 6120 §7.7.2.2: the new session wins.
            let _ = old.try_send(Outgoing::Kick(Box::new(StreamError::with_text(
                C::Conflict,
                "replaced by a new session with the same resource",
            ))));
        }
        let mut reply = iq_result(&iq);
        reply.remove_attr("from");
        reply.set_attr("to", full_str.clone());
        reply.push_child(
            Element::new("bind", ns::BIND)
                .with_child(Element::new("jid", ns::BIND).with_text(full_str.clone())),
        );
        if let Err(f) = conn.send(&reply).await {
            shared.router.registry.unbind(&bare, id);
            return Err(f);
        }
        tracing::debug!(jid = %full_str, "resource bound");
        // The host as it is now (a reload may have come since the stream opened); the
        // generation first, so that a reload in between is seen on the next stanza.
        let generation = shared.router.generation();
        let host = shared
            .router
            .host(&host.domain)
            .unwrap_or_else(|| host.clone());
        host.hooks
            .session_bound(ClientSession {
                bare: &bare,
                full: &full_str,
                id,
            })
            .await;
        return Ok(Bound::New(Session {
            bare,
            full: full_str,
            id,
            rx,
            host,
            generation,
            sm: None,
        }));
    }
}

/// The session loop: stanzas from the client, stanzas for the client, shutdown.
/// How a session loop ended.
enum End {
    /// With this stream error or close; the session ends.
    Stream(Fail),
    /// The connection broke (no `</stream:stream>`): a session with resumption enabled
    /// waits for its client (XEP-0198 §5).
    Dropped,
}

/// The session loop: stanzas from the client, stanzas for the client, shutdown. `fresh` is
/// false for a resumed session (already counted).
async fn established(shared: Arc<Clients>, mut live: Box<Live>, fresh: bool) {
    // The stream and session stay in their box, used through references: moved into the
    // future instead, they would be stored twice (as argument and as local).
    let Live { conn, s } = &mut *live;
    conn.shrink();
    if fresh {
        metrics::gauge!(telemetry::SESSIONS, "kind" => "c2s", "host" => s.host.domain.clone())
            .increment(1.0);
    }
    let idle = Duration::from_secs(shared.limits().c2s_idle_timeout_secs.max(1));
    let end = loop {
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => {
                // What the server sent before it stopped (a room's 332) goes out first.
                while let Ok(out) = s.rx.try_recv() {
                    if let Outgoing::Stanza(el) | Outgoing::Unfiltered(el) = out {
                        track(s, &el);
                        conn.queue(&el);
                    }
                }
                let flush = Box::pin(conn.flush_queued());
                let _ = flush.await;
                break End::Stream(stream_err(C::SystemShutdown, "server shutting down"));
            }
            out = s.rx.recv() => {
                match out {
                    Some(Outgoing::Kick(e)) => break End::Stream(Fail::Stream(*e)),
                    None => break End::Stream(Fail::Closed),
                    Some(first) => {
                        // This one and what else is ready (up to 64 more): one write for a
                        // burst.
                        let mut kick = None;
                        let mut next = Some(first);
                        let mut taken = 0;
                        // Asked once a burst: without a to-session hook (the common case)
                        // each stanza is written as it came, with no future made.
                        let filtering = s.host_now(&shared.router).hooks.filters_sessions();
                        while let Some(out) = next.take() {
                            match out {
                                Outgoing::Kick(e) => { kick = Some(*e); break; }
                                Outgoing::Stanza(el) if filtering => {
                                    if let Some(el) = Box::pin(to_session(&shared, s, *el)).await {
                                        track(s, &el);
                                        conn.queue(&el);
                                    }
                                }
                                Outgoing::Stanza(el) | Outgoing::Unfiltered(el) => {
                                    track(s, &el);
                                    conn.queue(&el);
                                }
                            }
                            taken += 1;
                            if taken <= 64 {
                                next = s.rx.try_recv().ok();
                            }
                        }
                        if let Some(sm) = s.sm.as_mut().filter(|sm| !sm.requested && sm.pending() > 0) {
                            // Ask for an acknowledgement of what is in flight (XEP-0198 §4).
                            sm.requested = true;
                            conn.queue_raw(b"<r xmlns='urn:xmpp:sm:3'/>");
                        }
                        // Boxed: a write in progress is rare state for an idle session.
                        // Boxed, and the box bound first: a temporary lives to the end of
                        // its statement, so `Box::pin(f).await` would still reserve f's size
                        // in the session's task.
                        let flush = Box::pin(conn.flush_queued());
                        if flush.await.is_err() {
                            break End::Dropped;
                        }
                        if let Some(e) = kick {
                            break End::Stream(Fail::Stream(e));
                        }
                    }
                }
            }
            ev = tokio::time::timeout(idle, conn.next_event()) => {
                let ev = match ev {
                    Ok(Ok(ev)) => ev,
                    Ok(Err(Fail::Closed)) => break End::Dropped,
                    Ok(Err(f)) => break End::Stream(f),
                    Err(_) => break End::Stream(stream_err(C::ConnectionTimeout, "idle for too long")),
                };
                match ev {
                    StreamEvent::Element(el) => {
                        // Boxed: its state (roster, presence, registration handling) would
                        // otherwise be part of every idle session's task.
                        let handled = Box::pin(inbound(&shared, conn, s, el));
                        if let Err(f) = handled.await {
                            break match f {
                                Fail::Closed => End::Dropped,
                                f => End::Stream(f),
                            };
                        }
                    }
                    StreamEvent::Close => break End::Stream(Fail::Closed),
                    StreamEvent::Header(_) => break End::Stream(stream_err(C::NotWellFormed, "unexpected stream header")),
                }
            }
        }
    };
    let resumable = s.sm.as_ref().is_some_and(|sm| sm.id.is_some());
    let why = match end {
        End::Dropped if resumable => {
            let Live { conn, s } = *live;
            detach(&shared, s);
            drop(conn);
            return;
        }
        End::Dropped => Fail::Closed,
        End::Stream(why) => why,
    };
    // The stream and session leave their box only inside this boxed future: unpacked
    // here, across an await, they would be stored in every session's task (massif:
    // ~1.8 KiB of each idle session's memory was this ending state).
    let ending = Box::pin(async move {
        let Live { conn, s } = *live;
        finish(&shared, s).await;
        conn.close(why).await;
    });
    ending.await;
}

/// A session and its stream, boxed for [`established`].
struct Live {
    /// The stream.
    conn: Conn<TlsStream<TcpStream>>,
    /// The session.
    s: Session,
}

/// Counts a stanza written to the client for stream management.
/// A stanza for the session through its host's to-session hooks (XEP-0352 client state
/// indication filters here): what to write, if anything.
async fn to_session(shared: &Clients, s: &mut Session, el: Element) -> Option<Element> {
    let host = s.host.clone();
    match host.hooks.to_session(s.client(), el).await {
        Flow::Pass(el) => Some(el),
        Flow::Done => None,
        Flow::Reply(reply) => {
            shared.router.route(reply).await;
            None
        }
        Flow::Refuse(el, err) => {
            shared.router.bounce(&el, err).await;
            None
        }
    }
}

fn track(s: &mut Session, el: &Element) {
    if let Some(sm) = s.sm.as_mut() {
        sm.sent(el);
    }
}

/// Keeps a session whose connection broke for `resume_timeout_secs`; then it ends.
fn detach(shared: &Arc<Clients>, s: Session) {
    let Some(id) = s.sm.as_ref().and_then(|sm| sm.id.clone()) else {
        return;
    };
    let generation = shared.session_id();
    tracing::debug!(jid = %s.full, "connection lost; session kept for resumption");
    shared.detached.insert(
        id.clone(),
        Detached {
            session: s,
            generation,
        },
    );
    let wait = Duration::from_secs(shared.limits().resume_timeout_secs);
    let shared = shared.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.shutdown.cancelled() => {}
        }
        if let Some((_, d)) = shared
            .detached
            .remove_if(&id, |_, d| d.generation == generation)
        {
            tracing::debug!(jid = %d.session.full, "not resumed in time");
            finish(&shared, d.session).await;
        }
    });
}

/// Ends a session for good: contacts see it go, and messages it had not acknowledged or
/// not yet received are routed again (to another resource or to offline storage), as
/// XEP-0198 §5 and RFC 6121 §8.5.3.2 want.
async fn finish(shared: &Arc<Clients>, mut s: Session) {
    // The hooks learn it first (IM tells the contacts: RFC 6121 §4.5.2).
    let host = s.host_now(&shared.router).hooks.clone();
    host.session_closed(s.client()).await;
    shared.router.registry.unbind(&s.bare, s.id);
    metrics::gauge!(telemetry::SESSIONS, "kind" => "c2s", "host" => s.host.domain.clone())
        .decrement(1.0);
    let mut undelivered =
        s.sm.as_mut()
            .map(|sm| sm.take_unacked())
            .unwrap_or_default();
    s.rx.close();
    while let Ok(out) = s.rx.try_recv() {
        if let Outgoing::Stanza(el) | Outgoing::Unfiltered(el) = out {
            undelivered.push(*el);
        }
    }
    for el in undelivered.into_iter() {
        // Errors are not sent again, nor what the server made for this session on the
        // account's behalf, from its bare JID (carbons, archive results: the client reads
        // them from the archive).
        let mut el = el;
        if !matches!(StanzaKind::of(&el), Some(StanzaKind::Message(t)) if t != MessageType::Error) {
            continue;
        }
        if el
            .attr("from")
            .is_some_and(|f| f.eq_ignore_ascii_case(&s.bare))
        {
            continue;
        }
        el.set_attr("to", s.bare.clone());
        shared.router.redeliver(&s.bare, el).await;
    }
    tracing::debug!(jid = %s.full, "session ended");
}

/// One element from an established client (RFC 6120 §8, §10).
async fn inbound(
    shared: &Arc<Clients>,
    conn: &mut Conn<TlsStream<TcpStream>>,
    s: &mut Session,
    mut el: Element,
) -> Result<(), Fail> {
    if el.ns() == crate::sm::NS {
        return stream_management(shared, conn, s, &el).await;
    }
    if !is_stanza(&el) {
        return Err(stream_err(
            C::UnsupportedStanzaType,
            "only message, presence and iq",
        ));
    }
    if let Some(sm) = s.sm.as_mut() {
        sm.received();
    }
    if el.ns() != ns::CLIENT {
        return Err(stream_err(
            C::InvalidNamespace,
            "stanzas must be in jabber:client",
        ));
    }
    telemetry::stanza_in(&el);
    // RFC 6120 §8.1.2.1: the server stamps the full JID; a client-supplied from is replaced.
    el.set_attr("from", s.full.clone());
    if let Some(StanzaKind::Iq(iq_type)) = StanzaKind::of(&el) {
        let request = iq_type.is_some_and(IqType::is_request);
        if el.attr("id").is_none() || iq_type.is_none() || (request && el.children().count() != 1) {
            let err = StanzaError::new(Condition::BadRequest)
                .with_text("an iq needs an id, a type, and one payload for get/set");
            if let Some(mut reply) = err.reply_to(&el) {
                reply.remove_attr("from");
                return s.send(conn, &reply).await;
            }
            return Ok(());
        }
        let to_self = el
            .attr("to")
            .is_none_or(|t| t.eq_ignore_ascii_case(&s.host.domain));
        // The legacy session iq (RFC 3921 §3) is a no-op the 2008 client needs.
        if to_self && iq_type == Some(IqType::Set) && el.get_child("session", ns::SESSION).is_some()
        {
            let mut reply = iq_result(&el);
            reply.remove_attr("from");
            return s.send(conn, &reply).await;
        }
    }
    // The hooks (IM: blocking, the user's own roster, blocklist and vCard, presence),
    // then routing.
    s.host_now(&shared.router);
    let flow = s.host.hooks.client_sent(s.client(), el).await;
    match flow {
        Flow::Pass(el) => shared.router.route(el).await,
        Flow::Done => {}
        Flow::Reply(reply) => return s.send(conn, &reply).await,
        Flow::Refuse(el, err) => {
            if let Some(mut reply) = err.reply_to(&el) {
                reply.remove_attr("from");
                return s.send(conn, &reply).await;
            }
        }
    }
    Ok(())
}

/// XEP-0198 nonzas: `<enable/>`, `<r/>`, `<a/>`.
async fn stream_management(
    shared: &Arc<Clients>,
    conn: &mut Conn<TlsStream<TcpStream>>,
    s: &mut Session,
    el: &Element,
) -> Result<(), Fail> {
    match (el.name(), s.sm.as_mut()) {
        ("enable", None) => {
            let resume = matches!(el.attr("resume"), Some("true" | "1"));
            let id = resume.then(|| {
                let mut raw = [0u8; 18];
                rand::rng().fill_bytes(&mut raw);
                B64.encode(raw).replace(['+', '/'], "x")
            });
            let answer = match &id {
                Some(id) => format!(
                    "<enabled xmlns='urn:xmpp:sm:3' id='{id}' resume='true' max='{}'/>",
                    shared.limits().resume_timeout_secs
                ),
                None => "<enabled xmlns='urn:xmpp:sm:3'/>".to_owned(),
            };
            s.sm = Some(crate::sm::Sm::new(id));
            conn.write_raw(answer.as_bytes()).await
        }
        ("enable", Some(_)) => {
            conn.write_raw(
                b"<failed xmlns='urn:xmpp:sm:3'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>",
            )
            .await
        }
        ("r", Some(sm)) => {
            let answer = format!("<a xmlns='urn:xmpp:sm:3' h='{}'/>", sm.inbound);
            conn.write_raw(answer.as_bytes()).await
        }
        ("a", Some(sm)) => {
            let h = el.attr("h").and_then(|h| h.parse::<u32>().ok());
            match h.map(|h| sm.ack(h)) {
                Some(Ok(())) => Ok(()),
                // XEP-0198 §4: a count that was never sent ends the stream.
                _ => Err(stream_err(C::UndefinedCondition, "handled-count-too-high")),
            }
        }
        _ => Err(stream_err(
            C::UnsupportedStanzaType,
            "stream management is not enabled",
        )),
    }
}
