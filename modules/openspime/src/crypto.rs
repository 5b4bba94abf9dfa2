//! OpenSpime cryptography as the 2008 implementation put it on the wire (profile §§2, 3, 5):
//! SHA-1 + PKCS#1 v1.5 type-1 signatures without DigestInfo, AES-256-CBC transport
//! encryption with the key wrapped by PKCS#1 v1.5 type-2 in (k−11)-byte chunks, and claim
//! keys made with the raw type-1 private-key primitive. All private-key operations use the
//! constant-time `rsa` 0.10 line; decryption of the key wrap uses implicit rejection.

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use openspimed_stanza::Element;
use rand10::Rng;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey, EncodeRsaPrivateKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{BoxedUint, Pkcs1v15Encrypt, Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use sha1::{Digest, Sha1};

use crate::c14n::canonicalize;
use crate::error::OpenSpimeError;
use crate::ns;

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

/// Decodes base64 as the profile wants it read: standard alphabet, whitespace ignored.
pub fn b64_decode(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    B64.decode(compact).ok()
}

/// Generates an RSA key pair (2048 bits is what openspimed issues).
pub fn generate_key(bits: usize) -> Result<RsaPrivateKey, OpenSpimeError> {
    RsaPrivateKey::new(&mut rand10::rng(), bits).map_err(|e| OpenSpimeError::Key(e.to_string()))
}

/// Reads a private key from PEM, PKCS#1 (`RSA PRIVATE KEY`) or PKCS#8 (`PRIVATE KEY`).
pub fn private_key_from_pem(pem: &str) -> Result<RsaPrivateKey, OpenSpimeError> {
    RsaPrivateKey::from_pkcs1_pem(pem)
        .or_else(|_| RsaPrivateKey::from_pkcs8_pem(pem))
        .map_err(|e| OpenSpimeError::Key(format!("not an RSA private key in PEM: {e}")))
}

/// Reads a public key from PEM, SPKI (`PUBLIC KEY`) or PKCS#1 (`RSA PUBLIC KEY`).
pub fn public_key_from_pem(pem: &str) -> Result<RsaPublicKey, OpenSpimeError> {
    RsaPublicKey::from_public_key_pem(pem)
        .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem))
        .map_err(|e| OpenSpimeError::Key(format!("not an RSA public key in PEM: {e}")))
}

/// PKCS#1 PEM of a private key (what pyopenspime and OpenSSL write).
pub fn private_key_to_pem(key: &RsaPrivateKey) -> Result<String, OpenSpimeError> {
    key.to_pkcs1_pem(LineEnding::LF)
        .map(|z| z.to_string())
        .map_err(|e| OpenSpimeError::Key(e.to_string()))
}

/// PKCS#8 PEM of a private key.
pub fn private_key_to_pkcs8_pem(key: &RsaPrivateKey) -> Result<String, OpenSpimeError> {
    use rsa::pkcs8::EncodePrivateKey;
    key.to_pkcs8_pem(LineEnding::LF)
        .map(|z| z.to_string())
        .map_err(|e| OpenSpimeError::Key(e.to_string()))
}

/// SPKI PEM of a public key.
pub fn public_key_to_pem(key: &RsaPublicKey) -> Result<String, OpenSpimeError> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| OpenSpimeError::Key(e.to_string()))
}

/// SHA-1 of the canonical payload (profile §2 step 4).
pub fn payload_digest(payload: &Element, context_ns: &str) -> [u8; 20] {
    Sha1::digest(canonicalize(payload, context_ns)).into()
}

/// The `<sign/>` value for a payload (profile §2).
pub fn sign(
    payload: &Element,
    context_ns: &str,
    key: &RsaPrivateKey,
) -> Result<String, OpenSpimeError> {
    let digest = payload_digest(payload, context_ns);
    let sig = key
        .sign(Pkcs1v15Sign::new_unprefixed(), &digest)
        .map_err(|e| OpenSpimeError::Key(e.to_string()))?;
    Ok(B64.encode(sig))
}

/// Verifies a `<sign/>` value over a payload.
pub fn verify(
    payload: &Element,
    context_ns: &str,
    signature_b64: &str,
    key: &RsaPublicKey,
) -> Result<(), OpenSpimeError> {
    let sig = b64_decode(signature_b64).ok_or(OpenSpimeError::BadSignature)?;
    let digest = payload_digest(payload, context_ns);
    key.verify(Pkcs1v15Sign::new_unprefixed(), &digest, &sig)
        .map_err(|_| OpenSpimeError::BadSignature)
}

/// An encrypted `<transport/>`: its text and its `transport-key` attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptedTransport {
    /// Base64 of the AES-256-CBC ciphertext (the element's text).
    pub text: String,
    /// Base64 of the RSA-wrapped `<transportkey/>` (the `transport-key` attribute).
    pub key: String,
}

/// The `<transportkey/>` plaintext the key wrap carries.
pub fn transportkey_xml(key: &[u8], iv: &[u8]) -> String {
    format!(
        "<transportkey xmlns='{}' version='0.9'><key>{}</key><vint>{}</vint></transportkey>",
        ns::TRANSPORTKEY,
        B64.encode(key),
        B64.encode(iv)
    )
}

/// Encrypts payload bytes for a recipient with a fresh random AES key and IV.
pub fn encrypt(
    plaintext: &[u8],
    recipient: &RsaPublicKey,
) -> Result<EncryptedTransport, OpenSpimeError> {
    let mut rng = rand10::rng();
    let mut key = [0u8; 32];
    let mut iv = [0u8; 16];
    rng.fill_bytes(&mut key);
    rng.fill_bytes(&mut iv);
    encrypt_with(plaintext, recipient, &key, &iv)
}

/// Encrypts with a given AES key and IV (for test vectors; use [`encrypt`] otherwise).
pub fn encrypt_with(
    plaintext: &[u8],
    recipient: &RsaPublicKey,
    key: &[u8; 32],
    iv: &[u8; 16],
) -> Result<EncryptedTransport, OpenSpimeError> {
    let ct = Aes256CbcEnc::new(key.into(), iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext);
    let wrapped = wrap_key(transportkey_xml(key, iv).as_bytes(), recipient)?;
    Ok(EncryptedTransport {
        text: B64.encode(ct),
        key: B64.encode(wrapped),
    })
}

/// PKCS#1 v1.5 type-2 encryption of `plaintext` in (k−11)-byte chunks, blocks concatenated.
pub fn wrap_key(plaintext: &[u8], recipient: &RsaPublicKey) -> Result<Vec<u8>, OpenSpimeError> {
    let k = recipient.size();
    let mut rng = rand10::rng();
    let mut out = Vec::with_capacity(k * plaintext.len().div_ceil(k - 11));
    for chunk in plaintext.chunks(k - 11) {
        let block = recipient
            .encrypt(&mut rng, Pkcs1v15Encrypt, chunk)
            .map_err(|e| OpenSpimeError::Key(e.to_string()))?;
        out.extend_from_slice(&block);
    }
    Ok(out)
}

/// Decrypts an encrypted transport and parses its payload.
///
/// Every failure — base64, RSA padding (implicit rejection: a synthetic key is used and the
/// work continues), `<transportkey/>` parsing, AES padding, payload XML — returns the one
/// [`OpenSpimeError::Decryption`] after the same steps (profile §3).
pub fn decrypt(
    text_b64: &str,
    key_b64: &str,
    key: &RsaPrivateKey,
) -> Result<Element, OpenSpimeError> {
    let k = key.size();
    let mut ok = true;
    let mut wrapped = b64_decode(key_b64).unwrap_or_default();
    if wrapped.is_empty() || !wrapped.len().is_multiple_of(k) {
        ok = false;
        wrapped.resize(k * wrapped.len().div_ceil(k).max(1), 0);
    }
    let mut unwrapped = Vec::with_capacity(wrapped.len());
    for block in wrapped.chunks(k) {
        match key.decrypt(Pkcs1v15Encrypt, block) {
            // With implicit rejection a bad padding yields a synthetic message here.
            Ok(m) => unwrapped.extend_from_slice(&m),
            Err(_) => {
                ok = false;
                unwrapped.extend_from_slice(&Sha1::digest(block));
            }
        }
    }
    let (aes_key, iv) = match parse_transportkey(&unwrapped) {
        Some(kv) => kv,
        None => {
            ok = false;
            // Keep going with a key derived from the input so the AES step still runs.
            let seed = Sha1::digest(&unwrapped);
            let mut k32 = [0u8; 32];
            let mut iv16 = [0u8; 16];
            for (i, b) in k32.iter_mut().enumerate() {
                *b = seed[i % seed.len()];
            }
            iv16.copy_from_slice(&seed[..16]);
            (k32, iv16)
        }
    };
    let ct = b64_decode(text_b64).unwrap_or_else(|| {
        ok = false;
        vec![0u8; 16]
    });
    let pt = Aes256CbcDec::new((&aes_key).into(), (&iv).into())
        .decrypt_padded_vec_mut::<Pkcs7>(&ct)
        .unwrap_or_else(|_| {
            ok = false;
            Vec::new()
        });
    let parsed = std::str::from_utf8(&pt)
        .ok()
        .and_then(|s| Element::parse(s).ok());
    match (ok, parsed) {
        (true, Some(payload)) => Ok(payload),
        _ => Err(OpenSpimeError::Decryption),
    }
}

/// `key` (32 bytes) and `vint` (16 bytes) from a `<transportkey/>` document.
fn parse_transportkey(bytes: &[u8]) -> Option<([u8; 32], [u8; 16])> {
    let el = Element::parse(std::str::from_utf8(bytes).ok()?).ok()?;
    if el.name() != "transportkey" {
        return None;
    }
    let field = |name: &str| {
        el.children()
            .find(|c| c.name() == name)
            .and_then(|c| b64_decode(&c.text()))
    };
    let key: [u8; 32] = field("key")?.try_into().ok()?;
    let iv: [u8; 16] = field("vint")?.try_into().ok()?;
    Some((key, iv))
}

/// The raw type-1 primitive over `data` in (k−11)-byte chunks (profile §5).
fn private_type1(data: &[u8], key: &RsaPrivateKey) -> Result<Vec<u8>, OpenSpimeError> {
    let k = key.size();
    let mut out = Vec::with_capacity(k * data.len().div_ceil(k - 11));
    for chunk in data.chunks(k - 11) {
        let block = key
            .sign(Pkcs1v15Sign::new_unprefixed(), chunk)
            .map_err(|e| OpenSpimeError::Key(e.to_string()))?;
        out.extend_from_slice(&block);
    }
    Ok(out)
}

/// Inverse of [`private_type1`] with the public key: public operation, strip the type-1
/// padding, concatenate.
fn public_type1_open(blob: &[u8], key: &RsaPublicKey) -> Option<Vec<u8>> {
    let k = key.size();
    if blob.is_empty() || !blob.len().is_multiple_of(k) {
        return None;
    }
    let bits = key.n().as_ref().bits_precision();
    let mut out = Vec::new();
    for block in blob.chunks(k) {
        let c = BoxedUint::from_be_slice(block, bits).ok()?;
        if c >= *key.n().as_ref() {
            return None;
        }
        let m = rsa::hazmat::rsa_encrypt(key, &c).ok()?;
        let bytes = m.to_be_bytes();
        // Left-pad to k bytes (the big integer may be shorter).
        let mut em = vec![0u8; k.saturating_sub(bytes.len())];
        em.extend_from_slice(&bytes[bytes.len().saturating_sub(k)..]);
        if em.len() != k || em[0] != 0 || em[1] != 1 {
            return None;
        }
        let sep = em[2..].iter().position(|b| *b != 0xff)? + 2;
        if em[sep] != 0 || sep < 10 {
            return None;
        }
        out.extend_from_slice(&em[sep + 1..]);
    }
    Some(out)
}

/// A decoded claim key (profile §5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimKey {
    /// The authorized claimer: a full JID (that resource only) or a bare JID.
    pub osid: String,
    /// Expiry as written.
    pub expdate: String,
}

/// The `<claimkey/>` plaintext.
pub fn claimkey_xml(osid: &str, expdate: &str) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    format!(
        "<claimkey xmlns='{}' version='0.9'><osid>{}</osid><expdate>{}</expdate></claimkey>",
        ns::CLAIMKEY,
        esc(osid),
        esc(expdate)
    )
}

/// Issues a claim key authorizing `osid` until `expdate`, with the claimed entity's key.
pub fn issue_claim_key(
    osid: &str,
    expdate: &str,
    key: &RsaPrivateKey,
) -> Result<String, OpenSpimeError> {
    seal_claim_key_xml(&claimkey_xml(osid, expdate), key)
}

/// The claim key blob for a given `<claimkey/>` document (the primitive of profile §5).
pub fn seal_claim_key_xml(xml: &str, key: &RsaPrivateKey) -> Result<String, OpenSpimeError> {
    Ok(B64.encode(private_type1(xml.as_bytes(), key)?))
}

/// The type-1 block a signature decodes to under the public key (for diagnostics and
/// test vectors): `00 01 FF… 00 ‖ data`.
pub fn open_type1_block(sig: &[u8], key: &RsaPublicKey) -> Option<Vec<u8>> {
    public_type1_open(sig, key)
}

/// Opens a claim key with the claimed entity's public key.
pub fn open_claim_key(blob_b64: &str, claimed: &RsaPublicKey) -> Result<ClaimKey, OpenSpimeError> {
    let invalid = |why: &str| OpenSpimeError::InvalidClaimKey(why.to_owned());
    let blob = b64_decode(blob_b64).ok_or_else(|| invalid("not base64"))?;
    let plain = public_type1_open(&blob, claimed)
        .ok_or_else(|| invalid("not made with the claimed entity's key"))?;
    let text = std::str::from_utf8(&plain).map_err(|_| invalid("not UTF-8"))?;
    let el = Element::parse(text).map_err(|_| invalid("not XML"))?;
    if el.name() != "claimkey" {
        return Err(invalid("not a <claimkey/>"));
    }
    let field = |name: &str| {
        el.children()
            .find(|c| c.name() == name)
            .map(|c| c.text().trim().to_owned())
    };
    Ok(ClaimKey {
        osid: field("osid").ok_or_else(|| invalid("no <osid/>"))?,
        expdate: field("expdate").ok_or_else(|| invalid("no <expdate/>"))?,
    })
}
