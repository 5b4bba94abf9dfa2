//! XEP-0060 Publish-Subscribe: a service per configured domain (default `pubsub.HOST`),
//! persistent nodes, items and subscriptions through [`PubSubStore`], notifications with
//! payloads routed like any stanza (so subscribers can be local sessions, hosted services
//! or — with federation — remote JIDs), and preconfigured nodes such as OpenSpime's
//! `spimeseek` (seed §1.2, wire profile §9). The same engine serves PEP (XEP-0163): each
//! account of the host is a service at its bare JID (`PepNotice` sends its notifications).
//!
//! Options (`[modules.pubsub]`):
//! ```toml
//! [modules.pubsub]
//! services = ["pubsub.example.org"]          # default: pubsub.HOST for each host
//! pep = true                                 # PEP (XEP-0163) on the host's accounts
//! [[modules.pubsub.nodes]]                   # default: one spimeseek node per service
//! name = "spimeseek"
//! service = "pubsub.example.org"             # default: every service
//! deliver_payloads = true
//! access_model = "open"
//! publish_model = "open"
//! publish_domains = ["example.org"]          # who may publish (empty: anyone)
//! subscribe_domains = ["scopenode.example.org"]   # who may subscribe (empty: anyone)
//! max_items = 100
//! ```

pub mod caps;
pub mod config;
pub mod forms;
pub mod options;
pub mod suboptions;

use std::collections::HashMap;
use std::sync::Arc;

use openspimed_module_api::jid::Jid;
use openspimed_module_api::{
    Condition, Context, Element, ItemRecord, Module, ModuleError, ModuleFactory, Outcome, Route,
    StanzaError, SubscriptionRecord, async_trait, iq_result, ns, toml,
};
use rand::RngCore;
use tokio::sync::RwLock;

use crate::config::{AccessModel, NodeConfig, PublishModel};
use crate::forms::Form;
pub use crate::options::Options;
use crate::suboptions::SubOptions;

/// XEP-0060 namespaces.
pub mod pns {
    /// Entity use cases.
    pub const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
    /// Owner use cases.
    pub const OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
    /// Notifications.
    pub const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
    /// Application error conditions.
    pub const ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
}

/// FORM_TYPE of subscription approval requests (XEP-0060 §8.6).
const AUTHORIZATION: &str = "http://jabber.org/protocol/pubsub#subscribe_authorization";

/// The features this service supports (XEP-0060 §10), advertised in disco#info.
const FEATURES: &[&str] = &[
    "access-authorize",
    "access-open",
    "access-presence",
    "access-whitelist",
    "config-node",
    "create-and-configure",
    "create-nodes",
    "delete-items",
    "delete-nodes",
    "instant-nodes",
    "item-ids",
    "manage-subscriptions",
    "modify-affiliations",
    "persistent-items",
    "publish",
    "publish-options",
    "purge-nodes",
    "retract-items",
    "retrieve-affiliations",
    "retrieve-items",
    "retrieve-subscriptions",
    "subscribe",
    "subscription-options",
    "retrieve-default-sub",
];

fn internal(e: impl std::fmt::Display) -> ModuleError {
    ModuleError::Internal(e.to_string())
}

/// An XEP-0060 error: a defined condition with a pubsub#errors application condition.
fn ps_error(cond: Condition, app: Option<&str>) -> Outcome {
    let mut e = StanzaError::new(cond);
    if let Some(a) = app {
        e = e.with_app(Element::new(a, pns::ERRORS));
    }
    Outcome::Error(e)
}

fn random_id() -> String {
    let mut b = [0u8; 12];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A node as the module keeps it in memory (the store has the durable copy).
#[derive(Clone, Debug, Default)]
struct Node {
    /// Configuration.
    config: NodeConfig,
    /// Bare JID → affiliation.
    affiliations: HashMap<String, String>,
    /// Subscriptions.
    subscriptions: Vec<SubscriptionRecord>,
}

impl Node {
    fn affiliation(&self, bare: &str) -> &str {
        self.affiliations
            .get(bare)
            .map(String::as_str)
            .unwrap_or("none")
    }
    fn is_owner(&self, bare: &str) -> bool {
        self.affiliation(bare) == "owner"
    }
    fn subscribed(&self, jid: &Jid) -> bool {
        let (full, bare) = (jid.to_string(), jid.to_bare().to_string());
        self.subscriptions
            .iter()
            .any(|s| s.state == "subscribed" && (s.jid == full || s.jid == bare))
    }
}

/// One PubSub service (one JID).
struct Service {
    /// The service JID: a domain, or an account's bare JID for its PEP service.
    jid: String,
    /// A PEP service (XEP-0163): only the account publishes, its nodes are created by its
    /// first publish, and notifications also go to the account's own resources and to
    /// contacts that receive its presence and advertise `NODE+notify`.
    pep: bool,
    /// Nodes by name. Replaced per node on change; read briefly.
    nodes: RwLock<HashMap<String, Arc<Node>>>,
}

impl Service {
    /// The nodes as they are now, by name.
    async fn snapshot(&self) -> Vec<(String, Arc<Node>)> {
        let mut nodes: Vec<(String, Arc<Node>)> = self
            .nodes
            .read()
            .await
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        nodes
    }
}

/// A node preconfigured in the configuration file.
#[derive(Clone, Debug)]
struct Preconfigured {
    /// Node name.
    name: String,
    /// Only on this service (all when `None`).
    service: Option<String>,
    /// Its configuration (the file is authoritative at every start).
    config: NodeConfig,
}

/// Registers the `pubsub` module.
pub struct Factory;

fn preconfigured(host: &str, o: &Options) -> Vec<Preconfigured> {
    let Some(nodes) = &o.nodes else {
        // The embedded default: OpenSpime's spimeseek node, payloads on, publishing open to
        // entities of this host, subscription open to its ScopeNodes.
        return vec![Preconfigured {
            name: "spimeseek".into(),
            service: None,
            config: NodeConfig {
                title: "OpenSpime SpimeSeek requests".into(),
                deliver_payloads: true,
                publish_model: PublishModel::Open,
                access_model: AccessModel::Open,
                publish_domains: vec![host.to_owned()],
                subscribe_domains: vec![format!("scopenode.{host}")],
                max_items: Some(100),
                ..NodeConfig::default()
            },
        }];
    };
    nodes
        .iter()
        .map(|n| Preconfigured {
            name: n.name.clone(),
            service: n.service.clone(),
            config: n.config(),
        })
        .collect()
}

impl ModuleFactory for Factory {
    fn name(&self) -> &'static str {
        "pubsub"
    }
    fn build(&self, host: &str, options: &toml::Table) -> Result<Arc<dyn Module>, ModuleError> {
        let o: Options = openspimed_module_api::options::parse("pubsub", options)?;
        let services = match &o.services {
            None => vec![format!("pubsub.{host}")],
            Some(list) => list
                .iter()
                .filter(|s| *s == host || s.ends_with(&format!(".{host}")))
                .cloned()
                .collect(),
        };
        Ok(Arc::new(PubSub {
            host: host.to_owned(),
            services: services
                .into_iter()
                .map(|jid| Service {
                    jid,
                    pep: false,
                    nodes: RwLock::new(HashMap::new()),
                })
                .collect(),
            pep_enabled: o.pep,
            pep: Default::default(),
            caps: Default::default(),
            preconfigured: preconfigured(host, &o),
        }))
    }
    fn option_keys(&self) -> Vec<String> {
        openspimed_module_api::options::keys(&Options::sample())
    }
}

/// The module instance for one host.
pub struct PubSub {
    /// The host domain: its accounts may create nodes.
    host: String,
    /// Services of this host.
    services: Vec<Service>,
    /// Whether the host's accounts have PEP services (option `pep`, default on).
    pep_enabled: bool,
    /// PEP services by account bare JID, loaded from the store on first use.
    pep: PepServices,
    /// Verified entity capabilities, for `+notify` filtering.
    caps: Arc<caps::CapsCache>,
    /// Nodes from the configuration file.
    preconfigured: Vec<Preconfigured>,
}

#[async_trait]
impl Module for PubSub {
    fn name(&self) -> &'static str {
        "pubsub"
    }

    fn routes(&self) -> Vec<Route> {
        let mut routes: Vec<Route> = self
            .services
            .iter()
            .map(|s| Route::Domain(s.jid.clone()))
            .collect();
        if self.pep_enabled {
            routes.push(Route::AccountIq(pns::PUBSUB));
            routes.push(Route::AccountIq(pns::OWNER));
            routes.push(Route::AccountIq(ns::DISCO_INFO));
            routes.push(Route::AccountIq(ns::DISCO_ITEMS));
            routes.push(Route::InitialPresence);
        }
        routes
    }

    async fn start(&self, cx: &Context) -> Result<(), ModuleError> {
        let store = cx.storage.pubsub();
        for svc in &self.services {
            for p in &self.preconfigured {
                if p.service.as_deref().is_some_and(|s| s != svc.jid) {
                    continue;
                }
                let text = p.config.serialize();
                if !store
                    .create_node(&svc.jid, &p.name, &text, "")
                    .await
                    .map_err(internal)?
                {
                    store
                        .set_node_config(&svc.jid, &p.name, &text)
                        .await
                        .map_err(internal)?;
                }
            }
            *svc.nodes.write().await = load_nodes(cx, &svc.jid).await?;
        }
        Ok(())
    }

    async fn handle(&self, cx: &Context, stanza: Element) -> Result<Outcome, ModuleError> {
        if stanza.name() == "presence" {
            // An account's initial presence (Route::InitialPresence): the last items, from
            // a task of their own (capabilities may have to be asked for).
            if self.pep_enabled && stanza.attr("type").is_none() {
                tokio::spawn(send_last_items(
                    cx.clone(),
                    self.caps.clone(),
                    self.pep.clone(),
                    self.host.clone(),
                    stanza,
                ));
            }
            return Ok(Outcome::Handled);
        }
        let approval = stanza.name() == "message"
            && stanza.attr("type") != Some("error")
            && stanza.get_child("x", forms::DATA).is_some();
        let request = stanza.name() == "iq" && matches!(stanza.attr("type"), Some("get" | "set"));
        if !request && !approval {
            return Ok(Outcome::Handled);
        }
        let Some(from) = stanza.attr("from").and_then(|f| Jid::new(f).ok()) else {
            return Ok(Outcome::Error(Condition::BadRequest.into()));
        };
        let to = match stanza.attr("to") {
            None => None,
            Some(t) => match Jid::new(t) {
                Ok(j) => Some(j),
                Err(_) => return Ok(Outcome::Error(Condition::JidMalformed.into())),
            },
        };
        // An account's bare JID, or no `to` (one's own account): its PEP service.
        let pep_owner = match &to {
            None => Some(from.to_bare()),
            Some(t) if t.node().is_some() => Some(t.to_bare()),
            Some(_) => None,
        };
        let pep_svc;
        let svc: &Service = match pep_owner {
            Some(owner) if request && self.pep_enabled => {
                let by_owner = owner == from.to_bare();
                pep_svc = pep_service(&self.pep, cx, &owner.to_string(), by_owner).await?;
                &pep_svc
            }
            Some(_) => return Ok(Outcome::Error(Condition::ServiceUnavailable.into())),
            None => {
                let Some(svc) = to
                    .as_ref()
                    .and_then(|t| self.services.iter().find(|s| s.jid == t.domain().as_str()))
                else {
                    return Ok(Outcome::Error(Condition::ItemNotFound.into()));
                };
                svc
            }
        };
        let Some(payload) = stanza.first_child() else {
            return Ok(Outcome::Error(Condition::BadRequest.into()));
        };
        let req = Request {
            cx,
            svc,
            stanza: &stanza,
            from,
            host: &self.host,
            caps: &self.caps,
        };
        if approval {
            return req.approval().await;
        }
        let get = stanza.attr("type") == Some("get");
        match (payload.ns(), get) {
            (pns::PUBSUB, _) => req.pubsub(payload, get).await,
            (pns::OWNER, _) => req.owner(payload, get).await,
            (ns::DISCO_INFO, true) => req.disco_info(payload).await,
            (ns::DISCO_ITEMS, true) => req.disco_items(payload).await,
            _ => Ok(Outcome::Error(Condition::ServiceUnavailable.into())),
        }
    }
}

/// A service's nodes, affiliations and subscriptions as stored.
async fn load_nodes(cx: &Context, jid: &str) -> Result<HashMap<String, Arc<Node>>, ModuleError> {
    let store = cx.storage.pubsub();
    let mut nodes: HashMap<String, Node> = store
        .nodes(jid)
        .await
        .map_err(internal)?
        .into_iter()
        .map(|n| {
            (
                n.node,
                Node {
                    config: NodeConfig::deserialize(&n.config),
                    ..Node::default()
                },
            )
        })
        .collect();
    for a in store.affiliations(jid).await.map_err(internal)? {
        if let Some(n) = nodes.get_mut(&a.node) {
            n.affiliations.insert(a.jid, a.affiliation);
        }
    }
    for s in store.subscriptions(jid).await.map_err(internal)? {
        if let Some(n) = nodes.get_mut(&s.node) {
            n.subscriptions.push(s);
        }
    }
    Ok(nodes.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())
}

/// PEP services by account bare JID, shared with the tasks that send last items.
type PepServices = Arc<tokio::sync::Mutex<HashMap<String, Arc<Service>>>>;

/// The PEP service of a local account, loaded on first use.
/// A service without nodes is kept only when its own account asks (`by_owner`): anyone
/// may address any bare JID, and keeping an empty service for each would let strangers
/// grow the map without bound. Nothing can change in an empty service but through its
/// owner, whose request keeps it.
async fn pep_service(
    pep: &PepServices,
    cx: &Context,
    bare: &str,
    by_owner: bool,
) -> Result<Arc<Service>, ModuleError> {
    let mut services = pep.lock().await;
    if let Some(svc) = services.get(bare) {
        return Ok(svc.clone());
    }
    let nodes = load_nodes(cx, bare).await?;
    let keep = by_owner || !nodes.is_empty();
    let svc = Arc::new(Service {
        jid: bare.to_owned(),
        pep: true,
        nodes: RwLock::new(nodes),
    });
    if keep {
        services.insert(bare.to_owned(), svc.clone());
    }
    Ok(svc)
}

/// XEP-0163 §4.3.4: a resource that just became available gets the last item of each node
/// it wants (`NODE+notify`) of its own account's PEP service and of the local accounts
/// whose presence it receives.
async fn send_last_items(
    cx: Context,
    caps: Arc<caps::CapsCache>,
    pep: PepServices,
    host: String,
    presence: Element,
) {
    let Some(full) = presence.attr("from").map(str::to_owned) else {
        return;
    };
    let Some(bare) = Jid::new(&full).ok().map(|j| j.to_bare().to_string()) else {
        return;
    };
    let mut sources = vec![bare.clone()];
    sources.extend(cx.server.presence_sources(&bare).await);
    for source in sources {
        if source.rsplit_once('@').map(|(_, d)| d) != Some(host.as_str())
            || cx.server.blocks(&source, &bare).await
        {
            continue;
        }
        let Ok(svc) = pep_service(&pep, &cx, &source, false).await else {
            continue;
        };
        for (name, node) in svc.snapshot().await {
            let visible = source == bare
                || matches!(
                    node.config.access_model,
                    AccessModel::Presence | AccessModel::Open
                );
            if !visible
                || !wants(
                    &cx,
                    &caps,
                    &source,
                    &full,
                    &presence,
                    &format!("{name}+notify"),
                )
                .await
            {
                continue;
            }
            let Ok(last) = cx
                .storage
                .pubsub()
                .items(&source, &name, None, Some(1))
                .await
            else {
                continue;
            };
            for it in last {
                let mut item = Element::new("item", pns::EVENT).with_attr("id", it.id);
                if node.config.deliver_payloads
                    && let Ok(p) = Element::parse(&it.payload)
                {
                    item.push_child(p);
                }
                let event = Element::new("event", pns::EVENT).with_child(
                    Element::new("items", pns::EVENT)
                        .with_attr("node", name.clone())
                        .with_child(item),
                );
                send_event(&cx, &source, &full, &event, true);
            }
        }
    }
}

/// Whether a resource's entity capabilities include `feature`: from the cache, else by
/// asking the resource from `asker` (XEP-0115 §6.2) and keeping the answer when its hash
/// checks.
async fn wants(
    cx: &Context,
    caps: &caps::CapsCache,
    asker: &str,
    full: &str,
    presence: &Element,
    feature: &str,
) -> bool {
    let Some(c) = caps::caps_of(presence) else {
        return false;
    };
    if let Some(features) = caps.get(&c.ver) {
        return features.iter().any(|f| f == feature);
    }
    let ask = Element::new("iq", ns::CLIENT)
        .with_attr("type", "get")
        .with_attr("from", asker.to_owned())
        .with_attr("to", full.to_owned())
        .with_attr("id", random_id())
        .with_child(
            Element::new("query", ns::DISCO_INFO)
                .with_attr("node", format!("{}#{}", c.node, c.ver)),
        );
    let answer = match cx
        .server
        .send_iq(ask, std::time::Duration::from_secs(10))
        .await
    {
        Ok(a) if a.attr("type") == Some("result") => a,
        _ => return false,
    };
    let Some(query) = answer.get_child("query", ns::DISCO_INFO) else {
        return false;
    };
    let features = Arc::new(caps::features_of(query));
    if c.hash == "sha-1" && caps::ver_of(query) == c.ver {
        caps.put(&c.ver, features.clone());
    }
    features.iter().any(|f| f == feature)
}

/// XEP-0163 §5: the configuration of a PEP node created by a publish.
fn pep_defaults() -> NodeConfig {
    NodeConfig {
        deliver_payloads: true,
        persist_items: true,
        max_items: Some(1),
        access_model: AccessModel::Presence,
        publish_model: PublishModel::Publishers,
        ..NodeConfig::default()
    }
}

/// A message carrying an `<event/>` (PEP notifications are headlines, XEP-0163 §4.3).
fn event_message(from: &str, to: &str, event: Element, headline: bool) -> Element {
    let mut msg = Element::new("message", ns::CLIENT)
        .with_attr("from", from.to_owned())
        .with_attr("to", to.to_owned())
        .with_attr("id", random_id())
        .with_child(event);
    if headline {
        msg.set_attr("type", "headline");
    }
    msg
}

/// Sends one item notification (counted as such).
fn send_event(cx: &Context, from: &str, to: &str, event: &Element, headline: bool) {
    notifications().increment(1);
    cx.server
        .send(event_message(from, to, event.clone(), headline));
}

/// A PEP event on its way to the resources that want it: the account's own and those of the
/// contacts chosen at publish time — each when its entity capabilities include
/// `NODE+notify` (XEP-0163 §4). Only resources on this server are known.
struct PepNotice {
    /// To reach the server.
    cx: Context,
    /// Verified capabilities.
    caps: Arc<caps::CapsCache>,
    /// The account (the PEP service's JID, the notifications' `from`).
    owner: String,
    /// The account and the contacts that may receive it (not blocked, and seeing the node
    /// under its access model).
    accounts: Vec<String>,
    /// Explicit subscribers, already notified.
    already: Vec<String>,
    /// The `<event/>` to send.
    event: Element,
}

impl PepNotice {
    async fn send(self) {
        let Some(name) = self.event.first_child().and_then(|c| c.attr("node")) else {
            return;
        };
        let wanted = format!("{name}+notify");
        for account in &self.accounts {
            for (full, presence) in self.cx.server.available_presences(account) {
                if !self.already.contains(&full)
                    && wants(&self.cx, &self.caps, &self.owner, &full, &presence, &wanted).await
                {
                    send_event(&self.cx, &self.owner, &full, &self.event, true);
                }
            }
        }
    }
}

/// One request being handled.
struct Request<'a> {
    /// Module context.
    cx: &'a Context,
    /// The service addressed.
    svc: &'a Service,
    /// The iq.
    stanza: &'a Element,
    /// The authenticated sender.
    from: Jid,
    /// The host domain.
    host: &'a str,
    /// Verified entity capabilities (PEP notifications).
    caps: &'a Arc<caps::CapsCache>,
}

/// `openspimed_pubsub_notifications_total`, registered once (counted per subscriber).
fn notifications() -> &'static metrics::Counter {
    static C: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    C.get_or_init(|| metrics::counter!("openspimed_pubsub_notifications_total"))
}

/// `openspimed_pubsub_publishes_total`, registered once.
fn publishes() -> &'static metrics::Counter {
    static C: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    C.get_or_init(|| metrics::counter!("openspimed_pubsub_publishes_total"))
}

fn domain_allowed(list: &[String], jid: &Jid) -> bool {
    list.is_empty() || list.iter().any(|d| d == jid.domain().as_str())
}

impl Request<'_> {
    fn bare(&self) -> String {
        self.from.to_bare().to_string()
    }

    fn reply(&self, pubsub_ns: &str, child: Option<Element>) -> Outcome {
        let mut r = iq_result(self.stanza);
        if let Some(c) = child {
            r.push_child(Element::new("pubsub", pubsub_ns.to_owned()).with_child(c));
        }
        Outcome::Reply(r)
    }

    async fn node(&self, name: &str) -> Option<Arc<Node>> {
        self.svc.nodes.read().await.get(name).cloned()
    }

    async fn update_node(&self, name: &str, f: impl FnOnce(&mut Node)) {
        let mut nodes = self.svc.nodes.write().await;
        if let Some(n) = nodes.get(name) {
            let mut copy = (**n).clone();
            f(&mut copy);
            nodes.insert(name.to_owned(), Arc::new(copy));
        }
    }

    /// Sends a notification to every subscriber of a node; on a PEP service also, from a
    /// task of its own (finding out who wants it may mean asking their clients), to the
    /// resources that want it (XEP-0163 §4).
    async fn notify(&self, node: &Node, event_child: Element) {
        let subscribers: Vec<String> = node
            .subscriptions
            .iter()
            .filter(|s| s.state == "subscribed" && s.deliver)
            .map(|s| s.jid.clone())
            .collect();
        let event = Element::new("event", pns::EVENT).with_child(event_child);
        for jid in &subscribers {
            // XEP-0163 §4.3.3: nothing on an account's behalf to whom it blocks.
            if self.svc.pep && self.cx.server.blocks(&self.svc.jid, jid).await {
                continue;
            }
            send_event(self.cx, &self.svc.jid, jid, &event, self.svc.pep);
        }
        if self.svc.pep {
            // Who may get it is settled now, at publish time; only the capability
            // questions wait for the task.
            let owner = self.svc.jid.clone();
            let mut accounts = vec![owner.clone()];
            if matches!(
                node.config.access_model,
                AccessModel::Presence | AccessModel::Open
            ) {
                for contact in self.cx.server.presence_subscribers(&owner).await {
                    // XEP-0163 §4.3.3: nothing on an account's behalf to whom it blocks.
                    if !self.cx.server.blocks(&owner, &contact).await {
                        accounts.push(contact);
                    }
                }
            }
            let pep = PepNotice {
                cx: self.cx.clone(),
                caps: self.caps.clone(),
                owner,
                accounts,
                already: subscribers,
                event,
            };
            tokio::spawn(pep.send());
        }
    }

    async fn pubsub(&self, payload: &Element, get: bool) -> Result<Outcome, ModuleError> {
        let Some(op) = payload.first_child() else {
            return Ok(Outcome::Error(Condition::BadRequest.into()));
        };
        match (op.name(), get) {
            ("create", false) => self.create(op, payload).await,
            ("subscribe", false) => self.subscribe(op, payload).await,
            ("unsubscribe", false) => self.unsubscribe(op).await,
            ("publish", false) => self.publish(op, payload).await,
            ("retract", false) => self.retract(op).await,
            ("items", true) => self.items(op).await,
            ("subscriptions", true) => self.own_subscriptions(op).await,
            ("affiliations", true) => self.own_affiliations(op).await,
            ("options", _) => self.options(op, get).await,
            ("default", true) => Ok(self.reply(
                pns::PUBSUB,
                Some(
                    Element::new("default", pns::PUBSUB)
                        .with_child(SubOptions::default().to_form("result")),
                ),
            )),
            _ => Ok(Outcome::Error(Condition::FeatureNotImplemented.into())),
        }
    }

    async fn owner(&self, payload: &Element, get: bool) -> Result<Outcome, ModuleError> {
        let Some(op) = payload.first_child() else {
            return Ok(Outcome::Error(Condition::BadRequest.into()));
        };
        if op.name() == "default" && get {
            return Ok(self.reply(
                pns::OWNER,
                Some(
                    Element::new("default", pns::OWNER).with_child(NodeConfig::default().to_form()),
                ),
            ));
        }
        let Some(name) = op.attr("node") else {
            return Ok(ps_error(Condition::BadRequest, Some("nodeid-required")));
        };
        let Some(node) = self.node(name).await else {
            return Ok(Outcome::Error(Condition::ItemNotFound.into()));
        };
        if !node.is_owner(&self.bare()) {
            return Ok(Outcome::Error(Condition::Forbidden.into()));
        }
        let store = self.cx.storage.pubsub();
        match (op.name(), get) {
            ("configure", true) => Ok(self.reply(
                pns::OWNER,
                Some(
                    Element::new("configure", pns::OWNER)
                        .with_attr("node", name)
                        .with_child(node.config.to_form()),
                ),
            )),
            ("configure", false) => {
                let Some(form) = Form::find(op) else {
                    return Ok(ps_error(Condition::BadRequest, None));
                };
                let mut config = node.config.clone();
                if let Err(why) = config.apply_form(&form) {
                    return Ok(Outcome::Error(
                        StanzaError::new(Condition::NotAcceptable).with_text(why),
                    ));
                }
                store
                    .set_node_config(&self.svc.jid, name, &config.serialize())
                    .await
                    .map_err(internal)?;
                self.update_node(name, |n| n.config = config).await;
                Ok(self.reply(pns::OWNER, None))
            }
            ("delete", false) => {
                store
                    .delete_node(&self.svc.jid, name)
                    .await
                    .map_err(internal)?;
                self.svc.nodes.write().await.remove(name);
                if node.config.notify_delete {
                    self.notify(
                        &node,
                        Element::new("delete", pns::EVENT).with_attr("node", name),
                    )
                    .await;
                }
                Ok(self.reply(pns::OWNER, None))
            }
            ("purge", false) => {
                store
                    .purge_items(&self.svc.jid, name)
                    .await
                    .map_err(internal)?;
                self.notify(
                    &node,
                    Element::new("purge", pns::EVENT).with_attr("node", name),
                )
                .await;
                Ok(self.reply(pns::OWNER, None))
            }
            ("subscriptions", true) => {
                let mut list = Element::new("subscriptions", pns::OWNER).with_attr("node", name);
                for s in &node.subscriptions {
                    list.push_child(
                        Element::new("subscription", pns::OWNER)
                            .with_attr("jid", s.jid.clone())
                            .with_attr("subscription", s.state.clone())
                            .with_attr("subid", s.subid.clone()),
                    );
                }
                Ok(self.reply(pns::OWNER, Some(list)))
            }
            ("subscriptions", false) => {
                for entry in op.children().filter(|c| c.name() == "subscription") {
                    let (Some(jid), Some(state)) = (entry.attr("jid"), entry.attr("subscription"))
                    else {
                        return Ok(Outcome::Error(Condition::BadRequest.into()));
                    };
                    let Ok(jid) = Jid::new(jid) else {
                        return Ok(Outcome::Error(Condition::JidMalformed.into()));
                    };
                    let jid = jid.to_string();
                    let existing: Vec<SubscriptionRecord> = node
                        .subscriptions
                        .iter()
                        .filter(|s| s.jid == jid)
                        .cloned()
                        .collect();
                    match state {
                        "none" => {
                            for s in &existing {
                                store
                                    .remove_subscription(&self.svc.jid, name, &s.jid, &s.subid)
                                    .await
                                    .map_err(internal)?;
                            }
                            self.update_node(name, |n| n.subscriptions.retain(|s| s.jid != jid))
                                .await;
                        }
                        "subscribed" | "pending" => {
                            let rec = SubscriptionRecord {
                                node: name.to_owned(),
                                jid: jid.clone(),
                                subid: existing
                                    .first()
                                    .map(|s| s.subid.clone())
                                    .unwrap_or_else(random_id),
                                state: state.to_owned(),
                                deliver: existing.first().is_none_or(|s| s.deliver),
                            };
                            store
                                .put_subscription(&self.svc.jid, &rec)
                                .await
                                .map_err(internal)?;
                            self.update_node(name, |n| {
                                n.subscriptions.retain(|s| s.jid != jid);
                                n.subscriptions.push(rec);
                            })
                            .await;
                        }
                        _ => return Ok(Outcome::Error(Condition::BadRequest.into())),
                    }
                }
                Ok(self.reply(pns::OWNER, None))
            }
            ("affiliations", true) => {
                let mut list = Element::new("affiliations", pns::OWNER).with_attr("node", name);
                let mut affs: Vec<_> = node.affiliations.iter().collect();
                affs.sort();
                for (jid, a) in affs {
                    list.push_child(
                        Element::new("affiliation", pns::OWNER)
                            .with_attr("jid", jid.clone())
                            .with_attr("affiliation", a.clone()),
                    );
                }
                Ok(self.reply(pns::OWNER, Some(list)))
            }
            ("affiliations", false) => {
                for entry in op.children().filter(|c| c.name() == "affiliation") {
                    let (Some(jid), Some(aff)) = (entry.attr("jid"), entry.attr("affiliation"))
                    else {
                        return Ok(Outcome::Error(Condition::BadRequest.into()));
                    };
                    if !matches!(
                        aff,
                        "owner" | "publisher" | "publish-only" | "member" | "outcast" | "none"
                    ) {
                        return Ok(Outcome::Error(Condition::BadRequest.into()));
                    }
                    let Ok(jid) = Jid::new(jid) else {
                        return Ok(Outcome::Error(Condition::JidMalformed.into()));
                    };
                    let bare = jid.to_bare().to_string();
                    store
                        .set_affiliation(&self.svc.jid, name, &bare, aff)
                        .await
                        .map_err(internal)?;
                    let aff = aff.to_owned();
                    self.update_node(name, |n| {
                        if aff == "none" {
                            n.affiliations.remove(&bare);
                        } else {
                            n.affiliations.insert(bare, aff);
                        }
                    })
                    .await;
                }
                Ok(self.reply(pns::OWNER, None))
            }
            _ => Ok(Outcome::Error(Condition::FeatureNotImplemented.into())),
        }
    }

    /// Whether the sender may create nodes here: accounts of this host on a service, only
    /// the account itself on its PEP service.
    fn may_create(&self) -> bool {
        if self.svc.pep {
            return self.bare() == self.svc.jid;
        }
        self.from.domain().as_str() == self.host && self.from.node().is_some()
    }

    /// The configuration a new node starts from.
    fn default_config(&self) -> NodeConfig {
        if self.svc.pep {
            pep_defaults()
        } else {
            NodeConfig::default()
        }
    }

    /// Creates a node owned by the sender; `None` when it exists already.
    async fn create_node(
        &self,
        name: &str,
        config: NodeConfig,
    ) -> Result<Option<Arc<Node>>, ModuleError> {
        let owner = self.bare();
        let created = self
            .cx
            .storage
            .pubsub()
            .create_node(&self.svc.jid, name, &config.serialize(), &owner)
            .await
            .map_err(internal)?;
        if !created {
            return Ok(None);
        }
        let mut node = Node {
            config,
            ..Node::default()
        };
        node.affiliations.insert(owner, "owner".into());
        let node = Arc::new(node);
        self.svc
            .nodes
            .write()
            .await
            .insert(name.to_owned(), node.clone());
        Ok(Some(node))
    }

    async fn create(&self, op: &Element, payload: &Element) -> Result<Outcome, ModuleError> {
        if !self.may_create() {
            return Ok(Outcome::Error(Condition::Forbidden.into()));
        }
        let (name, instant) = match op.attr("node") {
            Some(n) if !n.is_empty() => (n.to_owned(), false),
            _ => (random_id(), true),
        };
        let mut config = self.default_config();
        let form = payload
            .get_child("configure", pns::PUBSUB)
            .and_then(Form::find);
        if let Some(Err(why)) = form.map(|f| config.apply_form(&f)) {
            return Ok(Outcome::Error(
                StanzaError::new(Condition::NotAcceptable).with_text(why),
            ));
        }
        if self.create_node(&name, config).await?.is_none() {
            return Ok(Outcome::Error(Condition::Conflict.into()));
        }
        Ok(if instant {
            self.reply(
                pns::PUBSUB,
                Some(Element::new("create", pns::PUBSUB).with_attr("node", name)),
            )
        } else {
            self.reply(pns::PUBSUB, None)
        })
    }

    async fn subscribe(&self, op: &Element, payload: &Element) -> Result<Outcome, ModuleError> {
        let Some(name) = op.attr("node") else {
            return Ok(ps_error(Condition::BadRequest, Some("nodeid-required")));
        };
        // XEP-0060 §6.1.3.1: the JID must be the sender's (bare or full).
        let jid = match op.attr("jid").map(Jid::new) {
            Some(Ok(j)) if j.to_bare() == self.from.to_bare() => j,
            _ => return Ok(ps_error(Condition::BadRequest, Some("invalid-jid"))),
        };
        let Some(node) = self.node(name).await else {
            return Ok(Outcome::Error(Condition::ItemNotFound.into()));
        };
        let bare = self.bare();
        let aff = node.affiliation(&bare);
        if aff == "outcast" {
            return Ok(Outcome::Error(Condition::Forbidden.into()));
        }
        let privileged = matches!(aff, "owner" | "publisher" | "member");
        if !privileged && !domain_allowed(&node.config.subscribe_domains, &jid) {
            return Ok(ps_error(Condition::NotAllowed, Some("closed-node")));
        }
        let state = match node.config.access_model {
            _ if privileged => "subscribed",
            AccessModel::Open => "subscribed",
            AccessModel::Authorize => "pending",
            AccessModel::Whitelist => {
                return Ok(ps_error(Condition::NotAllowed, Some("closed-node")));
            }
            AccessModel::Presence if self.receives_owner_presence(&node).await => "subscribed",
            AccessModel::Presence => {
                return Ok(ps_error(
                    Condition::NotAuthorized,
                    Some("presence-subscription-required"),
                ));
            }
        };
        // §6.3.7: options may come with the subscription, without a node or JID of
        // their own.
        let submitted = match payload.get_child("options", pns::PUBSUB) {
            None => None,
            Some(o) if o.attr("node").is_some() || o.attr("jid").is_some() => {
                return Ok(Outcome::Error(Condition::BadRequest.into()));
            }
            Some(o) => match Form::find(o) {
                Some(f) => Some(f),
                None => return Ok(ps_error(Condition::BadRequest, Some("invalid-options"))),
            },
        };
        let jid_str = jid.to_string();
        let existing = node
            .subscriptions
            .iter()
            .find(|s| s.jid == jid_str)
            .cloned();
        let current = SubOptions {
            deliver: existing.as_ref().is_none_or(|s| s.deliver),
        };
        let options = match submitted.as_ref().map(|f| current.apply(f)) {
            None => current,
            Some(Ok(o)) => o,
            Some(Err(_)) => return Ok(ps_error(Condition::BadRequest, Some("invalid-options"))),
        };
        let rec = match existing {
            Some(e) if e.deliver == options.deliver => e,
            other => {
                let rec = SubscriptionRecord {
                    node: name.to_owned(),
                    jid: jid_str.clone(),
                    subid: other.as_ref().map_or_else(random_id, |e| e.subid.clone()),
                    state: other.map_or_else(|| state.to_owned(), |e| e.state),
                    deliver: options.deliver,
                };
                self.put_subscription(&rec).await?;
                if rec.state == "pending" {
                    self.ask_owners(&node, &rec);
                }
                rec
            }
        };
        let mut reply = Element::new("pubsub", pns::PUBSUB).with_child(
            Element::new("subscription", pns::PUBSUB)
                .with_attr("node", name)
                .with_attr("jid", rec.jid)
                .with_attr("subid", rec.subid)
                .with_attr("subscription", rec.state),
        );
        if submitted.is_some() {
            reply.push_child(
                Element::new("options", pns::PUBSUB).with_child(options.to_form("result")),
            );
        }
        Ok(Outcome::Reply(iq_result(self.stanza).with_child(reply)))
    }

    /// Sends each owner of the node a subscription approval request (XEP-0060 §8.6) for a
    /// pending subscription.
    fn ask_owners(&self, node: &Node, rec: &SubscriptionRecord) {
        for (owner, aff) in &node.affiliations {
            if aff != "owner" {
                continue;
            }
            let form = forms::form("form", AUTHORIZATION)
                .with_child(forms::field("pubsub#subid", "hidden", &rec.subid, &[]))
                .with_child(forms::field("pubsub#node", "text-single", &rec.node, &[]))
                .with_child(forms::field(
                    "pubsub#subscriber_jid",
                    "jid-single",
                    &rec.jid,
                    &[],
                ))
                .with_child(forms::field("pubsub#allow", "boolean", "false", &[]));
            self.cx.server.send(
                Element::new("message", ns::CLIENT)
                    .with_attr("from", self.svc.jid.clone())
                    .with_attr("to", owner.clone())
                    .with_attr("id", random_id())
                    .with_child(form),
            );
        }
    }

    /// An owner's answer to an approval request (XEP-0060 §8.6): `pubsub#allow` true makes
    /// the pending subscription `subscribed`, false removes it; either way the subscriber
    /// is told (§12.6). A cancelled form leaves it pending.
    async fn approval(&self) -> Result<Outcome, ModuleError> {
        let Some(x) = self.stanza.get_child("x", forms::DATA) else {
            return Ok(Outcome::Handled);
        };
        let Some(form) = Form::find(self.stanza) else {
            return Ok(Outcome::Handled);
        };
        if form.form_type.as_deref() != Some(AUTHORIZATION) || x.attr("type") == Some("cancel") {
            return Ok(Outcome::Handled);
        }
        let value = |var: &str| {
            form.fields
                .iter()
                .find(|(v, _)| v == var)
                .and_then(|(_, vals)| vals.first().cloned())
        };
        let (Some(name), Some(subscriber), Some(allow)) = (
            value("pubsub#node"),
            value("pubsub#subscriber_jid"),
            value("pubsub#allow"),
        ) else {
            return Ok(Outcome::Error(Condition::BadRequest.into()));
        };
        let allow = match allow.as_str() {
            "1" | "true" => true,
            "0" | "false" => false,
            _ => return Ok(Outcome::Error(Condition::BadRequest.into())),
        };
        let Some(node) = self.node(&name).await else {
            return Ok(Outcome::Error(Condition::ItemNotFound.into()));
        };
        if !node.is_owner(&self.bare()) {
            return Ok(Outcome::Error(Condition::Forbidden.into()));
        }
        let subid = value("pubsub#subid");
        let Some(pending) = node
            .subscriptions
            .iter()
            .find(|s| {
                s.jid == subscriber
                    && s.state == "pending"
                    && subid.as_ref().is_none_or(|id| *id == s.subid)
            })
            .cloned()
        else {
            // Already decided (another owner, or an earlier answer): nothing to do.
            return Ok(Outcome::Handled);
        };
        let state = if allow {
            let rec = SubscriptionRecord {
                state: "subscribed".into(),
                ..pending.clone()
            };
            self.put_subscription(&rec).await?;
            "subscribed"
        } else {
            self.cx
                .storage
                .pubsub()
                .remove_subscription(&self.svc.jid, &name, &pending.jid, &pending.subid)
                .await
                .map_err(internal)?;
            let subid = pending.subid.clone();
            self.update_node(&name, |n| n.subscriptions.retain(|s| s.subid != subid))
                .await;
            "none"
        };
        let event = Element::new("event", pns::EVENT).with_child(
            Element::new("subscription", pns::EVENT)
                .with_attr("node", name)
                .with_attr("jid", pending.jid.clone())
                .with_attr("subid", pending.subid)
                .with_attr("subscription", state),
        );
        self.cx
            .server
            .send(event_message(&self.svc.jid, &pending.jid, event, false));
        Ok(Outcome::Handled)
    }

    /// Stores a subscription and puts it in the node (replacing the one with its subid).
    async fn put_subscription(&self, rec: &SubscriptionRecord) -> Result<(), ModuleError> {
        self.cx
            .storage
            .pubsub()
            .put_subscription(&self.svc.jid, rec)
            .await
            .map_err(internal)?;
        let r = rec.clone();
        self.update_node(&rec.node, |n| {
            n.subscriptions.retain(|s| s.subid != r.subid);
            n.subscriptions.push(r);
        })
        .await;
        Ok(())
    }

    /// Subscription options: the form (get) or a submitted one (set), XEP-0060 §6.3.
    async fn options(&self, op: &Element, get: bool) -> Result<Outcome, ModuleError> {
        let Some(name) = op.attr("node") else {
            return Ok(ps_error(Condition::BadRequest, Some("nodeid-required")));
        };
        let Some(jid) = op.attr("jid") else {
            return Ok(ps_error(Condition::BadRequest, Some("jid-required")));
        };
        let Ok(jid) = Jid::new(jid) else {
            return Ok(Outcome::Error(Condition::JidMalformed.into()));
        };
        if jid.to_bare() != self.from.to_bare() {
            return Ok(Outcome::Error(Condition::Forbidden.into()));
        }
        let Some(node) = self.node(name).await else {
            return Ok(Outcome::Error(Condition::ItemNotFound.into()));
        };
        let jid = jid.to_string();
        let mine: Vec<&SubscriptionRecord> =
            node.subscriptions.iter().filter(|s| s.jid == jid).collect();
        if mine.is_empty() {
            return Ok(ps_error(
                Condition::UnexpectedRequest,
                Some("not-subscribed"),
            ));
        }
        let target = match op.attr("subid") {
            Some(id) => match mine.iter().find(|s| s.subid == id) {
                Some(s) => (*s).clone(),
                None => return Ok(ps_error(Condition::NotAcceptable, Some("invalid-subid"))),
            },
            None if mine.len() > 1 => {
                return Ok(ps_error(Condition::BadRequest, Some("subid-required")));
            }
            None => mine[0].clone(),
        };
        let current = SubOptions {
            deliver: target.deliver,
        };
        if get {
            return Ok(self.reply(
                pns::PUBSUB,
                Some(
                    Element::new("options", pns::PUBSUB)
                        .with_attr("node", name)
                        .with_attr("jid", jid)
                        .with_attr("subid", target.subid.clone())
                        .with_child(current.to_form("form")),
                ),
            ));
        }
        let Some(options) = Form::find(op).and_then(|f| current.apply(&f).ok()) else {
            return Ok(ps_error(Condition::BadRequest, Some("invalid-options")));
        };
        if options != current {
            let rec = SubscriptionRecord {
                deliver: options.deliver,
                ..target
            };
            self.put_subscription(&rec).await?;
        }
        Ok(self.reply(pns::PUBSUB, None))
    }

    async fn unsubscribe(&self, op: &Element) -> Result<Outcome, ModuleError> {
        let Some(name) = op.attr("node") else {
            return Ok(ps_error(Condition::BadRequest, Some("nodeid-required")));
        };
        let jid = match op.attr("jid").map(Jid::new) {
            Some(Ok(j)) if j.to_bare() == self.from.to_bare() => j.to_string(),
            _ => return Ok(ps_error(Condition::BadRequest, Some("invalid-jid"))),
        };
        let Some(node) = self.node(name).await else {
            return Ok(Outcome::Error(Condition::ItemNotFound.into()));
        };
        let mine: Vec<&SubscriptionRecord> =
            node.subscriptions.iter().filter(|s| s.jid == jid).collect();
        let target = match op.attr("subid") {
            Some(id) => mine.iter().find(|s| s.subid == id).copied(),
            None if mine.len() > 1 => {
                return Ok(ps_error(Condition::BadRequest, Some("subid-required")));
            }
            None => mine.first().copied(),
        };
        let Some(target) = target else {
            return Ok(ps_error(
                Condition::UnexpectedRequest,
                Some("not-subscribed"),
            ));
        };
        self.cx
            .storage
            .pubsub()
            .remove_subscription(&self.svc.jid, name, &target.jid, &target.subid)
            .await
            .map_err(internal)?;
        let subid = target.subid.clone();
        self.update_node(name, |n| n.subscriptions.retain(|s| s.subid != subid))
            .await;
        Ok(self.reply(pns::PUBSUB, None))
    }

    fn may_publish(&self, node: &Node) -> bool {
        let aff = node.affiliation(&self.bare());
        if matches!(aff, "owner" | "publisher" | "publish-only") {
            return true;
        }
        if aff == "outcast" {
            return false;
        }
        match node.config.publish_model {
            PublishModel::Publishers => false,
            PublishModel::Subscribers => node.subscribed(&self.from),
            PublishModel::Open => domain_allowed(&node.config.publish_domains, &self.from),
        }
    }

    async fn publish(&self, op: &Element, payload: &Element) -> Result<Outcome, ModuleError> {
        let Some(name) = op.attr("node") else {
            return Ok(ps_error(Condition::BadRequest, Some("nodeid-required")));
        };
        let options = payload
            .get_child("publish-options", pns::PUBSUB)
            .and_then(Form::find);
        let node = match self.node(name).await {
            Some(n) => n,
            // XEP-0163 §3: the account's first publish creates the node ("auto-create"),
            // configured by the publish-options it carries.
            None if self.svc.pep && self.may_create() => {
                let mut config = self.default_config();
                if let Some(Err(_)) = options.as_ref().map(|f| config.apply_form(f)) {
                    return Ok(ps_error(Condition::Conflict, Some("precondition-not-met")));
                }
                match self.create_node(name, config).await? {
                    Some(n) => n,
                    None => match self.node(name).await {
                        Some(n) => n,
                        None => return Ok(Outcome::Error(Condition::ItemNotFound.into())),
                    },
                }
            }
            None => return Ok(Outcome::Error(Condition::ItemNotFound.into())),
        };
        if !self.may_publish(&node) {
            return Ok(Outcome::Error(Condition::Forbidden.into()));
        }
        // XEP-0060 §7.1.5: publish-options are preconditions on the node configuration.
        if let Some(form) = &options {
            for (var, values) in &form.fields {
                if var == "FORM_TYPE" {
                    continue;
                }
                if node.config.get(var).as_deref() != values.first().map(String::as_str) {
                    let ok_bool = matches!(
                        (
                            node.config.get(var).as_deref(),
                            values.first().map(String::as_str)
                        ),
                        (Some("1"), Some("true")) | (Some("0"), Some("false"))
                    );
                    if !ok_bool {
                        return Ok(ps_error(Condition::Conflict, Some("precondition-not-met")));
                    }
                }
            }
        }
        let items: Vec<&Element> = op.children().filter(|c| c.name() == "item").collect();
        if items.len() > 1 {
            return Ok(ps_error(Condition::BadRequest, Some("invalid-payload")));
        }
        let Some(item) = items.first() else {
            return Ok(ps_error(Condition::BadRequest, Some("item-required")));
        };
        let payloads: Vec<&Element> = item.children().collect();
        let item_payload = match payloads.as_slice() {
            [] => return Ok(ps_error(Condition::BadRequest, Some("payload-required"))),
            [one] => *one,
            _ => return Ok(ps_error(Condition::BadRequest, Some("invalid-payload"))),
        };
        let given = item.attr("id").filter(|i| !i.is_empty()).map(str::to_owned);
        let generated = given.is_none();
        let id = given.unwrap_or_else(random_id);
        if node.config.persist_items {
            let mut xml = Vec::new();
            item_payload.write_to(&mut xml, "");
            let rec = ItemRecord {
                id: id.clone(),
                publisher: self.from.to_string(),
                payload: String::from_utf8_lossy(&xml).into_owned(),
            };
            // Answered only once the item is durable.
            self.cx
                .storage
                .pubsub()
                .publish_item(&self.svc.jid, name, &rec, node.config.max_items)
                .await
                .map_err(internal)?;
        }
        publishes().increment(1);
        let mut ev_item = Element::new("item", pns::EVENT).with_attr("id", id.clone());
        if node.config.deliver_payloads {
            ev_item.push_child(item_payload.clone());
        }
        self.notify(
            &node,
            Element::new("items", pns::EVENT)
                .with_attr("node", name)
                .with_child(ev_item),
        )
        .await;
        // XEP-0060 §7.1.2: the generated id is returned; a given one needs no echo (the
        // seed's SpimeSeek publish is answered with an empty result).
        Ok(if generated {
            self.reply(
                pns::PUBSUB,
                Some(
                    Element::new("publish", pns::PUBSUB)
                        .with_attr("node", name)
                        .with_child(Element::new("item", pns::PUBSUB).with_attr("id", id)),
                ),
            )
        } else {
            self.reply(pns::PUBSUB, None)
        })
    }

    async fn retract(&self, op: &Element) -> Result<Outcome, ModuleError> {
        let Some(name) = op.attr("node") else {
            return Ok(ps_error(Condition::BadRequest, Some("nodeid-required")));
        };
        let Some(id) = op.get_child("item", pns::PUBSUB).and_then(|i| i.attr("id")) else {
            return Ok(ps_error(Condition::BadRequest, Some("item-required")));
        };
        let Some(node) = self.node(name).await else {
            return Ok(Outcome::Error(Condition::ItemNotFound.into()));
        };
        let store = self.cx.storage.pubsub();
        let existing = store
            .items(&self.svc.jid, name, Some(&[id.to_owned()]), None)
            .await
            .map_err(internal)?;
        let Some(item) = existing.first() else {
            return Ok(Outcome::Error(Condition::ItemNotFound.into()));
        };
        let own_item = Jid::new(&item.publisher).is_ok_and(|p| p.to_bare() == self.from.to_bare());
        let aff = node.affiliation(&self.bare());
        if !(own_item || matches!(aff, "owner" | "publisher")) {
            return Ok(Outcome::Error(Condition::Forbidden.into()));
        }
        store
            .retract_item(&self.svc.jid, name, id)
            .await
            .map_err(internal)?;
        let notify = matches!(op.attr("notify"), Some("true" | "1")) || node.config.notify_retract;
        if notify {
            self.notify(
                &node,
                Element::new("items", pns::EVENT)
                    .with_attr("node", name)
                    .with_child(Element::new("retract", pns::EVENT).with_attr("id", id)),
            )
            .await;
        }
        Ok(self.reply(pns::PUBSUB, None))
    }

    /// Whether the requester receives the presence of one of the node's owners: the
    /// `presence` access model (XEP-0060 §4.5), answered from the owners' rosters.
    async fn receives_owner_presence(&self, node: &Node) -> bool {
        let me = self.bare();
        for (owner, aff) in &node.affiliations {
            if aff == "owner" && self.cx.server.receives_presence(owner, &me).await {
                return true;
            }
        }
        false
    }

    /// Why the requester may not retrieve items (XEP-0060 §6.5.9), if it may not.
    async fn retrieve_denied(&self, node: &Node) -> Option<Outcome> {
        let aff = node.affiliation(&self.bare());
        if aff == "outcast" {
            return Some(Outcome::Error(Condition::Forbidden.into()));
        }
        if matches!(aff, "owner" | "publisher" | "member") {
            return None;
        }
        let allowed = match node.config.access_model {
            AccessModel::Open => true,
            AccessModel::Authorize => node.subscribed(&self.from),
            AccessModel::Whitelist => false,
            AccessModel::Presence => {
                return (!self.receives_owner_presence(node).await).then(|| {
                    ps_error(
                        Condition::NotAuthorized,
                        Some("presence-subscription-required"),
                    )
                });
            }
        };
        (!allowed).then(|| ps_error(Condition::NotAllowed, Some("closed-node")))
    }

    async fn items(&self, op: &Element) -> Result<Outcome, ModuleError> {
        let Some(name) = op.attr("node") else {
            return Ok(ps_error(Condition::BadRequest, Some("nodeid-required")));
        };
        let Some(node) = self.node(name).await else {
            return Ok(Outcome::Error(Condition::ItemNotFound.into()));
        };
        if let Some(denied) = self.retrieve_denied(&node).await {
            return Ok(denied);
        }
        let ids: Vec<String> = op
            .children()
            .filter(|c| c.name() == "item")
            .filter_map(|c| c.attr("id").map(str::to_owned))
            .collect();
        let max = match op.attr("max_items").map(str::parse::<u64>) {
            None => None,
            Some(Ok(m)) => Some(m),
            Some(Err(_)) => return Ok(Outcome::Error(Condition::BadRequest.into())),
        };
        let mut items = self
            .cx
            .storage
            .pubsub()
            .items(
                &self.svc.jid,
                name,
                (!ids.is_empty()).then_some(ids.as_slice()),
                max,
            )
            .await
            .map_err(internal)?;
        // Oldest first among those returned.
        items.reverse();
        let mut out = Element::new("items", pns::PUBSUB).with_attr("node", name);
        for it in items {
            let mut item = Element::new("item", pns::PUBSUB).with_attr("id", it.id);
            if let Ok(p) = Element::parse(&it.payload) {
                item.push_child(p);
            }
            out.push_child(item);
        }
        Ok(self.reply(pns::PUBSUB, Some(out)))
    }

    async fn own_subscriptions(&self, op: &Element) -> Result<Outcome, ModuleError> {
        let only = op.attr("node");
        let bare = self.bare();
        let mut out = Element::new("subscriptions", pns::PUBSUB);
        if let Some(n) = only {
            out.set_attr("node", n);
        }
        let nodes = self.svc.nodes.read().await;
        let mut names: Vec<&String> = nodes
            .keys()
            .filter(|n| only.is_none_or(|o| o == *n))
            .collect();
        names.sort();
        for name in names {
            for s in &nodes[name].subscriptions {
                if Jid::new(&s.jid).is_ok_and(|j| j.to_bare().to_string() == bare) {
                    out.push_child(
                        Element::new("subscription", pns::PUBSUB)
                            .with_attr("node", name.clone())
                            .with_attr("jid", s.jid.clone())
                            .with_attr("subscription", s.state.clone())
                            .with_attr("subid", s.subid.clone()),
                    );
                }
            }
        }
        Ok(self.reply(pns::PUBSUB, Some(out)))
    }

    async fn own_affiliations(&self, op: &Element) -> Result<Outcome, ModuleError> {
        let only = op.attr("node");
        let bare = self.bare();
        let mut out = Element::new("affiliations", pns::PUBSUB);
        let nodes = self.svc.nodes.read().await;
        let mut names: Vec<&String> = nodes
            .keys()
            .filter(|n| only.is_none_or(|o| o == *n))
            .collect();
        names.sort();
        for name in names {
            let a = nodes[name].affiliation(&bare);
            if a != "none" {
                out.push_child(
                    Element::new("affiliation", pns::PUBSUB)
                        .with_attr("node", name.clone())
                        .with_attr("affiliation", a),
                );
            }
        }
        Ok(self.reply(pns::PUBSUB, Some(out)))
    }

    async fn disco_info(&self, query: &Element) -> Result<Outcome, ModuleError> {
        let mut q = Element::new("query", ns::DISCO_INFO);
        match query.attr("node") {
            None => {
                if self.svc.pep {
                    // XEP-0163 §6.1: an account with PEP is a registered account and a
                    // pubsub/pep service.
                    for (category, kind) in [("account", "registered"), ("pubsub", "pep")] {
                        q.push_child(
                            Element::new("identity", ns::DISCO_INFO)
                                .with_attr("category", category)
                                .with_attr("type", kind),
                        );
                    }
                } else {
                    q.push_child(
                        Element::new("identity", ns::DISCO_INFO)
                            .with_attr("category", "pubsub")
                            .with_attr("type", "service")
                            .with_attr("name", "openspimed PubSub"),
                    );
                }
                q.push_child(
                    Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_INFO),
                );
                q.push_child(
                    Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_ITEMS),
                );
                q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", pns::PUBSUB));
                for f in FEATURES {
                    q.push_child(
                        Element::new("feature", ns::DISCO_INFO)
                            .with_attr("var", format!("{}#{f}", pns::PUBSUB)),
                    );
                }
            }
            Some(name) => {
                let Some(node) = self.node(name).await else {
                    return Ok(Outcome::Error(Condition::ItemNotFound.into()));
                };
                q.set_attr("node", name);
                q.push_child(
                    Element::new("identity", ns::DISCO_INFO)
                        .with_attr("category", "pubsub")
                        .with_attr("type", "leaf"),
                );
                q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", pns::PUBSUB));
                let mut meta = forms::form("result", "http://jabber.org/protocol/pubsub#meta-data");
                meta.push_child(forms::field(
                    "pubsub#title",
                    "text-single",
                    &node.config.title,
                    &[],
                ));
                q.push_child(meta);
            }
        }
        Ok(Outcome::Reply(iq_result(self.stanza).with_child(q)))
    }

    async fn disco_items(&self, query: &Element) -> Result<Outcome, ModuleError> {
        let mut q = Element::new("query", ns::DISCO_ITEMS);
        match query.attr("node") {
            None => {
                for (n, node) in self.svc.snapshot().await {
                    // What an account publishes is its own: a PEP service lists only the
                    // nodes the requester may read.
                    if self.svc.pep && self.retrieve_denied(&node).await.is_some() {
                        continue;
                    }
                    let mut item = Element::new("item", ns::DISCO_ITEMS)
                        .with_attr("jid", self.svc.jid.clone())
                        .with_attr("node", n);
                    if !node.config.title.is_empty() {
                        item.set_attr("name", node.config.title.clone());
                    }
                    q.push_child(item);
                }
            }
            Some(name) => {
                let Some(node) = self.node(name).await else {
                    return Ok(Outcome::Error(Condition::ItemNotFound.into()));
                };
                if self.retrieve_denied(&node).await.is_some() {
                    return Ok(Outcome::Error(Condition::Forbidden.into()));
                }
                q.set_attr("node", name);
                let items = self
                    .cx
                    .storage
                    .pubsub()
                    .items(&self.svc.jid, name, None, None)
                    .await
                    .map_err(internal)?;
                for it in items {
                    q.push_child(
                        Element::new("item", ns::DISCO_ITEMS)
                            .with_attr("jid", self.svc.jid.clone())
                            .with_attr("name", it.id),
                    );
                }
            }
        }
        Ok(Outcome::Reply(iq_result(self.stanza).with_child(q)))
    }
}
