//! One XML stream over one transport (RFC 6120 §4), for every kind of connection.
//!
//! [`Conn`] is the only code that reads and writes a socket: it feeds bytes to the
//! sans-IO [`StreamParser`], writes stream headers, stanzas and stream errors, and
//! restarts streams. c2s and s2s differ only in the content namespace they speak.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use openspimed_module_api::{Element, ns};
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::core::shared::Shared;
use crate::error::{StreamError, StreamErrorCondition as C};
use crate::telemetry;
use crate::xml::{Limits, StreamEvent, StreamHeader, StreamParser};

/// How a connection ends: with a stream error we must send, or just closed.
#[derive(Debug)]
pub(crate) enum Fail {
    /// Send this stream error, close the stream and the socket.
    Stream(StreamError),
    /// The peer went away (EOF, I/O error, `</stream:stream>` answered).
    Closed,
}

impl From<StreamError> for Fail {
    fn from(e: StreamError) -> Self {
        Fail::Stream(e)
    }
}

/// A stream error with an explanation, as a [`Fail`].
pub(crate) fn stream_err(c: C, text: &str) -> Fail {
    Fail::Stream(StreamError::with_text(c, text))
}

/// Read buffer while reads fill it (a peer sending a burst or large stanzas).
const READ_BUF: usize = 4096;
/// Read buffer while the peer is quiet: an idle session holds this much, not [`READ_BUF`].
const READ_BUF_QUIET: usize = 512;

/// One XML stream over one transport: the only code that reads and writes the socket.
pub(crate) struct Conn<S> {
    /// The transport (TCP before STARTTLS, TLS after).
    pub(crate) io: S,
    /// Bytes read but not yet parsed: `rbuf[start..end]`. [`READ_BUF_QUIET`] long while the
    /// peer sends little, [`READ_BUF`] while reads fill it.
    rbuf: Box<[u8]>,
    /// How many bytes the last read returned, to size the buffer for the next one.
    last_read: usize,
    /// Start of unparsed bytes.
    start: usize,
    /// End of valid bytes.
    end: usize,
    /// Parser for the current stream (replaced on restart).
    parser: StreamParser,
    /// Serialization buffer, reused.
    wbuf: Vec<u8>,
    /// Whether our stream header went out (a stream error must follow a header).
    header_sent: bool,
    /// The domain we speak as (`from` of our header).
    pub(crate) domain: String,
    /// `jabber:client` or `jabber:server`: the default namespace of our stream header and
    /// of the stanzas we write.
    content_ns: &'static str,
    /// The id of the last stream header we sent as the responding side (dialback keys are
    /// bound to it, XEP-0220 §2.1.1).
    pub(crate) stream_id: String,
    /// Limits for the parser of every (re)started stream.
    limits: Limits,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// A stream speaking `content_ns` as `domain`, parsed with `limits`.
    pub(crate) fn new(io: S, limits: Limits, domain: String, content_ns: &'static str) -> Self {
        Conn {
            io,
            rbuf: vec![0u8; READ_BUF_QUIET].into_boxed_slice(),
            last_read: 0,
            start: 0,
            end: 0,
            parser: StreamParser::new(limits),
            wbuf: Vec::with_capacity(512),
            header_sent: false,
            domain,
            content_ns,
            stream_id: String::new(),
            limits,
        }
    }

    /// Starts a new stream after STARTTLS or SASL (RFC 6120 §4.3.3): a fresh parser, and
    /// nothing the peer sent before counts. `limits` may have been reloaded meanwhile.
    pub(crate) fn restart(&mut self, limits: Limits) {
        self.limits = limits;
        self.parser = StreamParser::new(limits);
        self.start = 0;
        self.end = 0;
        self.header_sent = false;
    }

    /// The next stream event, or why the stream ends. Cancel-safe: the only await is the
    /// socket read.
    pub(crate) async fn next_event(&mut self) -> Result<StreamEvent, Fail> {
        loop {
            let mut pending = &self.rbuf[self.start..self.end];
            let res = self.parser.next(&mut pending);
            self.start = self.end - pending.len();
            match res {
                Ok(Some(ev)) => return Ok(ev),
                Ok(None) => {
                    self.start = 0;
                    self.end = 0;
                    // Between stanzas nothing is half-parsed: give scratch memory back
                    // while the connection waits (most sessions are idle most of the time).
                    self.parser.release_temporaries();
                }
                Err(e) => return Err(Fail::Stream(StreamError::with_text(e.condition, e.text))),
            }
            // Everything read is parsed here (start == end == 0): the buffer may be resized.
            // A read that filled it means more is coming; a short one, a quiet peer.
            if self.last_read == self.rbuf.len() && self.rbuf.len() < READ_BUF {
                self.rbuf = vec![0u8; READ_BUF].into_boxed_slice();
            } else if self.last_read < READ_BUF_QUIET && self.rbuf.len() > READ_BUF_QUIET {
                self.rbuf = vec![0u8; READ_BUF_QUIET].into_boxed_slice();
            }
            let n = self
                .io
                .read(&mut self.rbuf)
                .await
                .map_err(|_| Fail::Closed)?;
            if n == 0 {
                return Err(Fail::Closed);
            }
            telemetry::bytes_in(n);
            self.last_read = n;
            self.end = n;
        }
    }

    /// [`Conn::next_event`] bounded by a deadline and the server's shutdown.
    pub(crate) async fn next_event_within(
        &mut self,
        shared: &Shared,
        limit: Duration,
    ) -> Result<StreamEvent, Fail> {
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => Err(stream_err(C::SystemShutdown, "server shutting down")),
            r = tokio::time::timeout(limit, self.next_event()) => match r {
                Ok(r) => r,
                Err(_) => Err(stream_err(C::ConnectionTimeout, "no activity")),
            },
        }
    }

    /// Answers a peer's stream header with ours (RFC 6120 §4.7), with a fresh stream id.
    pub(crate) async fn send_header(&mut self, header: &StreamHeader) -> Result<(), Fail> {
        let mut id = [0u8; 12];
        rand::rng().fill_bytes(&mut id);
        self.stream_id = B64.encode(id);
        let mut out = self.header_start();
        out.push_str(&format!(" id='{}' from='{}'", self.stream_id, self.domain));
        if let Some(from) = &header.from {
            // Echo the peer's address back as `to` (RFC 6120 §4.7.2), escaped.
            out.push_str(&escaped_attr("to", from));
        }
        out.push('>');
        self.header_sent = true;
        self.write_raw(out.as_bytes()).await
    }

    /// Opens a stream as the initiating side, from our domain to `to` (RFC 6120 §4.2).
    pub(crate) async fn send_initial_header(&mut self, to: &str) -> Result<(), Fail> {
        let mut out = self.header_start();
        out.push_str(&escaped_attr("from", &self.domain.clone()));
        out.push_str(&escaped_attr("to", to));
        out.push('>');
        self.header_sent = true;
        self.write_raw(out.as_bytes()).await
    }

    fn header_start(&self) -> String {
        let dialback = if self.content_ns == ns::SERVER {
            " xmlns:db='jabber:server:dialback'"
        } else {
            ""
        };
        format!(
            "<?xml version='1.0'?><stream:stream xmlns='{}'{dialback} \
             xmlns:stream='http://etherx.jabber.org/streams' version='1.0' xml:lang='en'",
            self.content_ns
        )
    }

    /// Writes bytes as they are (negotiation elements) and flushes.
    pub(crate) async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), Fail> {
        telemetry::bytes_out(bytes.len());
        self.io.write_all(bytes).await.map_err(|_| Fail::Closed)?;
        self.io.flush().await.map_err(|_| Fail::Closed)
    }

    /// Serializes elements into the write buffer without sending.
    pub(crate) fn queue(&mut self, el: &Element) {
        telemetry::stanza_out(el.name());
        el.write_stanza_to(&mut self.wbuf, self.content_ns);
    }

    /// Buffers bytes as they are (a nonza such as an XEP-0198 request) without sending.
    pub(crate) fn queue_raw(&mut self, bytes: &[u8]) {
        self.wbuf.extend_from_slice(bytes);
    }

    /// Sends what [`Conn::queue`] buffered.
    pub(crate) async fn flush_queued(&mut self) -> Result<(), Fail> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        telemetry::bytes_out(self.wbuf.len());
        let res = self.io.write_all(&self.wbuf).await;
        self.wbuf.clear();
        if self.wbuf.capacity() > 64 * 1024 {
            self.wbuf = Vec::with_capacity(512);
        }
        res.map_err(|_| Fail::Closed)?;
        self.io.flush().await.map_err(|_| Fail::Closed)
    }

    /// Returns write-buffer memory after negotiation (the session loop grows it on demand).
    pub(crate) fn shrink(&mut self) {
        self.wbuf = Vec::new();
    }

    /// Writes one element and flushes.
    pub(crate) async fn send(&mut self, el: &Element) -> Result<(), Fail> {
        self.queue(el);
        self.flush_queued().await
    }

    /// Ends the stream: stream error if any (after a header, as RFC 6120 §4.9.1.1 wants),
    /// closing tag, then the socket.
    pub(crate) async fn close(mut self, why: Fail) {
        let mut out = Vec::new();
        if let Fail::Stream(err) = &why {
            if !self.header_sent {
                let _ = self.send_header(&StreamHeader::default()).await;
            }
            tracing::debug!(condition = err.condition.as_str(), text = ?err.text, "stream error");
            metrics::counter!(telemetry::STREAM_ERRORS, "condition" => err.condition.as_str())
                .increment(1);
            out.extend_from_slice(&err.to_bytes());
        }
        if self.header_sent {
            out.extend_from_slice(b"</stream:stream>");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.io.write_all(&out).await;
            let _ = self.io.flush().await;
            let _ = self.io.shutdown().await;
        })
        .await;
    }
}

/// ` name='value'` with the value escaped.
fn escaped_attr(name: &str, value: &str) -> String {
    let mut esc = Vec::new();
    Element::new("x", "")
        .with_attr(name, value)
        .write_to(&mut esc, "");
    let esc = String::from_utf8_lossy(&esc);
    esc.strip_prefix("<x")
        .and_then(|s| s.strip_suffix("/>"))
        .unwrap_or_default()
        .to_owned()
}
