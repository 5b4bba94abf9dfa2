//! Server Dialback keys (XEP-0220 §2.1.1, generated as XEP-0185 recommends). Sans-IO.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The namespace of `<db:result/>` and `<db:verify/>` (XEP-0220).
pub const NS: &str = "jabber:server:dialback";
/// The stream feature that says dialback is offered, with error support (XEP-0220 §2.4).
pub const FEATURE_NS: &str = "urn:xmpp:features:dialback";

/// The secret keys are derived from: held as hex(SHA-256(secret)), the HMAC key XEP-0185
/// prescribes, so the configured text itself is not kept.
#[derive(Clone)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// From the configured secret, or a random one for this process.
    pub fn new(configured: Option<&str>) -> Secret {
        let random;
        let text = match configured {
            Some(t) => t,
            None => {
                let mut b = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
                random = hex(&b);
                &random
            }
        };
        Secret(hex(&Sha256::digest(text.as_bytes())))
    }

    /// The key the originating server sends in `<db:result/>` and the authoritative server
    /// checks in `<db:verify/>`: HMAC-SHA256(hex(SHA256(secret)), "receiving originating id"),
    /// in lower-case hex.
    pub fn key(&self, receiving: &str, originating: &str, stream_id: &str) -> String {
        // HMAC accepts keys of any length.
        let mut mac = match Hmac::<Sha256>::new_from_slice(self.0.as_bytes()) {
            Ok(m) => m,
            Err(_) => return String::new(),
        };
        mac.update(receiving.as_bytes());
        mac.update(b" ");
        mac.update(originating.as_bytes());
        mac.update(b" ");
        mac.update(stream_id.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// Whether `key` is the one this server would have generated (constant-time compare).
    pub fn verify(&self, receiving: &str, originating: &str, stream_id: &str, key: &str) -> bool {
        let want = self.key(receiving, originating, stream_id);
        let got = key.trim().as_bytes();
        want.len() == got.len()
            && want
                .as_bytes()
                .iter()
                .zip(got)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xep_0185_example_key() {
        // XEP-0185 §3: receiving server xmpp.example.com, originating example.org.
        let s = Secret::new(Some("s3cr3tf0rd14lb4ck"));
        let key = s.key("xmpp.example.com", "example.org", "D60000229F");
        assert_eq!(
            key,
            "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643"
        );
        assert!(s.verify("xmpp.example.com", "example.org", "D60000229F", &key));
        assert!(!s.verify("example.org", "xmpp.example.com", "D60000229F", &key));
        assert!(!s.verify("xmpp.example.com", "example.org", "D60000229G", &key));
        assert!(!s.verify("xmpp.example.com", "example.org", "D60000229F", ""));
    }

    #[test]
    fn random_secrets_differ() {
        let a = Secret::new(None).key("r", "o", "id");
        let b = Secret::new(None).key("r", "o", "id");
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
    }
}
