//! IM's data in the stores a module opens for itself: per host, each account's data under
//! its bare JID. `roster` (key-value: contact → item, and the roster version under the
//! empty key), `offline` (archive of the messages waiting for the next session),
//! `blocklist` (key-value: blocked JID → nothing) and `vcard` (key-value: the vCard under
//! the empty key). Schema 10 of the SQLite backend moved the data of the tables IM had
//! before into them.

use std::sync::Arc;

use openspimed_module_api::{
    ArchiveQuery, ArchiveStore, ArchivedItem, KvStore, ModuleStorage, StorageFailure,
};

use crate::subscription::SubState;

/// The roster store's name.
pub const ROSTER: &str = "roster";
/// The offline-message archive's name.
pub const OFFLINE: &str = "offline";
/// The blocklist store's name.
pub const BLOCKLIST: &str = "blocklist";
/// The vCard store's name.
pub const VCARD: &str = "vcard";

/// The key of the roster version in the roster store (no contact has an empty JID).
const VERSION: &str = "";

/// A roster item as stored (JSON; the contact is the key). The field names are those
/// schema 10 wrote with `json_object`.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredItem {
    /// The handle the user gave the contact.
    #[serde(default)]
    name: Option<String>,
    /// The groups the user put the contact in.
    #[serde(default)]
    groups: Vec<String>,
    /// Subscription to the contact's presence.
    #[serde(default)]
    to: bool,
    /// Subscription of the contact to the user's presence.
    #[serde(default)]
    from: bool,
    /// The user's request awaits an answer.
    #[serde(default)]
    pending_out: bool,
    /// The contact's request awaits an answer.
    #[serde(default)]
    pending_in: bool,
    /// The user approved before the contact asked.
    #[serde(default)]
    preapproved: bool,
}

impl StoredItem {
    fn of(item: &RosterItem) -> StoredItem {
        let s = item.state;
        StoredItem {
            name: item.name.clone(),
            groups: item.groups.clone(),
            to: s.to,
            from: s.from,
            pending_out: s.pending_out,
            pending_in: s.pending_in,
            preapproved: s.preapproved,
        }
    }

    fn into_item(self, jid: String) -> RosterItem {
        RosterItem {
            jid,
            name: self.name,
            groups: self.groups,
            state: SubState {
                to: self.to,
                from: self.from,
                pending_out: self.pending_out,
                pending_in: self.pending_in,
                preapproved: self.preapproved,
            },
        }
    }
}

/// One roster item (RFC 6121 §2.1.2) with the subscription state behind it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RosterItem {
    /// The contact's bare JID.
    pub jid: String,
    /// The handle the user gave the contact.
    pub name: Option<String>,
    /// Groups the user put the contact in.
    pub groups: Vec<String>,
    /// Subscriptions both ways, pending requests, pre-approval.
    pub state: SubState,
}

/// A stored offline message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineMessage {
    /// Its id in the archive: what delivery removes it by.
    pub id: String,
    /// The stanza as XML.
    pub stanza: String,
}

fn failure(what: &str, e: impl std::fmt::Display) -> StorageFailure {
    StorageFailure(format!("{what}: {e}"))
}

/// The domain of a bare JID: the host whose stores hold the account's data.
fn host_of(bare: &str) -> &str {
    bare.rsplit_once('@').map_or(bare, |(_, d)| d)
}

/// IM's stores, opened per host on use.
#[derive(Clone)]
pub struct ImData {
    /// Where the stores are.
    storage: Arc<dyn ModuleStorage>,
}

impl ImData {
    /// IM's data in `storage`.
    pub fn new(storage: Arc<dyn ModuleStorage>) -> ImData {
        ImData { storage }
    }

    fn kv(&self, bare: &str, name: &str) -> Arc<dyn KvStore> {
        self.storage.kv(host_of(bare), name)
    }

    fn archive(&self, bare: &str, name: &str) -> Arc<dyn ArchiveStore> {
        self.storage.archive(host_of(bare), name)
    }

    /// An account's roster (sorted by contact) and its version (RFC 6121 §2.6).
    pub async fn roster(&self, bare: &str) -> Result<(u64, Vec<RosterItem>), StorageFailure> {
        let mut version = 0;
        let mut items = Vec::new();
        for (key, value) in self.kv(bare, ROSTER).entries(bare).await? {
            if key == VERSION {
                version = parse_version(&value);
                continue;
            }
            match serde_json::from_slice::<StoredItem>(&value) {
                Ok(s) => items.push(s.into_item(key)),
                Err(e) => tracing::warn!(%e, contact = %key, "skipping an unreadable roster item"),
            }
        }
        Ok((version, items))
    }

    /// One item of a roster.
    pub async fn roster_item(
        &self,
        bare: &str,
        contact: &str,
    ) -> Result<Option<RosterItem>, StorageFailure> {
        match self.kv(bare, ROSTER).get(bare, contact).await? {
            None => Ok(None),
            Some(v) => serde_json::from_slice::<StoredItem>(&v)
                .map(|s| Some(s.into_item(contact.to_owned())))
                .map_err(|e| failure("unreadable roster item", e)),
        }
    }

    /// Stores an item (replacing the contact's) or, with `None`, removes the contact;
    /// returns the roster's new version. Refused with `Ok(None)` when a new item would
    /// exceed `max_items`.
    pub async fn put_roster_item(
        &self,
        bare: &str,
        contact: &str,
        item: Option<RosterItem>,
        max_items: usize,
    ) -> Result<Option<u64>, StorageFailure> {
        let store = self.kv(bare, ROSTER);
        match item {
            Some(item) => {
                if store.get(bare, contact).await?.is_none() {
                    let entries = store.entries(bare).await?;
                    let held = entries.iter().filter(|(k, _)| k != VERSION).count();
                    if held >= max_items {
                        return Ok(None);
                    }
                }
                let value = serde_json::to_vec(&StoredItem::of(&item))
                    .map_err(|e| failure("roster item not serializable", e))?;
                store.set(bare, contact, &value).await?;
            }
            None => {
                store.remove(bare, contact).await?;
            }
        }
        // The next version: compare and swap, as two changes may come at once.
        loop {
            let now = store.get(bare, VERSION).await?;
            let next = now.as_deref().map_or(0, parse_version) + 1;
            let text = next.to_string();
            if store
                .swap(bare, VERSION, now.as_deref(), Some(text.as_bytes()))
                .await?
            {
                return Ok(Some(next));
            }
        }
    }

    /// Stores a message for an unavailable account; `false` (nothing stored) when the
    /// account already holds `quota` messages.
    pub async fn store_offline(
        &self,
        bare: &str,
        stanza: &str,
        quota: usize,
    ) -> Result<bool, StorageFailure> {
        let archive = self.archive(bare, OFFLINE);
        let held = archive.count(bare, &ArchiveQuery::default()).await?;
        if held >= quota as u64 {
            return Ok(false);
        }
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let item = ArchivedItem {
            id: format!("{:032x}", rand::random::<u128>()),
            at_ms,
            with: String::new(),
            value: stanza.as_bytes().to_vec(),
        };
        archive.append(bare, &item).await?;
        Ok(true)
    }

    /// The account's offline messages, oldest first.
    pub async fn offline(&self, bare: &str) -> Result<Vec<OfflineMessage>, StorageFailure> {
        let items = self
            .archive(bare, OFFLINE)
            .find(bare, &ArchiveQuery::default())
            .await?;
        Ok(items
            .into_iter()
            .filter_map(|i| {
                let stanza = String::from_utf8(i.value).ok()?;
                Some(OfflineMessage { id: i.id, stanza })
            })
            .collect())
    }

    /// Removes delivered offline messages.
    pub async fn delete_offline(&self, bare: &str, ids: Vec<String>) -> Result<(), StorageFailure> {
        let query = ArchiveQuery {
            ids: Some(ids),
            ..ArchiveQuery::default()
        };
        self.archive(bare, OFFLINE).delete(bare, &query).await?;
        Ok(())
    }

    /// The JIDs an account blocks (XEP-0191), sorted.
    pub async fn blocklist(&self, bare: &str) -> Result<Vec<String>, StorageFailure> {
        let entries = self.kv(bare, BLOCKLIST).entries(bare).await?;
        Ok(entries.into_iter().map(|(k, _)| k).collect())
    }

    /// Blocks (`true`) or unblocks JIDs; unblocking an empty list unblocks everything.
    pub async fn set_blocked(
        &self,
        bare: &str,
        jids: &[String],
        blocked: bool,
    ) -> Result<(), StorageFailure> {
        let store = self.kv(bare, BLOCKLIST);
        if !blocked && jids.is_empty() {
            store.clear(bare).await?;
            return Ok(());
        }
        for j in jids {
            if blocked {
                store.set(bare, j, b"").await?;
            } else {
                store.remove(bare, j).await?;
            }
        }
        Ok(())
    }

    /// An account's vCard (XEP-0054), as XML.
    pub async fn vcard(&self, bare: &str) -> Result<Option<String>, StorageFailure> {
        let v = self.kv(bare, VCARD).get(bare, "").await?;
        Ok(v.and_then(|v| String::from_utf8(v).ok()))
    }

    /// Replaces an account's vCard.
    pub async fn set_vcard(&self, bare: &str, xml: &str) -> Result<(), StorageFailure> {
        self.kv(bare, VCARD).set(bare, "", xml.as_bytes()).await
    }
}

fn parse_version(v: &[u8]) -> u64 {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
