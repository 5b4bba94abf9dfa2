//! Round-trip properties over many random payloads (seeded, so failures reproduce):
//! sign→verify and encrypt→decrypt hold; any single-bit change to a signature, a
//! ciphertext or a key wrap is rejected, and every decryption failure is the same error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use openspime::c14n::canonicalize;
use openspime::crypto;
use openspime::{OpenSpimeError, RsaPrivateKey};
use openspimed_stanza::Element;
use rand10::rngs::StdRng;
use rand10::{Rng, RngExt, SeedableRng};

fn keys() -> Vec<RsaPrivateKey> {
    let v: serde_json::Value =
        serde_json::from_str(include_str!("data/openspime-0.9.json")).unwrap();
    ["sender", "recipient_1024"]
        .iter()
        .map(|w| {
            crypto::private_key_from_pem(v["keys"][w]["private_pem_pkcs1"].as_str().unwrap())
                .unwrap()
        })
        .collect()
}

const NAMES: &[&str] = &["data", "entry", "ppm", "lat", "x", "spimeseek"];
const CHARS: &[char] = &[
    'a', 'Z', '0', ' ', '<', '>', '&', '"', '\'', '\n', 'é', '☺', '\t',
];

fn random_text(rng: &mut StdRng, max: usize) -> String {
    let len = rng.random_range(0..=max);
    (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())])
        .collect()
}

fn random_payload(rng: &mut StdRng, depth: usize) -> Element {
    let ns = if rng.random_bool(0.5) {
        "openspime:protocol:extension:data"
    } else {
        ""
    };
    let mut el = Element::new(NAMES[rng.random_range(0..NAMES.len())], ns);
    for i in 0..rng.random_range(0..3) {
        el.set_attr(&format!("a{i}"), random_text(rng, 8));
    }
    for _ in 0..rng.random_range(0..4) {
        if depth < 3 && rng.random_bool(0.5) {
            let mut child = random_payload(rng, depth + 1);
            if rng.random_bool(0.5) {
                // Children usually inherit the parent's namespace.
                let mut same = Element::new(child.name(), el.ns_handle().clone());
                for n in child.take_nodes() {
                    match n {
                        openspimed_stanza::Node::Element(e) => same.push_child(e),
                        openspimed_stanza::Node::Text(t) => same.push_text(t),
                    }
                }
                child = same;
            }
            el.push_child(child);
        } else {
            el.push_text(random_text(rng, 40));
        }
    }
    el
}

fn flip_bit(bytes: &mut [u8], rng: &mut StdRng) {
    let i = rng.random_range(0..bytes.len());
    bytes[i] ^= 1 << rng.random_range(0..8);
}

#[test]
fn sign_then_verify_and_any_bit_flip_is_refused() {
    let keys = keys();
    let mut rng = StdRng::seed_from_u64(0x051e_0009);
    for round in 0..40 {
        let key = &keys[round % keys.len()];
        let pk = key.to_public_key();
        let payload = random_payload(&mut rng, 0);
        let sig = crypto::sign(&payload, "", key).unwrap();
        crypto::verify(&payload, "", &sig, &pk).unwrap();
        // The canonical form survives serialization and parsing.
        let reparsed = Element::parse(&payload.to_string()).unwrap();
        crypto::verify(&reparsed, "", &sig, &pk).unwrap();
        let mut raw = B64.decode(&sig).unwrap();
        flip_bit(&mut raw, &mut rng);
        assert_eq!(
            crypto::verify(&payload, "", &B64.encode(&raw), &pk),
            Err(OpenSpimeError::BadSignature)
        );
    }
}

#[test]
fn encrypt_then_decrypt_and_every_failure_is_the_same_error() {
    let keys = keys();
    let mut rng = StdRng::seed_from_u64(0xdec_0de);
    for round in 0..40 {
        let key = &keys[round % keys.len()];
        let payload = random_payload(&mut rng, 0);
        let plain = payload.to_bytes();
        let enc = crypto::encrypt(&plain, &key.to_public_key()).unwrap();
        let back = crypto::decrypt(&enc.text, &enc.key, key).unwrap();
        assert_eq!(canonicalize(&back, ""), canonicalize(&payload, ""));

        let mut ct = B64.decode(&enc.text).unwrap();
        flip_bit(&mut ct, &mut rng);
        assert_eq!(
            crypto::decrypt(&B64.encode(&ct), &enc.key, key),
            Err(OpenSpimeError::Decryption),
            "round {round}: ciphertext bit flip"
        );
        let mut wrap = B64.decode(&enc.key).unwrap();
        flip_bit(&mut wrap, &mut rng);
        assert_eq!(
            crypto::decrypt(&enc.text, &B64.encode(&wrap), key),
            Err(OpenSpimeError::Decryption),
            "round {round}: key wrap bit flip"
        );
    }
    // Structural garbage fails the same way.
    let key = &keys[0];
    let enc = crypto::encrypt(b"<x/>", &key.to_public_key()).unwrap();
    let other = crypto::encrypt(b"<x/>", &keys[1].to_public_key()).unwrap();
    for (text, wrap) in [
        ("", enc.key.as_str()),
        ("!!!", enc.key.as_str()),
        (enc.text.as_str(), ""),
        (enc.text.as_str(), "AAAA"),
        (enc.text.as_str(), &enc.key[..enc.key.len() / 2]),
        (enc.text.as_str(), other.key.as_str()),
    ] {
        assert_eq!(
            crypto::decrypt(text, wrap, key),
            Err(OpenSpimeError::Decryption)
        );
    }
    // A valid wrap around a transport that is not XML.
    let not_xml = crypto::encrypt(b"not < xml", &key.to_public_key()).unwrap();
    assert_eq!(
        crypto::decrypt(&not_xml.text, &not_xml.key, key),
        Err(OpenSpimeError::Decryption)
    );
}

#[test]
fn claim_keys_round_trip_for_random_claimers() {
    let keys = keys();
    let mut rng = StdRng::seed_from_u64(7);
    for round in 0..20 {
        let key = &keys[round % keys.len()];
        let osid = format!(
            "owner{}@example.org/{}",
            rng.next_u32(),
            random_text(&mut rng, 30)
        );
        let exp = openspime::date::format(1_900_000_000 + i64::from(rng.next_u32()), 60);
        let blob = crypto::issue_claim_key(&osid, &exp, key).unwrap();
        let ck = crypto::open_claim_key(&blob, &key.to_public_key()).unwrap();
        assert_eq!(ck.osid, osid.trim());
        assert_eq!(ck.expdate, exp);
        let mut raw = B64.decode(&blob).unwrap();
        flip_bit(&mut raw, &mut rng);
        assert!(crypto::open_claim_key(&B64.encode(&raw), &key.to_public_key()).is_err());
    }
}
