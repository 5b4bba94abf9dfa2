//! The named stores modules open for themselves ([`KvStore`], [`ArchiveStore`]): the
//! key-value rows under their host and store name; the archives' items under an owner row
//! (host, store, owner), so each item and index entry carries a number, not three names.

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use openspimed_module_api::{ArchiveQuery, ArchiveStore, ArchivedItem, KvStore, StorageFailure};

use super::{GATHER, SqliteStore, all, backend};
use crate::storage::StorageError;

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

/// An archive of one host and name, with the owner rows it has written to: owner rows are
/// never deleted (an account's deletion removes its items, not its row), so a row once
/// committed stays valid for the handle's life. A module holding its handle (the
/// ScopeNodes, per node) then appends without looking its owner up by three names.
pub(super) struct Archive(
    Scope,
    std::sync::Mutex<std::collections::HashMap<String, i64>>,
);

impl SqliteStore {
    /// The key-value store `name` of `host`.
    pub(super) fn named_kv(&self, host: &str, name: &str) -> Kv {
        Kv(self.scope(host, name))
    }

    /// The archive `name` of `host`.
    pub(super) fn named_archive(&self, host: &str, name: &str) -> Archive {
        Archive(self.scope(host, name), Default::default())
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

/// The owner row of the first three parameters (host, store, owner); NULL when the owner
/// has never had an item, which every comparison with it fails.
const OWNER: &str = "(SELECT id FROM archive_owners WHERE host = ?1 AND store = ?2 AND owner = ?3)";

/// The `WHERE` clause and its parameters for `query` on the items of `owner_cond` (an SQL
/// expression the items' `owner` is compared with, using the first parameters `args`
/// holds). Each condition names its own parameter `$`.
fn selection(owner_cond: &str, mut args: Vec<Value>, q: &ArchiveQuery) -> (String, Vec<Value>) {
    let mut sql = format!("owner {owner_cond}");
    // Appends `cond`, each `$` in it taking the next of `values`.
    let mut push = |sql: &mut String, cond: &str, values: Vec<Value>| {
        let mut parts = cond.split('$');
        sql.push_str(parts.next().unwrap_or(""));
        for (part, v) in parts.zip(values) {
            args.push(v);
            sql.push_str(&format!("?{}", args.len()));
            sql.push_str(part);
        }
    };
    // A column of the owner's item with the id `$`: NULL for an id of another owner, or
    // none, which every comparison with it fails (an unknown id matches nothing).
    let of_id = |cols: &str| {
        format!("(SELECT {cols} FROM archive_items AS o WHERE o.owner {owner_cond} AND o.id = $)")
    };
    let text = |s: &String| Value::Text(s.clone());
    if q.by_time {
        // Ordered by (time, append order): `after` and `before` are positions in that
        // order, and the bounds by time they imply are put together with `start` and
        // `end` so that the index by time is entered at the right place, not scanned from
        // `start` to it (what a client catching up page by page since a time asks).
        match (q.start_ms, &q.after) {
            (Some(t), Some(id)) => push(
                &mut sql,
                &format!(" AND at_ms >= max($, {})", of_id("at_ms")),
                vec![Value::Integer(t), text(id)],
            ),
            (Some(t), None) => push(&mut sql, " AND at_ms >= $", vec![Value::Integer(t)]),
            (None, Some(id)) => push(
                &mut sql,
                &format!(" AND at_ms >= {}", of_id("at_ms")),
                vec![text(id)],
            ),
            (None, None) => {}
        }
        match (q.end_ms, &q.before) {
            (Some(t), Some(id)) => push(
                &mut sql,
                &format!(" AND at_ms <= min($, {})", of_id("at_ms")),
                vec![Value::Integer(t), text(id)],
            ),
            (Some(t), None) => push(&mut sql, " AND at_ms <= $", vec![Value::Integer(t)]),
            (None, Some(id)) => push(
                &mut sql,
                &format!(" AND at_ms <= {}", of_id("at_ms")),
                vec![text(id)],
            ),
            (None, None) => {}
        }
        if let Some(id) = &q.after {
            let cond = format!(" AND (at_ms, seq) > {}", of_id("at_ms, seq"));
            push(&mut sql, &cond, vec![text(id)]);
        }
        if let Some(id) = &q.before {
            let cond = format!(" AND (at_ms, seq) < {}", of_id("at_ms, seq"));
            push(&mut sql, &cond, vec![text(id)]);
        }
    } else {
        if let Some(t) = q.start_ms {
            push(&mut sql, " AND at_ms >= $", vec![Value::Integer(t)]);
        }
        if let Some(t) = q.end_ms {
            push(&mut sql, " AND at_ms <= $", vec![Value::Integer(t)]);
        }
        if let Some(id) = &q.after {
            push(
                &mut sql,
                &format!(" AND seq > {}", of_id("seq")),
                vec![text(id)],
            );
        }
        if let Some(id) = &q.before {
            push(
                &mut sql,
                &format!(" AND seq < {}", of_id("seq")),
                vec![text(id)],
            );
        }
    }
    if let Some(w) = &q.with {
        push(&mut sql, " AND with_jid = $", vec![text(w)]);
    }
    if q.named_only {
        // Lets SQLite use the partial index `archive_items_by_with` (it cannot infer
        // that the items are named).
        sql.push_str(" AND id IS NOT NULL");
    }
    if let Some(ids) = &q.ids {
        sql.push_str(" AND id IN (");
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            push(&mut sql, "$", vec![Value::Text(id.clone())]);
        }
        sql.push(')');
    }
    (sql, args)
}

impl Scope {
    /// Deletes the items a [`selection`] takes; returns how many.
    async fn delete_where(&self, cond: String, args: Vec<Value>) -> Result<u64, StorageFailure> {
        let sql = format!("DELETE FROM archive_items WHERE {cond}");
        self.db
            .write(move |c: &Connection| {
                c.execute(&sql, params_from_iter(args))
                    .map(|n| n as u64)
                    .map_err(backend)
            })
            .await
            .map_err(Into::into)
    }

    /// [`selection`] for the items of one owner.
    fn of_owner(&self, owner: &str, q: &ArchiveQuery) -> (String, Vec<Value>) {
        let (host, store, owner) = self.keys(owner);
        let args = vec![Value::Text(host), Value::Text(store), Value::Text(owner)];
        selection(&format!("= {OWNER}"), args, q)
    }
}

fn archived(r: &rusqlite::Row<'_>) -> rusqlite::Result<ArchivedItem> {
    Ok(ArchivedItem {
        id: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
        at_ms: r.get(1)?,
        with: r.get(2)?,
        value: r.get(3)?,
    })
}

/// The row of `owner` in the archive `store` of `host`, created on first use (inside the
/// caller's transaction, so a rolled-back append leaves no owner behind).
fn owner_id(c: &Connection, host: &str, store: &str, owner: &str) -> Result<i64, StorageError> {
    let found = c
        .prepare_cached(
            "SELECT id FROM archive_owners WHERE host = ?1 AND store = ?2 AND owner = ?3",
        )
        .and_then(|mut st| {
            st.query_row(params![host, store, owner], |r| r.get(0))
                .optional()
        })
        .map_err(backend)?;
    if let Some(id) = found {
        return Ok(id);
    }
    c.prepare_cached("INSERT INTO archive_owners (host, store, owner) VALUES (?1, ?2, ?3)")
        .and_then(|mut st| st.execute(params![host, store, owner]))
        .map_err(backend)?;
    Ok(c.last_insert_rowid())
}

/// Appends `items` to the archive of the owner row `owner`; an item with an id replaces
/// the owner's item of that id.
fn append_items(c: &Connection, owner: i64, items: &[ArchivedItem]) -> Result<(), StorageError> {
    let mut insert = c
        .prepare_cached(
            "INSERT INTO archive_items (owner, id, at_ms, with_jid, value)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(backend)?;
    for item in items {
        let id = (!item.id.is_empty()).then_some(item.id.as_str());
        if let Some(id) = id {
            c.prepare_cached("DELETE FROM archive_items WHERE owner = ?1 AND id = ?2")
                .and_then(|mut st| st.execute(params![owner, id]))
                .map_err(backend)?;
        }
        insert
            .execute(params![owner, id, item.at_ms, item.with, item.value])
            .map_err(backend)?;
    }
    Ok(())
}

#[async_trait]
impl ArchiveStore for Archive {
    async fn append(&self, owner: &str, item: &ArchivedItem) -> Result<(), StorageFailure> {
        let (host, store, owner) = self.0.keys(owner);
        let item = item.clone();
        self.0
            .db
            .write(move |c: &Connection| {
                let owner = owner_id(c, &host, &store, &owner)?;
                append_items(c, owner, std::slice::from_ref(&item))
            })
            .await
            .map_err(Into::into)
    }

    async fn append_many(
        &self,
        owner: &str,
        items: Vec<ArchivedItem>,
    ) -> Result<(), StorageFailure> {
        let known = self.1.lock().ok().and_then(|m| m.get(owner).copied());
        let names = known.is_none().then(|| self.0.keys(owner));
        let row = self
            .0
            .db
            .write_gathering(GATHER, move |c: &Connection| {
                let row = match (known, names) {
                    (Some(row), _) => row,
                    (None, Some((host, store, owner))) => owner_id(c, &host, &store, &owner)?,
                    (None, None) => return Err(StorageError::Backend("no owner".into())),
                };
                append_items(c, row, &items)?;
                Ok(row)
            })
            .await?;
        // Remembered only once committed: a rolled-back row would not exist.
        if known.is_none()
            && let Ok(mut rows) = self.1.lock()
        {
            rows.insert(owner.to_owned(), row);
        }
        Ok(())
    }

    async fn find(
        &self,
        owner: &str,
        query: &ArchiveQuery,
    ) -> Result<Vec<ArchivedItem>, StorageFailure> {
        let (cond, mut args) = self.0.of_owner(owner, query);
        let dir = if query.reverse { "DESC" } else { "ASC" };
        let order = if query.by_time {
            format!("at_ms {dir}, seq {dir}")
        } else {
            format!("seq {dir}")
        };
        let mut sql = format!(
            "SELECT id, at_ms, with_jid, value FROM archive_items WHERE {cond} ORDER BY {order}"
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
        let (cond, args) = self.0.of_owner(owner, query);
        let sql = format!("SELECT COUNT(*) FROM archive_items WHERE {cond}");
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

    async fn count_at_most(
        &self,
        owner: &str,
        query: &ArchiveQuery,
        cap: u64,
    ) -> Result<Option<u64>, StorageFailure> {
        let (cond, args) = self.0.of_owner(owner, query);
        let probe = cap.saturating_add(1).min(i64::MAX as u64);
        let sql = format!(
            "SELECT COUNT(*) FROM (SELECT 1 FROM archive_items WHERE {cond} LIMIT {probe})"
        );
        self.0
            .db
            .read(move |c| {
                c.query_row(&sql, params_from_iter(args), |r| r.get::<_, i64>(0))
                    .map(|n| (n as u64 <= cap).then_some(n as u64))
                    .map_err(backend)
            })
            .await
            .map_err(Into::into)
    }

    async fn delete(&self, owner: &str, query: &ArchiveQuery) -> Result<u64, StorageFailure> {
        let (cond, args) = self.0.of_owner(owner, query);
        self.0.delete_where(cond, args).await
    }

    async fn delete_everywhere(&self, query: &ArchiveQuery) -> Result<u64, StorageFailure> {
        let only = ArchiveQuery {
            start_ms: query.start_ms,
            end_ms: query.end_ms,
            with: query.with.clone(),
            ..ArchiveQuery::default()
        };
        let args = vec![
            Value::Text(self.0.host.to_string()),
            Value::Text(self.0.name.to_string()),
        ];
        let (cond, args) = selection(
            "IN (SELECT id FROM archive_owners WHERE host = ?1 AND store = ?2)",
            args,
            &only,
        );
        self.0.delete_where(cond, args).await
    }

    async fn truncate(&self, owner: &str, keep: u64) -> Result<u64, StorageFailure> {
        let (host, store, owner) = self.0.keys(owner);
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.0
            .db
            .write(move |c: &Connection| {
                c.execute(
                    &format!(
                        "DELETE FROM archive_items WHERE owner = {OWNER} AND seq NOT IN (
                             SELECT seq FROM archive_items WHERE owner = {OWNER}
                             ORDER BY seq DESC LIMIT ?4)"
                    ),
                    params![host, store, owner, keep],
                )
                .map(|n| n as u64)
                .map_err(backend)
            })
            .await
            .map_err(Into::into)
    }

    async fn summary(
        &self,
        owner: &str,
        query: &ArchiveQuery,
    ) -> Result<Vec<(String, u64)>, StorageFailure> {
        let (cond, args) = self.0.of_owner(owner, query);
        let sql = format!(
            "SELECT with_jid, COUNT(*) FROM archive_items WHERE {cond}
             GROUP BY with_jid ORDER BY with_jid"
        );
        self.0
            .db
            .read(move |c| {
                all(c, &sql, params_from_iter(args), |r| {
                    Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
                })
            })
            .await
            .map_err(Into::into)
    }

    async fn owners(&self) -> Result<Vec<String>, StorageFailure> {
        let (host, store) = (self.0.host.to_string(), self.0.name.to_string());
        self.0
            .db
            .read(move |c| {
                all(
                    c,
                    "SELECT o.owner FROM archive_owners o WHERE o.host = ?1 AND o.store = ?2
                       AND EXISTS (SELECT 1 FROM archive_items i WHERE i.owner = o.id)
                     ORDER BY o.owner",
                    params![host, store],
                    |r| r.get(0),
                )
            })
            .await
            .map_err(Into::into)
    }
}
