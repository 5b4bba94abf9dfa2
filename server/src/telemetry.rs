//! Prometheus metrics: the process-wide recorder (histograms with buckets, not summaries),
//! the metric names in one place, and a minimal `/metrics` HTTP endpoint.
//!
//! Names follow Prometheus conventions: `openspimed_` prefix, base units, `_total` for
//! counters, low-cardinality labels (never a JID).

use std::net::SocketAddr;
use std::sync::OnceLock;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Connections accepted, by listener (`c2s`, `c2s_direct_tls`).
pub const CONNECTIONS_ACCEPTED: &str = "openspimed_connections_accepted_total";
/// Connections refused at accept (`max_connections`).
pub const CONNECTIONS_REFUSED: &str = "openspimed_connections_refused_total";
/// TLS handshakes by result.
pub const TLS_HANDSHAKES: &str = "openspimed_tls_handshakes_total";
/// SASL authentications by mechanism and result.
pub const SASL_AUTHENTICATIONS: &str = "openspimed_sasl_authentications_total";
/// Bound sessions, by kind and host.
pub const SESSIONS: &str = "openspimed_sessions";
/// Stanzas received from clients and remote servers, by kind and type.
pub const STANZAS_IN: &str = "openspimed_stanzas_received_total";
/// Stanzas written to clients and remote servers, by kind.
pub const STANZAS_OUT: &str = "openspimed_stanzas_sent_total";
/// Stanza errors generated, by condition.
pub const STANZA_ERRORS: &str = "openspimed_stanza_errors_total";
/// Stream errors sent, by condition.
pub const STREAM_ERRORS: &str = "openspimed_stream_errors_total";
/// Time to route one stanza (including the module handling it).
pub const ROUTING_SECONDS: &str = "openspimed_routing_duration_seconds";
/// Bytes read from clients.
pub const BYTES_IN: &str = "openspimed_received_bytes_total";
/// Bytes written to clients.
pub const BYTES_OUT: &str = "openspimed_sent_bytes_total";
/// Storage operation latency, by operation (`read`, `write`).
pub const STORAGE_SECONDS: &str = "openspimed_storage_operation_duration_seconds";
/// Stanzas waiting in outgoing server-to-server queues (all remote domains together: a
/// domain is not a label, to keep cardinality low).
pub const S2S_QUEUED: &str = "openspimed_s2s_queued_stanzas";
/// Server-to-server authentications, by direction (`in`, `out`), method (`sasl_external`,
/// `dialback`, `none`) and result.
pub const S2S_AUTHENTICATIONS: &str = "openspimed_s2s_authentications_total";
/// When each host's certificate expires (Unix time, seconds; base units per Prometheus).
pub const CERT_EXPIRY: &str = "openspimed_certificate_expiry_timestamp_seconds";

/// Values of the `kind` label of [`STANZAS_IN`] and [`STANZAS_OUT`].
const STANZA_KINDS: [&str; 4] = ["message", "presence", "iq", "other"];

/// Values of the `type` label of [`STANZAS_IN`] (a fixed set: never what a client wrote).
const STANZA_TYPES: [&str; 16] = [
    "chat",
    "normal",
    "headline",
    "groupchat",
    "error",
    "get",
    "set",
    "result",
    "unavailable",
    "subscribe",
    "subscribed",
    "unsubscribe",
    "unsubscribed",
    "probe",
    "none",
    "other",
];

// Handles of the series every stanza touches, registered on first use. `counter!` with
// labels builds, hashes and looks up a key on each call; under the `messages` benchmark
// that was ~4% of the server's CPU (perf: `register_counter`, `register_histogram`).
// They are first used after `handle()` installed the recorder (`server::start` calls it
// before anything is routed), so they never hold a no-op handle.
static IN: [OnceLock<Counter>; STANZA_KINDS.len() * STANZA_TYPES.len()] =
    [const { OnceLock::new() }; STANZA_KINDS.len() * STANZA_TYPES.len()];
static OUT: [OnceLock<Counter>; STANZA_KINDS.len()] =
    [const { OnceLock::new() }; STANZA_KINDS.len()];
static BYTES_IN_TOTAL: OnceLock<Counter> = OnceLock::new();
static BYTES_OUT_TOTAL: OnceLock<Counter> = OnceLock::new();
static ROUTING: OnceLock<Histogram> = OnceLock::new();

fn kind_index(name: &str, iq_otherwise: bool) -> usize {
    match name {
        "message" => 0,
        "presence" => 1,
        "iq" => 2,
        _ if iq_otherwise => 2,
        _ => 3,
    }
}

/// Counts a stanza received from a client or server ([`STANZAS_IN`], by kind and type).
pub fn stanza_in(el: &openspimed_module_api::Element) {
    let kind = kind_index(el.name(), true);
    let stype = match el.attr("type") {
        None => STANZA_TYPES.len() - 2,
        Some(t) => STANZA_TYPES[..STANZA_TYPES.len() - 2]
            .iter()
            .position(|k| *k == t)
            .unwrap_or(STANZA_TYPES.len() - 1),
    };
    if let Some(slot) = IN.get(kind * STANZA_TYPES.len() + stype) {
        slot.get_or_init(|| {
            metrics::counter!(STANZAS_IN, "kind" => STANZA_KINDS[kind], "type" => STANZA_TYPES[stype])
        })
        .increment(1);
    }
}

/// Counts a stanza written to a client or server ([`STANZAS_OUT`], by kind).
pub fn stanza_out(name: &str) {
    let kind = kind_index(name, false);
    if let Some(slot) = OUT.get(kind) {
        slot.get_or_init(|| metrics::counter!(STANZAS_OUT, "kind" => STANZA_KINDS[kind]))
            .increment(1);
    }
}

/// Counts bytes read from a peer ([`BYTES_IN`]).
pub fn bytes_in(n: usize) {
    BYTES_IN_TOTAL
        .get_or_init(|| metrics::counter!(BYTES_IN))
        .increment(n as u64);
}

/// Counts bytes written to a peer ([`BYTES_OUT`]).
pub fn bytes_out(n: usize) {
    BYTES_OUT_TOTAL
        .get_or_init(|| metrics::counter!(BYTES_OUT))
        .increment(n as u64);
}

/// The `operation` label of [`STORAGE_SECONDS`].
#[derive(Clone, Copy, Debug)]
pub enum StorageOp {
    /// A read on the shared reader connection.
    Read = 0,
    /// A write through the group-commit writer (until durable).
    Write = 1,
}

static STORAGE: [OnceLock<Histogram>; 2] = [const { OnceLock::new() }; 2];

/// Records how long a storage operation took ([`STORAGE_SECONDS`]).
pub fn storage_took(op: StorageOp, d: std::time::Duration) {
    let label = match op {
        StorageOp::Read => "read",
        StorageOp::Write => "write",
    };
    if let Some(slot) = STORAGE.get(op as usize) {
        slot.get_or_init(|| metrics::histogram!(STORAGE_SECONDS, "operation" => label))
            .record(d.as_secs_f64());
    }
}

/// Records how long routing one stanza took ([`ROUTING_SECONDS`]).
pub fn routing_took(d: std::time::Duration) {
    ROUTING
        .get_or_init(|| metrics::histogram!(ROUTING_SECONDS))
        .record(d.as_secs_f64());
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder's handle, installing the recorder on first use.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let latency = [
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5,
        ];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // A recorder installed elsewhere (another library) wins; ours still renders.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        CONNECTIONS_ACCEPTED,
        "Client connections accepted, by listener."
    );
    describe_counter!(CONNECTIONS_REFUSED, "Client connections refused at accept.");
    describe_counter!(TLS_HANDSHAKES, "TLS handshakes, by result.");
    describe_counter!(
        SASL_AUTHENTICATIONS,
        "SASL authentications, by mechanism and result."
    );
    describe_gauge!(SESSIONS, "Bound sessions, by kind and host.");
    describe_counter!(
        STANZAS_IN,
        "Stanzas received from clients, by kind and type."
    );
    describe_counter!(
        STANZAS_OUT,
        "Stanzas written to clients and remote servers, by kind."
    );
    describe_gauge!(
        S2S_QUEUED,
        "Stanzas waiting in outgoing server-to-server queues."
    );
    describe_counter!(
        S2S_AUTHENTICATIONS,
        "Server-to-server authentications, by direction, method and result."
    );
    describe_counter!(STANZA_ERRORS, "Stanza errors generated, by condition.");
    describe_counter!(STREAM_ERRORS, "Stream errors sent, by condition.");
    describe_histogram!(
        ROUTING_SECONDS,
        metrics::Unit::Seconds,
        "Time to route one stanza."
    );
    describe_counter!(BYTES_IN, metrics::Unit::Bytes, "Bytes read from clients.");
    describe_counter!(BYTES_OUT, metrics::Unit::Bytes, "Bytes written to clients.");
    describe_histogram!(
        STORAGE_SECONDS,
        metrics::Unit::Seconds,
        "Storage operation latency."
    );
    describe_gauge!(
        CERT_EXPIRY,
        metrics::Unit::Seconds,
        "When a host's certificate expires (Unix time)."
    );
}

/// Folds the histogram samples recorded since the last scrape into their buckets every
/// few seconds, until `shutdown`. The recorder keeps raw samples until then: without this,
/// a server nobody scrapes (or with `/metrics` off) would grow by every sample it records.
pub async fn upkeep(shutdown: CancellationToken) {
    let handle = handle();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

/// Serves `GET /metrics` on `addr` until `shutdown`; returns the bound address.
pub async fn serve(addr: SocketAddr, shutdown: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let handle = handle();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                // Read the request head (small; anything longer is not a scrape).
                while n < buf.len() {
                    match sock.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if head.starts_with("GET /metrics ") {
                    ("200 OK", handle.render())
                } else {
                    ("404 Not Found", "not found\n".to_owned())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(local)
}
