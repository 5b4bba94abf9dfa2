//! XEP-0049 private XML storage through tokio-xmpp over real TLS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{iq, online};
use openspimed_module_api::Element;
use openspimed_tests::TestServer;

fn query(inner: &str) -> Element {
    Element::parse(&format!("<query xmlns='jabber:iq:private'>{inner}</query>")).unwrap()
}

fn condition(e: &tokio_xmpp::parsers::stanza_error::StanzaError) -> String {
    format!("{:?}", e.defined_condition)
}

#[tokio::test]
async fn fragments_are_kept_per_namespace_for_their_account_only() {
    let mut server = TestServer::start().await;
    server.add_user("hamlet", "pw").await;
    server.add_user("macbeth", "pw").await;
    let (mut hamlet, _) = online(&server, "hamlet@localhost/denmark", "pw", false).await;
    let prefs = "<exodus xmlns='exodus:prefs'><defaultnick>Hamlet</defaultnick></exodus>";
    let marks = "<storage xmlns='storage:bookmarks'><conference jid='elsinore@conference.localhost' autojoin='true'/></storage>";
    // Stored (two at once), answered empty; read back one namespace at a time.
    let set = iq(
        &mut hamlet,
        "hamlet@localhost",
        false,
        &query(&format!("{prefs}{marks}")),
    )
    .await;
    assert_eq!(set.unwrap(), None);
    let got = iq(
        &mut hamlet,
        "hamlet@localhost",
        true,
        &query("<exodus xmlns='exodus:prefs'/>"),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(got.to_string(), query(prefs).to_string());
    // Nothing stored under a namespace: the empty element back.
    let none = iq(
        &mut hamlet,
        "hamlet@localhost",
        true,
        &query("<other xmlns='urn:x'/>"),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        none.to_string(),
        query("<other xmlns='urn:x'/>").to_string()
    );

    // Error cases of §2.3.
    let empty = iq(&mut hamlet, "hamlet@localhost", true, &query("")).await;
    assert_eq!(condition(&empty.unwrap_err()), "NotAcceptable");
    let two = iq(
        &mut hamlet,
        "hamlet@localhost",
        true,
        &query("<a xmlns='urn:a'/><b xmlns='urn:b'/>"),
    )
    .await;
    assert_eq!(condition(&two.unwrap_err()), "BadRequest");
    let (mut macbeth, _) = online(&server, "macbeth@localhost/castle", "pw", false).await;
    let theirs = iq(
        &mut macbeth,
        "hamlet@localhost",
        true,
        &query("<exodus xmlns='exodus:prefs'/>"),
    )
    .await;
    assert_eq!(condition(&theirs.unwrap_err()), "Forbidden");
    let overwrite = iq(&mut macbeth, "hamlet@localhost", false, &query(prefs)).await;
    assert_eq!(condition(&overwrite.unwrap_err()), "Forbidden");
    // Macbeth's own namespace is his own.
    let his = iq(
        &mut macbeth,
        "macbeth@localhost",
        true,
        &query("<exodus xmlns='exodus:prefs'/>"),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        his.to_string(),
        query("<exodus xmlns='exodus:prefs'/>").to_string()
    );

    // A restart keeps them; the server lists the feature.
    drop((hamlet, macbeth));
    server.restart().await;
    let (mut hamlet, _) = online(&server, "hamlet@localhost/denmark", "pw", false).await;
    let got = iq(
        &mut hamlet,
        "hamlet@localhost",
        true,
        &query("<storage xmlns='storage:bookmarks'/>"),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(got.to_string(), query(marks).to_string());
    let info = iq(
        &mut hamlet,
        "localhost",
        true,
        &Element::new("query", "http://jabber.org/protocol/disco#info"),
    )
    .await
    .unwrap()
    .unwrap()
    .to_string();
    assert!(info.contains("var='jabber:iq:private'"), "{info}");
}
