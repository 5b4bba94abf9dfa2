//! `[modules.pubsub]`: what an operator writes, as serde reads it (unknown keys refused,
//! each problem named by its key), and the preconfigured nodes built from it.

use serde::{Deserialize, Serialize};

use crate::config::{AccessModel, NodeConfig, PublishModel};

/// `[modules.pubsub]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// PubSub services (XEP-0060); each host serves those on its domain or subdomains.
    /// Absent: `pubsub.HOST`.
    pub services: Option<Vec<String>>,
    /// PEP (XEP-0163): every account of the host is a PubSub service of its own.
    pub pep: bool,
    /// Nodes that exist at every start with this configuration (the file wins over changes
    /// made over XMPP). Absent: each service gets the OpenSpime `spimeseek` node.
    pub nodes: Option<Vec<NodeOptions>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            services: None,
            pep: true,
            nodes: None,
        }
    }
}

/// `[[modules.pubsub.nodes]]`: a preconfigured node; what is not set keeps XEP-0060's
/// defaults (those of [`NodeConfig::default`]).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeOptions {
    /// The node's name.
    pub name: String,
    /// Only on this service (absent: every service of the host).
    #[serde(default)]
    pub service: Option<String>,
    /// `pubsub#title`.
    #[serde(default)]
    pub title: Option<String>,
    /// `pubsub#deliver_payloads`.
    #[serde(default)]
    pub deliver_payloads: Option<bool>,
    /// `pubsub#notify_retract`.
    #[serde(default)]
    pub notify_retract: Option<bool>,
    /// `pubsub#notify_delete`.
    #[serde(default)]
    pub notify_delete: Option<bool>,
    /// `pubsub#persist_items`.
    #[serde(default)]
    pub persist_items: Option<bool>,
    /// `pubsub#max_items`: a number, or `"max"` for no limit.
    #[serde(default)]
    pub max_items: Option<MaxItems>,
    /// `pubsub#access_model`: open, authorize, whitelist or presence.
    #[serde(default)]
    pub access_model: Option<AccessModel>,
    /// `pubsub#publish_model`: publishers, subscribers or open.
    #[serde(default)]
    pub publish_model: Option<PublishModel>,
    /// Only entities of these domains may publish (empty: anyone the models allow).
    #[serde(default)]
    pub publish_domains: Vec<String>,
    /// Only entities of these domains may subscribe (empty: anyone the models allow).
    #[serde(default)]
    pub subscribe_domains: Vec<String>,
}

/// `max_items`: a count or no limit.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum MaxItems {
    /// Keep this many, newest first.
    Count(u64),
    /// `"max"`: no limit.
    Max(Unlimited),
}

/// The word `max`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unlimited {
    /// No limit.
    Max,
}

impl NodeOptions {
    /// The node configuration these options give.
    pub fn config(&self) -> NodeConfig {
        let d = NodeConfig::default();
        NodeConfig {
            title: self.title.clone().unwrap_or(d.title),
            deliver_payloads: self.deliver_payloads.unwrap_or(d.deliver_payloads),
            notify_retract: self.notify_retract.unwrap_or(d.notify_retract),
            notify_delete: self.notify_delete.unwrap_or(d.notify_delete),
            persist_items: self.persist_items.unwrap_or(d.persist_items),
            max_items: match &self.max_items {
                None => d.max_items,
                Some(MaxItems::Count(n)) => Some(*n),
                Some(MaxItems::Max(_)) => None,
            },
            access_model: self.access_model.unwrap_or(d.access_model),
            publish_model: self.publish_model.unwrap_or(d.publish_model),
            // Not an option of the file: preconfigured nodes keep XEP-0060's default.
            send_last: d.send_last,
            publish_domains: self.publish_domains.clone(),
            subscribe_domains: self.subscribe_domains.clone(),
        }
    }
}

impl Options {
    /// Every key set, for the documentation check.
    pub fn sample() -> Options {
        Options {
            services: Some(vec!["pubsub.example.org".into()]),
            pep: true,
            nodes: Some(vec![NodeOptions {
                name: "spimeseek".into(),
                service: Some("pubsub.example.org".into()),
                title: Some("t".into()),
                deliver_payloads: Some(true),
                notify_retract: Some(true),
                notify_delete: Some(true),
                persist_items: Some(true),
                max_items: Some(MaxItems::Count(1)),
                access_model: Some(AccessModel::Open),
                publish_model: Some(PublishModel::Open),
                publish_domains: vec!["example.org".into()],
                subscribe_domains: vec!["scopenode.example.org".into()],
            }]),
        }
    }
}
