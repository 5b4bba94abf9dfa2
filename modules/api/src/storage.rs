//! Storage traits modules reach through [`crate::Context`]: named key-value stores and
//! archives any module opens for itself, and (until their modules move to those) the
//! narrow stores of the certification service, PubSub and ScopeNodes.
//! The server implements them (SQLite now, PostgreSQL later); every method is one
//! transaction and returns only once it is durable.

use async_trait::async_trait;

/// A storage backend failed; the message is for logs only.
#[derive(Debug, thiserror::Error)]
#[error("storage failure: {0}")]
pub struct StorageFailure(pub String);

/// A public key published to a certification service (XEP-0189).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    /// The certification service JID it was published to.
    pub service: String,
    /// The JID the key belongs to, as published.
    pub jid: String,
    /// The key as DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
    /// When it was stored (seconds since the epoch).
    pub created_unix: i64,
    /// When it was revoked, if it was.
    pub revoked_unix: Option<i64>,
}

/// Keys of the certification services hosted here.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores (or replaces, clearing any revocation) a key.
    async fn put_key(
        &self,
        service: &str,
        jid: &str,
        spki_der: &[u8],
    ) -> Result<(), StorageFailure>;
    /// The key of `jid` at `service`, revoked or not.
    async fn key(&self, service: &str, jid: &str) -> Result<Option<StoredKey>, StorageFailure>;
    /// Marks a key revoked; `false` if there is none.
    async fn revoke_key(&self, service: &str, jid: &str) -> Result<bool, StorageFailure>;
    /// All keys of a service (or of every service when `None`), sorted by service and JID.
    async fn list_keys(&self, service: Option<&str>) -> Result<Vec<StoredKey>, StorageFailure>;
}

/// A PubSub node as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    /// The node name.
    pub node: String,
    /// The node configuration, serialized by the PubSub module (opaque here).
    pub config: String,
}

/// An affiliation (XEP-0060 §4.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffiliationRecord {
    /// Node.
    pub node: String,
    /// Bare JID.
    pub jid: String,
    /// `owner`, `publisher`, `publish-only`, `member`, `outcast`.
    pub affiliation: String,
}

/// A subscription (XEP-0060 §4.2).
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// The payload XML (opaque here).
    pub payload: String,
}

/// PubSub nodes, affiliations, subscriptions and items, per service JID.
#[async_trait]
pub trait PubSubStore: Send + Sync {
    /// Creates a node with its owner; `false` if it exists (nothing changed).
    async fn create_node(
        &self,
        service: &str,
        node: &str,
        config: &str,
        owner: &str,
    ) -> Result<bool, StorageFailure>;
    /// Replaces a node's configuration.
    async fn set_node_config(
        &self,
        service: &str,
        node: &str,
        config: &str,
    ) -> Result<(), StorageFailure>;
    /// Deletes a node with its items, subscriptions and affiliations; `false` if none.
    async fn delete_node(&self, service: &str, node: &str) -> Result<bool, StorageFailure>;
    /// Every node of a service.
    async fn nodes(&self, service: &str) -> Result<Vec<NodeRecord>, StorageFailure>;
    /// Sets an affiliation (`none` removes it).
    async fn set_affiliation(
        &self,
        service: &str,
        node: &str,
        jid: &str,
        affiliation: &str,
    ) -> Result<(), StorageFailure>;
    /// Affiliations of a service.
    async fn affiliations(&self, service: &str) -> Result<Vec<AffiliationRecord>, StorageFailure>;
    /// Adds or updates a subscription.
    async fn put_subscription(
        &self,
        service: &str,
        sub: &SubscriptionRecord,
    ) -> Result<(), StorageFailure>;
    /// Removes a subscription; `false` if none.
    async fn remove_subscription(
        &self,
        service: &str,
        node: &str,
        jid: &str,
        subid: &str,
    ) -> Result<bool, StorageFailure>;
    /// Subscriptions of a service.
    async fn subscriptions(&self, service: &str)
    -> Result<Vec<SubscriptionRecord>, StorageFailure>;
    /// Stores (or replaces) an item and keeps at most `max_items` newest ones.
    async fn publish_item(
        &self,
        service: &str,
        node: &str,
        item: &ItemRecord,
        max_items: Option<u64>,
    ) -> Result<(), StorageFailure>;
    /// Removes an item; `false` if none.
    async fn retract_item(
        &self,
        service: &str,
        node: &str,
        id: &str,
    ) -> Result<bool, StorageFailure>;
    /// Items, newest first: those with the given ids, or the newest `max` (all if `None`).
    async fn items(
        &self,
        service: &str,
        node: &str,
        ids: Option<&[String]>,
        max: Option<u64>,
    ) -> Result<Vec<ItemRecord>, StorageFailure>;
    /// Removes every item of a node.
    async fn purge_items(&self, service: &str, node: &str) -> Result<(), StorageFailure>;
}

/// One stored sensor entry (an OpenSpime data `<entry/>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SensorEntry {
    /// The ScopeNode (bare JID) that collected it.
    pub node: String,
    /// The scope (the ScopeNode's resource).
    pub scope: String,
    /// The reporting spime (full JID, as SpimeSeek compares it).
    pub spime: String,
    /// When it was measured (its `date`, else when it arrived), seconds since the epoch.
    pub at_unix: i64,
    /// The `<entry/>` as XML.
    pub xml: String,
}

/// Sensor data, ScopeNode keys and the SpimeSeek de-duplication log.
#[async_trait]
pub trait SensorStore: Send + Sync {
    /// Stores entries in one transaction; returns once durable.
    async fn append_entries(&self, entries: Vec<SensorEntry>) -> Result<(), StorageFailure>;
    /// The newest entries of a spime at a ScopeNode, newest first, at most `limit`.
    async fn entries_for_spime(
        &self,
        node: &str,
        spime: &str,
        limit: u64,
    ) -> Result<Vec<SensorEntry>, StorageFailure>;
    /// Entries at a ScopeNode, optionally of one spime and since a time, oldest first.
    async fn export_entries(
        &self,
        node: Option<&str>,
        spime: Option<&str>,
        since_unix: Option<i64>,
    ) -> Result<Vec<SensorEntry>, StorageFailure>;
    /// Entry counts per (node, scope).
    async fn entry_counts(&self) -> Result<Vec<(String, String, u64)>, StorageFailure>;
    /// Deletes entries of a scope older than a time; returns how many.
    async fn expire_entries(
        &self,
        node: &str,
        scope: &str,
        before_unix: i64,
    ) -> Result<u64, StorageFailure>;
    /// A ScopeNode's private key (PKCS#8 DER), if one was stored.
    async fn node_key(&self, node: &str) -> Result<Option<Vec<u8>>, StorageFailure>;
    /// Stores a ScopeNode's private key.
    async fn put_node_key(&self, node: &str, pkcs8_der: &[u8]) -> Result<(), StorageFailure>;
    /// Whether a SpimeSeek request was already handled.
    async fn seek_seen(
        &self,
        node: &str,
        osid: &str,
        request_id: &str,
    ) -> Result<bool, StorageFailure>;
    /// Records a SpimeSeek request until it expires; `false` if it was already recorded.
    async fn remember_seek(
        &self,
        node: &str,
        osid: &str,
        request_id: &str,
        expires_unix: i64,
    ) -> Result<bool, StorageFailure>;
    /// Forgets requests that expired before a time.
    async fn forget_seeks(&self, before_unix: i64) -> Result<(), StorageFailure>;
}

/// A module's key-value store: values by owner and key, the shape of Prosody's
/// `module:open_store(name, "map")`. One store per host and name ([`crate::Context::open_store`]);
/// the owner is an account's bare JID for per-account data, or `""` for the host's own.
#[async_trait]
pub trait KvStore: Send + Sync {
    /// The value under `key` of `owner`.
    async fn get(&self, owner: &str, key: &str) -> Result<Option<Vec<u8>>, StorageFailure>;
    /// Sets (or replaces) the value under `key` of `owner`.
    async fn set(&self, owner: &str, key: &str, value: &[u8]) -> Result<(), StorageFailure>;
    /// Replaces the value under `key` only if it is `expected` (`None`: absent) and says
    /// whether it did; `new` of `None` removes it. What a value several stanzas change at
    /// once (a counter) needs without a lock of the module's own.
    async fn swap(
        &self,
        owner: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StorageFailure>;
    /// Removes the value under `key`; `false` if there was none.
    async fn remove(&self, owner: &str, key: &str) -> Result<bool, StorageFailure>;
    /// Every `(key, value)` of `owner`, sorted by key.
    async fn entries(&self, owner: &str) -> Result<Vec<(String, Vec<u8>)>, StorageFailure>;
    /// Removes everything of `owner` (an account that is deleted); returns how many.
    async fn clear(&self, owner: &str) -> Result<u64, StorageFailure>;
}

/// One item of an [`ArchiveStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedItem {
    /// Unique per owner: a stanza id (XEP-0359) for a message archive, an item id for a
    /// PubSub node. Appending an id the owner has replaces the old item.
    pub id: String,
    /// When it was archived, in milliseconds since the epoch: what queries by time use.
    pub at_ms: i64,
    /// The JID it is with (the peer of a message, the publisher of an item): what queries
    /// by JID use. Empty when it has none.
    pub with: String,
    /// The payload, opaque to the store (serialized XML for a stanza).
    pub value: Vec<u8>,
}

/// Which items of an owner a query or deletion takes: every condition given must hold.
/// The fields of a XEP-0313 query (start, end, with) and of XEP-0059 result set paging
/// (after, before, max), as Prosody's archive stores take them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveQuery {
    /// Archived at or after this time (ms since the epoch).
    pub start_ms: Option<i64>,
    /// Archived at or before this time (ms since the epoch).
    pub end_ms: Option<i64>,
    /// With exactly this JID.
    pub with: Option<String>,
    /// Archived after the item with this id (an unknown id matches nothing).
    pub after: Option<String>,
    /// Archived before the item with this id (an unknown id matches nothing).
    pub before: Option<String>,
    /// Only these ids.
    pub ids: Option<Vec<String>>,
    /// At most this many items: the oldest ones, or the newest with `reverse`.
    pub limit: Option<u64>,
    /// Newest first.
    pub reverse: bool,
}

/// A module's ordered archive: items per owner in the order they were appended, with
/// queries by time, id and JID — the shape of Prosody's archive stores
/// (`module:open_store(name, "archive")`), what a message archive (XEP-0313) or PubSub's
/// items need.
#[async_trait]
pub trait ArchiveStore: Send + Sync {
    /// Appends an item for `owner` (replacing the owner's item of the same id).
    async fn append(&self, owner: &str, item: &ArchivedItem) -> Result<(), StorageFailure>;
    /// The items of `owner` that `query` takes, oldest first (newest first with
    /// `reverse`).
    async fn find(
        &self,
        owner: &str,
        query: &ArchiveQuery,
    ) -> Result<Vec<ArchivedItem>, StorageFailure>;
    /// How many items of `owner` `query` takes (without its `limit`): the count of a
    /// XEP-0059 result set.
    async fn count(&self, owner: &str, query: &ArchiveQuery) -> Result<u64, StorageFailure>;
    /// Deletes the items of `owner` that `query` takes (`limit` and `reverse` ignored);
    /// returns how many.
    async fn delete(&self, owner: &str, query: &ArchiveQuery) -> Result<u64, StorageFailure>;
    /// Deletes all but the `keep` newest items of `owner`; returns how many went.
    async fn truncate(&self, owner: &str, keep: u64) -> Result<u64, StorageFailure>;
}

/// Every storage trait a module may use.
pub trait ModuleStorage: Send + Sync {
    /// The key-value store `name` of `host` (created on first use).
    fn kv(&self, host: &str, name: &str) -> std::sync::Arc<dyn KvStore>;
    /// The archive `name` of `host` (created on first use).
    fn archive(&self, host: &str, name: &str) -> std::sync::Arc<dyn ArchiveStore>;
    /// Certification-service keys.
    fn keys(&self) -> &dyn KeyStore;
    /// PubSub services.
    fn pubsub(&self) -> &dyn PubSubStore;
    /// ScopeNode data.
    fn sensors(&self) -> &dyn SensorStore;
}
