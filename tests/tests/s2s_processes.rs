//! Two openspimed processes federate on loopback: `a.example` and `b.example`, each a real
//! child process (this test binary re-executed as `openspimed`) with certificates from a
//! test CA both trust. Each learns where the other listens through `[s2s.remote]`, put in
//! force by `openspimed reload` (the ports are only known once both run), and their users
//! exchange messages and a presence subscription both ways; a spime on a.example reports
//! signed and encrypted to the ScopeNode on b.example, both keys fetched across.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode};
use std::sync::mpsc::Receiver;

mod common;

use openspime::Container;
use openspime::keyinfo::{self, KeyForm};
use openspimed::storage::AccountStore;
use openspimed::storage::sqlite::SqliteStore;
use openspimed_certs::DevCa;
use openspimed_mod_scopenode::store::SensorData;
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
    rt.block_on(two_processes_federate_messages_subscriptions_and_a_report());
    println!("test two_processes_federate_messages_subscriptions_and_a_report ... ok");
    println!("1 passed, 0 failed");
    ExitCode::SUCCESS
}

/// One server's directory: configuration, certificate, database.
struct Domain {
    /// The served domain.
    name: &'static str,
    /// Everything on disk.
    dir: tempfile::TempDir,
}

impl Domain {
    async fn new(ca: &DevCa, name: &'static str, user: &str) -> Domain {
        let dir = tempfile::tempdir().unwrap();
        let wildcard = format!("*.{name}");
        let (cert, key) = ca.issue(&[name, &wildcard]).unwrap();
        std::fs::write(dir.path().join("c.pem"), cert).unwrap();
        std::fs::write(dir.path().join("k.pem"), key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
        let d = Domain { name, dir };
        d.write_config("");
        let store = SqliteStore::open(&d.dir.path().join("data/openspimed.sqlite")).unwrap();
        let creds = openspimed::sasl::derive_credentials("pw", 4096);
        assert!(store.create_account(user, name, &creds).await.unwrap());
        d
    }

    fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("openspimed.toml")
    }

    fn write_config(&self, remote: &str) {
        std::fs::write(
            self.config(),
            format!(
                "data_dir = \"{}\"\n[metrics]\nenabled = false\n\
                 [listeners]\nc2s = [\"127.0.0.1:0\"]\nc2s_direct_tls = []\n\
                 s2s = [\"127.0.0.1:0\"]\ns2s_direct_tls = []\n\
                 [s2s]\nca_files = [\"ca.pem\"]\ndialback = false\n{remote}\n\
                 [modules.scopenode]\n\
                 trusted_cert_services = [\"cert.a.example\", \"cert.b.example\"]\n\
                 [hosts.\"{}\"]\ncertificate = \"c.pem\"\nkey = \"k.pem\"\n",
                self.dir.path().join("data").display(),
                self.name,
            ),
        )
        .unwrap();
    }

    /// Runs the server; returns it, its c2s and s2s addresses, and its log.
    fn start(&self) -> (Child, SocketAddr, SocketAddr, Receiver<String>) {
        let mut cmd = server_command(&self.config());
        cmd.arg("run");
        let (child, c2s, log) = spawn_server_logged(cmd);
        let line = wait_for_log(&log, "s2s STARTTLS");
        let s2s = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap()
            .parse()
            .unwrap();
        (child, c2s, s2s, log)
    }

    /// Points this server at `other`'s s2s address and reloads it through the control socket.
    fn point_at(&self, other: &Domain, addr: SocketAddr, log: &Receiver<String>) {
        self.write_config(&format!(
            "[s2s.remote.\"{}\"]\naddresses = [\"{addr}\"]\n",
            other.name
        ));
        let out = Command::new(std::env::current_exe().unwrap())
            .env(AS_SERVER, "1")
            .arg("--config")
            .arg(self.config())
            .arg("reload")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "reload failed: {text}");
        assert!(text.contains("s2s.remote"), "{text}");
        wait_for_log(log, "s2s.remote");
    }
}

async fn two_processes_federate_messages_subscriptions_and_a_report() {
    let ca = DevCa::new("federation CA").unwrap();
    let a = Domain::new(&ca, "a.example", "alice").await;
    let b = Domain::new(&ca, "b.example", "bob").await;
    let (mut child_a, c2s_a, s2s_a, log_a) = a.start();
    let (mut child_b, c2s_b, s2s_b, log_b) = b.start();
    a.point_at(&b, s2s_b, &log_a);
    b.point_at(&a, s2s_a, &log_b);

    let tls = client_tls_config(&ca.cert_pem, None);
    let (mut alice, _) = Raw::login_at(c2s_a, tls.clone(), "a.example", "alice", "pw", "r").await;
    let (mut bob, _) = Raw::login_at(c2s_b, tls, "b.example", "bob", "pw", "r").await;
    alice
        .send("<message to='bob@b.example/r' id='1' type='chat'><body>hi bob</body></message>")
        .await;
    let m = bob.stanza("message").await;
    assert_eq!(m.attr("from"), Some("alice@a.example/r"), "{m}");
    assert_eq!(
        m.get_child("body", "jabber:client").unwrap().text(),
        "hi bob"
    );
    bob.send("<message to='alice@a.example/r' id='2' type='chat'><body>hi alice</body></message>")
        .await;
    let m = alice.stanza("message").await;
    assert_eq!(m.attr("from"), Some("bob@b.example/r"), "{m}");
    assert_eq!(
        m.get_child("body", "jabber:client").unwrap().text(),
        "hi alice"
    );
    // A presence subscription handshake across the two processes ends with `both`.
    alice.send("<presence/>").await;
    bob.send("<presence/>").await;
    alice
        .send("<presence to='bob@b.example' type='subscribe'/>")
        .await;
    let p = next_presence(&mut bob, "subscribe").await;
    assert_eq!(p.attr("from"), Some("alice@a.example"));
    bob.send("<presence to='alice@a.example' type='subscribed'/>")
        .await;
    let p = next_presence(&mut alice, "available").await;
    assert_eq!(p.attr("from"), Some("bob@b.example/r"));
    bob.send("<presence to='alice@a.example' type='subscribe'/>")
        .await;
    next_presence(&mut alice, "subscribe").await;
    alice
        .send("<presence to='bob@b.example' type='subscribed'/>")
        .await;
    let p = next_presence(&mut bob, "available").await;
    assert_eq!(p.attr("from"), Some("alice@a.example/r"));
    for (client, contact) in [(&mut alice, "bob@b.example"), (&mut bob, "alice@a.example")] {
        client
            .send("<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>")
            .await;
        let r = client.stanza("iq").await;
        let item = r
            .get_child("query", "jabber:iq:roster")
            .and_then(|q| q.children().find(|i| i.attr("jid") == Some(contact)))
            .unwrap_or_else(|| panic!("{contact} in {r}"))
            .clone();
        assert_eq!(item.attr("subscription"), Some("both"), "{r}");
    }
    // alice's resource is also a spime: it publishes its key at cert.a.example, fetches the
    // ScopeNode's from cert.b.example and reports signed and encrypted to b's ScopeNode, which
    // fetches alice's key from cert.a.example to verify.
    let spime = "alice@a.example/r";
    let key = common::vector_key("sender");
    let pubkeys = keyinfo::pubkeys(spime, &key.to_public_key(), KeyForm::Standard);
    alice
        .send(&format!(
            "<iq type='set' id='k1' to='cert.a.example'>{pubkeys}</iq>"
        ))
        .await;
    let r = alice.stanza("iq").await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    alice
        .send(&format!(
            "<iq type='get' id='k2' to='cert.b.example'><pubkeys xmlns='{}' jid='demo@scopenode.b.example'/></iq>",
            openspime::ns::PUBKEY
        ))
        .await;
    let r = alice.stanza("iq").await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let node_key = keyinfo::parse_pubkeys(r.first_child().unwrap()).unwrap().1;
    let sealed = Container::seal(
        common::co2_report("412.5"),
        Some((&key, "cert.a.example", Some(spime))),
        None,
        Some(&node_key),
    )
    .unwrap();
    alice
        .send(&format!(
            "<iq type='set' id='rep' to='demo@scopenode.b.example/co2'>{}</iq>",
            sealed.to_element()
        ))
        .await;
    let r = alice.stanza("iq").await;
    assert_eq!(r.attr("id"), Some("rep"));
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    // Both directions authenticated with certificates (dialback is off in both configs).
    wait_for_log(&log_a, "incoming s2s stream authenticated");
    wait_for_log(&log_b, "incoming s2s stream authenticated");
    child_a.kill().unwrap();
    child_b.kill().unwrap();
    let _ = child_a.wait();
    let _ = child_b.wait();
    // The report was stored, decrypted, on b before it was answered.
    let store = SensorData::new(std::sync::Arc::new(
        SqliteStore::open(&b.dir.path().join("data/openspimed.sqlite")).unwrap(),
    ));
    let stored = store
        .entries_for_spime("demo@scopenode.b.example", spime, 10)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].xml.contains("<ppm>412.5</ppm>"), "{stored:?}");
}

/// The next presence of this type (`available` for none), skipping other stanzas.
async fn next_presence<S>(raw: &mut Raw<S>, kind: &str) -> openspimed_module_api::Element
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let p = raw.stanza("presence").await;
        if p.attr("type").unwrap_or("available") == kind {
            return p;
        }
    }
}
