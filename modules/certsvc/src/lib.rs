//! The OpenSpime certification service (SpimeGate): XEP-0189 public keys (wire profile §4).
//!
//! Hosted at configured JIDs — a domain (`cert.example.org`) or a full JID on a hosted
//! domain (`services@spime.example.org/cert`). It answers `get` for any JID with the stored
//! key (echoing the requested JID byte for byte, from exactly the JID asked), and
//! `item-not-found` otherwise; it accepts a key published by the key's own authenticated
//! JID and refuses anyone else with `forbidden`. Keys are stored through [`store::Keys`].
//!
//! [`KeyLookup`] is what other modules (ScopeNodes) use to get a JID's key from a named
//! certification service: in-process when it is hosted here, by XEP-0189 otherwise.
//!
//! Options ([`Options`], `[modules.certsvc]`), shared by all hosts; each host serves the
//! services on its own domain or subdomains (default: `cert.HOST`, form `auto`):
//! ```toml
//! [modules.certsvc]
//! services = [{ jid = "cert.example.org", form = "auto" },
//!             { jid = "services@spime.example.org/cert", form = "legacy" }]
//! max_identical_requests_per_second = 5
//! ```
//! `form = "auto"` answers requests shaped like the 2008 client's in the legacy form (the
//! only one it reads) and everyone else in the seed's standard form.

pub mod admin;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use openspime::keyinfo::{self, KeyForm};
use openspime::ns::PUBKEY;
use openspimed_module_api::jid::Jid;
use openspimed_module_api::{
    Condition, Context, Element, Module, ModuleError, ModuleFactory, Outcome, Route, StanzaError,
    async_trait, iq_result, ns, options, toml,
};
use rsa::RsaPublicKey;
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
use serde::{Deserialize, Serialize};
pub use store::{Keys, StoredKey};

/// One hosted certification service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Its JID, normalized (RFC 7622).
    pub jid: String,
    /// How it writes keys.
    pub form: FormOption,
}

/// Registers the `certsvc` module.
pub struct Factory;

/// `[modules.certsvc]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Certification services hosted here (a domain, or a full JID on a hosted domain);
    /// each host serves those on its own domain or subdomains. Absent: `cert.HOST`.
    pub services: Option<Vec<ServiceOptions>>,
    /// Identical key requests answered per requester and second (wire profile §10: the
    /// 2008 client re-asks in a tight loop when it dislikes an answer).
    pub max_identical_requests_per_second: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            services: None,
            max_identical_requests_per_second: 5,
        }
    }
}

/// One entry of `services`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceOptions {
    /// The service's JID.
    pub jid: String,
    /// How its answers write keys.
    #[serde(default)]
    pub form: FormOption,
}

/// How a key answer is written (wire profile §4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FormOption {
    /// The legacy form to requests shaped like the 2008 client's (pyopenspime, which
    /// reads nothing else: its ScopeNodes fail with `internal-server-error` on the
    /// standard form), the standard form to everyone else. Every reader that follows the
    /// profile accepts both, so a modern client taken for a 2008 one loses nothing.
    #[default]
    Auto,
    /// Always the seed's form: `KeyValue` wrapper, CryptoBinary numbers.
    Standard,
    /// Always the 2008 form: no wrapper, OpenSSL MPI numbers.
    Legacy,
}

impl FormOption {
    /// The form of the answer to `request`, an iq get whose payload is `<pubkeys/>`.
    pub fn for_request(self, request: &Element) -> KeyForm {
        match self {
            FormOption::Standard => KeyForm::Standard,
            FormOption::Legacy => KeyForm::Legacy,
            FormOption::Auto if keyinfo::looks_like_2008_request(request) => KeyForm::Legacy,
            FormOption::Auto => KeyForm::Standard,
        }
    }
}

fn config_err(key: &str, reason: impl Into<String>) -> ModuleError {
    ModuleError::Config {
        module: "certsvc",
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// Reads `services` from the options: those belonging to `host` (its domain or a
/// subdomain). Without the option, `cert.HOST` in the `auto` form.
pub fn services_for_host(host: &str, options: &toml::Table) -> Result<Vec<Service>, ModuleError> {
    let o: Options = options::parse("certsvc", options)?;
    services_of(host, &o)
}

fn services_of(host: &str, o: &Options) -> Result<Vec<Service>, ModuleError> {
    let Some(list) = &o.services else {
        return Ok(vec![Service {
            jid: format!("cert.{host}"),
            form: FormOption::Auto,
        }]);
    };
    let mut out = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let jid = Jid::new(&entry.jid).map_err(|e| {
            config_err(
                &format!("services[{i}].jid"),
                format!("{:?}: {e}", entry.jid),
            )
        })?;
        let domain = jid.domain().to_string();
        if domain == host || domain.ends_with(&format!(".{host}")) {
            out.push(Service {
                jid: jid.to_string(),
                form: entry.form,
            });
        }
    }
    Ok(out)
}

impl ModuleFactory for Factory {
    fn name(&self) -> &'static str {
        "certsvc"
    }
    fn build(&self, host: &str, options: &toml::Table) -> Result<Arc<dyn Module>, ModuleError> {
        let o: Options = options::parse("certsvc", options)?;
        if o.max_identical_requests_per_second == 0 {
            return Err(config_err(
                "max_identical_requests_per_second",
                "must be at least 1",
            ));
        }
        Ok(Arc::new(CertService {
            services: services_of(host, &o)?,
            limiter: RateLimiter::new(o.max_identical_requests_per_second, Duration::from_secs(1)),
        }))
    }
    fn option_keys(&self) -> Vec<String> {
        options::keys(&Options {
            services: Some(vec![ServiceOptions {
                jid: "cert.example.org".into(),
                form: FormOption::Auto,
            }]),
            ..Options::default()
        })
    }
    fn admin_commands(&self) -> Vec<Box<dyn openspimed_module_api::AdminCommand>> {
        vec![Box::new(admin::Keys)]
    }
}

/// The module instance for one host.
pub struct CertService {
    /// The services this host serves.
    services: Vec<Service>,
    /// Limits identical key requests per requester (wire profile §10: the 2008 client
    /// re-asks in a tight loop when it dislikes an answer).
    limiter: RateLimiter,
}

impl CertService {
    fn service_for(&self, to: &str) -> Option<&Service> {
        let to = Jid::new(to).ok()?;
        let full = to.to_string();
        self.services
            .iter()
            .find(|s| s.jid == full)
            .or_else(|| self.services.iter().find(|s| s.jid == to.domain().as_str()))
    }
}

/// Normalizes a JID for storage and lookup; `None` if it is not a JID.
fn normalize(jid: &str) -> Option<Jid> {
    Jid::new(jid.trim()).ok()
}

/// The stored, unrevoked key of `jid` at `service`, falling back from a full JID to its
/// bare JID (wire profile §4).
pub async fn stored_key(
    store: &Keys,
    service: &str,
    jid: &str,
) -> Result<Option<RsaPublicKey>, ModuleError> {
    let Some(j) = normalize(jid) else {
        return Ok(None);
    };
    let mut candidates = vec![j.to_string()];
    if j.resource().is_some() {
        candidates.push(j.to_bare().to_string());
    }
    let count = |result: &'static str| {
        metrics::counter!("openspimed_certsvc_lookups_total", "result" => result).increment(1);
    };
    for c in candidates {
        let found = store
            .key(service, &c)
            .await
            .map_err(|e| ModuleError::Internal(e.to_string()))?;
        if let Some(k) = found {
            if k.revoked_unix.is_some() {
                count("revoked");
                return Ok(None);
            }
            count("found");
            return RsaPublicKey::from_public_key_der(&k.spki_der)
                .map(Some)
                .map_err(|e| ModuleError::Internal(format!("stored key unreadable: {e}")));
        }
    }
    count("not_found");
    Ok(None)
}

/// Stores a key for `jid` at `service` (the operator's `keys add` and a publication).
pub async fn store_key(
    store: &Keys,
    service: &str,
    jid: &str,
    key: &RsaPublicKey,
) -> Result<String, ModuleError> {
    let j = normalize(jid).ok_or_else(|| ModuleError::Internal(format!("{jid:?} is not a JID")))?;
    let der = key
        .to_public_key_der()
        .map_err(|e| ModuleError::Internal(e.to_string()))?;
    store
        .put_key(service, &j.to_string(), der.as_bytes())
        .await
        .map_err(|e| ModuleError::Internal(e.to_string()))?;
    Ok(j.to_string())
}

#[async_trait]
impl Module for CertService {
    fn name(&self) -> &'static str {
        "certsvc"
    }

    fn routes(&self) -> Vec<Route> {
        self.services
            .iter()
            .map(|s| match Jid::new(&s.jid) {
                Ok(j) if j.node().is_none() && j.resource().is_none() => {
                    Route::Domain(s.jid.clone())
                }
                _ => Route::Jid(s.jid.clone()),
            })
            .collect()
    }

    async fn handle(&self, cx: &Context, stanza: Element) -> Result<Outcome, ModuleError> {
        if stanza.name() != "iq" || !matches!(stanza.attr("type"), Some("get" | "set")) {
            return Ok(Outcome::Handled);
        }
        let Some(service) = stanza.attr("to").and_then(|t| self.service_for(t)) else {
            return Ok(Outcome::Error(Condition::ItemNotFound.into()));
        };
        let Some(payload) = stanza.first_child() else {
            return Ok(Outcome::Error(Condition::BadRequest.into()));
        };
        let get = stanza.attr("type") == Some("get");
        match (payload.ns(), payload.name(), get) {
            (PUBKEY, "pubkeys", true) => self.lookup(cx, service, &stanza, payload).await,
            (PUBKEY, "pubkeys", false) => publish(cx, service, &stanza, payload).await,
            (ns::DISCO_INFO, "query", true) => Ok(Outcome::Reply(
                iq_result(&stanza).with_child(
                    Element::new("query", ns::DISCO_INFO)
                        .with_child(
                            Element::new("identity", ns::DISCO_INFO)
                                .with_attr("category", "component")
                                .with_attr("type", "generic")
                                .with_attr("name", "OpenSpime certification service"),
                        )
                        .with_child(
                            Element::new("feature", ns::DISCO_INFO)
                                .with_attr("var", ns::DISCO_INFO),
                        )
                        .with_child(
                            Element::new("feature", ns::DISCO_INFO).with_attr("var", PUBKEY),
                        ),
                ),
            )),
            (ns::DISCO_ITEMS, "query", true) => Ok(Outcome::Reply(
                iq_result(&stanza).with_child(Element::new("query", ns::DISCO_ITEMS)),
            )),
            _ => Ok(Outcome::Error(Condition::ServiceUnavailable.into())),
        }
    }
}

impl CertService {
    async fn lookup(
        &self,
        cx: &Context,
        service: &Service,
        stanza: &Element,
        payload: &Element,
    ) -> Result<Outcome, ModuleError> {
        let Some(asked) = payload.attr("jid") else {
            return Ok(Outcome::Error(
                StanzaError::new(Condition::BadRequest).with_text("<pubkeys/> needs a jid"),
            ));
        };
        let requester = stanza.attr("from").unwrap_or("");
        if !self.limiter.allow(&format!("{requester}\u{0}{asked}")) {
            metrics::counter!("openspimed_certsvc_lookups_total", "result" => "rate_limited")
                .increment(1);
            return Ok(Outcome::Error(
                StanzaError::new(Condition::ResourceConstraint)
                    .with_text("too many identical key requests"),
            ));
        }
        match stored_key(&Keys::new(cx.storage.clone()), &service.jid, asked).await? {
            // The requested JID is echoed byte for byte (pyopenspime compares strings).
            Some(key) => Ok({
                Outcome::Reply(iq_result(stanza).with_child(keyinfo::pubkeys(
                    asked,
                    &key,
                    service.form.for_request(stanza),
                )))
            }),
            None => Ok({
                Outcome::Error(
                    StanzaError::new(Condition::ItemNotFound)
                        .with_text("no public key for that JID"),
                )
            }),
        }
    }
}

async fn publish(
    cx: &Context,
    service: &Service,
    stanza: &Element,
    payload: &Element,
) -> Result<Outcome, ModuleError> {
    let (jid, key) = match keyinfo::parse_pubkeys(payload) {
        Ok(v) => v,
        Err(e) => {
            return Ok(Outcome::Error(
                StanzaError::new(Condition::BadRequest).with_text(e.to_string()),
            ));
        }
    };
    let (Some(owner), Some(from)) = (normalize(&jid), stanza.attr("from").and_then(normalize))
    else {
        return Ok(Outcome::Error(Condition::JidMalformed.into()));
    };
    // Only the key's own authenticated JID (or its bare JID) may publish it.
    if owner != from && owner.to_string() != from.to_bare().to_string() {
        metrics::counter!("openspimed_certsvc_publications_total", "result" => "forbidden")
            .increment(1);
        return Ok(Outcome::Error(
            StanzaError::new(Condition::Forbidden)
                .with_text("a key can only be published by its own JID"),
        ));
    }
    store_key(&Keys::new(cx.storage.clone()), &service.jid, &jid, &key).await?;
    metrics::counter!("openspimed_certsvc_publications_total", "result" => "stored").increment(1);
    Ok(Outcome::Reply(iq_result(stanza)))
}

/// Counts events per key in a sliding one-window bucket.
pub struct RateLimiter {
    /// Window start and count per key.
    counts: DashMap<String, (Instant, u32)>,
    /// Events allowed per window.
    limit: u32,
    /// Window length.
    window: Duration,
}

impl RateLimiter {
    /// A limiter allowing `limit` events per `window` per key.
    pub fn new(limit: u32, window: Duration) -> Self {
        RateLimiter {
            counts: DashMap::new(),
            limit,
            window,
        }
    }

    /// Records an event; `false` if the key is over its limit.
    pub fn allow(&self, key: &str) -> bool {
        if self.counts.len() > 50_000 {
            self.counts.retain(|_, e| e.0.elapsed() < self.window);
        }
        let mut e = self
            .counts
            .entry(key.to_owned())
            .or_insert((Instant::now(), 0));
        if e.0.elapsed() >= self.window {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
        e.1 <= self.limit
    }
}

/// Why a key could not be obtained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The service has no (unrevoked) key for that JID.
    #[error("no key for {0}")]
    NotFound(String),
    /// The service did not answer in time.
    #[error("certification service {0} did not answer")]
    Timeout(String),
    /// The answer was not a usable key (or did not echo the JID asked).
    #[error("unusable answer from {0}")]
    Invalid(String),
    /// Storage failed.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Key lookup for other modules, with a bounded cache (wire profile §4: re-fetch after a
/// verification failure, via [`KeyLookup::forget`]).
pub struct KeyLookup {
    /// The requesting module's context (its router handle and storage).
    cx: Context,
    /// The JID remote requests are sent from.
    requester: String,
    /// (service, jid) → (fetched at, key).
    cache: Mutex<HashMap<(String, String), (Instant, RsaPublicKey)>>,
    /// How long a cached key is used.
    ttl: Duration,
    /// Most cached keys.
    max_entries: usize,
    /// How long to wait for a remote service.
    timeout: Duration,
    /// Source of request ids.
    next_id: std::sync::atomic::AtomicU64,
}

impl KeyLookup {
    /// A lookup sending remote requests from `requester`.
    pub fn new(
        cx: Context,
        requester: String,
        ttl: Duration,
        max_entries: usize,
        timeout: Duration,
    ) -> Self {
        KeyLookup {
            cx,
            requester,
            cache: Mutex::new(HashMap::new()),
            ttl,
            max_entries,
            timeout,
            next_id: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// Forgets a cached key (call after a signature failed to verify with it).
    pub fn forget(&self, service: &str, jid: &str) {
        if let Ok(mut c) = self.cache.lock() {
            c.remove(&(service.to_owned(), jid.to_owned()));
        }
    }

    /// The key of `jid` according to the certification service `service`.
    pub async fn key_for(&self, service: &str, jid: &str) -> Result<RsaPublicKey, LookupError> {
        let cache_key = (service.to_owned(), jid.to_owned());
        let cached = self
            .cache
            .lock()
            .ok()
            .and_then(|c| c.get(&cache_key).cloned())
            .filter(|(at, _)| at.elapsed() < self.ttl);
        if let Some((_, key)) = cached {
            return Ok(key);
        }
        let key = if self.cx.server.is_hosted_service(service) {
            let svc = normalize(service)
                .map(|j| j.to_string())
                .unwrap_or_else(|| service.to_owned());
            stored_key(&Keys::new(self.cx.storage.clone()), &svc, jid)
                .await
                .map_err(|e| LookupError::Internal(e.to_string()))?
                .ok_or_else(|| LookupError::NotFound(jid.to_owned()))?
        } else {
            self.remote(service, jid).await?
        };
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= self.max_entries {
                let ttl = self.ttl;
                c.retain(|_, (at, _)| at.elapsed() < ttl);
                if c.len() >= self.max_entries {
                    c.clear();
                }
            }
            c.insert(cache_key, (Instant::now(), key.clone()));
        }
        Ok(key)
    }

    async fn remote(&self, service: &str, jid: &str) -> Result<RsaPublicKey, LookupError> {
        let id = format!(
            "pk{}",
            self.next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "get")
            .with_attr("id", id)
            .with_attr("from", self.requester.clone())
            .with_attr("to", service)
            .with_child(Element::new("pubkeys", PUBKEY).with_attr("jid", jid));
        let answer = self
            .cx
            .server
            .send_iq(iq, self.timeout)
            .await
            .map_err(|_| LookupError::Timeout(service.to_owned()))?;
        if answer.attr("type") != Some("result") {
            return Err(LookupError::NotFound(jid.to_owned()));
        }
        let payload = answer
            .get_child("pubkeys", PUBKEY)
            .ok_or_else(|| LookupError::Invalid(service.to_owned()))?;
        let (echoed, key) = keyinfo::parse_pubkeys(payload)
            .map_err(|_| LookupError::Invalid(service.to_owned()))?;
        if echoed != jid {
            return Err(LookupError::Invalid(service.to_owned()));
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_split_by_host_and_default_to_cert_subdomain() {
        let empty = toml::Table::new();
        assert_eq!(
            services_for_host("localhost", &empty).unwrap(),
            [Service {
                jid: "cert.localhost".into(),
                form: FormOption::Auto
            }]
        );
        let opts: toml::Table = toml::from_str(
            "services = [{ jid = \"cert.example.org\" }, \
             { jid = \"services@spime.example.org/cert\", form = \"legacy\" }, \
             { jid = \"cert.other.test\" }]",
        )
        .unwrap();
        let s = services_for_host("example.org", &opts).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].form, FormOption::Auto);
        assert_eq!(s[1].form, FormOption::Legacy);
        assert_eq!(s[1].jid, "services@spime.example.org/cert");
        let bad: toml::Table =
            toml::from_str("services = [{ jid = \"x\", form = \"bogus\" }]").unwrap();
        let e = services_for_host("x", &bad).unwrap_err().to_string();
        assert!(e.contains("modules.certsvc.services[0].form"), "{e}");
        assert!(e.contains("unknown variant `bogus`"), "{e}");
    }

    #[test]
    fn rate_limiter_counts_per_key() {
        let l = RateLimiter::new(2, Duration::from_secs(60));
        assert!(l.allow("a"));
        assert!(l.allow("a"));
        assert!(!l.allow("a"));
        assert!(l.allow("b"));
    }
}
