//! The OpenSpime network end to end in one process hosting `spime.example` (spimes),
//! `mydomain.example` (owners) and `example` (cert.example, pubsub.example,
//! scopenode.example), with third-party clients over real TLS: every flow of seed §1.0 and
//! §1.2, with the example XML made well-formed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{co2_report, iq, online, vector_key};
use openspime::keyinfo::{self, KeyForm};
use openspime::{ClaimKeyRef, Container, RsaPrivateKey, SeekRequest, SpimeSeek, crypto};
use openspimed_module_api::{Element, toml};
use openspimed_tests::{TestServer, WAIT};
use tokio_xmpp::parsers::stanza_error::DefinedCondition;
use tokio_xmpp::{Client, Event, Stanza};

const SPIME: &str = "4a6b-5638-0312111d@spime.example/spime";
const OWNER: &str = "owner@mydomain.example/web";
const STRANGER: &str = "stranger@mydomain.example/web";
const NODE: &str = "demo@scopenode.example";
const SCOPE: &str = "demo@scopenode.example/co2";
const CERT: &str = "cert.example";
const PUBSUB: &str = "pubsub.example";

async fn network() -> TestServer {
    TestServer::start_hosts(&["spime.example", "mydomain.example", "example"], |c| {
        for h in ["localhost", "spime.example", "mydomain.example"] {
            if let Some(host) = c.hosts.get_mut(h) {
                host.modules = vec!["disco".into(), "ping".into(), "version".into()];
            }
        }
        let opts = |s: &str| toml::from_str::<toml::Table>(s).unwrap();
        c.modules.insert(
            "pubsub".into(),
            opts(
                "[[nodes]]\nname = 'spimeseek'\npublish_model = 'open'\n\
                 publish_domains = ['spime.example', 'mydomain.example']\n\
                 subscribe_domains = ['scopenode.example']",
            ),
        );
    })
    .await
}

async fn publish_key(client: &mut Client, jid: &str, key: &RsaPrivateKey) {
    let p = keyinfo::pubkeys(jid, &key.to_public_key(), KeyForm::Standard);
    assert_eq!(iq(client, CERT, false, &p).await.unwrap(), None);
}

async fn node_key(client: &mut Client) -> openspime::RsaPublicKey {
    let get = Element::new("pubkeys", openspime::ns::PUBKEY).with_attr("jid", NODE);
    let answer = iq(client, CERT, true, &get).await.unwrap().unwrap();
    keyinfo::parse_pubkeys(&answer).unwrap().1
}

/// The ScopeNode's counters (disco#info extended information).
async fn stats(client: &mut Client) -> BTreeMap<String, u64> {
    let q = Element::new("query", "http://jabber.org/protocol/disco#info");
    let info = iq(client, NODE, true, &q).await.unwrap().unwrap();
    let form = info.children().find(|c| c.name() == "x").unwrap();
    form.children()
        .filter(|f| f.attr("var") != Some("FORM_TYPE"))
        .map(|f| {
            (
                f.attr("var").unwrap().to_owned(),
                f.first_child().unwrap().text().parse().unwrap(),
            )
        })
        .collect()
}

/// Waits until a counter reaches `at_least` (the seek was processed), asking the ScopeNode.
async fn wait_counter(client: &mut Client, name: &str, at_least: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = stats(client).await;
        if s.get(name).copied().unwrap_or(0) >= at_least {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never reached {at_least}: {s:?}"
        );
        tokio::task::yield_now().await;
    }
}

fn seek(
    id: &str,
    spimeid: &str,
    expdate: &str,
    encrequired: bool,
    signer: (&RsaPrivateKey, &str, &str),
    claim: Option<ClaimKeyRef>,
) -> Element {
    let req = SpimeSeek::Request(SeekRequest {
        id: id.into(),
        spimeid: spimeid.into(),
        expdate: expdate.into(),
        encrequired,
    });
    let c = Container::seal(
        req.to_element(),
        Some((signer.0, signer.1, Some(signer.2))),
        claim,
        None,
    )
    .unwrap();
    Element::parse(&format!(
        "<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='spimeseek'>\
         <item id='{id}-item'>{}</item></publish></pubsub>",
        c.to_element()
    ))
    .unwrap()
}

/// The next OpenSpime container a client receives, with the sender: directly in a message
/// (a ScopeNode's answer) or inside a PubSub event item (a relayed request).
async fn next_container(client: &mut Client) -> (String, Container) {
    fn find(el: &Element) -> Option<&Element> {
        if el.name() == "openspime" {
            return Some(el);
        }
        el.children().find_map(find)
    }
    loop {
        match tokio::time::timeout(WAIT, futures::StreamExt::next(client))
            .await
            .expect("a message in time")
        {
            Some(Event::Stanza(Stanza::Message(m))) => {
                for p in &m.payloads {
                    let el = Element::parse(&String::from(p)).unwrap();
                    if let Some(c) = find(&el) {
                        let from = m.from.as_ref().unwrap().to_string();
                        return (from, Container::parse(c).unwrap());
                    }
                }
            }
            Some(Event::Stanza(_)) => continue,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

fn future_date() -> String {
    openspime::date::format(openspime::date::now() + 3600, 60)
}

#[tokio::test]
async fn reports_and_seeks_end_to_end() {
    let mut server = network().await;
    server
        .add_account("4a6b-5638-0312111d", "spime.example", "pw")
        .await;
    server.add_account("owner", "mydomain.example", "pw").await;
    server
        .add_account("stranger", "mydomain.example", "pw")
        .await;
    let (mut spime, _) = online(&server, SPIME, "pw", false).await;
    let (mut owner, _) = online(&server, OWNER, "pw", false).await;
    let (mut stranger, _) = online(&server, STRANGER, "pw", false).await;
    let spime_key = vector_key("sender");
    let owner_key = vector_key("recipient");
    let stranger_key = vector_key("recipient_1024");
    publish_key(&mut spime, SPIME, &spime_key).await;
    publish_key(&mut owner, OWNER, &owner_key).await;
    publish_key(&mut stranger, STRANGER, &stranger_key).await;

    // §1.0.0: a plain report is answered with an empty result and stored.
    let plain = Container::seal(co2_report("176.4"), None, None, None).unwrap();
    assert_eq!(
        iq(&mut spime, SCOPE, false, &plain.to_element())
            .await
            .unwrap(),
        None
    );

    // §1.0.1: encrypted + signed, to the ScopeNode's key from the certification service.
    let scope_key = node_key(&mut spime).await;
    let sealed = Container::seal(
        co2_report("180.0"),
        Some((&spime_key, CERT, Some(SPIME))),
        None,
        Some(&scope_key),
    )
    .unwrap();
    assert!(sealed.is_encrypted());
    assert_eq!(
        iq(&mut spime, SCOPE, false, &sealed.to_element())
            .await
            .unwrap(),
        None
    );

    // Stored decrypted, under the spime's full JID.
    let stored = openspimed_mod_scopenode::store::SensorData::new(server.storage())
        .entries_for_spime(NODE, SPIME, 10)
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    assert!(
        stored.iter().any(|e| e.xml.contains("<ppm>180.0</ppm>")),
        "{stored:?}"
    );

    // Inconsistent with the scope: the seed's error stanza.
    let bad = Container::seal(co2_report("not-a-number"), None, None, None).unwrap();
    let err = iq(&mut spime, SCOPE, false, &bad.to_element())
        .await
        .unwrap_err();
    assert_eq!(err.defined_condition, DefinedCondition::BadRequest);
    let app = err.other.as_ref().unwrap();
    assert_eq!(
        (app.name(), app.ns().as_str()),
        (
            "inconsistent-data-with-scope",
            "openspime:protocol:extension:data:error"
        )
    );
    // The text says which field and why (before: only the seed's fixed sentence).
    let text = err.texts.values().next().cloned().unwrap_or_default();
    assert!(
        text.contains("data is not consistent with scope")
            && text.contains("field ppm is not a number: \"not-a-number\""),
        "{text}"
    );
    let out_of_range = Container::seal(co2_report("2000000"), None, None, None).unwrap();
    let err = iq(&mut spime, SCOPE, false, &out_of_range.to_element())
        .await
        .unwrap_err();
    let text = err.texts.values().next().cloned().unwrap_or_default();
    assert!(
        text.contains("field ppm is 2000000, out of its range [0, 1000000]"),
        "{text}"
    );
    // The ScopeNode domain itself answers disco like any hosted service domain (before:
    // item-not-found), and lists its nodes.
    let info = iq(
        &mut spime,
        "scopenode.example",
        true,
        &Element::new("query", "http://jabber.org/protocol/disco#info"),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        info.children()
            .any(|c| c.name() == "identity" && c.attr("category") == Some("component")),
        "{info}"
    );
    assert!(
        info.children()
            .any(|c| c.attr("var") == Some(openspime::ns::SPIMESEEK)),
        "{info}"
    );
    let items = iq(
        &mut spime,
        "scopenode.example",
        true,
        &Element::new("query", "http://jabber.org/protocol/disco#items"),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        items.children().any(|i| i.attr("jid") == Some(NODE)),
        "{items}"
    );
    // A tampered signature on a report.
    let mut forged = Container::seal(
        co2_report("1.0"),
        Some((&spime_key, CERT, Some(SPIME))),
        None,
        None,
    )
    .unwrap();
    if let openspime::Transport::Clear { payload, .. } = &mut forged.transport {
        *payload = co2_report("999.0");
    }
    let err = iq(&mut spime, SCOPE, false, &forged.to_element())
        .await
        .unwrap_err();
    assert_eq!(
        err.other.unwrap().name(),
        "signature-error-public-key-corrupted"
    );

    // §1.2.0: the spime seeks itself and gets its entries in clear, newest first.
    let p = seek(
        "s1",
        SPIME,
        &future_date(),
        false,
        (&spime_key, CERT, SPIME),
        None,
    );
    assert_eq!(iq(&mut spime, PUBSUB, false, &p).await.unwrap(), None);
    let (from, c) = next_container(&mut spime).await;
    assert_eq!(from, SCOPE);
    assert!(!c.is_encrypted());
    let (payload, _) = c.open(None).unwrap();
    let SpimeSeek::Response { id, entries } = SpimeSeek::parse(&payload).unwrap() else {
        panic!("response expected")
    };
    assert_eq!(id, "s1");
    assert_eq!(entries.len(), 2);

    // The same seek published twice is answered once.
    assert_eq!(iq(&mut spime, PUBSUB, false, &p).await.unwrap(), None);
    wait_counter(&mut spime, "seeks_ignored_duplicate", 1).await;

    // §1.2.1: the owner, with a claim key issued by the spime, seeks encrypted.
    let claim = ClaimKeyRef {
        cert: CERT.into(),
        claims: SPIME.into(),
        blob: crypto::issue_claim_key("owner@mydomain.example", &future_date(), &spime_key)
            .unwrap(),
    };
    let p = seek(
        "o1",
        SPIME,
        &future_date(),
        true,
        (&owner_key, CERT, OWNER),
        Some(claim.clone()),
    );
    iq(&mut owner, PUBSUB, false, &p).await.unwrap();
    let (from, c) = next_container(&mut owner).await;
    assert_eq!(from, SCOPE);
    assert!(c.is_encrypted(), "encrequired answers are encrypted");
    assert!(
        c.open(Some(&stranger_key)).is_err(),
        "only the owner's key opens it"
    );
    let (payload, _) = c.open(Some(&owner_key)).unwrap();
    let SpimeSeek::Response { id, entries } = SpimeSeek::parse(&payload).unwrap() else {
        panic!("response expected")
    };
    assert_eq!((id.as_str(), entries.len()), ("o1", 2));

    // Requests that must be ignored, each counted with its reason. After each, a valid
    // request proves nothing was answered in between (its answer comes next).
    let past = openspime::date::format(openspime::date::now() - 60, 0);
    let other_owner_claim = ClaimKeyRef {
        blob: crypto::issue_claim_key("someoneelse@mydomain.example", &future_date(), &spime_key)
            .unwrap(),
        ..claim.clone()
    };
    let expired_claim = ClaimKeyRef {
        blob: crypto::issue_claim_key("owner@mydomain.example", &past, &spime_key).unwrap(),
        ..claim.clone()
    };
    let mut tampered = seek(
        "t1",
        SPIME,
        &future_date(),
        false,
        (&spime_key, CERT, SPIME),
        None,
    );
    let text = tampered.to_string().replace("<expdate>", "<expdate> ");
    tampered = Element::parse(&text).unwrap();
    // Who publishes: 0 the spime, 1 the owner, 2 the stranger.
    let cases: Vec<(&str, usize, Element)> = vec![
        (
            "expired",
            0,
            seek("e1", SPIME, &past, false, (&spime_key, CERT, SPIME), None),
        ),
        (
            "no-claim-key",
            2,
            seek(
                "n1",
                SPIME,
                &future_date(),
                false,
                (&stranger_key, CERT, STRANGER),
                None,
            ),
        ),
        (
            "claim-expired",
            1,
            seek(
                "c1",
                SPIME,
                &future_date(),
                false,
                (&owner_key, CERT, OWNER),
                Some(expired_claim),
            ),
        ),
        (
            "claim-other-owner",
            1,
            seek(
                "c2",
                SPIME,
                &future_date(),
                false,
                (&owner_key, CERT, OWNER),
                Some(other_owner_claim),
            ),
        ),
        ("bad-signature", 0, tampered),
        (
            "untrusted-cert",
            0,
            seek(
                "u1",
                SPIME,
                &future_date(),
                false,
                (&spime_key, "cert.untrusted.example", SPIME),
                None,
            ),
        ),
    ];
    let mut n = 0;
    for (reason, who, publish) in cases {
        let client = match who {
            0 => &mut spime,
            1 => &mut owner,
            _ => &mut stranger,
        };
        iq(client, PUBSUB, false, &publish).await.unwrap();
        wait_counter(client, &format!("seeks_ignored_{reason}"), 1).await;
        n += 1;
        let ok_id = format!("after-{n}");
        let valid = seek(
            &ok_id,
            SPIME,
            &future_date(),
            false,
            (&spime_key, CERT, SPIME),
            None,
        );
        iq(&mut spime, PUBSUB, false, &valid).await.unwrap();
        let (_, c) = next_container(&mut spime).await;
        let SpimeSeek::Response { id, .. } = SpimeSeek::parse(&c.open(None).unwrap().0).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            id, ok_id,
            "after the {reason} case, the next answer is the valid request's"
        );
    }
    let s = stats(&mut spime).await;
    assert_eq!(s.get("reports_accepted"), Some(&2), "{s:?}");
    assert_eq!(
        s.get("reports_rejected_inconsistent-data-with-scope"),
        Some(&2),
        "{s:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn pyopenspime_report_from_the_vectors_is_accepted_and_stored() {
    // The 2008 client's stanza, legacy form, to a ScopeNode on the host domain itself with
    // the vector's recipient key, signed by a key at a legacy-form certification service.
    let v: serde_json::Value = serde_json::from_str(include_str!(
        "../../modules/openspime/tests/data/openspime-0.9.json"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("scopenode.pem");
    std::fs::write(
        &key_file,
        v["keys"]["recipient"]["private_pem_pkcs1"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let key_file = key_file.to_str().unwrap().to_owned();
    let mut server = TestServer::start_hosts(&["developer.openspime.com"], move |c| {
        let opts = |s: &str| toml::from_str::<toml::Table>(s).unwrap();
        c.modules.insert(
            "certsvc".into(),
            opts("services = [{ jid = 'services@developer.openspime.com/cert', form = 'legacy' }]"),
        );
        c.modules.insert(
            "scopenode".into(),
            opts(&format!(
                "domain = 'developer.openspime.com'\ncert_service = 'services@developer.openspime.com/cert'\n\
                 seek_nodes = []\n[[nodes]]\nname = 'dev-scopenode-2'\nkey_file = '{key_file}'\n\
                 [[nodes.scopes]]\nname = 'scope'\nfields = [{{ name = 'date', type = 'date-time' }}, \
                 {{ name = 'exposure', type = 'text' }}, {{ name = 'lat', type = 'number' }}, \
                 {{ name = 'lon', type = 'number' }}, {{ name = 'ele', type = 'number', unit = 'm' }}, \
                 {{ name = 'ppm', type = 'number' }}]"
            )),
        );
    })
    .await;
    server
        .add_account("dev-spime-2", "developer.openspime.com", "pw")
        .await;
    // The operator registers the spime's key (as `openspimed keys add` does).
    let sender =
        crypto::public_key_from_pem(v["keys"]["sender"]["public_pem_spki"].as_str().unwrap())
            .unwrap();
    openspimed_mod_certsvc::store_key(
        &openspimed_mod_certsvc::Keys::new(server.storage()),
        "services@developer.openspime.com/cert",
        "dev-spime-2@developer.openspime.com/spime",
        &sender,
    )
    .await
    .unwrap();
    let (mut raw, _) = openspimed_tests::Raw::login_on(
        &server,
        "developer.openspime.com",
        "dev-spime-2",
        "pw",
        "spime",
    )
    .await;
    for name in [
        "datareporting_iq_encrypted_signed__pyopenspime_style",
        "datareporting_iq_signed_only__pyopenspime_style",
    ] {
        raw.send(v["stanzas"][name].as_str().unwrap()).await;
        let answer = raw.stanza("iq").await;
        assert_eq!(answer.attr("type"), Some("result"), "{name}: {answer}");
        assert_eq!(
            answer.attr("from"),
            Some("dev-scopenode-2@developer.openspime.com/scope")
        );
    }
    // The original's encrypted+signed <message/> report: not answered, but stored.
    let message = v["generated_by_original_pyopenspime"]["datareporting_message_encrypted_signed"]
        .as_str()
        .unwrap();
    raw.send(message).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let stored = loop {
        let stored = openspimed_mod_scopenode::store::SensorData::new(server.storage())
            .entries_for_spime(
                "dev-scopenode-2@developer.openspime.com",
                "dev-spime-2@developer.openspime.com/spime",
                10,
            )
            .await
            .unwrap();
        if stored.len() == 3 || tokio::time::Instant::now() > deadline {
            break stored;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(stored.len(), 3, "two iq reports and one message report");
    assert!(stored[0].xml.contains("176.4"));
    // The node answers requests for its own key in the legacy form (pyopenspime asks it).
    raw.send(
        v["stanzas"]["pubkey_request_for_recipient"]
            .as_str()
            .unwrap(),
    )
    .await;
    let answer = raw.stanza("iq").await;
    let (jid, key) = keyinfo::parse_pubkeys(answer.first_child().unwrap()).unwrap();
    assert_eq!(jid, "dev-scopenode-2@developer.openspime.com/scope");
    assert_eq!(key, vector_key("recipient").to_public_key());
    assert!(
        !answer.to_string().contains("<KeyValue"),
        "legacy form: {answer}"
    );
    server.stop().await;
}

#[tokio::test]
async fn seeks_are_propagated_once_to_other_pubsub_nodes() {
    let mut server =
        TestServer::start_hosts(&["spime.example", "mydomain.example", "example"], |c| {
            for h in ["localhost", "spime.example", "mydomain.example"] {
                if let Some(host) = c.hosts.get_mut(h) {
                    host.modules = vec!["disco".into(), "ping".into(), "version".into()];
                }
            }
            let opts = |s: &str| toml::from_str::<toml::Table>(s).unwrap();
            c.modules.insert(
                "pubsub".into(),
                opts(
                    "[[nodes]]\nname = 'spimeseek'\npublish_model = 'open'\n\
                 publish_domains = ['spime.example']\nsubscribe_domains = ['scopenode.example']\n\
                 [[nodes]]\nname = 'relay'\npublish_model = 'open'\n\
                 publish_domains = ['scopenode.example']\naccess_model = 'open'",
                ),
            );
            c.modules.insert(
                "scopenode".into(),
                opts("propagate_to = [{ service = 'pubsub.example', node = 'relay' }]"),
            );
        })
        .await;
    server
        .add_account("4a6b-5638-0312111d", "spime.example", "pw")
        .await;
    server.add_account("owner", "mydomain.example", "pw").await;
    let (mut spime, _) = online(&server, SPIME, "pw", false).await;
    let (mut watcher, _) = online(&server, OWNER, "pw", false).await;
    let spime_key = vector_key("sender");
    publish_key(&mut spime, SPIME, &spime_key).await;
    let sub = Element::parse(&format!(
        "<pubsub xmlns='http://jabber.org/protocol/pubsub'><subscribe node='relay' jid='{OWNER}'/></pubsub>"
    ))
    .unwrap();
    iq(&mut watcher, PUBSUB, false, &sub).await.unwrap();

    let p = seek(
        "prop1",
        SPIME,
        &future_date(),
        false,
        (&spime_key, CERT, SPIME),
        None,
    );
    iq(&mut spime, PUBSUB, false, &p).await.unwrap();
    // The watcher sees the request re-published on the relay node, signature intact.
    let (_, c) = next_container(&mut watcher).await;
    let (payload, ctx) = c.open(None).unwrap();
    let SpimeSeek::Request(req) = SpimeSeek::parse(&payload).unwrap() else {
        panic!("request expected")
    };
    assert_eq!(req.id, "prop1");
    crypto::verify(
        &payload,
        &ctx,
        c.signature().unwrap(),
        &spime_key.to_public_key(),
    )
    .unwrap();
    // No entries were reported: no answer, counted.
    wait_counter(&mut spime, "seeks_ignored_no-entries", 1).await;
    // Publishing the same request again is not propagated again (de-duplication).
    iq(&mut spime, PUBSUB, false, &p).await.unwrap();
    wait_counter(&mut spime, "seeks_ignored_duplicate", 1).await;
    let p2 = seek(
        "prop2",
        SPIME,
        &future_date(),
        false,
        (&spime_key, CERT, SPIME),
        None,
    );
    iq(&mut spime, PUBSUB, false, &p2).await.unwrap();
    let (_, c) = next_container(&mut watcher).await;
    let SpimeSeek::Request(req) = SpimeSeek::parse(&c.open(None).unwrap().0).unwrap() else {
        panic!()
    };
    assert_eq!(req.id, "prop2", "prop1 was propagated once only");
    server.stop().await;
}
