//! The SQLite backend against a real database file.

use openspimed_module_api::{KeyStore, SensorEntry, SensorStore};
use rusqlite::{Connection, params};

use super::*;
use crate::storage::{AccountStore, Credentials, ScramKeys};

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
