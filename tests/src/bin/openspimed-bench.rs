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
//!
//! `login`, `idle` and `messages` also run against a server already listening (Prosody,
//! ejabberd, another openspimed; `tests/bench/compare.sh` does that):
//! `--target 127.0.0.1:5222 --domain bench.example --pid PID --ca ca.pem [--register]`
//! (`--register` creates the accounts `u0`, `u1`, … by in-band registration first).
//! `--mech SCRAM-SHA-1` (default) or `PLAIN` picks the login mechanism. Client sockets are
//! spread over 127.0.0.1, 127.0.0.2, … every `--per-address` connections (default 20,000).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openspimed::storage::AccountStore;
use openspimed::storage::sqlite::SqliteStore;
use openspimed_mod_scopenode::store::{SensorData, SensorEntry};
use openspimed_module_api::{Element, ns};
use openspimed_tests::{Got, Raw};
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const PASSWORD: &str = "bench-password";

/// The server under test: one this tool started, or one given with `--target`.
struct Server {
    /// The server process when this tool started it.
    child: Option<Child>,
    /// Its process id, for RSS and CPU time from /proc.
    pid: u32,
    /// Its STARTTLS c2s address.
    c2s: SocketAddr,
    /// Trusting its certificate.
    tls: Arc<ClientConfig>,
    /// The domain accounts live on.
    domain: String,
    /// The started server's directory.
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `--target` and friends: a server this tool did not start.
struct External {
    /// c2s STARTTLS address.
    c2s: SocketAddr,
    /// The domain.
    domain: String,
    /// The server's process id.
    pid: u32,
    /// PEM file of the CA (or self-signed certificate) to trust.
    ca: PathBuf,
    /// Create the accounts by in-band registration first.
    register: bool,
}

static EXTERNAL: std::sync::OnceLock<Option<External>> = std::sync::OnceLock::new();
/// The SASL mechanism logins use.
static MECH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
/// `--disable m1,m2`: modules the started server's host goes without (`modules_disabled`),
/// to measure what one costs (`--disable mam`: messages without archiving).
static DISABLED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

fn external() -> Option<&'static External> {
    EXTERNAL.get().and_then(|e| e.as_ref())
}

/// Connections opened so far, to pick their local address.
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
/// Connections per local loopback address (`--per-address`, default 20,000: well under the
/// ~28,000 ephemeral ports of one).
static PER_LOCAL_ADDRESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// The local address for the next connection: 127.0.0.1 for the first `--per-address`, then
/// 127.0.0.2 and so on (every 127/8 address is loopback on Linux), so runs with more sessions
/// than one address has ports still connect.
fn next_local_address(server: SocketAddr) -> std::net::IpAddr {
    let per = PER_LOCAL_ADDRESS.get().copied().unwrap_or(20_000).max(1);
    let n = CONNECTIONS.fetch_add(1, Ordering::Relaxed) / per;
    match server.ip() {
        std::net::IpAddr::V4(v4) if v4.is_loopback() => std::net::IpAddr::V4(
            std::net::Ipv4Addr::new(127, 0, (n / 250) as u8, (n % 250) as u8 + 1),
        ),
        other => {
            if other.is_ipv4() {
                std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            } else {
                std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            }
        }
    }
}

/// A new connection with STARTTLS done and the secured stream opened.
async fn secured(server: &Server) -> Session {
    let mut raw = Raw::connect_from(server.c2s, next_local_address(server.c2s)).await;
    raw.open(&server.domain).await;
    let mut raw = raw.starttls_as(server.tls.clone(), &server.domain).await;
    raw.open(&server.domain).await;
    raw
}

/// Creates `user` by XEP-0077 in-band registration (an existing account is fine).
async fn register(server: &Server, user: &str) {
    let mut raw = secured(server).await;
    raw.send(&format!(
        "<iq type='set' id='reg'><query xmlns='jabber:iq:register'>\
         <username>{user}</username><password>{PASSWORD}</password></query></iq>"
    ))
    .await;
    let answer = raw.stanza("iq").await;
    let ok = answer.attr("type") == Some("result")
        || answer
            .get_child("error", ns::CLIENT)
            .is_some_and(|e| e.get_child("conflict", ns::XMPP_STANZAS).is_some());
    assert!(ok, "registering {user}: {answer}");
}

fn server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("OPENSPIMED_BIN") {
        return p.into();
    }
    let me = std::env::current_exe().expect("own path");
    me.with_file_name("openspimed")
}

async fn start_server(accounts: usize) -> Server {
    start_server_with(accounts, |_| async {}).await
}

async fn start_server_with<F, Fut>(accounts: usize, prepare: F) -> Server
where
    F: FnOnce(SqliteStore) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if let Some(e) = external() {
        let pem = std::fs::read_to_string(&e.ca).expect("--ca file");
        let server = Server {
            child: None,
            pid: e.pid,
            c2s: e.c2s,
            tls: openspimed_tests::client_tls_config(&pem, None),
            domain: e.domain.clone(),
            _dir: None,
        };
        if e.register {
            let server = Arc::new(server);
            let gate = Arc::new(Semaphore::new(16));
            let mut hs = Vec::new();
            for i in 0..accounts {
                let (server, gate) = (server.clone(), gate.clone());
                hs.push(tokio::spawn(async move {
                    let _p = gate.acquire().await.unwrap();
                    register(&server, &format!("u{i}")).await;
                }));
            }
            for h in hs {
                h.await.unwrap();
            }
            eprintln!("registered {accounts} accounts");
            return Arc::into_inner(server).expect("no other references");
        }
        return server;
    }
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
    prepare(store).await;
    let cfg = dir.path().join("bench.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[log]\nlevel = \"warn,openspimed::server=info\"\n[metrics]\nenabled = false\n\
             [listeners]\nc2s = [\"127.0.0.1:0\"]\nc2s_direct_tls = []\n\
             [limits]\nmax_connections = 1000000\n\
             [hosts.localhost]\ncertificate = \"c.pem\"\nkey = \"k.pem\"\nmodules_disabled = [{}]\n",
            data.display(),
            DISABLED
                .get()
                .map(|d| d.iter().map(|m| format!("\"{m}\"")).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(server_binary());
    cmd.args(["--config", cfg.to_str().unwrap(), "run"]);
    let (child, c2s) = openspimed_tests::spawn_server(cmd);
    let tls = openspimed_tests::client_tls_config(&ca.cert_pem, None);
    Server {
        pid: child.id(),
        child: Some(child),
        c2s,
        tls,
        domain: "localhost".into(),
        _dir: Some(dir),
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
    let d = &server.domain;
    let mut raw = secured(server).await;
    let ok = match MECH.get().map(String::as_str).unwrap_or("SCRAM-SHA-1") {
        "PLAIN" => raw.auth_plain(user, PASSWORD).await,
        _ => auth_scram_sha1(&mut raw, user).await,
    };
    assert!(ok.is("success", ns::SASL), "{ok}");
    raw.restart();
    raw.open(d).await;
    raw.bind(resource).await;
    raw
}

/// Salted passwords by (account, salt, iterations), as clients keep them between logins.
type SaltedPasswords = std::collections::HashMap<(String, Vec<u8>, u32), [u8; 20]>;
static SALTED: std::sync::LazyLock<std::sync::Mutex<SaltedPasswords>> =
    std::sync::LazyLock::new(Default::default);

fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    use hmac::{Hmac, Mac};
    let mut m = <Hmac<sha1::Sha1> as Mac>::new_from_slice(key).expect("any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// SaltedPassword (RFC 5802 §3): PBKDF2-HMAC-SHA-1, one block.
fn salted_password(salt: &[u8], iterations: u32) -> [u8; 20] {
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac_sha1(PASSWORD.as_bytes(), &block);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac_sha1(PASSWORD.as_bytes(), &u);
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

/// SCRAM-SHA-1 (RFC 5802), the strongest mechanism that openspimed, Prosody and ejabberd
/// all offer without channel binding. Like a real client it keeps the salted password of
/// an account after its first login, so a login costs what it costs the server rather than
/// 4,096 PBKDF2 rounds in this generator. The server's signature is checked.
async fn auth_scram_sha1(raw: &mut Session, user: &str) -> Element {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    use sha1::Digest;
    let nonce = format!("{:032x}", rand10::random::<u128>());
    let first_bare = format!("n={user},r={nonce}");
    raw.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>{}</auth>",
        B64.encode(format!("n,,{first_bare}"))
    ))
    .await;
    let el = raw.element().await;
    if !el.is("challenge", ns::SASL) {
        return el;
    }
    let server_first =
        String::from_utf8(B64.decode(el.text().trim()).expect("base64")).expect("utf-8");
    let field = |k: &str| {
        server_first
            .split(',')
            .find_map(|f| f.strip_prefix(k))
            .map(str::to_owned)
    };
    let combined = field("r=").expect("nonce");
    let salt = B64.decode(field("s=").expect("salt")).expect("salt base64");
    let iterations: u32 = field("i=")
        .and_then(|i| i.parse().ok())
        .expect("iterations");
    let key = (user.to_owned(), salt.clone(), iterations);
    let cached = SALTED.lock().unwrap().get(&key).copied();
    let salted = cached.unwrap_or_else(|| {
        let s = salted_password(&salt, iterations);
        SALTED.lock().unwrap().insert(key, s);
        s
    });
    let final_bare = format!("c=biws,r={combined}");
    let auth_message = format!("{first_bare},{server_first},{final_bare}");
    let client_key = hmac_sha1(&salted, b"Client Key");
    let stored_key: [u8; 20] = sha1::Sha1::digest(client_key).into();
    let signature = hmac_sha1(&stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(signature)
        .map(|(a, b)| a ^ b)
        .collect();
    raw.send(&format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        B64.encode(format!("{final_bare},p={}", B64.encode(proof)))
    ))
    .await;
    let el = raw.element().await;
    if el.is("success", ns::SASL) {
        let server_key = hmac_sha1(&salted, b"Server Key");
        let want = format!(
            "v={}",
            B64.encode(hmac_sha1(&server_key, auth_message.as_bytes()))
        );
        let got =
            String::from_utf8(B64.decode(el.text().trim()).unwrap_or_default()).unwrap_or_default();
        assert_eq!(got, want, "the server proved it knows the password");
    }
    el
}

/// `login`: `count` new TLS + SASL + bind sessions, `concurrency` at a time; rate and
/// latency percentiles of whole logins.
async fn logins(count: usize, concurrency: usize) -> serde_like::Json {
    // Returning users: each account logs in again and again (its client keeps the salted
    // password), one login per account at a time.
    let accounts = concurrency.clamp(1, count.max(1));
    let server = Arc::new(start_server(accounts).await);
    // Each account logs in once first (the client derives and keeps its salted password).
    for a in 0..accounts {
        drop(login(&server, &format!("u{a}"), "warm").await);
    }
    let cpu0 = cpu_seconds(server.pid);
    let start = Instant::now();
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut hs = Vec::with_capacity(count);
    for i in 0..count {
        let (server, gate) = (server.clone(), gate.clone());
        hs.push(tokio::spawn(async move {
            let _p = gate.acquire().await.unwrap();
            let t = Instant::now();
            let s = login(&server, &format!("u{}", i % accounts), &format!("l{i}")).await;
            let took = t.elapsed().as_secs_f64() * 1000.0;
            drop(s);
            took
        }));
    }
    let mut lat = Vec::with_capacity(count);
    for h in hs {
        lat.push(h.await.unwrap());
    }
    let took = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server.pid) - cpu0;
    lat.sort_by(f64::total_cmp);
    let rate = count as f64 / took;
    let mech = MECH.get().cloned().unwrap_or_else(|| "SCRAM-SHA-1".into());
    println!("login: {count} TLS + {mech} + bind sessions, {concurrency} at a time");
    println!(
        "{rate:.0} logins/s; latency p50 {:.1} ms, p99 {:.1} ms; server CPU {cpu:.2} s",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    serde_like::Json::obj(&[
        ("scenario", "\"login\"".into()),
        ("logins", count.to_string()),
        ("logins_per_second", format!("{rate:.0}")),
        ("latency_p50_ms", format!("{:.2}", percentile(&lat, 0.5))),
        ("latency_p99_ms", format!("{:.2}", percentile(&lat, 0.99))),
        ("server_cpu_seconds", format!("{cpu:.3}")),
    ])
}

async fn idle(sessions: usize) -> serde_like::Json {
    // One account per session: Prosody and ejabberd limit sessions per account.
    let accounts = sessions.max(1);
    let server = start_server(accounts).await;
    let pid = server.pid;
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
            login(&server, &format!("u{i}"), "idle").await
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

async fn messages(
    sessions: usize,
    seconds: u64,
    window: u64,
    offered: u64,
    echo: bool,
) -> serde_like::Json {
    // Round trips (`--echo`, with `--rate`): each receiver sends every message straight back
    // (id prefixed with `e`) and the original sender measures the round trip.
    let echo = echo && offered > 0;
    let sessions = sessions.max(2) & !1;
    let server = start_server(sessions).await;
    let pid = server.pid;
    let domain = server.domain.clone();
    let mut clients = Vec::new();
    for i in 0..sessions {
        clients.push(login(&server, &format!("u{i}"), "bench").await);
    }
    let received: Arc<Vec<AtomicU64>> =
        Arc::new((0..sessions).map(|_| AtomicU64::new(0)).collect());
    let wakes: Arc<Vec<tokio::sync::Notify>> =
        Arc::new((0..sessions).map(|_| tokio::sync::Notify::new()).collect());
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
        let reader_wakes = wakes.clone();
        let (echo_tx, mut echo_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        // Reader: counts messages and samples their one-way latency from the id (or, with
        // echoes, the round trip of this session's own messages when they come back).
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
                    if let Some(t) = e
                        .attr("id")
                        .and_then(|v| v.strip_prefix('e'))
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        let now = epoch.elapsed().as_nanos() as u64;
                        local.push(now.saturating_sub(t));
                        continue;
                    }
                    if echo && let Some(id) = e.attr("id") {
                        let _ = echo_tx.send(id.to_owned());
                    }
                    counts[i].fetch_add(1, Ordering::Relaxed);
                    // The message came from the peer: its writer may send again.
                    reader_wakes[peer].notify_one();
                    n_seen += 1;
                    let sent_at = e.attr("id").and_then(|v| v.parse::<u64>().ok());
                    if let (false, true, Some(t)) = (echo, n_seen.is_multiple_of(16), sent_at) {
                        let now = epoch.elapsed().as_nanos() as u64;
                        local.push(now.saturating_sub(t));
                    }
                }
            }
            lat.lock().unwrap().extend(local);
        }));
        let counts = received.clone();
        let wakes = wakes.clone();
        let domain = domain.clone();
        // Writer: keeps at most `window` of its messages unreceived by the peer.
        tasks.push(tokio::spawn(async move {
            let wake = &wakes[i];
            let to = format!("u{peer}@{domain}/bench");
            let mut sent = 0u64;
            let mut out = Vec::with_capacity(8192);
            // Open loop (`--rate`): this writer's share of the rate, each message at its
            // scheduled time whatever the answers do (no coordinated omission); writers are
            // spread over the interval so the load is smooth.
            let per_writer = offered as f64 / sessions as f64;
            let phase = i as f64 / sessions as f64;
            while Instant::now() < stop_at {
                let room = if offered > 0 {
                    let due_at =
                        epoch + Duration::from_secs_f64((sent as f64 + phase) / per_writer);
                    // Echoes go back as soon as they are due, between scheduled sends.
                    let sleep = tokio::time::sleep_until(due_at.into());
                    tokio::pin!(sleep);
                    let mut echoed = false;
                    loop {
                        tokio::select! {
                            _ = &mut sleep => break,
                            Some(id) = echo_rx.recv() => {
                                out.clear();
                                let mut ids = vec![id];
                                while let Ok(more) = echo_rx.try_recv() {
                                    ids.push(more);
                                }
                                for id in ids {
                                    Element::new("message", ns::CLIENT)
                                        .with_attr("to", to.clone())
                                        .with_attr("id", format!("e{id}"))
                                        .with_attr("type", "chat")
                                        .with_child(Element::new("body", ns::CLIENT).with_text("echo"))
                                        .write_to(&mut out, ns::CLIENT);
                                }
                                if wr.write_all(&out).await.is_err() {
                                    echoed = true;
                                    break;
                                }
                            }
                        }
                    }
                    if echoed {
                        break;
                    }
                    let due = (epoch.elapsed().as_secs_f64() * per_writer - phase) as u64 + 1;
                    due.saturating_sub(sent).min(1000)
                } else {
                    let inflight = sent - counts[peer].load(Ordering::Relaxed).min(sent);
                    window.saturating_sub(inflight).min(32)
                };
                if offered > 0 && room == 0 {
                    continue;
                }
                if room == 0 {
                    // Wait for an answer to free a slot (no spinning: the load generator
                    // shares the machine with the server).
                    let _ = tokio::time::timeout_at(stop_at.into(), wake.notified()).await;
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
    if echo {
        println!(
            "messages: {sessions} sessions, {seconds} s, open loop at {offered}/s, each echoed back (round trips)"
        );
    } else if offered > 0 {
        println!("messages: {sessions} sessions, {seconds} s, open loop at {offered}/s");
    } else {
        println!("messages: {sessions} sessions, {seconds} s, window {window} per sender");
    }
    println!(
        "delivered {total} ({rate:.0}/s), server CPU {cpu:.2} s ({:.0} messages per CPU-second)",
        total as f64 / cpu.max(1e-9)
    );
    println!(
        "{} latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        if echo { "round-trip" } else { "one-way" },
        pct(0.5),
        pct(0.99),
        pct(0.999)
    );
    serde_like::Json::obj(&[
        ("scenario", "\"messages\"".into()),
        ("sessions", sessions.to_string()),
        ("seconds", seconds.to_string()),
        ("offered_rate", offered.to_string()),
        ("round_trip", echo.to_string()),
        ("delivered", total.to_string()),
        ("delivered_per_second", format!("{rate:.0}")),
        ("server_cpu_seconds", format!("{cpu:.3}")),
        ("latency_p50_ms", format!("{:.3}", pct(0.5))),
        ("latency_p99_ms", format!("{:.3}", pct(0.99))),
        ("latency_p999_ms", format!("{:.3}", pct(0.999))),
    ])
}

const PUBSUB_NS: &str = "http://jabber.org/protocol/pubsub";

/// Sends one iq and waits for its answer, skipping other stanzas.
async fn call(s: &mut Session, iq: &str) -> Element {
    s.send(iq).await;
    let id_start = iq.find("id='").map(|i| i + 4).unwrap_or(0);
    let id = &iq[id_start
        ..iq[id_start..]
            .find('\'')
            .map(|e| id_start + e)
            .unwrap_or(id_start)];
    loop {
        let e = s.stanza("iq").await;
        if e.attr("id") == Some(id) {
            return e;
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// One publish fanned out to `subscribers` sessions: time until the last one has it.
async fn pubsub_fanout(subscribers: usize, publishes: usize) -> serde_like::Json {
    let server = start_server(subscribers.div_ceil(100) + 1).await;
    let publisher_user = format!("u{}", subscribers.div_ceil(100));
    let mut publisher = login(&server, &publisher_user, "pub").await;
    let r = call(&mut publisher, &format!(
        "<iq type='set' id='c' to='pubsub.localhost'><pubsub xmlns='{PUBSUB_NS}'><create node='bench'/></pubsub></iq>"
    )).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let mut subs = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let user = format!("u{}", i / 100);
        let mut s = login(&server, &user, &format!("r{i}")).await;
        let r = call(&mut s, &format!(
            "<iq type='set' id='s' to='pubsub.localhost'><pubsub xmlns='{PUBSUB_NS}'><subscribe node='bench' jid='{user}@localhost/r{i}'/></pubsub></iq>"
        )).await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        subs.push(s);
    }
    let mut readers = Vec::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    for (i, mut s) in subs.into_iter().enumerate() {
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            for n in 0..publishes {
                let m = s.stanza("message").await;
                let _ = m;
                let _ = tx.send((n, Instant::now()));
            }
            let _ = i;
        }));
    }
    let mut latencies = Vec::new();
    for n in 0..publishes {
        let start = Instant::now();
        publisher.send(&format!(
            "<iq type='set' id='p{n}' to='pubsub.localhost'><pubsub xmlns='{PUBSUB_NS}'><publish node='bench'>\
             <item id='i{n}'><entry xmlns='urn:bench'>payload {n}</entry></item></publish></pubsub></iq>"
        )).await;
        let mut got = 0;
        let mut last = start;
        while got < subscribers {
            let (k, at) = rx.recv().await.expect("readers alive");
            if k == n {
                got += 1;
                last = last.max(at);
            }
        }
        latencies.push((last - start).as_secs_f64() * 1000.0);
    }
    for r in readers {
        let _ = r.await;
    }
    latencies.sort_by(f64::total_cmp);
    let (p50, max) = (percentile(&latencies, 0.5), percentile(&latencies, 1.0));
    println!("pubsub-fanout: one publish to {subscribers} subscribers, {publishes} publishes");
    println!("time until the last subscriber has it: p50 {p50:.1} ms, max {max:.1} ms");
    serde_like::Json::obj(&[
        ("scenario", "\"pubsub-fanout\"".into()),
        ("subscribers", subscribers.to_string()),
        ("fanout_p50_ms", format!("{p50:.2}")),
        ("fanout_max_ms", format!("{max:.2}")),
    ])
}

/// XEP-0045 fan-out: one group message to a room of `occupants` (the sender among them;
/// each its own session, a hundred per account, entering with no history), `messages`
/// times; the time from the message sent to the last occupant having it.
async fn muc_fanout(occupants: usize, messages: usize) -> serde_like::Json {
    let room = "bench@conference.localhost";
    let total = occupants;
    let occupants = total.saturating_sub(1).max(1);
    let server = start_server(occupants.div_ceil(100) + 1).await;
    let sender_user = format!("u{}", occupants.div_ceil(100));
    let mut sender = login(&server, &sender_user, "send").await;
    sender
        .send(&format!(
            "<presence to='{room}/sender'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        ))
        .await;
    sender.stanza("message").await; // the subject ends the entering
    let r = call(&mut sender, &format!(
        "<iq type='set' id='cfg' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'>\
         <x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_maxusers'><value>0</value></field></x></query></iq>"
    )).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut readers = Vec::new();
    let start_join = Instant::now();
    for i in 0..occupants {
        let user = format!("u{}", i / 100);
        let mut s = login(&server, &user, &format!("r{i}")).await;
        s.send(&format!(
            "<presence to='{room}/n{i}'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>"
        ))
        .await;
        loop {
            let m = s.stanza("message").await;
            if m.get_child("subject", ns::CLIENT).is_some() {
                break;
            }
        }
        // From here on a reader drains what the room sends (the presences of those who
        // enter after) and reports each benchmark message.
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            let mut seen = 0;
            while seen < messages {
                let m = s.stanza("message").await;
                let Some(n) = m.get_child("body", ns::CLIENT).and_then(|b| {
                    b.text()
                        .strip_prefix("fan")
                        .and_then(|n| n.parse::<usize>().ok())
                }) else {
                    continue;
                };
                seen += 1;
                let _ = tx.send((n, Instant::now()));
            }
        }));
    }
    println!(
        "{occupants} occupants entered in {:.1?}",
        start_join.elapsed()
    );
    // The sender's own copies come back too; it reads them off its socket.
    let mut latencies = Vec::new();
    for n in 0..messages {
        let start = Instant::now();
        sender
            .send(&format!(
                "<message to='{room}' type='groupchat' id='f{n}'><body>fan{n}</body></message>"
            ))
            .await;
        let mut got = 0;
        let mut last = start;
        while got < occupants {
            let (k, at) = rx.recv().await.expect("readers alive");
            if k == n {
                got += 1;
                last = last.max(at);
            }
        }
        loop {
            let m = sender.stanza("message").await;
            if m.get_child("body", ns::CLIENT)
                .is_some_and(|b| b.text() == format!("fan{n}"))
            {
                break;
            }
        }
        latencies.push((last - start).as_secs_f64() * 1000.0);
    }
    for r in readers {
        let _ = r.await;
    }
    latencies.sort_by(f64::total_cmp);
    let (p50, max) = (percentile(&latencies, 0.5), percentile(&latencies, 1.0));
    println!("muc-fanout: one group message to a room of {total} occupants, {messages} messages");
    println!("time until the last occupant has it: p50 {p50:.1} ms, max {max:.1} ms");
    serde_like::Json::obj(&[
        ("scenario", "\"muc-fanout\"".into()),
        ("occupants", total.to_string()),
        ("fanout_p50_ms", format!("{p50:.2}")),
        ("fanout_max_ms", format!("{max:.2}")),
    ])
}

/// Durable publishes per second to a node with one subscriber, `window` in flight per
/// publisher session.
async fn publish_rate(publishers: usize, seconds: u64, window: usize) -> serde_like::Json {
    let server = start_server(publishers + 1).await;
    let mut owner = login(&server, "u0", "owner").await;
    call(&mut owner, &format!(
        "<iq type='set' id='c' to='pubsub.localhost'><pubsub xmlns='{PUBSUB_NS}'><create node='rate'/></pubsub></iq>"
    )).await;
    let mut subscriber = login(&server, &format!("u{publishers}"), "sub").await;
    call(&mut subscriber, &format!(
        "<iq type='set' id='s' to='pubsub.localhost'><pubsub xmlns='{PUBSUB_NS}'><subscribe node='rate' jid='u{publishers}@localhost/sub'/></pubsub></iq>"
    )).await;
    // Publishers need the publisher affiliation.
    for i in 1..publishers.max(1) {
        call(&mut owner, &format!(
            "<iq type='set' id='a{i}' to='pubsub.localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'>\
             <affiliations node='rate'><affiliation jid='u{i}@localhost' affiliation='publisher'/></affiliations></pubsub></iq>"
        )).await;
    }
    let mut sessions = vec![owner];
    for i in 1..publishers.max(1) {
        sessions.push(login(&server, &format!("u{i}"), "pub").await);
    }
    let stop_at = Instant::now() + Duration::from_secs(seconds);
    let acked = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let d2 = delivered.clone();
    let sub_task = tokio::spawn(async move {
        let mut io = subscriber.io;
        let mut messages = TagScanner::new(b"<message ");
        let mut buf = vec![0u8; 16384];
        loop {
            let deadline = (stop_at + Duration::from_secs(3)).into();
            let n = match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => n,
                _ => break,
            };
            messages.feed(&buf[..n], |_| {
                d2.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (p, s) in sessions.into_iter().enumerate() {
        let (acked, errors) = (acked.clone(), errors.clone());
        tasks.push(tokio::spawn(pipeline(s.io, stop_at, window, acked, errors, move |n| {
            format!(
                "<iq type='set' id='p{p}-{n}' to='pubsub.localhost'><pubsub xmlns='{PUBSUB_NS}'><publish node='rate'>\
                 <item id='{p}-{n}'><v xmlns='urn:bench'>{n}</v></item></publish></pubsub></iq>"
            )
        })));
    }
    for t in tasks {
        let _ = t.await;
    }
    let _ = sub_task.await;
    let acked = acked.load(Ordering::Relaxed);
    let rate = acked as f64 / seconds as f64;
    println!("publish: {publishers} publisher session(s), window {window}, {seconds} s");
    println!(
        "{acked} publishes acknowledged after storing ({rate:.0}/s); {} notifications delivered",
        delivered.load(Ordering::Relaxed)
    );
    serde_like::Json::obj(&[
        ("scenario", "\"publish\"".into()),
        ("publishes_per_second", format!("{rate:.0}")),
    ])
}

/// Keeps `window` requests in flight on one session until `stop_at`: `make(n)` writes
/// request `n`; every answer (any top-level element back) frees a slot and is counted in
/// `acked` when it is an iq result, in `errors` otherwise. Returns the stream once every
/// request sent has been answered (or 5 s after `stop_at`), so the next round can use it.
async fn pipeline<S>(
    io: S,
    stop_at: Instant,
    window: usize,
    acked: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    make: impl Fn(u64) -> String,
) -> S
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let give_up = stop_at + Duration::from_secs(5);
    let inflight = Arc::new(AtomicU64::new(0));
    let wake = Arc::new(tokio::sync::Notify::new());
    let finished = Arc::new(tokio::sync::Notify::new());
    let (in2, wake2, finished2) = (inflight.clone(), wake.clone(), finished.clone());
    let reader = tokio::spawn(async move {
        let mut answers = TagScanner::new(b"<iq ");
        let mut buf = vec![0u8; 16384];
        loop {
            let n = tokio::select! {
                r = tokio::time::timeout_at(give_up.into(), rd.read(&mut buf)) => match r {
                    Ok(Ok(n)) if n > 0 => n,
                    _ => break,
                },
                _ = finished2.notified() => break,
            };
            let mut answered = 0;
            answers.feed(&buf[..n], |tag| {
                answered += 1;
                if is_result(tag) {
                    acked.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            });
            if answered > 0 {
                in2.fetch_sub(answered, Ordering::Relaxed);
                wake2.notify_one();
            }
        }
        rd
    });
    let mut n = 0u64;
    let mut out = Vec::new();
    while Instant::now() < stop_at {
        let room = (window as u64).saturating_sub(inflight.load(Ordering::Relaxed));
        if room == 0 {
            // Wait for an answer to free a slot (no spinning: the load generator shares
            // the machine with the server).
            let _ = tokio::time::timeout_at(stop_at.into(), wake.notified()).await;
            continue;
        }
        out.clear();
        for _ in 0..room {
            out.extend_from_slice(make(n).as_bytes());
            n += 1;
        }
        inflight.fetch_add(room, Ordering::Relaxed);
        if wr.write_all(&out).await.is_err() {
            break;
        }
    }
    // Collect the answers still owed, then stop the reader.
    while inflight.load(Ordering::Relaxed) > 0 && Instant::now() < give_up {
        let _ = tokio::time::timeout_at(give_up.into(), wake.notified()).await;
    }
    finished.notify_one();
    let rd = reader.await.expect("the answer reader panicked");
    rd.unsplit(wr)
}

/// Counts the top-level elements of one kind in the bytes a session receives without
/// parsing XML: the load generator shares the two cores with the server, and parsing
/// every answer with the full stream parser cost it about as much as the server spent
/// producing them. Only for the scenarios' own traffic, whose shape is known: answers and
/// notifications carry no nested element of the kind counted. A start tag split between
/// two reads is completed by the next one.
struct TagScanner {
    /// The start of the start tags counted (`<iq `).
    open: &'static [u8],
    /// Bytes not yet scanned: the unfinished end of the last read.
    tail: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether an iq start tag is a result.
fn is_result(tag: &[u8]) -> bool {
    find(tag, b"type='result'").is_some() || find(tag, b"type=\"result\"").is_some()
}

impl TagScanner {
    fn new(open: &'static [u8]) -> TagScanner {
        TagScanner {
            open,
            tail: Vec::new(),
        }
    }

    /// Scans `bytes`; calls `each` with every start tag completed in them.
    fn feed(&mut self, bytes: &[u8], mut each: impl FnMut(&[u8])) {
        self.tail.extend_from_slice(bytes);
        let mut pos = 0;
        loop {
            let Some(at) = find(&self.tail[pos..], self.open) else {
                // Keep what could be the start of a split `open`.
                pos = pos.max(self.tail.len().saturating_sub(self.open.len() - 1));
                break;
            };
            let start = pos + at;
            let Some(len) = self.tail[start..].iter().position(|b| *b == b'>') else {
                pos = start;
                break;
            };
            each(&self.tail[start..start + len]);
            pos = start + len + 1;
        }
        self.tail.drain(..pos);
    }
}

/// The raw RSA-2048 private-operation rate of this machine (one core), for comparison.
fn rsa_private_rate(key: &openspime::RsaPrivateKey, secs: f64) -> f64 {
    use rsa::traits::PublicKeyParts;
    let c =
        rsa::BoxedUint::from_be_slice(&vec![7u8; key.size()], key.n().as_ref().bits_precision())
            .unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let _ = rsa::hazmat::rsa_decrypt_and_check(key, None::<&mut rand10::rngs::ThreadRng>, &c);
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_scanner_counts_start_tags_split_across_reads() {
        let stream = b"<iq xmlns='jabber:client' id='p1' type='result'/><message from='x'><body>a</body></message>\
<iq type=\"error\" id='p2'><error/></iq><iq id='p3' type='result'/>";
        for split in 0..stream.len() {
            let mut iqs = TagScanner::new(b"<iq ");
            let mut messages = TagScanner::new(b"<message ");
            let (mut results, mut others, mut msgs) = (0, 0, 0);
            for part in [&stream[..split], &stream[split..]] {
                iqs.feed(part, |t| {
                    if is_result(t) {
                        results += 1
                    } else {
                        others += 1
                    }
                });
                messages.feed(part, |_| msgs += 1);
            }
            assert_eq!((results, others, msgs), (2, 1, 1), "split at {split}");
        }
    }
}

fn co2_data(ppm: u64) -> Element {
    openspime::Data {
        entries: vec![openspime::Entry {
            fields: vec![
                openspime::Field {
                    name: "date".into(),
                    value: "2008-04-02T17:54:22+01:00".into(),
                    attrs: vec![],
                },
                openspime::Field {
                    name: "ppm".into(),
                    value: format!("{ppm}.5"),
                    attrs: vec![],
                },
            ],
        }],
    }
    .to_element()
}

/// ScopeNode ingest: reports per second stored durably, from `sessions` spimes with
/// `window` reports in flight each.
async fn report_rate(
    sessions: usize,
    seconds: u64,
    window: usize,
    encrypted: bool,
    rounds: usize,
) -> serde_like::Json {
    let server = start_server(sessions).await;
    let spime_key = openspime::crypto::generate_key(2048).unwrap();
    let mut clients = Vec::new();
    let mut containers = Vec::new();
    for i in 0..sessions {
        let mut s = login(&server, &format!("u{i}"), "spime").await;
        let jid = format!("u{i}@localhost/spime");
        let container = if encrypted {
            let publish = openspime::keyinfo::pubkeys(
                &jid,
                &spime_key.to_public_key(),
                openspime::KeyForm::Standard,
            );
            let r = call(
                &mut s,
                &format!("<iq type='set' id='k' to='cert.localhost'>{publish}</iq>"),
            )
            .await;
            assert_eq!(r.attr("type"), Some("result"), "{r}");
            let r = call(&mut s, "<iq type='get' id='nk' to='cert.localhost'><pubkeys xmlns='urn:xmpp:tmp:pubkey' jid='demo@scopenode.localhost'/></iq>").await;
            let (_, node_key) =
                openspime::keyinfo::parse_pubkeys(r.first_child().unwrap()).unwrap();
            openspime::Container::seal(
                co2_data(i as u64),
                Some((&spime_key, "cert.localhost", Some(&jid))),
                None,
                Some(&node_key),
            )
            .unwrap()
        } else {
            openspime::Container::seal(co2_data(i as u64), None, None, None).unwrap()
        };
        containers.push(container.to_element().to_string());
        clients.push(s);
    }
    // This VM's speed drifts by ±15% from second to second (a CPU-only loop shows it), so a
    // raw rate measured once before and once after the load says little about the load in
    // between. The encrypted scenario alternates: raw private operations for a second (the
    // server idle), a round of load, ..., raw again; each round is compared with the raw
    // rates on either side of it.
    let rounds = if encrypted { rounds.max(1) } else { 1 };
    let per_round = Duration::from_secs_f64(seconds as f64 / rounds as f64);
    let pid = server.pid;
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let containers: Vec<Arc<str>> = containers.into_iter().map(Arc::from).collect();
    let mut streams: Vec<_> = clients.into_iter().map(|s| s.io).collect();
    let mut raws = Vec::new();
    // Per round: (reports answered, wall seconds of load, server CPU-seconds).
    let mut measured = Vec::new();
    for _ in 0..rounds {
        if encrypted {
            raws.push(rsa_private_rate(&spime_key, 1.0));
        }
        let (acked0, cpu0, start) = (
            acked.load(Ordering::Relaxed),
            cpu_seconds(pid),
            Instant::now(),
        );
        let stop_at = start + per_round;
        let mut tasks = Vec::new();
        for (c, (io, container)) in streams.drain(..).zip(&containers).enumerate() {
            let (acked, errors, container) = (acked.clone(), errors.clone(), container.clone());
            tasks.push(tokio::spawn(pipeline(io, stop_at, window, acked, errors, move |n| {
                format!("<iq type='set' id='r{c}-{n}' to='demo@scopenode.localhost/co2'>{container}</iq>")
            })));
        }
        for t in tasks {
            streams.push(t.await.expect("a load session panicked"));
        }
        measured.push((
            acked.load(Ordering::Relaxed) - acked0,
            start.elapsed().as_secs_f64(),
            cpu_seconds(pid) - cpu0,
        ));
    }
    if encrypted {
        raws.push(rsa_private_rate(&spime_key, 1.0));
    }
    let total = |f: fn(&(u64, f64, f64)) -> f64| measured.iter().map(f).sum::<f64>();
    let (acked, wall, cpu) = (total(|m| m.0 as f64), total(|m| m.1), total(|m| m.2));
    let rate = acked / wall;
    let kind = if encrypted {
        "encrypted+signed"
    } else {
        "plain"
    };
    println!("report ({kind}): {sessions} spimes, window {window}, {seconds} s of load");
    println!(
        "server CPU {cpu:.2} s: {:.0} reports per server CPU-second",
        acked / cpu.max(1e-9)
    );
    println!(
        "{acked} reports stored and answered ({rate:.0}/s), {} errors",
        errors.load(Ordering::Relaxed)
    );
    let mut fields = vec![
        ("scenario", format!("\"report-{kind}\"")),
        ("reports_per_second", format!("{rate:.0}")),
    ];
    if encrypted {
        for (i, (n, secs, cpu)) in measured.iter().enumerate() {
            let raw = (raws[i] + raws[i + 1]) / 2.0;
            println!(
                "round {}: {:.0} reports/s, {:.0} per server CPU-second; raw {raw:.0}/s on one core: {:.0}% of the machine, {:.0}% per CPU-second",
                i + 1,
                *n as f64 / secs,
                *n as f64 / cpu,
                100.0 * *n as f64 / secs / (2.0 * raw),
                100.0 * *n as f64 / cpu / raw
            );
        }
        let raw = raws.iter().sum::<f64>() / raws.len() as f64;
        println!(
            "raw RSA-2048 private operations on one core, between the rounds: {raw:.0}/s on average; the machine (2 cores): {:.0}% of its rate",
            100.0 * rate / (2.0 * raw)
        );
        println!(
            "reports per server CPU-second / raw private operations per CPU-second: {:.0}%",
            100.0 * (acked / cpu.max(1e-9)) / raw
        );
        fields.push(("rsa_private_ops_per_second_one_core", format!("{raw:.0}")));
    }
    serde_like::Json::obj(&fields)
}

/// A seek for a spime with `mine` stored entries among `total`: time to the answer.
async fn seek_latency(total: u64, mine: u64, rounds: usize) -> serde_like::Json {
    let spime_jid = "u0@localhost/spime";
    let start_fill = Instant::now();
    let server = start_server_with(1, |store| async move {
        let store = SensorData::new(Arc::new(store));
        let mut batch = Vec::with_capacity(20_000);
        for i in 0..total {
            let spime = if i < mine { spime_jid.to_owned() } else { format!("other{}@localhost/spime", i % 5000) };
            batch.push(SensorEntry {
                node: "demo@scopenode.localhost".into(),
                scope: "co2".into(),
                spime,
                at_unix: 1_200_000_000 + i as i64,
                xml: format!("<entry xmlns='openspime:protocol:extension:data'><date>2008</date><ppm>{i}</ppm></entry>"),
            });
            if batch.len() == 20_000 {
                store.append_entries(std::mem::take(&mut batch)).await.unwrap();
            }
        }
        store.append_entries(batch).await.unwrap();
    })
    .await;
    println!(
        "stored {total} entries ({mine} of the sought spime) in {:.1?}",
        start_fill.elapsed()
    );
    let key = openspime::crypto::generate_key(2048).unwrap();
    let mut s = login(&server, "u0", "spime").await;
    let publish = openspime::keyinfo::pubkeys(
        spime_jid,
        &key.to_public_key(),
        openspime::KeyForm::Standard,
    );
    call(
        &mut s,
        &format!("<iq type='set' id='k' to='cert.localhost'>{publish}</iq>"),
    )
    .await;
    let mut times = Vec::new();
    for r in 0..rounds {
        let req = openspime::SpimeSeek::Request(openspime::SeekRequest {
            id: format!("bench{r}"),
            spimeid: spime_jid.into(),
            expdate: openspime::date::format(openspime::date::now() + 3600, 0),
            encrequired: false,
        });
        let c = openspime::Container::seal(
            req.to_element(),
            Some((&key, "cert.localhost", Some(spime_jid))),
            None,
            None,
        )
        .unwrap();
        let iq = format!(
            "<iq type='set' id='s{r}' to='pubsub.localhost'><pubsub xmlns='{PUBSUB_NS}'><publish node='spimeseek'>\
             <item id='seek{r}'>{}</item></publish></pubsub></iq>",
            c.to_element()
        );
        let start = Instant::now();
        s.send(&iq).await;
        let answer = s.stanza("message").await;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        assert!(answer.to_string().contains("spimeseek"), "{answer}");
    }
    times.sort_by(f64::total_cmp);
    let (p50, max) = (percentile(&times, 0.5), percentile(&times, 1.0));
    println!(
        "seek answered (publish sent → answer received, includes the signature check): p50 {p50:.1} ms, max {max:.1} ms"
    );
    serde_like::Json::obj(&[
        ("scenario", "\"seek\"".into()),
        ("entries_total", total.to_string()),
        ("entries_of_spime", mine.to_string()),
        ("seek_p50_ms", format!("{p50:.2}")),
        ("seek_max_ms", format!("{max:.2}")),
    ])
}

/// XEP-0313 first-page latency: `total` messages of one account's archive (with
/// `contacts` peers, round-robin) written into the store before the server starts, then
/// the queries clients start with, timed from the iq sent to its `<fin/>` received: the
/// newest page (`<before/>`, what Conversations and Gajim ask first), the newest page with
/// one contact, the page after a known id in the middle and the first page since a time
/// in the middle (the two ways clients catch up).
async fn mam_latency(total: u64, contacts: usize, rounds: usize) -> serde_like::Json {
    use openspimed_module_api::{ArchivedItem, ModuleStorage};
    let contacts = contacts.max(1);
    let start_fill = Instant::now();
    let middle = format!("m{:012}", total / 2);
    let server = start_server_with(1, |store| async move {
        let archive = store.archive("localhost", "archive");
        // Recent enough for the default expiry (a week): the last one a second ago.
        let now = openspimed_module_api::datetime::now_ms() - 1000;
        let mut batch = Vec::with_capacity(20_000);
        for i in 0..total {
            let with = format!("c{}@example.net", i as usize % contacts);
            let xml = format!(
                "<message xmlns='jabber:client' from='{with}/phone' to='u0@localhost/bench' type='chat' id='x{i}'>\
                 <body>archived message number {i} of the benchmark, some sixty bytes</body></message>"
            );
            batch.push(ArchivedItem {
                id: format!("m{i:012}"),
                at_ms: now - (total - i) as i64,
                with,
                value: xml.into_bytes(),
            });
            if batch.len() == 20_000 {
                archive.append_many("u0@localhost", std::mem::take(&mut batch)).await.unwrap();
            }
        }
        archive.append_many("u0@localhost", batch).await.unwrap();
    })
    .await;
    println!(
        "stored {total} messages of one account in {:.1?}",
        start_fill.elapsed()
    );
    let mut s = login(&server, "u0", "bench").await;
    let set = |inner: &str| {
        format!("<set xmlns='http://jabber.org/protocol/rsm'><max>50</max>{inner}</set>")
    };
    let with = |jid: &str| {
        format!(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>\
             <field var='with'><value>{jid}</value></field></x>"
        )
    };
    // About the middle of the archive by time (the items are a millisecond apart).
    let middle_time = openspimed_module_api::datetime::format_utc_ms(
        openspimed_module_api::datetime::now_ms() - 1000 - (total / 2) as i64,
    );
    let since = format!(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>\
         <field var='start'><value>{middle_time}</value></field></x>{}",
        set("")
    );
    let queries = [
        ("newest", set("<before/>")),
        ("since_middle_time", since),
        (
            "newest_with",
            format!("{}{}", with("c1@example.net"), set("<before/>")),
        ),
        ("after_middle", set(&format!("<after>{middle}</after>"))),
    ];
    let mut out = vec![
        ("scenario", "\"mam\"".to_owned()),
        ("messages", total.to_string()),
        ("contacts", contacts.to_string()),
    ];
    let mut keys = Vec::new();
    for (name, inner) in &queries {
        let mut times = Vec::new();
        for r in 0..rounds {
            let iq = format!(
                "<iq type='set' id='q{r}'><query xmlns='urn:xmpp:mam:2' queryid='b{r}'>{inner}</query></iq>"
            );
            let start = Instant::now();
            s.send(&iq).await;
            let mut results = 0;
            let fin = loop {
                let el = s.element().await;
                if el.name() == "message" {
                    results += 1;
                } else if el.name() == "iq" {
                    break el;
                }
            };
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(fin.attr("type"), Some("result"), "{fin}");
            assert_eq!(results, 50, "a full first page");
        }
        times.sort_by(f64::total_cmp);
        let (p50, max) = (percentile(&times, 0.5), percentile(&times, 1.0));
        println!(
            "{name}: first page of 50 (iq sent → <fin/> received): p50 {p50:.1} ms, max {max:.1} ms"
        );
        keys.push((format!("{name}_p50_ms"), format!("{p50:.2}")));
        keys.push((format!("{name}_max_ms"), format!("{max:.2}")));
    }
    for (k, v) in &keys {
        out.push((k.as_str(), v.clone()));
    }
    serde_like::Json::obj(&out)
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
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let _ = MECH.set(opt("--mech").unwrap_or_else(|| "SCRAM-SHA-1".into()));
    let _ = DISABLED.set(
        opt("--disable")
            .map(|d| {
                d.split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    );
    let _ = PER_LOCAL_ADDRESS.set(arg(&args, "--per-address", 20_000));
    let _ = EXTERNAL.set(opt("--target").map(|t| {
        External {
            c2s: t.parse().expect("--target ADDR:PORT"),
            domain: opt("--domain").unwrap_or_else(|| "localhost".into()),
            pid: opt("--pid")
                .and_then(|p| p.parse().ok())
                .expect("--pid PID of the server"),
            ca: opt("--ca")
                .map(PathBuf::from)
                .expect("--ca PEM file to trust"),
            register: args.iter().any(|a| a == "--register"),
        }
    }));
    if external().is_some() && !matches!(scenario.as_str(), "login" | "idle" | "messages") {
        eprintln!("--target works with login, idle and messages");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let json = rt.block_on(async {
        match scenario.as_str() {
            "login" => {
                logins(
                    arg(&args, "--count", 1000) as usize,
                    arg(&args, "--concurrency", 32) as usize,
                )
                .await
            }
            "idle" => idle(arg(&args, "--sessions", 10_000) as usize).await,
            "messages" => {
                messages(
                    arg(&args, "--sessions", 100) as usize,
                    arg(&args, "--seconds", 10).min(600),
                    arg(&args, "--window", 64),
                    arg(&args, "--rate", 0),
                    args.iter().any(|a| a == "--echo"),
                )
                .await
            }
            "pubsub-fanout" => {
                pubsub_fanout(
                    arg(&args, "--subscribers", 1000) as usize,
                    arg(&args, "--publishes", 20) as usize,
                )
                .await
            }
            "muc-fanout" => {
                muc_fanout(
                    arg(&args, "--occupants", 1000) as usize,
                    arg(&args, "--messages", 20) as usize,
                )
                .await
            }
            "publish" => {
                publish_rate(
                    arg(&args, "--publishers", 4) as usize,
                    arg(&args, "--seconds", 10).min(600),
                    arg(&args, "--window", 64) as usize,
                )
                .await
            }
            "report" | "report-encrypted" => {
                report_rate(
                    arg(&args, "--sessions", 8) as usize,
                    arg(&args, "--seconds", 10).min(600),
                    arg(&args, "--window", 64) as usize,
                    scenario == "report-encrypted",
                    arg(&args, "--rounds", 5) as usize,
                )
                .await
            }
            "mam" => {
                mam_latency(
                    arg(&args, "--messages", 1_000_000),
                    arg(&args, "--contacts", 100) as usize,
                    arg(&args, "--rounds", 20) as usize,
                )
                .await
            }
            "seek" => {
                seek_latency(
                    arg(&args, "--total", 10_000_000),
                    arg(&args, "--mine", 1_000_000),
                    arg(&args, "--rounds", 10) as usize,
                )
                .await
            }
            _ => {
                eprintln!(
                    "usage: openspimed-bench SCENARIO [options]\n  login [--count N] [--concurrency C]\n  idle [--sessions N]\n  \
                     messages [--sessions N] [--seconds S] [--window W | --rate R [--echo]]\n  \
                     pubsub-fanout [--subscribers N] [--publishes P]\n  muc-fanout [--occupants N] [--messages M]\n  publish [--publishers N] [--seconds S] [--window W]\n  \
                     report | report-encrypted [--sessions N] [--seconds S] [--window W] [--rounds R]\n  \
                     seek [--total N] [--mine M] [--rounds R]\n  \
                     mam [--messages N] [--contacts C] [--rounds R]\n\
                     any scenario: --disable MODULE[,MODULE] (the host goes without them)"
                );
                std::process::exit(2);
            }
        }
    });
    let out = format!("bench-{scenario}.json");
    std::fs::write(&out, &json.0).unwrap();
    println!("wrote {out}");
    let _ = Got::Eof; // the harness's types are shared with the tests
}
