//! Rosters, offline messages, blocklists and vCards: the `ImStore` implementation.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, all, backend, now_unix};
use crate::storage::{ImStore, OfflineMessage, RosterItem, StorageError, SubState};

fn roster_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RosterItem> {
    let groups: String = r.get(2)?;
    Ok(RosterItem {
        jid: r.get(0)?,
        name: r.get(1)?,
        groups: serde_json::from_str(&groups).unwrap_or_default(),
        state: SubState {
            to: r.get(3)?,
            from: r.get(4)?,
            pending_out: r.get(5)?,
            pending_in: r.get(6)?,
            preapproved: r.get(7)?,
        },
    })
}

const ROSTER_COLUMNS: &str =
    "contact, name, groups, sub_to, sub_from, pending_out, pending_in, preapproved";

fn roster_version(c: &Connection, domain: &str, user: &str) -> Result<u64, StorageError> {
    c.query_row(
        "SELECT version FROM roster_versions WHERE domain = ?1 AND username = ?2",
        params![domain, user],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map(|v| v.unwrap_or(0).max(0) as u64)
    .map_err(backend)
}

#[async_trait]
impl ImStore for SqliteStore {
    async fn roster(
        &self,
        user: &str,
        domain: &str,
    ) -> Result<(u64, Vec<RosterItem>), StorageError> {
        let (user, domain) = (user.to_owned(), domain.to_owned());
        self.read(move |conn| {
            let tx = conn.transaction().map_err(backend)?;
            let version = roster_version(&tx, &domain, &user)?;
            let items = all(
                &tx,
                &format!(
                    "SELECT {ROSTER_COLUMNS} FROM roster WHERE domain = ?1 AND username = ?2 \
                     ORDER BY contact"
                ),
                params![domain, user],
                roster_row,
            )?;
            Ok((version, items))
        })
        .await
    }

    async fn roster_item(
        &self,
        user: &str,
        domain: &str,
        contact: &str,
    ) -> Result<Option<RosterItem>, StorageError> {
        let (user, domain, contact) = (user.to_owned(), domain.to_owned(), contact.to_owned());
        self.read(move |conn| {
            conn.query_row(
                &format!(
                    "SELECT {ROSTER_COLUMNS} FROM roster \
                     WHERE domain = ?1 AND username = ?2 AND contact = ?3"
                ),
                params![domain, user, contact],
                roster_row,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn put_roster_item(
        &self,
        user: &str,
        domain: &str,
        contact: &str,
        item: Option<RosterItem>,
        max_items: usize,
    ) -> Result<Option<u64>, StorageError> {
        let (user, domain, contact) = (user.to_owned(), domain.to_owned(), contact.to_owned());
        self.write(move |conn: &Connection| {
            match item {
                Some(it) => {
                    let exists: bool = conn
                        .query_row(
                            "SELECT 1 FROM roster WHERE domain = ?1 AND username = ?2 AND contact = ?3",
                            params![domain, user, contact],
                            |_| Ok(true),
                        )
                        .optional()
                        .map_err(backend)?
                        .unwrap_or(false);
                    if !exists {
                        let n: i64 = conn
                            .query_row(
                                "SELECT COUNT(*) FROM roster WHERE domain = ?1 AND username = ?2",
                                params![domain, user],
                                |r| r.get(0),
                            )
                            .map_err(backend)?;
                        if n as usize >= max_items {
                            return Ok(None);
                        }
                    }
                    let groups = serde_json::to_string(&it.groups).map_err(backend)?;
                    conn.execute(
                        "INSERT OR REPLACE INTO roster (domain, username, contact, name, groups, \
                         sub_to, sub_from, pending_out, pending_in, preapproved) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                        params![
                            domain,
                            user,
                            contact,
                            it.name,
                            groups,
                            it.state.to,
                            it.state.from,
                            it.state.pending_out,
                            it.state.pending_in,
                            it.state.preapproved
                        ],
                    )
                    .map_err(backend)?;
                }
                None => {
                    conn.execute(
                        "DELETE FROM roster WHERE domain = ?1 AND username = ?2 AND contact = ?3",
                        params![domain, user, contact],
                    )
                    .map_err(backend)?;
                }
            }
            let version = roster_version(conn, &domain, &user)? + 1;
            conn.execute(
                "INSERT OR REPLACE INTO roster_versions (domain, username, version) VALUES (?1, ?2, ?3)",
                params![domain, user, version as i64],
            )
            .map_err(backend)?;
            Ok(Some(version))
        })
        .await
    }

    async fn store_offline(
        &self,
        user: &str,
        domain: &str,
        stanza: &str,
        quota: usize,
    ) -> Result<bool, StorageError> {
        let (user, domain, stanza) = (user.to_owned(), domain.to_owned(), stanza.to_owned());
        self.write(move |conn: &Connection| {
            let n: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM offline_messages WHERE domain = ?1 AND username = ?2",
                    params![domain, user],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            if n as usize >= quota {
                return Ok(false);
            }
            conn.execute(
                "INSERT INTO offline_messages (domain, username, stanza, stored_unix) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![domain, user, stanza, now_unix()],
            )
            .map_err(backend)?;
            Ok(true)
        })
        .await
    }

    async fn offline(&self, user: &str, domain: &str) -> Result<Vec<OfflineMessage>, StorageError> {
        let (user, domain) = (user.to_owned(), domain.to_owned());
        self.read(move |conn| {
            all(
                conn,
                "SELECT seq, stanza FROM offline_messages WHERE domain = ?1 AND username = ?2 \
                 ORDER BY seq",
                params![domain, user],
                |r| {
                    Ok(OfflineMessage {
                        seq: r.get(0)?,
                        stanza: r.get(1)?,
                    })
                },
            )
        })
        .await
    }

    async fn blocklist(&self, user: &str, domain: &str) -> Result<Vec<String>, StorageError> {
        let (user, domain) = (user.to_owned(), domain.to_owned());
        self.read(move |conn| {
            all(
                conn,
                "SELECT jid FROM blocklist WHERE domain = ?1 AND username = ?2 ORDER BY jid",
                params![domain, user],
                |r| r.get::<_, String>(0),
            )
        })
        .await
    }

    async fn set_blocked(
        &self,
        user: &str,
        domain: &str,
        jids: &[String],
        blocked: bool,
    ) -> Result<(), StorageError> {
        let (user, domain, jids) = (user.to_owned(), domain.to_owned(), jids.to_vec());
        self.write(move |conn: &Connection| {
            if !blocked && jids.is_empty() {
                conn.execute(
                    "DELETE FROM blocklist WHERE domain = ?1 AND username = ?2",
                    params![domain, user],
                )
                .map_err(backend)?;
            }
            for j in &jids {
                let sql = if blocked {
                    "INSERT OR IGNORE INTO blocklist (domain, username, jid) VALUES (?1, ?2, ?3)"
                } else {
                    "DELETE FROM blocklist WHERE domain = ?1 AND username = ?2 AND jid = ?3"
                };
                conn.execute(sql, params![domain, user, j])
                    .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn vcard(&self, user: &str, domain: &str) -> Result<Option<String>, StorageError> {
        let (user, domain) = (user.to_owned(), domain.to_owned());
        self.read(move |conn| {
            conn.query_row(
                "SELECT xml FROM vcards WHERE domain = ?1 AND username = ?2",
                params![domain, user],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn set_vcard(&self, user: &str, domain: &str, xml: &str) -> Result<(), StorageError> {
        let (user, domain, xml) = (user.to_owned(), domain.to_owned(), xml.to_owned());
        self.write(move |conn: &Connection| {
            conn.execute(
                "INSERT OR REPLACE INTO vcards (domain, username, xml) VALUES (?1, ?2, ?3)",
                params![domain, user, xml],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn delete_offline(&self, user: &str, domain: &str, seq: i64) -> Result<(), StorageError> {
        let (user, domain) = (user.to_owned(), domain.to_owned());
        self.write(move |conn: &Connection| {
            conn.execute(
                "DELETE FROM offline_messages WHERE domain = ?1 AND username = ?2 AND seq <= ?3",
                params![domain, user, seq],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }
}
