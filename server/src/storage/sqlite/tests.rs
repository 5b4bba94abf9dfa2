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

#[tokio::test]
async fn named_kv_stores_are_per_host_name_and_owner_and_swap_only_what_they_expect() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    {
        let s = SqliteStore::open(&path).unwrap();
        let a = s.kv("a.example", "counter");
        let other_host = s.kv("b.example", "counter");
        let other_name = s.kv("a.example", "notes");
        a.set("alice@a.example", "n", b"1").await.unwrap();
        a.set("", "n", b"host").await.unwrap();
        other_host.set("alice@a.example", "n", b"2").await.unwrap();
        assert_eq!(
            a.get("alice@a.example", "n").await.unwrap().as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(other_name.get("alice@a.example", "n").await.unwrap(), None);
        // A swap that expects the wrong value changes nothing; the right one replaces.
        assert!(
            !a.swap("alice@a.example", "n", Some(b"0"), Some(b"9"))
                .await
                .unwrap()
        );
        assert!(
            a.swap("alice@a.example", "n", Some(b"1"), Some(b"2"))
                .await
                .unwrap()
        );
        assert!(
            a.swap("alice@a.example", "m", None, Some(b"x"))
                .await
                .unwrap()
        );
        assert!(
            !a.swap("alice@a.example", "m", None, Some(b"y"))
                .await
                .unwrap()
        );
        assert_eq!(
            a.entries("alice@a.example").await.unwrap(),
            vec![
                ("m".to_owned(), b"x".to_vec()),
                ("n".to_owned(), b"2".to_vec())
            ]
        );
        assert!(
            a.swap("alice@a.example", "m", Some(b"x"), None)
                .await
                .unwrap()
        );
        assert!(!a.remove("alice@a.example", "m").await.unwrap());
    }
    // Durable: a reopened database has it; clearing one owner leaves the others.
    let s = SqliteStore::open(&path).unwrap();
    let a = s.kv("a.example", "counter");
    assert_eq!(
        a.get("alice@a.example", "n").await.unwrap().as_deref(),
        Some(&b"2"[..])
    );
    assert_eq!(a.clear("alice@a.example").await.unwrap(), 1);
    assert_eq!(a.get("", "n").await.unwrap().as_deref(), Some(&b"host"[..]));
    let b = s.kv("b.example", "counter");
    assert_eq!(
        b.get("alice@a.example", "n").await.unwrap().as_deref(),
        Some(&b"2"[..])
    );
}

#[tokio::test]
async fn archives_query_by_time_jid_and_id_page_and_truncate() {
    use openspimed_module_api::{ArchiveQuery, ArchivedItem};
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("db.sqlite")).unwrap();
    let mam = s.archive("a.example", "archive");
    let owner = "alice@a.example";
    let item = |id: &str, at_ms: i64, with: &str| ArchivedItem {
        id: id.into(),
        at_ms,
        with: with.into(),
        value: format!("<message id='{id}'/>").into_bytes(),
    };
    for (id, at, with) in [
        ("m1", 1_000, "bob@b.example"),
        ("m2", 2_000, "carol@c.example"),
        ("m3", 3_000, "bob@b.example"),
        ("m4", 4_000, "bob@b.example"),
    ] {
        mam.append(owner, &item(id, at, with)).await.unwrap();
    }
    // Another owner's and another store's items never show.
    mam.append("bob@a.example", &item("m9", 2_500, "alice@a.example"))
        .await
        .unwrap();
    s.archive("a.example", "other")
        .append(owner, &item("x1", 2_500, "bob@b.example"))
        .await
        .unwrap();
    let ids = |items: Vec<ArchivedItem>| items.into_iter().map(|i| i.id).collect::<Vec<_>>();
    let q = |f: fn(&mut ArchiveQuery)| {
        let mut q = ArchiveQuery::default();
        f(&mut q);
        q
    };
    assert_eq!(
        ids(mam.find(owner, &ArchiveQuery::default()).await.unwrap()),
        ["m1", "m2", "m3", "m4"]
    );
    let by_bob = q(|q| q.with = Some("bob@b.example".into()));
    assert_eq!(
        ids(mam.find(owner, &by_bob).await.unwrap()),
        ["m1", "m3", "m4"]
    );
    assert_eq!(mam.count(owner, &by_bob).await.unwrap(), 3);
    let window = q(|q| {
        q.start_ms = Some(2_000);
        q.end_ms = Some(3_000);
    });
    assert_eq!(ids(mam.find(owner, &window).await.unwrap()), ["m2", "m3"]);
    // Paging: the last page of two (XEP-0059 `<before/>`), then the page before it.
    let last = q(|q| {
        q.limit = Some(2);
        q.reverse = true;
    });
    assert_eq!(ids(mam.find(owner, &last).await.unwrap()), ["m4", "m3"]);
    let before = q(|q| {
        q.before = Some("m3".into());
        q.limit = Some(2);
        q.reverse = true;
    });
    assert_eq!(ids(mam.find(owner, &before).await.unwrap()), ["m2", "m1"]);
    let after = q(|q| q.after = Some("m2".into()));
    assert_eq!(ids(mam.find(owner, &after).await.unwrap()), ["m3", "m4"]);
    // An id the owner does not have matches nothing (not everything).
    let unknown = q(|q| q.after = Some("m9".into()));
    assert!(mam.find(owner, &unknown).await.unwrap().is_empty());
    let some = q(|q| q.ids = Some(vec!["m4".into(), "m1".into()]));
    assert_eq!(ids(mam.find(owner, &some).await.unwrap()), ["m1", "m4"]);
    // Appending an id again replaces the item and moves it last.
    mam.append(owner, &item("m1", 5_000, "dave@d.example"))
        .await
        .unwrap();
    assert_eq!(
        ids(mam.find(owner, &ArchiveQuery::default()).await.unwrap()),
        ["m2", "m3", "m4", "m1"]
    );
    assert_eq!(mam.truncate(owner, 2).await.unwrap(), 2);
    assert_eq!(
        ids(mam.find(owner, &ArchiveQuery::default()).await.unwrap()),
        ["m4", "m1"]
    );
    assert_eq!(mam.delete(owner, &by_bob).await.unwrap(), 1);
    assert_eq!(
        ids(mam.find(owner, &ArchiveQuery::default()).await.unwrap()),
        ["m1"]
    );
    assert_eq!(
        mam.count("bob@a.example", &ArchiveQuery::default())
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn im_data_of_schema_9_moves_into_the_named_stores() {
    use openspimed_mod_im::store::ImData;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    {
        // A database as the release before the named stores left it (schema 9), with
        // what IM kept in its own tables.
        let c = Connection::open(&path).unwrap();
        for (i, sql) in MIGRATIONS.iter().take(9).enumerate() {
            c.execute_batch(&format!("{sql} PRAGMA user_version = {};", i + 1))
                .unwrap();
        }
        c.execute_batch(
            "INSERT INTO roster VALUES ('a.example', 'alice', 'bob@b.example', 'Bob',
                 '[\"Friends\",\"Work\"]', 1, 0, 0, 1, 0);
             INSERT INTO roster VALUES ('a.example', 'alice', 'carol@c.example', NULL,
                 '[]', 0, 0, 1, 0, 1);
             INSERT INTO roster_versions VALUES ('a.example', 'alice', 7);
             INSERT INTO offline_messages (seq, domain, username, stanza, stored_unix)
                 VALUES (3, 'a.example', 'alice', '<message id=''one''/>', 100),
                        (9, 'a.example', 'alice', '<message id=''two''/>', 200),
                        (5, 'a.example', 'dave', '<message id=''dave''/>', 150);
             INSERT INTO blocklist VALUES ('a.example', 'alice', 'spam.example');
             INSERT INTO blocklist VALUES ('a.example', 'alice', 'eve@e.example');
             INSERT INTO vcards VALUES ('a.example', 'alice', '<vCard xmlns=''vcard-temp''/>');",
        )
        .unwrap();
    }
    let s = Arc::new(SqliteStore::open(&path).unwrap());
    let im = ImData::new(s.clone());
    let (version, items) = im.roster("alice@a.example").await.unwrap();
    assert_eq!(version, 7);
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].jid, "bob@b.example");
    assert_eq!(items[0].name.as_deref(), Some("Bob"));
    assert_eq!(items[0].groups, ["Friends", "Work"]);
    let (b, c) = (items[0].state, items[1].state);
    assert!(b.to && !b.from && !b.pending_out && b.pending_in && !b.preapproved);
    assert!(!c.to && !c.from && c.pending_out && !c.pending_in && c.preapproved);
    assert_eq!(items[1].name, None);
    let offline: Vec<String> = im
        .offline("alice@a.example")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.stanza)
        .collect();
    assert_eq!(offline, ["<message id='one'/>", "<message id='two'/>"]);
    assert_eq!(im.offline("dave@a.example").await.unwrap().len(), 1);
    assert_eq!(
        im.blocklist("alice@a.example").await.unwrap(),
        ["eve@e.example", "spam.example"]
    );
    assert_eq!(
        im.vcard("alice@a.example").await.unwrap().as_deref(),
        Some("<vCard xmlns='vcard-temp'/>")
    );
    // And it goes on from there: the next change is version 8, a new message comes last.
    let mut carol = items[1].clone();
    carol.name = Some("Carol".into());
    assert_eq!(
        im.put_roster_item("alice@a.example", "carol@c.example", Some(carol), 10)
            .await
            .unwrap(),
        Some(8)
    );
    assert!(
        im.store_offline("alice@a.example", "<message id='three'/>", 3)
            .await
            .unwrap()
    );
    assert!(
        !im.store_offline("alice@a.example", "<message id='four'/>", 3)
            .await
            .unwrap()
    );
    assert_eq!(im.offline("alice@a.example").await.unwrap().len(), 3);
    // The account's deletion takes its data, and only its.
    assert!(
        s.create_account("alice", "a.example", &creds(1))
            .await
            .unwrap()
    );
    assert!(s.delete_account("alice", "a.example").await.unwrap());
    assert_eq!(im.roster("alice@a.example").await.unwrap(), (0, Vec::new()));
    assert!(im.offline("alice@a.example").await.unwrap().is_empty());
    assert!(im.blocklist("alice@a.example").await.unwrap().is_empty());
    assert_eq!(im.vcard("alice@a.example").await.unwrap(), None);
    assert_eq!(im.offline("dave@a.example").await.unwrap().len(), 1);
}
