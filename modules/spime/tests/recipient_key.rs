//! `--encrypt` finds the ScopeNode's key where the 2008 ScopeNodes keep it (wire profile
//! §4): at the certification service under the scope's full JID, then its bare JID, then
//! from the ScopeNode itself; and an encrypted report to the key found goes through. A
//! real server on the embedded default's OpenSpime network, the `spime` library over
//! STARTTLS, the keys changed in the server's own store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use openspime::Entry;
use openspime::rsa_reexport::EncodePublicKey;
use openspimed_tests::TestServer;
use spime::{ConnectOptions, KeySource, Spime};

const CERT: &str = "cert.localhost";
const NODE: &str = "demo@scopenode.localhost";
const SCOPE: &str = "demo@scopenode.localhost/co2";

async fn device(server: &TestServer) -> Spime {
    server.add_user("sensor1", "pw").await;
    let ca = server.dir.path().join("client-ca.pem");
    std::fs::write(&ca, &server.ca_pem).unwrap();
    let opts = ConnectOptions {
        server: server.c2s.to_string(),
        ca: Some(ca),
        timeout: Duration::from_secs(15),
    };
    Spime::connect(&opts, "sensor1", "localhost", "pw", "spime")
        .await
        .unwrap()
}

fn reading(ppm: &str) -> Vec<Entry> {
    let mut e = Entry::default();
    for (name, value) in [("date", "2026-11-21T10:00:00Z"), ("ppm", ppm)] {
        e.fields.push(openspime::Field {
            name: name.into(),
            value: value.into(),
            attrs: vec![],
        });
    }
    vec![e]
}

#[tokio::test]
async fn the_key_is_found_under_the_full_jid_then_at_the_scopenode_itself() {
    let server = TestServer::start().await;
    let mut s = device(&server).await;
    let keys = openspimed_mod_certsvc::Keys::new(server.storage());

    // As published by the ScopeNode at start: the bare JID, found on the first lookup (the
    // service falls back from the full JID).
    let (node_key, source) = s.recipient_key(CERT, SCOPE).await.unwrap();
    assert_eq!(
        source,
        KeySource::Certified {
            service: CERT.into(),
            jid: SCOPE.into()
        }
    );

    // As a 2008 ScopeNode publishes it: under the scope's full JID only.
    assert!(keys.revoke_key(CERT, NODE).await.unwrap());
    let der = node_key.to_public_key_der().unwrap();
    keys.put_key(CERT, SCOPE, der.as_bytes()).await.unwrap();
    let (key, source) = s.recipient_key(CERT, SCOPE).await.unwrap();
    assert_eq!(key, node_key);
    assert!(matches!(source, KeySource::Certified { jid, .. } if jid == SCOPE));
    s.report(SCOPE, reading("401.0"), None, Some(&key))
        .await
        .unwrap();

    // Not at the certification service at all: the ScopeNode answers for itself.
    assert!(keys.revoke_key(CERT, SCOPE).await.unwrap());
    let (key, source) = s.recipient_key(CERT, SCOPE).await.unwrap();
    assert_eq!(key, node_key);
    assert_eq!(source, KeySource::Itself(SCOPE.into()));
    s.report(SCOPE, reading("402.0"), None, Some(&key))
        .await
        .unwrap();

    // Nobody has one: the error says what was tried.
    let e = s
        .recipient_key(CERT, "nobody@scopenode.localhost/co2")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("no key to encrypt to nobody@scopenode.localhost/co2: cert.localhost answered: item-not-found"),
        "{e}"
    );
    assert!(e.contains("nobody@scopenode.localhost/co2 answered"), "{e}");

    // Both encrypted reports were stored.
    let stored = openspimed_mod_scopenode::store::SensorData::new(server.storage())
        .entries_for_spime(NODE, "sensor1@localhost/spime", 10)
        .await
        .unwrap();
    assert_eq!(stored.len(), 2, "{stored:?}");
}
