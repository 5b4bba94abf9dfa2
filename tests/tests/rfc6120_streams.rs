//! RFC 6120 over real sockets: stream errors for bad input, TLS before authentication,
//! SASL failures, `from` stamping, resource conflicts, shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use openspimed_module_api::ns;
use openspimed_tests::{Got, Raw, TestServer, error_condition};

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

/// The server still accepts and authenticates new clients.
async fn still_serves(server: &TestServer, user: &str) {
    let (mut c, jid) = Raw::login(server, user, "pw", "check").await;
    assert!(jid.starts_with(&format!("{user}@localhost/")));
    c.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let pong = c.stanza("iq").await;
    assert_eq!(pong.attr("type"), Some("result"), "{pong}");
}

async fn plain_stream_error(server: &TestServer, input: &[u8]) -> String {
    let mut c = Raw::connect(server.c2s).await;
    c.send_lossy(input).await;
    c.stream_error().await
}

#[tokio::test]
async fn malformed_and_restricted_xml_end_the_stream_and_nothing_else() {
    let mut server = TestServer::start().await;
    server.add_user("alice", "pw").await;

    let cond = plain_stream_error(
        &server,
        format!("{HEADER}<message><body></message>").as_bytes(),
    )
    .await;
    assert_eq!(cond, "not-well-formed");

    let bomb = "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;'>]>\
                <stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
    let cond = plain_stream_error(&server, bomb.as_bytes()).await;
    assert!(
        cond == "restricted-xml" || cond == "not-well-formed",
        "{cond}"
    );

    let cond = plain_stream_error(&server, format!("{HEADER}<!-- a comment -->").as_bytes()).await;
    assert_eq!(cond, "restricted-xml");

    let cond = plain_stream_error(&server, format!("{HEADER}<?php echo 1; ?>").as_bytes()).await;
    assert_eq!(cond, "restricted-xml");

    let cond = plain_stream_error(
        &server,
        format!("{HEADER}<message>&lol;</message>").as_bytes(),
    )
    .await;
    assert_eq!(cond, "not-well-formed");

    let cond = plain_stream_error(&server, b"\xff\xfe<stream:stream>").await;
    assert_eq!(cond, "not-well-formed");

    // Bad input after TLS and authentication gets the same treatment.
    let (mut c, _) = Raw::login(&server, "alice", "pw", "r1").await;
    c.send_lossy(b"<message to='alice@localhost'><body>&#0;</body></message>")
        .await;
    assert_eq!(c.stream_error().await, "not-well-formed");

    still_serves(&server, "alice").await;
    server.stop().await;
}

#[tokio::test]
async fn header_problems_get_their_stream_errors() {
    let mut server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    let wrong_host = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='elsewhere.example' version='1.0'>";
    assert_eq!(
        plain_stream_error(&server, wrong_host.as_bytes()).await,
        "host-unknown"
    );
    let old = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='localhost'>";
    assert_eq!(
        plain_stream_error(&server, old.as_bytes()).await,
        "unsupported-version"
    );
    let wrong_ns = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='urn:not-streams' to='localhost' version='1.0'>";
    assert_eq!(
        plain_stream_error(&server, wrong_ns.as_bytes()).await,
        "invalid-namespace"
    );
    still_serves(&server, "alice").await;
    server.stop().await;
}

#[tokio::test]
async fn oversized_stanza_is_a_policy_violation() {
    let mut server = TestServer::start_with(|c| c.limits.c2s_stanza_bytes = 16 * 1024).await;
    server.add_user("alice", "pw").await;
    let (mut c, _) = Raw::login(&server, "alice", "pw", "big").await;
    let body = "x".repeat(20 * 1024);
    c.send_lossy(format!("<message to='alice@localhost'><body>{body}</body></message>").as_bytes())
        .await;
    assert_eq!(c.stream_error().await, "policy-violation");
    still_serves(&server, "alice").await;
    server.stop().await;
}

#[tokio::test]
async fn authentication_before_tls_is_refused() {
    let mut server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    let mut c = Raw::connect(server.c2s).await;
    let features = c.open("localhost").await;
    let starttls = features
        .get_child("starttls", ns::TLS)
        .expect("STARTTLS offered");
    assert!(
        starttls.get_child("required", ns::TLS).is_some(),
        "TLS must be required"
    );
    assert!(
        features.get_child("mechanisms", ns::SASL).is_none(),
        "no SASL before TLS: {features}"
    );
    // "\0alice\0pw" in base64.
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>")
        .await;
    let failure = c.element().await;
    assert!(failure.is("failure", ns::SASL), "{failure}");
    assert!(
        failure.get_child("encryption-required", ns::SASL).is_some(),
        "{failure}"
    );
    assert_eq!(c.stream_error().await, "policy-violation");

    // Stanzas before TLS are refused too.
    let mut c = Raw::connect(server.c2s).await;
    c.open("localhost").await;
    c.send("<message to='alice@localhost'><body>hi</body></message>")
        .await;
    assert_eq!(c.stream_error().await, "not-authorized");
    server.stop().await;
}

#[tokio::test]
async fn wrong_password_is_not_authorized_and_repeated_failures_are_throttled() {
    let mut server = TestServer::start_with(|c| c.auth.max_failures = 2).await;
    server.add_user("alice", "pw").await;
    let mut c = Raw::connect(server.c2s).await;
    c.open("localhost").await;
    let mut c = c.starttls(server.tls_config(None)).await;
    let features = c.open("localhost").await;
    let mechs: Vec<String> = features
        .get_child("mechanisms", ns::SASL)
        .expect("mechanisms")
        .children()
        .map(|m| m.text())
        .collect();
    assert!(mechs.contains(&"SCRAM-SHA-256".to_owned()), "{mechs:?}");
    assert!(mechs.contains(&"PLAIN".to_owned()), "{mechs:?}");

    let f = c.auth_plain("alice", "wrong").await;
    assert!(f.get_child("not-authorized", ns::SASL).is_some(), "{f}");
    let f = c.auth_plain("nobody", "pw").await;
    assert!(f.get_child("not-authorized", ns::SASL).is_some(), "{f}");
    // Two failures from this address: the third attempt, even with the right password, waits.
    let f = c.auth_plain("alice", "pw").await;
    assert!(
        f.get_child("temporary-auth-failure", ns::SASL).is_some(),
        "{f}"
    );
    // Three attempts on one stream is the limit.
    assert_eq!(c.stream_error().await, "policy-violation");
    server.stop().await;
}

#[tokio::test]
async fn spoofed_from_is_overwritten_and_unknown_iq_gets_service_unavailable() {
    let mut server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let (mut a, alice) = Raw::login(&server, "alice", "pw", "a").await;
    let (mut b, bob) = Raw::login(&server, "bob", "pw", "b").await;
    a.send(&format!(
        "<message from='mallory@localhost/evil' to='{bob}' id='m1'><body>hello</body></message>"
    ))
    .await;
    let got = b.stanza("message").await;
    assert_eq!(got.attr("from"), Some(alice.as_str()));
    assert_eq!(got.get_child("body", ns::CLIENT).unwrap().text(), "hello");

    a.send("<iq type='get' id='u1' to='localhost'><query xmlns='urn:example:unknown'/></iq>")
        .await;
    let err = a.stanza("iq").await;
    assert_eq!(err.attr("type"), Some("error"));
    assert_eq!(err.attr("id"), Some("u1"));
    assert_eq!(
        error_condition(&err).as_deref(),
        Some("service-unavailable")
    );

    // An iq to an account's resource that is not connected.
    a.send("<iq type='get' id='u2' to='bob@localhost/nowhere'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let err = a.stanza("iq").await;
    assert_eq!(
        error_condition(&err).as_deref(),
        Some("service-unavailable"),
        "{err}"
    );

    // An iq with two payloads is a bad request; one without id too.
    a.send("<iq type='get' id='u3' to='localhost'><ping xmlns='urn:xmpp:ping'/><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let err = a.stanza("iq").await;
    assert_eq!(
        error_condition(&err).as_deref(),
        Some("bad-request"),
        "{err}"
    );

    // A domain this server does not serve (no federation yet).
    a.send("<message to='someone@remote.example' id='r1'><body>x</body></message>")
        .await;
    let err = a.stanza("message").await;
    assert_eq!(
        error_condition(&err).as_deref(),
        Some("remote-server-not-found"),
        "{err}"
    );
    server.stop().await;
}

#[tokio::test]
async fn same_resource_twice_kicks_the_first_with_conflict() {
    let mut server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    let (mut first, jid1) = Raw::login(&server, "alice", "pw", "phone").await;
    let (mut second, jid2) = Raw::login(&server, "alice", "pw", "phone").await;
    assert_eq!(jid1, jid2);
    assert_eq!(first.stream_error().await, "conflict");
    // The new session is the one that receives.
    second
        .send(&format!(
            "<message to='{jid2}' id='self'><body>me</body></message>"
        ))
        .await;
    let m = second.stanza("message").await;
    assert_eq!(m.attr("id"), Some("self"));
    server.stop().await;
}

#[tokio::test]
async fn shutdown_sends_system_shutdown_to_every_session() {
    let mut server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    let (mut a, _) = Raw::login(&server, "alice", "pw", "a").await;
    let mut pending = Raw::connect(server.c2s).await;
    pending.open("localhost").await;
    server.stop().await;
    assert_eq!(a.stream_error().await, "system-shutdown");
    assert_eq!(pending.stream_error().await, "system-shutdown");
}

#[tokio::test]
async fn legacy_session_and_plain_with_authzid_and_folded_base64_work() {
    // What the 2008 OpenSpime client does (wire profile §10).
    let mut server = TestServer::start().await;
    server
        .add_user(
            "spime",
            "pw-of-a-length-that-makes-base64-fold-across-lines-0123456789",
        )
        .await;
    let mut c = Raw::connect(server.c2s).await;
    c.open("localhost").await;
    let mut c = c.starttls(server.tls_config(None)).await;
    c.open("localhost").await;
    use base64::Engine;
    let enc = base64::engine::general_purpose::STANDARD.encode(
        "spime@localhost\0spime\0pw-of-a-length-that-makes-base64-fold-across-lines-0123456789",
    );
    let folded: String = enc
        .as_bytes()
        .chunks(76)
        .map(|l| format!("{}\n", std::str::from_utf8(l).unwrap()))
        .collect();
    assert!(folded.matches('\n').count() >= 2);
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{folded}</auth>"
    ))
    .await;
    let ok = c.element().await;
    assert!(ok.is("success", ns::SASL), "{ok}");
    c.restart();
    let features = c.open("localhost").await;
    assert!(features.get_child("bind", ns::BIND).is_some());
    let session = features
        .get_child("session", ns::SESSION)
        .expect("session feature");
    assert!(session.get_child("optional", ns::SESSION).is_some());
    c.bind("spime").await;
    c.send("<iq type='set' id='sess' to='localhost'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
        .await;
    let r = c.stanza("iq").await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    assert_eq!(r.attr("id"), Some("sess"));
    server.stop().await;
}

#[tokio::test]
async fn direct_tls_with_alpn_reaches_sasl() {
    let mut server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    let mut c = Raw::connect_direct(&server).await;
    let features = c.open("localhost").await;
    assert!(
        features.get_child("mechanisms", ns::SASL).is_some(),
        "{features}"
    );
    assert!(features.get_child("starttls", ns::TLS).is_none());
    let ok = c.auth_plain("alice", "pw").await;
    assert!(ok.is("success", ns::SASL));
    c.restart();
    c.open("localhost").await;
    let jid = c.bind("").await;
    assert!(
        jid.starts_with("alice@localhost/"),
        "server-generated resource: {jid}"
    );
    drop(c);
    // A closed connection is not mistaken for a stream error.
    let mut c = Raw::connect_direct(&server).await;
    c.send("</stream:stream>").await;
    assert!(matches!(
        c.next().await,
        Got::Eof | Got::Header | Got::Close | Got::Element(_)
    ));
    server.stop().await;
}

/// The DNS names of the certificate the server presents for `sni`.
async fn presented_names(server: &TestServer, sni: &str) -> Vec<String> {
    let tcp = tokio::net::TcpStream::connect(server.direct).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(server.tls_config(Some(b"xmpp-client")))
        .connect(
            rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap(),
            tcp,
        )
        .await
        .expect("handshake succeeds: the certificate matches the name");
    let (_, conn) = tls.get_ref();
    let leaf = conn.peer_certificates().unwrap()[0].clone();
    openspimed_certs::inspect_der(&leaf).unwrap().dns_names
}

#[tokio::test]
async fn certificate_is_picked_by_sni_per_virtual_host() {
    let mut server = TestServer::start_hosts(&["second.test"], |_| {}).await;
    assert!(
        presented_names(&server, "second.test")
            .await
            .contains(&"second.test".to_owned())
    );
    assert!(
        presented_names(&server, "localhost")
            .await
            .contains(&"localhost".to_owned())
    );
    // A service subdomain of a host gets that host's certificate (here *.second.test).
    assert!(
        presented_names(&server, "pubsub.second.test")
            .await
            .contains(&"*.second.test".to_owned())
    );

    // Accounts are per virtual host.
    let creds = openspimed::sasl::derive_credentials("pw", 4096);
    server
        .accounts()
        .create_account("carol", "second.test", &creds)
        .await
        .unwrap();
    let mut c = Raw::connect(server.c2s).await;
    c.open("second.test").await;
    let tcp = c.io;
    c = Raw::new(tcp);
    c.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    // The parser state is fresh, so skip reading the (already consumed) header: just wait
    // for <proceed/> bytes by reading raw.
    let mut buf = [0u8; 256];
    let n = tokio::io::AsyncReadExt::read(&mut c.io, &mut buf)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("proceed"));
    let tls = tokio_rustls::TlsConnector::from(server.tls_config(None))
        .connect(
            rustls_pki_types::ServerName::try_from("second.test").unwrap(),
            c.io,
        )
        .await
        .unwrap();
    let mut c = Raw::new(tls);
    c.open("second.test").await;
    let ok = c.auth_plain("carol", "pw").await;
    assert!(ok.is("success", ns::SASL), "{ok}");
    c.restart();
    c.open("second.test").await;
    assert_eq!(c.bind("x").await, "carol@second.test/x");
    server.stop().await;
}

#[tokio::test]
async fn silent_connection_gets_connection_timeout() {
    // Waiting for the server's timer is the behaviour under test, so the test takes 1 s.
    let mut server = TestServer::start_with(|c| c.limits.handshake_timeout_secs = 1).await;
    let mut c = Raw::connect(server.c2s).await;
    assert_eq!(c.stream_error().await, "connection-timeout");
    server.stop().await;
}
