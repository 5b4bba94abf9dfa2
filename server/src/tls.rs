//! rustls server configuration: one certificate resolver (SNI per virtual host) shared by
//! the STARTTLS and direct-TLS (XEP-0368, ALPN `xmpp-client`) listeners.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

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
pub fn load_table(config: &Config, provider: &CryptoProvider) -> Result<SniTable, Vec<String>> {
    let mut by_name = HashMap::new();
    let mut problems = Vec::new();
    let dev_dir = config.data_dir.join("certs");
    for (domain, host) in &config.hosts {
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
    let default = config
        .hosts
        .keys()
        .next()
        .and_then(|d| by_name.get(&d.to_ascii_lowercase()).cloned());
    Ok(SniTable { by_name, default })
}

/// Builds both server configurations.
pub fn build(config: &Config) -> Result<TlsSetup, Vec<String>> {
    let provider = provider();
    let table = load_table(config, &provider)?;
    let resolver = Arc::new(SniResolver::new(table));
    let make = |alpn: Option<&[u8]>| -> Result<Arc<ServerConfig>, Vec<String>> {
        let mut sc = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| vec![format!("TLS setup: {e}")])?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        if let Some(p) = alpn {
            sc.alpn_protocols = vec![p.to_vec()];
        }
        Ok(Arc::new(sc))
    };
    Ok(TlsSetup {
        starttls: make(None)?,
        direct: make(Some(b"xmpp-client"))?,
        resolver: resolver.clone(),
    })
}
