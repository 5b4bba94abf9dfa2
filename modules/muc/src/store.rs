//! What a conference service keeps: its persistent rooms (configuration, affiliations,
//! subject) in the key-value store `muc_rooms` under the service's JID, keyed by room JID;
//! each room's messages in the archive `muc_log` (Prosody's store name) under the room's
//! JID: its history and, later, its XEP-0313 archive.

use std::collections::VecDeque;
use std::sync::Arc;

use openspimed_module_api::{
    ArchiveQuery, ArchiveStore, ArchivedItem, Context, Element, KvStore, StorageFailure,
};

use crate::room::{Past, Stored};

/// The persistent rooms.
pub const ROOMS: &str = "muc_rooms";
/// The rooms' messages.
pub const LOG: &str = "muc_log";

/// One service's stores.
pub struct RoomStore {
    /// The service's JID (the owner of the rooms' records).
    service: String,
    /// Room records.
    rooms: Arc<dyn KvStore>,
    /// Room messages.
    log: Arc<dyn ArchiveStore>,
}

impl RoomStore {
    /// The stores of `service` on `cx`'s host.
    pub fn new(cx: &Context, service: &str) -> RoomStore {
        RoomStore {
            service: service.to_owned(),
            rooms: cx.open_store(ROOMS),
            log: cx.open_archive(LOG),
        }
    }

    /// The stored room `jid`.
    pub async fn get(&self, jid: &str) -> Result<Option<Stored>, StorageFailure> {
        let v = self.rooms.get(&self.service, jid).await?;
        Ok(v.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Stores room `jid`.
    pub async fn put(&self, jid: &str, room: &Stored) -> Result<(), StorageFailure> {
        let json = serde_json::to_vec(room).map_err(|e| StorageFailure(e.to_string()))?;
        self.rooms.set(&self.service, jid, &json).await
    }

    /// Forgets room `jid` (it became temporary, or was destroyed).
    pub async fn remove(&self, jid: &str) -> Result<(), StorageFailure> {
        self.rooms.remove(&self.service, jid).await.map(|_| ())
    }

    /// Every stored room.
    pub async fn all(&self) -> Result<Vec<(String, Stored)>, StorageFailure> {
        Ok(self
            .rooms
            .entries(&self.service)
            .await?
            .into_iter()
            .filter_map(|(k, v)| Some((k, serde_json::from_slice(&v).ok()?)))
            .collect())
    }

    /// Archives a message of room `jid`.
    pub async fn archive(&self, jid: &str, past: &Past) -> Result<(), StorageFailure> {
        let item = ArchivedItem {
            id: past.id.clone(),
            at_ms: past.at_ms,
            with: past.stanza.attr("from").unwrap_or("").to_owned(),
            value: past.stanza.to_bytes(),
        };
        self.log.append(jid, &item).await
    }

    /// Deletes the messages of room `jid` (it was destroyed).
    pub async fn forget_log(&self, jid: &str) -> Result<(), StorageFailure> {
        self.log
            .delete(jid, &ArchiveQuery::default())
            .await
            .map(|_| ())
    }

    /// The rooms' messages (what a room's XEP-0313 queries read).
    pub fn log(&self) -> &dyn ArchiveStore {
        self.log.as_ref()
    }

    /// The last `n` messages of room `jid`, oldest first.
    pub async fn history(&self, jid: &str, n: usize) -> Result<VecDeque<Past>, StorageFailure> {
        let q = ArchiveQuery {
            limit: Some(n as u64),
            reverse: true,
            named_only: true,
            by_time: true,
            ..ArchiveQuery::default()
        };
        let mut items = self.log.find(jid, &q).await?;
        items.reverse();
        Ok(items
            .into_iter()
            .filter_map(|i| {
                let stanza = Element::parse(std::str::from_utf8(&i.value).ok()?).ok()?;
                Some(Past {
                    id: i.id,
                    at_ms: i.at_ms,
                    stanza,
                })
            })
            .collect())
    }
}
