//! The SQLite backend against a real database file.

use openspimed_mod_certsvc::Keys;
use openspimed_mod_scopenode::store::{SensorData, SensorEntry};
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
    let s = SensorData::new(Arc::new(SqliteStore::open(&path).unwrap()));
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
        s.entry_counts("n@scopenode.example").await.unwrap(),
        [("co2".into(), 4), ("temp".into(), 2)]
    );
    assert_eq!(
        xml(s
            .export_entries("n@scopenode.example", Some("s@a"), Some(10))
            .await
            .unwrap()),
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
        let s = Keys::new(Arc::new(SqliteStore::open(&path).unwrap()));
        s.put_key("cert.a", "spime@a/x", b"k1").await.unwrap();
        s.put_key("cert.b", "spime@a/x", b"k2").await.unwrap();
        assert!(s.revoke_key("cert.a", "spime@a/x").await.unwrap());
        assert!(!s.revoke_key("cert.a", "spime@a/x").await.unwrap());
        assert!(!s.revoke_key("cert.a", "nobody@a").await.unwrap());
    }
    let s = Keys::new(Arc::new(SqliteStore::open(&path).unwrap()));
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
    assert_eq!(s.list_keys("cert.a").await.unwrap().len(), 1);
    assert_eq!(s.list_keys("cert.b").await.unwrap().len(), 1);
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
    // Counting at most so many: exact up to the cap, nothing above it; the named-only
    // condition (all of these are named) changes nothing but the index.
    assert_eq!(mam.count_at_most(owner, &by_bob, 3).await.unwrap(), Some(3));
    assert_eq!(mam.count_at_most(owner, &by_bob, 2).await.unwrap(), None);
    let named_bob = q(|q| {
        q.with = Some("bob@b.example".into());
        q.named_only = true;
    });
    assert_eq!(
        ids(mam.find(owner, &named_bob).await.unwrap()),
        ["m1", "m3", "m4"]
    );
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

#[tokio::test]
async fn archives_order_by_time_count_per_jid_expire_everywhere_and_keep_unnamed_items() {
    use openspimed_module_api::{ArchiveQuery, ArchivedItem};
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("db.sqlite")).unwrap();
    let log = s.archive("a.example", "log");
    let item = |at_ms: i64, with: &str, v: &str| ArchivedItem {
        id: String::new(),
        at_ms,
        with: with.into(),
        value: v.as_bytes().to_vec(),
    };
    // Unnamed items replace nothing: two equal ones are both kept.
    log.append_many(
        "x",
        vec![
            item(3_000, "a", "late"),
            item(1_000, "b", "early"),
            item(1_000, "b", "early"),
        ],
    )
    .await
    .unwrap();
    log.append_many(
        "y",
        vec![item(500, "a", "y-old"), item(9_000, "a", "y-new")],
    )
    .await
    .unwrap();
    s.archive("a.example", "other")
        .append("z", &item(1, "a", "elsewhere"))
        .await
        .unwrap();
    let values = |items: Vec<ArchivedItem>| {
        items
            .into_iter()
            .map(|i| (String::from_utf8(i.value).unwrap(), i.id))
            .collect::<Vec<_>>()
    };
    let newest_by_time = ArchiveQuery {
        reverse: true,
        by_time: true,
        ..ArchiveQuery::default()
    };
    assert_eq!(
        values(log.find("x", &newest_by_time).await.unwrap()),
        [
            ("late".into(), String::new()),
            ("early".into(), String::new()),
            ("early".into(), String::new())
        ]
    );
    // Append order alone puts the late reading first.
    assert_eq!(
        values(log.find("x", &ArchiveQuery::default()).await.unwrap())[0].0,
        "late"
    );
    assert_eq!(
        log.summary("x", &ArchiveQuery::default()).await.unwrap(),
        [("a".into(), 1), ("b".into(), 2)]
    );
    assert_eq!(log.owners().await.unwrap(), ["x", "y"]);
    // Retention across owners, of one JID, before a time; the other store keeps its own.
    let old_a = ArchiveQuery {
        with: Some("a".into()),
        end_ms: Some(4_000),
        ..ArchiveQuery::default()
    };
    assert_eq!(log.delete_everywhere(&old_a).await.unwrap(), 2);
    assert_eq!(log.count("x", &ArchiveQuery::default()).await.unwrap(), 2);
    assert_eq!(
        values(log.find("y", &ArchiveQuery::default()).await.unwrap()),
        [("y-new".into(), String::new())]
    );
    assert_eq!(
        s.archive("a.example", "other")
            .count("z", &ArchiveQuery::default())
            .await
            .unwrap(),
        1
    );
    // An owner whose items all went is no longer listed.
    log.delete("x", &ArchiveQuery::default()).await.unwrap();
    assert_eq!(log.owners().await.unwrap(), ["y"]);
}

#[tokio::test]
async fn module_data_of_schema_10_moves_into_the_named_stores() {
    use openspimed_mod_im::store::ImData;
    use openspimed_mod_pubsub::store::{ItemRecord, PubSubData};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    {
        // A database as the current release leaves it (schema 10), with what the
        // certification services, PubSub and the ScopeNodes kept in their own tables, and
        // an offline message already in the named archive.
        let c = Connection::open(&path).unwrap();
        for (i, sql) in MIGRATIONS.iter().take(10).enumerate() {
            c.execute_batch(&format!("{sql} PRAGMA user_version = {};", i + 1))
                .unwrap();
        }
        c.execute_batch(
            "INSERT INTO cert_keys VALUES ('cert.a.example', 'spime@a.example/x', X'0102ab', 100, NULL);
             INSERT INTO cert_keys VALUES ('svc@b.example/cert', 'old@b.example', X'ff', 50, 60);
             INSERT INTO pubsub_nodes VALUES ('pubsub.a.example', 'news', 'max_items=2');
             INSERT INTO pubsub_nodes VALUES ('alice@a.example', 'urn:xmpp:avatar:data', 'pep');
             INSERT INTO pubsub_affiliations VALUES ('pubsub.a.example', 'news', 'alice@a.example', 'owner');
             INSERT INTO pubsub_subscriptions VALUES ('pubsub.a.example', 'news', 'bob@b.example/phone', 's1', 'subscribed', 0);
             INSERT INTO pubsub_items VALUES ('pubsub.a.example', 'news', 'i1', 'alice@a.example/pc', '<p>1</p>', 1);
             INSERT INTO pubsub_items VALUES ('pubsub.a.example', 'news', 'i2', 'alice@a.example/pc', '<p>2</p>', 2);
             INSERT INTO pubsub_items VALUES ('alice@a.example', 'urn:xmpp:avatar:data', 'h', 'alice@a.example/pc', '<data/>', 1);
             INSERT INTO sensor_streams (id, node, spime, scope) VALUES
                 (1, 'n@scopenode.a.example', 's@a.example/spime', 'co2'),
                 (2, 'n@scopenode.a.example', 's@a.example/spime', 'temp');
             INSERT INTO sensor_data (seq, stream, at_unix, xml) VALUES
                 (1, 1, 20, 'co2-20'), (2, 2, 10, 'temp-10'), (3, 1, 30, 'co2-30');
             INSERT INTO scopenode_keys VALUES ('n@scopenode.a.example', X'3082');
             INSERT INTO seek_log VALUES ('n@scopenode.a.example', 'o@a.example', 'r1', 4000000000);
             INSERT INTO module_archive (host, store, owner, id, at_ms, with_jid, value)
                 VALUES ('a.example', 'offline', 'alice@a.example', 'm1', 5, '', CAST('<message/>' AS BLOB));",
        )
        .unwrap();
    }
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let storage: Arc<dyn ModuleStorage> = store.clone();

    let keys = Keys::new(storage.clone());
    let k = keys
        .key("cert.a.example", "spime@a.example/x")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (k.spki_der.as_slice(), k.created_unix, k.revoked_unix),
        (&[1u8, 2, 0xab][..], 100, None)
    );
    let old = keys.list_keys("svc@b.example/cert").await.unwrap();
    assert_eq!(old.len(), 1);
    assert_eq!(
        (old[0].jid.as_str(), old[0].revoked_unix),
        ("old@b.example", Some(60))
    );

    let ps = PubSubData::new(storage.clone());
    let nodes = ps.nodes("pubsub.a.example").await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        (nodes[0].node.as_str(), nodes[0].config.as_str()),
        ("news", "max_items=2")
    );
    let affs = ps.affiliations("pubsub.a.example").await.unwrap();
    assert_eq!(
        (affs[0].jid.as_str(), affs[0].affiliation.as_str()),
        ("alice@a.example", "owner")
    );
    let subs = ps.subscriptions("pubsub.a.example").await.unwrap();
    assert_eq!(subs.len(), 1);
    assert_eq!(
        (
            subs[0].jid.as_str(),
            subs[0].subid.as_str(),
            subs[0].state.as_str(),
            subs[0].deliver
        ),
        ("bob@b.example/phone", "s1", "subscribed", false)
    );
    let ids = |items: Vec<ItemRecord>| items.into_iter().map(|i| i.id).collect::<Vec<_>>();
    assert_eq!(
        ids(ps
            .items("pubsub.a.example", "news", None, None)
            .await
            .unwrap()),
        ["i2", "i1"]
    );
    let avatar = ps
        .items("alice@a.example", "urn:xmpp:avatar:data", None, None)
        .await
        .unwrap();
    assert_eq!(
        (avatar[0].payload.as_str(), avatar[0].publisher.as_str()),
        ("<data/>", "alice@a.example/pc")
    );
    // And goes on: a new item comes first, the oldest goes past max_items.
    let item = ItemRecord {
        id: "i3".into(),
        publisher: "alice@a.example/pc".into(),
        payload: "<p>3</p>".into(),
    };
    ps.publish_item("pubsub.a.example", "news", &item, Some(2))
        .await
        .unwrap();
    assert_eq!(
        ids(ps
            .items("pubsub.a.example", "news", None, None)
            .await
            .unwrap()),
        ["i3", "i2"]
    );
    assert!(ps.delete_node("pubsub.a.example", "news").await.unwrap());
    assert!(ps.nodes("pubsub.a.example").await.unwrap().is_empty());
    assert!(
        ps.affiliations("pubsub.a.example")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        ps.subscriptions("pubsub.a.example")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        ps.items("pubsub.a.example", "news", None, None)
            .await
            .unwrap()
            .is_empty()
    );

    let sensors = SensorData::new(storage.clone());
    let node = "n@scopenode.a.example";
    let xml = |v: Vec<SensorEntry>| v.into_iter().map(|e| e.xml).collect::<Vec<_>>();
    assert_eq!(
        xml(sensors
            .entries_for_spime(node, "s@a.example/spime", 10)
            .await
            .unwrap()),
        ["co2-30", "co2-20", "temp-10"]
    );
    let first = sensors
        .export_entries(node, None, None)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        (first.scope.as_str(), first.spime.as_str(), first.at_unix),
        ("temp", "s@a.example/spime", 10)
    );
    assert_eq!(
        sensors.entry_counts(node).await.unwrap(),
        [("co2".into(), 2), ("temp".into(), 1)]
    );
    assert_eq!(
        sensors.node_key(node).await.unwrap().as_deref(),
        Some(&[0x30u8, 0x82][..])
    );
    assert!(sensors.seek_seen(node, "o@a.example", "r1").await.unwrap());
    assert!(
        !sensors
            .remember_seek(node, "o@a.example", "r1", 4_000_000_000)
            .await
            .unwrap()
    );
    sensors.forget_seeks(node, 4_000_000_001).await.unwrap();
    assert!(!sensors.seek_seen(node, "o@a.example", "r1").await.unwrap());

    // The archive that moved under owner rows still answers.
    let offline = ImData::new(storage.clone())
        .offline("alice@a.example")
        .await
        .unwrap();
    assert_eq!(offline.len(), 1);
    assert_eq!(offline[0].stanza, "<message/>");
}

#[tokio::test]
async fn archives_by_time_page_by_position_in_time_and_named_only_leaves_unnamed_items_out() {
    use openspimed_module_api::{ArchiveQuery, ArchivedItem};
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("db.sqlite")).unwrap();
    let a = s.archive("a.example", "archive");
    let item = |id: &str, at_ms: i64| ArchivedItem {
        id: id.into(),
        at_ms,
        with: "bob@b.example".into(),
        value: id.as_bytes().to_vec(),
    };
    // Appended out of time order (a clock that went back): by time n2, n3, n4, n1.
    for (id, at) in [("n1", 5_000), ("n2", 1_000), ("n3", 3_000), ("n4", 3_000)] {
        a.append("o", &item(id, at)).await.unwrap();
    }
    a.append("o", &item("", 2_000)).await.unwrap();
    let ids = |items: Vec<ArchivedItem>| items.into_iter().map(|i| i.id).collect::<Vec<_>>();
    let q = |f: &dyn Fn(&mut ArchiveQuery)| {
        let mut q = ArchiveQuery {
            by_time: true,
            named_only: true,
            ..ArchiveQuery::default()
        };
        f(&mut q);
        q
    };
    let find = |q: ArchiveQuery| {
        let a = a.clone();
        async move { ids(a.find("o", &q).await.unwrap()) }
    };
    assert_eq!(find(q(&|_| {})).await, ["n2", "n3", "n4", "n1"]);
    assert_eq!(
        find(q(&|q| q.after = Some("n3".into()))).await,
        ["n4", "n1"]
    );
    let last_before_n1 = q(&|q| {
        q.before = Some("n1".into());
        q.reverse = true;
        q.limit = Some(2);
    });
    assert_eq!(find(last_before_n1).await, ["n4", "n3"]);
    // A time bound and a position together: both hold, whichever is tighter.
    let since_and_after = q(&|q| {
        q.start_ms = Some(2_000);
        q.after = Some("n2".into());
    });
    assert_eq!(find(since_and_after).await, ["n3", "n4", "n1"]);
    let tighter_start = q(&|q| {
        q.start_ms = Some(3_500);
        q.after = Some("n3".into());
    });
    assert_eq!(find(tighter_start).await, ["n1"]);
    let until_and_before = q(&|q| {
        q.end_ms = Some(3_000);
        q.before = Some("n4".into());
    });
    assert_eq!(find(until_and_before).await, ["n2", "n3"]);
    assert!(find(q(&|q| q.after = Some("nope".into()))).await.is_empty());
    // Without named_only the unnamed item is there; with it, not.
    let everything = ArchiveQuery {
        by_time: true,
        ..ArchiveQuery::default()
    };
    assert_eq!(find(everything).await, ["n2", "", "n3", "n4", "n1"]);
    assert_eq!(a.count("o", &q(&|_| {})).await.unwrap(), 4);
}
