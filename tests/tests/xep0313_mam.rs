//! XEP-0313 message archives with XEP-0359 stanza ids, through tokio-xmpp over real TLS;
//! what the server sends is read back with xmpp-parsers' MAM, RSM and stanza-id types.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{iq, mam_form, mam_query, next_message, online};
use openspimed_module_api::Element;
use openspimed_tests::{Raw, TestServer, WAIT};
use tokio_xmpp::Client;
use tokio_xmpp::jid::Jid;
use tokio_xmpp::parsers::message::{Lang, Message, MessageType};
use tokio_xmpp::parsers::rsm::SetQuery;
use tokio_xmpp::parsers::stanza_id::StanzaId;

fn chat(to: &str, body: &str) -> Message {
    let mut m = Message::new(Some(Jid::new(to).unwrap()));
    m.type_ = MessageType::Chat;
    m.bodies.insert(Lang::new(), body.to_owned());
    m
}

/// The stanza id `by` put on a message.
fn stanza_id(m: &Message, by: &str) -> Option<String> {
    m.payloads
        .iter()
        .filter_map(|p| StanzaId::try_from(p.clone()).ok())
        .find(|s| s.by.to_string() == by)
        .map(|s| s.id)
}

fn body(m: &Message) -> String {
    m.bodies.values().next().cloned().unwrap_or_default()
}

fn page(max: usize, after: Option<&str>, before: Option<&str>) -> Option<SetQuery> {
    Some(SetQuery {
        max: Some(max),
        after: after.map(str::to_owned),
        before: before.map(str::to_owned),
        index: None,
    })
}

fn condition(e: &tokio_xmpp::parsers::stanza_error::StanzaError) -> String {
    format!("{:?}", e.defined_condition)
}

async fn send(c: &mut Client, m: Message) {
    c.send_stanza(m.into()).await.unwrap();
}

/// Two accounts online, alice having sent bob `n` messages he received.
async fn conversation(server: &TestServer, n: usize) -> (Client, Client, Vec<String>) {
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let (mut alice, _) = online(server, "alice@localhost/phone", "pw", false).await;
    let (mut bob, _) = online(server, "bob@localhost/desk", "pw", false).await;
    let mut ids = Vec::new();
    for i in 0..n {
        send(&mut alice, chat("bob@localhost/desk", &format!("m{i}"))).await;
        let got = next_message(&mut bob).await;
        assert_eq!(body(&got), format!("m{i}"));
        // XEP-0359: what bob receives carries the id of his archive, none of alice's.
        ids.push(stanza_id(&got, "bob@localhost").expect("stanza-id by bob's archive"));
        assert_eq!(stanza_id(&got, "alice@localhost"), None, "{got:?}");
    }
    (alice, bob, ids)
}

#[tokio::test]
async fn each_account_archives_its_side_once_and_pages_through_it() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, bob_ids) = conversation(&server, 5).await;

    // bob's archive: the five, oldest first, with the ids his client was told.
    let (results, fin) = mam_query(&mut bob, None, mam_form("q1", &[], None)).await;
    let fin = fin.unwrap();
    assert!(fin.complete);
    assert_eq!(fin.set.count, Some(5));
    let ids: Vec<&str> = results.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, bob_ids.iter().map(String::as_str).collect::<Vec<_>>());
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.queryid.as_ref().map(|q| q.0.as_str()), Some("q1"));
        assert!(
            r.forwarded.delay.is_some(),
            "XEP-0203 stamp on every result"
        );
        assert_eq!(body(&r.forwarded.message), format!("m{i}"));
        assert_eq!(
            r.forwarded
                .message
                .from
                .as_ref()
                .map(|j| j.to_string())
                .as_deref(),
            Some("alice@localhost/phone")
        );
    }
    assert_eq!(
        fin.set.first.as_ref().map(|f| f.item.as_str()),
        Some(bob_ids[0].as_str())
    );
    assert_eq!(fin.set.last.as_deref(), Some(bob_ids[4].as_str()));

    // alice's archive holds the same five, under ids of its own, with bob.
    let with = [("with", &["bob@localhost"][..])];
    let (mine, fin) = mam_query(&mut alice, None, mam_form("a", &with, None)).await;
    assert_eq!(fin.unwrap().set.count, Some(5));
    assert_eq!(mine.len(), 5);
    assert!(mine.iter().all(|r| !bob_ids.contains(&r.id)));
    let (none, _) = mam_query(
        &mut alice,
        None,
        mam_form("b", &[("with", &["carol@localhost"][..])], None),
    )
    .await;
    assert!(none.is_empty());

    // XEP-0059 paging forwards: 2, 2, then the last one and complete.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (r, fin) = mam_query(
            &mut bob,
            None,
            mam_form("p", &[], page(2, after.as_deref(), None)),
        )
        .await;
        let fin = fin.unwrap();
        seen.extend(r.iter().map(|r| r.id.clone()));
        after = fin.set.last.clone();
        if fin.complete {
            assert_eq!(r.len(), 1);
            break;
        }
        assert_eq!(r.len(), 2);
    }
    assert_eq!(seen, bob_ids);
    // Backwards from the end (<before/>): the newest two, in chronological order.
    let (r, fin) = mam_query(&mut bob, None, mam_form("l", &[], page(2, None, Some("")))).await;
    assert!(!fin.unwrap().complete);
    assert_eq!(
        r.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        bob_ids[3..]
    );
    // flip-page (#extended): the same page, newest first; <first/> and <last/> still
    // its oldest and newest, so paging on from them works as without it.
    let mut flipped = mam_form("f", &[], page(2, None, Some("")));
    flipped.flip_page = true;
    let (r, fin) = mam_query(&mut bob, None, flipped).await;
    assert_eq!(
        r.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        [bob_ids[4].clone(), bob_ids[3].clone()]
    );
    let fin = fin.unwrap();
    assert_eq!(
        fin.set.first.as_ref().map(|f| f.item.as_str()),
        Some(bob_ids[3].as_str())
    );
    assert_eq!(fin.set.last.as_deref(), Some(bob_ids[4].as_str()));
    // Before an id, and the extended fields.
    let (r, _) = mam_query(
        &mut bob,
        None,
        mam_form("b", &[], page(10, None, Some(&bob_ids[2]))),
    )
    .await;
    assert_eq!(
        r.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        bob_ids[..2]
    );
    let ext = [
        ("after-id", &[bob_ids[0].as_str()][..]),
        ("before-id", &[bob_ids[3].as_str()][..]),
    ];
    let (r, _) = mam_query(&mut bob, None, mam_form("e", &ext, None)).await;
    assert_eq!(
        r.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        bob_ids[1..3]
    );
    let ids = [("ids", &[bob_ids[4].as_str(), bob_ids[1].as_str()][..])];
    let (r, _) = mam_query(&mut bob, None, mam_form("i", &ids, None)).await;
    assert_eq!(
        r.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        [bob_ids[1].clone(), bob_ids[4].clone()]
    );
    // max 0: the count alone.
    let (r, fin) = mam_query(&mut bob, None, mam_form("c", &[], page(0, None, None))).await;
    assert!(r.is_empty());
    assert_eq!(fin.unwrap().set.count, Some(5));
    // By time: everything from before the first message on, nothing after now.
    let past = "2000-01-01T00:00:00Z";
    let (r, _) = mam_query(
        &mut bob,
        None,
        mam_form("t", &[("start", &[past][..])], None),
    )
    .await;
    assert_eq!(r.len(), 5);
    let (r, _) = mam_query(&mut bob, None, mam_form("t", &[("end", &[past][..])], None)).await;
    assert!(r.is_empty());
    // Queried at the bare JID rather than without `to`: the same archive.
    let (r, _) = mam_query(&mut bob, Some("bob@localhost"), mam_form("j", &[], None)).await;
    assert_eq!(r.len(), 5);
}

#[tokio::test]
async fn bad_queries_get_the_errors_the_xep_lists() {
    let server = TestServer::start().await;
    let (_alice, mut bob, _) = conversation(&server, 1).await;
    let cases: Vec<(tokio_xmpp::parsers::mam::Query, &str)> = vec![
        (
            mam_form("u", &[], page(5, Some("no-such-id"), None)),
            "ItemNotFound",
        ),
        (
            mam_form("u", &[], page(5, None, Some("no-such-id"))),
            "ItemNotFound",
        ),
        (
            mam_form("s", &[("start", &["yesterday"][..])], None),
            "BadRequest",
        ),
        (
            mam_form("f", &[("fulltext", &["x"][..])], None),
            "BadRequest",
        ),
        (
            mam_form("w", &[("with", &["@@"][..])], None),
            "JidMalformed",
        ),
    ];
    for (q, want) in cases {
        let (r, fin) = mam_query(&mut bob, None, q).await;
        assert!(r.is_empty());
        assert_eq!(condition(&fin.unwrap_err()), want);
    }
    // Someone else's archive is not reachable.
    let (_, fin) = mam_query(&mut bob, Some("alice@localhost"), mam_form("x", &[], None)).await;
    assert_eq!(condition(&fin.unwrap_err()), "ServiceUnavailable");
    // The form a client fills in lists the fields served.
    let form = iq(
        &mut bob,
        "bob@localhost",
        true,
        &Element::new("query", "urn:xmpp:mam:2"),
    )
    .await
    .unwrap()
    .unwrap();
    let text = form.to_string();
    for var in ["with", "start", "end", "before-id", "after-id", "ids"] {
        assert!(text.contains(&format!("var='{var}'")), "{text}");
    }
}

#[tokio::test]
async fn preferences_decide_what_is_archived() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, _) = conversation(&server, 0).await;
    let prefs = |xml: &str| Element::parse(xml).unwrap();
    // Defaults as configured (always), empty lists.
    let got = iq(
        &mut bob,
        "bob@localhost",
        true,
        &prefs("<prefs xmlns='urn:xmpp:mam:2'/>"),
    )
    .await
    .unwrap()
    .unwrap();
    let parsed = tokio_xmpp::parsers::mam_prefs::Prefs::try_from(
        got.to_string()
            .parse::<tokio_xmpp::minidom::Element>()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(format!("{:?}", parsed.default_), "Always");
    // never, except alice.
    let set = prefs(
        "<prefs xmlns='urn:xmpp:mam:2' default='never'><always><jid>alice@localhost</jid></always><never/></prefs>",
    );
    let answer = iq(&mut bob, "bob@localhost", false, &set)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.attr("default"), Some("never"));
    server.add_user("carol", "pw").await;
    let (mut carol, _) = online(&server, "carol@localhost/x", "pw", false).await;
    send(&mut carol, chat("bob@localhost/desk", "from carol")).await;
    send(&mut alice, chat("bob@localhost/desk", "from alice")).await;
    let a = next_message(&mut bob).await;
    let b = next_message(&mut bob).await;
    for m in [&a, &b] {
        let archived = stanza_id(m, "bob@localhost").is_some();
        assert_eq!(archived, body(m) == "from alice", "{m:?}");
    }
    let (r, _) = mam_query(&mut bob, None, mam_form("q", &[], None)).await;
    assert_eq!(
        r.iter()
            .map(|r| body(&r.forwarded.message))
            .collect::<Vec<_>>(),
        ["from alice"]
    );
    // Bad preferences are refused.
    let bad = iq(
        &mut bob,
        "bob@localhost",
        false,
        &prefs("<prefs xmlns='urn:xmpp:mam:2' default='maybe'/>"),
    )
    .await;
    assert_eq!(condition(&bad.unwrap_err()), "BadRequest");
}

#[tokio::test]
async fn only_archivable_messages_are_kept_and_forged_ids_are_replaced() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, _) = conversation(&server, 0).await;
    let raw = |xml: &str| -> Message {
        Message::try_from(xml.parse::<tokio_xmpp::minidom::Element>().unwrap()).unwrap()
    };
    for xml in [
        // Chat states alone, a no-store hint, a headline: delivered, not archived.
        "<message xmlns='jabber:client' to='bob@localhost/desk' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
        "<message xmlns='jabber:client' to='bob@localhost/desk' type='chat'><body>secret</body><no-store xmlns='urn:xmpp:hints'/></message>",
        "<message xmlns='jabber:client' to='bob@localhost/desk' type='headline'><body>news</body></message>",
        // A forged id of bob's archive: replaced by the real one.
        "<message xmlns='jabber:client' to='bob@localhost/desk' type='chat'><body>kept</body><stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='forged'/></message>",
    ] {
        send(&mut alice, raw(xml)).await;
        let got = next_message(&mut bob).await;
        let id = stanza_id(&got, "bob@localhost");
        if body(&got) == "kept" {
            assert_ne!(id.as_deref(), Some("forged"));
            assert!(id.is_some());
            let ids = got
                .payloads
                .iter()
                .filter(|p| p.is("stanza-id", "urn:xmpp:sid:0"))
                .count();
            assert_eq!(ids, 1, "{got:?}");
        } else {
            assert_eq!(id, None, "{got:?}");
        }
    }
    let (r, _) = mam_query(&mut bob, None, mam_form("q", &[], None)).await;
    let bodies: Vec<String> = r.iter().map(|r| body(&r.forwarded.message)).collect();
    assert_eq!(bodies, ["kept"]);
    // The stored copy carries no stanza id of its own (the result's id is the id).
    assert!(
        r[0].forwarded
            .message
            .payloads
            .iter()
            .all(|p| !p.is("stanza-id", "urn:xmpp:sid:0"))
    );
}

#[tokio::test]
async fn archives_outlive_restarts_go_with_their_account_and_are_discovered_at_it() {
    let mut server = TestServer::start().await;
    let (alice, bob, _) = conversation(&server, 3).await;
    drop((alice, bob));
    server.restart().await;
    let (mut bob, _) = online(&server, "bob@localhost/desk", "pw", false).await;
    let (r, _) = mam_query(&mut bob, None, mam_form("q", &[], None)).await;
    assert_eq!(r.len(), 3);
    // XEP-0313 §7: discovered at the account's bare JID.
    let info = iq(
        &mut bob,
        "bob@localhost",
        true,
        &Element::new("query", "http://jabber.org/protocol/disco#info"),
    )
    .await
    .unwrap()
    .unwrap()
    .to_string();
    for f in [
        "urn:xmpp:mam:2",
        "urn:xmpp:mam:2#extended",
        "urn:xmpp:sid:0",
    ] {
        assert!(info.contains(&format!("var='{f}'")), "{info}");
    }
    // XEP-0077 removal takes the archive with the account.
    drop(bob);
    let (mut raw, _) = Raw::login(&server, "bob", "pw", "rm").await;
    raw.send("<iq type='set' id='rm'><query xmlns='jabber:iq:register'><remove/></query></iq>")
        .await;
    assert_eq!(raw.stanza("iq").await.attr("type"), Some("result"));
    server.add_user("bob", "pw").await;
    let (mut bob, _) = online(&server, "bob@localhost/desk", "pw", false).await;
    let (r, fin) = mam_query(&mut bob, None, mam_form("q", &[], None)).await;
    assert!(r.is_empty());
    assert_eq!(fin.unwrap().set.count, Some(0));
}

#[tokio::test]
async fn messages_expire_after_the_configured_time() {
    let server = TestServer::start_with(|c| {
        c.modules.insert(
            "mam".into(),
            openspimed_module_api::toml::from_str("expires_after = \"2\"").unwrap(),
        );
    })
    .await;
    let (_alice, mut bob, _) = conversation(&server, 2).await;
    let (r, _) = mam_query(&mut bob, None, mam_form("q", &[], None)).await;
    assert_eq!(r.len(), 2);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let (r, _) = mam_query(&mut bob, None, mam_form("q", &[], None)).await;
        if r.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired messages stay"
        );
    }
}
