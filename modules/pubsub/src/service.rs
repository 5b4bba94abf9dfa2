//! The service state: nodes with their affiliations and subscriptions, loaded from the
//! store once per service.

use std::collections::HashMap;
use std::sync::Arc;

use openspimed_module_api::jid::Jid;
use openspimed_module_api::{Context, ModuleError};
use tokio::sync::RwLock;

use crate::config::NodeConfig;
use crate::internal;
use crate::store::{PubSubData, SubscriptionRecord};

/// A node as the module keeps it in memory (the store has the durable copy).
#[derive(Clone, Debug, Default)]
pub(crate) struct Node {
    /// Configuration.
    pub(crate) config: NodeConfig,
    /// Bare JID → affiliation.
    pub(crate) affiliations: HashMap<String, String>,
    /// Subscriptions.
    pub(crate) subscriptions: Vec<SubscriptionRecord>,
}

impl Node {
    pub(crate) fn affiliation(&self, bare: &str) -> &str {
        self.affiliations
            .get(bare)
            .map(String::as_str)
            .unwrap_or("none")
    }
    pub(crate) fn is_owner(&self, bare: &str) -> bool {
        self.affiliation(bare) == "owner"
    }
    pub(crate) fn subscribed(&self, jid: &Jid) -> bool {
        let (full, bare) = (jid.to_string(), jid.to_bare().to_string());
        self.subscriptions
            .iter()
            .any(|s| s.state == "subscribed" && (s.jid == full || s.jid == bare))
    }
}

/// One PubSub service (one JID).
pub(crate) struct Service {
    /// The service JID: a domain, or an account's bare JID for its PEP service.
    pub(crate) jid: String,
    /// A PEP service (XEP-0163): only the account publishes, its nodes are created by its
    /// first publish, and notifications also go to the account's own resources and to
    /// contacts that receive its presence and advertise `NODE+notify`.
    pub(crate) pep: bool,
    /// Nodes by name. Replaced per node on change; read briefly.
    pub(crate) nodes: RwLock<HashMap<String, Arc<Node>>>,
}

impl Service {
    /// The nodes as they are now, by name.
    pub(crate) async fn snapshot(&self) -> Vec<(String, Arc<Node>)> {
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

/// A service's nodes, affiliations and subscriptions as stored.
pub(crate) async fn load_nodes(
    cx: &Context,
    jid: &str,
) -> Result<HashMap<String, Arc<Node>>, ModuleError> {
    let store = PubSubData::new(cx.storage.clone());
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
