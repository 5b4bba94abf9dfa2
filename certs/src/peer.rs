//! Checking the certificate a remote server presents (RFC 6120 §13.7.2, RFC 6125, RFC 7590).
//!
//! On a server-to-server stream the domain a certificate must vouch for is only known once
//! the stream header arrives, and a certificate that does not validate is not fatal when
//! Server Dialback may be used instead. So the TLS layer only checks that the peer holds
//! the key of what it presented ([`DeferredClientVerifier`], [`DeferredServerVerifier`]),
//! and [`PeerVerifier::check`] decides later, for the domain in question: chain to a
//! trusted root with the serverAuth purpose (public CAs stopped issuing clientAuth in 2026,
//! so incoming connections are held to the same purpose as outgoing ones, where rustls'
//! stock client-certificate verifier would refuse them), then the name as a DNS-ID, an
//! SRV-ID (`_xmpp-server.DOMAIN`) or an xmppAddr.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// id-on-xmppAddr (RFC 6120 §13.7.1.4).
const OID_XMPP_ADDR: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 8, 5];
/// id-on-dnsSRV (RFC 4985).
const OID_DNS_SRV: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 8, 7];

/// Trusted roots and the algorithms to check signatures with.
#[derive(Debug)]
pub struct PeerVerifier {
    /// Certificate authorities trusted to vouch for remote domains.
    roots: RootCertStore,
    /// Signature algorithms of the crypto provider in use.
    algorithms: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    /// Trusts the CA certificates in `files` (PEM bundles). Files that cannot be read are
    /// returned as problems, one line each, and skipped: a server without trusted roots
    /// still federates through dialback.
    pub fn from_files(files: &[PathBuf], provider: &CryptoProvider) -> (Self, Vec<String>) {
        let mut roots = RootCertStore::empty();
        let mut problems = Vec::new();
        for f in files {
            match read_bundle(f) {
                Ok(certs) => {
                    let (_, bad) = roots.add_parsable_certificates(certs);
                    if bad > 0 {
                        problems.push(format!("{}: {bad} certificates not usable", f.display()));
                    }
                }
                Err(e) => problems.push(e),
            }
        }
        let v = PeerVerifier {
            roots,
            algorithms: provider.signature_verification_algorithms,
        };
        (v, problems)
    }

    /// How many trusted roots were loaded.
    pub fn root_count(&self) -> usize {
        self.roots.len()
    }

    /// Whether `chain` (leaf first) is a valid certificate for the XMPP server `domain`
    /// now; the error says why not, for the log.
    pub fn check(&self, chain: &[CertificateDer<'_>], domain: &str) -> Result<(), String> {
        let (leaf, intermediates) = chain.split_first().ok_or("no certificate presented")?;
        let cert =
            webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("bad certificate: {e}"))?;
        cert.verify_for_usage(
            self.algorithms.all,
            &self.roots.roots,
            intermediates,
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| format!("certificate not trusted: {e}"))?;
        let dns_ok = ServerName::try_from(domain)
            .ok()
            .is_some_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok());
        if dns_ok
            || xmpp_identities(leaf)
                .iter()
                .any(|n| n.eq_ignore_ascii_case(domain))
        {
            Ok(())
        } else {
            Err(format!("certificate is not valid for {domain}"))
        }
    }
}

fn read_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate bundle ({e})", path.display()))
}

/// Domains a certificate names as SRV-ID for `xmpp-server` or as xmppAddr (RFC 6125 §6,
/// RFC 6120 §13.7.1.4); DNS-IDs are webpki's to check.
pub fn xmpp_identities(der: &[u8]) -> Vec<String> {
    let Ok((_, x509)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = x509.subject_alternative_name() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for gn in &san.value.general_names {
        let x509_parser::extensions::GeneralName::OtherName(oid, value) = gn else {
            continue;
        };
        let Some(text) = explicit_string(value) else {
            continue;
        };
        let arcs: Vec<u64> = oid.iter().map(|i| i.collect()).unwrap_or_default();
        if arcs == OID_XMPP_ADDR {
            // Only a bare domain stands for a server.
            if !text.contains(['@', '/']) {
                out.push(text);
            }
        } else if arcs == OID_DNS_SRV
            && let Some(d) = text.strip_prefix("_xmpp-server.")
        {
            out.push(d.to_owned());
        }
    }
    out
}

/// The string inside an otherName value: `[0] EXPLICIT` around a UTF8String or IA5String.
fn explicit_string(value: &[u8]) -> Option<String> {
    let (tag, inner) = der_tlv(value)?;
    let inner = if tag == 0xA0 { inner } else { value };
    let (tag, text) = der_tlv(inner)?;
    if tag != 0x0C && tag != 0x16 {
        return None;
    }
    String::from_utf8(text.to_vec()).ok()
}

/// One DER tag-length-value: the tag byte and the value (short or one/two-byte long form).
fn der_tlv(b: &[u8]) -> Option<(u8, &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, start): (usize, usize) = match first {
        n if n < 0x80 => (n, 2),
        0x81 => (*b.get(2)? as usize, 3),
        0x82 => ((*b.get(2)? as usize) << 8 | *b.get(3)? as usize, 4),
        _ => return None,
    };
    Some((tag, b.get(start..start.checked_add(len)?)?))
}

/// Asks a connecting server for its certificate without requiring one, and checks only
/// that it holds the key; [`PeerVerifier::check`] judges the certificate once the stream
/// says which domain it is for.
#[derive(Debug)]
pub struct DeferredClientVerifier {
    /// For the handshake signature checks.
    algorithms: WebPkiSupportedAlgorithms,
}

impl DeferredClientVerifier {
    /// A verifier using `provider`'s signature algorithms.
    pub fn new(provider: &CryptoProvider) -> Arc<Self> {
        Arc::new(DeferredClientVerifier {
            algorithms: provider.signature_verification_algorithms,
        })
    }
}

impl ClientCertVerifier for DeferredClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The outgoing side of the same idea: the handshake completes with any certificate the
/// remote server holds the key of; [`PeerVerifier::check`] then decides between SASL
/// EXTERNAL, dialback and giving up, by the remote domain's policy.
#[derive(Debug)]
pub struct DeferredServerVerifier {
    /// For the handshake signature checks.
    algorithms: WebPkiSupportedAlgorithms,
}

impl DeferredServerVerifier {
    /// A verifier using `provider`'s signature algorithms.
    pub fn new(provider: &CryptoProvider) -> Arc<Self> {
        Arc::new(DeferredServerVerifier {
            algorithms: provider.signature_verification_algorithms,
        })
    }
}

impl ServerCertVerifier for DeferredServerVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Presents one fixed certificate as a TLS client (our domain's, on outgoing s2s).
#[derive(Debug)]
pub struct FixedClientCert(pub crate::Certified);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<crate::Certified> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::DevCa;

    fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    fn verifier_trusting(ca: &DevCa) -> PeerVerifier {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ca.pem");
        std::fs::write(&f, &ca.cert_pem).unwrap();
        let provider = rustls::crypto::ring::default_provider();
        let (v, problems) = PeerVerifier::from_files(&[f], &provider);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(v.root_count(), 1);
        v
    }

    #[test]
    fn server_auth_only_certificates_validate_for_their_names() {
        let ca = DevCa::new("test CA").unwrap();
        let v = verifier_trusting(&ca);
        // DevCa issues serverAuth-only certificates, as public CAs do since 2026.
        let (pem, _) = ca.issue(&["a.example", "*.a.example"]).unwrap();
        let c = chain(&pem);
        assert_eq!(v.check(&c, "a.example"), Ok(()));
        assert_eq!(v.check(&c, "pubsub.a.example"), Ok(()));
        let wrong = v.check(&c, "b.example").unwrap_err();
        assert!(wrong.contains("not valid for b.example"), "{wrong}");
    }

    #[test]
    fn untrusted_and_missing_certificates_are_refused() {
        let ca = DevCa::new("test CA").unwrap();
        let other = DevCa::new("other CA").unwrap();
        let v = verifier_trusting(&ca);
        let (pem, _) = other.issue(&["a.example"]).unwrap();
        let err = v.check(&chain(&pem), "a.example").unwrap_err();
        assert!(err.contains("not trusted"), "{err}");
        assert!(v.check(&[], "a.example").is_err());
        let (none, problems) = PeerVerifier::from_files(
            &[PathBuf::from("/nonexistent/ca.pem")],
            &rustls::crypto::ring::default_provider(),
        );
        assert_eq!(none.root_count(), 0);
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn xmpp_addr_and_srv_names_count() {
        let ca = DevCa::new("test CA").unwrap();
        let v = verifier_trusting(&ca);
        let (pem, _) = ca
            .issue_with_xmpp_names(&["host.provider.example"], &["c.example"], &["d.example"])
            .unwrap();
        let c = chain(&pem);
        let mut ids = xmpp_identities(&c[0]);
        ids.sort();
        assert_eq!(ids, ["c.example", "d.example"]);
        assert_eq!(v.check(&c, "c.example"), Ok(()));
        assert_eq!(v.check(&c, "d.example"), Ok(()));
        assert!(v.check(&c, "e.example").is_err());
    }
}
