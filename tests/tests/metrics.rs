//! `/metrics` after a scripted session moves by exactly what happened, and the output is
//! valid Prometheus text format (histograms with buckets, no summaries, no JID labels).
//! Its own test binary: the recorder is process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use openspime::{Container, Data, Entry, Field, SeekRequest, SpimeSeek};
use openspimed_tests::{Raw, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Series = BTreeMap<String, f64>;

/// `name{a="1",b="2"}` with labels sorted, so lookups do not depend on render order.
fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    l.sort();
    if l.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{}}}", l.join(","))
    }
}

/// Parses (and validates) the text exposition format.
fn parse(text: &str) -> Series {
    let mut out = Series::new();
    let mut types = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(matches!(kind, "counter" | "gauge" | "histogram"), "{line}");
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').unwrap_or_else(|| panic!("{line}"))),
            None => (series, ""),
        };
        assert!(name.starts_with("openspimed_"), "{line}");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name: {line}"
        );
        let mut pairs: Vec<(String, String)> = Vec::new();
        if !labels.is_empty() {
            for kv in labels.split("\",") {
                let (k, v) = kv.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                let v = v.trim_end_matches('"');
                assert!(!v.contains('@'), "a JID as a label value: {line}");
                pairs.push((k.to_owned(), v.to_owned()));
            }
        }
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| types.get(*b).map(String::as_str) == Some("histogram"))
            .unwrap_or(name);
        assert!(
            types.contains_key(base),
            "series without a TYPE line: {line}"
        );
        let refs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        out.insert(key(name, &refs), value);
    }
    out
}

async fn scrape(server: &TestServer) -> String {
    let addr = server.server.as_ref().unwrap().metrics_addr.unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    let (head, body) = body.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

fn get(m: &Series, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.get(&key(name, labels)).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn counters_move_by_exactly_what_happened() {
    let mut server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let before = parse(&scrape(&server).await);

    let (mut alice, alice_jid) = Raw::login(&server, "alice", "pw", "a").await;
    let (mut bob, bob_jid) = Raw::login(&server, "bob", "pw", "b").await;
    // A failed login.
    let mut c = Raw::connect(server.c2s).await;
    c.open("localhost").await;
    let mut c = c.starttls(server.tls_config(None)).await;
    c.open("localhost").await;
    let f = c.auth_plain("alice", "wrong").await;
    assert_eq!(f.name(), "failure");
    drop(c);
    // Three messages.
    for i in 0..3 {
        alice
            .send(&format!(
                "<message to='{bob_jid}' type='chat' id='m{i}'><body>{i}</body></message>"
            ))
            .await;
        bob.stanza("message").await;
    }
    // A report.
    let entry = Entry {
        fields: vec![
            Field {
                name: "date".into(),
                value: "2026-11-21T10:00:00Z".into(),
                attrs: vec![],
            },
            Field {
                name: "ppm".into(),
                value: "400".into(),
                attrs: vec![],
            },
        ],
    };
    let report = Container::seal(
        Data {
            entries: vec![entry],
        }
        .to_element(),
        None,
        None,
        None,
    )
    .unwrap();
    alice
        .send(&format!(
            "<iq type='set' id='r1' to='demo@scopenode.localhost/co2'>{}</iq>",
            report.to_element()
        ))
        .await;
    assert_eq!(alice.stanza("iq").await.attr("type"), Some("result"));
    // A seek, signed with a key published at cert.localhost.
    let key = openspime::crypto::generate_key(1024).unwrap();
    let publish = openspime::keyinfo::pubkeys(
        &alice_jid,
        &key.to_public_key(),
        openspime::KeyForm::Standard,
    );
    alice
        .send(&format!(
            "<iq type='set' id='k1' to='cert.localhost'>{publish}</iq>"
        ))
        .await;
    assert_eq!(alice.stanza("iq").await.attr("type"), Some("result"));
    let req = SpimeSeek::Request(SeekRequest {
        id: "s1".into(),
        spimeid: alice_jid.clone(),
        expdate: openspime::date::format(openspime::date::now() + 600, 0),
        encrequired: false,
    });
    let sealed = Container::seal(
        req.to_element(),
        Some((&key, "cert.localhost", Some(&alice_jid))),
        None,
        None,
    )
    .unwrap();
    alice
        .send(&format!(
            "<iq type='set' id='s1' to='pubsub.localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
             <publish node='spimeseek'><item id='s1'>{}</item></publish></pubsub></iq>",
            sealed.to_element()
        ))
        .await;
    let answer = alice.stanza("message").await;
    assert!(answer.to_string().contains("spimeseek"), "{answer}");

    let after = parse(&scrape(&server).await);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        get(&after, name, labels) - get(&before, name, labels)
    };
    assert_eq!(
        delta(
            "openspimed_sasl_authentications_total",
            &[("mechanism", "PLAIN"), ("result", "success")]
        ),
        2.0
    );
    assert_eq!(
        delta(
            "openspimed_sasl_authentications_total",
            &[("mechanism", "PLAIN"), ("result", "failure")]
        ),
        1.0
    );
    assert_eq!(
        delta("openspimed_tls_handshakes_total", &[("result", "ok")]),
        3.0
    );
    assert_eq!(
        delta(
            "openspimed_connections_accepted_total",
            &[("listener", "c2s")]
        ),
        3.0
    );
    assert_eq!(
        delta(
            "openspimed_stanzas_received_total",
            &[("kind", "message"), ("type", "chat")]
        ),
        3.0
    );
    assert_eq!(
        get(
            &after,
            "openspimed_sessions",
            &[("host", "localhost"), ("kind", "c2s")]
        ),
        2.0
    );
    assert_eq!(
        delta(
            "openspimed_scopenode_reports_total",
            &[("reason", ""), ("result", "accepted")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "openspimed_scopenode_seeks_total",
            &[("reason", ""), ("result", "answered")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "openspimed_openspime_signature_verifications_total",
            &[("result", "valid")]
        ),
        1.0
    );
    assert_eq!(delta("openspimed_pubsub_publishes_total", &[]), 1.0);
    assert_eq!(
        delta(
            "openspimed_certsvc_publications_total",
            &[("result", "stored")]
        ),
        1.0
    );
    assert!(delta("openspimed_certsvc_lookups_total", &[("result", "found")]) >= 1.0);
    assert!(delta("openspimed_routing_duration_seconds_count", &[]) >= 7.0);
    assert!(
        get(
            &after,
            "openspimed_routing_duration_seconds_bucket",
            &[("le", "+Inf")]
        ) >= 7.0
    );
    assert!(delta("openspimed_received_bytes_total", &[]) > 0.0);
    assert!(delta("openspimed_sent_bytes_total", &[]) > 0.0);
    let expiry = get(
        &after,
        "openspimed_certificate_expiry_timestamp_seconds",
        &[("host", "localhost")],
    );
    assert!(
        expiry > openspime::date::now() as f64 + 86_400.0,
        "{expiry}"
    );
    server.stop().await;
}

/// Metric names mentioned in a text (`openspimed_…`), histogram suffixes removed.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("openspimed_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(name.to_owned());
        i = end;
    }
    out
}

#[test]
fn dashboard_and_alerts_use_only_metrics_the_code_defines() {
    let defined: std::collections::BTreeSet<String> = [
        include_str!("../../server/src/telemetry.rs"),
        include_str!("../../modules/pubsub/src/lib.rs"),
        include_str!("../../modules/certsvc/src/lib.rs"),
        include_str!("../../modules/scopenode/src/lib.rs"),
    ]
    .iter()
    .flat_map(|src| metric_names(src))
    .collect();
    for (file, text) in [
        (
            "deploy/grafana/openspimed.json",
            include_str!("../../deploy/grafana/openspimed.json"),
        ),
        (
            "deploy/prometheus/alerts.yml",
            include_str!("../../deploy/prometheus/alerts.yml"),
        ),
    ] {
        let used = metric_names(text);
        assert!(!used.is_empty(), "{file} uses no metric");
        for name in used {
            assert!(
                defined.contains(&name),
                "{file} uses {name}, which the code does not define"
            );
        }
    }
}
