//! What a ScopeNode keeps, in the module's named stores of the node's domain (as Prosody
//! keeps a component's data under the component's host):
//! - the archive `sensor_data NODE` (one per ScopeNode, so retention and counts of one
//!   node touch no other's): the entries, owner = the spime's full JID, with = the scope,
//!   at = when measured;
//! - the key-value store `scopenode_keys`: the node's private key (owner = node, key `""`);
//! - the key-value store `seek_log`: SpimeSeek requests handled (owner = node, key =
//!   `OSID\nREQUEST-ID`, value = when the record expires, seconds since the epoch).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use openspimed_module_api::jid::Jid;
use openspimed_module_api::{
    ArchiveQuery, ArchiveStore, ArchivedItem, KvStore, ModuleStorage, StorageFailure,
};

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

/// The entries' archive.
const ENTRIES: &str = "sensor_data";
/// The nodes' keys.
const KEYS: &str = "scopenode_keys";
/// The SpimeSeek de-duplication log.
const SEEKS: &str = "seek_log";

/// Sensor data, ScopeNode keys and the SpimeSeek de-duplication log of every ScopeNode.
#[derive(Clone)]
pub struct SensorData {
    /// Where the stores are opened: those of each node's domain.
    storage: Arc<dyn ModuleStorage>,
    /// Each node's entries archive once opened: a report then finds it without parsing
    /// the node's JID and naming its store again (measured on the report path).
    archives: Arc<Mutex<HashMap<String, Arc<dyn ArchiveStore>>>>,
}

fn seek_key(osid: &str, request_id: &str) -> String {
    format!("{osid}\n{request_id}")
}

fn entry(node: &str, spime: &str, item: ArchivedItem) -> SensorEntry {
    SensorEntry {
        node: node.to_owned(),
        scope: item.with,
        spime: spime.to_owned(),
        at_unix: item.at_ms.div_euclid(1000),
        // Written from `String`s: always UTF-8.
        xml: String::from_utf8(item.value)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

/// An entry as its archive keeps it (moved, not copied: this is the report path).
fn item(e: SensorEntry) -> ArchivedItem {
    ArchivedItem {
        id: String::new(),
        at_ms: e.at_unix.saturating_mul(1000),
        with: e.scope,
        value: e.xml.into_bytes(),
    }
}

impl SensorData {
    /// The ScopeNodes' data in `storage`.
    pub fn new(storage: Arc<dyn ModuleStorage>) -> SensorData {
        SensorData {
            storage,
            archives: Arc::default(),
        }
    }

    fn domain(node: &str) -> String {
        Jid::new(node)
            .map(|j| j.domain().to_string())
            .unwrap_or_else(|_| node.to_owned())
    }

    fn entries(&self, node: &str) -> Arc<dyn ArchiveStore> {
        let open = || {
            self.storage
                .archive(&Self::domain(node), &format!("{ENTRIES} {node}"))
        };
        let Ok(mut archives) = self.archives.lock() else {
            return open();
        };
        if let Some(a) = archives.get(node) {
            return a.clone();
        }
        let a = open();
        archives.insert(node.to_owned(), a.clone());
        a
    }

    fn kv(&self, node: &str, name: &str) -> Arc<dyn KvStore> {
        self.storage.kv(&Self::domain(node), name)
    }

    /// Stores entries, each report's (one node and spime) in one transaction that shares
    /// its commit with other reports; returns once durable.
    pub async fn append_entries(&self, entries: Vec<SensorEntry>) -> Result<(), StorageFailure> {
        let mut entries = entries.into_iter().peekable();
        while let Some(first) = entries.next() {
            let (node, spime) = (first.node.clone(), first.spime.clone());
            let mut items = vec![item(first)];
            while let Some(e) = entries.next_if(|e| e.node == node && e.spime == spime) {
                items.push(item(e));
            }
            self.entries(&node).append_many(&spime, items).await?;
        }
        Ok(())
    }

    /// The newest entries (by measurement time) of a spime at a ScopeNode, across its
    /// scopes, newest first, at most `limit`.
    pub async fn entries_for_spime(
        &self,
        node: &str,
        spime: &str,
        limit: u64,
    ) -> Result<Vec<SensorEntry>, StorageFailure> {
        let q = ArchiveQuery {
            limit: Some(limit),
            reverse: true,
            by_time: true,
            ..ArchiveQuery::default()
        };
        Ok(self
            .entries(node)
            .find(spime, &q)
            .await?
            .into_iter()
            .map(|i| entry(node, spime, i))
            .collect())
    }

    /// Entries at a ScopeNode, of one spime (or every one) and since a time, oldest first.
    pub async fn export_entries(
        &self,
        node: &str,
        spime: Option<&str>,
        since_unix: Option<i64>,
    ) -> Result<Vec<SensorEntry>, StorageFailure> {
        let archive = self.entries(node);
        let spimes = match spime {
            Some(s) => vec![s.to_owned()],
            None => archive.owners().await?,
        };
        let q = ArchiveQuery {
            start_ms: since_unix.map(|t| t.saturating_mul(1000)),
            by_time: true,
            ..ArchiveQuery::default()
        };
        let mut out = Vec::new();
        for o in spimes {
            out.extend(
                archive
                    .find(&o, &q)
                    .await?
                    .into_iter()
                    .map(|i| entry(node, &o, i)),
            );
        }
        // Each spime's in order; merged by time (stable: a spime's order within a second).
        out.sort_by_key(|e| e.at_unix);
        Ok(out)
    }

    /// Entry counts of a ScopeNode per scope, sorted by scope.
    pub async fn entry_counts(&self, node: &str) -> Result<Vec<(String, u64)>, StorageFailure> {
        let archive = self.entries(node);
        let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
        for spime in archive.owners().await? {
            for (scope, n) in archive.summary(&spime, &ArchiveQuery::default()).await? {
                *counts.entry(scope).or_default() += n;
            }
        }
        Ok(counts.into_iter().collect())
    }

    /// Deletes entries of a scope measured before a time; returns how many.
    pub async fn expire_entries(
        &self,
        node: &str,
        scope: &str,
        before_unix: i64,
    ) -> Result<u64, StorageFailure> {
        let q = ArchiveQuery {
            with: Some(scope.to_owned()),
            end_ms: Some(before_unix.saturating_mul(1000).saturating_sub(1)),
            ..ArchiveQuery::default()
        };
        self.entries(node).delete_everywhere(&q).await
    }

    /// A ScopeNode's private key (PKCS#8 DER), if one was stored.
    pub async fn node_key(&self, node: &str) -> Result<Option<Vec<u8>>, StorageFailure> {
        self.kv(node, KEYS).get(node, "").await
    }

    /// Stores a ScopeNode's private key.
    pub async fn put_node_key(&self, node: &str, pkcs8_der: &[u8]) -> Result<(), StorageFailure> {
        self.kv(node, KEYS).set(node, "", pkcs8_der).await
    }

    /// Whether a SpimeSeek request was already handled.
    pub async fn seek_seen(
        &self,
        node: &str,
        osid: &str,
        request_id: &str,
    ) -> Result<bool, StorageFailure> {
        Ok(self
            .kv(node, SEEKS)
            .get(node, &seek_key(osid, request_id))
            .await?
            .is_some())
    }

    /// Records a SpimeSeek request until it expires; `false` if it was already recorded.
    pub async fn remember_seek(
        &self,
        node: &str,
        osid: &str,
        request_id: &str,
        expires_unix: i64,
    ) -> Result<bool, StorageFailure> {
        let expires = expires_unix.to_string();
        self.kv(node, SEEKS)
            .swap(
                node,
                &seek_key(osid, request_id),
                None,
                Some(expires.as_bytes()),
            )
            .await
    }

    /// Forgets a ScopeNode's requests that expired before a time.
    pub async fn forget_seeks(&self, node: &str, before_unix: i64) -> Result<(), StorageFailure> {
        let seeks = self.kv(node, SEEKS);
        for (key, value) in seeks.entries(node).await? {
            let expires = std::str::from_utf8(&value)
                .ok()
                .and_then(|v| v.parse::<i64>().ok());
            // An unreadable record is forgotten too: it could only ever block a request.
            if expires.is_none_or(|t| t < before_unix) {
                seeks.remove(node, &key).await?;
            }
        }
        Ok(())
    }
}
