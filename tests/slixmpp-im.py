"""slixmpp's XEP-0313 and XEP-0280 plugins against openspimed (tests/slixmpp-interop.sh):
alice@localhost (resources "one" and "two") and bob@localhost, password "pw", c2s on
127.0.0.1:PORT.

  mam      alice sends bob five messages; bob receives each with a stanza id of his
           archive; alice pages through her archive with xep_0313.iterate (RSM, two a
           page) and finds the five bodies in order; bob's xep_0313.retrieve with with_jid finds
           them too.
  carbons  alice/two enables carbons with xep_0280; bob writes to alice/one and alice/one
           answers: alice/two sees a carbon_received and a carbon_sent with those bodies.
  muc      alice creates a room with xep_0045 (join, instant configuration), bob joins;
           each sees the other in the roster xep_0045 keeps, a group message reaches both,
           bob leaves and alice's plugin sees him go; the room's archive (xep_0313 at the
           room) holds the message.

usage: python3 slixmpp-im.py PORT
Exits 0 and prints "ok <test>" per test when everything held.
"""
import asyncio, ssl, sys
import slixmpp

PORT = int(sys.argv[1])
TIMEOUT = 15


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid):
        super().__init__(jid, "pw")
        # c2s TLS is the server's self-signed certificate; what is tested here is MAM
        # and carbons.
        self.ssl_context = ssl.create_default_context()
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        for p in ["xep_0030", "xep_0045", "xep_0059", "xep_0297", "xep_0313", "xep_0280", "xep_0359"]:
            self.register_plugin(p)
        self.online = asyncio.get_event_loop().create_future()
        self.inbox = asyncio.Queue()
        self.carbons = asyncio.Queue()
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("message", lambda m: self.inbox.put_nowait(m))
        self.room_messages = asyncio.Queue()
        self.add_event_handler("groupchat_message", lambda m: self.room_messages.put_nowait(m))
        self.add_event_handler("carbon_received", lambda m: self.carbons.put_nowait(("received", m)))
        self.add_event_handler("carbon_sent", lambda m: self.carbons.put_nowait(("sent", m)))

    async def start(self, _):
        self.send_presence()
        await self.get_roster()
        self.online.set_result(True)


async def connect(jid):
    c = Client(jid)
    c.connect(host="127.0.0.1", port=PORT)
    await asyncio.wait_for(c.online, TIMEOUT)
    return c


def check(cond, what):
    if not cond:
        raise AssertionError(what)


async def mam():
    alice, bob = await connect("alice@localhost/one"), await connect("bob@localhost/b")
    bodies = [f"mam {i}" for i in range(5)]
    for b in bodies:
        alice.send_message(mto="bob@localhost/b", mbody=b, mtype="chat")
        got = await asyncio.wait_for(bob.inbox.get(), TIMEOUT)
        check(got["body"] == b, f"bob got {got['body']!r}, not {b!r}")
        ids = [s for s in got.xml.findall("{urn:xmpp:sid:0}stanza-id") if s.get("by") == "bob@localhost"]
        check(len(ids) == 1, f"one stanza id of bob's archive on {got}")
    found = []
    # slixmpp's iterate pages with RSM (two a page here) and yields each result.
    async for r in alice.plugin["xep_0313"].iterate(with_jid=slixmpp.JID("bob@localhost"), rsm={"max": 2}):
        found.append(r["mam_result"]["forwarded"]["stanza"]["body"])
    check(found == bodies, f"alice's archive: {found}")
    iq = await bob.plugin["xep_0313"].retrieve(with_jid=slixmpp.JID("alice@localhost"), rsm={"max": 10})
    got = [r["mam_result"]["forwarded"]["stanza"]["body"] for r in iq["mam"]["results"]]
    check(got == bodies, f"bob's archive: {got}")
    for c in (alice, bob):
        await c.disconnect()
    print("ok mam")


async def carbons():
    one, two = await connect("alice@localhost/one"), await connect("alice@localhost/two")
    bob = await connect("bob@localhost/b")
    await two.plugin["xep_0280"].enable()
    bob.send_message(mto="alice@localhost/one", mbody="to one", mtype="chat")
    await asyncio.wait_for(one.inbox.get(), TIMEOUT)
    way, m = await asyncio.wait_for(two.carbons.get(), TIMEOUT)
    check(way == "received" and m["carbon_received"]["body"] == "to one", f"{way} {m}")
    one.send_message(mto="bob@localhost", mbody="from one", mtype="chat")
    await asyncio.wait_for(bob.inbox.get(), TIMEOUT)
    way, m = await asyncio.wait_for(two.carbons.get(), TIMEOUT)
    check(way == "sent" and m["carbon_sent"]["body"] == "from one", f"{way} {m}")
    for c in (one, two, bob):
        await c.disconnect()
    print("ok carbons")


async def muc():
    room = slixmpp.JID("slix@conference.localhost")
    alice, bob = await connect("alice@localhost/one"), await connect("bob@localhost/b")
    muc_a, muc_b = alice.plugin["xep_0045"], bob.plugin["xep_0045"]
    await asyncio.wait_for(muc_a.join_muc_wait(room, "alice", maxstanzas=0), TIMEOUT)
    # The owner reads the configuration form and submits it as it is (XEP-0045 §10.1.3).
    form = await muc_a.get_room_config(room)
    await muc_a.set_room_config(room, form)
    await asyncio.wait_for(muc_b.join_muc_wait(room, "bob", maxstanzas=0), TIMEOUT)
    for _ in range(50):
        if "bob" in muc_a.get_roster(room):
            break
        await asyncio.sleep(0.1)
    check(set(muc_a.get_roster(room)) == {"alice", "bob"}, f"alice's roster {muc_a.get_roster(room)}")
    check(set(muc_b.get_roster(room)) == {"alice", "bob"}, f"bob's roster {muc_b.get_roster(room)}")
    alice.send_message(mto=room, mbody="hello room", mtype="groupchat")
    for c in (alice, bob):
        m = await asyncio.wait_for(c.room_messages.get(), TIMEOUT)
        check(m["body"] == "hello room" and m["mucnick"] == "alice", f"{m}")
    muc_b.leave_muc(room, "bob")
    for _ in range(50):
        if "bob" not in muc_a.get_roster(room):
            break
        await asyncio.sleep(0.1)
    check("bob" not in muc_a.get_roster(room), "bob left")
    iq = await alice.plugin["xep_0313"].retrieve(jid=room, rsm={"max": 10})
    got = [r["mam_result"]["forwarded"]["stanza"]["body"] for r in iq["mam"]["results"]]
    check(got == ["hello room"], f"the room's archive: {got}")
    for c in (alice, bob):
        await c.disconnect()
    print("ok muc")


async def main():
    await mam()
    await carbons()
    await muc()


asyncio.run(main())
