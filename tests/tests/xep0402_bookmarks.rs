//! XEP-0402 bookmarks and their XEP-0048 compatibility (`urn:xmpp:bookmarks:1#compat`):
//! what a client writes to private storage (XEP-0049) is in the PEP node, what a client
//! publishes to the node is what private storage answers; raw clients over real TLS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use openspimed_module_api::Element;
use openspimed_tests::{Raw, TestServer};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

type Client = Raw<TlsStream<TcpStream>>;
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";

async fn ask(c: &mut Client, id: &str, kind: &str, payload: &str) -> Element {
    c.send(&format!("<iq type='{kind}' id='{id}'>{payload}</iq>"))
        .await;
    loop {
        let e = c.stanza("iq").await;
        if e.attr("id") == Some(id) {
            return e;
        }
    }
}

/// The rooms of the account's `urn:xmpp:bookmarks:1` node, with their names, by item.
async fn pep_rooms(c: &mut Client) -> Vec<(String, String)> {
    let r = ask(
        c,
        "items",
        "get",
        &format!("<pubsub xmlns='{PUBSUB}'><items node='urn:xmpp:bookmarks:1'/></pubsub>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let items = r
        .get_child("pubsub", PUBSUB)
        .unwrap()
        .get_child("items", PUBSUB)
        .unwrap();
    let mut rooms: Vec<(String, String)> = items
        .children()
        .map(|i| {
            let conf = i
                .get_child("conference", "urn:xmpp:bookmarks:1")
                .expect("a conference payload");
            (
                i.attr("id").unwrap().to_owned(),
                conf.attr("name").unwrap_or("").to_owned(),
            )
        })
        .collect();
    rooms.sort();
    rooms
}

/// The rooms of the legacy `storage:bookmarks` PEP node (XEP-0048 in PEP).
async fn legacy_rooms(c: &mut Client) -> Vec<String> {
    let r = ask(
        c,
        "legacy",
        "get",
        &format!("<pubsub xmlns='{PUBSUB}'><items node='storage:bookmarks'/></pubsub>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let text = r.to_string();
    let mut rooms: Vec<String> = text
        .split("<conference ")
        .skip(1)
        .filter_map(|c| {
            c.split("jid='")
                .nth(1)?
                .split('\'')
                .next()
                .map(str::to_owned)
        })
        .collect();
    rooms.sort();
    rooms
}

/// The rooms of the XEP-0048 bookmarks private storage answers with.
async fn private_rooms(c: &mut Client) -> Vec<String> {
    let r = ask(
        c,
        "priv",
        "get",
        "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let storage = r
        .get_child("query", "jabber:iq:private")
        .unwrap()
        .get_child("storage", "storage:bookmarks")
        .unwrap();
    let mut rooms: Vec<String> = storage
        .children()
        .map(|c| c.attr("jid").unwrap().to_owned())
        .collect();
    rooms.sort();
    rooms
}

#[tokio::test]
async fn private_storage_bookmarks_and_pep_bookmarks_are_one_list() {
    let server = TestServer::start().await;
    server.add_user("juliet", "pw").await;
    let (mut old, _) = Raw::login(&server, "juliet", "pw", "gajim").await;
    let (mut new, _) = Raw::login(&server, "juliet", "pw", "conversations").await;
    // Nothing yet, either way.
    assert!(private_rooms(&mut old).await.is_empty());
    // A XEP-0048 client stores two rooms: a XEP-0402 client finds them in PEP.
    let set = ask(
        &mut old,
        "set1",
        "set",
        "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>\
         <conference jid='council@conference.localhost' name='Council' autojoin='true'><nick>J</nick></conference>\
         <conference jid='lobby@conference.localhost' name='Lobby'/></storage></query>",
    )
    .await;
    assert_eq!(set.attr("type"), Some("result"), "{set}");
    assert_eq!(
        pep_rooms(&mut new).await,
        [
            (
                "council@conference.localhost".to_owned(),
                "Council".to_owned()
            ),
            ("lobby@conference.localhost".to_owned(), "Lobby".to_owned())
        ]
    );
    // The XEP-0402 client adds one: the XEP-0048 client reads three.
    let publish = ask(
        &mut new,
        "pub",
        "set",
        &format!(
            "<pubsub xmlns='{PUBSUB}'><publish node='urn:xmpp:bookmarks:1'><item id='garden@conference.localhost'>\
             <conference xmlns='urn:xmpp:bookmarks:1' name='Garden' autojoin='false'/></item></publish>\
             <publish-options><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             <field var='pubsub#persist_items'><value>true</value></field>\
             <field var='pubsub#max_items'><value>max</value></field>\
             <field var='pubsub#send_last_published_item'><value>never</value></field>\
             <field var='pubsub#access_model'><value>whitelist</value></field></x></publish-options></pubsub>"
        ),
    )
    .await;
    assert_eq!(publish.attr("type"), Some("result"), "{publish}");
    assert_eq!(
        private_rooms(&mut old).await,
        [
            "council@conference.localhost",
            "garden@conference.localhost",
            "lobby@conference.localhost"
        ]
    );
    // The legacy PEP node follows the native one.
    assert_eq!(
        legacy_rooms(&mut old).await,
        [
            "council@conference.localhost",
            "garden@conference.localhost",
            "lobby@conference.localhost"
        ]
    );
    // The XEP-0048 client removes two by storing one: the node holds that one.
    let set = ask(
        &mut old,
        "set2",
        "set",
        "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>\
         <conference jid='garden@conference.localhost' name='Garden'/></storage></query>",
    )
    .await;
    assert_eq!(set.attr("type"), Some("result"), "{set}");
    assert_eq!(
        pep_rooms(&mut new).await,
        [(
            "garden@conference.localhost".to_owned(),
            "Garden".to_owned()
        )]
    );
    assert_eq!(
        legacy_rooms(&mut old).await,
        ["garden@conference.localhost"]
    );
    // A client of XEP-0048 in PEP publishes the whole list there: the native node takes it.
    let legacy = ask(
        &mut old,
        "lp",
        "set",
        &format!(
            "<pubsub xmlns='{PUBSUB}'><publish node='storage:bookmarks'><item id='current'>\
             <storage xmlns='storage:bookmarks'><conference jid='tower@conference.localhost' name='Tower'/></storage>\
             </item></publish></pubsub>"
        ),
    )
    .await;
    assert_eq!(legacy.attr("type"), Some("result"), "{legacy}");
    assert_eq!(
        pep_rooms(&mut new).await,
        [("tower@conference.localhost".to_owned(), "Tower".to_owned())]
    );
    // Other private data is private storage's as before; the account advertises #compat.
    let other = ask(
        &mut old,
        "o",
        "set",
        "<query xmlns='jabber:iq:private'><prefs xmlns='urn:x'/></query>",
    )
    .await;
    assert_eq!(other.attr("type"), Some("result"), "{other}");
    old.send(
        "<iq type='get' id='acct' to='juliet@localhost'>\
         <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    .await;
    let acct = loop {
        let e = old.stanza("iq").await;
        if e.attr("id") == Some("acct") {
            break e.to_string();
        }
    };
    assert!(acct.contains("var='urn:xmpp:bookmarks:1#compat'"), "{acct}");
}
