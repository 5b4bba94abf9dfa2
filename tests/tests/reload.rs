//! Certificates reload without a restart: by SIGHUP, by `openspimed reload` through the
//! control socket, and by watching the files. The server runs as a real child process (this
//! test binary re-executed as `openspimed`); each time, a new TLS connection must present
//! the new certificate while the session opened before stays up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use openspimed::storage::AccountStore;
use openspimed::storage::sqlite::SqliteStore;
use openspimed_certs::DevCa;
use openspimed_tests::{
    AS_SERVER, Raw, client_tls_config, server_command, spawn_server_logged, wait_for_log,
};

fn main() -> ExitCode {
    if std::env::var_os(AS_SERVER).is_some() {
        return openspimed::cli::main();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(sighup_and_control_socket_reload_certificates());
    println!("test sighup_and_control_socket_reload_certificates ... ok");
    rt.block_on(renewed_certificate_files_are_picked_up());
    println!("test renewed_certificate_files_are_picked_up ... ok");
    println!("2 passed, 0 failed");
    ExitCode::SUCCESS
}

/// A configuration directory whose `localhost` certificate is issued by `ca`.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new(ca: &DevCa, extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let setup = Setup { dir };
        setup.install(ca);
        setup.write_config(extra);
        let store = SqliteStore::open(&setup.dir.path().join("data/openspimed.sqlite")).unwrap();
        let creds = openspimed::sasl::derive_credentials("pw", 4096);
        assert!(
            store
                .create_account("alice", "localhost", &creds)
                .await
                .unwrap()
        );
        setup
    }

    fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("openspimed.toml")
    }

    fn write_config(&self, extra: &str) {
        self.write_config_at_level(extra, "info");
    }

    fn write_config_at_level(&self, extra: &str, level: &str) {
        std::fs::write(
            self.config(),
            format!(
                "data_dir = \"{}\"\n{extra}\n[log]\nlevel = \"{level}\"\n[metrics]\nenabled = false\n\
                 [listeners]\nc2s = [\"127.0.0.1:0\"]\nc2s_direct_tls = []\n\
                 [hosts.localhost]\ncertificate = \"c.pem\"\nkey = \"k.pem\"\n",
                self.dir.path().join("data").display()
            ),
        )
        .unwrap();
    }

    /// Runs the server on this configuration; returns it, its c2s address and its log.
    fn start(&self) -> (Child, SocketAddr, Receiver<String>) {
        let mut cmd = server_command(&self.config());
        cmd.arg("run");
        spawn_server_logged(cmd)
    }

    /// Writes a certificate for `localhost` issued by `ca`, in place.
    fn install(&self, ca: &DevCa) {
        let (cert, key) = ca.issue(&["localhost"]).unwrap();
        std::fs::write(self.dir.path().join("c.pem"), cert).unwrap();
        std::fs::write(self.dir.path().join("k.pem"), key).unwrap();
    }
}

/// Logs `alice` in as `resource`, trusting only `ca`.
async fn login(addr: SocketAddr, ca: &DevCa, resource: &str) -> (Session, String) {
    let tls = client_tls_config(&ca.cert_pem, None);
    Raw::login_at(addr, tls, "localhost", "alice", "pw", resource).await
}

/// A logged-in client.
type Session = Raw<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Whether a full STARTTLS handshake succeeds for a client trusting only `ca`. The client
/// configuration is new each time: a cached session would be resumed without the server
/// presenting any certificate.
async fn handshake_ok(addr: SocketAddr, ca: &DevCa) -> bool {
    let mut raw = Raw::connect(addr).await;
    raw.open("localhost").await;
    raw.try_starttls(client_tls_config(&ca.cert_pem, None))
        .await
        .is_ok()
}

async fn assert_alive(session: &mut Session) {
    session
        .send("<iq type='get' id='alive' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let pong = tokio::time::timeout(Duration::from_secs(15), session.stanza("iq"))
        .await
        .unwrap();
    assert_eq!(pong.attr("type"), Some("result"), "{pong}");
}

async fn sighup_and_control_socket_reload_certificates() {
    let (ca_a, ca_b, ca_c) = (
        DevCa::new("reload CA A").unwrap(),
        DevCa::new("reload CA B").unwrap(),
        DevCa::new("reload CA C").unwrap(),
    );
    let setup = Setup::new(&ca_a, "[tls]\nwatch_secs = 0").await;
    let (mut child, addr, log) = setup.start();

    let (mut before, _) = login(addr, &ca_a, "before").await;
    assert!(!handshake_ok(addr, &ca_b).await, "B not served yet");

    // SIGHUP.
    setup.install(&ca_b);
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for_log(&log, "certificates reloaded");
    assert!(handshake_ok(addr, &ca_b).await, "B served after SIGHUP");
    assert!(!handshake_ok(addr, &ca_a).await, "A no longer served");
    let (mut after, _) = login(addr, &ca_b, "after").await;
    assert_alive(&mut before).await;
    assert_alive(&mut after).await;

    // `openspimed reload`, with a configuration change that needs a restart.
    setup.install(&ca_c);
    setup.write_config_at_level(
        "[tls]\nwatch_secs = 0\n[limits]\nmax_depth = 4\n[auth]\nscram_iterations = 8192",
        "info,openspimed::c2s=debug",
    );
    let out = server_command(&setup.config())
        .arg("reload")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("reloaded: certificates of 1 host(s)"),
        "{report}"
    );
    assert!(report.contains("reloaded: limits"), "{report}");
    assert!(report.contains("needs a restart: auth"), "{report}");
    assert!(
        report.contains("reloaded: log level \"info,openspimed::c2s=debug\""),
        "{report}"
    );
    assert!(handshake_ok(addr, &ca_c).await, "C served after `reload`");
    assert_alive(&mut before).await;
    // The new depth limit holds for a new session, not for the one opened before.
    let deep = "<message to='alice@localhost'><body/><x xmlns='urn:example'><a><b><c><d><e/></d></c></b></a></x></message>";
    before.send(deep).await;
    before
        .send("<iq type='get' id='still' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let got = before.stanza("iq").await;
    assert_eq!(got.attr("id"), Some("still"), "{got}");
    let (mut fresh, _) = login(addr, &ca_c, "fresh").await;
    fresh.send(deep).await;
    assert_eq!(fresh.stream_error().await, "policy-violation");

    // A key that does not match its certificate: refused, the running set stays.
    let (_, other_key) = ca_a.issue(&["localhost"]).unwrap();
    std::fs::write(setup.dir.path().join("k.pem"), other_key).unwrap();
    let out = server_command(&setup.config())
        .arg("reload")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{report}");
    assert!(report.contains("error: "), "{report}");
    assert!(handshake_ok(addr, &ca_c).await, "C still served");

    child.kill().unwrap();
    child.wait().unwrap();
}

async fn renewed_certificate_files_are_picked_up() {
    let (ca_a, ca_b) = (
        DevCa::new("watch CA A").unwrap(),
        DevCa::new("watch CA B").unwrap(),
    );
    let setup = Setup::new(&ca_a, "[tls]\nwatch_secs = 1").await;
    let (mut child, addr, log) = setup.start();
    let (mut before, _) = login(addr, &ca_a, "before").await;
    // What an ACME client does: write the renewed files in place, nothing else.
    setup.install(&ca_b);
    wait_for_log(&log, "certificates reloaded");
    assert!(handshake_ok(addr, &ca_b).await);
    assert_alive(&mut before).await;
    child.kill().unwrap();
    child.wait().unwrap();
}
