//! XEP-0077 over real TLS: registration before authentication where the host allows it
//! (the embedded default does for `localhost`), password change and account removal always.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use openspimed_module_api::ns;
use openspimed_tests::{Raw, TestServer, error_condition};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

type Tls = Raw<TlsStream<TcpStream>>;

/// A secured, unauthenticated stream and its features.
async fn secured(server: &TestServer) -> (Tls, openspimed_module_api::Element) {
    let mut c = Raw::connect(server.c2s).await;
    c.open("localhost").await;
    let mut c = c.starttls(server.tls_config(None)).await;
    let f = c.open("localhost").await;
    (c, f)
}

async fn iq(c: &mut Tls, xml: &str) -> openspimed_module_api::Element {
    c.send(xml).await;
    c.stanza("iq").await
}

#[tokio::test]
async fn register_then_log_in_and_limits() {
    let mut server = TestServer::start_with(|c| {
        if let Some(h) = c.hosts.get_mut("localhost") {
            h.allow_registration = true;
        }
        c.auth.registrations_per_ip_per_hour = 2;
    })
    .await;
    let (mut c, features) = secured(&server).await;
    assert!(
        features
            .get_child("register", "http://jabber.org/features/iq-register")
            .is_some(),
        "{features}"
    );
    let fields = iq(
        &mut c,
        "<iq type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>",
    )
    .await;
    let q = fields.get_child("query", "jabber:iq:register").unwrap();
    assert!(q.get_child("username", "jabber:iq:register").is_some());
    assert!(q.get_child("password", "jabber:iq:register").is_some());

    let ok = iq(
        &mut c,
        "<iq type='set' id='r2'><query xmlns='jabber:iq:register'>\
        <username>Spime1</username><password>s3cret</password></query></iq>",
    )
    .await;
    assert_eq!(ok.attr("type"), Some("result"), "{ok}");
    let dup = iq(
        &mut c,
        "<iq type='set' id='r3'><query xmlns='jabber:iq:register'>\
        <username>spime1</username><password>other</password></query></iq>",
    )
    .await;
    assert_eq!(error_condition(&dup).as_deref(), Some("conflict"));
    let missing = iq(
        &mut c,
        "<iq type='set' id='r4'><query xmlns='jabber:iq:register'>\
        <username>nopass</username></query></iq>",
    )
    .await;
    assert_eq!(error_condition(&missing).as_deref(), Some("not-acceptable"));
    // The same stream can then authenticate as the new account.
    let success = c.auth_plain("spime1", "s3cret").await;
    assert!(success.is("success", ns::SASL), "{success}");

    // A second registration from this address is the limit (2 per hour here).
    let (mut c, _) = secured(&server).await;
    let ok = iq(
        &mut c,
        "<iq type='set' id='r5'><query xmlns='jabber:iq:register'>\
        <username>spime2</username><password>pw</password></query></iq>",
    )
    .await;
    assert_eq!(ok.attr("type"), Some("result"));
    let limited = iq(
        &mut c,
        "<iq type='set' id='r6'><query xmlns='jabber:iq:register'>\
        <username>spime3</username><password>pw</password></query></iq>",
    )
    .await;
    assert_eq!(
        error_condition(&limited).as_deref(),
        Some("resource-constraint")
    );
    let (_, jid) = Raw::login(&server, "spime2", "pw", "x").await;
    assert_eq!(jid, "spime2@localhost/x");
    server.stop().await;
}

#[tokio::test]
async fn registration_off_but_password_change_and_removal_work() {
    let mut server = TestServer::start_with(|c| {
        if let Some(h) = c.hosts.get_mut("localhost") {
            h.allow_registration = false;
        }
    })
    .await;
    server.add_user("alice", "old").await;
    let (mut c, features) = secured(&server).await;
    assert!(
        features
            .get_child("register", "http://jabber.org/features/iq-register")
            .is_none()
    );
    let refused = iq(
        &mut c,
        "<iq type='set' id='r1'><query xmlns='jabber:iq:register'>\
        <username>mallory</username><password>pw</password></query></iq>",
    )
    .await;
    assert_eq!(
        error_condition(&refused).as_deref(),
        Some("service-unavailable")
    );

    // Password change.
    let (mut a, _) = Raw::login(&server, "alice", "old", "a").await;
    let r = iq(
        &mut a,
        "<iq type='set' id='p1'><query xmlns='jabber:iq:register'>\
        <username>alice</username><password>new</password></query></iq>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let other = iq(
        &mut a,
        "<iq type='set' id='p2'><query xmlns='jabber:iq:register'>\
        <username>bob</username><password>x</password></query></iq>",
    )
    .await;
    assert_eq!(error_condition(&other).as_deref(), Some("not-authorized"));
    let (mut c, _) = secured(&server).await;
    let f = c.auth_plain("alice", "old").await;
    assert!(
        f.get_child("not-authorized", ns::SASL).is_some(),
        "the old password is gone"
    );
    let (mut second, _) = Raw::login(&server, "alice", "new", "b").await;

    // Removal: answered, then every session of the account ends with not-authorized.
    let r = iq(
        &mut a,
        "<iq type='set' id='x1'><query xmlns='jabber:iq:register'><remove/></query></iq>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    assert_eq!(a.stream_error().await, "not-authorized");
    assert_eq!(second.stream_error().await, "not-authorized");
    let (mut c, _) = secured(&server).await;
    let f = c.auth_plain("alice", "new").await;
    assert!(f.get_child("not-authorized", ns::SASL).is_some());
    server.stop().await;
}
