//! Outgoing server-to-server connections: one link per (local domain, remote domain).
//!
//! A link resolves the remote domain, connects (STARTTLS or direct TLS), checks the remote
//! certificate, authenticates with SASL EXTERNAL whenever the remote server offers it
//! (XEP-0178), else with Server Dialback when policy allows (XEP-0220), and then writes its
//! queue until it has been idle for `idle_timeout_secs`. The same connection set-up serves
//! the receiving side of dialback, which asks the authoritative server with `<db:verify/>`.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use openspimed_certs::peer::{DeferredServerVerifier, FixedClientCert};
use openspimed_module_api::{Condition, Element, ns};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::resolve::{ResolveError, Target};
use super::{S2s, dialback};
use crate::error::StreamErrorCondition as C;
use crate::stream::{Conn, Fail, stream_err};
use crate::telemetry;
use crate::xml::{Limits, StreamEvent, StreamHeader};

/// Why an outgoing connection could not be set up; logged, and mapped to the bounce
/// condition by [`SetupError::condition`].
#[derive(Debug, thiserror::Error)]
pub(super) enum SetupError {
    /// No address for the domain.
    #[error("{0}")]
    Resolve(#[from] ResolveError),
    /// TCP connect failed.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// The peer broke the protocol or closed the stream.
    #[error("stream failed: {0}")]
    Stream(String),
    /// Authentication was refused or not possible under our policy.
    #[error("{0}")]
    Refused(String),
    /// `connect_timeout_secs` ran out.
    #[error("timed out")]
    Timeout,
    /// The server is shutting down.
    #[error("shutting down")]
    Shutdown,
}

impl SetupError {
    /// The stanza error queued stanzas bounce with (RFC 6120 §8.3.3.15–16).
    pub(super) fn condition(&self) -> Condition {
        match self {
            SetupError::Timeout => Condition::RemoteServerTimeout,
            _ => Condition::RemoteServerNotFound,
        }
    }
}

impl From<Fail> for SetupError {
    fn from(f: Fail) -> Self {
        match f {
            Fail::Stream(e) => SetupError::Stream(format!(
                "{}{}",
                e.condition.as_str(),
                e.text.map(|t| format!(": {t}")).unwrap_or_default()
            )),
            Fail::Closed => SetupError::Stream("connection closed".into()),
        }
    }
}

/// A secured stream to a remote server, before authentication.
pub(super) struct Secured {
    /// The stream (our header sent, theirs and their features read).
    pub(super) conn: Conn<TlsStream<TcpStream>>,
    /// The features the remote server offered on the secured stream.
    pub(super) features: Element,
    /// Whether its certificate is valid for the remote domain, and why not.
    pub(super) certificate: Result<(), String>,
    /// The remote domain's stream id (dialback keys are bound to it).
    pub(super) stream_id: String,
}

/// Runs one link until it has been idle long enough, its connection broke, or set-up
/// failed (then everything queued bounces).
pub(super) async fn run(
    s2s: Arc<S2s>,
    local: String,
    remote: String,
    id: u64,
    mut rx: mpsc::Receiver<Element>,
) {
    let setup = tokio::select! {
        _ = s2s.shutdown.cancelled() => Err(SetupError::Shutdown),
        r = tokio::time::timeout(s2s.connect_timeout(), establish(&s2s, &local, &remote)) => {
            r.unwrap_or(Err(SetupError::Timeout))
        }
    };
    let conn = match setup {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(%local, %remote, error = %e, "outgoing s2s connection failed; bouncing queued stanzas");
            s2s.link_ended(&local, &remote, id);
            rx.close();
            let text = format!("cannot reach {remote}");
            while let Some(st) = rx.recv().await {
                metrics::gauge!(telemetry::S2S_QUEUED).decrement(1.0);
                s2s.bounce(&st, e.condition(), &text).await;
            }
            return;
        }
    };
    tracing::info!(%local, %remote, "outgoing s2s link established");
    session(&s2s, conn, &mut rx, &local).await;
    s2s.link_ended(&local, &remote, id);
    rx.close();
    // Whatever arrived meanwhile goes through a new link.
    while let Some(st) = rx.recv().await {
        metrics::gauge!(telemetry::S2S_QUEUED).decrement(1.0);
        if let Err((st, _)) = s2s.send(st) {
            s2s.bounce(&st, Condition::RemoteServerTimeout, "link lost")
                .await;
        }
    }
}

/// Writes queued stanzas until idle, broken or shut down.
async fn session(
    s2s: &S2s,
    mut conn: Conn<TlsStream<TcpStream>>,
    rx: &mut mpsc::Receiver<Element>,
    local: &str,
) {
    let sessions =
        metrics::gauge!(telemetry::SESSIONS, "kind" => "s2s_out", "host" => local.to_owned());
    sessions.increment(1.0);
    conn.shrink();
    let idle = s2s.idle_timeout();
    let why = loop {
        tokio::select! {
            biased;
            _ = s2s.shutdown.cancelled() => break stream_err(C::SystemShutdown, "server shutting down"),
            st = rx.recv() => {
                let Some(st) = st else { break Fail::Closed };
                metrics::gauge!(telemetry::S2S_QUEUED).decrement(1.0);
                conn.queue(&st);
                for _ in 0..64 {
                    match rx.try_recv() {
                        Ok(st) => {
                            metrics::gauge!(telemetry::S2S_QUEUED).decrement(1.0);
                            conn.queue(&st);
                        }
                        Err(_) => break,
                    }
                }
                if let Err(f) = conn.flush_queued().await {
                    break f;
                }
            }
            ev = tokio::time::timeout(idle, conn.next_event()) => match ev {
                // Idle: close politely (RFC 6120 §4.4).
                Err(_) => break Fail::Closed,
                Ok(Err(f)) => break f,
                Ok(Ok(StreamEvent::Element(el))) => {
                    // Streams are one-way without XEP-0288; only errors are expected here.
                    if el.is("error", ns::STREAM) {
                        tracing::info!(%el, "remote server ended the stream");
                        break Fail::Closed;
                    }
                    tracing::debug!(name = el.name(), "ignoring an element on an outgoing stream");
                }
                Ok(Ok(_)) => break Fail::Closed,
            },
        }
    };
    sessions.decrement(1.0);
    conn.close(why).await;
}

/// Connects, secures and authenticates a link for stanzas from `local` to `remote`.
async fn establish(
    s2s: &S2s,
    local: &str,
    remote: &str,
) -> Result<Conn<TlsStream<TcpStream>>, SetupError> {
    let sec = connect(s2s, local, remote).await?;
    let result = authenticate(s2s, sec, local, remote).await;
    let (method, outcome) = match &result {
        Ok((m, _)) => (*m, "success"),
        Err(_) => ("none", "failure"),
    };
    metrics::counter!(telemetry::S2S_AUTHENTICATIONS, "direction" => "out", "method" => method, "result" => outcome)
        .increment(1);
    result.map(|(_, c)| c)
}

async fn authenticate(
    s2s: &S2s,
    sec: Secured,
    local: &str,
    remote: &str,
) -> Result<(&'static str, Conn<TlsStream<TcpStream>>), SetupError> {
    let Secured {
        mut conn,
        features,
        certificate,
        stream_id,
    } = sec;
    // Policy first: a remote domain whose certificate does not validate is only talked to
    // when dialback may be used with it.
    if let Err(why) = &certificate
        && !s2s.dialback_allowed(remote)
    {
        return Err(SetupError::Refused(format!(
            "{why}, and dialback is not allowed for {remote}"
        )));
    }
    // SASL EXTERNAL whenever it is offered, as Prosody and ejabberd do: whether the
    // receiving server accepts our certificate is for it to say, not for what we think of
    // its own. A refusal falls back to dialback.
    let external = features
        .get_child("mechanisms", ns::SASL)
        .is_some_and(|m| m.children().any(|c| c.text().trim() == "EXTERNAL"));
    if external {
        // XEP-0178 §4: the authorization identity is our domain.
        conn.write_raw(
            format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{}</auth>",
                B64.encode(local)
            )
            .as_bytes(),
        )
        .await?;
        let answer = next_element(&mut conn, s2s).await?;
        if answer.is("success", ns::SASL) {
            conn.restart(conn_limits(s2s));
            conn.send_initial_header(remote).await?;
            expect_header(&mut conn, s2s).await?;
            expect_features(&mut conn, s2s).await?;
            return Ok(("sasl_external", conn));
        }
        tracing::info!(%remote, %answer, "SASL EXTERNAL refused; trying dialback");
    }
    // XEP-0220 §2.1.1: the key is bound to the receiving server's stream id.
    let key = s2s.secret.key(remote, local, &stream_id);
    conn.write_raw(&dialback::to_wire(
        &Element::new("result", dialback::NS)
            .with_attr("from", local)
            .with_attr("to", remote)
            .with_text(key),
    ))
    .await?;
    loop {
        let el = next_element(&mut conn, s2s).await?;
        if !el.is("result", dialback::NS) {
            continue;
        }
        return match el.attr("type") {
            Some("valid") => Ok(("dialback", conn)),
            other => Err(SetupError::Refused(format!(
                "{remote} refused dialback ({})",
                other.unwrap_or("no type")
            ))),
        };
    }
}

/// The receiving side of dialback: asks the authoritative server for `remote` whether
/// `key` is the one it generated for the stream `stream_id` it opened to us (`local`).
pub(super) async fn verify_key(
    s2s: &S2s,
    local: &str,
    remote: &str,
    stream_id: &str,
    key: &str,
) -> Result<bool, SetupError> {
    let work = async {
        let mut sec = connect(s2s, local, remote).await?;
        sec.conn
            .write_raw(&dialback::to_wire(
                &Element::new("verify", dialback::NS)
                    .with_attr("from", local)
                    .with_attr("to", remote)
                    .with_attr("id", stream_id)
                    .with_text(key),
            ))
            .await?;
        loop {
            let el = next_element(&mut sec.conn, s2s).await?;
            if el.is("verify", dialback::NS) && el.attr("id") == Some(stream_id) {
                let valid = el.attr("type") == Some("valid");
                sec.conn.close(Fail::Closed).await;
                return Ok(valid);
            }
        }
    };
    tokio::time::timeout(s2s.connect_timeout(), work)
        .await
        .unwrap_or(Err(SetupError::Timeout))
}

/// Resolves `remote` and tries its addresses in order until one gives a secured stream.
async fn connect(s2s: &S2s, local: &str, remote: &str) -> Result<Secured, SetupError> {
    let targets = s2s.resolver.resolve(remote).await?;
    let mut last = SetupError::Refused(format!("no address for {remote}"));
    for t in targets {
        match attempt(s2s, local, remote, &t).await {
            Ok(s) => return Ok(s),
            Err(e) => {
                tracing::debug!(%remote, addr = %t.addr, error = %e, "s2s connection attempt failed");
                last = e;
            }
        }
    }
    Err(last)
}

fn conn_limits(s2s: &S2s) -> Limits {
    s2s.limits(Limits::default())
}

async fn attempt(
    s2s: &S2s,
    local: &str,
    remote: &str,
    target: &Target,
) -> Result<Secured, SetupError> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .map_err(SetupError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let tls = if target.direct_tls {
        tls_connect(s2s, local, remote, tcp, Some(b"xmpp-server")).await?
    } else {
        let mut plain = Conn::new(tcp, conn_limits(s2s), local.to_owned(), ns::SERVER);
        plain.send_initial_header(remote).await?;
        expect_header(&mut plain, s2s).await?;
        let features = expect_features(&mut plain, s2s).await?;
        if features.get_child("starttls", ns::TLS).is_none() {
            return Err(SetupError::Refused(format!(
                "{remote} does not offer STARTTLS"
            )));
        }
        plain
            .write_raw(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await?;
        let answer = next_element(&mut plain, s2s).await?;
        if !answer.is("proceed", ns::TLS) {
            return Err(SetupError::Refused(format!("{remote} refused STARTTLS")));
        }
        tls_connect(s2s, local, remote, plain.io, None).await?
    };
    let certificate = match tls.get_ref().1.peer_certificates() {
        Some(chain) => s2s.peers.check(chain, remote),
        None => Err("no certificate presented".to_owned()),
    };
    let mut conn = Conn::new(tls, conn_limits(s2s), local.to_owned(), ns::SERVER);
    conn.send_initial_header(remote).await?;
    let header = expect_header(&mut conn, s2s).await?;
    let features = expect_features(&mut conn, s2s).await?;
    Ok(Secured {
        conn,
        features,
        certificate,
        stream_id: header.id.unwrap_or_default(),
    })
}

async fn tls_connect(
    s2s: &S2s,
    local: &str,
    remote: &str,
    tcp: TcpStream,
    alpn: Option<&[u8]>,
) -> Result<TlsStream<TcpStream>, SetupError> {
    let tls_err = |e: String| SetupError::Tls(std::io::Error::other(e));
    let builder = ClientConfig::builder_with_provider(s2s.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| tls_err(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(DeferredServerVerifier::new(&s2s.provider));
    let mut config = match s2s.certs.lookup(Some(local)) {
        Some(cert) => builder.with_client_cert_resolver(Arc::new(FixedClientCert(cert))),
        None => builder.with_no_client_auth(),
    };
    if let Some(a) = alpn {
        config.alpn_protocols = vec![a.to_vec()];
    }
    let name = ServerName::try_from(remote.to_owned()).map_err(|e| tls_err(e.to_string()))?;
    let result = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(SetupError::Tls);
    let outcome = if result.is_ok() { "ok" } else { "failed" };
    metrics::counter!(telemetry::TLS_HANDSHAKES, "result" => outcome).increment(1);
    result
}

async fn next_event<S>(conn: &mut Conn<S>, s2s: &S2s) -> Result<StreamEvent, SetupError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::select! {
        _ = s2s.shutdown.cancelled() => Err(SetupError::Shutdown),
        ev = conn.next_event() => Ok(ev?),
    }
}

async fn next_element<S>(conn: &mut Conn<S>, s2s: &S2s) -> Result<Element, SetupError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match next_event(conn, s2s).await? {
        StreamEvent::Element(el) if el.is("error", ns::STREAM) => {
            let cond = el
                .children()
                .find(|c| c.ns() == ns::XMPP_STREAMS && c.name() != "text")
                .map(|c| c.name().to_owned())
                .unwrap_or_default();
            Err(SetupError::Stream(format!("stream error {cond}")))
        }
        StreamEvent::Element(el) => Ok(el),
        StreamEvent::Header(_) => Err(SetupError::Stream("unexpected stream header".into())),
        StreamEvent::Close => Err(SetupError::Stream("stream closed".into())),
    }
}

async fn expect_header<S>(conn: &mut Conn<S>, s2s: &S2s) -> Result<StreamHeader, SetupError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match next_event(conn, s2s).await? {
        StreamEvent::Header(h) => Ok(h),
        _ => Err(SetupError::Stream("expected a stream header".into())),
    }
}

async fn expect_features<S>(conn: &mut Conn<S>, s2s: &S2s) -> Result<Element, SetupError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let el = next_element(conn, s2s).await?;
    if el.is("features", ns::STREAM) {
        Ok(el)
    } else {
        Err(SetupError::Stream(format!(
            "expected features, got <{}>",
            el.name()
        )))
    }
}
