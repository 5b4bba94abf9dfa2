//! The SQLite backend: WAL, `synchronous=FULL` (a commit is on disk before it is
//! acknowledged), schema migrations by `user_version`, one writer thread committing in
//! groups. Here: the connection, the writer and the migrations, shared query helpers; one
//! file per store it implements (`accounts` and the modules' `named` stores).

use std::any::Any;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use rusqlite::Connection;

use openspimed_module_api::{ArchiveStore, KvStore, ModuleStorage, StorageFailure};

use super::StorageError;

mod accounts;
mod named;

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
    // 9: the named stores modules open for themselves (key-value and archive).
    "CREATE TABLE module_kv (
        host TEXT NOT NULL, store TEXT NOT NULL, owner TEXT NOT NULL, key TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (host, store, owner, key)
    ) WITHOUT ROWID;
    CREATE TABLE module_archive (
        seq INTEGER PRIMARY KEY,
        host TEXT NOT NULL, store TEXT NOT NULL, owner TEXT NOT NULL, id TEXT NOT NULL,
        at_ms INTEGER NOT NULL, with_jid TEXT NOT NULL, value BLOB NOT NULL,
        UNIQUE (host, store, owner, id)
    );
    CREATE INDEX module_archive_by_time ON module_archive (host, store, owner, at_ms);
    CREATE INDEX module_archive_by_with ON module_archive (host, store, owner, with_jid, seq);",
    // 10: IM's rosters, offline messages, blocklists and vCards move into IM's named
    // stores (`im::store`): each account's data under its bare JID, on its domain.
    "INSERT INTO module_kv (host, store, owner, key, value)
        SELECT domain, 'roster', username || '@' || domain, contact, CAST(json_object(
            'name', name, 'groups', json(groups),
            'to', json(CASE WHEN sub_to THEN 'true' ELSE 'false' END),
            'from', json(CASE WHEN sub_from THEN 'true' ELSE 'false' END),
            'pending_out', json(CASE WHEN pending_out THEN 'true' ELSE 'false' END),
            'pending_in', json(CASE WHEN pending_in THEN 'true' ELSE 'false' END),
            'preapproved', json(CASE WHEN preapproved THEN 'true' ELSE 'false' END)
        ) AS BLOB) FROM roster;
    INSERT INTO module_kv (host, store, owner, key, value)
        SELECT domain, 'roster', username || '@' || domain, '', CAST(CAST(version AS TEXT) AS BLOB)
        FROM roster_versions;
    INSERT INTO module_archive (host, store, owner, id, at_ms, with_jid, value)
        SELECT domain, 'offline', username || '@' || domain, printf('%032x', seq),
            stored_unix * 1000, '', CAST(stanza AS BLOB)
        FROM offline_messages ORDER BY seq;
    INSERT INTO module_kv (host, store, owner, key, value)
        SELECT domain, 'blocklist', username || '@' || domain, jid, X'' FROM blocklist;
    INSERT INTO module_kv (host, store, owner, key, value)
        SELECT domain, 'vcard', username || '@' || domain, '', CAST(xml AS BLOB) FROM vcards;
    DROP TABLE roster;
    DROP TABLE roster_versions;
    DROP TABLE offline_messages;
    DROP TABLE blocklist;
    DROP TABLE vcards;",
    // 11: archives keyed by an owner row (items and their indexes carry a number, not the
    // host, store and owner names; an item may have no id). Only named items (messages,
    // PubSub items) are indexed by id and by JID: unnamed ones (sensor readings, written
    // thousands a second) keep the one index by time. With an index by JID over them too,
    // each commit of `openspimed-bench report` wrote twice the WAL pages (11 → 20.5 per
    // commit of eight readings from 128 spimes, simulated) and the plain-report rate fell
    // to 0.75–0.83 of schema 10's in alternating pinned runs. The certification services'
    // keys, PubSub and the ScopeNodes move into their modules' named stores, each under the
    // domain of its service or node — as Prosody keeps a component's data under the
    // component's host: `certsvc::store`, `pubsub::store`, `scopenode::store` read them.
    "CREATE TABLE archive_owners (
        id INTEGER PRIMARY KEY,
        host TEXT NOT NULL, store TEXT NOT NULL, owner TEXT NOT NULL,
        UNIQUE (host, store, owner)
    );
    CREATE TABLE archive_items (
        seq INTEGER PRIMARY KEY,
        owner INTEGER NOT NULL REFERENCES archive_owners (id),
        id TEXT,
        at_ms INTEGER NOT NULL, with_jid TEXT NOT NULL, value BLOB NOT NULL
    );
    CREATE UNIQUE INDEX archive_items_by_id ON archive_items (owner, id) WHERE id IS NOT NULL;
    CREATE INDEX archive_items_by_time ON archive_items (owner, at_ms);
    CREATE INDEX archive_items_by_with ON archive_items (owner, with_jid, seq)
        WHERE id IS NOT NULL;
    INSERT INTO archive_owners (host, store, owner)
        SELECT DISTINCT host, store, owner FROM module_archive ORDER BY host, store, owner;
    INSERT INTO archive_items (seq, owner, id, at_ms, with_jid, value)
        SELECT a.seq, o.id, a.id, a.at_ms, a.with_jid, a.value FROM module_archive a
        JOIN archive_owners o ON o.host = a.host AND o.store = a.store AND o.owner = a.owner
        ORDER BY a.seq;
    DROP TABLE module_archive;
    CREATE TEMP TABLE jid_domains AS
        SELECT jid, CASE WHEN instr(bare, '@') > 0 THEN substr(bare, instr(bare, '@') + 1)
                         ELSE bare END AS domain
        FROM (SELECT jid, CASE WHEN instr(jid, '/') > 0 THEN substr(jid, 1, instr(jid, '/') - 1)
                               ELSE jid END AS bare
              FROM (SELECT service AS jid FROM cert_keys UNION SELECT service FROM pubsub_nodes
                    UNION SELECT service FROM pubsub_affiliations
                    UNION SELECT service FROM pubsub_subscriptions
                    UNION SELECT service FROM pubsub_items UNION SELECT node FROM sensor_streams
                    UNION SELECT node FROM scopenode_keys UNION SELECT node FROM seek_log));
    INSERT INTO module_kv (host, store, owner, key, value)
        SELECT d.domain, 'cert_keys', k.service, k.jid, CAST(json_object(
            'spki', lower(hex(k.spki_der)), 'created', k.created_unix, 'revoked', k.revoked_unix
        ) AS BLOB) FROM cert_keys k JOIN jid_domains d ON d.jid = k.service;
    INSERT INTO module_kv (host, store, owner, key, value)
        SELECT d.domain, 'pubsub_nodes', n.service, n.node, CAST(n.config AS BLOB)
        FROM pubsub_nodes n JOIN jid_domains d ON d.jid = n.service;
    INSERT INTO module_kv (host, store, owner, key, value)
        SELECT d.domain, 'pubsub_affiliations', a.service, a.jid || char(10) || a.node,
            CAST(json_object('node', a.node, 'jid', a.jid, 'affiliation', a.affiliation) AS BLOB)
        FROM pubsub_affiliations a JOIN jid_domains d ON d.jid = a.service;
    INSERT INTO module_kv (host, store, owner, key, value)
        SELECT d.domain, 'pubsub_subscriptions', s.service,
            s.jid || char(10) || s.subid || char(10) || s.node,
            CAST(json_object('node', s.node, 'jid', s.jid, 'subid', s.subid, 'state', s.state,
                'deliver', json(CASE WHEN s.deliver THEN 'true' ELSE 'false' END)) AS BLOB)
        FROM pubsub_subscriptions s JOIN jid_domains d ON d.jid = s.service;
    INSERT INTO archive_owners (host, store, owner)
        SELECT DISTINCT d.domain, 'pubsub_items', i.service || '/' || i.node
        FROM pubsub_items i JOIN jid_domains d ON d.jid = i.service;
    INSERT INTO archive_items (owner, id, at_ms, with_jid, value)
        SELECT o.id, i.id, CAST(strftime('%s', 'now') AS INTEGER) * 1000, i.publisher,
            CAST(i.payload AS BLOB)
        FROM pubsub_items i JOIN jid_domains d ON d.jid = i.service
        JOIN archive_owners o ON o.host = d.domain AND o.store = 'pubsub_items'
            AND o.owner = i.service || '/' || i.node
        ORDER BY i.service, i.node, i.seq;
    INSERT INTO archive_owners (host, store, owner)
        SELECT DISTINCT d.domain, 'sensor_data ' || s.node, s.spime
        FROM sensor_streams s JOIN jid_domains d ON d.jid = s.node;
    INSERT INTO archive_items (owner, id, at_ms, with_jid, value)
        SELECT o.id, NULL, e.at_unix * 1000, s.scope, CAST(e.xml AS BLOB)
        FROM sensor_data e JOIN sensor_streams s ON s.id = e.stream
        JOIN jid_domains d ON d.jid = s.node
        JOIN archive_owners o ON o.host = d.domain AND o.store = 'sensor_data ' || s.node
            AND o.owner = s.spime
        ORDER BY e.seq;
    INSERT INTO module_kv (host, store, owner, key, value)
        SELECT d.domain, 'scopenode_keys', k.node, '', k.pkcs8
        FROM scopenode_keys k JOIN jid_domains d ON d.jid = k.node;
    INSERT INTO module_kv (host, store, owner, key, value)
        SELECT d.domain, 'seek_log', l.node, l.osid || char(10) || l.request_id,
            CAST(CAST(l.expires_unix AS TEXT) AS BLOB)
        FROM seek_log l JOIN jid_domains d ON d.jid = l.node;
    DROP TABLE jid_domains;
    DROP TABLE cert_keys;
    DROP TABLE pubsub_nodes;
    DROP TABLE pubsub_affiliations;
    DROP TABLE pubsub_subscriptions;
    DROP TABLE pubsub_items;
    DROP TABLE sensor_data;
    DROP TABLE sensor_streams;
    DROP TABLE scopenode_keys;
    DROP TABLE seek_log;",
    // 12: named items by JID in time order (a message archive's queries with a JID,
    // XEP-0313, are read in time order) rather than append order; the newest page without
    // a JID comes from the index by time. One index fewer to write per message than one by
    // append order besides.
    "DROP INDEX archive_items_by_with;
    CREATE INDEX archive_items_by_with ON archive_items (owner, with_jid, at_ms)
        WHERE id IS NOT NULL;",
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

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl From<StorageError> for StorageFailure {
    fn from(e: StorageError) -> Self {
        StorageFailure(e.to_string())
    }
}

impl ModuleStorage for SqliteStore {
    fn kv(&self, host: &str, name: &str) -> Arc<dyn KvStore> {
        Arc::new(self.named_kv(host, name))
    }
    fn archive(&self, host: &str, name: &str) -> Arc<dyn ArchiveStore> {
        Arc::new(self.named_archive(host, name))
    }
}

#[cfg(test)]
mod tests;
