//! XEP-0060 Publish-Subscribe: a service per configured domain (default `pubsub.HOST`),
//! persistent nodes, items and subscriptions through [`store::PubSubData`], notifications with
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
pub mod options;
pub mod suboptions;

mod disco;
mod items;
mod owner;
mod pep;
mod service;
pub mod store;
mod subscriptions;

use std::collections::HashMap;
use std::sync::Arc;

use openspimed_module_api::jid::Jid;
use openspimed_module_api::{
    Condition, Context, Element, Module, ModuleError, ModuleFactory, Outcome, Route, StanzaError,
    async_trait, iq_result, ns, toml,
};
use rand::RngCore;
use tokio::sync::RwLock;

use crate::config::{AccessModel, NodeConfig, PublishModel};
pub use crate::options::Options;
use crate::store::PubSubData;
use crate::suboptions::SubOptions;
use openspimed_module_api::form::Form;
use pep::{PepNotice, pep_defaults, pep_service, send_last_items};
use service::{Node, Service, load_nodes};

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
        let store = PubSubData::new(cx.storage.clone());
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
            && stanza.get_child("x", ns::DATA).is_some();
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

/// PEP services by account bare JID, shared with the tasks that send last items.
type PepServices = Arc<tokio::sync::Mutex<HashMap<String, Arc<Service>>>>;

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
        let created = PubSubData::new(self.cx.storage.clone())
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
}
