//! PEP (XEP-0163) over real TLS with raw clients: the account's first publish creates the
//! node, a contact that receives the account's presence and advertises `NODE+notify` in
//! its entity capabilities (XEP-0115, asked of its resource and verified) gets the event
//! from the account's bare JID, the next publish needs no second question, contacts read
//! the items under the presence access model and strangers cannot, a resource coming
//! online gets the last item, and nobody but the account publishes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine;
use openspimed_module_api::Element;
use openspimed_tests::{Raw, TestServer, error_condition};
use sha1::{Digest, Sha1};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const MOOD: &str = "urn:example:mood";
const CLIENT_NODE: &str = "urn:example:client";

type Client = Raw<TlsStream<TcpStream>>;

/// The features bob's client advertises, and their XEP-0115 `ver` (identity client/pc).
fn bob_features() -> (Vec<String>, String) {
    let mut features = vec![DISCO_INFO.to_owned(), format!("{MOOD}+notify")];
    features.sort();
    let mut s = "client/pc//<".to_owned();
    for f in &features {
        s.push_str(f);
        s.push('<');
    }
    let ver = base64::engine::general_purpose::STANDARD.encode(Sha1::digest(s.as_bytes()));
    (features, ver)
}

async fn ask(c: &mut Client, id: &str, to: Option<&str>, kind: &str, payload: &str) -> Element {
    let to = to.map(|t| format!(" to='{t}'")).unwrap_or_default();
    c.send(&format!("<iq type='{kind}' id='{id}'{to}>{payload}</iq>"))
        .await;
    loop {
        let e = c.stanza("iq").await;
        if e.attr("id") == Some(id) {
            return e;
        }
    }
}

fn publish(id: &str, mood: &str) -> String {
    format!(
        "<pubsub xmlns='{PUBSUB}'><publish node='{MOOD}'><item id='{id}'>\
         <mood xmlns='{MOOD}'>{mood}</mood></item></publish></pubsub>"
    )
}

/// Waits for a presence of `kind` (skipping anything else).
async fn presence(c: &mut Client, kind: &str) {
    loop {
        let p = c.stanza("presence").await;
        if p.attr("type") == Some(kind) {
            return;
        }
    }
}

/// The mood in the next PEP event `c` receives from alice.
fn mood_of(event_message: &Element) -> String {
    assert_eq!(event_message.attr("from"), Some("alice@localhost"));
    assert_eq!(event_message.attr("type"), Some("headline"));
    let items = event_message
        .get_child("event", EVENT)
        .and_then(|e| e.get_child("items", EVENT))
        .expect("items event");
    assert_eq!(items.attr("node"), Some(MOOD));
    items
        .get_child("item", EVENT)
        .and_then(|i| i.get_child("mood", MOOD))
        .map(|m| m.text())
        .expect("payload")
}

#[tokio::test]
async fn pep_notifies_contacts_that_want_the_node() {
    let server = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        server.add_user(u, "pw").await;
    }
    let (mut alice, _) = Raw::login(&server, "alice", "pw", "phone").await;
    let (mut bob, _) = Raw::login(&server, "bob", "pw", "laptop").await;
    let (mut carol, _) = Raw::login(&server, "carol", "pw", "desk").await;

    // bob receives alice's presence (RFC 6121 handshake).
    alice.send("<presence/>").await;
    // A ping answered after it: her session handled the presence, she is available.
    let pong = ask(
        &mut alice,
        "sync",
        Some("localhost"),
        "get",
        "<ping xmlns='urn:xmpp:ping'/>",
    )
    .await;
    assert_eq!(pong.attr("type"), Some("result"));
    // bob comes online with capabilities that ask for mood notifications.
    let (features, ver) = bob_features();
    bob.send(&format!(
        "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' \
         node='{CLIENT_NODE}' ver='{ver}'/></presence>"
    ))
    .await;
    bob.send("<presence type='subscribe' to='alice@localhost'/>")
        .await;
    presence(&mut alice, "subscribe").await;
    alice
        .send("<presence type='subscribed' to='bob@localhost'/>")
        .await;
    presence(&mut bob, "subscribed").await;

    // alice's first publish (no `to`: her own PEP service) creates the node.
    let done = ask(&mut alice, "p1", None, "set", &publish("current", "happy")).await;
    assert_eq!(done.attr("type"), Some("result"), "{done}");

    // alice's service asks bob's resource what `ver` means, then notifies him.
    let question = bob.stanza("iq").await;
    assert_eq!(question.attr("type"), Some("get"), "{question}");
    assert_eq!(question.attr("from"), Some("alice@localhost"));
    let query = question.get_child("query", DISCO_INFO).expect("disco#info");
    assert_eq!(
        query.attr("node"),
        Some(format!("{CLIENT_NODE}#{ver}").as_str())
    );
    let feature_xml: String = features
        .iter()
        .map(|f| format!("<feature var='{f}'/>"))
        .collect();
    bob.send(&format!(
        "<iq type='result' id='{}' to='alice@localhost'><query xmlns='{DISCO_INFO}' \
         node='{CLIENT_NODE}#{ver}'><identity category='client' type='pc'/>{feature_xml}\
         </query></iq>",
        question.attr("id").unwrap()
    ))
    .await;
    let first = bob.element().await;
    assert_eq!(first.name(), "message", "{first}");
    assert_eq!(mood_of(&first), "happy");

    // The verified `ver` is kept: the next publish reaches bob without a question.
    let done = ask(&mut alice, "p2", None, "set", &publish("current", "calm")).await;
    assert_eq!(done.attr("type"), Some("result"), "{done}");
    let second = bob.element().await;
    assert_eq!(second.name(), "message", "{second}");
    assert_eq!(mood_of(&second), "calm");

    // A newly available resource that wants the node gets its last item (XEP-0163 §4.3.4).
    let (mut tablet, _) = Raw::login(&server, "bob", "pw", "tablet").await;
    tablet
        .send(&format!(
            "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' \
             node='{CLIENT_NODE}' ver='{ver}'/></presence>"
        ))
        .await;
    let last = tablet.stanza("message").await;
    assert_eq!(mood_of(&last), "calm");

    // Nothing reaches a contact the account blocks (XEP-0163 §4.3.3): the event published
    // while bob is blocked never comes; the one after the unblock does, and comes first.
    let block = |verb: &str| {
        format!("<{verb} xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></{verb}>")
    };
    let blocked = ask(&mut alice, "b1", None, "set", &block("block")).await;
    assert_eq!(blocked.attr("type"), Some("result"), "{blocked}");
    let done = ask(&mut alice, "p4", None, "set", &publish("current", "tired")).await;
    assert_eq!(done.attr("type"), Some("result"), "{done}");
    let unblocked = ask(&mut alice, "b2", None, "set", &block("unblock")).await;
    assert_eq!(unblocked.attr("type"), Some("result"), "{unblocked}");
    let done = ask(&mut alice, "p5", None, "set", &publish("current", "awake")).await;
    assert_eq!(done.attr("type"), Some("result"), "{done}");
    let next = bob.stanza("message").await;
    assert_eq!(mood_of(&next), "awake");

    // Presence access: bob reads the items; carol, a stranger, may not.
    let items = ask(
        &mut bob,
        "i1",
        Some("alice@localhost"),
        "get",
        &format!("<pubsub xmlns='{PUBSUB}'><items node='{MOOD}'/></pubsub>"),
    )
    .await;
    assert_eq!(items.attr("type"), Some("result"), "{items}");
    assert!(items.to_string().contains("awake"), "{items}");
    let refused = ask(
        &mut carol,
        "i2",
        Some("alice@localhost"),
        "get",
        &format!("<pubsub xmlns='{PUBSUB}'><items node='{MOOD}'/></pubsub>"),
    )
    .await;
    assert_eq!(
        error_condition(&refused).as_deref(),
        Some("not-authorized"),
        "{refused}"
    );

    // Discovery (XEP-0163 §6): the account is a pubsub/pep service; its nodes are listed
    // to those who may read them.
    let info = ask(
        &mut bob,
        "d1",
        Some("alice@localhost"),
        "get",
        &format!("<query xmlns='{DISCO_INFO}'/>"),
    )
    .await;
    let pep_identity = info.get_child("query", DISCO_INFO).and_then(|q| {
        q.children()
            .find(|i| i.attr("category") == Some("pubsub") && i.attr("type") == Some("pep"))
    });
    assert!(pep_identity.is_some(), "{info}");
    let items_of = |answer: &Element| -> Vec<String> {
        answer
            .get_child("query", "http://jabber.org/protocol/disco#items")
            .map(|q| {
                q.children()
                    .filter_map(|i| i.attr("node").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let disco_items = "<query xmlns='http://jabber.org/protocol/disco#items'/>";
    let listed = ask(&mut bob, "d2", Some("alice@localhost"), "get", disco_items).await;
    assert_eq!(items_of(&listed), [MOOD], "{listed}");
    let hidden = ask(
        &mut carol,
        "d3",
        Some("alice@localhost"),
        "get",
        disco_items,
    )
    .await;
    assert_eq!(hidden.attr("type"), Some("result"), "{hidden}");
    assert!(items_of(&hidden).is_empty(), "{hidden}");

    // Only the account publishes to its PEP service.
    let forbidden = ask(
        &mut bob,
        "p3",
        Some("alice@localhost"),
        "set",
        &publish("x", "sad"),
    )
    .await;
    assert_eq!(
        error_condition(&forbidden).as_deref(),
        Some("forbidden"),
        "{forbidden}"
    );
}

/// XEP-0402 §3 (and OMEMO's XEP-0384 §5.3.2) publish with publish-options the node must
/// meet: the first publish creates the node with them, later ones with the same options
/// succeed, other ones fail with precondition-not-met; a whitelist node is the owner's
/// alone; the node's configuration shows what the options set.
#[tokio::test]
async fn bookmarks_publish_options_create_and_hold_the_node_configuration() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let (mut alice, _) = Raw::login(&server, "alice", "pw", "phone").await;
    let bookmarks = "urn:xmpp:bookmarks:1";
    let options = |access: &str| {
        format!(
            "<publish-options><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             <field var='pubsub#persist_items'><value>true</value></field>\
             <field var='pubsub#max_items'><value>max</value></field>\
             <field var='pubsub#send_last_published_item'><value>never</value></field>\
             <field var='pubsub#access_model'><value>{access}</value></field></x></publish-options>"
        )
    };
    let publish = |room: &str, access: &str| {
        format!(
            "<pubsub xmlns='{PUBSUB}'><publish node='{bookmarks}'><item id='{room}'>\
             <conference xmlns='{bookmarks}' name='Room' autojoin='true'><nick>alice</nick></conference>\
             </item></publish>{}</pubsub>",
            options(access)
        )
    };
    for (i, room) in ["one@conference.localhost", "two@conference.localhost"]
        .iter()
        .enumerate()
    {
        let r = ask(
            &mut alice,
            &format!("p{i}"),
            None,
            "set",
            &publish(room, "whitelist"),
        )
        .await;
        assert_eq!(r.attr("type"), Some("result"), "{r}");
    }
    // max_items = max: both bookmarks are kept.
    let items = ask(
        &mut alice,
        "get",
        None,
        "get",
        &format!("<pubsub xmlns='{PUBSUB}'><items node='{bookmarks}'/></pubsub>"),
    )
    .await;
    assert_eq!(
        items.to_string().matches("<conference").count(),
        2,
        "{items}"
    );
    // Options the node does not have: precondition-not-met, nothing published.
    let r = ask(
        &mut alice,
        "bad",
        None,
        "set",
        &publish("three@conference.localhost", "open"),
    )
    .await;
    assert_eq!(error_condition(&r).as_deref(), Some("conflict"), "{r}");
    assert!(r.to_string().contains("precondition-not-met"), "{r}");
    // Whitelist: another account cannot read them.
    let (mut bob, _) = Raw::login(&server, "bob", "pw", "desk").await;
    let r = ask(
        &mut bob,
        "peek",
        Some("alice@localhost"),
        "get",
        &format!("<pubsub xmlns='{PUBSUB}'><items node='{bookmarks}'/></pubsub>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("error"), "{r}");
    // The configuration shows what the options set.
    let config = ask(
        &mut alice,
        "conf",
        None,
        "get",
        &format!("<pubsub xmlns='{PUBSUB}#owner'><configure node='{bookmarks}'/></pubsub>"),
    )
    .await
    .to_string();
    for (var, value) in [
        ("pubsub#max_items", "max"),
        ("pubsub#send_last_published_item", "never"),
        ("pubsub#access_model", "whitelist"),
    ] {
        let at = config
            .find(&format!("var='{var}'"))
            .unwrap_or_else(|| panic!("{var} in {config}"));
        let field = &config[at..at + config[at..].find("</field>").unwrap()];
        assert!(
            field.contains(&format!("<value>{value}</value>")),
            "{var}: {field}"
        );
    }
}
