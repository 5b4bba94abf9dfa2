//! A third-party client (tokio-xmpp) against a real server over real TLS: every SASL
//! mechanism, STARTTLS and direct TLS, message routing, and the first modules.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{next_message, online, online_cb, ping_server};
use openspimed_tests::TestServer;
use tokio_xmpp::jid::Jid;
use tokio_xmpp::minidom::Element;
use tokio_xmpp::parsers::message::{Lang, Message};
use tokio_xmpp::parsers::presence::Presence;
use tokio_xmpp::{IqRequest, IqResponse};

async fn login_with_only(mechanism: &str, direct: bool) {
    let mech = mechanism.to_owned();
    let mut server = TestServer::start_with(move |c| {
        if let Some(h) = c.hosts.get_mut("localhost") {
            h.sasl_mechanisms = vec![mech];
        }
    })
    .await;
    server.add_user("alice", "correct horse").await;
    let cb = mechanism.ends_with("-PLUS");
    let (mut client, jid) =
        online_cb(&server, "alice@localhost", "correct horse", direct, cb).await;
    assert_eq!(jid.to_bare().to_string(), "alice@localhost");
    ping_server(&mut client).await;
    client.send_end().await.ok();
    server.stop().await;
}

#[tokio::test]
async fn starttls_scram_sha_256() {
    login_with_only("SCRAM-SHA-256", false).await;
}

#[tokio::test]
async fn starttls_scram_sha_256_plus_with_tls_exporter() {
    login_with_only("SCRAM-SHA-256-PLUS", false).await;
}

#[tokio::test]
async fn starttls_scram_sha_1() {
    login_with_only("SCRAM-SHA-1", false).await;
}

#[tokio::test]
async fn starttls_plain() {
    login_with_only("PLAIN", false).await;
}

#[tokio::test]
async fn direct_tls_with_every_mechanism_offered() {
    let mut server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    let (mut client, _) = online(&server, "alice@localhost", "pw", true).await;
    ping_server(&mut client).await;
    server.stop().await;
}

#[tokio::test]
async fn two_clients_exchange_messages_by_full_and_bare_jid() {
    let mut server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let (mut alice, alice_jid) = online(&server, "alice@localhost/desk", "pw", false).await;
    let (mut bob, bob_jid) = online(&server, "bob@localhost/phone", "pw", true).await;
    assert_eq!(bob_jid.to_string(), "bob@localhost/phone");

    let m = Message::chat(Some(bob_jid.clone())).with_body(Lang::new(), "to your phone".into());
    alice.send_stanza(m.into()).await.expect("send");
    let got = next_message(&mut bob).await;
    assert_eq!(got.from, Some(alice_jid.clone()), "{got:?}");
    assert_eq!(
        got.bodies.values().next().map(String::as_str),
        Some("to your phone"),
        "{got:?}"
    );

    // Bare-JID delivery needs an available resource: bob sends presence, and a ping after
    // it proves the server has processed it (stanzas of one session are handled in order).
    bob.send_stanza(Presence::available().into())
        .await
        .expect("presence");
    ping_server(&mut bob).await;
    let m = Message::chat(Some(Jid::new("bob@localhost").unwrap()))
        .with_body(Lang::new(), "to you".into());
    alice.send_stanza(m.into()).await.expect("send");
    let got = next_message(&mut bob).await;
    // Delivered to the available resource with `to` left as addressed (RFC 6121 §8.5.2.1.1).
    assert_eq!(got.to, Some(Jid::new("bob@localhost").unwrap()));
    assert_eq!(got.from, Some(alice_jid.clone()));
    assert_eq!(
        got.bodies.values().next().map(String::as_str),
        Some("to you")
    );

    // And back, so both directions are covered.
    let m = Message::chat(Some(alice_jid.clone())).with_body(Lang::new(), "back".into());
    bob.send_stanza(m.into()).await.expect("send");
    let got = next_message(&mut alice).await;
    assert_eq!(got.from, Some(bob_jid));
    server.stop().await;
}

#[tokio::test]
async fn disco_version_and_unknown_namespace() {
    let mut server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    let (mut client, _) = online(&server, "alice@localhost", "pw", false).await;
    let to = Jid::new("localhost").unwrap();

    let q = Element::builder("query", "http://jabber.org/protocol/disco#info").build();
    let resp = client
        .send_iq(Some(to.clone()), IqRequest::Get(q))
        .await
        .await
        .expect("answered");
    let IqResponse::Result(Some(info)) = resp else {
        panic!("{resp:?}")
    };
    let features: Vec<&str> = info
        .children()
        .filter(|c| c.name() == "feature")
        .filter_map(|c| c.attr("var"))
        .collect();
    for f in [
        "urn:xmpp:ping",
        "jabber:iq:version",
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/disco#items",
    ] {
        assert!(features.contains(&f), "disco#info lacks {f}: {features:?}");
    }
    let identity = info
        .children()
        .find(|c| c.name() == "identity")
        .expect("identity");
    assert_eq!(identity.attr("category"), Some("server"));
    assert_eq!(identity.attr("type"), Some("im"));

    let q = Element::builder("query", "jabber:iq:version").build();
    let resp = client
        .send_iq(Some(to.clone()), IqRequest::Get(q))
        .await
        .await
        .expect("answered");
    let IqResponse::Result(Some(v)) = resp else {
        panic!("{resp:?}")
    };
    let name = v.children().find(|c| c.name() == "name").map(|n| n.text());
    assert_eq!(name.as_deref(), Some("openspimed"));
    assert!(
        v.children().all(|c| c.name() != "os"),
        "the OS is not disclosed by default"
    );

    let q = Element::builder("query", "urn:example:nobody-handles-this").build();
    let resp = client
        .send_iq(Some(to), IqRequest::Get(q))
        .await
        .await
        .expect("answered, never silence");
    let IqResponse::Error(err) = resp else {
        panic!("{resp:?}")
    };
    assert_eq!(
        err.defined_condition,
        tokio_xmpp::parsers::stanza_error::DefinedCondition::ServiceUnavailable
    );
    server.stop().await;
}
