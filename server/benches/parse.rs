//! Stream parsing throughput on one core: `cargo bench -p openspimed --bench parse`.
//!
//! Feeds a client stream of typical stanzas (chat messages, iq pings, presence, an
//! OpenSpime data report) through [`StreamParser`] in 4 KiB reads, as a session does, and
//! prints MiB/s and stanzas/s. Target (issue 2): at least 60 MiB/s.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use openspimed::xml::{Limits, StreamEvent, StreamParser};

const STANZAS: &[&str] = &[
    "<message to='bob@example.org/phone' id='m1' type='chat'><body>Hello Bob, are you coming \
     to the meeting at three? Bring the sensor logs &amp; the charts.</body>\
     <active xmlns='http://jabber.org/protocol/chatstates'/></message>",
    "<iq type='get' id='p1' to='example.org'><ping xmlns='urn:xmpp:ping'/></iq>",
    "<presence><show>away</show><status>Out for lunch</status><priority>5</priority>\
     <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://gajim.org' \
     ver='QgayPKawpkPSDYmwT/WM94uAlu0='/></presence>",
    "<iq from='4A6B-5638-0312111D@spime.openspime.com/spime' \
     to='775B-F2C2-2B3765F4@scopenode.openspime.com/co2' type='set' id='200804021658230'>\
     <openspime xmlns='openspime:protocol:core' version='0.9'><transport>\
     <data xmlns='openspime:protocol:extension:data' version='0.9'><entry>\
     <date>2008-04-02T17:54:22+01:00</date><exposure>outdoor</exposure>\
     <lat>45.475841199050905</lat><lon>9.172725677490234</lon><ele unit='m'>120.0</ele>\
     <ppm>176.4</ppm></entry></data></transport></openspime></iq>",
];

fn main() {
    run(
        "tag-dense mix (chat, ping, presence with caps, OpenSpime data report)",
        STANZAS,
    );
    let body = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(16);
    let b64 = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODkwYWJjZGVmZ2hpamtsbW5vcA==".repeat(12);
    let chat =
        format!("<message to='bob@example.org' id='m2' type='chat'><body>{body}</body></message>");
    let enc = format!(
        "<iq to='775B-F2C2-2B3765F4@scopenode.openspime.com/co2' type='set' id='r2'>\
         <openspime xmlns='openspime:protocol:core' version='0.9'><originator cert='cert.example'>\
         <sign>{}</sign></originator><transport content-type='x-openspime/aes-base64' \
         transport-key='{}'>{b64}</transport></openspime></iq>",
        &b64[..172],
        &b64[..344]
    );
    run(
        "text-heavy mix (1 KiB chat bodies, encrypted OpenSpime reports)",
        &[chat.as_str(), enc.as_str()],
    );
}

fn run(label: &str, stanzas: &[&str]) {
    let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>";
    let mut body = String::new();
    let mut count = 0usize;
    while body.len() < 64 * 1024 * 1024 {
        for s in stanzas {
            body.push_str(s);
            count += 1;
        }
    }
    let input = format!("{header}{body}");
    let mut best = f64::MAX;
    let mut parsed = 0;
    for _ in 0..5 {
        let mut parser = StreamParser::new(Limits::default());
        let start = Instant::now();
        parsed = 0usize;
        for chunk in input.as_bytes().chunks(4096) {
            let mut buf = chunk;
            while let Some(ev) = parser.next(&mut buf).expect("valid stream") {
                if let StreamEvent::Element(e) = ev {
                    std::hint::black_box(&e);
                    parsed += 1;
                }
            }
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    assert_eq!(parsed, count);
    let mib = input.len() as f64 / (1024.0 * 1024.0);
    println!("{label}: {mib:.1} MiB, {count} stanzas");
    println!(
        "best of 5: {:.1} MiB/s, {:.0} stanzas/s (one core)",
        mib / best,
        count as f64 / best
    );
    println!(
        "rxml raw events (no namespaces): {:.1} MiB/s",
        mib / time_rxml::<rxml::RawParser>(input.as_bytes())
    );
    println!(
        "rxml events alone (no tree): {:.1} MiB/s",
        mib / time_rxml::<rxml::Parser>(input.as_bytes())
    );
}

/// Best of three runs of rxml alone over `input` (the floor under openspimed's parser).
fn time_rxml<P: rxml::Parse + Default>(input: &[u8]) -> f64
where
    P::Output: std::fmt::Debug,
{
    let mut best = f64::MAX;
    for _ in 0..3 {
        let mut p = P::default();
        let start = Instant::now();
        for chunk in input.chunks(4096) {
            let mut buf = chunk;
            loop {
                match p.parse(&mut buf, false) {
                    Ok(Some(ev)) => {
                        std::hint::black_box(&ev);
                    }
                    Ok(None) | Err(rxml::error::EndOrError::NeedMoreData) => break,
                    Err(e) => panic!("{e:?}"),
                }
            }
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    best
}
