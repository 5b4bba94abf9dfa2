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

/// A server with alice, bob and carol online (resources a, b and c).
async fn three_online() -> (TestServer, [(Client, tokio_xmpp::jid::Jid); 3]) {
    let server = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        server.add_user(u, "pw").await;
    }
    let alice = online(&server, "alice@localhost/a", "pw", false).await;
    let bob = online(&server, "bob@localhost/b", "pw", false).await;
    let carol = online(&server, "carol@localhost/c", "pw", false).await;
    (server, [alice, bob, carol])
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

/// The data form of an `<options/>` or `<default/>` answer: `pubsub#deliver`'s value.
fn deliver_value(answer: &Element) -> String {
    let form = answer
        .first_child()
        .and_then(|o| o.get_child("x", "jabber:x:data"))
        .expect("a data form");
    form.children()
        .find(|f| f.attr("var") == Some("pubsub#deliver"))
        .and_then(|f| f.get_child("value", "jabber:x:data"))
        .map(|v| v.text())
        .expect("pubsub#deliver")
}

fn options_form(fields: &str) -> String {
    format!(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
         <value>http://jabber.org/protocol/pubsub#subscribe_options</value></field>{fields}</x>"
    )
}

#[tokio::test]
async fn subscription_options() {
    let (_server, [(mut alice, _), (mut bob, bob_jid), (mut carol, carol_jid)]) =
        three_online().await;
    iq(&mut alice, SERVICE, false, &ps("<create node='opts'/>"))
        .await
        .unwrap();

    // Subscribe and configure in one request (§6.3.7): the answer reports the options.
    let off = options_form("<field var='pubsub#deliver'><value>0</value></field>");
    let sub = iq(
        &mut bob,
        SERVICE,
        false,
        &ps(&format!(
            "<subscribe node='opts' jid='{bob_jid}'/><options>{off}</options>"
        )),
    )
    .await
    .unwrap()
    .unwrap();
    let state = sub.get_child("subscription", PUBSUB).unwrap();
    assert_eq!(state.attr("subscription"), Some("subscribed"), "{sub}");
    let subid = state.attr("subid").unwrap().to_owned();
    let reported = sub.get_child("options", PUBSUB).expect("options reported");
    let form_kind = reported
        .get_child("x", "jabber:x:data")
        .and_then(|x| x.attr("type"));
    assert_eq!(form_kind, Some("result"), "{sub}");
    iq(
        &mut carol,
        SERVICE,
        false,
        &ps(&format!("<subscribe node='opts' jid='{carol_jid}'/>")),
    )
    .await
    .unwrap();

    // The options form shows what is in force; the default form shows deliver on.
    let form = iq(
        &mut bob,
        SERVICE,
        true,
        &ps(&format!("<options node='opts' jid='{bob_jid}'/>")),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(deliver_value(&form), "0", "{form}");
    let default = iq(&mut bob, SERVICE, true, &ps("<default/>"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(deliver_value(&default), "1", "{default}");

    // deliver=0: carol gets the first item, bob does not; after bob turns delivery on
    // again, the next event he gets is the second item.
    let publish = |id: &str| {
        ps(&format!(
            "<publish node='opts'><item id='{id}'><e xmlns='urn:example:o'/></item></publish>"
        ))
    };
    iq(&mut alice, SERVICE, false, &publish("first"))
        .await
        .unwrap();
    let (_, ev) = next_event(&mut carol).await;
    assert!(ev.to_string().contains("first"), "{ev}");
    let on = options_form("<field var='pubsub#deliver'><value>true</value></field>");
    let set = iq(
        &mut bob,
        SERVICE,
        false,
        &ps(&format!(
            "<options node='opts' jid='{bob_jid}' subid='{subid}'>{on}</options>"
        )),
    )
    .await
    .unwrap();
    assert_eq!(set, None);
    iq(&mut alice, SERVICE, false, &publish("second"))
        .await
        .unwrap();
    let (_, ev) = next_event(&mut bob).await;
    let ids: Vec<&str> = ev
        .get_child("items", EVENT)
        .unwrap()
        .children()
        .filter_map(|i| i.attr("id"))
        .collect();
    assert_eq!(ids, ["second"], "{ev}");

    // Error cases of §6.3.4 and §6.3.5.
    let show_values = options_form("<field var='pubsub#show-values'><value>chat</value></field>");
    let cases = [
        (
            "<options node='opts'/>".to_owned(),
            "bob",
            DefinedCondition::BadRequest,
            Some("jid-required"),
        ),
        (
            format!("<options node='opts' jid='{carol_jid}'/>"),
            "alice",
            DefinedCondition::Forbidden,
            None,
        ),
        (
            "<options node='opts' jid='alice@localhost/a'/>".to_owned(),
            "alice",
            DefinedCondition::UnexpectedRequest,
            Some("not-subscribed"),
        ),
        (
            format!("<options node='opts' jid='{bob_jid}' subid='nope'/>"),
            "bob",
            DefinedCondition::NotAcceptable,
            Some("invalid-subid"),
        ),
        (
            format!("<options node='opts' jid='{bob_jid}'>{show_values}</options>"),
            "bob",
            DefinedCondition::BadRequest,
            Some("invalid-options"),
        ),
        (
            format!("<options node='missing' jid='{bob_jid}'/>"),
            "bob",
            DefinedCondition::ItemNotFound,
            None,
        ),
    ];
    for (payload, who, condition, app) in cases {
        let client = if who == "alice" { &mut alice } else { &mut bob };
        let get = !payload.contains("jabber:x:data");
        let err = iq(client, SERVICE, get, &ps(&payload)).await.unwrap_err();
        assert_eq!(err.defined_condition, condition, "{payload}");
        assert_eq!(app_condition(&err).as_deref(), app, "{payload}");
    }
}

/// Sets a node's access model through the owner configuration form.
async fn set_access_model(owner_client: &mut Client, node: &str, model: &str) {
    let set = owner(&format!(
        "<configure node='{node}'><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#node_config</value></field>\
         <field var='pubsub#access_model'><value>{model}</value></field></x></configure>"
    ));
    iq(owner_client, SERVICE, false, &set).await.unwrap();
}

/// Subscribes `jid` to `node`; returns the subscription state the service answered.
async fn subscribe_state(client: &mut Client, node: &str, jid: &impl std::fmt::Display) -> String {
    let sub = iq(
        client,
        SERVICE,
        false,
        &ps(&format!("<subscribe node='{node}' jid='{jid}'/>")),
    )
    .await
    .unwrap()
    .unwrap();
    sub.first_child()
        .and_then(|s| s.attr("subscription"))
        .unwrap_or_default()
        .to_owned()
}

/// The next message carrying a data form (an approval request), as our element tree.
async fn next_form_message(client: &mut Client) -> Element {
    loop {
        let m = common::next_message(client).await;
        if m.payloads
            .iter()
            .any(|p| p.name() == "x" && p.ns() == "jabber:x:data")
        {
            let xml = String::from(&tokio_xmpp::minidom::Element::from(m));
            return Element::parse(&xml).unwrap();
        }
    }
}

fn form_value(message: &Element, var: &str) -> Option<String> {
    message
        .get_child("x", "jabber:x:data")?
        .children()
        .find(|f| f.attr("var") == Some(var))?
        .get_child("value", "jabber:x:data")
        .map(|v| v.text())
}

/// The owner's answer to an approval request: the same id and fields, `allow` as given.
async fn answer_approval(owner: &mut Client, request: &Element, allow: bool) {
    let field = |var: &str| {
        format!(
            "<field var='{var}'><value>{}</value></field>",
            form_value(request, var).unwrap()
        )
    };
    let xml = format!(
        "<message xmlns='jabber:client' to='{SERVICE}' id='{}'>\
         <x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'>\
         <value>http://jabber.org/protocol/pubsub#subscribe_authorization</value></field>\
         {}{}{}<field var='pubsub#allow'><value>{allow}</value></field></x></message>",
        request.attr("id").unwrap(),
        field("pubsub#node"),
        field("pubsub#subscriber_jid"),
        field("pubsub#subid"),
    );
    let el: tokio_xmpp::minidom::Element = xml.parse().unwrap();
    let m = tokio_xmpp::parsers::message::Message::try_from(el).unwrap();
    owner.send_stanza(m.into()).await.unwrap();
}

#[tokio::test]
async fn authorize_access_model_asks_the_owner() {
    let (_server, [(mut alice, _), (mut bob, bob_jid), (mut carol, carol_jid)]) =
        three_online().await;
    // Approval requests go to the owner's bare JID: alice is available to receive them.
    alice
        .send_stanza(tokio_xmpp::parsers::presence::Presence::available().into())
        .await
        .unwrap();
    iq(&mut alice, SERVICE, false, &ps("<create node='club'/>"))
        .await
        .unwrap();
    set_access_model(&mut alice, "club", "authorize").await;

    // bob asks: pending, and the owner gets the approval form (§8.6).
    assert_eq!(subscribe_state(&mut bob, "club", &bob_jid).await, "pending");
    let request = next_form_message(&mut alice).await;
    assert_eq!(request.attr("from"), Some(SERVICE), "{request}");
    assert_eq!(
        form_value(&request, "FORM_TYPE").as_deref(),
        Some("http://jabber.org/protocol/pubsub#subscribe_authorization")
    );
    assert_eq!(form_value(&request, "pubsub#node").as_deref(), Some("club"));
    assert_eq!(
        form_value(&request, "pubsub#subscriber_jid"),
        Some(bob_jid.to_string())
    );
    assert_eq!(
        form_value(&request, "pubsub#allow").as_deref(),
        Some("false")
    );

    // Approved: bob is told and then gets the node's events.
    answer_approval(&mut alice, &request, true).await;
    let (_, ev) = next_event(&mut bob).await;
    let state = ev.get_child("subscription", EVENT).expect("state change");
    assert_eq!(state.attr("subscription"), Some("subscribed"), "{ev}");
    assert_eq!(state.attr("node"), Some("club"));
    iq(
        &mut alice,
        SERVICE,
        false,
        &ps("<publish node='club'><item id='x1'><e xmlns='urn:example:c'/></item></publish>"),
    )
    .await
    .unwrap();
    let (_, ev) = next_event(&mut bob).await;
    assert!(ev.get_child("items", EVENT).is_some(), "{ev}");

    // Denied: carol is told `none` and has no subscription left.
    iq(
        &mut carol,
        SERVICE,
        false,
        &ps(&format!("<subscribe node='club' jid='{carol_jid}'/>")),
    )
    .await
    .unwrap();
    let request = next_form_message(&mut alice).await;
    answer_approval(&mut alice, &request, false).await;
    let (_, ev) = next_event(&mut carol).await;
    let state = ev.get_child("subscription", EVENT).expect("state change");
    assert_eq!(state.attr("subscription"), Some("none"), "{ev}");
    let mine = iq(
        &mut carol,
        SERVICE,
        true,
        &ps("<subscriptions node='club'/>"),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(mine.first_child().unwrap().children().count(), 0, "{mine}");

    // Only an owner's answer counts.
    let err = iq(
        &mut carol,
        SERVICE,
        false,
        &ps(&format!("<subscribe node='club' jid='{carol_jid}'/>")),
    )
    .await;
    assert!(err.is_ok());
    let request = next_form_message(&mut alice).await;
    answer_approval(&mut carol, &request, true).await;
    let bounced = common::next_message(&mut carol).await;
    assert_eq!(
        bounced.type_,
        tokio_xmpp::parsers::message::MessageType::Error,
        "{bounced:?}"
    );
}

#[tokio::test]
async fn presence_access_model_follows_the_owners_roster() {
    use tokio_xmpp::parsers::presence::{Presence, Type as PresenceType};
    let server = TestServer::start().await;
    for u in ["alice", "bob"] {
        server.add_user(u, "pw").await;
    }
    let (mut alice, _) = online(&server, "alice@localhost/a", "pw", false).await;
    let (mut bob, bob_jid) = online(&server, "bob@localhost/b", "pw", false).await;
    iq(&mut alice, SERVICE, false, &ps("<create node='diary'/>"))
        .await
        .unwrap();
    set_access_model(&mut alice, "diary", "presence").await;
    iq(
        &mut alice,
        SERVICE,
        false,
        &ps("<publish node='diary'><item id='d1'><e xmlns='urn:example:d'/></item></publish>"),
    )
    .await
    .unwrap();

    // Not a contact: both subscribing and retrieving need a presence subscription.
    for (payload, get) in [
        (format!("<subscribe node='diary' jid='{bob_jid}'/>"), false),
        ("<items node='diary'/>".to_owned(), true),
    ] {
        let err = iq(&mut bob, SERVICE, get, &ps(&payload)).await.unwrap_err();
        assert_eq!(
            err.defined_condition,
            DefinedCondition::NotAuthorized,
            "{payload}"
        );
        assert_eq!(
            app_condition(&err).as_deref(),
            Some("presence-subscription-required")
        );
    }

    // bob asks for alice's presence and alice approves: now he may.
    async fn wait_presence(client: &mut Client, kind: PresenceType) {
        loop {
            match tokio::time::timeout(WAIT, futures::StreamExt::next(client))
                .await
                .expect("presence in time")
            {
                Some(Event::Stanza(Stanza::Presence(p))) if p.type_ == kind => return,
                Some(Event::Stanza(_)) => continue,
                other => panic!("expected a {kind:?} presence, got {other:?}"),
            }
        }
    }
    for c in [&mut alice, &mut bob] {
        c.send_stanza(Presence::available().into()).await.unwrap();
    }
    let alice_bare = tokio_xmpp::jid::Jid::new("alice@localhost").unwrap();
    let bob_bare = tokio_xmpp::jid::Jid::new("bob@localhost").unwrap();
    bob.send_stanza(
        Presence::new(PresenceType::Subscribe)
            .with_to(alice_bare)
            .into(),
    )
    .await
    .unwrap();
    wait_presence(&mut alice, PresenceType::Subscribe).await;
    alice
        .send_stanza(
            Presence::new(PresenceType::Subscribed)
                .with_to(bob_bare)
                .into(),
        )
        .await
        .unwrap();
    wait_presence(&mut bob, PresenceType::Subscribed).await;
    assert_eq!(
        subscribe_state(&mut bob, "diary", &bob_jid).await,
        "subscribed"
    );
    let items = iq(&mut bob, SERVICE, true, &ps("<items node='diary'/>"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        items.first_child().unwrap().children().count(),
        1,
        "{items}"
    );
}
