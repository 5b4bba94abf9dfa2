//! The IM core (RFC 6121: rosters, subscriptions, presence; XEP-0160 offline messages) with
//! a third-party client (tokio-xmpp) over real TLS, plus raw-socket checks of bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{next_message, online, online_at};
use futures::StreamExt;
use openspimed_module_api::Element;
use openspimed_tests::{CutProxy, Raw, TestServer, WAIT, error_condition};
use tokio_xmpp::jid::{BareJid, Jid};
use tokio_xmpp::parsers::message::{Lang, Message};
use tokio_xmpp::parsers::presence::{Presence, Type as PresenceType};
use tokio_xmpp::parsers::roster::{Ask, Roster, Subscription};
use tokio_xmpp::{Client, Event, IqRequest, IqResponse, Stanza};

const ROSTER: &str = "jabber:iq:roster";

/// An iq to the user's own account (no `to`, as clients send roster requests); the
/// result's payload, or the error.
async fn iq(
    client: &mut Client,
    _own: &str,
    get: bool,
    payload: &Element,
) -> Result<Option<Element>, tokio_xmpp::parsers::stanza_error::StanzaError> {
    let el: tokio_xmpp::minidom::Element = payload.to_string().parse().unwrap();
    let req = if get {
        IqRequest::Get(el)
    } else {
        IqRequest::Set(el)
    };
    let resp = tokio::time::timeout(WAIT, client.send_iq(None, req).await)
        .await
        .expect("answer in time")
        .expect("iq answered");
    match resp {
        IqResponse::Result(None) => Ok(None),
        IqResponse::Result(Some(el)) => Ok(Some(Element::parse(&String::from(&el)).unwrap())),
        IqResponse::Error(e) => Err(e),
    }
}

async fn send(client: &mut Client, stanza: impl Into<Stanza>) {
    client.send_stanza(stanza.into()).await.unwrap();
}

fn presence(to: &str, t: PresenceType) -> Presence {
    Presence::new(t).with_to(Jid::new(to).unwrap())
}

/// The next presence from `from` (bare or full) of type `t`, skipping everything else.
async fn wait_presence(client: &mut Client, from: &str, t: PresenceType) -> Presence {
    loop {
        let ev = tokio::time::timeout(WAIT, client.next())
            .await
            .expect("presence in time");
        if let Some(Event::Stanza(Stanza::Presence(p))) = ev {
            let f = p.from.as_ref().map(|j| j.to_string()).unwrap_or_default();
            if p.type_ == t && (f == from || f.starts_with(&format!("{from}/"))) {
                return p;
            }
        }
    }
}

/// The next roster push (an iq set with a roster query), answered as RFC 6121 §2.1.6 asks.
async fn wait_push(client: &mut Client) -> Roster {
    loop {
        let ev = tokio::time::timeout(WAIT, client.next())
            .await
            .expect("roster push in time");
        if let Some(Event::Stanza(Stanza::Iq(iq))) = ev {
            let el: tokio_xmpp::minidom::Element = iq.clone().into();
            if let Some(q) = el.get_child("query", ROSTER) {
                return Roster::try_from(q.clone()).unwrap();
            }
        }
    }
}

async fn roster(client: &mut Client) -> Roster {
    let answer = iq(client, "", true, &Element::new("query", ROSTER))
        .await
        .unwrap()
        .unwrap();
    let el: tokio_xmpp::minidom::Element = answer.to_string().parse().unwrap();
    Roster::try_from(el).unwrap()
}

fn subscription_of(r: &Roster, jid: &str) -> Option<(Subscription, Ask)> {
    r.items
        .iter()
        .find(|i| i.jid == BareJid::new(jid).unwrap())
        .map(|i| (i.subscription.clone(), i.ask.clone()))
}

/// Online, roster requested, initial presence sent.
async fn available(server: &TestServer, jid: &str) -> Client {
    let (mut c, _) = online(server, jid, "pw", false).await;
    roster(&mut c).await;
    send(&mut c, Presence::available()).await;
    c
}

#[tokio::test]
async fn a_subscription_handshake_ends_with_both_and_presence_both_ways() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let mut alice = available(&server, "alice@localhost/home").await;
    let mut bob = available(&server, "bob@localhost/work").await;

    // alice asks; her roster shows the pending request; bob is asked.
    send(
        &mut alice,
        presence("bob@localhost", PresenceType::Subscribe),
    )
    .await;
    let push = wait_push(&mut alice).await;
    assert_eq!(
        subscription_of(&push, "bob@localhost"),
        Some((Subscription::None, Ask::Subscribe))
    );
    let req = wait_presence(&mut bob, "alice@localhost", PresenceType::Subscribe).await;
    assert_eq!(
        req.from.unwrap().to_string(),
        "alice@localhost",
        "stamped with the bare JID"
    );

    // bob approves: alice gets `to` and bob's presence.
    send(
        &mut bob,
        presence("alice@localhost", PresenceType::Subscribed),
    )
    .await;
    let push = wait_push(&mut alice).await;
    assert_eq!(
        subscription_of(&push, "bob@localhost"),
        Some((Subscription::To, Ask::None))
    );
    wait_presence(&mut alice, "bob@localhost/work", PresenceType::None).await;

    // And the other way round.
    send(
        &mut bob,
        presence("alice@localhost", PresenceType::Subscribe),
    )
    .await;
    wait_presence(&mut alice, "bob@localhost", PresenceType::Subscribe).await;
    send(
        &mut alice,
        presence("bob@localhost", PresenceType::Subscribed),
    )
    .await;
    wait_presence(&mut bob, "alice@localhost/home", PresenceType::None).await;

    let a = roster(&mut alice).await;
    let b = roster(&mut bob).await;
    assert_eq!(
        subscription_of(&a, "bob@localhost"),
        Some((Subscription::Both, Ask::None))
    );
    assert_eq!(
        subscription_of(&b, "alice@localhost"),
        Some((Subscription::Both, Ask::None))
    );

    // A presence change reaches the subscriber; going offline too.
    send(&mut bob, Presence::available().with_priority(5)).await;
    let p = wait_presence(&mut alice, "bob@localhost/work", PresenceType::None).await;
    assert_eq!(p.priority.0, 5);
    drop(bob);
    wait_presence(&mut alice, "bob@localhost/work", PresenceType::Unavailable).await;

    // Logging in again, bob sees alice at once (probe answered from her presence).
    let mut bob = available(&server, "bob@localhost/work").await;
    wait_presence(&mut bob, "alice@localhost/home", PresenceType::None).await;
}

#[tokio::test]
async fn roster_changes_are_pushed_to_every_interested_resource() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    let mut phone = available(&server, "alice@localhost/phone").await;
    let mut laptop = available(&server, "alice@localhost/laptop").await;
    let set = Element::new("query", ROSTER).with_child(
        Element::new("item", ROSTER)
            .with_attr("jid", "carol@example.net")
            .with_attr("name", "Carol")
            .with_child(Element::new("group", ROSTER).with_text("Friends")),
    );
    assert_eq!(iq(&mut phone, "", false, &set).await.unwrap(), None);
    for c in [&mut phone, &mut laptop] {
        let push = wait_push(c).await;
        let item = &push.items[0];
        assert_eq!(item.jid.to_string(), "carol@example.net");
        assert_eq!(item.name.as_deref(), Some("Carol"));
        assert!(push.ver.is_some());
    }
    // Roster versioning: the current version gets an empty result.
    let r = roster(&mut laptop).await;
    let ver = r.ver.clone().unwrap();
    let again = iq(
        &mut laptop,
        "",
        true,
        &Element::new("query", ROSTER).with_attr("ver", ver),
    )
    .await
    .unwrap();
    assert_eq!(again, None);
    // Removal is pushed too.
    let remove = Element::new("query", ROSTER).with_child(
        Element::new("item", ROSTER)
            .with_attr("jid", "carol@example.net")
            .with_attr("subscription", "remove"),
    );
    assert_eq!(iq(&mut laptop, "", false, &remove).await.unwrap(), None);
    let push = wait_push(&mut phone).await;
    assert_eq!(push.items[0].subscription, Subscription::Remove);
    assert!(roster(&mut phone).await.items.is_empty());
}

#[tokio::test]
async fn a_message_to_an_offline_account_is_delivered_at_its_next_login() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let mut alice = available(&server, "alice@localhost/home").await;
    for n in 1..=2 {
        let m = Message::chat(Some(Jid::new("bob@localhost").unwrap()))
            .with_body(Lang::new(), format!("while you were out {n}"));
        send(&mut alice, m).await;
    }
    // Answered by storing: no error comes back; a ping proves the messages were routed.
    common::ping_server(&mut alice).await;
    let mut bob = available(&server, "bob@localhost/work").await;
    for n in 1..=2 {
        let m = next_message(&mut bob).await;
        assert_eq!(
            m.bodies.values().next().map(String::as_str),
            Some(format!("while you were out {n}").as_str()),
            "oldest first"
        );
        assert!(
            m.payloads.iter().any(|p| p.is("delay", "urn:xmpp:delay")),
            "stamped with XEP-0203 delay"
        );
    }
}

#[tokio::test]
async fn offline_storage_has_a_quota() {
    let server = TestServer::start_with(|c| {
        let mut im = openspimed_module_api::toml::Table::new();
        im.insert("offline_messages".into(), 1.into());
        c.modules.insert("im".into(), im);
    })
    .await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let (mut alice, _) = Raw::login(&server, "alice", "pw", "r").await;
    alice
        .send("<message to='bob@localhost' id='m1' type='chat'><body>1</body></message>")
        .await;
    alice
        .send("<message to='bob@localhost' id='m2' type='chat'><body>2</body></message>")
        .await;
    let bounce = alice.stanza("message").await;
    assert_eq!(bounce.attr("id"), Some("m2"));
    assert_eq!(
        error_condition(&bounce).as_deref(),
        Some("resource-constraint")
    );
}

#[tokio::test]
async fn bad_roster_sets_and_subscriptions_to_unknown_accounts() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    let (mut raw, _) = Raw::login(&server, "alice", "pw", "r").await;
    // Two items in one set.
    raw.send(
        "<iq type='set' id='r1'><query xmlns='jabber:iq:roster'>\
         <item jid='a@example.net'/><item jid='b@example.net'/></query></iq>",
    )
    .await;
    let r = raw.stanza("iq").await;
    assert_eq!(r.attr("id"), Some("r1"));
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    // A JID that is not one.
    raw.send(
        "<iq type='set' id='r2'><query xmlns='jabber:iq:roster'><item jid='@@bad'/></query></iq>",
    )
    .await;
    let r = raw.stanza("iq").await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    // Removing what is not there.
    raw.send(
        "<iq type='set' id='r3'><query xmlns='jabber:iq:roster'>\
         <item jid='nobody@example.net' subscription='remove'/></query></iq>",
    )
    .await;
    let r = raw.stanza("iq").await;
    assert_eq!(error_condition(&r).as_deref(), Some("item-not-found"));
    // RFC 6121 §3.1.3: a request to a local account that does not exist is answered with
    // `unsubscribed` from it, delivered to the available resource.
    raw.send("<presence/>").await;
    raw.send("<presence to='ghost@localhost' type='subscribe'/>")
        .await;
    let p = raw.stanza("presence").await;
    assert_eq!(p.attr("from"), Some("ghost@localhost"));
    assert_eq!(p.attr("type"), Some("unsubscribed"));
}

#[tokio::test]
async fn a_pending_request_reaches_a_contact_who_was_offline() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let mut alice = available(&server, "alice@localhost/home").await;
    send(
        &mut alice,
        presence("bob@localhost", PresenceType::Subscribe),
    )
    .await;
    wait_push(&mut alice).await;
    let mut bob = available(&server, "bob@localhost/work").await;
    wait_presence(&mut bob, "alice@localhost", PresenceType::Subscribe).await;
}

#[tokio::test]
async fn stream_resumption_after_a_dropped_connection_delivers_exactly_once() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let proxy = CutProxy::start(server.c2s).await;
    // alice's client (tokio-xmpp) enables stream management with resumption by itself.
    let (mut alice, _) = online_at(
        &server,
        proxy.addr,
        "alice@localhost/phone",
        "pw",
        false,
        true,
    )
    .await;
    send(&mut alice, Presence::available()).await;
    let (mut bob, _) = online(&server, "bob@localhost/desk", "pw", false).await;
    let m = |n: u32| {
        Message::chat(Some(Jid::new("alice@localhost/phone").unwrap()))
            .with_body(Lang::new(), format!("m{n}"))
    };
    send(&mut bob, m(1)).await;
    assert_eq!(
        next_message(&mut alice)
            .await
            .bodies
            .values()
            .next()
            .unwrap(),
        "m1"
    );

    // The link drops; bob goes on sending to alice's session, which waits to be resumed.
    proxy.cut();
    for n in 2..=4 {
        send(&mut bob, m(n)).await;
    }
    // alice's client reconnects and resumes: m2..m4, each once, and nothing else.
    let mut got = Vec::new();
    let mut resumed = false;
    while got.len() < 3 {
        match tokio::time::timeout(WAIT, alice.next())
            .await
            .expect("in time")
        {
            Some(Event::Online { resumed: r, .. }) => resumed = r,
            Some(Event::Stanza(Stanza::Message(msg))) => {
                got.push(msg.bodies.values().next().unwrap().clone())
            }
            Some(Event::Stanza(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(resumed, "the client reports a resumed session");
    assert_eq!(got, ["m2", "m3", "m4"]);
    common::ping_server(&mut alice).await;
    send(&mut bob, m(5)).await;
    assert_eq!(
        next_message(&mut alice)
            .await
            .bodies
            .values()
            .next()
            .unwrap(),
        "m5",
        "no duplicate before m5"
    );
}

#[tokio::test]
async fn a_resumption_with_an_unknown_id_fails_with_item_not_found() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    let mut raw = Raw::connect(server.c2s).await;
    raw.open("localhost").await;
    let mut raw = raw.starttls(server.tls_config(None)).await;
    let features = raw.open("localhost").await;
    assert!(
        features
            .get_child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl")
            .is_some()
    );
    assert!(
        raw.auth_plain("alice", "pw")
            .await
            .is("success", "urn:ietf:params:xml:ns:xmpp-sasl")
    );
    raw.restart();
    let features = raw.open("localhost").await;
    assert!(
        features.get_child("sm", "urn:xmpp:sm:3").is_some(),
        "{features}"
    );
    raw.send("<resume xmlns='urn:xmpp:sm:3' previd='no-such-session' h='0'/>")
        .await;
    let failed = raw.element().await;
    assert!(failed.is("failed", "urn:xmpp:sm:3"), "{failed}");
    assert!(
        failed
            .get_child("item-not-found", "urn:ietf:params:xml:ns:xmpp-stanzas")
            .is_some(),
        "{failed}"
    );
    // The client may still bind a new session.
    assert_eq!(raw.bind("r").await, "alice@localhost/r");
}

#[tokio::test]
async fn messages_a_session_never_acknowledged_go_to_offline_storage() {
    let server = TestServer::start_with(|c| c.limits.resume_timeout_secs = 1).await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    // A raw client enables resumption, receives a message, never acknowledges it, and its
    // connection drops.
    let (mut raw, _) = Raw::login(&server, "alice", "pw", "r").await;
    raw.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    let enabled = raw.element().await;
    assert!(enabled.is("enabled", "urn:xmpp:sm:3"), "{enabled}");
    raw.send("<presence/>").await;
    let (mut bob, _) = Raw::login(&server, "bob", "pw", "r").await;
    bob.send("<message to='alice@localhost/r' id='u1' type='chat'><body>unacked</body></message>")
        .await;
    assert_eq!(raw.stanza("message").await.attr("id"), Some("u1"));
    drop(raw);
    // Not resumed within resume_timeout_secs: at the next login it arrives from storage.
    let mut alice = available(&server, "alice@localhost/again").await;
    let m = next_message(&mut alice).await;
    assert_eq!(
        m.bodies.values().next().map(String::as_str),
        Some("unacked")
    );
}

#[tokio::test]
async fn blocking_stops_stanzas_both_ways_until_unblocked() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("eve", "pw").await;
    let (mut alice, _) = Raw::login(&server, "alice", "pw", "r").await;
    let (mut eve, _) = Raw::login(&server, "eve", "pw", "r").await;
    alice.send("<presence/>").await;
    alice
        .send("<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'><item jid='eve@localhost'/></block></iq>")
        .await;
    assert_eq!(alice.stanza("iq").await.attr("type"), Some("result"));
    alice
        .send("<iq type='get' id='b2'><blocklist xmlns='urn:xmpp:blocking'/></iq>")
        .await;
    let list = alice.stanza("iq").await;
    let items: Vec<_> = list
        .get_child("blocklist", "urn:xmpp:blocking")
        .unwrap()
        .children()
        .map(|i| i.attr("jid").unwrap().to_owned())
        .collect();
    assert_eq!(items, ["eve@localhost"]);
    // eve's message does not arrive; eve learns nothing more than service-unavailable.
    eve.send("<message to='alice@localhost' id='e1' type='chat'><body>hi</body></message>")
        .await;
    let bounce = eve.stanza("message").await;
    assert_eq!(
        error_condition(&bounce).as_deref(),
        Some("service-unavailable")
    );
    // alice cannot write to eve either.
    alice
        .send("<message to='eve@localhost/r' id='a1' type='chat'><body>hi</body></message>")
        .await;
    let err = alice.stanza("message").await;
    assert_eq!(error_condition(&err).as_deref(), Some("not-acceptable"));
    assert!(
        err.get_child("error", "jabber:client")
            .and_then(|e| e.get_child("blocked", "urn:xmpp:blocking:errors"))
            .is_some(),
        "{err}"
    );
    // Unblocking everything (no items) lets eve through again.
    alice
        .send("<iq type='set' id='b3'><unblock xmlns='urn:xmpp:blocking'/></iq>")
        .await;
    let push_or_result = alice.stanza("iq").await;
    let result = if push_or_result.attr("type") == Some("result") {
        push_or_result
    } else {
        alice.stanza("iq").await
    };
    assert_eq!(result.attr("id"), Some("b3"));
    eve.send("<message to='alice@localhost' id='e2' type='chat'><body>again</body></message>")
        .await;
    assert_eq!(alice.stanza("message").await.attr("id"), Some("e2"));
}

#[tokio::test]
async fn vcards_are_stored_and_served_to_others() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let (mut alice, _) = Raw::login(&server, "alice", "pw", "r").await;
    let (mut bob, _) = Raw::login(&server, "bob", "pw", "r").await;
    alice
        .send("<iq type='set' id='v1'><vCard xmlns='vcard-temp'><FN>Alice A.</FN></vCard></iq>")
        .await;
    assert_eq!(alice.stanza("iq").await.attr("type"), Some("result"));
    bob.send("<iq type='get' id='v2' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>")
        .await;
    let card = bob.stanza("iq").await;
    assert_eq!(card.attr("from"), Some("alice@localhost"), "{card}");
    assert_eq!(
        card.get_child("vCard", "vcard-temp")
            .and_then(|v| v.get_child("FN", "vcard-temp"))
            .map(|f| f.text()),
        Some("Alice A.".to_owned())
    );
    // Only the owner sets it.
    bob.send("<iq type='set' id='v3' to='alice@localhost'><vCard xmlns='vcard-temp'><FN>x</FN></vCard></iq>")
        .await;
    assert_eq!(
        error_condition(&bob.stanza("iq").await).as_deref(),
        Some("forbidden")
    );
    // No vCard is an empty one.
    alice
        .send("<iq type='get' id='v4' to='bob@localhost'><vCard xmlns='vcard-temp'/></iq>")
        .await;
    let empty = alice.stanza("iq").await;
    assert_eq!(empty.attr("type"), Some("result"));
    assert!(empty.get_child("vCard", "vcard-temp").is_some());
}

#[tokio::test]
async fn resources_of_one_account_see_each_other_and_pre_approvals_show() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    let (mut one, _) = Raw::login(&server, "alice", "pw", "one").await;
    one.send("<presence><show>away</show></presence>").await;
    let (mut two, _) = Raw::login(&server, "alice", "pw", "two").await;
    two.send("<presence/>").await;
    // RFC 6121 §4.2.2: the new resource gets the others' presence, and they get its.
    let p = two.stanza("presence").await;
    assert_eq!(p.attr("from"), Some("alice@localhost/one"), "{p}");
    let p = one.stanza("presence").await;
    assert_eq!(p.attr("from"), Some("alice@localhost/two"), "{p}");
    // §3.4: approving a contact before it asks shows as approved='true'.
    one.send("<presence to='carol@example.net' type='subscribed'/>")
        .await;
    one.send("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    let r = one.stanza("iq").await;
    let item = r
        .get_child("query", "jabber:iq:roster")
        .and_then(|q| q.children().next())
        .cloned()
        .unwrap_or_else(|| panic!("an item in {r}"));
    assert_eq!(item.attr("jid"), Some("carol@example.net"));
    assert_eq!(item.attr("approved"), Some("true"));
    assert_eq!(item.attr("subscription"), Some("none"));
}
