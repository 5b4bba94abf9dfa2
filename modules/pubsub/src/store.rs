//! PubSub's data (XEP-0060) in the module's named stores of each service's domain (as
//! Prosody keeps a component's data under the component's host; a PEP service's domain is
//! its account's): key-value stores `pubsub_nodes` (key = node, value = its serialized
//! configuration), `pubsub_affiliations` and `pubsub_subscriptions` (JSON records), all
//! with owner = the service JID, and the archive `pubsub_items` (owner = `SERVICE/NODE`,
//! with = the publisher).

use std::sync::Arc;

use openspimed_module_api::jid::Jid;
use openspimed_module_api::{
    ArchiveQuery, ArchiveStore, ArchivedItem, KvStore, ModuleStorage, StorageFailure,
};
use serde::{Deserialize, Serialize};

/// A PubSub node as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    /// The node name.
    pub node: String,
    /// The node configuration, serialized by [`crate::config::NodeConfig`].
    pub config: String,
}

/// An affiliation (XEP-0060 §4.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffiliationRecord {
    /// Node.
    pub node: String,
    /// Bare JID.
    pub jid: String,
    /// `owner`, `publisher`, `publish-only`, `member`, `outcast`.
    pub affiliation: String,
}

/// A subscription (XEP-0060 §4.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    /// Node.
    pub node: String,
    /// The subscribed JID (full or bare).
    pub jid: String,
    /// Subscription id.
    pub subid: String,
    /// `subscribed`, `pending` or `unconfigured`.
    pub state: String,
    /// Subscription option `pubsub#deliver` (XEP-0060 §6.3): `false` keeps the
    /// subscription but sends no notifications.
    pub deliver: bool,
}

/// A published item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemRecord {
    /// Item id.
    pub id: String,
    /// Who published it (full JID).
    pub publisher: String,
    /// The payload XML.
    pub payload: String,
}

/// The nodes' store.
const NODES: &str = "pubsub_nodes";
/// The affiliations' store.
const AFFILIATIONS: &str = "pubsub_affiliations";
/// The subscriptions' store.
const SUBSCRIPTIONS: &str = "pubsub_subscriptions";
/// The items' archive.
const ITEMS: &str = "pubsub_items";

/// PubSub nodes, affiliations, subscriptions and items, per service JID.
#[derive(Clone)]
pub struct PubSubData {
    /// Where the stores are opened: those of each service's domain.
    storage: Arc<dyn ModuleStorage>,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StorageFailure {
    StorageFailure(format!("stored {what} unreadable: {e}"))
}

/// The key of an affiliation: JIDs hold no newline (RFC 7622 forbids control characters),
/// so the node after the first one is whatever it is.
fn affiliation_key(node: &str, jid: &str) -> String {
    format!("{jid}\n{node}")
}

/// The key of a subscription (the JID first, as in [`affiliation_key`]).
fn subscription_key(node: &str, jid: &str, subid: &str) -> String {
    format!("{jid}\n{subid}\n{node}")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl PubSubData {
    /// PubSub's data in `storage`.
    pub fn new(storage: Arc<dyn ModuleStorage>) -> PubSubData {
        PubSubData { storage }
    }

    fn domain(service: &str) -> String {
        Jid::new(service)
            .map(|j| j.domain().to_string())
            .unwrap_or_else(|_| service.to_owned())
    }

    fn kv(&self, service: &str, name: &str) -> Arc<dyn KvStore> {
        self.storage.kv(&Self::domain(service), name)
    }

    fn items_of(&self, service: &str) -> Arc<dyn ArchiveStore> {
        self.storage.archive(&Self::domain(service), ITEMS)
    }

    /// Creates a node with its owner; `false` if it exists (nothing changed).
    pub async fn create_node(
        &self,
        service: &str,
        node: &str,
        config: &str,
        owner: &str,
    ) -> Result<bool, StorageFailure> {
        let created = self
            .kv(service, NODES)
            .swap(service, node, None, Some(config.as_bytes()))
            .await?;
        if created && !owner.is_empty() {
            self.set_affiliation(service, node, owner, "owner").await?;
        }
        Ok(created)
    }

    /// Replaces a node's configuration (of a node that exists).
    pub async fn set_node_config(
        &self,
        service: &str,
        node: &str,
        config: &str,
    ) -> Result<(), StorageFailure> {
        let nodes = self.kv(service, NODES);
        if nodes.get(service, node).await?.is_some() {
            nodes.set(service, node, config.as_bytes()).await?;
        }
        Ok(())
    }

    /// Deletes a node with its items, subscriptions and affiliations; `false` if none.
    pub async fn delete_node(&self, service: &str, node: &str) -> Result<bool, StorageFailure> {
        self.purge_items(service, node).await?;
        let subs = self.kv(service, SUBSCRIPTIONS);
        for s in self.subscriptions(service).await? {
            if s.node == node {
                subs.remove(service, &subscription_key(node, &s.jid, &s.subid))
                    .await?;
            }
        }
        for a in self.affiliations(service).await? {
            if a.node == node {
                self.set_affiliation(service, node, &a.jid, "none").await?;
            }
        }
        self.kv(service, NODES).remove(service, node).await
    }

    /// Every node of a service, sorted by name.
    pub async fn nodes(&self, service: &str) -> Result<Vec<NodeRecord>, StorageFailure> {
        self.kv(service, NODES)
            .entries(service)
            .await?
            .into_iter()
            .map(|(node, config)| {
                Ok(NodeRecord {
                    config: String::from_utf8(config).map_err(|e| corrupt("node", e))?,
                    node,
                })
            })
            .collect()
    }

    /// Sets an affiliation (`none` removes it).
    pub async fn set_affiliation(
        &self,
        service: &str,
        node: &str,
        jid: &str,
        affiliation: &str,
    ) -> Result<(), StorageFailure> {
        let store = self.kv(service, AFFILIATIONS);
        let key = affiliation_key(node, jid);
        if affiliation == "none" {
            store.remove(service, &key).await?;
            return Ok(());
        }
        let rec = AffiliationRecord {
            node: node.to_owned(),
            jid: jid.to_owned(),
            affiliation: affiliation.to_owned(),
        };
        let value = serde_json::to_vec(&rec).map_err(|e| corrupt("affiliation", e))?;
        store.set(service, &key, &value).await
    }

    /// Affiliations of a service.
    pub async fn affiliations(
        &self,
        service: &str,
    ) -> Result<Vec<AffiliationRecord>, StorageFailure> {
        let mut all: Vec<AffiliationRecord> = self
            .kv(service, AFFILIATIONS)
            .entries(service)
            .await?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v).map_err(|e| corrupt("affiliation", e)))
            .collect::<Result<_, _>>()?;
        all.sort_by(|a, b| (&a.node, &a.jid).cmp(&(&b.node, &b.jid)));
        Ok(all)
    }

    /// Adds or updates a subscription.
    pub async fn put_subscription(
        &self,
        service: &str,
        sub: &SubscriptionRecord,
    ) -> Result<(), StorageFailure> {
        let value = serde_json::to_vec(sub).map_err(|e| corrupt("subscription", e))?;
        self.kv(service, SUBSCRIPTIONS)
            .set(
                service,
                &subscription_key(&sub.node, &sub.jid, &sub.subid),
                &value,
            )
            .await
    }

    /// Removes a subscription; `false` if none.
    pub async fn remove_subscription(
        &self,
        service: &str,
        node: &str,
        jid: &str,
        subid: &str,
    ) -> Result<bool, StorageFailure> {
        self.kv(service, SUBSCRIPTIONS)
            .remove(service, &subscription_key(node, jid, subid))
            .await
    }

    /// Subscriptions of a service.
    pub async fn subscriptions(
        &self,
        service: &str,
    ) -> Result<Vec<SubscriptionRecord>, StorageFailure> {
        let mut all: Vec<SubscriptionRecord> = self
            .kv(service, SUBSCRIPTIONS)
            .entries(service)
            .await?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v).map_err(|e| corrupt("subscription", e)))
            .collect::<Result<_, _>>()?;
        all.sort_by(|a, b| (&a.node, &a.jid, &a.subid).cmp(&(&b.node, &b.jid, &b.subid)));
        Ok(all)
    }

    /// Stores (or replaces) an item and keeps at most `max_items` newest ones.
    pub async fn publish_item(
        &self,
        service: &str,
        node: &str,
        item: &ItemRecord,
        max_items: Option<u64>,
    ) -> Result<(), StorageFailure> {
        let items = self.items_of(service);
        let owner = format!("{service}/{node}");
        items
            .append(
                &owner,
                &ArchivedItem {
                    id: item.id.clone(),
                    at_ms: now_ms(),
                    with: item.publisher.clone(),
                    value: item.payload.clone().into_bytes(),
                },
            )
            .await?;
        if let Some(max) = max_items {
            items.truncate(&owner, max).await?;
        }
        Ok(())
    }

    /// Removes an item; `false` if none.
    pub async fn retract_item(
        &self,
        service: &str,
        node: &str,
        id: &str,
    ) -> Result<bool, StorageFailure> {
        let q = ArchiveQuery {
            ids: Some(vec![id.to_owned()]),
            ..ArchiveQuery::default()
        };
        let n = self
            .items_of(service)
            .delete(&format!("{service}/{node}"), &q)
            .await?;
        Ok(n > 0)
    }

    /// Items, newest first: those with the given ids, or the newest `max` (all if `None`).
    pub async fn items(
        &self,
        service: &str,
        node: &str,
        ids: Option<&[String]>,
        max: Option<u64>,
    ) -> Result<Vec<ItemRecord>, StorageFailure> {
        let q = ArchiveQuery {
            ids: ids.map(<[String]>::to_vec),
            limit: max,
            reverse: true,
            ..ArchiveQuery::default()
        };
        self.items_of(service)
            .find(&format!("{service}/{node}"), &q)
            .await?
            .into_iter()
            .map(|i| {
                Ok(ItemRecord {
                    payload: String::from_utf8(i.value).map_err(|e| corrupt("item", e))?,
                    id: i.id,
                    publisher: i.with,
                })
            })
            .collect()
    }

    /// Removes every item of a node.
    pub async fn purge_items(&self, service: &str, node: &str) -> Result<(), StorageFailure> {
        self.items_of(service)
            .delete(&format!("{service}/{node}"), &ArchiveQuery::default())
            .await?;
        Ok(())
    }
}
