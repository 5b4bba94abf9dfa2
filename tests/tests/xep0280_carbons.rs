//! XEP-0280 message carbons through tokio-xmpp over real TLS: copies read back with
//! xmpp-parsers' carbons and forwarding types.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{iq, next_message, online, online_at};
use futures::StreamExt;
use openspimed_module_api::Element;
use openspimed_tests::{CutProxy, TestServer, WAIT};
use tokio_xmpp::jid::Jid;
use tokio_xmpp::parsers::carbons::{Received, Sent};
use tokio_xmpp::parsers::message::{Lang, Message, MessageType};
use tokio_xmpp::parsers::presence::Presence;
use tokio_xmpp::parsers::stanza_id::StanzaId;
use tokio_xmpp::{Client, Event, Stanza};

const CARBONS: &str = "urn:xmpp:carbons:2";

fn chat(to: &str, body: &str) -> Message {
    let mut m = Message::new(Some(Jid::new(to).unwrap()));
    m.type_ = MessageType::Chat;
    m.bodies.insert(Lang::new(), body.to_owned());
    m
}

fn raw(xml: &str) -> Message {
    Message::try_from(xml.parse::<tokio_xmpp::minidom::Element>().unwrap()).unwrap()
}

fn body(m: &Message) -> String {
    m.bodies.values().next().cloned().unwrap_or_default()
}

async fn send(c: &mut Client, m: impl Into<Stanza>) {
    c.send_stanza(m.into()).await.unwrap();
}

async fn toggle(c: &mut Client, what: &str) {
    let answer = iq(c, "localhost", false, &Element::new(what, CARBONS)).await;
    assert!(answer.is_ok(), "{what}: {answer:?}");
}

/// The next carbon `c` gets: which way, and the forwarded message.
async fn next_carbon(c: &mut Client) -> (&'static str, Message) {
    let m = next_message(c).await;
    assert_eq!(
        m.from.as_ref().map(|j| j.to_string()).as_deref(),
        Some("alice@localhost"),
        "{m:?}"
    );
    for p in &m.payloads {
        if let Ok(r) = Received::try_from(p.clone()) {
            return ("received", r.forwarded.message);
        }
        if let Ok(s) = Sent::try_from(p.clone()) {
            return ("sent", s.forwarded.message);
        }
    }
    panic!("not a carbon: {m:?}");
}

async fn available(c: &mut Client, priority: i8) {
    let mut p = Presence::available();
    p.priority = tokio_xmpp::parsers::presence::Priority(priority);
    send(c, p).await;
}

#[tokio::test]
async fn sessions_that_enable_carbons_get_copies_of_the_others_conversations() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let (mut phone, _) = online(&server, "alice@localhost/phone", "pw", false).await;
    let (mut desk, _) = online(&server, "alice@localhost/desk", "pw", false).await;
    let (mut bob, _) = online(&server, "bob@localhost/x", "pw", false).await;
    available(&mut bob, 0).await;
    available(&mut phone, 0).await;
    available(&mut desk, 5).await;
    toggle(&mut phone, "enable").await;

    // Received on another resource: a <received/> copy, carrying the archive's id.
    send(&mut bob, chat("alice@localhost/desk", "to desk")).await;
    assert_eq!(body(&next_message(&mut desk).await), "to desk");
    let (way, copy) = next_carbon(&mut phone).await;
    assert_eq!((way, body(&copy).as_str()), ("received", "to desk"));
    assert!(copy.payloads.iter().any(|p| {
        StanzaId::try_from(p.clone()).is_ok_and(|s| s.by.to_string() == "alice@localhost")
    }));

    // Sent from another resource: a <sent/> copy with the archive's id; bob's copy has none.
    send(&mut desk, chat("bob@localhost", "from desk")).await;
    let got = next_message(&mut bob).await;
    assert_eq!(body(&got), "from desk");
    let ids_by = |m: &Message, by: &str| {
        m.payloads
            .iter()
            .filter(|p| StanzaId::try_from((*p).clone()).is_ok_and(|s| s.by.to_string() == by))
            .count()
    };
    assert_eq!(
        ids_by(&got, "alice@localhost"),
        0,
        "alice's archive id stays home: {got:?}"
    );
    assert_eq!(
        ids_by(&got, "bob@localhost"),
        1,
        "bob's archive has it: {got:?}"
    );
    let (way, copy) = next_carbon(&mut phone).await;
    assert_eq!((way, body(&copy).as_str()), ("sent", "from desk"));
    assert_eq!(
        copy.to.as_ref().map(|j| j.to_string()).as_deref(),
        Some("bob@localhost")
    );
    assert_eq!(ids_by(&copy, "alice@localhost"), 1, "{copy:?}");

    // To the bare JID: desk (priority 5) gets it by routing, phone a carbon, each once.
    send(&mut bob, chat("alice@localhost", "to bare")).await;
    assert_eq!(body(&next_message(&mut desk).await), "to bare");
    let (way, copy) = next_carbon(&mut phone).await;
    assert_eq!((way, body(&copy).as_str()), ("received", "to bare"));

    // Never copied: <private/>, <no-copy/>, group chat, headlines. The marker after them is
    // the next carbon phone sees.
    for xml in [
        "<message xmlns='jabber:client' to='alice@localhost/desk' type='chat'><body>p</body><private xmlns='urn:xmpp:carbons:2'/></message>",
        "<message xmlns='jabber:client' to='alice@localhost/desk' type='chat'><body>n</body><no-copy xmlns='urn:xmpp:hints'/></message>",
        "<message xmlns='jabber:client' to='alice@localhost/desk' type='headline'><body>h</body></message>",
    ] {
        send(&mut bob, raw(xml)).await;
        next_message(&mut desk).await;
    }
    send(&mut desk, raw("<message xmlns='jabber:client' to='bob@localhost' type='chat'><body>s</body><private xmlns='urn:xmpp:carbons:2'/></message>")).await;
    let got = next_message(&mut bob).await;
    assert!(
        got.payloads.iter().all(|p| !p.is("private", CARBONS)),
        "<private/> stays on the server: {got:?}"
    );
    send(&mut bob, chat("alice@localhost/desk", "marker")).await;
    next_message(&mut desk).await;
    let (_, copy) = next_carbon(&mut phone).await;
    assert_eq!(body(&copy), "marker");

    // A client cannot make the server copy a carbon: one it sends is passed on as sent.
    // Disabled: no more copies (desk's next carbon-worthy message reaches only bob).
    toggle(&mut phone, "disable").await;
    send(&mut bob, chat("alice@localhost/desk", "after disable")).await;
    next_message(&mut desk).await;
    toggle(&mut desk, "enable").await;
    send(&mut phone, chat("bob@localhost", "phone speaks")).await;
    next_message(&mut bob).await;
    let (way, copy) = next_carbon(&mut desk).await;
    assert_eq!((way, body(&copy).as_str()), ("sent", "phone speaks"));
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(300), async {
        loop {
            if let Some(Event::Stanza(Stanza::Message(m))) = phone.next().await {
                return m;
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "a disabled session got {quiet:?}");

    // Errors: bad requests to the carbons namespace.
    let bad = iq(
        &mut phone,
        "localhost",
        true,
        &Element::new("enable", CARBONS),
    )
    .await;
    assert!(bad.is_err());
    // Discovered at the server.
    let info = iq(
        &mut phone,
        "localhost",
        true,
        &Element::new("query", "http://jabber.org/protocol/disco#info"),
    )
    .await
    .unwrap()
    .unwrap()
    .to_string();
    assert!(info.contains("var='urn:xmpp:carbons:2'"), "{info}");
}

#[tokio::test]
async fn carbons_stay_enabled_across_stream_resumption() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let proxy = CutProxy::start(server.c2s).await;
    let (mut phone, _) = online_at(
        &server,
        proxy.addr,
        "alice@localhost/phone",
        "pw",
        false,
        true,
    )
    .await;
    let (mut desk, _) = online(&server, "alice@localhost/desk", "pw", false).await;
    let (mut bob, _) = online(&server, "bob@localhost/x", "pw", false).await;
    available(&mut bob, 0).await;
    toggle(&mut phone, "enable").await;
    proxy.cut();
    // While phone's session waits to be resumed, desk talks; phone gets the copy after.
    send(&mut desk, chat("bob@localhost", "while away")).await;
    next_message(&mut bob).await;
    let mut resumed = false;
    let copy = loop {
        match tokio::time::timeout(WAIT, phone.next())
            .await
            .expect("in time")
        {
            Some(Event::Online { resumed: r, .. }) => resumed = r,
            Some(Event::Stanza(Stanza::Message(m))) => break m,
            Some(Event::Stanza(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(resumed);
    assert!(
        copy.payloads.iter().any(|p| p.is("sent", CARBONS)),
        "{copy:?}"
    );
    send(&mut bob, chat("alice@localhost/desk", "after resume")).await;
    next_message(&mut desk).await;
    let (way, m) = next_carbon(&mut phone).await;
    assert_eq!((way, body(&m).as_str()), ("received", "after resume"));
}
