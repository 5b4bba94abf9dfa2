//! The IM core (RFC 6121: rosters, subscriptions, presence; XEP-0160 offline messages) with
//! a third-party client (tokio-xmpp) over real TLS, plus raw-socket checks of bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{next_message, online};
use futures::StreamExt;
use openspimed_module_api::Element;
use openspimed_tests::{Raw, TestServer, WAIT, error_condition};
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
    let server = TestServer::start_with(|c| c.limits.offline_messages = 1).await;
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
