//! rustls server configuration: one certificate resolver (SNI per virtual host) shared by
//! the STARTTLS and direct-TLS (XEP-0368, ALPN `xmpp-client` / `xmpp-server`) listeners of
//! clients and servers.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openspimed_certs::peer::DeferredClientVerifier;
use openspimed_certs::{SniResolver, SniTable};
use openspimed_config::{Config, HostConfig};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;

/// The TLS side of the server.
pub struct TlsSetup {
    /// For STARTTLS on the plain c2s port (no ALPN).
    pub starttls: Arc<ServerConfig>,
    /// For direct TLS (ALPN `xmpp-client`).
    pub direct: Arc<ServerConfig>,
    /// For STARTTLS on s2s listeners: asks the remote server for its certificate, judged
    /// later per domain ([`openspimed_certs::peer`]).
    pub s2s_starttls: Arc<ServerConfig>,
    /// For direct TLS on s2s listeners (ALPN `xmpp-server`).
    pub s2s_direct: Arc<ServerConfig>,
    /// Shared by both; replaced on reload.
    pub resolver: Arc<SniResolver>,
}

/// The crypto provider openspimed uses everywhere, passed explicitly (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A host's certificate and key files: the configured pair, else where the generated
/// self-signed pair lives (`DATA_DIR/certs`).
pub fn certificate_paths(config: &Config, domain: &str, host: &HostConfig) -> (PathBuf, PathBuf) {
    match (&host.certificate, &host.key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => openspimed_certs::dev_certificate_paths(&config.data_dir.join("certs"), domain),
    }
}

/// Loads (or generates, for hosts without configured files) every host's certificate.
/// Returns one line per problem.
pub fn load_table(
    data_dir: &Path,
    hosts: &BTreeMap<String, HostConfig>,
    provider: &CryptoProvider,
) -> Result<SniTable, Vec<String>> {
    let mut by_name = HashMap::new();
    let mut problems = Vec::new();
    let dev_dir = data_dir.join("certs");
    for (domain, host) in hosts {
        let loaded = match (&host.certificate, &host.key) {
            (Some(cert), Some(key)) => openspimed_certs::load_pair(cert, key, provider),
            _ => openspimed_certs::dev_certificate(&dev_dir, domain, provider),
        };
        match loaded {
            Ok(c) => {
                by_name.insert(domain.to_ascii_lowercase(), c);
            }
            Err(e) => problems.push(format!("hosts.\"{domain}\": {e}")),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let default = hosts
        .keys()
        .next()
        .and_then(|d| by_name.get(&d.to_ascii_lowercase()).cloned());
    Ok(SniTable { by_name, default })
}

/// Builds both server configurations.
pub fn build(config: &Config) -> Result<TlsSetup, Vec<String>> {
    let provider = provider();
    let table = load_table(&config.data_dir, &config.hosts, &provider)?;
    let resolver = Arc::new(SniResolver::new(table));
    let make = |alpn: Option<&[u8]>, s2s: bool| -> Result<Arc<ServerConfig>, Vec<String>> {
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| vec![format!("TLS setup: {e}")])?;
        let builder = if s2s {
            builder.with_client_cert_verifier(DeferredClientVerifier::new(&provider))
        } else {
            builder.with_no_client_auth()
        };
        let mut sc = builder.with_cert_resolver(resolver.clone());
        if let Some(p) = alpn {
            sc.alpn_protocols = vec![p.to_vec()];
        }
        Ok(Arc::new(sc))
    };
    Ok(TlsSetup {
        starttls: make(None, false)?,
        direct: make(Some(b"xmpp-client"), false)?,
        s2s_starttls: make(None, true)?,
        s2s_direct: make(Some(b"xmpp-server"), true)?,
        resolver: resolver.clone(),
    })
}
