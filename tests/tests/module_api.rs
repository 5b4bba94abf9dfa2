//! A module written against the public module API alone (`tests/modules/counter`: a
//! to-account hook and a key-value store of its own) plugged into a real server: it counts
//! what reaches an account, only on the host that enables it, keeps its counts across a
//! restart, and its hook goes when a reload removes it. Real TLS sockets and the SQLite
//! store in a temp dir.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use openspimed::control::Reloader;
use openspimed_module_api::hooks::{AccountHook, ClientSession, Flow, Hooks, Kinds, ToSessionHook};
use openspimed_module_api::{
    Context, Element, Module, ModuleError, ModuleFactory, Outcome, Route, ServerHandle,
    async_trait, toml,
};
use openspimed_tests::{Raw, TestServer, error_condition};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

type Client = Raw<TlsStream<TcpStream>>;

const NS: &str = openspimed_mod_counter::NS;

/// The compiled-in modules and the examples: the one line that registers a module.
fn modules() -> Vec<Box<dyn ModuleFactory>> {
    let mut all = openspimed::server::builtin_modules();
    all.push(Box::new(openspimed_mod_counter::Factory));
    all.push(Box::new(QuietFactory));
    all
}

const NS_QUIET: &str = "urn:example:quiet";

/// What the `quiet` module's account hook saw, in order.
static ACCOUNTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// `quiet`, a module of this test's own: a to-session hook that tags the messages a
/// session gets, drops those whose body is "drop", holds those whose body is "hold" until
/// one whose body is "release" comes (as client state indication holds what an inactive
/// client need not get at once), and an account hook that records what was created and
/// deleted.
struct QuietFactory;

impl ModuleFactory for QuietFactory {
    fn name(&self) -> &'static str {
        "quiet"
    }
    fn build(&self, _host: &str, _options: &toml::Table) -> Result<Arc<dyn Module>, ModuleError> {
        Ok(Arc::new(Quiet))
    }
}

struct Quiet;

#[async_trait]
impl Module for Quiet {
    fn name(&self) -> &'static str {
        "quiet"
    }
    fn routes(&self) -> Vec<Route> {
        Vec::new()
    }
    fn hooks(self: Arc<Self>, cx: &Context, hooks: &dyn Hooks) {
        let filter = Arc::new(Holding {
            server: cx.server.clone(),
            held: Mutex::new(Vec::new()),
        });
        hooks.on_to_session(0, Kinds::MESSAGE, filter);
        hooks.on_account(Arc::new(Recorder));
    }
    async fn handle(&self, _cx: &Context, _stanza: Element) -> Result<Outcome, ModuleError> {
        Ok(Outcome::Handled)
    }
}

/// The to-session handler of `quiet`.
struct Holding {
    /// Where held stanzas are released to.
    server: Arc<dyn ServerHandle>,
    /// What it holds, with the session it is for.
    held: Mutex<Vec<(String, Element)>>,
}

#[async_trait]
impl ToSessionHook for Holding {
    async fn to_session(&self, session: ClientSession<'_>, stanza: Element) -> Flow {
        let body = stanza
            .children()
            .find(|c| c.name() == "body")
            .map(|b| b.text())
            .unwrap_or_default();
        match body.as_str() {
            "drop" => return Flow::Done,
            "hold" => {
                self.held
                    .lock()
                    .unwrap()
                    .push((session.full.to_owned(), stanza));
                return Flow::Done;
            }
            "release" => {
                let held = std::mem::take(&mut *self.held.lock().unwrap());
                for (full, el) in held {
                    assert!(self.server.deliver_unfiltered(&full, el));
                }
            }
            _ => {}
        }
        Flow::Pass(stanza.with_child(Element::new("seen", NS_QUIET)))
    }
}

/// The account hook of `quiet`.
struct Recorder;

#[async_trait]
impl AccountHook for Recorder {
    async fn created(&self, bare: &str) {
        ACCOUNTS.lock().unwrap().push(format!("created {bare}"));
    }
    async fn deleted(&self, bare: &str) {
        ACCOUNTS.lock().unwrap().push(format!("deleted {bare}"));
    }
}

/// The stream features after authenticating as `user` on `domain`.
async fn features_after_auth(server: &TestServer, domain: &str, user: &str) -> Element {
    let mut raw = Raw::connect(server.c2s).await;
    raw.open(domain).await;
    let mut raw = raw.starttls_as(server.tls_config(None), domain).await;
    raw.open(domain).await;
    let ok = raw.auth_plain(user, "pw").await;
    assert_eq!(ok.name(), "success", "{ok}");
    raw.restart();
    raw.open(domain).await
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
    // Roster versioning is IM's stream feature (RFC 6121 §2.6.1): not here…
    const ROSTERVER: &str = "urn:xmpp:features:rosterver";
    let bare = features_after_auth(&server, "bare.test", "alice").await;
    assert!(
        bare.get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
            .is_some(),
        "{bare}"
    );
    assert!(bare.get_child("ver", ROSTERVER).is_none(), "{bare}");
    let full = features_after_auth(&server, "localhost", "alice").await;
    assert!(full.get_child("ver", ROSTERVER).is_some(), "{full}");
    // The other host has IM (autoloaded): the same roster request is answered.
    let (mut local, _) = Raw::login(&server, "alice", "pw", "a").await;
    local.send(roster).await;
    let r = answer(&mut local, "r1").await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_session_and_account_hooks_of_a_module() {
    let ca = openspimed_certs::DevCa::new("session hooks CA").unwrap();
    let server = TestServer::start_with_modules(&ca, &["localhost"], modules, |c| {
        let host = c.hosts.get_mut("localhost").unwrap();
        host.modules.push("quiet".into());
        host.allow_registration = true;
    })
    .await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let (mut alice, _) = Raw::login(&server, "alice", "pw", "a").await;
    let (mut bob, bob_full) = Raw::login(&server, "bob", "pw", "b").await;
    for (id, body) in [
        ("m1", "hello"),
        ("m2", "drop"),
        ("m3", "hold"),
        ("m4", "release"),
    ] {
        alice
            .send(&format!(
                "<message to='{bob_full}' id='{id}' type='chat'><body>{body}</body></message>"
            ))
            .await;
    }
    // What passes is changed on its way; the dropped one never comes; the held one comes
    // once released, after the stanza that released it and past the hook (untagged).
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = bob.stanza("message").await;
        let tagged = m.get_child("seen", NS_QUIET).is_some();
        got.push(format!("{} {tagged}", m.attr("id").unwrap_or("-")));
    }
    assert_eq!(got, ["m1 true", "m4 true", "m3 false"]);
    // Iqs are not messages: they pass the hook by untouched.
    bob.send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let pong = answer(&mut bob, "p").await;
    assert!(pong.get_child("seen", NS_QUIET).is_none(), "{pong}");

    // In-band registration and removal (XEP-0077) tell the account hooks.
    let mut raw = Raw::connect(server.c2s).await;
    raw.open("localhost").await;
    let mut raw = raw.starttls_as(server.tls_config(None), "localhost").await;
    raw.open("localhost").await;
    raw.send(
        "<iq type='set' id='reg'><query xmlns='jabber:iq:register'>\
         <username>carol</username><password>pw</password></query></iq>",
    )
    .await;
    let r = answer(&mut raw, "reg").await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let (mut carol, _) = Raw::login(&server, "carol", "pw", "c").await;
    carol
        .send("<iq type='set' id='unreg'><query xmlns='jabber:iq:register'><remove/></query></iq>")
        .await;
    let r = answer(&mut carol, "unreg").await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    assert_eq!(
        *ACCOUNTS.lock().unwrap(),
        ["created carol@localhost", "deleted carol@localhost"]
    );
}
