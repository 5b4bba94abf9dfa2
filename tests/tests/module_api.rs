//! A module written against the public module API alone (`tests/modules/counter`: a
//! to-account hook and a key-value store of its own) plugged into a real server: it counts
//! what reaches an account, only on the host that enables it, keeps its counts across a
//! restart, and its hook goes when a reload removes it. Real TLS sockets and the SQLite
//! store in a temp dir.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use openspimed::control::Reloader;
use openspimed_module_api::{Element, ModuleFactory, toml};
use openspimed_tests::{Raw, TestServer, error_condition};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

type Client = Raw<TlsStream<TcpStream>>;

const NS: &str = openspimed_mod_counter::NS;

/// The compiled-in modules and the example: the one line that registers a module.
fn modules() -> Vec<Box<dyn ModuleFactory>> {
    let mut all = openspimed::server::builtin_modules();
    all.push(Box::new(openspimed_mod_counter::Factory));
    all
}

/// The answer to an iq with id `id`, skipping everything else.
async fn answer(c: &mut Client, id: &str) -> Element {
    loop {
        let e = c.stanza("iq").await;
        if e.attr("id") == Some(id) {
            return e;
        }
    }
}

/// Asks the count of one's own account (no `to`, as a client asks its own account).
async fn count(c: &mut Client, id: &str) -> Result<u64, String> {
    c.send(&format!(
        "<iq type='get' id='{id}'><count xmlns='{NS}'/></iq>"
    ))
    .await;
    let a = answer(c, id).await;
    match a.get_child("count", NS) {
        Some(n) => Ok(n.text().parse().unwrap()),
        None => Err(error_condition(&a).unwrap_or_else(|| a.to_string())),
    }
}

/// Returns once the server routed everything `c` sent before: a session's stanzas are
/// routed in order, so the answer to a ping sent after them comes once they are through.
async fn routed(c: &mut Client) {
    c.send("<iq type='get' id='routed'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    answer(c, "routed").await;
}

/// Sends initial presence: messages to the bare JID come to this session from now on.
async fn available(c: &mut Client) {
    c.send("<presence/>").await;
    routed(c).await;
}

/// Sends `n` chat messages with a body to `to`, and one without a body; returns once the
/// server routed them all.
async fn messages(c: &mut Client, to: &str, n: usize) {
    for i in 0..n {
        c.send(&format!(
            "<message type='chat' to='{to}' id='m{i}'><body>hello {i}</body></message>"
        ))
        .await;
    }
    c.send(&format!(
        "<message type='chat' to='{to}'><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
    ))
    .await;
    routed(c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_of_the_public_api_hooks_messages_and_keeps_its_own_store() {
    let ca = openspimed_certs::DevCa::new("module API CA").unwrap();
    let mut server =
        TestServer::start_with_modules(&ca, &["localhost", "other.test"], modules, |c| {
            c.hosts
                .get_mut("localhost")
                .unwrap()
                .modules
                .push("counter".into());
            let mut options = toml::Table::new();
            options.insert("store".into(), "message-counts".into());
            c.modules.insert("counter".into(), options);
        })
        .await;
    for user in ["alice", "bob"] {
        server.add_account(user, "localhost", "pw").await;
        server.add_account(user, "other.test", "pw").await;
    }
    let (mut alice, _) = Raw::login(&server, "alice", "pw", "a").await;
    let (mut bob, _) = Raw::login(&server, "bob", "pw", "b").await;
    assert_eq!(count(&mut bob, "c0").await, Ok(0));
    // Bob is not available yet: the hook sees these before offline storage keeps them.
    messages(&mut alice, "bob@localhost", 2).await;
    assert_eq!(count(&mut bob, "c1").await, Ok(2));
    // Delivered as before: the hook lets every message pass (the three kept offline come
    // with the initial presence, then the live ones).
    bob.send("<presence/>").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            bob.stanza("message")
                .await
                .attr("id")
                .unwrap_or("-")
                .to_owned(),
        );
    }
    messages(&mut alice, "bob@localhost", 3).await;
    for _ in 0..4 {
        ids.push(
            bob.stanza("message")
                .await
                .attr("id")
                .unwrap_or("-")
                .to_owned(),
        );
    }
    assert_eq!(ids, ["m0", "m1", "-", "m0", "m1", "m2", "-"]);
    assert_eq!(count(&mut bob, "c2").await, Ok(5));
    assert_eq!(count(&mut alice, "c3").await, Ok(0));
    // One's own count only.
    bob.send(&format!(
        "<iq type='get' id='c4' to='alice@localhost'><count xmlns='{NS}'/></iq>"
    ))
    .await;
    let refused = answer(&mut bob, "c4").await;
    assert_eq!(
        error_condition(&refused).as_deref(),
        Some("forbidden"),
        "{refused}"
    );

    // The counts are in the module's own store, under the name its options give.
    let store = server.storage().kv("localhost", "message-counts");
    assert_eq!(
        store.get("bob@localhost", "messages").await.unwrap(),
        Some(b"5".to_vec())
    );

    // A host that does not enable it neither counts nor answers.
    let (mut other_alice, _) = Raw::login_on(&server, "other.test", "alice", "pw", "a").await;
    let (mut other_bob, _) = Raw::login_on(&server, "other.test", "bob", "pw", "b").await;
    available(&mut other_bob).await;
    messages(&mut other_alice, "bob@other.test", 2).await;
    for _ in 0..3 {
        other_bob.stanza("message").await;
    }
    assert_eq!(
        count(&mut other_bob, "o1").await,
        Err("service-unavailable".to_owned())
    );
    assert_eq!(
        server
            .storage()
            .kv("other.test", "message-counts")
            .get("bob@other.test", "messages")
            .await
            .unwrap(),
        None
    );
    drop((alice, bob, other_alice, other_bob));

    // Durable: a restarted server has the counts and goes on from them.
    server.restart().await;
    let (mut alice, _) = Raw::login(&server, "alice", "pw", "a").await;
    let (mut bob, _) = Raw::login(&server, "bob", "pw", "b").await;
    available(&mut bob).await;
    messages(&mut alice, "bob@localhost", 1).await;
    bob.stanza("message").await;
    bob.stanza("message").await;
    assert_eq!(count(&mut bob, "c5").await, Ok(6));

    // A reload that takes the module off the host takes its hook with it.
    let path = server.dir.path().join("openspimed.toml");
    let mut config = server.config.clone();
    config
        .hosts
        .get_mut("localhost")
        .unwrap()
        .modules
        .retain(|m| m != "counter");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let reloader = Reloader::new(server.running(), Some(path), None);
    let report = reloader.reload().await;
    assert!(
        report
            .iter()
            .any(|l| format!("{l:?}").contains("counter on localhost")),
        "{report:?}"
    );
    messages(&mut alice, "bob@localhost", 2).await;
    for _ in 0..3 {
        bob.stanza("message").await;
    }
    assert_eq!(
        count(&mut bob, "c6").await,
        Err("service-unavailable".to_owned())
    );
    assert_eq!(
        store.get("bob@localhost", "messages").await.unwrap(),
        Some(b"6".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_im_is_a_bare_rfc6120_router() {
    let ca = openspimed_certs::DevCa::new("bare router CA").unwrap();
    let server = TestServer::start_with_modules(&ca, &["localhost", "bare.test"], modules, |c| {
        c.hosts.get_mut("bare.test").unwrap().modules_disabled = vec!["im".into()];
    })
    .await;
    for host in ["localhost", "bare.test"] {
        server.add_account("alice", host, "pw").await;
        server.add_account("bob", host, "pw").await;
    }
    let (mut alice, _) = Raw::login_on(&server, "bare.test", "alice", "pw", "a").await;
    let (mut bob, bob_full) = Raw::login_on(&server, "bare.test", "bob", "pw", "b").await;
    let roster = "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>";
    // No roster, no offline storage, no IM features on this host…
    alice.send(roster).await;
    let r = answer(&mut alice, "r1").await;
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("service-unavailable"),
        "{r}"
    );
    alice
        .send("<message to='bob@bare.test' id='b1' type='chat'><body>to the bare JID</body></message>")
        .await;
    let bounced = alice.stanza("message").await;
    assert_eq!(bounced.attr("type"), Some("error"), "{bounced}");
    assert_eq!(
        error_condition(&bounced).as_deref(),
        Some("service-unavailable")
    );
    alice
        .send("<iq type='get' id='d1' to='bare.test'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let info = answer(&mut alice, "d1").await.to_string();
    assert!(
        info.contains("urn:xmpp:ping") && !info.contains("msgoffline"),
        "{info}"
    );
    // …but stanzas to a full JID are routed (RFC 6120 §10.5.3).
    alice
        .send(&format!(
            "<message to='{bob_full}' id='f1' type='chat'><body>to the full JID</body></message>"
        ))
        .await;
    let m = bob.stanza("message").await;
    assert_eq!(m.attr("id"), Some("f1"), "{m}");
    // The other host has IM (autoloaded): the same roster request is answered.
    let (mut local, _) = Raw::login(&server, "alice", "pw", "a").await;
    local.send(roster).await;
    let r = answer(&mut local, "r1").await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
}
