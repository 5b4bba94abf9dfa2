//! Live reload of `[hosts]` and `[modules]` (issue: operations): a host is added with its
//! own certificate and serves at once, a module's options change while a client keeps
//! asking it things (no request is lost, the state the old instance kept in storage is the
//! new instance's), a removed host's sessions end with `host-gone`, and a broken module
//! option changes nothing. One in-process server, real TLS sockets, store in a temp dir.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use openspimed::control::{ReloadLine, Reloader};
use openspimed_module_api::{Element, toml};
use openspimed_tests::{Raw, TestServer, WAIT};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";

type Client = Raw<TlsStream<TcpStream>>;

/// Sends an iq and returns its answer (skipping anything else that arrives).
async fn ask(c: &mut Client, id: &str, to: &str, kind: &str, payload: &str) -> Element {
    c.send(&format!(
        "<iq type='{kind}' id='{id}' to='{to}'>{payload}</iq>"
    ))
    .await;
    answer(c, id).await
}

async fn answer(c: &mut Client, id: &str) -> Element {
    loop {
        let e = c.stanza("iq").await;
        if e.attr("id") == Some(id) {
            return e;
        }
    }
}

fn write(path: &std::path::Path, config: &openspimed_config::Config) {
    std::fs::write(path, toml::to_string(config).unwrap()).unwrap();
}

/// Whether the report has a `Done` line starting with `what` that names `item`.
fn done(report: &[ReloadLine], what: &str, item: &str) -> bool {
    report
        .iter()
        .any(|l| matches!(l, ReloadLine::Done(s) if s.starts_with(what) && s.contains(item)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_module_options_reload_live() {
    let ca = openspimed_certs::DevCa::new("live reload CA").unwrap();
    let server = TestServer::start_on(&ca, &["localhost"], |_| {}).await;
    server.add_account("alice", "localhost", "pw").await;
    server.add_account("bob", "b.test", "pw").await;
    let path = server.dir.path().join("openspimed.toml");
    let mut config = server.config.clone();
    write(&path, &config);
    let reloader = std::sync::Arc::new(Reloader::new(server.running(), Some(path.clone()), None));

    let (mut alice, alice_jid) = Raw::login(&server, "alice", "pw", "r").await;
    let created = ask(
        &mut alice,
        "c1",
        "pubsub.localhost",
        "set",
        &format!("<pubsub xmlns='{PUBSUB}'><create node='weather'/></pubsub>"),
    )
    .await;
    assert_eq!(created.attr("type"), Some("result"), "{created}");
    let sub = ask(
        &mut alice,
        "s1",
        "pubsub.localhost",
        "set",
        &format!("<pubsub xmlns='{PUBSUB}'><subscribe node='weather' jid='{alice_jid}'/></pubsub>"),
    )
    .await;
    assert_eq!(sub.attr("type"), Some("result"), "{sub}");

    // A new host with its own certificate, and new pubsub options (one more preconfigured
    // node), applied while alice keeps asking the pubsub service.
    let (cert, key) = ca.issue(&["b.test", "*.b.test"]).unwrap();
    let cert_path = server.dir.path().join("b.test.crt");
    let key_path = server.dir.path().join("b.test.key");
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    config.hosts.insert(
        "b.test".into(),
        openspimed_config::HostConfig {
            certificate: Some(cert_path),
            key: Some(key_path),
            modules: vec!["disco".into(), "ping".into()],
            ..Default::default()
        },
    );
    let nodes: toml::Table = toml::from_str(
        "[[nodes]]\nname = 'spimeseek'\ndeliver_payloads = true\n\
         [[nodes]]\nname = 'alerts'\ntitle = 'Alerts'\n",
    )
    .unwrap();
    config.modules.insert("pubsub".into(), nodes);
    write(&path, &config);

    const ASKED: usize = 200;
    for i in 0..ASKED {
        alice
            .send(&format!(
                "<iq type='get' id='q{i}' to='pubsub.localhost'><query xmlns='{DISCO_INFO}'/></iq>"
            ))
            .await;
    }
    let r = reloader.clone();
    let reload = tokio::spawn(async move { r.reload().await });
    for i in 0..ASKED {
        let a = answer(&mut alice, &format!("q{i}")).await;
        assert_eq!(a.attr("type"), Some("result"), "request {i}: {a}");
    }
    let report = tokio::time::timeout(WAIT, reload).await.unwrap().unwrap();
    assert!(done(&report, "hosts added", "b.test"), "{report:?}");
    assert!(
        done(&report, "modules started", "pubsub on localhost"),
        "{report:?}"
    );
    assert!(
        done(&report, "modules stopped", "pubsub on localhost"),
        "{report:?}"
    );
    assert!(
        !report
            .iter()
            .any(|l| matches!(l, ReloadLine::Failed(_) | ReloadLine::NeedsRestart(_))),
        "{report:?}"
    );

    // The new instance: the preconfigured node, and the node and subscription alice made
    // with the old one.
    let items = ask(
        &mut alice,
        "i1",
        "pubsub.localhost",
        "get",
        &format!("<query xmlns='{DISCO_ITEMS}'/>"),
    )
    .await;
    let names: Vec<&str> = items
        .get_child("query", DISCO_ITEMS)
        .unwrap()
        .children()
        .filter_map(|i| i.attr("node"))
        .collect();
    assert!(names.contains(&"alerts"), "{items}");
    assert!(names.contains(&"weather"), "{items}");
    alice
        .send(&format!(
            "<iq type='set' id='p1' to='pubsub.localhost'><pubsub xmlns='{PUBSUB}'>\
             <publish node='weather'><item id='today'><sky xmlns='urn:test'>clear</sky></item>\
             </publish></pubsub></iq>"
        ))
        .await;
    let mut published = false;
    let mut notified = false;
    while !(published && notified) {
        let e = tokio::time::timeout(WAIT, alice.element()).await.unwrap();
        if e.name() == "iq" && e.attr("id") == Some("p1") {
            assert_eq!(e.attr("type"), Some("result"), "{e}");
            published = true;
        } else if e.name() == "message" {
            let ev = e.get_child("event", EVENT).expect("event");
            assert!(format!("{ev}").contains("today"), "{e}");
            notified = true;
        }
    }

    // The added host serves at once: its certificate by SNI, logins, messages across.
    let (mut bob, bob_jid) = Raw::login_on(&server, "b.test", "bob", "pw", "phone").await;
    alice
        .send(&format!(
            "<message to='{bob_jid}' type='chat' id='m1'><body>hi b</body></message>"
        ))
        .await;
    let m = bob.stanza("message").await;
    assert_eq!(m.attr("from"), Some(alice_jid.as_str()), "{m}");

    // A broken module option changes nothing.
    let mut broken = config.clone();
    let mut bad = toml::Table::new();
    bad.insert("services".into(), toml::Value::Integer(5));
    broken.modules.insert("pubsub".into(), bad);
    write(&path, &broken);
    let report = reloader.reload().await;
    assert!(
        report
            .iter()
            .any(|l| matches!(l, ReloadLine::Failed(s) if s.contains("pubsub"))),
        "{report:?}"
    );
    // The certificates are still read again (ACME renewals do not wait for a good file).
    assert!(done(&report, "certificates of 2 host(s)", ""), "{report:?}");
    let still = ask(
        &mut alice,
        "i2",
        "pubsub.localhost",
        "get",
        &format!("<query xmlns='{DISCO_ITEMS}'/>"),
    )
    .await;
    assert_eq!(still.attr("type"), Some("result"), "{still}");

    // Removing the host ends its sessions with host-gone and refuses new streams for it.
    config.hosts.remove("b.test");
    write(&path, &config);
    let report = reloader.reload().await;
    assert!(done(&report, "hosts removed", "b.test"), "{report:?}");
    assert_eq!(bob.stream_error().await, "host-gone");
    let mut late = Raw::connect(server.c2s).await;
    late.send(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' to='b.test' version='1.0'>",
    )
    .await;
    assert_eq!(late.stream_error().await, "host-unknown");
    // Alice's session stayed up through all of it.
    let pong = ask(
        &mut alice,
        "ping",
        "localhost",
        "get",
        "<ping xmlns='urn:xmpp:ping'/>",
    )
    .await;
    assert_eq!(pong.attr("type"), Some("result"), "{pong}");
}
