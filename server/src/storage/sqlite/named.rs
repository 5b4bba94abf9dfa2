//! The named stores modules open for themselves ([`KvStore`], [`ArchiveStore`]): one table
//! each, every row under its host and store name.

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use openspimed_module_api::{ArchiveQuery, ArchiveStore, ArchivedItem, KvStore, StorageFailure};

use super::{SqliteStore, all, backend};

/// Where a named store's rows are: its host and name.
#[derive(Clone)]
struct Scope {
    /// The database.
    db: SqliteStore,
    /// The host that opened it.
    host: Arc<str>,
    /// The store's name.
    name: Arc<str>,
}

/// A key-value store of one host and name.
pub(super) struct Kv(Scope);

/// An archive of one host and name.
pub(super) struct Archive(Scope);

impl SqliteStore {
    /// The key-value store `name` of `host`.
    pub(super) fn named_kv(&self, host: &str, name: &str) -> Kv {
        Kv(self.scope(host, name))
    }

    /// The archive `name` of `host`.
    pub(super) fn named_archive(&self, host: &str, name: &str) -> Archive {
        Archive(self.scope(host, name))
    }

    fn scope(&self, host: &str, name: &str) -> Scope {
        Scope {
            db: self.clone(),
            host: Arc::from(host),
            name: Arc::from(name),
        }
    }
}

impl Scope {
    /// The host, the store name and `owner`, owned for a closure sent to a connection.
    fn keys(&self, owner: &str) -> (String, String, String) {
        (
            self.host.to_string(),
            self.name.to_string(),
            owner.to_owned(),
        )
    }
}

#[async_trait]
impl KvStore for Kv {
    async fn get(&self, owner: &str, key: &str) -> Result<Option<Vec<u8>>, StorageFailure> {
        let (host, store, owner) = self.0.keys(owner);
        let key = key.to_owned();
        self.0
            .db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT value FROM module_kv
                     WHERE host = ?1 AND store = ?2 AND owner = ?3 AND key = ?4",
                )
                .and_then(|mut st| {
                    st.query_row(params![host, store, owner, key], |r| r.get(0))
                        .optional()
                })
                .map_err(backend)
            })
            .await
            .map_err(Into::into)
    }

    async fn set(&self, owner: &str, key: &str, value: &[u8]) -> Result<(), StorageFailure> {
        let (host, store, owner) = self.0.keys(owner);
        let (key, value) = (key.to_owned(), value.to_vec());
        self.0
            .db
            .write(move |c: &Connection| {
                c.prepare_cached(
                    "INSERT INTO module_kv VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (host, store, owner, key) DO UPDATE SET value = excluded.value",
                )
                .and_then(|mut st| st.execute(params![host, store, owner, key, value]))
                .map_err(backend)?;
                Ok(())
            })
            .await
            .map_err(Into::into)
    }

    async fn swap(
        &self,
        owner: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StorageFailure> {
        let (host, store, owner) = self.0.keys(owner);
        let key = key.to_owned();
        let (expected, new) = (expected.map(<[u8]>::to_vec), new.map(<[u8]>::to_vec));
        self.0
            .db
            .write(move |c: &Connection| {
                // The writer runs one job at a time: what is read here cannot change
                // before the write below.
                let now: Option<Vec<u8>> = c
                    .query_row(
                        "SELECT value FROM module_kv
                         WHERE host = ?1 AND store = ?2 AND owner = ?3 AND key = ?4",
                        params![host, store, owner, key],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(backend)?;
                if now != expected {
                    return Ok(false);
                }
                match new {
                    Some(v) => c.execute(
                        "INSERT INTO module_kv VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (host, store, owner, key) DO UPDATE SET value = excluded.value",
                        params![host, store, owner, key, v],
                    ),
                    None => c.execute(
                        "DELETE FROM module_kv
                         WHERE host = ?1 AND store = ?2 AND owner = ?3 AND key = ?4",
                        params![host, store, owner, key],
                    ),
                }
                .map_err(backend)?;
                Ok(true)
            })
            .await
            .map_err(Into::into)
    }

    async fn remove(&self, owner: &str, key: &str) -> Result<bool, StorageFailure> {
        let (host, store, owner) = self.0.keys(owner);
        let key = key.to_owned();
        self.0
            .db
            .write(move |c: &Connection| {
                let n = c
                    .execute(
                        "DELETE FROM module_kv
                         WHERE host = ?1 AND store = ?2 AND owner = ?3 AND key = ?4",
                        params![host, store, owner, key],
                    )
                    .map_err(backend)?;
                Ok(n > 0)
            })
            .await
            .map_err(Into::into)
    }

    async fn entries(&self, owner: &str) -> Result<Vec<(String, Vec<u8>)>, StorageFailure> {
        let (host, store, owner) = self.0.keys(owner);
        self.0
            .db
            .read(move |c| {
                all(
                    c,
                    "SELECT key, value FROM module_kv
                     WHERE host = ?1 AND store = ?2 AND owner = ?3 ORDER BY key",
                    params![host, store, owner],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .await
            .map_err(Into::into)
    }

    async fn clear(&self, owner: &str) -> Result<u64, StorageFailure> {
        let (host, store, owner) = self.0.keys(owner);
        self.0
            .db
            .write(move |c: &Connection| {
                c.execute(
                    "DELETE FROM module_kv WHERE host = ?1 AND store = ?2 AND owner = ?3",
                    params![host, store, owner],
                )
                .map(|n| n as u64)
                .map_err(backend)
            })
            .await
            .map_err(Into::into)
    }
}

/// The `WHERE` clause and its parameters for `query` on the rows of one owner (the first
/// three parameters: host, store, owner). Each condition names its own parameter `$`.
fn selection(host: String, store: String, owner: String, q: &ArchiveQuery) -> (String, Vec<Value>) {
    let mut sql = String::from("host = ?1 AND store = ?2 AND owner = ?3");
    let mut args = vec![Value::Text(host), Value::Text(store), Value::Text(owner)];
    let mut push = |sql: &mut String, cond: &str, v: Value| {
        args.push(v);
        sql.push_str(&cond.replace('$', &format!("?{}", args.len())));
    };
    if let Some(t) = q.start_ms {
        push(&mut sql, " AND at_ms >= $", Value::Integer(t));
    }
    if let Some(t) = q.end_ms {
        push(&mut sql, " AND at_ms <= $", Value::Integer(t));
    }
    if let Some(w) = &q.with {
        push(&mut sql, " AND with_jid = $", Value::Text(w.clone()));
    }
    // An id of another owner, or none, gives NULL: the comparison matches nothing.
    let of_id = " (SELECT seq FROM module_archive AS o WHERE o.host = ?1 AND o.store = ?2
                  AND o.owner = ?3 AND o.id = $)";
    if let Some(id) = &q.after {
        push(
            &mut sql,
            &format!(" AND seq >{of_id}"),
            Value::Text(id.clone()),
        );
    }
    if let Some(id) = &q.before {
        push(
            &mut sql,
            &format!(" AND seq <{of_id}"),
            Value::Text(id.clone()),
        );
    }
    if let Some(ids) = &q.ids {
        sql.push_str(" AND id IN (");
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            push(&mut sql, "$", Value::Text(id.clone()));
        }
        sql.push(')');
    }
    (sql, args)
}

fn archived(r: &rusqlite::Row<'_>) -> rusqlite::Result<ArchivedItem> {
    Ok(ArchivedItem {
        id: r.get(0)?,
        at_ms: r.get(1)?,
        with: r.get(2)?,
        value: r.get(3)?,
    })
}

#[async_trait]
impl ArchiveStore for Archive {
    async fn append(&self, owner: &str, item: &ArchivedItem) -> Result<(), StorageFailure> {
        let (host, store, owner) = self.0.keys(owner);
        let item = item.clone();
        self.0
            .db
            .write(move |c: &Connection| {
                c.prepare_cached(
                    "DELETE FROM module_archive
                     WHERE host = ?1 AND store = ?2 AND owner = ?3 AND id = ?4",
                )
                .and_then(|mut st| st.execute(params![host, store, owner, item.id]))
                .map_err(backend)?;
                c.prepare_cached(
                    "INSERT INTO module_archive (host, store, owner, id, at_ms, with_jid, value)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        host, store, owner, item.id, item.at_ms, item.with, item.value
                    ])
                })
                .map_err(backend)?;
                Ok(())
            })
            .await
            .map_err(Into::into)
    }

    async fn find(
        &self,
        owner: &str,
        query: &ArchiveQuery,
    ) -> Result<Vec<ArchivedItem>, StorageFailure> {
        let (host, store, owner) = self.0.keys(owner);
        let (cond, mut args) = selection(host, store, owner, query);
        let order = if query.reverse { "DESC" } else { "ASC" };
        let mut sql = format!(
            "SELECT id, at_ms, with_jid, value FROM module_archive WHERE {cond} ORDER BY seq {order}"
        );
        if let Some(n) = query.limit {
            args.push(Value::Integer(i64::try_from(n).unwrap_or(i64::MAX)));
            sql.push_str(&format!(" LIMIT ?{}", args.len()));
        }
        self.0
            .db
            .read(move |c| all(c, &sql, params_from_iter(args), archived))
            .await
            .map_err(Into::into)
    }

    async fn count(&self, owner: &str, query: &ArchiveQuery) -> Result<u64, StorageFailure> {
        let (host, store, owner) = self.0.keys(owner);
        let (cond, args) = selection(host, store, owner, query);
        let sql = format!("SELECT COUNT(*) FROM module_archive WHERE {cond}");
        self.0
            .db
            .read(move |c| {
                c.query_row(&sql, params_from_iter(args), |r| r.get::<_, i64>(0))
                    .map(|n| n as u64)
                    .map_err(backend)
            })
            .await
            .map_err(Into::into)
    }

    async fn delete(&self, owner: &str, query: &ArchiveQuery) -> Result<u64, StorageFailure> {
        let (host, store, owner) = self.0.keys(owner);
        let (cond, args) = selection(host, store, owner, query);
        let sql = format!("DELETE FROM module_archive WHERE {cond}");
        self.0
            .db
            .write(move |c: &Connection| {
                c.execute(&sql, params_from_iter(args))
                    .map(|n| n as u64)
                    .map_err(backend)
            })
            .await
            .map_err(Into::into)
    }

    async fn truncate(&self, owner: &str, keep: u64) -> Result<u64, StorageFailure> {
        let (host, store, owner) = self.0.keys(owner);
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.0
            .db
            .write(move |c: &Connection| {
                c.execute(
                    "DELETE FROM module_archive
                     WHERE host = ?1 AND store = ?2 AND owner = ?3 AND seq NOT IN (
                         SELECT seq FROM module_archive
                         WHERE host = ?1 AND store = ?2 AND owner = ?3
                         ORDER BY seq DESC LIMIT ?4)",
                    params![host, store, owner, keep],
                )
                .map(|n| n as u64)
                .map_err(backend)
            })
            .await
            .map_err(Into::into)
    }
}
