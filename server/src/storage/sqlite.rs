//! The SQLite backend: WAL, `synchronous=FULL` (a commit is on disk before it is
//! acknowledged), schema migrations by `user_version`.

use std::any::Any;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use openspimed_module_api::{
    AffiliationRecord, ItemRecord, KeyStore, ModuleStorage, NodeRecord, PubSubStore, SensorEntry,
    SensorStore, StorageFailure, StoredKey, SubscriptionRecord,
};

use super::{
    AccountStore, Credentials, ImStore, OfflineMessage, RosterItem, ScramKeys, StorageError,
};
use crate::storage::SubState;

/// Schema migrations, applied in order; index + 1 is the `user_version` after each.
const MIGRATIONS: &[&str] = &[
    // 1: accounts with SCRAM keys for SHA-1 and SHA-256.
    "CREATE TABLE accounts (
        domain TEXT NOT NULL,
        username TEXT NOT NULL,
        sha1_salt BLOB NOT NULL, sha1_iterations INTEGER NOT NULL,
        sha1_stored_key BLOB NOT NULL, sha1_server_key BLOB NOT NULL,
        sha256_salt BLOB NOT NULL, sha256_iterations INTEGER NOT NULL,
        sha256_stored_key BLOB NOT NULL, sha256_server_key BLOB NOT NULL,
        created_unix INTEGER NOT NULL,
        PRIMARY KEY (domain, username)
    ) WITHOUT ROWID;",
    // 2: public keys of the hosted certification services (XEP-0189).
    "CREATE TABLE cert_keys (
        service TEXT NOT NULL,
        jid TEXT NOT NULL,
        spki_der BLOB NOT NULL,
        created_unix INTEGER NOT NULL,
        revoked_unix INTEGER,
        PRIMARY KEY (service, jid)
    ) WITHOUT ROWID;",
    // 3: PubSub (XEP-0060).
    "CREATE TABLE pubsub_nodes (
        service TEXT NOT NULL, node TEXT NOT NULL, config TEXT NOT NULL,
        PRIMARY KEY (service, node)
    ) WITHOUT ROWID;
    CREATE TABLE pubsub_affiliations (
        service TEXT NOT NULL, node TEXT NOT NULL, jid TEXT NOT NULL, affiliation TEXT NOT NULL,
        PRIMARY KEY (service, node, jid)
    ) WITHOUT ROWID;
    CREATE TABLE pubsub_subscriptions (
        service TEXT NOT NULL, node TEXT NOT NULL, jid TEXT NOT NULL, subid TEXT NOT NULL,
        state TEXT NOT NULL,
        PRIMARY KEY (service, node, jid, subid)
    ) WITHOUT ROWID;
    CREATE TABLE pubsub_items (
        service TEXT NOT NULL, node TEXT NOT NULL, id TEXT NOT NULL, publisher TEXT NOT NULL,
        payload TEXT NOT NULL, seq INTEGER NOT NULL,
        PRIMARY KEY (service, node, id)
    ) WITHOUT ROWID;
    CREATE INDEX pubsub_items_by_seq ON pubsub_items (service, node, seq);",
    // 4: ScopeNodes: sensor entries, node keys, the SpimeSeek de-duplication log.
    "CREATE TABLE sensor_entries (
        seq INTEGER PRIMARY KEY,
        node TEXT NOT NULL, scope TEXT NOT NULL, spime TEXT NOT NULL,
        at_unix INTEGER NOT NULL, xml TEXT NOT NULL
    );
    CREATE INDEX sensor_entries_by_spime ON sensor_entries (node, spime, at_unix);
    CREATE INDEX sensor_entries_by_scope ON sensor_entries (node, scope, at_unix);
    CREATE TABLE scopenode_keys (node TEXT PRIMARY KEY, pkcs8 BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE seek_log (
        node TEXT NOT NULL, osid TEXT NOT NULL, request_id TEXT NOT NULL,
        expires_unix INTEGER NOT NULL,
        PRIMARY KEY (node, osid, request_id)
    ) WITHOUT ROWID;",
    // 5: rosters with subscription states (RFC 6121), roster versions, offline messages.
    "CREATE TABLE roster (
        domain TEXT NOT NULL, username TEXT NOT NULL, contact TEXT NOT NULL,
        name TEXT, groups TEXT NOT NULL,
        sub_to INTEGER NOT NULL, sub_from INTEGER NOT NULL,
        pending_out INTEGER NOT NULL, pending_in INTEGER NOT NULL, preapproved INTEGER NOT NULL,
        PRIMARY KEY (domain, username, contact)
    ) WITHOUT ROWID;
    CREATE TABLE roster_versions (
        domain TEXT NOT NULL, username TEXT NOT NULL, version INTEGER NOT NULL,
        PRIMARY KEY (domain, username)
    ) WITHOUT ROWID;
    CREATE TABLE offline_messages (
        seq INTEGER PRIMARY KEY,
        domain TEXT NOT NULL, username TEXT NOT NULL,
        stanza TEXT NOT NULL, stored_unix INTEGER NOT NULL
    );
    CREATE INDEX offline_by_account ON offline_messages (domain, username, seq);",
    // 6: blocking (XEP-0191) and vCards (XEP-0054).
    "CREATE TABLE blocklist (
        domain TEXT NOT NULL, username TEXT NOT NULL, jid TEXT NOT NULL,
        PRIMARY KEY (domain, username, jid)
    ) WITHOUT ROWID;
    CREATE TABLE vcards (
        domain TEXT NOT NULL, username TEXT NOT NULL, xml TEXT NOT NULL,
        PRIMARY KEY (domain, username)
    ) WITHOUT ROWID;",
    // 7: PubSub subscription options (XEP-0060 §6.3): whether notifications are delivered.
    "ALTER TABLE pubsub_subscriptions ADD COLUMN deliver INTEGER NOT NULL DEFAULT 1;",
    // 8: sensor entries keyed by stream (one ScopeNode, scope and spime) instead of carrying
    // the three names in every row and two indexes: one B-tree fewer to write per entry and
    // rows a third smaller. Retention and the per-scope counts go through the streams.
    "CREATE TABLE sensor_streams (
        id INTEGER PRIMARY KEY,
        node TEXT NOT NULL, spime TEXT NOT NULL, scope TEXT NOT NULL,
        UNIQUE (node, spime, scope)
    );
    CREATE TABLE sensor_data (
        seq INTEGER PRIMARY KEY,
        stream INTEGER NOT NULL REFERENCES sensor_streams (id),
        at_unix INTEGER NOT NULL, xml TEXT NOT NULL
    );
    INSERT INTO sensor_streams (node, spime, scope)
        SELECT DISTINCT node, spime, scope FROM sensor_entries ORDER BY node, spime, scope;
    INSERT INTO sensor_data (seq, stream, at_unix, xml)
        SELECT e.seq, s.id, e.at_unix, e.xml FROM sensor_entries e JOIN sensor_streams s
            ON s.node = e.node AND s.spime = e.spime AND s.scope = e.scope;
    CREATE INDEX sensor_data_by_stream ON sensor_data (stream, at_unix);
    DROP TABLE sensor_entries;",
];

/// A write's result, type-erased while it crosses the writer thread.
type Erased = Result<Box<dyn Any + Send>, StorageError>;

/// A write waiting for the writer thread: run inside the batch's transaction, answer after
/// the commit.
struct WriteJob {
    /// The statements, run inside a savepoint of the batch transaction.
    run: Box<dyn FnOnce(&Connection) -> Erased + Send>,
    /// Where the result goes once the batch is durable (or failed).
    reply: oneshot::Sender<Erased>,
    /// How long this write may wait for others to share its commit; zero commits at once.
    gather: Duration,
}

/// Writes waiting together are committed in one transaction (group commit): one fsync for
/// many acknowledgements.
const MAX_BATCH: usize = 1024;

/// SQLite storage shared by all traits.
///
/// Writes go to one writer thread that commits whatever is queued as one transaction
/// (group commit, each job in its own savepoint so one failure does not fail the others)
/// and answers every job only after the commit is durable. Reads use their own connection
/// on tokio's blocking pool; WAL lets them run while the writer writes.
#[derive(Clone)]
pub struct SqliteStore {
    /// The connection reads use.
    reader: Arc<Mutex<Connection>>,
    /// The writer thread's queue.
    writer: std::sync::mpsc::Sender<WriteJob>,
}

fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

/// WAL pages after which a commit copies the log back into the database (SQLite's default
/// is 1,000). Under steady writes the same pages — the tail of each spime's index range,
/// of each node's items — are rewritten in commit after commit; a longer log lets a
/// checkpoint copy each of them once instead of once per 1,000 pages. Measured with
/// `openspimed-bench report --sessions 128 --window 4`, runs alternating with the default:
/// median 18,300 → 20,450 entries/s (six and eight runs; the VM drifts by ±15%, so only
/// alternating runs compare). The cost is a log of up to ~40 MiB between checkpoints.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;

fn open_connection(path: &Path) -> Result<Connection, StorageError> {
    let conn = Connection::open(path)
        .map_err(|e| StorageError::Backend(format!("cannot open {}: {e}", path.display())))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(backend)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(backend)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(backend)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(backend)?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
        .map_err(backend)?;
    Ok(conn)
}

/// How long a write that many clients make at once (a sensor report) may wait for others
/// to share its commit. Each commit costs an fsync and rewrites every page its writes
/// touch: under encrypted reports (~1,000/s, each alone in its commit otherwise) the
/// fsyncs and the writer's wake-ups were ~5% of the server's CPU. A write nobody gathers
/// with (an account, a roster change) commits at once.
const GATHER: Duration = Duration::from_millis(5);

/// A gathering batch commits as soon as it holds this many writes: under a heavier load
/// the queue fills faster than that, and waiting longer only adds latency (plain reports
/// at 20,000/s lost ~8% with a fixed 2 ms wait).
const GATHER_JOBS: usize = 8;

fn writer_loop(conn: Connection, jobs: std::sync::mpsc::Receiver<WriteJob>) {
    while let Ok(first) = jobs.recv() {
        let mut deadline = (!first.gather.is_zero()).then(|| Instant::now() + first.gather);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let next = match jobs.try_recv() {
                Ok(job) => job,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    let Some(until) = deadline.filter(|_| batch.len() < GATHER_JOBS) else {
                        break;
                    };
                    let left = until.saturating_duration_since(Instant::now());
                    match jobs.recv_timeout(left) {
                        Ok(job) => job,
                        Err(_) => break,
                    }
                }
            };
            if next.gather.is_zero() {
                // Someone waits for this commit: take what is queued and commit.
                deadline = None;
            }
            batch.push(next);
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let err = backend(e);
            for job in batch {
                let _ = job.reply.send(Err(StorageError::Backend(err.to_string())));
            }
            continue;
        }
        let mut done = Vec::with_capacity(batch.len());
        // Savepoint statements are prepared once and reused: per job they cost a step.
        let step = |sql: &str| -> Result<(), StorageError> {
            conn.prepare_cached(sql)
                .and_then(|mut st| st.execute([]))
                .map(|_| ())
                .map_err(backend)
        };
        for job in batch {
            let result = match step("SAVEPOINT job") {
                Err(e) => Err(e),
                Ok(()) => match (job.run)(&conn) {
                    Ok(v) => step("RELEASE job").map(|()| v),
                    Err(e) => {
                        let _ = step("ROLLBACK TO job");
                        let _ = step("RELEASE job");
                        Err(e)
                    }
                },
            };
            done.push((job.reply, result));
        }
        match conn.execute_batch("COMMIT") {
            Ok(()) => {
                for (reply, result) in done {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                let msg = format!("commit failed: {e}");
                for (reply, _) in done {
                    let _ = reply.send(Err(StorageError::Backend(msg.clone())));
                }
            }
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<SqliteStore, StorageError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StorageError::Backend(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let write_conn = open_connection(path)?;
        migrate(&write_conn)?;
        let reader = open_connection(path)?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(write_conn, rx))
            .map_err(|e| StorageError::Backend(format!("cannot start the writer: {e}")))?;
        Ok(SqliteStore {
            reader: Arc::new(Mutex::new(reader)),
            writer: tx,
        })
    }

    /// Runs a read on the read connection.
    async fn read<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    {
        let conn = self.reader.clone();
        let start = std::time::Instant::now();
        let r = tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StorageError::Backend("connection mutex poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StorageError::Backend(format!("storage task failed: {e}")))?;
        crate::telemetry::storage_took(crate::telemetry::StorageOp::Read, start.elapsed());
        r
    }

    /// Runs a write through the group-commit writer; returns once it is durable.
    async fn write<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    {
        self.write_gathering(Duration::ZERO, f).await
    }

    /// Like [`SqliteStore::write`], for a write that may wait up to `gather` for others to
    /// share its commit.
    async fn write_gathering<T, F>(&self, gather: Duration, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    {
        let start = std::time::Instant::now();
        let (reply, rx) = oneshot::channel();
        let job = WriteJob {
            run: Box::new(move |c| f(c).map(|v| Box::new(v) as Box<dyn Any + Send>)),
            reply,
            gather,
        };
        self.writer
            .send(job)
            .map_err(|_| StorageError::Backend("the writer has stopped".into()))?;
        let any = rx
            .await
            .map_err(|_| StorageError::Backend("the writer dropped a job".into()))??;
        crate::telemetry::storage_took(crate::telemetry::StorageOp::Write, start.elapsed());
        any.downcast::<T>()
            .map(|b| *b)
            .map_err(|_| StorageError::Backend("writer result of the wrong type".into()))
    }
}

fn migrate(conn: &Connection) -> Result<(), StorageError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(backend)?;
    let version = usize::try_from(version).unwrap_or(0);
    if version > MIGRATIONS.len() {
        return Err(StorageError::Corrupt(format!(
            "database schema version {version} is newer than this openspimed ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        conn.execute_batch(&format!(
            "BEGIN; {sql} PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))
        .map_err(backend)?;
    }
    Ok(())
}

/// Runs a query (statement cached on the connection) and collects every row.
fn all<T, P, F>(c: &Connection, sql: &str, params: P, f: F) -> Result<Vec<T>, StorageError>
where
    P: rusqlite::Params,
    F: FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
{
    let mut st = c.prepare_cached(sql).map_err(backend)?;
    let rows = st.query_map(params, f).map_err(backend)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(backend)
}

fn keys_from_row(row: &rusqlite::Row<'_>, base: usize) -> rusqlite::Result<ScramKeys> {
    Ok(ScramKeys {
        salt: row.get(base)?,
        iterations: row.get(base + 1)?,
        stored_key: row.get(base + 2)?,
        server_key: row.get(base + 3)?,
    })
}

/// The parameters ?1..?10 shared by the account INSERT and UPDATE statements.
#[allow(clippy::ptr_arg, reason = "`&dyn ToSql` needs a sized String, not str")]
fn account_params<'a>(
    domain: &'a String,
    user: &'a String,
    c: &'a Credentials,
) -> [&'a dyn rusqlite::ToSql; 10] {
    [
        domain,
        user,
        &c.sha1.salt,
        &c.sha1.iterations,
        &c.sha1.stored_key,
        &c.sha1.server_key,
        &c.sha256.salt,
        &c.sha256.iterations,
        &c.sha256.stored_key,
        &c.sha256.server_key,
    ]
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_account(
        &self,
        user: &str,
        domain: &str,
        creds: &Credentials,
    ) -> Result<bool, StorageError> {
        let (user, domain, c) = (user.to_owned(), domain.to_owned(), creds.clone());
        self.write(move |conn: &Connection| {
            let now = now_unix();
            let n = conn
                .execute(
                    "INSERT OR IGNORE INTO accounts VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    account_params(&domain, &user, &c)
                        .iter()
                        .copied()
                        .chain([&now as &dyn rusqlite::ToSql])
                        .collect::<Vec<_>>()
                        .as_slice(),
                )
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    async fn set_credentials(
        &self,
        user: &str,
        domain: &str,
        creds: &Credentials,
    ) -> Result<bool, StorageError> {
        let (user, domain, c) = (user.to_owned(), domain.to_owned(), creds.clone());
        self.write(move |conn: &Connection| {
            let n = conn
                .execute(
                    "UPDATE accounts SET sha1_salt = ?3, sha1_iterations = ?4, sha1_stored_key = ?5,
                       sha1_server_key = ?6, sha256_salt = ?7, sha256_iterations = ?8,
                       sha256_stored_key = ?9, sha256_server_key = ?10
                     WHERE domain = ?1 AND username = ?2",
                    account_params(&domain, &user, &c).as_slice(),
                )
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    async fn credentials(
        &self,
        user: &str,
        domain: &str,
    ) -> Result<Option<Credentials>, StorageError> {
        let (user, domain) = (user.to_owned(), domain.to_owned());
        self.read(move |conn| {
            conn.query_row(
                "SELECT sha1_salt, sha1_iterations, sha1_stored_key, sha1_server_key,
                        sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key
                 FROM accounts WHERE domain = ?1 AND username = ?2",
                params![domain, user],
                |row| {
                    Ok(Credentials {
                        sha1: keys_from_row(row, 0)?,
                        sha256: keys_from_row(row, 4)?,
                    })
                },
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn account_exists(&self, user: &str, domain: &str) -> Result<bool, StorageError> {
        let (user, domain) = (user.to_owned(), domain.to_owned());
        self.read(move |conn| {
            conn.query_row(
                "SELECT 1 FROM accounts WHERE domain = ?1 AND username = ?2",
                params![domain, user],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
            .map_err(backend)
        })
        .await
    }

    async fn delete_account(&self, user: &str, domain: &str) -> Result<bool, StorageError> {
        let (user, domain) = (user.to_owned(), domain.to_owned());
        self.write(move |conn: &Connection| {
            let n = conn
                .execute(
                    "DELETE FROM accounts WHERE domain = ?1 AND username = ?2",
                    params![domain, user],
                )
                .map_err(backend)?;
            // What belonged to the account goes with it (XEP-0077 §3.2).
            for table in [
                "roster",
                "roster_versions",
                "offline_messages",
                "blocklist",
                "vcards",
            ] {
                conn.execute(
                    &format!("DELETE FROM {table} WHERE domain = ?1 AND username = ?2"),
                    params![domain, user],
                )
                .map_err(backend)?;
            }
            Ok(n == 1)
        })
        .await
    }

    async fn list_accounts(&self, domain: &str) -> Result<Vec<String>, StorageError> {
        let domain = domain.to_owned();
        self.read(move |conn| {
            all(
                conn,
                "SELECT username FROM accounts WHERE domain = ?1 ORDER BY username",
                params![domain],
                |r| r.get::<_, String>(0),
            )
        })
        .await
    }
}

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

impl From<StorageError> for StorageFailure {
    fn from(e: StorageError) -> Self {
        StorageFailure(e.to_string())
    }
}

fn stored_key(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredKey> {
    Ok(StoredKey {
        service: row.get(0)?,
        jid: row.get(1)?,
        spki_der: row.get(2)?,
        created_unix: row.get(3)?,
        revoked_unix: row.get(4)?,
    })
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn put_key(
        &self,
        service: &str,
        jid: &str,
        spki_der: &[u8],
    ) -> Result<(), StorageFailure> {
        let (service, jid, der) = (service.to_owned(), jid.to_owned(), spki_der.to_vec());
        self.write(move |conn: &Connection| {
            conn.execute(
                "INSERT INTO cert_keys VALUES (?1, ?2, ?3, ?4, NULL)
                 ON CONFLICT (service, jid) DO UPDATE
                 SET spki_der = excluded.spki_der, created_unix = excluded.created_unix,
                     revoked_unix = NULL",
                params![service, jid, der, now_unix()],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
        .map_err(Into::into)
    }

    async fn key(&self, service: &str, jid: &str) -> Result<Option<StoredKey>, StorageFailure> {
        let (service, jid) = (service.to_owned(), jid.to_owned());
        self.read(move |conn| {
            conn.query_row(
                "SELECT service, jid, spki_der, created_unix, revoked_unix FROM cert_keys
                 WHERE service = ?1 AND jid = ?2",
                params![service, jid],
                stored_key,
            )
            .optional()
            .map_err(backend)
        })
        .await
        .map_err(Into::into)
    }

    async fn revoke_key(&self, service: &str, jid: &str) -> Result<bool, StorageFailure> {
        let (service, jid) = (service.to_owned(), jid.to_owned());
        self.write(move |conn: &Connection| {
            let n = conn
                .execute(
                    "UPDATE cert_keys SET revoked_unix = ?3
                     WHERE service = ?1 AND jid = ?2 AND revoked_unix IS NULL",
                    params![service, jid, now_unix()],
                )
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
        .map_err(Into::into)
    }

    async fn list_keys(&self, service: Option<&str>) -> Result<Vec<StoredKey>, StorageFailure> {
        let service = service.map(str::to_owned);
        self.read(move |conn| {
            all(
                conn,
                "SELECT service, jid, spki_der, created_unix, revoked_unix FROM cert_keys
                     WHERE ?1 IS NULL OR service = ?1 ORDER BY service, jid",
                params![service],
                stored_key,
            )
        })
        .await
        .map_err(Into::into)
    }
}

impl ModuleStorage for SqliteStore {
    fn keys(&self) -> &dyn KeyStore {
        self
    }
    fn pubsub(&self) -> &dyn PubSubStore {
        self
    }
    fn sensors(&self) -> &dyn SensorStore {
        self
    }
}

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

fn own(a: &str, b: &str) -> (String, String) {
    (a.to_owned(), b.to_owned())
}

#[async_trait]
impl PubSubStore for SqliteStore {
    async fn create_node(
        &self,
        service: &str,
        node: &str,
        config: &str,
        owner: &str,
    ) -> Result<bool, StorageFailure> {
        let (service, node) = own(service, node);
        let (config, owner) = own(config, owner);
        Ok(self
            .write(move |c: &Connection| {
                let n = c
                    .execute(
                        "INSERT OR IGNORE INTO pubsub_nodes VALUES (?1, ?2, ?3)",
                        params![service, node, config],
                    )
                    .map_err(backend)?;
                if n == 1 && !owner.is_empty() {
                    c.execute(
                        "INSERT OR REPLACE INTO pubsub_affiliations VALUES (?1, ?2, ?3, 'owner')",
                        params![service, node, owner],
                    )
                    .map_err(backend)?;
                }
                Ok(n == 1)
            })
            .await?)
    }

    async fn set_node_config(
        &self,
        service: &str,
        node: &str,
        config: &str,
    ) -> Result<(), StorageFailure> {
        let (service, node) = own(service, node);
        let config = config.to_owned();
        Ok(self
            .write(move |c: &Connection| {
                c.execute(
                    "UPDATE pubsub_nodes SET config = ?3 WHERE service = ?1 AND node = ?2",
                    params![service, node, config],
                )
                .map_err(backend)?;
                Ok(())
            })
            .await?)
    }

    async fn delete_node(&self, service: &str, node: &str) -> Result<bool, StorageFailure> {
        let (service, node) = own(service, node);
        Ok(self
            .write(move |c: &Connection| {
                for table in [
                    "pubsub_items",
                    "pubsub_subscriptions",
                    "pubsub_affiliations",
                ] {
                    c.execute(
                        &format!("DELETE FROM {table} WHERE service = ?1 AND node = ?2"),
                        params![service, node],
                    )
                    .map_err(backend)?;
                }
                let n = c
                    .execute(
                        "DELETE FROM pubsub_nodes WHERE service = ?1 AND node = ?2",
                        params![service, node],
                    )
                    .map_err(backend)?;
                Ok(n == 1)
            })
            .await?)
    }

    async fn nodes(&self, service: &str) -> Result<Vec<NodeRecord>, StorageFailure> {
        let service = service.to_owned();
        Ok(self
            .read(move |c| {
                all(
                    c,
                    "SELECT node, config FROM pubsub_nodes WHERE service = ?1 ORDER BY node",
                    params![service],
                    |r| {
                        Ok(NodeRecord {
                            node: r.get(0)?,
                            config: r.get(1)?,
                        })
                    },
                )
            })
            .await?)
    }

    async fn set_affiliation(
        &self,
        service: &str,
        node: &str,
        jid: &str,
        affiliation: &str,
    ) -> Result<(), StorageFailure> {
        let (service, node) = own(service, node);
        let (jid, aff) = own(jid, affiliation);
        Ok(self
            .write(move |c: &Connection| {
                if aff == "none" {
                    c.execute(
                        "DELETE FROM pubsub_affiliations WHERE service = ?1 AND node = ?2 AND jid = ?3",
                        params![service, node, jid],
                    )
                } else {
                    c.execute(
                        "INSERT OR REPLACE INTO pubsub_affiliations VALUES (?1, ?2, ?3, ?4)",
                        params![service, node, jid, aff],
                    )
                }
                .map_err(backend)?;
                Ok(())
            })
            .await?)
    }

    async fn affiliations(&self, service: &str) -> Result<Vec<AffiliationRecord>, StorageFailure> {
        let service = service.to_owned();
        Ok(self
            .read(move |c| {
                all(
                    c,
                    "SELECT node, jid, affiliation FROM pubsub_affiliations WHERE service = ?1
                         ORDER BY node, jid",
                    params![service],
                    |r| {
                        Ok(AffiliationRecord {
                            node: r.get(0)?,
                            jid: r.get(1)?,
                            affiliation: r.get(2)?,
                        })
                    },
                )
            })
            .await?)
    }

    async fn put_subscription(
        &self,
        service: &str,
        sub: &SubscriptionRecord,
    ) -> Result<(), StorageFailure> {
        let service = service.to_owned();
        let sub = sub.clone();
        Ok(self
            .write(move |c: &Connection| {
                c.execute(
                    "INSERT OR REPLACE INTO pubsub_subscriptions VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        service,
                        sub.node,
                        sub.jid,
                        sub.subid,
                        sub.state,
                        sub.deliver
                    ],
                )
                .map_err(backend)?;
                Ok(())
            })
            .await?)
    }

    async fn remove_subscription(
        &self,
        service: &str,
        node: &str,
        jid: &str,
        subid: &str,
    ) -> Result<bool, StorageFailure> {
        let (service, node) = own(service, node);
        let (jid, subid) = own(jid, subid);
        Ok(self
            .write(move |c: &Connection| {
                let n = c
                    .execute(
                        "DELETE FROM pubsub_subscriptions
                         WHERE service = ?1 AND node = ?2 AND jid = ?3 AND subid = ?4",
                        params![service, node, jid, subid],
                    )
                    .map_err(backend)?;
                Ok(n == 1)
            })
            .await?)
    }

    async fn subscriptions(
        &self,
        service: &str,
    ) -> Result<Vec<SubscriptionRecord>, StorageFailure> {
        let service = service.to_owned();
        Ok(self
            .read(move |c| {
                all(
                    c,
                    "SELECT node, jid, subid, state, deliver FROM pubsub_subscriptions
                         WHERE service = ?1 ORDER BY node, jid, subid",
                    params![service],
                    |r| {
                        Ok(SubscriptionRecord {
                            node: r.get(0)?,
                            jid: r.get(1)?,
                            subid: r.get(2)?,
                            state: r.get(3)?,
                            deliver: r.get(4)?,
                        })
                    },
                )
            })
            .await?)
    }

    async fn publish_item(
        &self,
        service: &str,
        node: &str,
        item: &ItemRecord,
        max_items: Option<u64>,
    ) -> Result<(), StorageFailure> {
        let (service, node) = own(service, node);
        let item = item.clone();
        Ok(self
            .write(move |c: &Connection| {
                // Cached statements: publishing is the hot write of the PubSub service and
                // the writer thread does every write, so parsing the SQL again each time
                // showed in its profile.
                let seq: i64 = c
                    .prepare_cached(
                        "SELECT COALESCE(MAX(seq), 0) + 1 FROM pubsub_items WHERE service = ?1 AND node = ?2",
                    )
                    .and_then(|mut st| st.query_row(params![service, node], |r| r.get(0)))
                    .map_err(backend)?;
                c.prepare_cached("INSERT OR REPLACE INTO pubsub_items VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
                    .and_then(|mut st| {
                        st.execute(params![service, node, item.id, item.publisher, item.payload, seq])
                    })
                    .map_err(backend)?;
                if let Some(max) = max_items {
                    c.prepare_cached(
                        "DELETE FROM pubsub_items WHERE service = ?1 AND node = ?2 AND seq <= ?3",
                    )
                    .and_then(|mut st| st.execute(params![service, node, seq - max as i64]))
                    .map_err(backend)?;
                }
                Ok(())
            })
            .await?)
    }

    async fn retract_item(
        &self,
        service: &str,
        node: &str,
        id: &str,
    ) -> Result<bool, StorageFailure> {
        let (service, node) = own(service, node);
        let id = id.to_owned();
        Ok(self
            .write(move |c: &Connection| {
                let n = c
                    .execute(
                        "DELETE FROM pubsub_items WHERE service = ?1 AND node = ?2 AND id = ?3",
                        params![service, node, id],
                    )
                    .map_err(backend)?;
                Ok(n == 1)
            })
            .await?)
    }

    async fn items(
        &self,
        service: &str,
        node: &str,
        ids: Option<&[String]>,
        max: Option<u64>,
    ) -> Result<Vec<ItemRecord>, StorageFailure> {
        let (service, node) = own(service, node);
        let ids = ids.map(<[String]>::to_vec);
        Ok(self
            .read(move |c| {
                let mut st = c
                    .prepare(
                        "SELECT id, publisher, payload FROM pubsub_items WHERE service = ?1 AND node = ?2
                         ORDER BY seq DESC LIMIT ?3",
                    )
                    .map_err(backend)?;
                let limit = max.map(|m| m as i64).unwrap_or(-1);
                let rows = st
                    .query_map(params![service, node, limit], |r| {
                        Ok(ItemRecord {
                            id: r.get(0)?,
                            publisher: r.get(1)?,
                            payload: r.get(2)?,
                        })
                    })
                    .map_err(backend)?;
                let all = rows.collect::<Result<Vec<_>, _>>().map_err(backend)?;
                Ok(match ids {
                    Some(ids) => all.into_iter().filter(|i| ids.contains(&i.id)).collect(),
                    None => all,
                })
            })
            .await?)
    }

    async fn purge_items(&self, service: &str, node: &str) -> Result<(), StorageFailure> {
        let (service, node) = own(service, node);
        Ok(self
            .write(move |c: &Connection| {
                c.execute(
                    "DELETE FROM pubsub_items WHERE service = ?1 AND node = ?2",
                    params![service, node],
                )
                .map_err(backend)?;
                Ok(())
            })
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(tag: u8) -> Credentials {
        let k = |n: u8| ScramKeys {
            salt: vec![tag, n],
            iterations: 4096,
            stored_key: vec![tag; 20],
            server_key: vec![n; 20],
        };
        Credentials {
            sha1: k(1),
            sha256: k(2),
        }
    }

    #[tokio::test]
    async fn account_lifecycle_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let s = SqliteStore::open(&path).unwrap();
            assert!(
                s.create_account("alice", "a.example", &creds(1))
                    .await
                    .unwrap()
            );
            assert!(
                !s.create_account("alice", "a.example", &creds(2))
                    .await
                    .unwrap()
            );
            assert!(
                s.create_account("bob", "a.example", &creds(3))
                    .await
                    .unwrap()
            );
            assert!(
                s.set_credentials("bob", "a.example", &creds(4))
                    .await
                    .unwrap()
            );
            assert!(
                !s.set_credentials("carol", "a.example", &creds(4))
                    .await
                    .unwrap()
            );
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(
            s.credentials("alice", "a.example").await.unwrap(),
            Some(creds(1))
        );
        assert_eq!(
            s.credentials("bob", "a.example").await.unwrap(),
            Some(creds(4))
        );
        assert_eq!(s.credentials("alice", "b.example").await.unwrap(), None);
        assert_eq!(
            s.list_accounts("a.example").await.unwrap(),
            ["alice", "bob"]
        );
        assert!(s.delete_account("alice", "a.example").await.unwrap());
        assert!(!s.delete_account("alice", "a.example").await.unwrap());
        assert!(!s.account_exists("alice", "a.example").await.unwrap());
        assert!(s.account_exists("bob", "a.example").await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_group_committed_and_all_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let s = SqliteStore::open(&path).unwrap();
        let mut tasks = Vec::new();
        for i in 0..300 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.create_account(&format!("u{i}"), "a.example", &creds(1))
                    .await
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap().unwrap());
        }
        drop(s);
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.list_accounts("a.example").await.unwrap().len(), 300);
    }

    fn entry(scope: &str, spime: &str, at_unix: i64, xml: &str) -> SensorEntry {
        SensorEntry {
            node: "n@scopenode.example".into(),
            scope: scope.into(),
            spime: spime.into(),
            at_unix,
            xml: xml.into(),
        }
    }

    #[tokio::test]
    async fn sensor_entries_keep_through_the_stream_migration_and_merge_scopes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            // A database as schema 7 left it, with entries in the old table.
            let c = Connection::open(&path).unwrap();
            for (i, sql) in MIGRATIONS.iter().take(7).enumerate() {
                c.execute_batch(&format!("{sql} PRAGMA user_version = {};", i + 1))
                    .unwrap();
            }
            for (scope, spime, at, xml) in [
                ("co2", "s@a", 10, "old-1"),
                ("temp", "s@a", 30, "old-2"),
                ("co2", "t@a", 20, "other"),
            ] {
                c.execute(
                    "INSERT INTO sensor_entries (node, scope, spime, at_unix, xml) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params!["n@scopenode.example", scope, spime, at, xml],
                )
                .unwrap();
            }
        }
        let s = SqliteStore::open(&path).unwrap();
        s.append_entries(vec![
            entry("co2", "s@a", 40, "new-1"),
            entry("co2", "s@a", 5, "new-2"),
        ])
        .await
        .unwrap();
        s.append_entries(vec![entry("temp", "s@a", 40, "new-3")])
            .await
            .unwrap();
        let xml = |v: Vec<SensorEntry>| v.into_iter().map(|e| e.xml).collect::<Vec<_>>();
        // Newest first across both scopes; equal times by storage order, newest first.
        assert_eq!(
            xml(s
                .entries_for_spime("n@scopenode.example", "s@a", 10)
                .await
                .unwrap()),
            ["new-3", "new-1", "old-2", "old-1", "new-2"]
        );
        assert_eq!(
            xml(s
                .entries_for_spime("n@scopenode.example", "s@a", 2)
                .await
                .unwrap()),
            ["new-3", "new-1"]
        );
        assert_eq!(
            s.entry_counts().await.unwrap(),
            [
                ("n@scopenode.example".into(), "co2".into(), 4),
                ("n@scopenode.example".into(), "temp".into(), 2)
            ]
        );
        assert_eq!(
            xml(s.export_entries(None, Some("s@a"), Some(10)).await.unwrap()),
            ["old-1", "old-2", "new-1", "new-3"]
        );
        // Retention removes old entries of one scope only.
        assert_eq!(
            s.expire_entries("n@scopenode.example", "co2", 15)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            xml(s
                .entries_for_spime("n@scopenode.example", "s@a", 10)
                .await
                .unwrap()),
            ["new-3", "new-1", "old-2"]
        );
        assert_eq!(
            xml(s
                .entries_for_spime("n@scopenode.example", "t@a", 10)
                .await
                .unwrap()),
            ["other"]
        );
    }

    #[tokio::test]
    async fn keys_are_per_service_replaceable_and_revocable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.put_key("cert.a", "spime@a/x", b"k1").await.unwrap();
            s.put_key("cert.b", "spime@a/x", b"k2").await.unwrap();
            assert!(s.revoke_key("cert.a", "spime@a/x").await.unwrap());
            assert!(!s.revoke_key("cert.a", "spime@a/x").await.unwrap());
            assert!(!s.revoke_key("cert.a", "nobody@a").await.unwrap());
        }
        let s = SqliteStore::open(&path).unwrap();
        let a = s.key("cert.a", "spime@a/x").await.unwrap().unwrap();
        assert_eq!(a.spki_der, b"k1");
        assert!(a.revoked_unix.is_some());
        let b = s.key("cert.b", "spime@a/x").await.unwrap().unwrap();
        assert_eq!(b.spki_der, b"k2");
        assert!(b.revoked_unix.is_none());
        // Publishing again replaces the key and clears the revocation.
        s.put_key("cert.a", "spime@a/x", b"k3").await.unwrap();
        let a = s.key("cert.a", "spime@a/x").await.unwrap().unwrap();
        assert_eq!((a.spki_der.as_slice(), a.revoked_unix), (&b"k3"[..], None));
        assert_eq!(s.list_keys(None).await.unwrap().len(), 2);
        assert_eq!(s.list_keys(Some("cert.b")).await.unwrap().len(), 1);
        assert!(s.key("cert.a", "other@a").await.unwrap().is_none());
    }
}
