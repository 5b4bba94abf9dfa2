//! TLS certificates for openspimed.
//!
//! - [`load_pair`] reads a PEM chain and key and checks they belong together;
//! - [`dev_certificate`] generates (once) and reuses a self-signed certificate for a domain
//!   and its subdomains, the embedded default's certificate;
//! - [`SniResolver`] picks the certificate of the virtual host a client names with SNI, falls
//!   back from a service subdomain to its host, and can be [`SniResolver::replace`]d live;
//! - [`inspect`] reads names and expiry for `openspimed check`.

pub mod peer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// What went wrong with a certificate, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file holds no usable PEM object of the expected kind.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key does not belong to the certificate.
    #[error("{key} does not match the certificate {cert}")]
    Mismatch {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
    },
    /// Generating a certificate failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(String),
}

/// A loaded certificate chain with its key, ready for rustls.
pub type Certified = Arc<CertifiedKey>;

/// Loads a PEM certificate chain and private key and checks that they match.
pub fn load_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Certified, CertError> {
    let cert_bytes = std::fs::read(cert).map_err(|e| CertError::Read {
        path: cert.to_owned(),
        reason: e.to_string(),
    })?;
    let key_bytes = std::fs::read(key).map_err(|e| CertError::Read {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    certified_from_pem(&cert_bytes, &key_bytes, provider).map_err(|e| match e {
        PemProblem::Cert(reason) => CertError::Invalid {
            path: cert.to_owned(),
            reason,
        },
        PemProblem::Key(reason) => CertError::Invalid {
            path: key.to_owned(),
            reason,
        },
        PemProblem::Mismatch => CertError::Mismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
        },
    })
}

enum PemProblem {
    Cert(String),
    Key(String),
    Mismatch,
}

fn certified_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<Certified, PemProblem> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| PemProblem::Cert(format!("not a PEM certificate chain ({e})")))?;
    if chain.is_empty() {
        return Err(PemProblem::Cert("no CERTIFICATE block found".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| PemProblem::Key(format!("no usable PEM private key ({e})")))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| PemProblem::Key(format!("unsupported private key ({e})")))?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) => Ok(Arc::new(ck)),
        Err(rustls::Error::InconsistentKeys(_)) => Err(PemProblem::Mismatch),
        // Key types whose public key rustls cannot extract: accept, the handshake will tell.
        Err(_) => Ok(Arc::new(ck)),
    }
}

/// Paths of the generated certificate for `domain` under `dir`.
pub fn dev_certificate_paths(dir: &Path, domain: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{domain}.crt")),
        dir.join(format!("{domain}.key")),
    )
}

/// Returns the self-signed certificate for `domain` (valid for `domain` and `*.domain`) kept
/// in `dir`, generating it on first use. Reusing it keeps clients' pinned exceptions valid.
pub fn dev_certificate(
    dir: &Path,
    domain: &str,
    provider: &CryptoProvider,
) -> Result<Certified, CertError> {
    let (cert_path, key_path) = dev_certificate_paths(dir, domain);
    if !cert_path.exists() || !key_path.exists() {
        let (cert_pem, key_pem) = self_signed_pem(domain)?;
        std::fs::create_dir_all(dir).map_err(|e| CertError::Read {
            path: dir.to_owned(),
            reason: e.to_string(),
        })?;
        write_private(&key_path, key_pem.as_bytes())?;
        std::fs::write(&cert_path, cert_pem).map_err(|e| CertError::Read {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
    }
    load_pair(&cert_path, &key_path, provider)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CertError> {
    let err = |e: std::io::Error| CertError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        f.write_all(bytes).map_err(err)
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, bytes).map_err(err)
    }
}

/// A self-signed certificate and key (PEM) for `domain` and `*.domain`.
pub fn self_signed_pem(domain: &str) -> Result<(String, String), CertError> {
    let names = vec![domain.to_owned(), format!("*.{domain}")];
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| CertError::Generate(e.to_string()))?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}

/// A test/private certificate authority that issues server certificates.
pub struct DevCa {
    /// The CA certificate, for clients to trust.
    pub cert_pem: String,
    /// The issuer used to sign leaf certificates.
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl DevCa {
    /// Creates a new CA with a fresh key.
    pub fn new(name: &str) -> Result<DevCa, CertError> {
        let g = |e: rcgen::Error| CertError::Generate(e.to_string());
        let key = rcgen::KeyPair::generate().map_err(g)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(g)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).map_err(g)?;
        Ok(DevCa {
            cert_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// Issues a server certificate (PEM chain, PEM key) for these DNS names.
    pub fn issue(&self, names: &[&str]) -> Result<(String, String), CertError> {
        self.issue_with_xmpp_names(names, &[], &[])
    }

    /// Issues a server certificate that also names domains as xmppAddr and as SRV-ID
    /// `_xmpp-server.DOMAIN` (RFC 6120 §13.7.1.4, RFC 4985), as some XMPP CAs do.
    pub fn issue_with_xmpp_names(
        &self,
        dns: &[&str],
        xmpp_addrs: &[&str],
        srv_domains: &[&str],
    ) -> Result<(String, String), CertError> {
        let g = |e: rcgen::Error| CertError::Generate(e.to_string());
        let key = rcgen::KeyPair::generate().map_err(g)?;
        let mut params =
            rcgen::CertificateParams::new(dns.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .map_err(g)?;
        for d in xmpp_addrs {
            params.subject_alt_names.push(rcgen::SanType::OtherName((
                vec![1, 3, 6, 1, 5, 5, 7, 8, 5],
                (*d).into(),
            )));
        }
        for d in srv_domains {
            params.subject_alt_names.push(rcgen::SanType::OtherName((
                vec![1, 3, 6, 1, 5, 5, 7, 8, 7],
                format!("_xmpp-server.{d}").into(),
            )));
        }
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).map_err(g)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Picks the certificate by SNI: the exact host, else the host a service subdomain belongs
/// to (`pubsub.example.org` → `example.org`), else the default host.
#[derive(Debug)]
pub struct SniResolver {
    /// Certificates by lower-case domain; replaced whole on reload so a handshake never
    /// sees a half-updated table.
    table: RwLock<Arc<SniTable>>,
}

/// One consistent set of certificates.
#[derive(Debug, Default)]
pub struct SniTable {
    /// Certificate per domain.
    pub by_name: HashMap<String, Certified>,
    /// Used when the client sends no SNI or an unknown name.
    pub default: Option<Certified>,
}

impl SniResolver {
    /// A resolver serving `table`.
    pub fn new(table: SniTable) -> Self {
        SniResolver {
            table: RwLock::new(Arc::new(table)),
        }
    }

    /// Swaps in a new set of certificates; handshakes already under way keep the old one.
    pub fn replace(&self, table: SniTable) {
        match self.table.write() {
            Ok(mut t) => *t = Arc::new(table),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(table),
        }
    }

    fn current(&self) -> Arc<SniTable> {
        match self.table.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The certificate for a server name, following the subdomain fallback.
    pub fn lookup(&self, name: Option<&str>) -> Option<Certified> {
        let table = self.current();
        if let Some(name) = name {
            let name = name.to_ascii_lowercase();
            let mut candidate = name.as_str();
            loop {
                if let Some(c) = table.by_name.get(candidate) {
                    return Some(c.clone());
                }
                match candidate.split_once('.') {
                    Some((_, parent)) if parent.contains('.') || !parent.is_empty() => {
                        candidate = parent
                    }
                    _ => break,
                }
            }
        }
        table.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(hello.server_name())
    }
}

/// What `openspimed check` reports about a certificate file.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// DNS names (SAN dNSName entries) the leaf certificate is valid for.
    pub dns_names: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub not_after_unix: i64,
}

impl CertInfo {
    /// Whether a name is covered (exactly or by a one-label wildcard).
    pub fn covers(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.dns_names.iter().any(|n| {
            let n = n.to_ascii_lowercase();
            n == name
                || n.strip_prefix("*.").is_some_and(|suffix| {
                    name.split_once('.').is_some_and(|(_, rest)| rest == suffix)
                })
        })
    }
}

/// Reads the leaf certificate of a PEM file.
pub fn inspect(cert: &Path) -> Result<CertInfo, CertError> {
    let bytes = std::fs::read(cert).map_err(|e| CertError::Read {
        path: cert.to_owned(),
        reason: e.to_string(),
    })?;
    let invalid = |reason: String| CertError::Invalid {
        path: cert.to_owned(),
        reason,
    };
    let der = CertificateDer::pem_slice_iter(&bytes)
        .next()
        .ok_or_else(|| invalid("no CERTIFICATE block found".into()))?
        .map_err(|e| invalid(format!("not a PEM certificate ({e})")))?;
    inspect_der(&der).map_err(invalid)
}

/// Reads names and expiry from a DER certificate (e.g. the one a TLS peer presented).
pub fn inspect_der(der: &[u8]) -> Result<CertInfo, String> {
    let (_, x509) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate ({e})"))?;
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for gn in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(n) = gn {
                dns_names.push((*n).to_owned());
            }
        }
    }
    Ok(CertInfo {
        dns_names,
        not_after_unix: x509.validity().not_after.timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> CryptoProvider {
        rustls::crypto::ring::default_provider()
    }

    #[test]
    fn generated_certificate_is_reused_and_covers_subdomains() {
        let dir = tempfile::tempdir().unwrap();
        let a = dev_certificate(dir.path(), "localhost", &provider()).unwrap();
        let b = dev_certificate(dir.path(), "localhost", &provider()).unwrap();
        assert_eq!(
            a.cert, b.cert,
            "second start must reuse the first certificate"
        );
        let (crt, _) = dev_certificate_paths(dir.path(), "localhost");
        let info = inspect(&crt).unwrap();
        assert!(info.covers("localhost"));
        assert!(info.covers("pubsub.localhost"));
        assert!(!info.covers("a.b.localhost"));
        assert!(!info.covers("example.org"));
    }

    #[test]
    fn mismatched_key_and_missing_file_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, _) = self_signed_pem("a.example").unwrap();
        let (_, k2) = self_signed_pem("b.example").unwrap();
        let cp = dir.path().join("c.pem");
        let kp = dir.path().join("k.pem");
        std::fs::write(&cp, c1).unwrap();
        std::fs::write(&kp, k2).unwrap();
        let err = load_pair(&cp, &kp, &provider()).unwrap_err();
        assert!(matches!(err, CertError::Mismatch { .. }), "{err}");
        let err = load_pair(&dir.path().join("nope.pem"), &kp, &provider()).unwrap_err();
        assert!(err.to_string().contains("nope.pem"), "{err}");
        std::fs::write(&cp, "garbage").unwrap();
        let err = load_pair(&cp, &kp, &provider()).unwrap_err();
        assert!(matches!(err, CertError::Invalid { .. }), "{err}");
    }

    #[test]
    fn sni_falls_back_to_parent_host_then_default() {
        let p = provider();
        let dir = tempfile::tempdir().unwrap();
        let a = dev_certificate(dir.path(), "a.example", &p).unwrap();
        let b = dev_certificate(dir.path(), "b.example", &p).unwrap();
        let mut by_name = HashMap::new();
        by_name.insert("a.example".to_owned(), a.clone());
        by_name.insert("b.example".to_owned(), b.clone());
        let r = SniResolver::new(SniTable {
            by_name,
            default: Some(a.clone()),
        });
        assert_eq!(r.lookup(Some("B.example")).unwrap().cert, b.cert);
        assert_eq!(r.lookup(Some("pubsub.b.example")).unwrap().cert, b.cert);
        assert_eq!(r.lookup(Some("other.test")).unwrap().cert, a.cert);
        assert_eq!(r.lookup(None).unwrap().cert, a.cert);
    }
}
