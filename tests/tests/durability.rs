//! What was acknowledged survives `SIGKILL`: the server runs as a real child process (this
//! test binary re-executed as `openspimed`), reports are answered, the process is killed
//! right after the answers, and every answered entry is in the store afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Child, ExitCode};
use std::time::Duration;

use openspimed::storage::AccountStore;
use openspimed::storage::sqlite::SqliteStore;
use openspimed_mod_im::store::ImData;
use openspimed_mod_scopenode::store::SensorData;
use openspimed_tests::{AS_SERVER, Raw, client_tls_config, server_command};

fn main() -> ExitCode {
    if std::env::var_os(AS_SERVER).is_some() {
        return openspimed::cli::main();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(reports_answered_before_sigkill_are_stored());
    println!("test reports_answered_before_sigkill_are_stored ... ok");
    rt.block_on(offline_messages_and_roster_changes_survive_sigkill());
    println!("test offline_messages_and_roster_changes_survive_sigkill ... ok");
    rt.block_on(acknowledged_messages_are_in_both_archives_after_sigkill());
    println!("test acknowledged_messages_are_in_both_archives_after_sigkill ... ok");
    rt.block_on(acknowledged_room_messages_are_in_the_room_history_after_sigkill());
    println!("test acknowledged_room_messages_are_in_the_room_history_after_sigkill ... ok");
    println!("4 passed, 0 failed");
    ExitCode::SUCCESS
}

/// A server's directory for one test: a CA and its certificate for `localhost`, the
/// configuration (metrics on a free port when `metrics`, else off) and the accounts
/// `users` (password "pw") in its database.
struct Setup {
    /// Holds the directory for as long as the test runs.
    dir: tempfile::TempDir,
    /// The CA the clients trust.
    ca: openspimed_certs::DevCa,
    /// The data directory.
    data: std::path::PathBuf,
    /// The configuration file.
    config: std::path::PathBuf,
}

async fn setup(metrics: bool, users: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = openspimed_certs::DevCa::new("durability CA").unwrap();
    let (cert, key) = ca.issue(&["localhost"]).unwrap();
    std::fs::write(dir.path().join("c.pem"), cert).unwrap();
    std::fs::write(dir.path().join("k.pem"), key).unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("openspimed.toml");
    let metrics = if metrics {
        "listen = \"127.0.0.1:0\""
    } else {
        "enabled = false"
    };
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[metrics]\n{metrics}\n[listeners]\nc2s = [\"127.0.0.1:0\"]\nc2s_direct_tls = []\n\
             [hosts.localhost]\ncertificate = \"c.pem\"\nkey = \"k.pem\"\n",
            data.display()
        ),
    )
    .unwrap();
    let store = SqliteStore::open(&data.join("openspimed.sqlite")).unwrap();
    let creds = openspimed::sasl::derive_credentials("pw", 4096);
    for u in users {
        assert!(store.create_account(u, "localhost", &creds).await.unwrap());
    }
    Setup {
        dir,
        ca,
        data,
        config,
    }
}

/// Starts the server child and returns it with its c2s address (read from its log).
fn start_child(config: &std::path::Path) -> (Child, SocketAddr) {
    let mut cmd = server_command(config);
    cmd.arg("run");
    openspimed_tests::spawn_server(cmd)
}

async fn reports_answered_before_sigkill_are_stored() {
    let Setup {
        dir: _dir,
        ca,
        data,
        config,
    } = setup(true, &["spime"]).await;

    let (mut child, addr) = start_child(&config);
    let tls = client_tls_config(&ca.cert_pem, None);
    let (mut c, jid) = Raw::login_at(addr, tls.clone(), "localhost", "spime", "pw", "spime").await;
    // Twenty reports in flight at once; each answer means "stored".
    let n = 20;
    let mut burst = String::new();
    for i in 0..n {
        burst.push_str(&format!(
            "<iq type='set' id='r{i}' to='demo@scopenode.localhost/co2'>\
             <openspime xmlns='openspime:protocol:core' version='0.9'><transport>\
             <data xmlns='openspime:protocol:extension:data' version='0.9'><entry>\
             <date>2008-04-02T17:54:{i:02}+01:00</date><ppm>{i}.5</ppm></entry></data>\
             </transport></openspime></iq>"
        ));
    }
    c.send(&burst).await;
    let mut answered = 0;
    while answered < n {
        let iq = c.stanza("iq").await;
        assert_eq!(iq.attr("type"), Some("result"), "{iq}");
        answered += 1;
    }
    // Kill it the moment the last answer is read: no shutdown, no flush.
    child.kill().unwrap();
    child.wait().unwrap();

    let store = SensorData::new(std::sync::Arc::new(
        SqliteStore::open(&data.join("openspimed.sqlite")).unwrap(),
    ));
    let stored = store
        .entries_for_spime("demo@scopenode.localhost", &jid, 1000)
        .await
        .unwrap();
    assert_eq!(stored.len(), n, "every answered report survives SIGKILL");
    drop(store);

    // And the server starts again on that data.
    let (mut child, addr) = start_child(&config);
    let (mut c, _) = Raw::login_at(addr, tls, "localhost", "spime", "pw", "again").await;
    c.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let pong = tokio::time::timeout(Duration::from_secs(15), c.stanza("iq"))
        .await
        .unwrap();
    assert_eq!(pong.attr("type"), Some("result"));
    child.kill().unwrap();
    child.wait().unwrap();
}

async fn offline_messages_and_roster_changes_survive_sigkill() {
    let Setup {
        dir: _dir,
        ca,
        data,
        config,
    } = setup(false, &["alice", "bob"]).await;
    let (mut child, addr) = start_child(&config);
    let tls = client_tls_config(&ca.cert_pem, None);
    let (mut alice, _) = Raw::login_at(addr, tls.clone(), "localhost", "alice", "pw", "r").await;
    // A roster change, answered.
    alice
        .send(
            "<iq type='set' id='add'><query xmlns='jabber:iq:roster'>\
             <item jid='carol@example.net' name='Carol'/></query></iq>",
        )
        .await;
    let r = alice.stanza("iq").await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    // Ten messages for bob, who is offline, then a ping: stanzas of a session are handled
    // in order, so the pong means every message before it was stored.
    let n = 10;
    let mut burst = String::new();
    for i in 0..n {
        burst.push_str(&format!(
            "<message to='bob@localhost' type='chat' id='m{i}'><body>{i}</body></message>"
        ));
    }
    burst.push_str("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>");
    alice.send(&burst).await;
    let pong = alice.stanza("iq").await;
    assert_eq!(pong.attr("id"), Some("p"));
    child.kill().unwrap();
    child.wait().unwrap();

    let store = ImData::new(std::sync::Arc::new(
        SqliteStore::open(&data.join("openspimed.sqlite")).unwrap(),
    ));
    assert_eq!(store.offline("bob@localhost").await.unwrap().len(), n);
    let item = store
        .roster_item("alice@localhost", "carol@example.net")
        .await
        .unwrap()
        .expect("the answered roster change survives");
    assert_eq!(item.name.as_deref(), Some("Carol"));
    drop(store);

    // After a restart bob gets them, in order.
    let (mut child, addr) = start_child(&config);
    let (mut bob, _) = Raw::login_at(addr, tls, "localhost", "bob", "pw", "r").await;
    bob.send("<presence/>").await;
    for i in 0..n {
        let m = bob.stanza("message").await;
        assert_eq!(m.attr("id"), Some(format!("m{i}").as_str()), "{m}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The answer to a XEP-0313 query of `s`'s own archive: the bodies of the results, in
/// order, up to the `<fin/>`.
async fn archived_bodies<S>(s: &mut Raw<S>, id: &str) -> Vec<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.send(&format!(
        "<iq type='set' id='{id}'><query xmlns='urn:xmpp:mam:2' queryid='{id}'>\
         <set xmlns='http://jabber.org/protocol/rsm'><max>50</max></set></query></iq>"
    ))
    .await;
    let mut bodies = Vec::new();
    loop {
        let el = s.element().await;
        match el.name() {
            "message" => {
                let text = el.to_string();
                let b = text
                    .split("<body>")
                    .nth(1)
                    .and_then(|t| t.split("</body>").next());
                bodies.push(b.unwrap_or_default().to_owned());
            }
            "iq" => {
                assert_eq!(el.attr("type"), Some("result"), "{el}");
                return bodies;
            }
            _ => {}
        }
    }
}

async fn acknowledged_messages_are_in_both_archives_after_sigkill() {
    let Setup {
        dir: _dir,
        ca,
        data: _,
        config,
    } = setup(false, &["alice", "bob"]).await;
    let (mut child, addr) = start_child(&config);
    let tls = client_tls_config(&ca.cert_pem, None);
    let (mut alice, _) = Raw::login_at(addr, tls.clone(), "localhost", "alice", "pw", "r").await;
    let (mut bob, _) = Raw::login_at(addr, tls.clone(), "localhost", "bob", "pw", "r").await;
    // XEP-0198 on alice's stream: the server's <a h='n'/> acknowledges n stanzas.
    alice.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    let enabled = alice.element().await;
    assert_eq!(enabled.name(), "enabled", "{enabled}");
    let n = 10;
    let mut burst = String::new();
    for i in 0..n {
        burst.push_str(&format!(
            "<message to='bob@localhost/r' type='chat' id='m{i}'><body>b{i}</body></message>"
        ));
    }
    burst.push_str("<r xmlns='urn:xmpp:sm:3'/>");
    alice.send(&burst).await;
    let ack = alice.stanza("a").await;
    assert_eq!(ack.attr("h"), Some(n.to_string().as_str()), "{ack}");
    // bob's client is cut off in the middle: it read some, not all.
    for _ in 0..3 {
        bob.stanza("message").await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop((alice, bob));

    let (mut child, addr) = start_child(&config);
    let want: Vec<String> = (0..n).map(|i| format!("b{i}")).collect();
    for user in ["alice", "bob"] {
        let (mut s, _) = Raw::login_at(addr, tls.clone(), "localhost", user, "pw", "r2").await;
        assert_eq!(archived_bodies(&mut s, "q").await, want, "{user}'s archive");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

async fn acknowledged_room_messages_are_in_the_room_history_after_sigkill() {
    let Setup {
        dir: _dir,
        ca,
        data: _,
        config,
    } = setup(false, &["alice", "bob"]).await;
    let room = "durable@conference.localhost";
    let (mut child, addr) = start_child(&config);
    let tls = client_tls_config(&ca.cert_pem, None);
    let (mut alice, _) = Raw::login_at(addr, tls.clone(), "localhost", "alice", "pw", "r").await;
    // A persistent room, configured by its creator.
    alice
        .send(&format!(
            "<presence to='{room}/alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        ))
        .await;
    alice.stanza("message").await; // the subject ends the entering
    alice
        .send(&format!(
            "<iq type='set' id='cfg' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'>\
             <x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_persistentroom'><value>1</value></field></x>\
             </query></iq>"
        ))
        .await;
    let r = alice.stanza("iq").await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    alice.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    assert_eq!(alice.element().await.name(), "enabled");
    let n = 8;
    let mut burst = String::new();
    for i in 0..n {
        burst.push_str(&format!(
            "<message to='{room}' type='groupchat' id='g{i}'><body>r{i}</body></message>"
        ));
    }
    burst.push_str("<r xmlns='urn:xmpp:sm:3'/>");
    alice.send(&burst).await;
    let ack = alice.stanza("a").await;
    // The messages, counted from <enable/>.
    assert_eq!(ack.attr("h"), Some(n.to_string().as_str()), "{ack}");
    child.kill().unwrap();
    child.wait().unwrap();
    drop(alice);

    let (mut child, addr) = start_child(&config);
    let (mut bob, _) = Raw::login_at(addr, tls, "localhost", "bob", "pw", "r").await;
    bob.send(&format!(
        "<presence to='{room}/bob'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='20'/></x></presence>"
    ))
    .await;
    let mut bodies = Vec::new();
    loop {
        let e = bob.element().await;
        if e.name() != "message" {
            continue;
        }
        if e.get_child("subject", "jabber:client").is_some() {
            break;
        }
        let text = e.to_string();
        if let Some(b) = text
            .split("<body>")
            .nth(1)
            .and_then(|t| t.split("</body>").next())
        {
            bodies.push(b.to_owned());
        }
    }
    let want: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
    assert_eq!(bodies, want, "the room's history after the kill");
    child.kill().unwrap();
    child.wait().unwrap();
}
