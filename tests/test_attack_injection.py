"""Issue C1: stanza injection and ``from`` forgery through namespace names, against real servers.

A namespace name written back unescaped closed its quotes: ``urn:a'/><message from='boss@...'>`` became
a second message with any sender. The attacker now gets ``invalid-namespace`` (TCP) or a terminated
request (BOSH); the victim gets nothing forged, and everyone else carries on. Across two twistd nodes the
same holds, and a hostile presence can no longer forge ``<bound/>`` entries in the cluster's frames.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.clients.bosh import BoshClient
from tests.clients.raw import HEADER, STREAMS, Closed, RawClient, q
from tests.support.cluster import DOMAIN, ClusterFixture, cuttable_cluster
from tests.support.server import start_server
from tests.support.slix import ca_file
from tests.support.waiting import wait_until
from tests.test_cluster import ClusterTestCase

PASSWORD = "pencil"
MESSAGE = "{jabber:client}message"
IQ = "{jabber:client}iq"
VICTIM = "v@example.com"

#: The issue's stanza: the forged <message/> would sit inside the outer one.
NESTED = ("<message to='v@example.com'><x xmlns=\"urn:a'/&gt;&lt;message&#9;from='boss@example.com'&gt;"
          "&lt;body&gt;forged&lt;/body&gt;&lt;/message&gt;&lt;x&#9;xmlns='z\"/></message>")
#: The same, closing the outer message first: a separate top-level <message from='boss@example.com'/>.
TOP_LEVEL = ("<message to='v@example.com'><x xmlns=\"urn:a'&gt;&lt;/x&gt;&lt;/message&gt;&lt;message&#9;"
             "from='boss@example.com'&gt;&lt;body&gt;forged&lt;/body&gt;&lt;/message&gt;&lt;message&#9;"
             "to='v@example.com'&gt;&lt;x&#9;b='\">child</x></message>")
#: A presence whose namespace name, in a directory entry, ends the attacker's <bound/> and adds one for the
#: victim's full JID, newer than everything (``stamp``; ``at`` for the wall-clock order), so that the
#: victim's node ends the victim's session with <conflict/>. In a single-entry frame it breaks the link.
BOUND = ("<presence><x xmlns=\"urn:a'/&gt;&lt;/presence&gt;&lt;/bound&gt;&lt;bound&#9;jid='v@example.com/v'&#9;"
         "stamp='999999999'&#9;at='9e9'&#9;prio='0'&#9;interested='0'&gt;&lt;presence&#9;xmlns='jabber:client'&gt;"
         "&lt;x&#9;xmlns='z\"/></presence>")


def ping(to: str, id: str) -> str:
    return f"<iq type='get' id='{id}' to='{to}'><ping xmlns='urn:xmpp:ping'/></iq>"


def outcome(client: RawClient, domain: str) -> str | None:
    """After an attack: the stream error condition it earned, or None when the server answered a ping
    sent after it (the attack went through)."""
    client.send(ping(domain, "after-attack"))
    try:
        while True:
            element = client.next()
            if element.tag == q(STREAMS, "error"):
                return next(child.tag.split("}")[1] for child in element if not child.tag.endswith("}text"))
            if element.tag == IQ and element.get("id") == "after-attack":
                return None
    except Closed:
        return "closed without a stream error"
    except ET.ParseError:
        return "the server wrote broken XML"


def forged(elements: list[ET.Element]) -> list[str]:
    """Anything, at any depth, claiming to come from boss@ or carrying the forged body."""
    return [ET.tostring(top, encoding="unicode") for top in elements
            if any(e.get("from", "").startswith("boss@") or e.text == "forged" for e in top.iter())]


def until_barrier(victim: RawClient, body: str) -> list[ET.Element]:
    """Everything the victim gets up to the message carrying ``body`` (sent after the attack)."""
    seen = []
    while True:
        element = victim.next()
        seen.append(element)
        if element.tag == MESSAGE and element.findtext("{jabber:client}body") == body:
            return seen


class SingleServerTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.running = await start_server(self, components=("c2s", "bosh"), domains=("example.com",))
        for user in ("v", "m", "alice"):
            await self.running.add_user(f"{user}@example.com", PASSWORD)
        self.ca = ca_file(self.running)

    def client(self, user: str, resource: str) -> RawClient:
        client = RawClient(self.running.ports["c2s"]["plain"], domain="example.com", ca_file=self.ca)
        self.addCleanup(client.close)
        client.login(user, PASSWORD, resource)
        return client

    def available_victim(self) -> RawClient:
        """The victim, available (a message to its bare JID reaches it) once the ping is answered."""
        victim = self.client("v", "v")
        victim.send("<presence/>" + ping("example.com", "ready"))
        victim.until(IQ)
        return victim

    def barrier(self, victim: RawClient) -> tuple[list[ET.Element], ET.Element]:
        """A well-behaved client writes to the victim and pings the server after the attack."""
        alice = self.client("alice", "a")
        alice.send(f"<message to='{VICTIM}/v' type='chat'><body>barrier</body></message>"
                   + ping("example.com", "alice"))
        return until_barrier(victim, "barrier"), alice.until(IQ)

    def tcp_attack(self, payload: str) -> tuple[str | None, list[ET.Element], ET.Element]:
        victim = self.available_victim()
        attacker = self.client("m", "m")
        attacker.send(payload)
        condition = outcome(attacker, "example.com")
        seen, pong = self.barrier(victim)
        return condition, seen, pong

    def check(self, result: tuple[str | None, list[ET.Element], ET.Element], expected: str) -> None:
        condition, seen, pong = result
        self.assertEqual(forged(seen), [])
        self.assertEqual(condition, expected)
        self.assertEqual((pong.get("type"), pong.get("id")), ("result", "alice"))

    async def test_tcp_nested(self) -> None:
        self.check(await deferToThread(self.tcp_attack, NESTED), "invalid-namespace")

    async def test_tcp_top_level(self) -> None:
        self.check(await deferToThread(self.tcp_attack, TOP_LEVEL), "invalid-namespace")

    def header_attack(self) -> str | None:
        client = RawClient(self.running.ports["c2s"]["plain"], domain="example.com")
        self.addCleanup(client.close)
        evil = "<stream:stream xmlns:evil=\"urn:a'/&gt;\" "
        header = HEADER.format(to="example.com").replace("<stream:stream ", evil)
        client.send(header + "</stream:stream>")  # without a stream error, the stream just ends
        return client.error_condition()

    async def test_tcp_stream_header(self) -> None:
        """A prefix declared in the stream header itself: the error comes after a header of ours."""
        self.assertEqual(await deferToThread(self.header_attack), "invalid-namespace")

    def bosh_attack(self, payload: str) -> tuple[str | None, list[ET.Element], ET.Element]:
        victim = self.available_victim()
        url = f"http://127.0.0.1:{self.running.ports['bosh']['plain']}/http-bind"
        web = BoshClient("example.com")
        web.login([url], "m", PASSWORD, "web")
        answer = web.post(url, payload=payload)
        condition = answer.get("condition") if answer.get("type") == "terminate" else None
        seen, pong = self.barrier(victim)
        web.rid -= 1  # the refused request never reached the session: its rid is still the next one
        web.post(url, "type='terminate'")
        return condition, seen, pong

    async def test_bosh_nested(self) -> None:
        self.check(await deferToThread(self.bosh_attack, NESTED), "bad-request")

    async def test_bosh_top_level(self) -> None:
        self.check(await deferToThread(self.bosh_attack, TOP_LEVEL), "bad-request")


class CrossNodeTests(ClusterTestCase):
    """Attacker on t1 (as bob), victim on t2 (as carol): nothing forged crosses, and after the link between
    them is cut and healed (t1 sends its whole directory in <sync/>) the victim is still bound on both."""

    def make(self) -> ClusterFixture:
        cluster, self.proxy = cuttable_cluster(self, 2, ("t1.example.com", "t2.example.com"))
        return cluster

    def reach(self, sender: RawClient, victim: RawClient, full_jid: str) -> None:
        """Until ``sender``'s node routes to ``full_jid`` (a message to an unknown full JID bounces before
        the ping after it is answered), then the victim reads the probe."""
        for attempt in range(200):
            sender.send(f"<message type='normal' id='probe{attempt}' to='{full_jid}'><body>probe</body></message>"
                        + ping(DOMAIN, f"probe-ping{attempt}"))
            bounced = False
            while True:
                element = sender.next()
                bounced = bounced or (element.tag == MESSAGE and element.get("id") == f"probe{attempt}")
                if element.tag == IQ and element.get("id") == f"probe-ping{attempt}":
                    break
            if not bounced:
                victim.until(MESSAGE)
                return
            time.sleep(0.05)  # the directory entry is on its way: retry (the sync is the probe getting through)
        raise AssertionError(f"{full_jid} never became reachable")

    def still_bound(self, alice: RawClient, victim: RawClient, name: str) -> tuple:
        """After an attack: what the victim got up to alice's message through t1, and its own ping on t2."""
        alice.send(f"<message to='{self.victim_jid}' type='chat'><body>after {name}</body></message>")
        seen = until_barrier(victim, f"after {name}")
        victim.send(ping(DOMAIN, f"victim-{name}"))
        pong = victim.until(IQ)
        return forged(seen), (pong.get("type"), pong.get("id"))

    def attack(self, name: str, payload: str) -> str | None:
        attacker = self.client("t1.example.com", "bob", f"m-{name}", priority=None)
        # To the full JID: a bare one needs the victim's presence replicated too (the probe only shows its bind).
        attacker.send(payload.replace(f"{VICTIM}/v", self.victim_jid).replace(f"to='{VICTIM}'",
                                                                               f"to='{self.victim_jid}'"))
        return outcome(attacker, DOMAIN)

    def attacks(self) -> dict:
        self.victim_jid = f"carol@{DOMAIN}/v"
        self.victim = self.client("t2.example.com", "carol", "v")
        self.alice = self.client("t1.example.com", "alice", "a")
        self.reach(self.alice, self.victim, self.victim_jid)
        results = {}
        for name, payload in (("nested", NESTED), ("top-level", TOP_LEVEL)):
            results[name] = (self.attack(name, payload), *self.still_bound(self.alice, self.victim, name))
        results["bound"] = (self.attack("bound", BOUND),)  # stays in t1's directory unless refused
        return results

    def synced(self, before: int) -> None:
        """t1 sent its whole directory again over the new link (then the barrier follows it)."""
        wait_until(lambda: self.cluster.log("t1.example.com").count("directory sent to t2.example.com") > before,
                   timeout=30)

    async def test_injection_refused_at_ingress_across_nodes(self) -> None:
        results = await deferToThread(self.attacks)
        syncs = self.cluster.log("t1.example.com").count("directory sent to t2.example.com")
        await self.proxy.cut()
        self.proxy.heal()
        await deferToThread(self.synced, syncs)
        results["bound"] += await deferToThread(self.still_bound, self.alice, self.victim, "bound")
        for name in ("nested", "top-level", "bound"):
            self.assertEqual(results[name], ("invalid-namespace", [], ("result", f"victim-{name}")), name)
        self.assertNotIn("control frame dropped", self.cluster.log("t2.example.com"))
