//! The certification service (XEP-0189, wire profile §4) through a third-party client over
//! real TLS: publish, fetch, forbidden, item-not-found, the legacy form, bare-JID fallback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{iq, online};
use openspime::keyinfo::{self, KeyForm};
use openspime::{RsaPublicKey, crypto};
use openspimed_module_api::Element;
use openspimed_tests::TestServer;
use tokio_xmpp::parsers::stanza_error::DefinedCondition;

fn vector_key(who: &str) -> RsaPublicKey {
    let v: serde_json::Value = serde_json::from_str(include_str!(
        "../../modules/openspime/tests/data/openspime-0.9.json"
    ))
    .unwrap();
    crypto::public_key_from_pem(v["keys"][who]["public_pem_spki"].as_str().unwrap()).unwrap()
}

fn get(jid: &str) -> Element {
    Element::new("pubkeys", openspime::ns::PUBKEY).with_attr("jid", jid)
}

#[tokio::test]
async fn publish_fetch_forbidden_and_not_found() {
    let mut server = TestServer::start().await;
    server.add_user("spime", "pw").await;
    server.add_user("owner", "pw").await;
    let (mut spime, spime_jid) = online(&server, "spime@localhost/spime", "pw", false).await;
    let (mut owner, _) = online(&server, "owner@localhost/web", "pw", false).await;
    let key = vector_key("sender");

    // The spime publishes its own key.
    let publish = keyinfo::pubkeys(&spime_jid.to_string(), &key, KeyForm::Standard);
    assert_eq!(
        iq(&mut spime, "cert.localhost", false, &publish)
            .await
            .unwrap(),
        None
    );

    // Someone else fetches exactly that modulus and exponent, with the JID echoed.
    let answer = iq(
        &mut owner,
        "cert.localhost",
        true,
        &get("spime@localhost/spime"),
    )
    .await
    .unwrap()
    .expect("payload");
    let (jid, fetched) = keyinfo::parse_pubkeys(&answer).unwrap();
    assert_eq!(jid, "spime@localhost/spime");
    assert_eq!(fetched, key);
    // The seed's form: KeyValue wrapper.
    let ki = answer.first_child().unwrap();
    assert!(ki.children().any(|c| c.name() == "KeyValue"), "{answer}");

    // Publishing a key for another JID is forbidden.
    let forged = keyinfo::pubkeys(
        "spime@localhost/spime",
        &vector_key("recipient"),
        KeyForm::Standard,
    );
    let err = iq(&mut owner, "cert.localhost", false, &forged)
        .await
        .unwrap_err();
    assert_eq!(err.defined_condition, DefinedCondition::Forbidden);
    // …and did not replace the key.
    let answer = iq(
        &mut owner,
        "cert.localhost",
        true,
        &get("spime@localhost/spime"),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(keyinfo::parse_pubkeys(&answer).unwrap().1, key);

    // Nobody registered a key for this JID.
    let err = iq(
        &mut owner,
        "cert.localhost",
        true,
        &get("nobody@localhost/x"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.defined_condition, DefinedCondition::ItemNotFound);

    // A bare-JID key answers for any resource without a key of its own.
    let bare = keyinfo::pubkeys(
        "owner@localhost",
        &vector_key("recipient"),
        KeyForm::Standard,
    );
    assert_eq!(
        iq(&mut owner, "cert.localhost", false, &bare)
            .await
            .unwrap(),
        None
    );
    let answer = iq(
        &mut spime,
        "cert.localhost",
        true,
        &get("owner@localhost/anything"),
    )
    .await
    .unwrap()
    .unwrap();
    let (jid, k) = keyinfo::parse_pubkeys(&answer).unwrap();
    assert_eq!(
        (jid.as_str(), k),
        ("owner@localhost/anything", vector_key("recipient"))
    );

    // The service is discoverable from the host.
    let items = iq(
        &mut owner,
        "localhost",
        true,
        &Element::new("query", "http://jabber.org/protocol/disco#items"),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        items
            .children()
            .any(|i| i.attr("jid") == Some("cert.localhost")),
        "{items}"
    );
    server.stop().await;
}

#[tokio::test]
async fn legacy_form_uses_mpi_without_keyvalue_and_limits_request_loops() {
    let mut server = TestServer::start_with(|c| {
        c.modules.insert(
            "certsvc".into(),
            openspimed_module_api::toml::from_str(
                "services = [{ jid = \"services@localhost/cert\", form = \"legacy\" }]\n\
                 max_identical_requests_per_second = 3",
            )
            .unwrap(),
        );
    })
    .await;
    server.add_user("spime", "pw").await;
    server.add_user("services", "pw").await;
    let (mut spime, jid) = online(&server, "spime@localhost/spime", "pw", false).await;
    let key = vector_key("recipient_1024");
    let publish = keyinfo::pubkeys(&jid.to_string(), &key, KeyForm::Standard);
    iq(&mut spime, "services@localhost/cert", false, &publish)
        .await
        .unwrap();
    let answer = iq(
        &mut spime,
        "services@localhost/cert",
        true,
        &get("spime@localhost/spime"),
    )
    .await
    .unwrap()
    .unwrap();
    let ki = answer.first_child().unwrap();
    let rsa = ki.first_child().unwrap();
    assert_eq!(
        rsa.name(),
        "RSAKeyValue",
        "no KeyValue wrapper in the legacy form"
    );
    let modulus = crypto::b64_decode(&rsa.first_child().unwrap().text()).unwrap();
    let len = u32::from_be_bytes(modulus[..4].try_into().unwrap()) as usize;
    assert_eq!(len, modulus.len() - 4, "MPI: the length prefix matches");
    assert_eq!(keyinfo::parse_key_info(ki).unwrap(), key);

    // The same request in a tight loop is answered a few times, then refused.
    let mut refused = 0;
    for _ in 0..6 {
        if let Err(e) = iq(
            &mut spime,
            "services@localhost/cert",
            true,
            &get("spime@localhost/spime"),
        )
        .await
        {
            assert_eq!(e.defined_condition, DefinedCondition::ResourceConstraint);
            refused += 1;
        }
    }
    assert!(refused >= 3, "{refused}");
    server.stop().await;
}

/// The default form, `auto`: a request shaped like the 2008 client's (pyopenspime's
/// 16-character `[a-z0-9]` ids, a bare `<pubkeys jid/>`, here the vectors' own request)
/// gets the legacy form, the only one its ScopeNodes read; any other request the seed's
/// standard form. Before, every answer was standard and the 2008 ScopeNodes failed with
/// `internal-server-error`.
#[tokio::test]
async fn the_auto_form_answers_the_2008_request_shape_in_the_legacy_form() {
    let mut server = TestServer::start().await;
    server.add_user("spime", "pw").await;
    server.add_user("node", "pw").await;
    let (mut spime, jid) = online(&server, "spime@localhost/spime", "pw", false).await;
    let key = vector_key("sender");
    let publish = keyinfo::pubkeys(&jid.to_string(), &key, KeyForm::Standard);
    iq(&mut spime, "cert.localhost", false, &publish)
        .await
        .unwrap();

    let (mut node, _) = openspimed_tests::Raw::login(&server, "node", "pw", "scope").await;
    let ask = |id: &str| {
        format!(
            "<iq type='get' to='cert.localhost' id='{id}'><pubkeys xmlns='urn:xmpp:tmp:pubkey' \
             jid='spime@localhost/spime' /></iq>"
        )
    };
    // The vectors' request of the original implementation, as it was sent.
    node.send(&ask("pk00000000000099")).await;
    let legacy = node.stanza("iq").await;
    assert_eq!(legacy.attr("type"), Some("result"), "{legacy}");
    let ki = legacy.first_child().unwrap().first_child().unwrap();
    assert_eq!(
        ki.first_child().unwrap().name(),
        "RSAKeyValue",
        "no KeyValue wrapper: {legacy}"
    );
    let exponent = ki.first_child().unwrap().children().nth(1).unwrap().text();
    assert_eq!(exponent, "AAAAAwEAAQ==", "MPI numbers: {legacy}");
    assert_eq!(keyinfo::parse_key_info(ki).unwrap(), key);

    // A client with ids of another shape gets the seed's form.
    node.send(&ask("a1")).await;
    let standard = node.stanza("iq").await;
    let ki = standard.first_child().unwrap().first_child().unwrap();
    assert_eq!(ki.first_child().unwrap().name(), "KeyValue", "{standard}");
    assert_eq!(keyinfo::parse_key_info(ki).unwrap(), key);
    server.stop().await;
}
