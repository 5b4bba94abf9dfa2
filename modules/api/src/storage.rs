//! Storage traits modules reach through [`crate::Context`]: named key-value stores and
//! archives any module opens for itself, the two shapes of Prosody's `module:open_store`.
//! Nothing here names a module's data: each module keeps its own types over these (IM's
//! rosters, PubSub's nodes, the ScopeNodes' sensor readings).
//! The server implements them (SQLite now, PostgreSQL later); every method is one
//! transaction and returns only once it is durable.

use async_trait::async_trait;

/// A storage backend failed; the message is for logs only.
#[derive(Debug, thiserror::Error)]
#[error("storage failure: {0}")]
pub struct StorageFailure(pub String);

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
    /// PubSub node. Appending an id the owner has replaces the old item. Empty for an item
    /// nothing names (a sensor reading): it replaces nothing, and queries by id
    /// (`after`, `before`, `ids`) do not find it.
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
    /// Ordered by `at_ms` (then append order) rather than append order alone: for items
    /// whose time is when they happened, not when they arrived (a sensor reading measured
    /// offline and reported later); `after` and `before` are then positions in that order.
    pub by_time: bool,
    /// Only items with an id. A message archive's items all have one; saying so lets a
    /// store use the index it keeps over named items only (by JID, in time order), which
    /// leaves unnamed items (readings, written at a high rate) out.
    pub named_only: bool,
}

/// A module's ordered archive: items per owner in the order they were appended, with
/// queries by time, id and JID — the shape of Prosody's archive stores
/// (`module:open_store(name, "archive")`), what a message archive (XEP-0313) or PubSub's
/// items need.
#[async_trait]
pub trait ArchiveStore: Send + Sync {
    /// Appends an item for `owner` (replacing the owner's item of the same id).
    async fn append(&self, owner: &str, item: &ArchivedItem) -> Result<(), StorageFailure>;
    /// Appends several items for `owner` in one transaction, which may wait a few
    /// milliseconds to share its commit with other writers (group commit): for what many
    /// clients write at a high rate (sensor reports), where one fsync per write would be
    /// the bottleneck.
    async fn append_many(
        &self,
        owner: &str,
        items: Vec<ArchivedItem>,
    ) -> Result<(), StorageFailure>;
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
    /// How many items of `owner` `query` takes when they are at most `cap`, `None` when
    /// there are more: a count that costs no more than `cap` items whatever the archive
    /// holds (a XEP-0059 `<count/>` over a large archive).
    async fn count_at_most(
        &self,
        owner: &str,
        query: &ArchiveQuery,
        cap: u64,
    ) -> Result<Option<u64>, StorageFailure>;
    /// Deletes the items of `owner` that `query` takes (`limit` and `reverse` ignored);
    /// returns how many.
    async fn delete(&self, owner: &str, query: &ArchiveQuery) -> Result<u64, StorageFailure>;
    /// Deletes the items `query` takes of every owner (Prosody's `archive:delete(true,
    /// query)`): what retention needs (`with`, `start_ms`, `end_ms` only; the id
    /// conditions, `limit` and `reverse` are ignored). Returns how many went.
    async fn delete_everywhere(&self, query: &ArchiveQuery) -> Result<u64, StorageFailure>;
    /// Deletes all but the `keep` newest items of `owner`; returns how many went.
    async fn truncate(&self, owner: &str, keep: u64) -> Result<u64, StorageFailure>;
    /// How many items of `owner` `query` takes, per `with` (sorted by it): Prosody's
    /// `archive:summary`, what a per-contact (or per-scope) count needs.
    async fn summary(
        &self,
        owner: &str,
        query: &ArchiveQuery,
    ) -> Result<Vec<(String, u64)>, StorageFailure>;
    /// Every owner that has had items, sorted (Prosody's `archive:users()`).
    async fn owners(&self) -> Result<Vec<String>, StorageFailure>;
}

/// Every storage trait a module may use.
pub trait ModuleStorage: Send + Sync {
    /// The key-value store `name` of `host` (created on first use).
    fn kv(&self, host: &str, name: &str) -> std::sync::Arc<dyn KvStore>;
    /// The archive `name` of `host` (created on first use).
    fn archive(&self, host: &str, name: &str) -> std::sync::Arc<dyn ArchiveStore>;
}
