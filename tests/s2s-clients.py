"""One slixmpp client on each side of a federation test (tests/s2s-prosody.sh,
tests/s2s-ejabberd.sh): olga@openspimed.example on 127.0.0.2, peter@PEER.example on
127.0.0.1, password "pw"; each sends the other a message and must receive the other's.

usage: python3 s2s-clients.py PEER [CAFILE]
  PEER    the other server's name: its domain is PEER.example
  CAFILE  verify both client connections against it (without it they are not verified:
          c2s TLS is not what these tests are about, and a dialback round's self-signed
          certificates have no common CA)
"""
import asyncio, ssl, sys
import slixmpp

PEER = sys.argv[1]
CA = sys.argv[2] if len(sys.argv) > 2 else None

class Peer(slixmpp.ClientXMPP):
    def __init__(self, jid, host):
        super().__init__(jid, "pw")
        self.host = host
        self.got = asyncio.get_event_loop().create_future()
        self.ready = asyncio.get_event_loop().create_future()
        if CA:
            self.ssl_context = ssl.create_default_context(cafile=CA)
        else:
            self.ssl_context = ssl.create_default_context()
            self.ssl_context.check_hostname = False
            self.ssl_context.verify_mode = ssl.CERT_NONE
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("message", self.on_message)

    async def start(self, _):
        self.send_presence()
        self.ready.set_result(True)

    def on_message(self, msg):
        if not self.got.done():
            self.got.set_result(msg)

async def main():
    olga = Peer("olga@openspimed.example/t", "127.0.0.2")
    peter = Peer(f"peter@{PEER}.example/t", "127.0.0.1")
    for c in (olga, peter):
        c.connect(c.host, 5222)
    await asyncio.wait_for(asyncio.gather(olga.ready, peter.ready), 30)
    olga.send_message(mto=f"peter@{PEER}.example/t", mbody="from openspimed", mtype="chat")
    m = await asyncio.wait_for(peter.got, 60)
    assert m["type"] != "error" and m["body"] == "from openspimed", m
    print(f"{PEER} received:", m["from"], m["body"])
    peter.send_message(mto="olga@openspimed.example/t", mbody=f"from {PEER}", mtype="chat")
    m = await asyncio.wait_for(olga.got, 60)
    assert m["type"] != "error" and m["body"] == f"from {PEER}", m
    print("openspimed received:", m["from"], m["body"])
    for c in (olga, peter):
        c.disconnect()

asyncio.run(main())
