//! XEP-0060 through a third-party client over real TLS: the node life cycle with two
//! subscribers, the seed's SpimeSeek publish, the error cases clients rely on, persistence.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{iq, online};
use openspimed_module_api::Element;
use openspimed_tests::{TestServer, WAIT};
use tokio_xmpp::parsers::stanza_error::DefinedCondition;
use tokio_xmpp::{Client, Event, Stanza};

const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const SERVICE: &str = "pubsub.localhost";

fn ps(child: &str) -> Element {
    Element::parse(&format!("<pubsub xmlns='{PUBSUB}'>{child}</pubsub>")).unwrap()
}

fn owner(child: &str) -> Element {
    Element::parse(&format!("<pubsub xmlns='{OWNER}'>{child}</pubsub>")).unwrap()
}

/// The next PubSub event a client receives, as our element tree.
async fn next_event(client: &mut Client) -> (String, Element) {
    loop {
        match tokio::time::timeout(WAIT, futures::StreamExt::next(client))
            .await
            .expect("event in time")
        {
            Some(Event::Stanza(Stanza::Message(m))) => {
                let from = m.from.as_ref().map(|f| f.to_string()).unwrap_or_default();
                for p in &m.payloads {
                    if p.name() == "event" && p.ns() == EVENT {
                        return (from, Element::parse(&String::from(p)).unwrap());
                    }
                }
            }
            Some(Event::Stanza(_)) => continue,
            other => panic!("expected an event message, got {other:?}"),
        }
    }
}

fn app_condition(err: &tokio_xmpp::parsers::stanza_error::StanzaError) -> Option<String> {
    err.other
        .as_ref()
        .filter(|o| o.ns() == ERRORS)
        .map(|o| o.name().to_owned())
}

#[tokio::test]
async fn node_life_cycle_with_two_subscribers() {
    let mut server = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        server.add_user(u, "pw").await;
    }
    let (mut alice, _) = online(&server, "alice@localhost/a", "pw", false).await;
    let (mut bob, bob_jid) = online(&server, "bob@localhost/b", "pw", false).await;
    let (mut carol, carol_jid) = online(&server, "carol@localhost/c", "pw", false).await;

    // Create, then configure.
    iq(&mut alice, SERVICE, false, &ps("<create node='news'/>"))
        .await
        .unwrap();
    let form = iq(
        &mut alice,
        SERVICE,
        true,
        &owner("<configure node='news'/>"),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        form.to_string().contains("pubsub#deliver_payloads"),
        "{form}"
    );
    let set = owner(
        "<configure node='news'><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#node_config</value></field>\
         <field var='pubsub#max_items'><value>5</value></field>\
         <field var='pubsub#notify_retract'><value>1</value></field>\
         <field var='pubsub#title'><value>News</value></field></x></configure>",
    );
    iq(&mut alice, SERVICE, false, &set).await.unwrap();

    // Two subscribers (full JIDs).
    for (client, jid) in [(&mut bob, &bob_jid), (&mut carol, &carol_jid)] {
        let sub = iq(
            client,
            SERVICE,
            false,
            &ps(&format!("<subscribe node='news' jid='{jid}'/>")),
        )
        .await
        .unwrap()
        .unwrap();
        let s = sub.first_child().unwrap();
        assert_eq!(s.attr("subscription"), Some("subscribed"), "{sub}");
        assert!(s.attr("subid").is_some());
    }

    // Publish: both get the event with the payload.
    let publish = ps(
        "<publish node='news'><item id='i1'><entry xmlns='urn:example:news'>hello</entry></item></publish>",
    );
    assert_eq!(
        iq(&mut alice, SERVICE, false, &publish).await.unwrap(),
        None
    );
    for client in [&mut bob, &mut carol] {
        let (from, ev) = next_event(client).await;
        assert_eq!(from, SERVICE);
        let items = ev.get_child("items", EVENT).expect("items");
        assert_eq!(items.attr("node"), Some("news"));
        let item = items.get_child("item", EVENT).unwrap();
        assert_eq!(item.attr("id"), Some("i1"));
        assert_eq!(
            item.get_child("entry", "urn:example:news").unwrap().text(),
            "hello"
        );
    }
    // A publish without id gets a generated one back.
    let generated = iq(
        &mut alice,
        SERVICE,
        false,
        &ps(
            "<publish node='news'><item><entry xmlns='urn:example:news'>2</entry></item></publish>",
        ),
    )
    .await
    .unwrap()
    .expect("generated id returned");
    let gen_id = generated
        .first_child()
        .unwrap()
        .first_child()
        .unwrap()
        .attr("id")
        .unwrap()
        .to_owned();
    for client in [&mut bob, &mut carol] {
        next_event(client).await;
    }

    // Items retrieval returns them (all, by id, max_items).
    let items = iq(&mut bob, SERVICE, true, &ps("<items node='news'/>"))
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<&str> = items
        .first_child()
        .unwrap()
        .children()
        .filter_map(|i| i.attr("id"))
        .collect();
    assert_eq!(ids, ["i1", gen_id.as_str()]);
    let one = iq(
        &mut bob,
        SERVICE,
        true,
        &ps("<items node='news'><item id='i1'/></items>"),
    )
    .await
    .unwrap()
    .unwrap();
    let item = one.first_child().unwrap().first_child().unwrap();
    assert_eq!(
        item.get_child("entry", "urn:example:news").unwrap().text(),
        "hello"
    );
    let newest = iq(
        &mut bob,
        SERVICE,
        true,
        &ps("<items node='news' max_items='1'/>"),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(newest.first_child().unwrap().children().count(), 1);

    // Retract notifies.
    iq(
        &mut alice,
        SERVICE,
        false,
        &ps("<retract node='news' notify='true'><item id='i1'/></retract>"),
    )
    .await
    .unwrap();
    for client in [&mut bob, &mut carol] {
        let (_, ev) = next_event(client).await;
        let retract = ev
            .get_child("items", EVENT)
            .unwrap()
            .get_child("retract", EVENT)
            .unwrap();
        assert_eq!(retract.attr("id"), Some("i1"));
    }

    // Delete notifies.
    iq(&mut alice, SERVICE, false, &owner("<delete node='news'/>"))
        .await
        .unwrap();
    for client in [&mut bob, &mut carol] {
        let (_, ev) = next_event(client).await;
        assert_eq!(
            ev.get_child("delete", EVENT).unwrap().attr("node"),
            Some("news")
        );
    }
    let err = iq(&mut bob, SERVICE, true, &ps("<items node='news'/>"))
        .await
        .unwrap_err();
    assert_eq!(err.defined_condition, DefinedCondition::ItemNotFound);
    server.stop().await;
}

#[tokio::test]
async fn seed_spimeseek_publish_reaches_every_subscriber() {
    // The spimeseek node as configured for this test: subscription open to anyone.
    let mut server = TestServer::start_with(|c| {
        c.modules.insert(
            "pubsub".into(),
            openspimed_module_api::toml::from_str(
                "[[nodes]]\nname = 'spimeseek'\ndeliver_payloads = true\npublish_model = 'open'\n\
                 publish_domains = ['localhost']\naccess_model = 'open'",
            )
            .unwrap(),
        );
    })
    .await;
    for u in ["spime", "scope1", "scope2"] {
        server.add_user(u, "pw").await;
    }
    let (mut spime, _) = online(&server, "spime@localhost/spime", "pw", false).await;
    let (mut s1, j1) = online(&server, "scope1@localhost/co2", "pw", false).await;
    let (mut s2, j2) = online(&server, "scope2@localhost/co2", "pw", false).await;
    for (c, j) in [(&mut s1, &j1), (&mut s2, &j2)] {
        iq(
            c,
            SERVICE,
            false,
            &ps(&format!("<subscribe node='spimeseek' jid='{j}'/>")),
        )
        .await
        .unwrap();
    }
    // Seed §1.2.0, with the example XML made well-formed.
    let seed = ps(
        "<publish node='spimeseek'><item id='98acbd983ab55f1298bfca'>\
         <openspime xmlns='openspime:protocol:core' version='0.9'>\
         <originator cert='services@spime.openspime.com/cert' osid='spime@localhost/spime'>\
         <sign>c2lnbmF0dXJl</sign></originator><transport>\
         <spimeseek xmlns='http://openspime.org/protocol/spimeseek' version='0.9'>\
         <request id='7abc78af21'><spimeid>spime@localhost/spime</spimeid>\
         <expdate>2008-04-01T12:23:54+01:00</expdate><encrequired>false</encrequired>\
         </request></spimeseek></transport></openspime></item></publish>",
    );
    assert_eq!(
        iq(&mut spime, SERVICE, false, &seed).await.unwrap(),
        None,
        "empty result"
    );
    for client in [&mut s1, &mut s2] {
        let (from, ev) = next_event(client).await;
        assert_eq!(from, SERVICE);
        let items = ev.get_child("items", EVENT).unwrap();
        assert_eq!(items.attr("node"), Some("spimeseek"));
        let item = items.get_child("item", EVENT).unwrap();
        assert_eq!(item.attr("id"), Some("98acbd983ab55f1298bfca"));
        let container = openspime::Container::parse(item.first_child().unwrap()).unwrap();
        let (payload, _) = container.open(None).unwrap();
        let openspime::SpimeSeek::Request(req) = openspime::SpimeSeek::parse(&payload).unwrap()
        else {
            panic!("request expected")
        };
        assert_eq!(
            (req.id.as_str(), req.spimeid.as_str()),
            ("7abc78af21", "spime@localhost/spime")
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn error_cases_clients_rely_on() {
    let mut server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let (mut alice, _) = online(&server, "alice@localhost/a", "pw", false).await;
    let (mut bob, _) = online(&server, "bob@localhost/b", "pw", false).await;
    iq(&mut alice, SERVICE, false, &ps("<create node='mine'/>"))
        .await
        .unwrap();

    let err = iq(
        &mut alice,
        SERVICE,
        false,
        &ps("<publish node='nowhere'><item id='1'><x xmlns='urn:x'/></item></publish>"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.defined_condition, DefinedCondition::ItemNotFound);

    let err = iq(
        &mut bob,
        SERVICE,
        false,
        &ps("<publish node='mine'><item id='1'><x xmlns='urn:x'/></item></publish>"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.defined_condition, DefinedCondition::Forbidden);

    let err = iq(&mut bob, SERVICE, false, &ps("<create node='mine'/>"))
        .await
        .unwrap_err();
    assert_eq!(err.defined_condition, DefinedCondition::Conflict);

    let err = iq(
        &mut bob,
        SERVICE,
        false,
        &ps("<subscribe node='mine' jid='alice@localhost'/>"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.defined_condition, DefinedCondition::BadRequest);
    assert_eq!(app_condition(&err).as_deref(), Some("invalid-jid"));

    let bad = owner(
        "<configure node='mine'><x xmlns='jabber:x:data' type='submit'>\
         <field var='pubsub#max_items'><value>many</value></field></x></configure>",
    );
    let err = iq(&mut alice, SERVICE, false, &bad).await.unwrap_err();
    assert_eq!(err.defined_condition, DefinedCondition::NotAcceptable);

    // Owner operations by someone else.
    let err = iq(&mut bob, SERVICE, false, &owner("<delete node='mine'/>"))
        .await
        .unwrap_err();
    assert_eq!(err.defined_condition, DefinedCondition::Forbidden);

    // publish-options that do not match the node: precondition-not-met.
    let po = ps(
        "<publish node='mine'><item id='p'><x xmlns='urn:x'/></item></publish>\
         <publish-options><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
         <field var='pubsub#access_model'><value>whitelist</value></field></x></publish-options>",
    );
    let err = iq(&mut alice, SERVICE, false, &po).await.unwrap_err();
    assert_eq!(err.defined_condition, DefinedCondition::Conflict);
    assert_eq!(app_condition(&err).as_deref(), Some("precondition-not-met"));

    // The default spimeseek node: subscription is for ScopeNodes only.
    let err = iq(
        &mut bob,
        SERVICE,
        false,
        &ps("<subscribe node='spimeseek' jid='bob@localhost/b'/>"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.defined_condition, DefinedCondition::NotAllowed);
    server.stop().await;
}

#[tokio::test]
async fn nodes_subscriptions_and_items_survive_a_restart() {
    let mut server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    {
        let (mut alice, _) = online(&server, "alice@localhost/a", "pw", false).await;
        let (mut bob, _) = online(&server, "bob@localhost/b", "pw", false).await;
        iq(&mut alice, SERVICE, false, &ps("<create node='kept'/>"))
            .await
            .unwrap();
        iq(
            &mut bob,
            SERVICE,
            false,
            &ps("<subscribe node='kept' jid='bob@localhost'/>"),
        )
        .await
        .unwrap();
        iq(
            &mut alice,
            SERVICE,
            false,
            &ps("<publish node='kept'><item id='k1'><v xmlns='urn:v'>1</v></item></publish>"),
        )
        .await
        .unwrap();
    }
    server.restart().await;
    let (mut bob, _) = online(&server, "bob@localhost/b", "pw", false).await;
    let items = iq(&mut bob, SERVICE, true, &ps("<items node='kept'/>"))
        .await
        .unwrap()
        .unwrap();
    let item = items.first_child().unwrap().first_child().unwrap();
    assert_eq!(item.attr("id"), Some("k1"));
    assert_eq!(item.get_child("v", "urn:v").unwrap().text(), "1");
    let subs = iq(&mut bob, SERVICE, true, &ps("<subscriptions node='kept'/>"))
        .await
        .unwrap()
        .unwrap();
    let sub = subs
        .first_child()
        .unwrap()
        .first_child()
        .expect("subscription kept");
    assert_eq!(sub.attr("jid"), Some("bob@localhost"));
    // The owner is still the owner.
    let (mut alice, _) = online(&server, "alice@localhost/a", "pw", false).await;
    let affs = iq(
        &mut alice,
        SERVICE,
        true,
        &owner("<affiliations node='kept'/>"),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(affs.to_string().contains("affiliation='owner'"), "{affs}");
    // The preconfigured spimeseek node exists after every start.
    let nodes = iq(
        &mut alice,
        SERVICE,
        true,
        &Element::new("query", "http://jabber.org/protocol/disco#items"),
    )
    .await
    .unwrap()
    .unwrap();
    let names: Vec<&str> = nodes.children().filter_map(|i| i.attr("node")).collect();
    assert_eq!(names, ["kept", "spimeseek"]);
    server.stop().await;
}
