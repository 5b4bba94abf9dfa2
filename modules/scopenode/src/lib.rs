//! OpenSpime ScopeNodes (seed §1.0, §1.2; wire profile §§7–9).
//!
//! Each local part of the configured domain is one ScopeNode with its own RSA key (loaded
//! from a file, or generated at first start and kept in storage) published to the local
//! certification service; each resource is a scope. Reports (plain, signed,
//! encrypted+signed; iq answered, message not) are checked against the scope and stored
//! durably before the empty result goes out. SpimeSeek requests arrive as PubSub
//! notifications; a request is answered once, only for the sought spime itself or a holder
//! of a valid claim key, with the newest entries, encrypted when asked. Every ignored
//! request and every rejected report is counted by reason, and the counts are visible in
//! the ScopeNode's disco#info (XEP-0128 extended information).
//!
//! Options (`[modules.scopenode]`; defaults in brackets):
//! ```toml
//! [modules.scopenode]
//! domain = "scopenode.example.org"          # [scopenode.HOST]
//! cert_service = "cert.example.org"         # where node keys are published [cert.HOST]
//! trusted_cert_services = ["cert.example.org"]   # [cert_service]
//! seek_nodes = [{ service = "pubsub.example.org", node = "spimeseek" }]   # [pubsub.HOST]
//! propagate_to = []                         # re-publish seeks to these nodes
//! max_entries_per_response = 100
//! key_form = "auto"                         # how a node answers requests for its own key
//! [[modules.scopenode.nodes]]               # [one node "demo" with the seed's co2 scope]
//! name = "demo"
//! key_file = "/etc/openspimed/demo.pem"     # optional
//! [[modules.scopenode.nodes.scopes]]
//! name = "co2"
//! require_signature = false
//! require_encryption = false
//! retention_days = 0
//! fields = [{ name = "ppm", type = "number", min = 0, required = true }]
//! ```

pub mod admin;
pub mod options;
pub mod scope;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::store::{SensorData, SensorEntry};
use openspime::keyinfo::{self, KeyForm};
use openspime::{Container, Data, OpenSpimeError, RsaPrivateKey, SpimeSeek};
use openspimed_mod_certsvc::{FormOption, KeyLookup};
use openspimed_module_api::jid::Jid;
use openspimed_module_api::{
    Condition, Context, Element, ErrorType, Module, ModuleError, ModuleFactory, Outcome, Route,
    StanzaError, async_trait, iq_result, ns, toml,
};
use rand::RngCore;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};

pub use options::Options;
use options::PubSubNodeOptions;
pub use scope::Scope;

const PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
/// FORM_TYPE of the counters in disco#info.
pub const STATS_FORM: &str = "urn:openspimed:scopenode:stats";

fn config_err(key: impl Into<String>, reason: impl Into<String>) -> ModuleError {
    ModuleError::Config {
        module: "scopenode",
        key: key.into(),
        reason: reason.into(),
    }
}

fn internal(e: impl std::fmt::Display) -> ModuleError {
    ModuleError::Internal(e.to_string())
}

/// One configured ScopeNode.
#[derive(Clone, Debug)]
pub struct NodeDef {
    /// Its bare JID.
    pub jid: String,
    /// A PEM private key to use instead of a generated one.
    pub key_file: Option<String>,
    /// Scopes by resource.
    pub scopes: Vec<Scope>,
}

/// The ScopeNodes a host serves with these options (for the operator's commands).
pub fn configured_nodes(host: &str, options: &toml::Table) -> Result<Vec<NodeDef>, ModuleError> {
    let module = Factory.build_nodes(host, options)?;
    Ok(module.nodes)
}

/// A PubSub node (service JID, node name).
type PubSubNode = (String, String);

/// Registers the `scopenode` module.
pub struct Factory;

fn pubsub_nodes(list: &[PubSubNodeOptions]) -> Vec<PubSubNode> {
    list.iter()
        .map(|p| (p.service.clone(), p.node.clone()))
        .collect()
}

impl ModuleFactory for Factory {
    fn name(&self) -> &'static str {
        "scopenode"
    }

    fn build(&self, host: &str, options: &toml::Table) -> Result<Arc<dyn Module>, ModuleError> {
        Ok(Arc::new(self.build_nodes(host, options)?))
    }

    fn option_keys(&self) -> Vec<String> {
        openspimed_module_api::options::keys(&Options::sample())
    }

    fn admin_commands(&self) -> Vec<Box<dyn openspimed_module_api::AdminCommand>> {
        vec![Box::new(admin::Scopenode), Box::new(admin::DataExport)]
    }
}

impl Factory {
    fn build_nodes(&self, host: &str, options: &toml::Table) -> Result<ScopeNodes, ModuleError> {
        let o: Options = openspimed_module_api::options::parse("scopenode", options)?;
        let domain = o.domain.unwrap_or_else(|| format!("scopenode.{host}"));
        let serves = domain == host || domain.ends_with(&format!(".{host}"));
        let cert_service = o.cert_service.unwrap_or_else(|| format!("cert.{host}"));
        let trusted = o
            .trusted_cert_services
            .unwrap_or_else(|| vec![cert_service.clone()]);
        let seek_nodes = match &o.seek_nodes {
            Some(list) => pubsub_nodes(list),
            None => vec![(format!("pubsub.{host}"), "spimeseek".into())],
        };
        if !(1..=10_000).contains(&o.max_entries_per_response) {
            return Err(config_err(
                "max_entries_per_response",
                format!("{} is not between 1 and 10000", o.max_entries_per_response),
            ));
        }
        let nodes = match &o.nodes {
            None => vec![NodeDef {
                jid: format!("demo@{domain}"),
                key_file: None,
                scopes: vec![Scope::co2()],
            }],
            Some(list) => {
                let mut out = Vec::new();
                for (i, n) in list.iter().enumerate() {
                    let jid = Jid::new(&format!("{}@{domain}", n.name))
                        .map_err(|e| {
                            config_err(format!("nodes[{i}].name"), format!("{:?}: {e}", n.name))
                        })?
                        .to_string();
                    let mut scopes = Vec::new();
                    for (j, sc) in n.scopes.iter().enumerate() {
                        let scope = Scope::from_options(sc).map_err(|(key, why)| {
                            config_err(format!("nodes[{i}].scopes[{j}].{key}"), why)
                        })?;
                        scopes.push(scope);
                    }
                    out.push(NodeDef {
                        jid,
                        key_file: n.key_file.as_ref().map(|p| p.display().to_string()),
                        scopes,
                    });
                }
                out
            }
        };
        Ok(ScopeNodes {
            host: host.to_owned(),
            domain,
            nodes: if serves { nodes } else { Vec::new() },
            cert_service,
            trusted,
            seek_nodes,
            propagate: pubsub_nodes(&o.propagate_to),
            max_entries: o.max_entries_per_response,
            key_form: o.key_form,
            keys: Mutex::new(HashMap::new()),
            lookup: OnceLock::new(),
            stats: Mutex::new(BTreeMap::new()),
            last_expiry: Mutex::new(None),
            data: OnceLock::new(),
        })
    }
}

/// The module instance for one host.
pub struct ScopeNodes {
    /// The host.
    host: String,
    /// The ScopeNode domain.
    domain: String,
    /// ScopeNodes served.
    nodes: Vec<NodeDef>,
    /// Where node keys are published.
    cert_service: String,
    /// Certification services whose keys are believed (matched as exact strings).
    trusted: Vec<String>,
    /// SpimeSeek PubSub nodes to subscribe to.
    seek_nodes: Vec<PubSubNode>,
    /// PubSub nodes to re-publish seeks to.
    propagate: Vec<PubSubNode>,
    /// Entries per SpimeSeek response, newest first.
    max_entries: u64,
    /// How a node answers requests for its own key.
    key_form: FormOption,
    /// Node private keys by bare JID (loaded at start).
    keys: Mutex<HashMap<String, Arc<RsaPrivateKey>>>,
    /// Key lookups at certification services (made at start, it needs the context).
    lookup: OnceLock<KeyLookup>,
    /// Counters by name (reports accepted/rejected, seeks answered/ignored by reason).
    stats: Mutex<BTreeMap<String, u64>>,
    /// When retention was last enforced (it runs at most hourly, on the report path).
    last_expiry: Mutex<Option<std::time::Instant>>,
    /// The nodes' stored data (made at start, it needs the context's storage).
    data: OnceLock<SensorData>,
}

/// Why a report was refused: an OpenSpime error or a storage failure.
enum ReportError {
    /// Answered with the profile §7 error.
    Protocol(OpenSpimeError),
    /// Answered `internal-server-error` (wait).
    Storage(String),
    /// The scope does not exist.
    NoScope,
}

impl ScopeNodes {
    fn count(&self, what: &str) {
        if let Ok(mut s) = self.stats.lock() {
            // Counted for every report: no key allocated once the event is known.
            match s.get_mut(what) {
                Some(n) => *n += 1,
                None => {
                    s.insert(what.to_owned(), 1);
                }
            }
        }
        // The same events as Prometheus counters, the reason as a label; the accepted
        // reports' counter (one per report) is registered once.
        if what == "reports_accepted" {
            static ACCEPTED: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
            ACCEPTED
                .get_or_init(|| {
                    metrics::counter!("openspimed_scopenode_reports_total", "result" => "accepted", "reason" => "")
                })
                .increment(1);
            return;
        }
        let (name, result, reason) = if let Some(r) = what.strip_prefix("reports_rejected_") {
            ("openspimed_scopenode_reports_total", "rejected", r)
        } else if what == "reports_accepted" {
            ("openspimed_scopenode_reports_total", "accepted", "")
        } else if let Some(r) = what.strip_prefix("seeks_ignored_") {
            ("openspimed_scopenode_seeks_total", "ignored", r)
        } else {
            ("openspimed_scopenode_seeks_total", "answered", "")
        };
        metrics::counter!(name, "result" => result, "reason" => reason.to_owned()).increment(1);
    }

    /// The nodes' stored data.
    fn data(&self, cx: &Context) -> &SensorData {
        self.data
            .get_or_init(|| SensorData::new(cx.storage.clone()))
    }

    fn key(&self, node: &str) -> Option<Arc<RsaPrivateKey>> {
        self.keys.lock().ok().and_then(|k| k.get(node).cloned())
    }

    fn node_for(&self, to: &Jid) -> Option<&NodeDef> {
        let bare = to.to_bare().to_string();
        self.nodes.iter().find(|n| n.jid == bare)
    }

    async fn load_key(&self, cx: &Context, node: &NodeDef) -> Result<RsaPrivateKey, ModuleError> {
        if let Some(path) = &node.key_file {
            let pem = std::fs::read_to_string(path).map_err(|e| {
                config_err(
                    "nodes",
                    format!("node {}: cannot read {path}: {e}", node.jid),
                )
            })?;
            return openspime::crypto::private_key_from_pem(&pem)
                .map_err(|e| config_err("nodes", format!("node {}: {path}: {e}", node.jid)));
        }
        let store = self.data(cx);
        if let Some(der) = store.node_key(&node.jid).await.map_err(internal)? {
            return RsaPrivateKey::from_pkcs8_der(&der).map_err(internal);
        }
        let key = openspime::crypto::generate_key(2048).map_err(internal)?;
        let der = key.to_pkcs8_der().map_err(internal)?;
        store
            .put_node_key(&node.jid, der.as_bytes())
            .await
            .map_err(internal)?;
        tracing::info!(node = %node.jid, "generated a ScopeNode key");
        Ok(key)
    }

    fn lookup(&self) -> Result<&KeyLookup, OpenSpimeError> {
        self.lookup
            .get()
            .ok_or_else(|| OpenSpimeError::NoPublicKey("key lookup not started".into()))
    }

    /// The signer's key from a trusted service; re-fetched once after a failed check.
    async fn verify_signed(
        &self,
        cert: &str,
        signer: &str,
        payload: &Element,
        ctx: &str,
        signature: &str,
    ) -> Result<(), OpenSpimeError> {
        if !self.trusted.iter().any(|t| t == cert) {
            return Err(OpenSpimeError::UntrustedCertService(cert.to_owned()));
        }
        let lookup = self.lookup()?;
        for attempt in 0..2 {
            let key = lookup
                .key_for(cert, signer)
                .await
                .map_err(|_| OpenSpimeError::NoPublicKey(signer.to_owned()))?;
            let verified = openspime::crypto::verify(payload, ctx, signature, &key);
            metrics::counter!(
                "openspimed_openspime_signature_verifications_total",
                "result" => if verified.is_ok() { "valid" } else { "invalid" }
            )
            .increment(1);
            match verified {
                Ok(()) => return Ok(()),
                Err(e) if attempt == 1 => return Err(e),
                // The cached key may be stale (profile §4): fetch it again once.
                Err(_) => lookup.forget(cert, signer),
            }
        }
        Err(OpenSpimeError::BadSignature)
    }

    async fn report(
        &self,
        cx: &Context,
        node: &NodeDef,
        scope_name: Option<&str>,
        from: &Jid,
        container: &Element,
    ) -> Result<(), ReportError> {
        let proto = ReportError::Protocol;
        let scope = scope_name
            .and_then(|s| node.scopes.iter().find(|sc| sc.name == s))
            .ok_or(ReportError::NoScope)?;
        let c = Container::parse(container).map_err(proto)?;
        if scope.require_encryption && !c.is_encrypted() {
            return Err(proto(OpenSpimeError::InconsistentData(
                "this scope takes encrypted reports only".into(),
            )));
        }
        let key = self.key(&node.jid);
        let opened = c.open_borrowed(key.as_deref());
        if c.is_encrypted() {
            metrics::counter!(
                "openspimed_openspime_decryptions_total",
                "result" => if opened.is_ok() { "ok" } else { "failed" }
            )
            .increment(1);
        }
        let (payload, ctx) = opened.map_err(proto)?;
        match (
            c.signature(),
            c.originator.as_ref().and_then(|o| o.cert.as_deref()),
        ) {
            (Some(sig), Some(cert)) => {
                let signer = c
                    .originator
                    .as_ref()
                    .and_then(|o| o.osid.clone())
                    .unwrap_or_else(|| from.to_string());
                self.verify_signed(cert, &signer, &payload, &ctx, sig)
                    .await
                    .map_err(proto)?;
            }
            (Some(_), None) => {
                return Err(proto(OpenSpimeError::UntrustedCertService(String::new())));
            }
            (None, _) if scope.require_signature => {
                return Err(proto(OpenSpimeError::InconsistentData(
                    "this scope takes signed reports only".into(),
                )));
            }
            (None, _) => {}
        }
        let data = Data::parse(&payload).map_err(|_| proto(OpenSpimeError::MalformedTransport))?;
        if data.entries.is_empty() {
            return Err(proto(OpenSpimeError::InconsistentData("no entries".into())));
        }
        let now = openspime::date::now();
        let mut rows = Vec::with_capacity(data.entries.len());
        for entry in &data.entries {
            scope
                .check(entry)
                .map_err(|why| proto(OpenSpimeError::InconsistentData(why)))?;
            let at = entry
                .get("date")
                .and_then(|d| openspime::date::parse(d).ok())
                .unwrap_or(now);
            let mut xml = Vec::with_capacity(128);
            entry.write_in_data(&mut xml);
            rows.push(SensorEntry {
                node: node.jid.clone(),
                scope: scope.name.clone(),
                spime: from.to_string(),
                at_unix: at,
                // Written from `String`s: always UTF-8.
                xml: String::from_utf8(xml)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            });
        }
        self.data(cx)
            .append_entries(rows)
            .await
            .map_err(|e| ReportError::Storage(e.to_string()))?;
        self.enforce_retention(cx).await;
        Ok(())
    }

    /// Deletes entries past their scope's retention and expired seek records, at most
    /// once an hour.
    async fn enforce_retention(&self, cx: &Context) {
        let due = match self.last_expiry.lock() {
            Ok(mut last) => {
                let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600));
                if due {
                    *last = Some(std::time::Instant::now());
                }
                due
            }
            Err(_) => false,
        };
        if !due {
            return;
        }
        let now = openspime::date::now();
        let store = self.data(cx);
        for node in &self.nodes {
            for scope in node.scopes.iter().filter(|s| s.retention_days > 0) {
                let before = now - (scope.retention_days as i64) * 86_400;
                if let Err(e) = store.expire_entries(&node.jid, &scope.name, before).await {
                    tracing::warn!(%e, node = %node.jid, "expiring old entries failed");
                }
            }
        }
        for node in &self.nodes {
            let _ = store.forget_seeks(&node.jid, now).await;
        }
    }

    /// Handles one SpimeSeek request item; returns the reason it was ignored, if it was.
    async fn seek(&self, cx: &Context, node: &NodeDef, item: &Element) -> Result<(), &'static str> {
        let container = Container::find(item).ok_or("malformed")?;
        let c = Container::parse(container).map_err(|_| "malformed")?;
        let (payload, ctx) = c.open(None).map_err(|_| "malformed")?;
        let Ok(SpimeSeek::Request(req)) = SpimeSeek::parse(&payload) else {
            return Err("malformed");
        };
        let originator = c.originator.as_ref().ok_or("unsigned")?;
        let osid = originator.osid.clone().ok_or("no-originator")?;
        let osid_jid = Jid::new(&osid).map_err(|_| "no-originator")?;
        let expires = openspime::date::parse(&req.expdate).map_err(|_| "malformed")?;
        let now = openspime::date::now();
        if expires <= now {
            return Err("expired");
        }
        let store = self.data(cx);
        if store
            .seek_seen(&node.jid, &osid, &req.id)
            .await
            .map_err(|_| "storage")?
        {
            return Err("duplicate");
        }
        // Signature by the originator, from a trusted certification service.
        let (Some(sig), Some(cert)) = (originator.sign.as_deref(), originator.cert.as_deref())
        else {
            return Err("unsigned");
        };
        self.verify_signed(cert, &osid, &payload, &ctx, sig)
            .await
            .map_err(|e| match e {
                OpenSpimeError::UntrustedCertService(_) => "untrusted-cert",
                OpenSpimeError::NoPublicKey(_) => "no-key",
                _ => "bad-signature",
            })?;
        // Authorization (profile §9.3): the spime itself, or a valid claim key for it.
        let spime = Jid::new(&req.spimeid).map_err(|_| "malformed")?;
        if osid_jid != spime {
            let ck = originator.claimkey.as_ref().ok_or("no-claim-key")?;
            if !self.trusted.contains(&ck.cert) {
                return Err("untrusted-cert");
            }
            if Jid::new(&ck.claims).ok().as_ref() != Some(&spime) {
                return Err("claim-mismatch");
            }
            let claimed_key = self
                .lookup()
                .map_err(|_| "no-key")?
                .key_for(&ck.cert, &req.spimeid)
                .await
                .map_err(|_| "no-key")?;
            let claim = openspime::crypto::open_claim_key(&ck.blob, &claimed_key)
                .map_err(|_| "bad-claim-key")?;
            let authorized = Jid::new(&claim.osid).map_err(|_| "bad-claim-key")?;
            if authorized != osid_jid && authorized != osid_jid.to_bare() {
                return Err("claim-other-owner");
            }
            let claim_exp = openspime::date::parse(&claim.expdate).map_err(|_| "bad-claim-key")?;
            if claim_exp <= now {
                return Err("claim-expired");
            }
        }
        if !store
            .remember_seek(&node.jid, &osid, &req.id, expires)
            .await
            .map_err(|_| "storage")?
        {
            return Err("duplicate");
        }
        // Propagation (seed §1.2.0): the de-duplication above prevents loops.
        for (service, pnode) in &self.propagate {
            let publish = iq_set(
                &node.jid,
                service,
                Element::new("pubsub", PUBSUB).with_child(
                    Element::new("publish", PUBSUB)
                        .with_attr("node", pnode.clone())
                        .with_child(item.clone()),
                ),
            );
            cx.server.send(publish);
        }
        let entries = store
            .entries_for_spime(&node.jid, &spime.to_string(), self.max_entries)
            .await
            .map_err(|_| "storage")?;
        if entries.is_empty() {
            return Err("no-entries");
        }
        // Answer per scope, from the scope's JID, entries newest first.
        let mut by_scope: BTreeMap<&str, Vec<openspime::Entry>> = BTreeMap::new();
        for e in &entries {
            let Ok(el) = Element::parse(&e.xml) else {
                continue;
            };
            let wrapped = Element::new("data", openspime::ns::DATA).with_child(el);
            if let Ok(mut d) = Data::parse(&wrapped) {
                by_scope
                    .entry(e.scope.as_str())
                    .or_default()
                    .append(&mut d.entries);
            }
        }
        let recipient_key = if req.encrequired {
            Some(
                self.lookup()
                    .map_err(|_| "no-key")?
                    .key_for(cert, &osid)
                    .await
                    .map_err(|_| "no-key")?,
            )
        } else {
            None
        };
        for (scope, entries) in by_scope {
            let response = SpimeSeek::Response {
                id: req.id.clone(),
                entries,
            };
            let sealed = Container::seal(response.to_element(), None, None, recipient_key.as_ref())
                .map_err(|_| "encryption-failed")?;
            let msg = Element::new("message", ns::CLIENT)
                .with_attr("from", format!("{}/{scope}", node.jid))
                .with_attr("to", osid.clone())
                .with_attr("id", random_id())
                .with_child(sealed.to_element());
            cx.server.send(msg);
        }
        Ok(())
    }

    /// disco#info and disco#items of the ScopeNode domain itself (XEP-0030), as a hosted
    /// service domain answers: its identity and features, and the nodes as items.
    fn domain_disco(&self, stanza: &Element) -> Outcome {
        let get = stanza.attr("type") == Some("get");
        match stanza
            .first_child()
            .map(|p| (p.ns(), p.name(), p.attr("node")))
        {
            Some((ns::DISCO_INFO, "query", None)) if get => {
                let mut q = Element::new("query", ns::DISCO_INFO).with_child(
                    Element::new("identity", ns::DISCO_INFO)
                        .with_attr("category", "component")
                        .with_attr("type", "generic")
                        .with_attr("name", "OpenSpime ScopeNodes"),
                );
                for var in [
                    ns::DISCO_INFO,
                    ns::DISCO_ITEMS,
                    openspime::ns::DATA,
                    openspime::ns::SPIMESEEK,
                ] {
                    q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", var));
                }
                Outcome::Reply(iq_result(stanza).with_child(q))
            }
            Some((ns::DISCO_ITEMS, "query", None)) if get => {
                let mut q = Element::new("query", ns::DISCO_ITEMS);
                for n in &self.nodes {
                    q.push_child(
                        Element::new("item", ns::DISCO_ITEMS)
                            .with_attr("jid", n.jid.clone())
                            .with_attr("name", "ScopeNode"),
                    );
                }
                Outcome::Reply(iq_result(stanza).with_child(q))
            }
            Some((ns::DISCO_INFO | ns::DISCO_ITEMS, "query", Some(_))) => {
                Outcome::Error(Condition::ItemNotFound.into())
            }
            _ => Outcome::Error(Condition::ServiceUnavailable.into()),
        }
    }

    fn stats_form(&self) -> Element {
        let data = "jabber:x:data";
        let mut x = Element::new("x", data)
            .with_attr("type", "result")
            .with_child(
                Element::new("field", data)
                    .with_attr("var", "FORM_TYPE")
                    .with_attr("type", "hidden")
                    .with_child(Element::new("value", data).with_text(STATS_FORM)),
            );
        if let Ok(stats) = self.stats.lock() {
            for (k, v) in stats.iter() {
                x.push_child(
                    Element::new("field", data)
                        .with_attr("var", k.clone())
                        .with_child(Element::new("value", data).with_text(v.to_string())),
                );
            }
        }
        x
    }
}

/// An iq set from one of our JIDs, with a fresh id.
fn iq_set(from: &str, to: &str, payload: Element) -> Element {
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "set")
        .with_attr("id", random_id())
        .with_attr("from", from)
        .with_attr("to", to)
        .with_child(payload)
}

fn random_id() -> String {
    let mut b = [0u8; 8];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[async_trait]
impl Module for ScopeNodes {
    fn name(&self) -> &'static str {
        "scopenode"
    }

    fn routes(&self) -> Vec<Route> {
        if self.nodes.is_empty() {
            return Vec::new();
        }
        if self.domain == self.host {
            // ScopeNodes on the host domain itself own their exact JIDs only.
            let mut r = Vec::new();
            for n in &self.nodes {
                r.push(Route::Jid(n.jid.clone()));
                for s in &n.scopes {
                    r.push(Route::Jid(format!("{}/{}", n.jid, s.name)));
                }
            }
            return r;
        }
        vec![Route::Domain(self.domain.clone())]
    }

    async fn start(&self, cx: &Context) -> Result<(), ModuleError> {
        if self.nodes.is_empty() {
            return Ok(());
        }
        let _ = self.lookup.set(KeyLookup::new(
            cx.clone(),
            self.nodes[0].jid.clone(),
            Duration::from_secs(200),
            10_000,
            Duration::from_secs(10),
        ));
        for node in &self.nodes {
            let key = self.load_key(cx, node).await?;
            let publish = iq_set(
                &node.jid,
                &self.cert_service,
                keyinfo::pubkeys(&node.jid, &key.to_public_key(), KeyForm::Standard),
            );
            self.keys
                .lock()
                .map_err(|_| internal("key table poisoned"))?
                .insert(node.jid.clone(), Arc::new(key));
            // Register the node's key with the certification service (profile §4: the
            // key's own JID publishes it).
            match cx.server.send_iq(publish, Duration::from_secs(10)).await {
                Ok(r) if r.attr("type") == Some("result") => {}
                other => tracing::warn!(node = %node.jid, service = %self.cert_service, ?other,
                    "could not publish the ScopeNode key"),
            }
            for (service, pnode) in &self.seek_nodes {
                let sub = iq_set(
                    &node.jid,
                    service,
                    Element::new("pubsub", PUBSUB).with_child(
                        Element::new("subscribe", PUBSUB)
                            .with_attr("node", pnode.clone())
                            .with_attr("jid", node.jid.clone()),
                    ),
                );
                match cx.server.send_iq(sub, Duration::from_secs(10)).await {
                    Ok(r) if r.attr("type") == Some("result") => {}
                    other => tracing::warn!(node = %node.jid, %service, ?other,
                        "could not subscribe to SpimeSeek requests"),
                }
            }
        }
        let store = self.data(cx);
        for node in &self.nodes {
            let _ = store.forget_seeks(&node.jid, openspime::date::now()).await;
        }
        Ok(())
    }

    async fn handle(&self, cx: &Context, stanza: Element) -> Result<Outcome, ModuleError> {
        let Some(to) = stanza.attr("to").and_then(|t| Jid::new(t).ok()) else {
            return Ok(Outcome::Handled);
        };
        let is_request =
            stanza.name() == "iq" && matches!(stanza.attr("type"), Some("get" | "set"));
        if to.node().is_none() && to.resource().is_none() && is_request {
            return Ok(self.domain_disco(&stanza));
        }
        let Some(node) = self.node_for(&to) else {
            return Ok(if is_request {
                Outcome::Error(Condition::ItemNotFound.into())
            } else {
                Outcome::Handled
            });
        };
        let Some(from) = stanza.attr("from").and_then(|f| Jid::new(f).ok()) else {
            return Ok(Outcome::Handled);
        };
        // SpimeSeek requests, as notifications from the subscribed PubSub services.
        let event = (stanza.name() == "message")
            .then(|| stanza.get_child("event", PUBSUB_EVENT))
            .flatten();
        if let Some(event) = event {
            let from_service = self
                .seek_nodes
                .iter()
                .any(|(s, _)| s == from.domain().as_str());
            for items in event.children().filter(|c| c.name() == "items") {
                for item in items.children().filter(|c| c.name() == "item") {
                    let outcome = if from_service {
                        self.seek(cx, node, item).await
                    } else {
                        Err("not-from-a-seek-service")
                    };
                    match outcome {
                        Ok(()) => self.count("seeks_answered"),
                        Err(reason) => {
                            tracing::debug!(node = %node.jid, reason, "SpimeSeek request ignored");
                            self.count(&format!("seeks_ignored_{reason}"));
                        }
                    }
                }
            }
            return Ok(Outcome::Handled);
        }
        if let Some(container) = Container::find(&stanza) {
            if stanza.name() == "iq" && stanza.attr("type") != Some("set") {
                return Ok(Outcome::Error(Condition::BadRequest.into()));
            }
            let res = self
                .report(
                    cx,
                    node,
                    to.resource().map(|r| r.as_str()),
                    &from,
                    container,
                )
                .await;
            let err = match res {
                Ok(()) => {
                    self.count("reports_accepted");
                    return Ok(if stanza.name() == "iq" {
                        Outcome::Reply(iq_result(&stanza))
                    } else {
                        Outcome::Handled
                    });
                }
                Err(ReportError::Protocol(e)) => {
                    let reason = e
                        .to_stanza_error()
                        .app
                        .map(|a| a.name().to_owned())
                        .unwrap_or_default();
                    self.count(&format!("reports_rejected_{reason}"));
                    e.to_stanza_error()
                }
                Err(ReportError::Storage(why)) => {
                    tracing::error!(node = %node.jid, why, "storing a report failed");
                    self.count("reports_rejected_storage");
                    StanzaError::new(Condition::BadRequest)
                        .with_type(ErrorType::Wait)
                        .with_app(Element::new("internal-server-error", ns::XMPP_STANZAS))
                        .with_text(
                            "server could not complete the request because of an internal error",
                        )
                }
                Err(ReportError::NoScope) => {
                    self.count("reports_rejected_no-scope");
                    StanzaError::new(Condition::ItemNotFound)
                        .with_text("no such scope at this ScopeNode")
                }
            };
            // Profile §7: errors answer iqs; a failing message is dropped (and counted).
            return Ok(if stanza.name() == "iq" {
                Outcome::Error(err)
            } else {
                Outcome::Handled
            });
        }
        if !is_request {
            return Ok(Outcome::Handled);
        }
        let payload = stanza.first_child();
        match payload.map(|p| (p.ns(), p.name())) {
            Some((openspime::ns::PUBKEY, "pubkeys")) if stanza.attr("type") == Some("get") => {
                let asked = payload.and_then(|p| p.attr("jid")).unwrap_or("");
                let mine = Jid::new(asked).is_ok_and(|j| j.to_bare().to_string() == node.jid);
                match (mine, self.key(&node.jid)) {
                    (true, Some(key)) => Ok(Outcome::Reply(iq_result(&stanza).with_child(
                        keyinfo::pubkeys(
                            asked,
                            &key.to_public_key(),
                            self.key_form.for_request(&stanza),
                        ),
                    ))),
                    _ => Ok(Outcome::Error(Condition::ItemNotFound.into())),
                }
            }
            Some((ns::DISCO_INFO, "query")) if stanza.attr("type") == Some("get") => {
                let q = Element::new("query", ns::DISCO_INFO)
                    .with_child(
                        Element::new("identity", ns::DISCO_INFO)
                            .with_attr("category", "component")
                            .with_attr("type", "generic")
                            .with_attr("name", "OpenSpime ScopeNode"),
                    )
                    .with_child(
                        Element::new("feature", ns::DISCO_INFO)
                            .with_attr("var", openspime::ns::DATA),
                    )
                    .with_child(
                        Element::new("feature", ns::DISCO_INFO)
                            .with_attr("var", openspime::ns::SPIMESEEK),
                    )
                    .with_child(
                        Element::new("feature", ns::DISCO_INFO)
                            .with_attr("var", openspime::ns::PUBKEY),
                    )
                    .with_child(self.stats_form());
                Ok(Outcome::Reply(iq_result(&stanza).with_child(q)))
            }
            _ => Ok(Outcome::Error(Condition::ServiceUnavailable.into())),
        }
    }
}
