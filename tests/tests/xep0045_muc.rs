//! XEP-0045 multi-user chat on `conference.localhost`, raw clients over real TLS: creating
//! a room (locked until configured), entering it in the order §7.2 gives, group and
//! private messages, history, subject, nick changes, leaving, persistence and the errors
//! of entering.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use openspimed_module_api::Element;
use openspimed_tests::{Raw, TestServer, error_condition};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

type Client = Raw<TlsStream<TcpStream>>;
const MUC: &str = "http://jabber.org/protocol/muc";
const USER: &str = "http://jabber.org/protocol/muc#user";
const ROOM: &str = "council@conference.localhost";

/// The status codes of a MUC presence.
fn codes(p: &Element) -> Vec<String> {
    p.get_child("x", USER)
        .map(|x| {
            x.children()
                .filter(|c| c.name() == "status")
                .filter_map(|c| c.attr("code").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The condition of the error stanza of `kind` that comes next.
async fn refusal(c: &mut Client, kind: &str) -> String {
    let e = c.stanza(kind).await;
    error_condition(&e).unwrap_or_else(|| panic!("not an error: {e}"))
}

/// The next stanza that is not an iq result of something else.
async fn next(c: &mut Client) -> Element {
    c.element().await
}

async fn join(c: &mut Client, nick: &str, extra: &str) {
    c.send(&format!(
        "<presence to='{ROOM}/{nick}'><x xmlns='{MUC}'>{extra}</x></presence>"
    ))
    .await;
}

/// Enters the room as `nick` and returns what came, up to and including the subject.
async fn enter(c: &mut Client, nick: &str, extra: &str) -> Vec<Element> {
    join(c, nick, extra).await;
    let mut got = Vec::new();
    loop {
        let e = next(c).await;
        let done = e.name() == "message" && e.get_child("subject", "jabber:client").is_some();
        assert_ne!(e.attr("type"), Some("error"), "entering failed: {e}");
        got.push(e);
        if done {
            return got;
        }
    }
}

async fn iq(c: &mut Client, id: &str, to: &str, kind: &str, payload: &str) -> Element {
    c.send(&format!(
        "<iq type='{kind}' id='{id}' to='{to}'>{payload}</iq>"
    ))
    .await;
    loop {
        let e = c.stanza("iq").await;
        if e.attr("id") == Some(id) {
            return e;
        }
    }
}

async fn instant(c: &mut Client) {
    let r = iq(
        c,
        "cfg",
        ROOM,
        "set",
        "<query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
}

fn from(e: &Element) -> &str {
    e.attr("from").unwrap_or("")
}

fn body(e: &Element) -> String {
    e.get_child("body", "jabber:client")
        .map(Element::text)
        .unwrap_or_default()
}

async fn users(server: &TestServer) -> (Client, Client, Client) {
    for u in ["alice", "bob", "carol"] {
        server.add_user(u, "pw").await;
    }
    let (a, _) = Raw::login(server, "alice", "pw", "a").await;
    let (b, _) = Raw::login(server, "bob", "pw", "b").await;
    let (c, _) = Raw::login(server, "carol", "pw", "c").await;
    (a, b, c)
}

#[tokio::test]
async fn a_room_is_created_entered_talked_in_and_left() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, mut carol) = users(&server).await;

    // The first to enter creates it (201) and owns it; it is locked until configured.
    let got = enter(&mut alice, "alice", "").await;
    let own = &got[0];
    assert_eq!(from(own), format!("{ROOM}/alice"));
    let c = codes(own);
    assert!(
        c.contains(&"110".into()) && c.contains(&"201".into()),
        "{own}"
    );
    let item = own
        .get_child("x", USER)
        .unwrap()
        .get_child("item", USER)
        .unwrap();
    assert_eq!(
        (item.attr("affiliation"), item.attr("role")),
        (Some("owner"), Some("moderator"))
    );
    join(&mut bob, "bob", "").await;
    assert_eq!(refusal(&mut bob, "presence").await, "item-not-found");
    instant(&mut alice).await;

    // bob enters: alice's presence first, then his own (110), then the subject.
    let got = enter(&mut bob, "bob", "").await;
    assert_eq!(from(&got[0]), format!("{ROOM}/alice"));
    assert!(codes(&got[0]).is_empty(), "{}", got[0]);
    assert_eq!(from(&got[1]), format!("{ROOM}/bob"));
    assert!(codes(&got[1]).contains(&"110".into()));
    assert_eq!(got.len(), 3, "{got:?}");
    let seen = alice.stanza("presence").await;
    assert_eq!(from(&seen), format!("{ROOM}/bob"));
    // Semi-anonymous: alice (moderator) sees bob's real JID.
    let item = seen
        .get_child("x", USER)
        .unwrap()
        .get_child("item", USER)
        .unwrap();
    assert_eq!(item.attr("jid"), Some("bob@localhost/b"));

    // A group message reaches both, from the sender's room JID, with the room's id.
    alice
        .send(&format!(
            "<message to='{ROOM}' type='groupchat' id='g1'><body>hello</body></message>"
        ))
        .await;
    for c in [&mut alice, &mut bob] {
        let m = c.stanza("message").await;
        assert_eq!(
            (from(&m), body(&m).as_str()),
            (format!("{ROOM}/alice").as_str(), "hello")
        );
        let sid = m
            .get_child("stanza-id", "urn:xmpp:sid:0")
            .expect("the room's stanza id");
        assert_eq!(sid.attr("by"), Some(ROOM));
    }
    bob.send(&format!(
        "<message to='{ROOM}' type='groupchat'><body>second</body></message>"
    ))
    .await;
    for c in [&mut alice, &mut bob] {
        assert_eq!(body(&c.stanza("message").await), "second");
    }

    // carol asks for one message of history: presences, herself, the last message
    // (delayed, from the room), the subject.
    let got = enter(&mut carol, "carol", "<history maxstanzas='1'/>").await;
    let history: Vec<&Element> = got
        .iter()
        .filter(|e| e.name() == "message" && !body(e).is_empty())
        .collect();
    assert_eq!(history.len(), 1, "{got:?}");
    assert_eq!(body(history[0]), "second");
    assert!(history[0].get_child("delay", "urn:xmpp:delay").is_some());
    assert_eq!(got.iter().filter(|e| e.name() == "presence").count(), 3);
    for c in [&mut alice, &mut bob] {
        assert_eq!(from(&c.stanza("presence").await), format!("{ROOM}/carol"));
    }

    // The subject: a participant may not change it here, a moderator may.
    bob.send(&format!(
        "<message to='{ROOM}' type='groupchat' id='s1'><subject>mine</subject></message>"
    ))
    .await;
    assert_eq!(refusal(&mut bob, "message").await, "forbidden");
    alice
        .send(&format!(
            "<message to='{ROOM}' type='groupchat'><subject>Agenda</subject></message>"
        ))
        .await;
    for c in [&mut alice, &mut bob, &mut carol] {
        let m = c.stanza("message").await;
        assert_eq!(
            m.get_child("subject", "jabber:client")
                .map(Element::text)
                .as_deref(),
            Some("Agenda")
        );
    }

    // A nick in use is refused; a free one is taken: 303 from the old, then the new.
    join(&mut carol, "alice", "").await;
    assert_eq!(refusal(&mut carol, "presence").await, "conflict");
    bob.send(&format!("<presence to='{ROOM}/robert'/>")).await;
    for c in [&mut alice, &mut carol, &mut bob] {
        let gone = c.stanza("presence").await;
        assert_eq!(
            (from(&gone), gone.attr("type")),
            (format!("{ROOM}/bob").as_str(), Some("unavailable"))
        );
        assert!(codes(&gone).contains(&"303".into()), "{gone}");
        let item = gone
            .get_child("x", USER)
            .unwrap()
            .get_child("item", USER)
            .unwrap();
        assert_eq!(item.attr("nick"), Some("robert"));
        let back = c.stanza("presence").await;
        assert_eq!(from(&back), format!("{ROOM}/robert"));
    }

    // A private message between occupants, through the room.
    bob.send(&format!(
        "<message to='{ROOM}/carol' type='chat'><body>psst</body></message>"
    ))
    .await;
    let pm = carol.stanza("message").await;
    assert_eq!(
        (from(&pm), body(&pm).as_str()),
        (format!("{ROOM}/robert").as_str(), "psst")
    );
    assert!(pm.get_child("x", USER).is_some());

    // Leaving: 110 to the one who leaves, unavailable to the others.
    bob.send(&format!(
        "<presence to='{ROOM}/robert' type='unavailable'/>"
    ))
    .await;
    let left = bob.stanza("presence").await;
    assert_eq!(left.attr("type"), Some("unavailable"));
    assert!(codes(&left).contains(&"110".into()));
    for c in [&mut alice, &mut carol] {
        let p = c.stanza("presence").await;
        assert_eq!(
            (from(&p), p.attr("type")),
            (format!("{ROOM}/robert").as_str(), Some("unavailable"))
        );
    }
    // Someone outside may not speak in the room.
    bob.send(&format!(
        "<message to='{ROOM}' type='groupchat' id='x'><body>from outside</body></message>"
    ))
    .await;
    assert_eq!(refusal(&mut bob, "message").await, "not-acceptable");
    // An occupant whose session ends leaves (its server sends the room its unavailable
    // presence, RFC 6121 §4.6.3).
    carol.send("</stream:stream>").await;
    drop(carol);
    let p = alice.stanza("presence").await;
    assert_eq!(
        (from(&p), p.attr("type")),
        (format!("{ROOM}/carol").as_str(), Some("unavailable"))
    );
}

#[tokio::test]
async fn persistent_rooms_keep_configuration_and_history_across_a_restart() {
    let mut server = TestServer::start().await;
    let (mut alice, mut bob, _carol) = users(&server).await;
    enter(&mut alice, "alice", "").await;
    let form = "<query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'>\
        <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
        <field var='muc#roomconfig_roomname'><value>The Council</value></field>\
        <field var='muc#roomconfig_persistentroom'><value>1</value></field>\
        <field var='muc#roomconfig_membersonly'><value>0</value></field>\
        <field var='muc#roomconfig_roomsecret'><value>sesame</value></field></x></query>";
    let r = iq(&mut alice, "cfg", ROOM, "set", form).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    // The password is asked of everyone but admins and owners.
    join(&mut bob, "bob", "").await;
    assert_eq!(refusal(&mut bob, "presence").await, "not-authorized");
    alice
        .send(&format!(
            "<message to='{ROOM}' type='groupchat'><body>kept</body></message>"
        ))
        .await;
    alice.stanza("message").await;
    drop((alice, bob));
    server.restart().await;

    let (mut alice, _) = Raw::login(&server, "alice", "pw", "a2").await;
    let info = iq(
        &mut alice,
        "i",
        ROOM,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
    .await
    .to_string();
    for f in [
        "muc_persistent",
        "muc_passwordprotected",
        "http://jabber.org/protocol/muc",
        "urn:xmpp:mam:2",
    ] {
        assert!(info.contains(&format!("var='{f}'")), "{info}");
    }
    assert!(info.contains("name='The Council'"), "{info}");
    let items = iq(
        &mut alice,
        "it",
        "conference.localhost",
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#items'/>",
    )
    .await
    .to_string();
    assert!(items.contains(&format!("jid='{ROOM}'")), "{items}");
    let (mut bob, _) = Raw::login(&server, "bob", "pw", "b2").await;
    let got = enter(&mut bob, "bob", "<password>sesame</password>").await;
    assert!(
        got.iter().any(|e| body(e) == "kept"),
        "history after the restart: {got:?}"
    );
    // The room's archive (XEP-0313 §5.1.2): the message from the room, with its id.
    bob.send(&format!(
        "<iq type='set' id='mam' to='{ROOM}'><query xmlns='urn:xmpp:mam:2' queryid='q1'/></iq>"
    ))
    .await;
    let mut results = Vec::new();
    let fin = loop {
        let e = bob.element().await;
        match e.name() {
            "message" if e.get_child("result", "urn:xmpp:mam:2").is_some() => results.push(e),
            "iq" if e.attr("id") == Some("mam") => break e,
            _ => {}
        }
    };
    assert_eq!(fin.attr("type"), Some("result"), "{fin}");
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(from(&results[0]), ROOM);
    let text = results[0].to_string();
    assert!(
        text.contains("<body>kept</body>") && text.contains("queryid='q1'"),
        "{text}"
    );
    // The service and the server's disco.
    let info = iq(
        &mut bob,
        "s",
        "conference.localhost",
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
    .await
    .to_string();
    assert!(
        info.contains("category='conference'") && info.contains(&format!("var='{MUC}'")),
        "{info}"
    );
    let server_items = iq(
        &mut bob,
        "h",
        "localhost",
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#items'/>",
    )
    .await
    .to_string();
    assert!(
        server_items.contains("jid='conference.localhost'"),
        "{server_items}"
    );
}

async fn admin(c: &mut Client, id: &str, kind: &str, items: &str) -> Element {
    iq(
        c,
        id,
        ROOM,
        kind,
        &format!("<query xmlns='http://jabber.org/protocol/muc#admin'>{items}</query>"),
    )
    .await
}

#[tokio::test]
async fn moderators_and_admins_kick_ban_silence_and_keep_member_lists() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, mut carol) = users(&server).await;
    server.add_user("dave", "pw").await;
    enter(&mut alice, "alice", "").await;
    instant(&mut alice).await;
    enter(&mut bob, "bob", "").await;
    alice.stanza("presence").await;
    enter(&mut carol, "carol", "").await;
    alice.stanza("presence").await;
    bob.stanza("presence").await;

    // A participant cannot kick.
    let r = admin(&mut bob, "k0", "set", "<item nick='carol' role='none'/>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"), "{r}");
    // The owner (a moderator) kicks carol: 307 to all, with 110 to her.
    let r = admin(
        &mut alice,
        "k1",
        "set",
        "<item nick='carol' role='none'><reason>enough</reason></item>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let gone = carol.stanza("presence").await;
    assert_eq!(gone.attr("type"), Some("unavailable"));
    let c = codes(&gone);
    assert!(
        c.contains(&"307".into()) && c.contains(&"110".into()),
        "{gone}"
    );
    assert!(
        gone.to_string().contains("<reason>enough</reason>"),
        "{gone}"
    );
    let seen = bob.stanza("presence").await;
    assert!(codes(&seen).contains(&"307".into()), "{seen}");

    // Voice: bob made a visitor may not speak; the presence says so.
    let r = admin(&mut alice, "v", "set", "<item nick='bob' role='visitor'/>").await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let p = bob.stanza("presence").await;
    let item = p
        .get_child("x", USER)
        .unwrap()
        .get_child("item", USER)
        .unwrap();
    assert_eq!(item.attr("role"), Some("visitor"), "{p}");
    bob.send(&format!(
        "<message to='{ROOM}' type='groupchat' id='m'><body>hi</body></message>"
    ))
    .await;
    assert_eq!(refusal(&mut bob, "message").await, "forbidden");

    // Ban: carol is an outcast and cannot come back.
    let r = admin(
        &mut alice,
        "b",
        "set",
        "<item jid='carol@localhost' affiliation='outcast'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    join(&mut carol, "carol", "").await;
    assert_eq!(refusal(&mut carol, "presence").await, "forbidden");

    // Members-only: dave becomes a member and enters; a stranger does not.
    let r = admin(
        &mut alice,
        "m",
        "set",
        "<item jid='dave@localhost' affiliation='member'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let cfg = "<query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'>\
        <field var='muc#roomconfig_membersonly'><value>1</value></field></x></query>";
    // Those who stay learn of the change (104) before the owner's answer; bob, not a
    // member, is sent away (322).
    alice
        .send(&format!("<iq type='set' id='mo' to='{ROOM}'>{cfg}</iq>"))
        .await;
    let mut told = false;
    loop {
        let e = alice.element().await;
        told |= e.name() == "message" && e.to_string().contains("code='104'");
        if e.name() == "iq" && e.attr("id") == Some("mo") {
            assert_eq!(e.attr("type"), Some("result"), "{e}");
            break;
        }
    }
    assert!(told, "no status 104");
    let gone = bob.stanza("presence").await;
    assert!(codes(&gone).contains(&"322".into()), "{gone}");
    server.add_user("eve", "pw").await;
    let (mut eve, _) = Raw::login(&server, "eve", "pw", "e").await;
    join(&mut eve, "eve", "").await;
    assert_eq!(refusal(&mut eve, "presence").await, "registration-required");
    let (mut dave, _) = Raw::login(&server, "dave", "pw", "d").await;
    enter(&mut dave, "dave", "").await;
    // The lists, to an admin; not to a participant.
    let members = admin(&mut alice, "l", "get", "<item affiliation='member'/>")
        .await
        .to_string();
    assert!(members.contains("jid='dave@localhost'"), "{members}");
    let outcasts = admin(&mut alice, "l2", "get", "<item affiliation='outcast'/>")
        .await
        .to_string();
    assert!(outcasts.contains("jid='carol@localhost'"), "{outcasts}");
    let r = admin(&mut dave, "l3", "get", "<item affiliation='member'/>").await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"), "{r}");
    // The last owner stays one.
    let r = admin(
        &mut alice,
        "o",
        "set",
        "<item jid='alice@localhost' affiliation='member'/>",
    )
    .await;
    assert_eq!(error_condition(&r).as_deref(), Some("conflict"), "{r}");
    let r = admin(
        &mut alice,
        "bad",
        "set",
        "<item nick='dave' role='emperor'/>",
    )
    .await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"), "{r}");
}

#[tokio::test]
async fn invitations_are_mediated_and_a_destroyed_room_sends_everyone_away() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, mut carol) = users(&server).await;
    enter(&mut alice, "alice", "").await;
    let cfg = "<query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'>\
        <field var='muc#roomconfig_membersonly'><value>1</value></field>\
        <field var='muc#roomconfig_persistentroom'><value>1</value></field></x></query>";
    assert_eq!(
        iq(&mut alice, "c", ROOM, "set", cfg).await.attr("type"),
        Some("result")
    );
    // The owner invites bob: he hears it from the room, and may now enter (a member).
    bob.send("<presence/>").await;
    alice
        .send(&format!(
            "<message to='{ROOM}'><x xmlns='{USER}'><invite to='bob@localhost'><reason>join us</reason></invite></x></message>"
        ))
        .await;
    let inv = bob.stanza("message").await;
    assert_eq!(from(&inv), ROOM);
    let invite = inv
        .get_child("x", USER)
        .unwrap()
        .get_child("invite", USER)
        .expect("an invite");
    assert_eq!(invite.attr("from"), Some("alice@localhost/a"));
    assert!(inv.to_string().contains("join us"), "{inv}");
    enter(&mut bob, "bob", "").await;
    alice.stanza("presence").await;
    // bob (a member, invitations not allowed to occupants) may not invite; carol declines
    // an invitation she never got, which goes to the one she names.
    bob.send(&format!(
        "<message to='{ROOM}' id='i2'><x xmlns='{USER}'><invite to='carol@localhost'/></x></message>"
    ))
    .await;
    assert_eq!(refusal(&mut bob, "message").await, "forbidden");
    carol
        .send(&format!(
            "<message to='{ROOM}'><x xmlns='{USER}'><decline to='alice@localhost/a'><reason>busy</reason></decline></x></message>"
        ))
        .await;
    let declined = alice.stanza("message").await;
    let d = declined
        .get_child("x", USER)
        .unwrap()
        .get_child("decline", USER)
        .expect("a decline");
    assert_eq!(d.attr("from"), Some("carol@localhost"));

    // Destroyed with an alternate venue: each occupant is told and is out.
    let destroy = "<query xmlns='http://jabber.org/protocol/muc#owner'>\
        <destroy jid='elsewhere@conference.localhost'><reason>moved</reason></destroy></query>";
    let r = iq(&mut bob, "d0", ROOM, "set", destroy).await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"), "{r}");
    let r = iq(&mut alice, "d1", ROOM, "set", destroy).await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let gone = bob.stanza("presence").await;
    assert_eq!(gone.attr("type"), Some("unavailable"));
    let notice = gone
        .get_child("x", USER)
        .unwrap()
        .get_child("destroy", USER)
        .expect("destroy");
    assert_eq!(notice.attr("jid"), Some("elsewhere@conference.localhost"));
    // It is gone: its disco says so, and entering makes a new (locked) room.
    let info = iq(
        &mut carol,
        "i",
        ROOM,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
    .await;
    assert_eq!(
        error_condition(&info).as_deref(),
        Some("item-not-found"),
        "{info}"
    );
}

#[tokio::test]
async fn occupant_ids_are_stable_per_account_and_self_pings_are_answered() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, mut carol) = users(&server).await;
    const OID: &str = "urn:xmpp:occupant-id:0";
    let oid = |e: &Element| {
        e.get_child("occupant-id", OID)
            .and_then(|o| o.attr("id"))
            .map(str::to_owned)
    };
    let got = enter(&mut alice, "alice", "").await;
    let alice_id = oid(&got[0]).expect("an occupant id on the self-presence");
    instant(&mut alice).await;
    // A forged id in what alice sends is replaced by hers.
    alice
        .send(&format!(
            "<message to='{ROOM}' type='groupchat'><body>x</body><occupant-id xmlns='{OID}' id='forged'/></message>"
        ))
        .await;
    let m = alice.stanza("message").await;
    let ids: Vec<_> = m.children().filter(|c| c.is("occupant-id", OID)).collect();
    assert_eq!(ids.len(), 1, "{m}");
    assert_eq!(oid(&m).as_deref(), Some(alice_id.as_str()));
    // Another nick, the same account: the same id; another account: another id.
    alice.send(&format!("<presence to='{ROOM}/alicia'/>")).await;
    alice.stanza("presence").await; // 303
    let back = alice.stanza("presence").await;
    assert_eq!(oid(&back).as_deref(), Some(alice_id.as_str()), "{back}");
    let got = enter(&mut bob, "bob", "").await;
    let bob_self = got
        .iter()
        .find(|e| from(e) == format!("{ROOM}/bob"))
        .unwrap();
    assert_ne!(oid(bob_self), Some(alice_id.clone()));
    // XEP-0410: the room answers a ping to one's own occupant JID; outside, not-acceptable.
    let r = iq(
        &mut bob,
        "p1",
        &format!("{ROOM}/bob"),
        "get",
        "<ping xmlns='urn:xmpp:ping'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let r = iq(
        &mut carol,
        "p2",
        &format!("{ROOM}/carol"),
        "get",
        "<ping xmlns='urn:xmpp:ping'/>",
    )
    .await;
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("not-acceptable"),
        "{r}"
    );
    let info = iq(
        &mut bob,
        "i",
        ROOM,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
    .await
    .to_string();
    for f in [OID, "http://jabber.org/protocol/muc#self-ping-optimization"] {
        assert!(info.contains(&format!("var='{f}'")), "{info}");
    }
}

#[tokio::test]
async fn occupants_see_who_is_in_and_are_told_when_the_server_stops() {
    let mut server = TestServer::start().await;
    let (mut alice, mut bob, mut carol) = users(&server).await;
    enter(&mut alice, "alice", "").await;
    instant(&mut alice).await;
    enter(&mut bob, "bob", "").await;
    let items = |e: Element| -> Vec<String> {
        let mut v: Vec<String> = e
            .get_child("query", "http://jabber.org/protocol/disco#items")
            .unwrap()
            .children()
            .filter_map(|i| i.attr("jid").map(str::to_owned))
            .collect();
        v.sort();
        v
    };
    let q = "<query xmlns='http://jabber.org/protocol/disco#items'/>";
    let inside = items(iq(&mut bob, "in", ROOM, "get", q).await);
    assert_eq!(inside, [format!("{ROOM}/alice"), format!("{ROOM}/bob")]);
    assert!(items(iq(&mut carol, "out", ROOM, "get", q).await).is_empty());
    // The server stops: each occupant hears 332 before its stream ends.
    let stop = tokio::spawn(async move {
        server.stop().await;
    });
    for c in [&mut alice, &mut bob] {
        // (alice has bob's entering presence to read first.)
        let p = loop {
            let p = c.stanza("presence").await;
            if p.attr("type") == Some("unavailable") {
                break p;
            }
        };
        assert!(codes(&p).contains(&"332".into()), "{p}");
    }
    stop.await.unwrap();
}

#[tokio::test]
async fn rooms_per_user_count_temporary_rooms_too() {
    let server = TestServer::start_with(|c| {
        c.modules.insert(
            "muc".into(),
            openspimed_module_api::toml::from_str("max_rooms_per_user = 1").unwrap(),
        );
    })
    .await;
    let (mut alice, _bob, _carol) = users(&server).await;
    enter(&mut alice, "alice", "").await;
    instant(&mut alice).await;
    alice
        .send("<presence to='second@conference.localhost/alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        .await;
    assert_eq!(refusal(&mut alice, "presence").await, "not-allowed");
}

#[tokio::test]
async fn iqs_between_occupants_are_relayed_through_the_room() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, mut carol) = users(&server).await;
    enter(&mut alice, "alice", "").await;
    instant(&mut alice).await;
    enter(&mut bob, "bob", "").await;
    // A vCard request goes to the occupant's account, which its server answers.
    let set = iq(
        &mut bob,
        "own",
        "bob@localhost",
        "set",
        "<vCard xmlns='vcard-temp'><FN>Bob</FN></vCard>",
    )
    .await;
    assert_eq!(set.attr("type"), Some("result"), "{set}");
    let got = iq(
        &mut alice,
        "vc",
        &format!("{ROOM}/bob"),
        "get",
        "<vCard xmlns='vcard-temp'/>",
    )
    .await;
    assert_eq!(
        (got.attr("type"), from(&got)),
        (Some("result"), format!("{ROOM}/bob").as_str()),
        "{got}"
    );
    assert!(got.to_string().contains("<FN>Bob</FN>"), "{got}");
    // Anything else goes to the occupant's session, from the asker's room JID, and its
    // answer comes back with the asker's own id.
    alice
        .send(&format!(
            "<iq type='get' id='ver' to='{ROOM}/bob'><query xmlns='jabber:iq:version'/></iq>"
        ))
        .await;
    let relayed = bob.stanza("iq").await;
    assert_eq!(from(&relayed), format!("{ROOM}/alice"));
    assert_ne!(relayed.attr("id"), Some("ver"));
    bob.send(&format!(
        "<iq type='result' id='{}' to='{ROOM}/alice'><query xmlns='jabber:iq:version'><name>raw</name></query></iq>",
        relayed.attr("id").unwrap()
    ))
    .await;
    let answer = loop {
        let e = alice.stanza("iq").await;
        if e.attr("id") == Some("ver") {
            break e;
        }
    };
    assert_eq!(
        (answer.attr("type"), from(&answer)),
        (Some("result"), format!("{ROOM}/bob").as_str())
    );
    assert!(answer.to_string().contains("<name>raw</name>"), "{answer}");
    // From outside the room, or to a nick nobody has: refused.
    let r = iq(
        &mut carol,
        "x",
        &format!("{ROOM}/bob"),
        "get",
        "<query xmlns='jabber:iq:version'/>",
    )
    .await;
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("not-acceptable"),
        "{r}"
    );
    let r = iq(
        &mut alice,
        "y",
        &format!("{ROOM}/nobody"),
        "get",
        "<query xmlns='jabber:iq:version'/>",
    )
    .await;
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("item-not-found"),
        "{r}"
    );
}

/// A stanza the room sends that comes straight back to it (here: bounced by an occupant
/// who blocked the room) does not wait for the room that is sending it.
#[tokio::test]
async fn a_room_whose_stanzas_bounce_back_to_it_goes_on_working() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, _carol) = users(&server).await;
    enter(&mut alice, "alice", "").await;
    instant(&mut alice).await;
    enter(&mut bob, "bob", "").await;
    alice.stanza("presence").await;
    let r = iq(
        &mut bob,
        "blk",
        "bob@localhost",
        "set",
        &format!("<block xmlns='urn:xmpp:blocking'><item jid='{ROOM}'/></block>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    for n in 0..3 {
        alice
            .send(&format!(
                "<message to='{ROOM}' type='groupchat'><body>b{n}</body></message>"
            ))
            .await;
        assert_eq!(body(&alice.stanza("message").await), format!("b{n}"));
    }
    let info = iq(
        &mut alice,
        "i",
        ROOM,
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
    .await;
    assert_eq!(info.attr("type"), Some("result"), "{info}");
}
