//! Test harness: a real openspimed on 127.0.0.1:0 with a temp data dir and a test CA, and a
//! small raw XMPP client for what third-party clients will not send (malformed input,
//! protocol violations).

#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod netns;
pub use netns::NetNs;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use openspimed::RunningServer;
use openspimed::storage::AccountStore;
use openspimed::xml::{Limits, StreamEvent, StreamParser};
use openspimed_config::Config;
use openspimed_module_api::{Element, ModuleFactory, ns};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How long any single wait in a test may take before the test fails (not a sleep).
pub const WAIT: Duration = Duration::from_secs(15);

/// A running server with everything a test needs to reach it.
pub struct TestServer {
    /// The server (None once stopped).
    pub server: Option<RunningServer>,
    /// The data directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// PEM of the CA that issued the server certificate.
    pub ca_pem: String,
    /// The served domain.
    pub domain: String,
    /// STARTTLS address.
    pub c2s: SocketAddr,
    /// Direct-TLS address.
    pub direct: SocketAddr,
    /// STARTTLS server-to-server address, when listening.
    pub s2s: Option<SocketAddr>,
    /// The configuration it runs with (kept for restarts).
    pub config: Config,
    /// The modules it runs with (kept for restarts).
    modules: fn() -> Vec<Box<dyn ModuleFactory>>,
}

impl TestServer {
    /// Starts a server for `localhost` with default settings.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server for `localhost` after `tweak` adjusted the configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_hosts(&[], tweak).await
    }

    /// Starts a server for `localhost` and the `extra` virtual hosts, each with its own
    /// certificate from the test CA.
    pub async fn start_hosts(extra: &[&str], tweak: impl FnOnce(&mut Config)) -> TestServer {
        let ca = openspimed_certs::DevCa::new("openspimed test CA").expect("CA");
        let mut hosts = vec!["localhost"];
        hosts.extend_from_slice(extra);
        Self::start_on(&ca, &hosts, tweak).await
    }

    /// Starts a server for exactly `hosts` (the first is [`TestServer::domain`]), with
    /// certificates from `ca` (which it also trusts for server-to-server), and STARTTLS and
    /// direct-TLS s2s listeners on 127.0.0.1:0.
    pub async fn start_on(
        ca: &openspimed_certs::DevCa,
        hosts: &[&str],
        tweak: impl FnOnce(&mut Config),
    ) -> TestServer {
        Self::start_with_modules(ca, hosts, openspimed::server::builtin_modules, tweak).await
    }

    /// [`TestServer::start_on`] with the modules `modules` gives instead of the
    /// compiled-in ones (a module of the test's own beside them).
    pub async fn start_with_modules(
        ca: &openspimed_certs::DevCa,
        hosts: &[&str],
        modules: fn() -> Vec<Box<dyn ModuleFactory>>,
        tweak: impl FnOnce(&mut Config),
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
        config.listeners.c2s = vec![any];
        config.listeners.c2s_direct_tls = vec![any];
        config.listeners.s2s = vec![any];
        config.listeners.s2s_direct_tls = vec![any];
        config.metrics.listen = any;
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, &ca.cert_pem).expect("write CA");
        config.s2s.ca_files = vec![ca_path];
        let mut default_hosts = std::mem::take(&mut config.hosts);
        for host in hosts {
            let wildcard = format!("*.{host}");
            let (cert, key) = ca.issue(&[host, &wildcard]).expect("leaf");
            let cert_path = dir.path().join(format!("{host}.crt"));
            let key_path = dir.path().join(format!("{host}.key"));
            std::fs::write(&cert_path, cert).expect("write cert");
            std::fs::write(&key_path, key).expect("write key");
            let mut hc = default_hosts.remove(*host).unwrap_or_default();
            hc.certificate = Some(cert_path);
            hc.key = Some(key_path);
            config.hosts.insert((*host).to_owned(), hc);
        }
        tweak(&mut config);
        let server = openspimed::start_with_modules(config.clone(), modules())
            .await
            .expect("server starts");
        TestServer {
            config,
            c2s: server.c2s_addrs[0],
            direct: server.direct_tls_addrs[0],
            s2s: server.s2s_addrs.first().copied(),
            server: Some(server),
            dir,
            ca_pem: ca.cert_pem.clone(),
            domain: hosts.first().copied().unwrap_or("localhost").to_owned(),
            modules,
        }
    }

    /// Shared state of the running server.
    pub fn shared(&self) -> &Arc<openspimed::server::Shared> {
        &self.server.as_ref().expect("running").shared
    }

    /// The running server (for what takes one, such as the reloader).
    pub fn running(&self) -> &RunningServer {
        self.server.as_ref().expect("running")
    }

    /// Federation of the running server.
    pub fn s2s(&self) -> &Arc<openspimed::s2s::S2s> {
        &self.running().s2s
    }

    /// The account store of the running server.
    pub fn accounts(&self) -> Arc<dyn AccountStore> {
        self.server
            .as_ref()
            .expect("running")
            .shared
            .accounts
            .clone()
    }

    /// The storage modules use.
    pub fn storage(&self) -> Arc<dyn openspimed_module_api::ModuleStorage> {
        self.server
            .as_ref()
            .expect("running")
            .shared
            .module_storage
            .clone()
    }

    /// Creates an account on any hosted domain.
    pub async fn add_account(&self, user: &str, domain: &str, password: &str) {
        let creds = openspimed::sasl::derive_credentials(password, 4096);
        let created = self
            .accounts()
            .create_account(user, domain, &creds)
            .await
            .expect("store");
        assert!(created, "{user}@{domain} already existed");
    }

    /// Creates an account (the same path as `openspimed adduser`).
    pub async fn add_user(&self, user: &str, password: &str) {
        let creds = openspimed::sasl::derive_credentials(password, 4096);
        let created = self
            .accounts()
            .create_account(user, &self.domain, &creds)
            .await
            .expect("store");
        assert!(created, "{user} already existed");
    }

    /// A TLS client configuration trusting only the test CA.
    pub fn tls_config(&self, alpn: Option<&[u8]>) -> Arc<ClientConfig> {
        client_tls_config(&self.ca_pem, alpn)
    }

    /// Stops the server and starts it again on the same data (new ports).
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut config = self.config.clone();
        config.listeners.c2s = vec!["127.0.0.1:0".parse().expect("addr")];
        config.listeners.c2s_direct_tls = vec!["127.0.0.1:0".parse().expect("addr")];
        let server = openspimed::start_with_modules(config, (self.modules)())
            .await
            .expect("server restarts");
        self.s2s = server.s2s_addrs.first().copied();
        self.c2s = server.c2s_addrs[0];
        self.direct = server.direct_tls_addrs[0];
        self.server = Some(server);
    }

    /// Stops the server gracefully.
    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_secs(5)).await;
        }
    }
}

/// Set in the environment of a `harness = false` test binary re-executed as `openspimed`
/// (see [`server_command`]); its `main` then runs `openspimed::cli::main()` instead of tests.
pub const AS_SERVER: &str = "OPENSPIMED_TEST_AS_SERVER";

/// `openspimed --config CONFIG`, run as this test binary re-executed with [`AS_SERVER`]:
/// a real server process without depending on where cargo put the `openspimed` binary.
/// Logs at `info` whatever the caller's `RUST_LOG`, so tests can wait on log events.
pub fn server_command(config: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("test binary"));
    cmd.env(AS_SERVER, "1")
        .env_remove("RUST_LOG")
        .arg("--config")
        .arg(config);
    cmd
}

/// Starts a server process (stderr piped) and waits until its log reports the first c2s
/// listener; returns the child and that address. The log keeps being drained so the
/// server never blocks on a full pipe.
pub fn spawn_server(cmd: std::process::Command) -> (std::process::Child, SocketAddr) {
    let (child, addr, _log) = spawn_server_logged(cmd);
    (child, addr)
}

/// [`spawn_server`], also handing over every later log line, so a test can wait for an
/// event the server logs (the lines are dropped once the receiver is).
pub fn spawn_server_logged(
    mut cmd: std::process::Command,
) -> (
    std::process::Child,
    SocketAddr,
    std::sync::mpsc::Receiver<String>,
) {
    use std::io::BufRead;
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the server process starts");
    let mut err = std::io::BufReader::new(child.stderr.take().expect("piped stderr"));
    let mut line = String::new();
    let addr = loop {
        line.clear();
        let n = err.read_line(&mut line).expect("server log");
        assert!(n > 0, "the server exited before listening");
        if let Some(a) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
        {
            break a.parse().expect("an address in the log");
        }
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        while err.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            let _ = tx.send(std::mem::take(&mut line));
        }
    });
    (child, addr, rx)
}

/// Waits (at most 30 s) for a log line containing `needle` and returns it.
pub fn wait_for_log(log: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("no log line with {needle:?}: {e}"),
        }
    }
}

/// A TLS client configuration trusting only the CA in `ca_pem`.
pub fn client_tls_config(ca_pem: &str, alpn: Option<&[u8]>) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("CA pem")).expect("CA");
    }
    let mut cfg =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    if let Some(p) = alpn {
        cfg.alpn_protocols = vec![p.to_vec()];
    }
    Arc::new(cfg)
}

/// What the raw client reads.
#[derive(Debug)]
pub enum Got {
    /// The server's stream header.
    Header,
    /// A top-level element.
    Element(Element),
    /// `</stream:stream>`.
    Close,
    /// The socket closed.
    Eof,
}

/// A minimal XMPP client over any transport, parsing with openspimed's own sans-IO parser.
pub struct Raw<S> {
    /// The transport.
    pub io: S,
    /// Stream parser (replaced on restart).
    parser: StreamParser,
    /// Unparsed bytes.
    pending: Vec<u8>,
    /// Every byte read so far, for tests about the exact wire form (prefixes, quoting).
    pub received: Vec<u8>,
}

impl Raw<TcpStream> {
    /// Connects to the STARTTLS port.
    pub async fn connect(addr: SocketAddr) -> Raw<TcpStream> {
        let io = TcpStream::connect(addr).await.expect("connect");
        // Small stanzas go out at once, as any XMPP client does.
        let _ = io.set_nodelay(true);
        Raw::new(io)
    }

    /// Connects from a chosen local address (a load generator spreads its sockets over
    /// several loopback addresses when one address's ports are not enough).
    pub async fn connect_from(addr: SocketAddr, local: std::net::IpAddr) -> Raw<TcpStream> {
        let socket = match local {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .expect("socket");
        socket
            .bind(SocketAddr::new(local, 0))
            .expect("bind the local address");
        let io = socket.connect(addr).await.expect("connect");
        let _ = io.set_nodelay(true);
        Raw::new(io)
    }

    /// Negotiates STARTTLS (after [`Raw::open`]) and returns the TLS client.
    pub async fn starttls(self, cfg: Arc<ClientConfig>) -> Raw<TlsStream<TcpStream>> {
        self.try_starttls(cfg).await.expect("TLS handshake")
    }

    /// [`Raw::starttls`], returning the handshake's failure (e.g. an untrusted certificate).
    pub async fn try_starttls(
        self,
        cfg: Arc<ClientConfig>,
    ) -> std::io::Result<Raw<TlsStream<TcpStream>>> {
        self.try_starttls_as(cfg, "localhost").await
    }

    /// [`Raw::starttls`] for a server that must present a certificate for `domain`.
    pub async fn starttls_as(
        self,
        cfg: Arc<ClientConfig>,
        domain: &str,
    ) -> Raw<TlsStream<TcpStream>> {
        self.try_starttls_as(cfg, domain)
            .await
            .expect("TLS handshake")
    }

    async fn try_starttls_as(
        mut self,
        cfg: Arc<ClientConfig>,
        domain: &str,
    ) -> std::io::Result<Raw<TlsStream<TcpStream>>> {
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        let proceed = self.element().await;
        assert!(proceed.is("proceed", ns::TLS), "{proceed}");
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let tls = TlsConnector::from(cfg).connect(name, self.io).await?;
        Ok(Raw::new(tls))
    }
}

impl Raw<TlsStream<TcpStream>> {
    /// Connects to the direct-TLS port with ALPN `xmpp-client`.
    pub async fn connect_direct(server: &TestServer) -> Raw<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(server.direct).await.expect("connect");
        let tls = TlsConnector::from(server.tls_config(Some(b"xmpp-client")))
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS handshake");
        Raw::new(tls)
    }

    /// STARTTLS, PLAIN login and binding in one go; returns the client and its full JID.
    pub async fn login(
        server: &TestServer,
        user: &str,
        password: &str,
        resource: &str,
    ) -> (Raw<TlsStream<TcpStream>>, String) {
        Self::login_on(server, "localhost", user, password, resource).await
    }

    /// [`Raw::login`] on any hosted domain.
    pub async fn login_on(
        server: &TestServer,
        domain: &str,
        user: &str,
        password: &str,
        resource: &str,
    ) -> (Raw<TlsStream<TcpStream>>, String) {
        Self::login_at(
            server.c2s,
            server.tls_config(None),
            domain,
            user,
            password,
            resource,
        )
        .await
    }

    /// STARTTLS, PLAIN and binding against any server address (e.g. a child process).
    pub async fn login_at(
        c2s: SocketAddr,
        tls: Arc<ClientConfig>,
        domain: &str,
        user: &str,
        password: &str,
        resource: &str,
    ) -> (Raw<TlsStream<TcpStream>>, String) {
        let mut raw = Raw::connect(c2s).await;
        raw.open(domain).await;
        raw.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        let proceed = raw.element().await;
        assert!(proceed.is("proceed", ns::TLS), "{proceed}");
        let tls = TlsConnector::from(tls)
            .connect(
                ServerName::try_from(domain.to_owned()).expect("name"),
                raw.io,
            )
            .await
            .expect("TLS handshake");
        let mut raw = Raw::new(tls);
        raw.open(domain).await;
        let result = raw.auth_plain(user, password).await;
        assert!(result.is("success", ns::SASL), "login failed: {result}");
        raw.restart();
        raw.open(domain).await;
        let jid = raw.bind(resource).await;
        (raw, jid)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    /// Wraps a connected transport.
    pub fn new(io: S) -> Self {
        Raw {
            io,
            parser: StreamParser::new(Limits::default()),
            pending: Vec::new(),
            received: Vec::new(),
        }
    }

    /// Sends raw text.
    pub async fn send(&mut self, text: &str) {
        self.io.write_all(text.as_bytes()).await.expect("write");
        self.io.flush().await.expect("flush");
    }

    /// Sends raw text, tolerating a closed connection (for abuse tests).
    pub async fn send_lossy(&mut self, text: &[u8]) {
        let _ = self.io.write_all(text).await;
        let _ = self.io.flush().await;
    }

    /// Forgets the parser state after a stream restart.
    pub fn restart(&mut self) {
        self.parser = StreamParser::new(Limits::default());
        self.pending.clear();
    }

    /// Reads the next unit, failing the test after [`WAIT`].
    pub async fn next(&mut self) -> Got {
        tokio::time::timeout(WAIT, self.next_inner())
            .await
            .expect("server answered in time")
    }

    async fn next_inner(&mut self) -> Got {
        loop {
            let mut buf = &self.pending[..];
            let r = self.parser.next(&mut buf);
            let used = self.pending.len() - buf.len();
            self.pending.drain(..used);
            match r {
                Ok(Some(StreamEvent::Header(_))) => return Got::Header,
                Ok(Some(StreamEvent::Element(e))) => return Got::Element(e),
                Ok(Some(StreamEvent::Close)) => return Got::Close,
                Ok(None) => {}
                Err(e) => panic!("server sent bad XML: {e}"),
            }
            let mut chunk = [0u8; 8192];
            match self.io.read(&mut chunk).await {
                Ok(0) | Err(_) => return Got::Eof,
                Ok(n) => {
                    self.pending.extend_from_slice(&chunk[..n]);
                    self.received.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }

    /// The next element, failing on anything else.
    pub async fn element(&mut self) -> Element {
        match self.next().await {
            Got::Element(e) => e,
            other => panic!("expected an element, got {other:?}"),
        }
    }

    /// Sends a stream header and reads the answer header and features.
    pub async fn open(&mut self, to: &str) -> Element {
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{to}' version='1.0'>"
        ))
        .await;
        match self.next().await {
            Got::Header => {}
            other => panic!("expected a stream header, got {other:?}"),
        }
        let features = self.element().await;
        assert!(features.is("features", ns::STREAM), "{features}");
        features
    }

    /// Reads until a stream error and then the end of the stream; returns its condition.
    pub async fn stream_error(&mut self) -> String {
        loop {
            match self.next().await {
                Got::Element(e) if e.is("error", ns::STREAM) => {
                    let cond = e
                        .children()
                        .find(|c| c.ns() == ns::XMPP_STREAMS && c.name() != "text")
                        .map(|c| c.name().to_owned())
                        .unwrap_or_default();
                    // The server must then close the stream and the socket.
                    loop {
                        match self.next().await {
                            Got::Close | Got::Eof => return cond,
                            Got::Header => {}
                            Got::Element(e) => panic!("element after stream error: {e}"),
                        }
                    }
                }
                Got::Eof => panic!("connection closed without a stream error"),
                _ => {}
            }
        }
    }

    /// SASL PLAIN; returns `<success/>` or `<failure/>`.
    pub async fn auth_plain(&mut self, user: &str, password: &str) -> Element {
        let data = B64.encode(format!("\0{user}\0{password}"));
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{data}</auth>"
        ))
        .await;
        self.element().await
    }

    /// Binds a resource; returns the full JID.
    pub async fn bind(&mut self, resource: &str) -> String {
        self.send(&format!(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>{resource}</resource></bind></iq>"
        ))
        .await;
        let reply = self.element().await;
        assert_eq!(reply.attr("type"), Some("result"), "{reply}");
        reply
            .get_child("bind", ns::BIND)
            .and_then(|b| b.get_child("jid", ns::BIND))
            .map(|j| j.text())
            .expect("bound jid")
    }

    /// Waits for the next stanza with this name, skipping others.
    pub async fn stanza(&mut self, name: &str) -> Element {
        loop {
            let e = self.element().await;
            if e.name() == name {
                return e;
            }
        }
    }
}

/// The condition of a stanza error, e.g. `service-unavailable`.
pub fn error_condition(stanza: &Element) -> Option<String> {
    stanza
        .children()
        .find(|c| c.name() == "error")?
        .children()
        .find(|c| c.ns() == ns::XMPP_STANZAS && c.name() != "text")
        .map(|c| c.name().to_owned())
}

/// A TCP relay between a client and the server that can cut every connection through it at
/// once, as a dropped network link would (both sockets close without a stream close).
pub struct CutProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The relays of the connections so far.
    relays: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    /// The accept loop.
    accept: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// Relays 127.0.0.1:(new port) to `target`.
    pub async fn start(target: SocketAddr) -> CutProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let relays: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let r = relays.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                r.lock().expect("lock").push(task.abort_handle());
            }
        });
        CutProxy {
            addr,
            relays,
            accept,
        }
    }

    /// Drops every connection relayed so far (new ones still work).
    pub fn cut(&self) {
        for r in self.relays.lock().expect("lock").drain(..) {
            r.abort();
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
