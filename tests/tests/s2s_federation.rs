//! Server-to-server federation (RFC 6120, XEP-0178, XEP-0220, XEP-0368) between two
//! openspimed servers on loopback serving `a.example` and `b.example`, found through static
//! `[s2s.remote]` addresses, with third-party clients (tokio-xmpp) over real TLS, and a raw
//! server connection for what a well-behaved peer never sends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{co2_report, iq, next_message, online, vector_key};
use futures::StreamExt;
use openspime::Container;
use openspime::keyinfo::{self, KeyForm};
use openspimed_certs::DevCa;
use openspimed_config::RemoteConfig;
use openspimed_module_api::{Element, ns, toml};
use openspimed_tests::{Raw, TestServer, WAIT, error_condition};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_xmpp::jid::Jid;
use tokio_xmpp::parsers::message::{Lang, Message, MessageType};
use tokio_xmpp::parsers::presence::{Presence, Type as PresenceType};
use tokio_xmpp::parsers::stanza_error::DefinedCondition;

/// Points `server`'s static s2s addresses for `domain` at `target`'s STARTTLS listener (or
/// its direct-TLS one) with this dialback policy.
fn point(
    server: &TestServer,
    domain: &str,
    target: &TestServer,
    direct: bool,
    dialback: Option<bool>,
) {
    let t = target.server.as_ref().unwrap();
    let addr = if direct {
        t.s2s_direct_tls_addrs[0]
    } else {
        t.s2s_addrs[0]
    };
    let mut remotes = server.config.s2s.remote.clone();
    remotes.insert(
        domain.to_owned(),
        RemoteConfig {
            addresses: vec![addr],
            direct_tls: direct,
            dialback,
        },
    );
    server.s2s().set_remotes(remotes);
}

fn chat(to: &str, body: &str) -> Message {
    Message::chat(Some(Jid::new(to).unwrap())).with_body(Lang::new(), body.to_owned())
}

async fn send(client: &mut tokio_xmpp::Client, m: Message) {
    client.send_stanza(m.into()).await.unwrap();
}

fn body(m: &Message) -> String {
    m.bodies.values().next().cloned().unwrap_or_default()
}

/// Both servers, each with its users online, trading messages both ways.
async fn exchange(a: &TestServer, b: &TestServer) {
    a.add_account("alice", "a.example", "pw-a").await;
    b.add_account("bob", "b.example", "pw-b").await;
    let (mut alice, _) = online(a, "alice@a.example/phone", "pw-a", false).await;
    let (mut bob, _) = online(b, "bob@b.example/laptop", "pw-b", false).await;

    send(&mut alice, chat("bob@b.example/laptop", "hello from a")).await;
    let got = next_message(&mut bob).await;
    assert_eq!(
        got.from.as_ref().unwrap().to_string(),
        "alice@a.example/phone"
    );
    assert_eq!(body(&got), "hello from a");

    // To the bare JID: delivered to the available resource (RFC 6121 §8.5.2.1.1).
    bob.send_stanza(tokio_xmpp::parsers::presence::Presence::available().into())
        .await
        .unwrap();
    send(&mut bob, chat("alice@a.example/phone", "hello from b")).await;
    let got = next_message(&mut alice).await;
    assert_eq!(
        got.from.as_ref().unwrap().to_string(),
        "bob@b.example/laptop"
    );
    assert_eq!(body(&got), "hello from b");

    // A presence subscription handshake across the federation ends with `both`, and each
    // sees the other's presence (RFC 6121 §3).
    for c in [&mut alice, &mut bob] {
        roster_get(c).await;
        c.send_stanza(Presence::available().into()).await.unwrap();
    }
    let sub = |to: &str, t| Presence::new(t).with_to(Jid::new(to).unwrap());
    send_presence(&mut alice, sub("bob@b.example", PresenceType::Subscribe)).await;
    wait_presence(&mut bob, "alice@a.example", PresenceType::Subscribe).await;
    send_presence(&mut bob, sub("alice@a.example", PresenceType::Subscribed)).await;
    wait_presence(&mut alice, "bob@b.example/laptop", PresenceType::None).await;
    send_presence(&mut bob, sub("alice@a.example", PresenceType::Subscribe)).await;
    wait_presence(&mut alice, "bob@b.example", PresenceType::Subscribe).await;
    send_presence(&mut alice, sub("bob@b.example", PresenceType::Subscribed)).await;
    wait_presence(&mut bob, "alice@a.example/phone", PresenceType::None).await;
    assert_eq!(
        roster_get(&mut alice)
            .await
            .get("bob@b.example")
            .map(String::as_str),
        Some("both")
    );
    assert_eq!(
        roster_get(&mut bob)
            .await
            .get("alice@a.example")
            .map(String::as_str),
        Some("both")
    );

    // An iq to the remote server itself is answered across the federation (XEP-0199).
    let ping = Element::new("ping", ns::PING);
    assert_eq!(
        iq(&mut alice, "b.example", true, &ping).await.unwrap(),
        None
    );
    // A remote account that does not exist: the remote server's error comes back.
    let err = iq(&mut alice, "nobody@b.example/x", true, &ping)
        .await
        .unwrap_err();
    assert_eq!(err.defined_condition, DefinedCondition::ServiceUnavailable);
}

async fn send_presence(client: &mut tokio_xmpp::Client, p: Presence) {
    client.send_stanza(p.into()).await.unwrap();
}

/// The next presence from `from` (bare, or a resource of it) of type `t`.
async fn wait_presence(client: &mut tokio_xmpp::Client, from: &str, t: PresenceType) {
    loop {
        let ev = tokio::time::timeout(WAIT, client.next())
            .await
            .expect("presence in time");
        if let Some(tokio_xmpp::Event::Stanza(tokio_xmpp::Stanza::Presence(p))) = ev {
            let f = p.from.as_ref().map(|j| j.to_string()).unwrap_or_default();
            if p.type_ == t && (f == from || f.starts_with(&format!("{from}/"))) {
                return;
            }
        }
    }
}

/// The user's roster: contact → subscription.
async fn roster_get(client: &mut tokio_xmpp::Client) -> BTreeMap<String, String> {
    let q: tokio_xmpp::minidom::Element = "<query xmlns='jabber:iq:roster'/>".parse().unwrap();
    let resp = tokio::time::timeout(
        WAIT,
        client.send_iq(None, tokio_xmpp::IqRequest::Get(q)).await,
    )
    .await
    .unwrap()
    .unwrap();
    let tokio_xmpp::IqResponse::Result(Some(el)) = resp else {
        panic!("roster: {resp:?}")
    };
    el.children()
        .map(|i| {
            (
                i.attr("jid").unwrap_or_default().to_owned(),
                i.attr("subscription").unwrap_or("none").to_owned(),
            )
        })
        .collect()
}

fn metric_lines(name: &str) -> Vec<String> {
    openspimed::telemetry::handle()
        .render()
        .lines()
        .filter(|l| l.starts_with(name))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn trusted_certificates_authenticate_with_sasl_external_both_ways() {
    let ca = DevCa::new("federation CA").unwrap();
    let a = TestServer::start_on(&ca, &["a.example"], |_| {}).await;
    let b = TestServer::start_on(&ca, &["b.example"], |_| {}).await;
    // Dialback disallowed both ways: only valid certificates get through. a → b over
    // direct TLS (XEP-0368), b → a over STARTTLS.
    point(&a, "b.example", &b, true, Some(false));
    point(&b, "a.example", &a, false, Some(false));
    exchange(&a, &b).await;
    let auth = metric_lines("openspimed_s2s_authentications_total");
    for dir in ["in", "out"] {
        let want = format!("direction=\"{dir}\",method=\"sasl_external\",result=\"success\"");
        assert!(auth.iter().any(|l| l.contains(&want)), "{auth:?}");
    }
}

#[tokio::test]
async fn untrusted_certificates_fall_back_to_dialback() {
    // Each server trusts only its own CA, so neither certificate validates remotely.
    let ca_a = DevCa::new("CA of a").unwrap();
    let ca_b = DevCa::new("CA of b").unwrap();
    let a = TestServer::start_on(&ca_a, &["a.example"], |_| {}).await;
    let b = TestServer::start_on(&ca_b, &["b.example"], |_| {}).await;
    point(&a, "b.example", &b, false, None);
    point(&b, "a.example", &a, false, None);
    exchange(&a, &b).await;
    let auth = metric_lines("openspimed_s2s_authentications_total");
    for dir in ["in", "out"] {
        let want = format!("direction=\"{dir}\",method=\"dialback\",result=\"success\"");
        assert!(auth.iter().any(|l| l.contains(&want)), "{auth:?}");
    }
}

#[tokio::test]
async fn a_certificate_for_the_wrong_domain_is_refused_when_dialback_is_disallowed() {
    let ca = DevCa::new("federation CA").unwrap();
    let a = TestServer::start_on(&ca, &["a.example"], |_| {}).await;
    // b.example presents a certificate issued for another domain.
    let b = TestServer::start_on(&ca, &["b.example"], |c| {
        let (cert, key) = ca.issue(&["wrong.example"]).unwrap();
        let host = c.hosts.get_mut("b.example").unwrap();
        std::fs::write(host.certificate.as_ref().unwrap(), cert).unwrap();
        std::fs::write(host.key.as_ref().unwrap(), key).unwrap();
    })
    .await;
    point(&a, "b.example", &b, false, Some(false));
    a.add_account("alice", "a.example", "pw-a").await;
    let (mut alice, _) = online(&a, "alice@a.example/phone", "pw-a", false).await;

    // a will not send to b: b's certificate does not name b.example.
    send(&mut alice, chat("bob@b.example/laptop", "never delivered")).await;
    let bounce = next_message(&mut alice).await;
    assert_eq!(bounce.type_, MessageType::Error);
    let err = bounce
        .payloads
        .iter()
        .find(|p| p.name() == "error")
        .unwrap();
    assert!(
        err.children()
            .any(|c| c.name() == "remote-server-not-found"),
        "{err:?}"
    );
    // Nor accept b.example from a peer whose certificate names another domain: no SASL
    // EXTERNAL, and dialback refused by a's policy for b.example.
    let header = s2s_header("b.example", "a.example");
    let (mut peer, features) = raw_server(&a, &ca, &["wrong.example"], &header, "a.example").await;
    assert!(!offers_external(&features), "{features}");
    peer.send("<db:result xmlns:db='jabber:server:dialback' from='b.example' to='a.example'>00</db:result>")
        .await;
    let answer = peer.element().await;
    assert!(answer.is("result", "jabber:server:dialback"), "{answer}");
    assert_eq!(answer.attr("type"), Some("error"), "{answer}");
    // In the prefixed form the stream header declares, as Prosody and ejabberd write it.
    let wire = String::from_utf8_lossy(&peer.received).into_owned();
    assert!(wire.contains("<db:result "), "{wire}");
    assert!(!wire.contains("<result"), "{wire}");
    assert_eq!(error_condition(&answer).as_deref(), Some("not-authorized"));
    // And nothing from it is routed.
    peer.send(
        "<message from='bob@b.example/x' to='alice@a.example/phone'><body>x</body></message>",
    )
    .await;
    assert_eq!(peer.stream_error().await, "not-authorized");
}

/// A remote server for `b.example` as a test peer: `a` is pointed at it, it accepts `a`'s
/// outgoing STARTTLS stream with a certificate from `ca` (one `a` does not trust unless told
/// to), offers `features` on the secured stream, and is handed back right after them, with
/// Alice online at `a`. The message Alice sent to `bob@b.example/x` is what `a` writes once
/// authenticated.
async fn peer_for_b(
    a: &TestServer,
    ca: &DevCa,
    features: &str,
) -> (
    Raw<tokio_rustls::server::TlsStream<TcpStream>>,
    tokio_xmpp::Client,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut remotes = a.config.s2s.remote.clone();
    remotes.insert(
        "b.example".to_owned(),
        RemoteConfig {
            addresses: vec![listener.local_addr().unwrap()],
            direct_tls: false,
            dialback: Some(true),
        },
    );
    a.s2s().set_remotes(remotes);
    a.add_account("alice", "a.example", "pw-a").await;
    let (mut alice, _) = online(a, "alice@a.example/phone", "pw-a", false).await;
    send(
        &mut alice,
        chat("bob@b.example/x", "to a peer like ejabberd"),
    )
    .await;

    let (tcp, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut peer = Raw::new(tcp);
    assert!(matches!(peer.next().await, openspimed_tests::Got::Header));
    peer.send(&peer_header("plain")).await;
    peer.send("<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>").await;
    assert!(peer.element().await.is("starttls", ns::TLS));
    peer.send("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    let (cert, key) = ca.issue(&["b.example"]).unwrap();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(config))
        .accept(peer.io)
        .await
        .unwrap();
    let mut peer = Raw::new(tls);
    assert!(matches!(peer.next().await, openspimed_tests::Got::Header));
    peer.send(&peer_header("secured")).await;
    peer.send(features).await;
    (peer, alice)
}

/// The stream header of the test peer for `b.example`.
fn peer_header(id: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:db='jabber:server:dialback' xmlns:stream='http://etherx.jabber.org/streams' \
         from='b.example' to='a.example' id='{id}' version='1.0'>"
    )
}

/// Reads the message Alice sent through [`peer_for_b`].
async fn alices_message(peer: &mut Raw<tokio_rustls::server::TlsStream<TcpStream>>) {
    let message = peer.element().await;
    assert!(message.is("message", ns::SERVER), "{message}");
    assert_eq!(message.attr("to"), Some("bob@b.example/x"));
    assert_eq!(
        message.get_child("body", ns::SERVER).map(|b| b.text()),
        Some("to a peer like ejabberd".to_owned())
    );
}

/// ejabberd (23.01) answers only `<db:result/>` in the prefixed form both stream headers
/// declare. So does this peer, whose certificate `a` does not trust (dialback is the way
/// in): before, openspimed wrote the default-namespace form, got no answer, and bounced the
/// message.
#[tokio::test]
async fn outgoing_dialback_is_written_in_the_prefixed_form_ejabberd_answers() {
    let ca = DevCa::new("federation CA").unwrap();
    let a = TestServer::start_on(&ca, &["a.example"], |_| {}).await;
    let untrusted = DevCa::new("a CA that a does not trust").unwrap();
    let dialback_only = "<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>";
    let (mut peer, _alice) = peer_for_b(&a, &untrusted, dialback_only).await;
    let result = peer.element().await;
    assert!(result.is("result", "jabber:server:dialback"), "{result}");
    let wire = String::from_utf8_lossy(&peer.received).into_owned();
    assert!(
        wire.contains("<db:result from='a.example' to='b.example'>"),
        "ejabberd would not answer this: {wire}"
    );
    peer.send("<db:result from='b.example' to='a.example' type='valid'/>")
        .await;
    alices_message(&mut peer).await;
}

/// Prosody and ejabberd try SASL EXTERNAL whenever the receiving server offers it, whether
/// or not they trust its certificate, and fall back to dialback: what the receiving server
/// thinks of *our* certificate is its business. Before, openspimed tried EXTERNAL only to
/// servers whose certificate it trusted, so this link went by dialback.
#[tokio::test]
async fn sasl_external_is_tried_whenever_offered_even_to_an_untrusted_peer() {
    let ca = DevCa::new("federation CA").unwrap();
    let a = TestServer::start_on(&ca, &["a.example"], |_| {}).await;
    let untrusted = DevCa::new("a CA that a does not trust").unwrap();
    let both = "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>";
    let (mut peer, _alice) = peer_for_b(&a, &untrusted, both).await;
    let auth = peer.element().await;
    assert!(auth.is("auth", ns::SASL), "{auth}");
    assert_eq!(auth.attr("mechanism"), Some("EXTERNAL"));
    assert_eq!(
        auth.text(),
        "YS5leGFtcGxl",
        "authzid a.example (XEP-0178 §4)"
    );
    peer.send("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
        .await;
    peer.restart();
    assert!(matches!(peer.next().await, openspimed_tests::Got::Header));
    peer.send(&peer_header("authenticated")).await;
    peer.send("<stream:features/>").await;
    alices_message(&mut peer).await;
}

/// When the peer refuses EXTERNAL, the link falls back to dialback (policy permitting).
#[tokio::test]
async fn a_refused_sasl_external_falls_back_to_dialback() {
    let ca = DevCa::new("federation CA").unwrap();
    let a = TestServer::start_on(&ca, &["a.example"], |_| {}).await;
    let untrusted = DevCa::new("a CA that a does not trust").unwrap();
    let both = "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>";
    let (mut peer, _alice) = peer_for_b(&a, &untrusted, both).await;
    assert!(peer.element().await.is("auth", ns::SASL));
    peer.send("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>")
        .await;
    assert!(peer.element().await.is("result", "jabber:server:dialback"));
    peer.send("<db:result from='b.example' to='a.example' type='valid'/>")
        .await;
    alices_message(&mut peer).await;
}

/// A raw server-to-server stream to `target` secured with STARTTLS, presenting a client
/// certificate for `names`; returns it with the features of the secured stream.
async fn raw_server(
    target: &TestServer,
    ca: &DevCa,
    names: &[&str],
    header: &str,
    to: &str,
) -> (Raw<tokio_rustls::client::TlsStream<TcpStream>>, Element) {
    let mut raw = Raw::connect(target.s2s.unwrap()).await;
    raw.send(header).await;
    let _ = raw.next().await;
    let features = raw.element().await;
    assert!(
        features.get_child("starttls", ns::TLS).is_some(),
        "{features}"
    );
    raw.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    assert!(raw.element().await.is("proceed", ns::TLS));
    let (cert, key) = ca.issue(names).unwrap();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(to.to_owned()).unwrap(), raw.io)
        .await
        .unwrap();
    let mut raw = Raw::new(tls);
    raw.send(header).await;
    let _ = raw.next().await;
    let features = raw.element().await;
    (raw, features)
}

fn s2s_header(from: &str, to: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:db='jabber:server:dialback' xmlns:stream='http://etherx.jabber.org/streams' \
         from='{from}' to='{to}' version='1.0'>"
    )
}

/// SASL EXTERNAL with the authorization identity taken from the stream header (XEP-0178).
const EXTERNAL: &str =
    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>";

/// After SASL success: the restarted stream's header and its features.
async fn restart_stream(peer: &mut Raw<tokio_rustls::client::TlsStream<TcpStream>>, header: &str) {
    peer.restart();
    peer.send(header).await;
    let _ = peer.next().await;
    assert!(peer.element().await.is("features", ns::STREAM));
}

/// A raw stream from a.example to `target` (b.example), authenticated with SASL EXTERNAL
/// on a certificate from `ca`.
async fn authenticated_peer(
    target: &TestServer,
    ca: &DevCa,
    header: &str,
) -> Raw<tokio_rustls::client::TlsStream<TcpStream>> {
    let (mut peer, features) = raw_server(target, ca, &["a.example"], header, "b.example").await;
    assert!(offers_external(&features), "{features}");
    peer.send(EXTERNAL).await;
    assert!(peer.element().await.is("success", ns::SASL));
    restart_stream(&mut peer, header).await;
    peer
}

fn offers_external(features: &Element) -> bool {
    features
        .get_child("mechanisms", ns::SASL)
        .is_some_and(|m| m.children().any(|c| c.text() == "EXTERNAL"))
}

#[tokio::test]
async fn a_spoofed_from_domain_ends_the_stream_with_invalid_from() {
    let ca = DevCa::new("federation CA").unwrap();
    let b = TestServer::start_on(&ca, &["b.example"], |_| {}).await;
    b.add_account("bob", "b.example", "pw-b").await;
    let (mut bob, _) = online(&b, "bob@b.example/laptop", "pw-b", false).await;
    let header = s2s_header("a.example", "b.example");
    let mut peer = authenticated_peer(&b, &ca, &header).await;
    // From the authenticated domain: delivered.
    peer.send(
        "<message from='alice@a.example/x' to='bob@b.example/laptop' type='chat'><body>real</body></message>",
    )
    .await;
    assert_eq!(body(&next_message(&mut bob).await), "real");
    // From a domain this stream never authenticated: stream error.
    peer.send(
        "<message from='mallory@c.example/x' to='bob@b.example/laptop' type='chat'><body>fake</body></message>",
    )
    .await;
    assert_eq!(peer.stream_error().await, "invalid-from");
    // Stanzas before authentication are refused too.
    let mut raw = Raw::connect(b.s2s.unwrap()).await;
    raw.send(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' from='a.example' to='nope.example' version='1.0'>",
    )
    .await;
    assert_eq!(raw.stream_error().await, "host-unknown");
}

#[tokio::test]
async fn unreachable_and_silent_domains_bounce() {
    // A port nobody listens on, and a listener that accepts and then never speaks.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let ca = DevCa::new("federation CA").unwrap();
    let a = TestServer::start_on(&ca, &["a.example"], |c| {
        c.s2s.connect_timeout_secs = 1;
        let at = |addr| RemoteConfig {
            addresses: vec![addr],
            ..RemoteConfig::default()
        };
        let mut r = BTreeMap::new();
        r.insert("closed.example".to_owned(), at(closed));
        r.insert("silent.example".to_owned(), at(silent_addr));
        c.s2s.remote = r;
    })
    .await;
    a.add_account("alice", "a.example", "pw-a").await;
    let (mut alice, _) =
        openspimed_tests::Raw::login_on(&a, "a.example", "alice", "pw-a", "r").await;
    alice
        .send("<message to='x@closed.example' id='c1' type='chat'><body>1</body></message>")
        .await;
    let m = alice.stanza("message").await;
    assert_eq!(m.attr("id"), Some("c1"));
    assert_eq!(
        error_condition(&m).as_deref(),
        Some("remote-server-not-found")
    );
    let started = std::time::Instant::now();
    alice
        .send("<message to='x@silent.example' id='s1' type='chat'><body>2</body></message>")
        .await;
    let m = alice.stanza("message").await;
    assert_eq!(m.attr("id"), Some("s1"));
    assert_eq!(
        error_condition(&m).as_deref(),
        Some("remote-server-timeout")
    );
    assert!(started.elapsed() < WAIT);
    hold.abort();
}

#[tokio::test]
async fn a_spime_on_a_reports_signed_and_encrypted_to_a_scopenode_on_b() {
    let ca = DevCa::new("federation CA").unwrap();
    // a.example: the spime and the certification service holding its key (cert.a.example).
    let a = TestServer::start_on(&ca, &["a.example"], |_| {}).await;
    // b.example: the ScopeNode, which trusts cert.a.example for signatures.
    let b = TestServer::start_on(&ca, &["b.example"], |c| {
        c.modules.insert(
            "scopenode".into(),
            toml::from_str("trusted_cert_services = ['cert.a.example', 'cert.b.example']").unwrap(),
        );
    })
    .await;
    point(&a, "b.example", &b, false, None);
    point(&b, "a.example", &a, false, None);
    a.add_account("spime1", "a.example", "pw").await;
    let spime_jid = "spime1@a.example/sensor";
    let (mut spime, _) = online(&a, spime_jid, "pw", false).await;
    let key = vector_key("sender");
    let pubkeys = keyinfo::pubkeys(spime_jid, &key.to_public_key(), KeyForm::Standard);
    assert_eq!(
        iq(&mut spime, "cert.a.example", false, &pubkeys)
            .await
            .unwrap(),
        None
    );

    // The ScopeNode's key, from its certification service on b, fetched across.
    let get =
        Element::new("pubkeys", openspime::ns::PUBKEY).with_attr("jid", "demo@scopenode.b.example");
    let answer = iq(&mut spime, "cert.b.example", true, &get)
        .await
        .unwrap()
        .unwrap();
    let node_key = keyinfo::parse_pubkeys(&answer).unwrap().1;

    // Signed with the key on cert.a.example, encrypted to the node: b fetches the key
    // from a to verify, then stores the entry before answering.
    let sealed = Container::seal(
        co2_report("412.5"),
        Some((&key, "cert.a.example", Some(spime_jid))),
        None,
        Some(&node_key),
    )
    .unwrap();
    assert!(sealed.is_encrypted());
    assert_eq!(
        iq(
            &mut spime,
            "demo@scopenode.b.example/co2",
            false,
            &sealed.to_element()
        )
        .await
        .unwrap(),
        None
    );
    let stored = openspimed_mod_scopenode::store::SensorData::new(b.storage())
        .entries_for_spime("demo@scopenode.b.example", spime_jid, 10)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].xml.contains("<ppm>412.5</ppm>"), "{stored:?}");
    // A forged signature is refused with the profile's error, across the federation too.
    let other = vector_key("recipient");
    let forged = Container::seal(
        co2_report("1.0"),
        Some((&other, "cert.a.example", Some(spime_jid))),
        None,
        Some(&node_key),
    )
    .unwrap();
    let err = iq(
        &mut spime,
        "demo@scopenode.b.example/co2",
        false,
        &forged.to_element(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.other.unwrap().name(),
        "signature-error-public-key-corrupted"
    );
}

#[tokio::test]
async fn idle_server_streams_are_closed() {
    let ca = DevCa::new("federation CA").unwrap();
    let b = TestServer::start_on(&ca, &["b.example"], |c| c.s2s.idle_timeout_secs = 1).await;
    let header = s2s_header("a.example", "b.example");
    let mut peer = authenticated_peer(&b, &ca, &header).await;
    // Say nothing: the server closes the stream politely once idle_timeout_secs pass.
    let started = std::time::Instant::now();
    match peer.next().await {
        openspimed_tests::Got::Close | openspimed_tests::Got::Eof => {}
        other => panic!("expected the stream to close, got {other:?}"),
    }
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
}

#[tokio::test]
async fn connections_per_remote_domain_are_limited() {
    let ca = DevCa::new("federation CA").unwrap();
    let b = TestServer::start_on(&ca, &["b.example"], |c| {
        c.s2s.max_connections_per_domain = 1
    })
    .await;
    let header = s2s_header("a.example", "b.example");
    // The first stream is counted once its EXTERNAL succeeded.
    let (mut first, features) = raw_server(&b, &ca, &["a.example"], &header, "b.example").await;
    assert!(offers_external(&features), "{features}");
    first.send(EXTERNAL).await;
    assert!(first.element().await.is("success", ns::SASL));
    // A second one from the same domain is over the limit.
    let (mut second, _) = raw_server(&b, &ca, &["a.example"], &header, "b.example").await;
    second.send(EXTERNAL).await;
    assert_eq!(second.stream_error().await, "resource-constraint");
    // The first one goes on.
    restart_stream(&mut first, &header).await;
}

#[tokio::test]
async fn the_example_dialback_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = openspimed_config::Config {
        data_dir: dir.path().join("data"),
        ..openspimed_config::Config::default()
    };
    config.listeners.c2s = vec!["127.0.0.1:0".parse().unwrap()];
    config.listeners.c2s_direct_tls = vec![];
    config.metrics.enabled = false;
    config.s2s.dialback_secret = Some(openspimed_config::EXAMPLE_DIALBACK_SECRET.into());
    let Err(openspimed::StartError::Config(lines)) = openspimed::start(config).await else {
        panic!("the server must refuse the placeholder secret");
    };
    assert!(lines.iter().any(|l| l.contains("placeholder")), "{lines:?}");
}
