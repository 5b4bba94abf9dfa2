//! ScopeNode entries, node keys and seen seeks: the `SensorStore` implementation.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use openspimed_module_api::{SensorEntry, SensorStore, StorageFailure};

use super::{GATHER, SqliteStore, all, backend, own};
use crate::storage::StorageError;

fn sensor_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<SensorEntry> {
    Ok(SensorEntry {
        node: r.get(0)?,
        scope: r.get(1)?,
        spime: r.get(2)?,
        at_unix: r.get(3)?,
        xml: r.get(4)?,
    })
}

/// The stream of `node`, `scope`, `spime`, created on first use (inside the caller's
/// transaction, so a rolled-back batch leaves no stream behind).
fn stream_id(c: &Connection, node: &str, scope: &str, spime: &str) -> Result<i64, StorageError> {
    let found = c
        .prepare_cached(
            "SELECT id FROM sensor_streams WHERE node = ?1 AND spime = ?2 AND scope = ?3",
        )
        .and_then(|mut st| {
            st.query_row(params![node, spime, scope], |r| r.get(0))
                .optional()
        })
        .map_err(backend)?;
    if let Some(id) = found {
        return Ok(id);
    }
    c.prepare_cached("INSERT INTO sensor_streams (node, spime, scope) VALUES (?1, ?2, ?3)")
        .and_then(|mut st| st.execute(params![node, spime, scope]))
        .map_err(backend)?;
    Ok(c.last_insert_rowid())
}

#[async_trait]
impl SensorStore for SqliteStore {
    async fn append_entries(&self, entries: Vec<SensorEntry>) -> Result<(), StorageFailure> {
        Ok(self
            .write_gathering(GATHER, move |c: &Connection| {
                let mut st = c
                    .prepare_cached(
                        "INSERT INTO sensor_data (stream, at_unix, xml) VALUES (?1, ?2, ?3)",
                    )
                    .map_err(backend)?;
                // A report's entries share their stream.
                let mut last: Option<(&str, &str, &str, i64)> = None;
                for e in &entries {
                    let stream = match last {
                        Some((n, sc, sp, id)) if (n, sc, sp) == (&e.node, &e.scope, &e.spime) => id,
                        _ => stream_id(c, &e.node, &e.scope, &e.spime)?,
                    };
                    last = Some((&e.node, &e.scope, &e.spime, stream));
                    st.execute(params![stream, e.at_unix, e.xml])
                        .map_err(backend)?;
                }
                Ok(())
            })
            .await?)
    }

    async fn entries_for_spime(
        &self,
        node: &str,
        spime: &str,
        limit: u64,
    ) -> Result<Vec<SensorEntry>, StorageFailure> {
        let (node, spime) = own(node, spime);
        Ok(self
            .read(move |c| {
                let streams = all(
                    c,
                    "SELECT id, scope FROM sensor_streams WHERE node = ?1 AND spime = ?2",
                    params![node, spime],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
                )?;
                // Newest first within each scope (the index order, read backwards), then
                // merged: sorting across scopes in SQL would sort every stored entry.
                let mut found: Vec<(i64, i64, SensorEntry)> = Vec::new();
                for (id, scope) in streams {
                    found.extend(all(
                        c,
                        "SELECT at_unix, seq, xml FROM sensor_data WHERE stream = ?1
                             ORDER BY at_unix DESC, seq DESC LIMIT ?2",
                        params![id, limit as i64],
                        |r| {
                            Ok((
                                r.get(0)?,
                                r.get(1)?,
                                SensorEntry {
                                    node: node.clone(),
                                    scope: scope.clone(),
                                    spime: spime.clone(),
                                    at_unix: r.get(0)?,
                                    xml: r.get(2)?,
                                },
                            ))
                        },
                    )?);
                }
                found.sort_by_key(|&(at, seq, _)| std::cmp::Reverse((at, seq)));
                found.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
                Ok(found.into_iter().map(|(_, _, e)| e).collect())
            })
            .await?)
    }

    async fn export_entries(
        &self,
        node: Option<&str>,
        spime: Option<&str>,
        since_unix: Option<i64>,
    ) -> Result<Vec<SensorEntry>, StorageFailure> {
        let (node, spime) = (node.map(str::to_owned), spime.map(str::to_owned));
        Ok(self
            .read(move |c| {
                all(
                    c,
                    "SELECT s.node, s.scope, s.spime, d.at_unix, d.xml
                         FROM sensor_streams s JOIN sensor_data d ON d.stream = s.id
                         WHERE (?1 IS NULL OR s.node = ?1) AND (?2 IS NULL OR s.spime = ?2)
                           AND (?3 IS NULL OR d.at_unix >= ?3)
                         ORDER BY d.at_unix, d.seq",
                    params![node, spime, since_unix],
                    sensor_entry,
                )
            })
            .await?)
    }

    async fn entry_counts(&self) -> Result<Vec<(String, String, u64)>, StorageFailure> {
        Ok(self
            .read(move |c| {
                all(
                    c,
                    "SELECT s.node, s.scope, COUNT(*)
                         FROM sensor_streams s JOIN sensor_data d ON d.stream = s.id
                         GROUP BY s.node, s.scope ORDER BY s.node, s.scope",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)),
                )
            })
            .await?)
    }

    async fn expire_entries(
        &self,
        node: &str,
        scope: &str,
        before_unix: i64,
    ) -> Result<u64, StorageFailure> {
        let (node, scope) = own(node, scope);
        Ok(self
            .write(move |c: &Connection| {
                let n = c
                    .execute(
                        "DELETE FROM sensor_data WHERE at_unix < ?3 AND stream IN
                             (SELECT id FROM sensor_streams WHERE node = ?1 AND scope = ?2)",
                        params![node, scope, before_unix],
                    )
                    .map_err(backend)?;
                Ok(n as u64)
            })
            .await?)
    }

    async fn node_key(&self, node: &str) -> Result<Option<Vec<u8>>, StorageFailure> {
        let node = node.to_owned();
        Ok(self
            .read(move |c| {
                c.query_row(
                    "SELECT pkcs8 FROM scopenode_keys WHERE node = ?1",
                    params![node],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)
            })
            .await?)
    }

    async fn put_node_key(&self, node: &str, pkcs8_der: &[u8]) -> Result<(), StorageFailure> {
        let (node, der) = (node.to_owned(), pkcs8_der.to_vec());
        Ok(self
            .write(move |c: &Connection| {
                c.execute(
                    "INSERT OR REPLACE INTO scopenode_keys VALUES (?1, ?2)",
                    params![node, der],
                )
                .map_err(backend)?;
                Ok(())
            })
            .await?)
    }

    async fn seek_seen(
        &self,
        node: &str,
        osid: &str,
        request_id: &str,
    ) -> Result<bool, StorageFailure> {
        let (node, osid) = own(node, osid);
        let id = request_id.to_owned();
        Ok(self
            .read(move |c| {
                c.query_row(
                    "SELECT 1 FROM seek_log WHERE node = ?1 AND osid = ?2 AND request_id = ?3",
                    params![node, osid, id],
                    |_| Ok(()),
                )
                .optional()
                .map(|o| o.is_some())
                .map_err(backend)
            })
            .await?)
    }

    async fn remember_seek(
        &self,
        node: &str,
        osid: &str,
        request_id: &str,
        expires_unix: i64,
    ) -> Result<bool, StorageFailure> {
        let (node, osid) = own(node, osid);
        let id = request_id.to_owned();
        Ok(self
            .write(move |c: &Connection| {
                let n = c
                    .execute(
                        "INSERT OR IGNORE INTO seek_log VALUES (?1, ?2, ?3, ?4)",
                        params![node, osid, id, expires_unix],
                    )
                    .map_err(backend)?;
                Ok(n == 1)
            })
            .await?)
    }

    async fn forget_seeks(&self, before_unix: i64) -> Result<(), StorageFailure> {
        Ok(self
            .write(move |c: &Connection| {
                c.execute(
                    "DELETE FROM seek_log WHERE expires_unix < ?1",
                    params![before_unix],
                )
                .map_err(backend)?;
                Ok(())
            })
            .await?)
    }
}
