//! Where a remote domain's XMPP server is (RFC 6120 §3.2, XEP-0368).
//!
//! [`Resolve`] is the narrow interface the outgoing side uses; [`Resolver`] answers from
//! the configuration's static addresses first (`[s2s.remote."domain"]`, which also cover
//! the domain's subdomains, e.g. `pubsub.domain`) and otherwise from DNS through
//! hickory-resolver: `_xmpps-server._tcp` (direct TLS) and `_xmpp-server._tcp` SRV
//! records by priority, then the domain's A/AAAA records on port 5269.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{RData, RecordType};
use openspimed_config::RemoteConfig;
use openspimed_module_api::BoxFuture;
use tokio::sync::OnceCell;

/// One address to try, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Whether it speaks TLS from the first byte (XEP-0368) rather than STARTTLS.
    pub direct_tls: bool,
}

/// Why a domain could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// DNS said no (or the lookup failed); the text is for the log.
    #[error("cannot resolve {domain}: {reason}")]
    Failed {
        /// The domain.
        domain: String,
        /// Why.
        reason: String,
    },
    /// The domain publishes `.` as its SRV target: it offers no XMPP service.
    #[error("{0} says it offers no server-to-server service")]
    NoService(String),
}

/// Finds the addresses of a remote domain's server.
pub trait Resolve: Send + Sync {
    /// Addresses to try, best first.
    fn resolve<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<Target>, ResolveError>>;
}

/// `[s2s.remote]` as currently in force (replaced on reload).
pub type Remotes = Arc<RwLock<BTreeMap<String, RemoteConfig>>>;

/// Static addresses, then DNS.
pub struct Resolver {
    /// `[s2s.remote]`, shared with the dialback policy.
    overrides: Remotes,
    /// Built on first DNS use, so servers that only use static addresses (and tests) never
    /// read the system's resolver configuration.
    dns: OnceCell<TokioResolver>,
}

impl Resolver {
    /// A resolver with these static addresses.
    pub fn new(overrides: Remotes) -> Resolver {
        Resolver {
            overrides,
            dns: OnceCell::new(),
        }
    }

    /// The static entry for a domain or, failing that, for the nearest parent domain.
    fn configured(&self, domain: &str) -> Option<RemoteConfig> {
        let map = match self.overrides.read() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut d = domain;
        loop {
            if let Some(r) = map.get(d).filter(|r| !r.addresses.is_empty()) {
                return Some(r.clone());
            }
            d = d.split_once('.')?.1;
        }
    }

    async fn dns(&self, domain: &str) -> Result<&TokioResolver, ResolveError> {
        self.dns
            .get_or_try_init(|| async {
                TokioResolver::builder_tokio()
                    .and_then(|b| b.build())
                    .map_err(|e| ResolveError::Failed {
                        domain: domain.to_owned(),
                        reason: e.to_string(),
                    })
            })
            .await
    }

    async fn lookup(&self, domain: &str) -> Result<Vec<Target>, ResolveError> {
        let dns = self.dns(domain).await?;
        // (priority, direct TLS first on a tie as XEP-0368 §3 suggests, host, port).
        let mut srv: Vec<(u16, bool, String, u16)> = Vec::new();
        let mut refused = false;
        for (prefix, direct) in SRV_PREFIXES {
            let Ok(records) = srv_query(dns, prefix, direct, domain).await else {
                continue;
            };
            for r in records {
                if r.target == "." {
                    refused = true;
                    continue;
                }
                srv.push((r.priority, !r.direct_tls, r.target, r.port));
            }
        }
        if srv.is_empty() {
            if refused {
                return Err(ResolveError::NoService(domain.to_owned()));
            }
            // RFC 6120 §3.2.2: no SRV records, so the domain itself on the default port.
            srv.push((0, true, format!("{domain}."), 5269));
        }
        srv.sort();
        let mut out = Vec::new();
        for (_, not_direct, host, port) in srv {
            if let Ok(ips) = dns.lookup_ip(host.as_str()).await {
                out.extend(ips.iter().map(|ip| Target {
                    addr: SocketAddr::new(ip, port),
                    direct_tls: !not_direct,
                }));
            }
        }
        if out.is_empty() {
            return Err(ResolveError::Failed {
                domain: domain.to_owned(),
                reason: "no addresses".into(),
            });
        }
        Ok(out)
    }
}

/// What DNS publishes for a domain's server-to-server service, for `openspimed check`.
#[derive(Debug, PartialEq, Eq)]
pub struct SrvRecord {
    /// From `_xmpps-server._tcp` (direct TLS) rather than `_xmpp-server._tcp`.
    pub direct_tls: bool,
    /// The target host (`.` means "no service").
    pub target: String,
    /// The port.
    pub port: u16,
    /// Lower is tried first (RFC 2782).
    pub priority: u16,
}

/// The SRV records of `domain` (empty when there are none); an error when DNS cannot be
/// asked at all (offline).
pub async fn srv_records(domain: &str) -> Result<Vec<SrvRecord>, ResolveError> {
    let failed = |reason: String| ResolveError::Failed {
        domain: domain.to_owned(),
        reason,
    };
    let dns = TokioResolver::builder_tokio()
        .and_then(|b| b.build())
        .map_err(|e| failed(e.to_string()))?;
    let mut out = Vec::new();
    for (prefix, direct) in SRV_PREFIXES {
        match srv_query(&dns, prefix, direct, domain).await {
            Ok(records) => out.extend(records),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {}
            Err(e) => return Err(failed(e.to_string())),
        }
    }
    Ok(out)
}

/// The SRV names of the server-to-server service: direct TLS (XEP-0368), then STARTTLS.
const SRV_PREFIXES: [(&str, bool); 2] =
    [("_xmpps-server._tcp.", true), ("_xmpp-server._tcp.", false)];

/// The SRV records under `prefix` + `domain`.
async fn srv_query(
    dns: &TokioResolver,
    prefix: &str,
    direct_tls: bool,
    domain: &str,
) -> Result<Vec<SrvRecord>, hickory_resolver::net::NetError> {
    let name = format!("{prefix}{domain}.");
    let answer = dns.lookup(name.as_str(), RecordType::SRV).await?;
    Ok(answer
        .answers()
        .iter()
        .filter_map(|rec| match &rec.data {
            RData::SRV(s) => Some(SrvRecord {
                direct_tls,
                target: s.target.to_ascii(),
                port: s.port,
                priority: s.priority,
            }),
            _ => None,
        })
        .collect())
}

impl Resolve for Resolver {
    fn resolve<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<Target>, ResolveError>> {
        Box::pin(async move {
            if let Some(r) = self.configured(domain) {
                return Ok(r
                    .addresses
                    .iter()
                    .map(|a| Target {
                        addr: *a,
                        direct_tls: r.direct_tls,
                    })
                    .collect());
            }
            self.lookup(domain).await
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn static_addresses_cover_subdomains_without_dns() {
        let mut o = BTreeMap::new();
        o.insert(
            "b.example".to_owned(),
            RemoteConfig {
                addresses: vec!["127.0.0.1:5999".parse().unwrap()],
                direct_tls: true,
                dialback: None,
            },
        );
        let r = Resolver::new(Arc::new(RwLock::new(o)));
        let want = vec![Target {
            addr: "127.0.0.1:5999".parse().unwrap(),
            direct_tls: true,
        }];
        assert_eq!(r.resolve("b.example").await.unwrap(), want);
        assert_eq!(r.resolve("pubsub.b.example").await.unwrap(), want);
        assert!(r.configured("c.example").is_none());
        assert!(r.configured("example").is_none());
    }
}
