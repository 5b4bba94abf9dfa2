//! The transport decryptor on arbitrary transport text and key wrap: never panics, and
//! every failure is the one uniform error.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use openspime::{OpenSpimeError, RsaPrivateKey};

fn key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let v = include_str!("../../../modules/openspime/tests/data/openspime-0.9.json");
        let start = v.find("-----BEGIN RSA PRIVATE KEY-----").expect("a key in the vectors");
        let end = v[start..].find("-----END RSA PRIVATE KEY-----").expect("key end") + start + 29;
        let pem = v[start..end].replace("\\n", "\n");
        openspime::crypto::private_key_from_pem(&pem).expect("vector key")
    })
}

fuzz_target!(|data: &[u8]| {
    let (a, b) = data.split_at(data.len() / 2);
    let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
    let (a, b) = (a.as_ref(), b.as_ref());
    match openspime::crypto::decrypt(a, b, key()) {
        Ok(_) | Err(OpenSpimeError::Decryption) => {}
        Err(other) => panic!("non-uniform decryption error: {other:?}"),
    }
    let _ = openspime::crypto::open_claim_key(a, &key().to_public_key());
});
