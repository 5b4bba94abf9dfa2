//! OpenSpime crypto against the raw RSA-2048 operations it cannot avoid:
//! `cargo bench -p openspime --bench crypto`.
//!
//! Targets (issue 5): signature verification ≥ 90% of the raw public-operation rate;
//! transport decryption ≥ 90% of the raw private-operation rate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use openspime::crypto;
use openspimed_stanza::Element;
use rsa::BoxedUint;
use rsa::traits::PublicKeyParts;

/// Rates (per second) of `raw` and `ours`, measured in alternating batches so that the
/// machine's noise (a shared VM here) affects both alike.
fn paired(secs: f64, mut raw: impl FnMut(), mut ours: impl FnMut()) -> (f64, f64) {
    for _ in 0..3 {
        raw();
        ours();
    }
    let (mut t_raw, mut t_ours) = (Duration::ZERO, Duration::ZERO);
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs_f64(secs) {
        let t = Instant::now();
        for _ in 0..10 {
            raw();
        }
        t_raw += t.elapsed();
        let t = Instant::now();
        for _ in 0..10 {
            ours();
        }
        t_ours += t.elapsed();
        n += 10;
    }
    (
        n as f64 / t_raw.as_secs_f64(),
        n as f64 / t_ours.as_secs_f64(),
    )
}

fn main() {
    let v: serde_json::Value =
        serde_json::from_str(include_str!("../tests/data/openspime-0.9.json")).unwrap();
    let sk = crypto::private_key_from_pem(
        v["keys"]["recipient"]["private_pem_pkcs1"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let pk = sk.to_public_key();
    let payload = Element::parse(v["signatures"][1]["transport_child"].as_str().unwrap()).unwrap();
    let sig = crypto::sign(&payload, "", &sk).unwrap();
    let enc = crypto::encrypt(&payload.to_bytes(), &pk).unwrap();
    let bits = pk.n().as_ref().bits_precision();
    let c = BoxedUint::from_be_slice(&crypto::b64_decode(&sig).unwrap(), bits).unwrap();

    let (raw_public, verify) = paired(
        4.0,
        || {
            std::hint::black_box(rsa::hazmat::rsa_encrypt(&pk, &c).unwrap());
        },
        || crypto::verify(&payload, "", &sig, &pk).unwrap(),
    );
    let (raw_private, decrypt) = paired(
        8.0,
        || {
            std::hint::black_box(
                rsa::hazmat::rsa_decrypt_and_check(&sk, None::<&mut rand10::rngs::ThreadRng>, &c)
                    .unwrap(),
            );
        },
        || {
            crypto::decrypt(&enc.text, &enc.key, &sk).unwrap();
        },
    );
    println!("RSA-2048, one core:");
    println!("  raw public operation   {raw_public:>9.0}/s");
    println!(
        "  signature verification {verify:>9.0}/s  ({:.0}% of raw public)",
        100.0 * verify / raw_public
    );
    println!("  raw private operation  {raw_private:>9.0}/s");
    println!(
        "  transport decryption   {decrypt:>9.0}/s  ({:.0}% of raw private)",
        100.0 * decrypt / raw_private
    );
}
