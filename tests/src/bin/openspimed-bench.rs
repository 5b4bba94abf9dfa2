//! Load generator for openspimed: starts the release binary on loopback, drives it over
//! real TLS and prints figures (and writes them as JSON).
//!
//! ```sh
//! cargo build --release -p openspimed -p openspimed-tests
//! target/release/openspimed-bench idle --sessions 10000
//! target/release/openspimed-bench messages --sessions 100 --seconds 10
//! ```
//!
//! Runs are bounded in count and time and target 127.0.0.1 only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openspimed::storage::AccountStore;
use openspimed::storage::sqlite::SqliteStore;
use openspimed_module_api::{Element, ns};
use openspimed_tests::{Got, Raw};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const PASSWORD: &str = "bench-password";

struct Server {
    child: Child,
    c2s: SocketAddr,
    tls: Arc<ClientConfig>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("OPENSPIMED_BIN") {
        return p.into();
    }
    let me = std::env::current_exe().expect("own path");
    me.with_file_name("openspimed")
}

async fn start_server(accounts: usize) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = openspimed_certs::DevCa::new("bench CA").expect("ca");
    let (cert, key) = ca.issue(&["localhost"]).expect("leaf");
    std::fs::write(dir.path().join("c.pem"), cert).unwrap();
    std::fs::write(dir.path().join("k.pem"), key).unwrap();
    let data = dir.path().join("data");
    let store = SqliteStore::open(&data.join("openspimed.sqlite")).expect("store");
    let creds = openspimed::sasl::derive_credentials(PASSWORD, 4096);
    for i in 0..accounts {
        store
            .create_account(&format!("u{i}"), "localhost", &creds)
            .await
            .expect("account");
    }
    drop(store);
    let cfg = dir.path().join("bench.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[log]\nlevel = \"warn,openspimed::server=info\"\n\
             [listeners]\nc2s = [\"127.0.0.1:0\"]\nc2s_direct_tls = []\n\
             [limits]\nmax_connections = 1000000\n\
             [hosts.localhost]\ncertificate = \"c.pem\"\nkey = \"k.pem\"\n",
            data.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(server_binary())
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start openspimed (build it with cargo build --release first)");
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let c2s = loop {
        line.clear();
        if err.read_line(&mut line).unwrap() == 0 {
            panic!("server exited");
        }
        if let Some(a) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
        {
            break a.parse().unwrap();
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while err.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    Server {
        child,
        c2s,
        tls,
        _dir: dir,
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

type Session = Raw<tokio_rustls::client::TlsStream<TcpStream>>;

async fn login(server: &Server, user: &str, resource: &str) -> Session {
    let mut raw = Raw::connect(server.c2s).await;
    raw.open("localhost").await;
    let mut raw = raw.starttls(server.tls.clone()).await;
    raw.open("localhost").await;
    let ok = raw.auth_plain(user, PASSWORD).await;
    assert!(ok.is("success", ns::SASL), "{ok}");
    raw.restart();
    raw.open("localhost").await;
    raw.bind(resource).await;
    raw
}

async fn idle(sessions: usize) -> serde_like::Json {
    let accounts = sessions.div_ceil(100).max(1);
    let server = start_server(accounts).await;
    let pid = server.child.id();
    let server = Arc::new(server);
    // One warm-up session so the baseline includes TLS and allocator set-up.
    let warm = login(&server, "u0", "warm").await;
    let before = rss_kib(pid);
    let start = Instant::now();
    let gate = Arc::new(Semaphore::new(64));
    let mut handles = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let server = server.clone();
        let gate = gate.clone();
        handles.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            login(&server, &format!("u{}", i / 100), &format!("r{i}")).await
        }));
    }
    let mut open = Vec::with_capacity(sessions);
    for h in handles {
        open.push(h.await.unwrap());
    }
    let took = start.elapsed();
    // Let the server return per-handshake scratch memory before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / sessions as f64;
    println!("idle: {sessions} authenticated TLS sessions (logged in in {took:.1?})");
    println!(
        "server RSS: {before} KiB before, {after} KiB after: {:.1} KiB per session",
        per / 1024.0
    );
    drop(open);
    drop(warm);
    serde_like::Json::obj(&[
        ("scenario", "\"idle\"".into()),
        ("sessions", sessions.to_string()),
        ("rss_before_kib", before.to_string()),
        ("rss_after_kib", after.to_string()),
        ("bytes_per_session", format!("{per:.0}")),
    ])
}

async fn messages(sessions: usize, seconds: u64, window: u64) -> serde_like::Json {
    let sessions = sessions.max(2) & !1;
    let server = start_server(sessions).await;
    let pid = server.child.id();
    let mut clients = Vec::new();
    for i in 0..sessions {
        clients.push(login(&server, &format!("u{i}"), "bench").await);
    }
    let received: Arc<Vec<AtomicU64>> =
        Arc::new((0..sessions).map(|_| AtomicU64::new(0)).collect());
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let epoch = Instant::now();
    let stop_at = epoch + Duration::from_secs(seconds);
    let cpu0 = cpu_seconds(pid);
    let mut tasks = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let peer = i ^ 1;
        let (mut rd, mut wr) = tokio::io::split(client.io);
        let counts = received.clone();
        let lat = latencies.clone();
        // Reader: counts messages and samples their one-way latency from the id.
        tasks.push(tokio::spawn(async move {
            let mut parser = openspimed::xml::StreamParser::new(openspimed::xml::Limits::default());
            // The session's stream is already open: feed the parser a header first.
            let mut hdr: &[u8] = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";
            let _ = parser.next(&mut hdr);
            let mut buf = vec![0u8; 16384];
            let mut local = Vec::new();
            let mut n_seen = 0u64;
            loop {
                let n = match tokio::time::timeout_at(
                    (stop_at + Duration::from_secs(2)).into(),
                    rd.read(&mut buf),
                )
                .await
                {
                    Ok(Ok(n)) if n > 0 => n,
                    _ => break,
                };
                let mut slice = &buf[..n];
                while let Ok(Some(ev)) = parser.next(&mut slice) {
                    let openspimed::xml::StreamEvent::Element(e) = ev else {
                        continue;
                    };
                    if e.name() != "message" {
                        continue;
                    }
                    counts[i].fetch_add(1, Ordering::Relaxed);
                    n_seen += 1;
                    let sent_at = e.attr("id").and_then(|v| v.parse::<u64>().ok());
                    if let (true, Some(t)) = (n_seen.is_multiple_of(16), sent_at) {
                        let now = epoch.elapsed().as_nanos() as u64;
                        local.push(now.saturating_sub(t));
                    }
                }
            }
            lat.lock().unwrap().extend(local);
        }));
        let counts = received.clone();
        // Writer: keeps at most `window` of its messages unreceived by the peer.
        tasks.push(tokio::spawn(async move {
            let to = format!("u{peer}@localhost/bench");
            let mut sent = 0u64;
            let mut out = Vec::with_capacity(8192);
            while Instant::now() < stop_at {
                let inflight = sent - counts[peer].load(Ordering::Relaxed).min(sent);
                let room = window.saturating_sub(inflight).min(32);
                if room == 0 {
                    tokio::task::yield_now().await;
                    continue;
                }
                out.clear();
                for _ in 0..room {
                    let id = epoch.elapsed().as_nanos() as u64;
                    Element::new("message", ns::CLIENT)
                        .with_attr("to", to.clone())
                        .with_attr("id", id.to_string())
                        .with_attr("type", "chat")
                        .with_child(
                            Element::new("body", ns::CLIENT)
                                .with_text("a benchmark message of some sixty bytes of text"),
                        )
                        .write_to(&mut out, ns::CLIENT);
                }
                if wr.write_all(&out).await.is_err() {
                    break;
                }
                sent += room;
            }
        }));
    }
    let mut last = 0;
    for s in 1..=seconds {
        tokio::time::sleep_until((epoch + Duration::from_secs(s)).into()).await;
        let total: u64 = received.iter().map(|r| r.load(Ordering::Relaxed)).sum();
        eprintln!("  t={s}s delivered/s={}", total - last);
        last = total;
    }
    let cpu = cpu_seconds(pid) - cpu0;
    let total: u64 = received.iter().map(|r| r.load(Ordering::Relaxed)).sum();
    for t in tasks {
        let _ = t.await;
    }
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        lat[((lat.len() as f64 - 1.0) * p) as usize] as f64 / 1e6
    };
    let rate = total as f64 / seconds as f64;
    println!("messages: {sessions} sessions, {seconds} s, window {window} per sender");
    println!(
        "delivered {total} ({rate:.0}/s), server CPU {cpu:.2} s ({:.0} messages per CPU-second)",
        total as f64 / cpu.max(1e-9)
    );
    println!(
        "one-way latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        pct(0.5),
        pct(0.99),
        pct(0.999)
    );
    serde_like::Json::obj(&[
        ("scenario", "\"messages\"".into()),
        ("sessions", sessions.to_string()),
        ("seconds", seconds.to_string()),
        ("delivered", total.to_string()),
        ("delivered_per_second", format!("{rate:.0}")),
        ("server_cpu_seconds", format!("{cpu:.3}")),
        ("latency_p50_ms", format!("{:.3}", pct(0.5))),
        ("latency_p99_ms", format!("{:.3}", pct(0.99))),
        ("latency_p999_ms", format!("{:.3}", pct(0.999))),
    ])
}

/// Just enough JSON output without a serializer dependency.
mod serde_like {
    pub struct Json(pub String);
    impl Json {
        pub fn obj(fields: &[(&str, String)]) -> Json {
            let body: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("\"{k}\": {v}"))
                .collect();
            Json(format!("{{{}}}", body.join(", ")))
        }
    }
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let scenario = args.get(1).cloned().unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let json = rt.block_on(async {
        match scenario.as_str() {
            "idle" => idle(arg(&args, "--sessions", 10_000) as usize).await,
            "messages" => {
                messages(
                    arg(&args, "--sessions", 100) as usize,
                    arg(&args, "--seconds", 10).min(600),
                    arg(&args, "--window", 64),
                )
                .await
            }
            _ => {
                eprintln!("usage: openspimed-bench idle [--sessions N] | messages [--sessions N] [--seconds S] [--window W]");
                std::process::exit(2);
            }
        }
    });
    let out = format!("bench-{scenario}.json");
    std::fs::write(&out, &json.0).unwrap();
    println!("wrote {out}");
    let _ = Got::Eof; // the harness's types are shared with the tests
}
