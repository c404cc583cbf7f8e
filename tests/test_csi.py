"""XEP-0352 Client State Indication against a real node: raw clients over TCP, WebSocket and BOSH, slixmpp's
xep_0352 plugin, a two-node cluster, and hostile clients."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests import test_cluster
from tests.clients.bosh import BoshClient
from tests.clients.raw import BIND, SASL, RawClient, q
from tests.clients.ws import WSClient
from tests.support.attack import MAX_RTT, under_attack
from tests.support.cluster import DOMAIN
from tests.support.server import start_server
from tests.support.slix import ca_file
from tests.test_message_rules import Client, eventually, make_server, parse
from xmppcluster.modules.csi import HOLD, LATEST, URGENT, classify, classify_serialized, is_inactive
from xmppcluster.storage import open_storage
from xmppcluster.storage.offline import OfflineStore
from xmppcluster.storage.roster import RosterItem, RosterStore

CSI = "urn:xmpp:csi:0"
CHATSTATES = "http://jabber.org/protocol/chatstates"
PASSWORD = "csi-secret"
INACTIVE = f"<inactive xmlns='{CSI}'/>"
ACTIVE = f"<active xmlns='{CSI}'/>"
PRESENCE = "{jabber:client}presence"
MESSAGE = "{jabber:client}message"
IQ = "{jabber:client}iq"


def ping(ident: str) -> str:
    return f"<iq xmlns='jabber:client' type='get' id='{ident}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"


def status(n: int) -> str:
    return f"<presence xmlns='jabber:client'><status>s{n}</status></presence>"


def chat_state(to: str, state: str) -> str:
    return f"<message xmlns='jabber:client' to='{to}' type='chat'><{state} xmlns='{CHATSTATES}'/></message>"


def describe(element: ET.Element) -> tuple:
    """What a test compares of a stanza: its kind, and the status, body or chat state it carries."""
    if element.tag == PRESENCE:
        return ("presence", element.get("from"), element.get("type"), element.findtext("{jabber:client}status"))
    if element.tag == MESSAGE:
        body = element.findtext("{jabber:client}body")
        if body is not None:
            return ("message", element.get("from"), body)
        states = [child.tag.split("}")[1] for child in element if child.tag.startswith(f"{{{CHATSTATES}}}")]
        return ("message", element.get("from"), *states, *(child.tag for child in element if not states))
    return (element.tag.split("}")[1], element.get("id"), element.get("type"))


class ClassifyTests(SynchronousTestCase):
    """What is urgent, held in order, or coalesced (the decisions of docs/im.rst)."""

    CASES = [
        ("<message type='chat' from='a@x/r'><body>hi</body></message>", URGENT),
        ("<message from='a@x/r'><subject>s</subject></message>", URGENT),
        ("<message type='error' from='a@x/r'/>", URGENT),
        ("<message type='chat' from='a@x/r'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
         LATEST),
        ("<message type='chat' from='a@x/r'><thread>t</thread><paused xmlns='http://jabber.org/protocol/chatstates'/>"
         "<no-store xmlns='urn:xmpp:hints'/></message>", LATEST),
        ("<message type='chat' from='a@x/r'><active xmlns='http://jabber.org/protocol/chatstates'/>"
         "<store xmlns='urn:xmpp:hints'/></message>", URGENT),
        ("<message type='chat' from='a@x/r'><received xmlns='urn:xmpp:receipts' id='1'/></message>", HOLD),
        ("<message type='chat' from='a@x/r'><active xmlns='http://jabber.org/protocol/chatstates'/>"
         "<markable xmlns='urn:xmpp:chat-markers:0'/></message>", HOLD),
        ("<message type='headline' from='a@x'><body>news</body></message>", HOLD),
        ("<message from='a@x'><event xmlns='http://jabber.org/protocol/pubsub#event'/></message>", HOLD),
        ("<message from='a@x'><x xmlns='jabber:x:conference' jid='room@muc'/></message>", URGENT),
        ("<message from='room@muc'><x xmlns='http://jabber.org/protocol/muc#user'><invite from='a@x'/></x>"
         "</message>", URGENT),
        ("<message from='a@x/r'><propose xmlns='urn:xmpp:jingle-message:0' id='c'/></message>", URGENT),
        ("<message from='a@x/r'><encryption xmlns='urn:xmpp:eme:0' namespace='x'/></message>", URGENT),
        ("<message from='me@x'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>"
         "<message xmlns='jabber:client'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
         "</forwarded></sent></message>", URGENT),
        ("<message from='me@x'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>"
         "<message xmlns='jabber:client'><body>b</body></message></forwarded></received></message>", URGENT),
        ("<message from='me@x'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>"
         "<message xmlns='jabber:client'><gone xmlns='http://jabber.org/protocol/chatstates'/></message>"
         "</forwarded></received></message>", HOLD),
        ("<presence from='a@x/r'/>", LATEST),
        ("<presence from='a@x/r' type='unavailable'/>", LATEST),
        ("<presence from='a@x' type='subscribe'/>", URGENT),
        ("<presence from='a@x' type='unsubscribed'/>", URGENT),
        ("<presence from='a@x/r' type='error'/>", URGENT),
        ("<iq type='result' id='1'/>", URGENT),
        ("<iq type='set' id='2'><query xmlns='jabber:iq:roster'/></iq>", URGENT),
    ]

    def test_verdicts(self) -> None:
        for xml, expected in self.CASES:
            self.assertEqual(classify(parse(xml))[0], expected, xml)
            serialized = xml.replace(" ", " xmlns='jabber:client' ", 1).encode()
            self.assertEqual(classify_serialized(serialized)[0], expected, serialized)

    def test_coalescing_keys_are_per_sender_full_jid_and_kind(self) -> None:
        first = classify(parse("<presence from='a@x/r'/>"))[1]
        self.assertEqual(first, classify(parse("<presence from='a@x/r' type='unavailable'/>"))[1])
        self.assertNotEqual(first, classify(parse("<presence from='a@x/other'/>"))[1])
        state = classify(parse("<message from='a@x/r'><gone xmlns='http://jabber.org/protocol/chatstates'/>"
                               "</message>"))[1]
        self.assertNotEqual(first, state)


class EndingSessionTests(SynchronousTestCase):
    """What an inactive session held is routed again when its stream ends, even in the middle of a flush
    (stream core on fake transports: bob/phone inactive, bob/laptop available)."""

    def setUp(self) -> None:
        self.server = make_server(modules=("urn:xmpp:csi:0",))
        self.alice = Client(self.server, "alice", "pc")
        self.laptop = Client(self.server, "bob", "laptop")
        self.laptop.presence(0)
        self.phone = Client(self.server, "bob", "phone")
        self.phone.presence(1)
        self.phone.send(INACTIVE)
        for n in range(3):
            self.alice.send(f"<message to='bob@localhost/phone' type='chat' id='r{n}'>"
                            f"<received xmlns='urn:xmpp:receipts' id='m{n}'/></message>")
        self.assertEqual(self.phone.take("message"), [])
        self.laptop.take()

    def test_held_messages_go_to_another_resource_after_the_transport_s_own(self) -> None:
        self.phone.close()
        self.assertEqual(self.laptop.take("message"), [])  # one reactor turn later
        self.server.clock.advance(0)
        self.assertEqual([m["id"] for m in self.laptop.take("message")], ["r0", "r1", "r2"])

    def test_a_stream_that_ends_during_a_flush_loses_nothing(self) -> None:
        transport, stream = self.phone.transport, self.phone.stream
        written = transport.sent.append

        def send_then_fail(element) -> None:  # the client stops reading after one stanza
            written(element)
            if element.name == "message":
                stream.fail("resource-constraint")

        transport.send = send_then_fail
        self.phone.send(ACTIVE)
        self.assertEqual([m["id"] for m in self.phone.take("message")], ["r0"])
        self.assertEqual([m["id"] for m in self.laptop.take("message")], ["r1", "r2"])


# -- clients on each transport (blocking; run in threads) ---------------------------------------------------


class Tcp:
    def __init__(self, running, user: str, resource: str) -> None:
        self.client = RawClient(running.ports["c2s"]["plain"], ca_file=ca_file(running), timeout=15)
        self.jid = self.client.login(user, PASSWORD, resource)

    def send(self, *texts: str) -> None:
        """Each element in a message of its own (RFC 7395 over WebSocket)."""
        for text in texts:
            self.client.send(text)

    def next(self) -> ET.Element:
        return self.client.next()

    def close(self) -> None:
        self.client.close()


class Ws(Tcp):
    def __init__(self, running, user: str, resource: str) -> None:
        self.client = WSClient(running.ports["ws2s"]["plain"], timeout=15)
        self.jid = self.client.login("localhost", user, PASSWORD, resource)

    def next(self) -> ET.Element:
        element = self.client.next()
        if element is None:
            raise ConnectionError("closed")
        return element


class Bosh:
    def __init__(self, running, user: str, resource: str) -> None:
        self.url = f"http://127.0.0.1:{running.ports['bosh']['plain']}/http-bind/"
        self.client = BoshClient("localhost")
        self.jid = self.client.login([self.url], user, PASSWORD, resource)
        self.pending: list[ET.Element] = []

    def send(self, *texts: str) -> None:
        self.pending += list(self.client.post(self.url, payload="".join(texts)))

    def next(self) -> ET.Element:
        while not self.pending:
            self.pending += list(self.client.post(self.url))
        return self.pending.pop(0)

    def close(self) -> None:
        try:
            self.client.post(self.url, "type='terminate'")
        except OSError:
            pass


def until(client, predicate) -> list[ET.Element]:
    """Read until ``predicate(element)``; everything read, that element last."""
    seen = []
    while True:
        element = client.next()
        seen.append(element)
        if predicate(element):
            return seen


def online(client, *others: str) -> None:
    """Initial presence; wait for its echo and for the presence of each of ``others`` (full JIDs)."""
    client.send("<presence xmlns='jabber:client'/>")
    waiting = {client.jid, *others}
    while waiting:
        element = client.next()
        if element.tag == PRESENCE:
            waiting.discard(element.get("from"))


def answered(client, ident: str) -> list[ET.Element]:
    """What arrived up to the answer to IQ ``ident`` (not included)."""
    return until(client, lambda e: e.tag == IQ and e.get("id") == ident)[:-1]


class CSITests(TestCase):
    timeout = 90

    async def start(self, components: tuple[str, ...] = ("c2s",), config: str = "") -> None:
        self.running = await start_server(self, config, components=components)
        for user in ("alice", "bob"):
            await self.running.add_user(f"{user}@localhost", PASSWORD)
        store = RosterStore(self.running.server.storage.db)
        for owner, contact in (("alice", "bob@localhost"), ("bob", "alice@localhost")):
            await store.modify(owner, "localhost", contact,
                               lambda item, pending, c=contact: (RosterItem(c, subscription="both"), None))
        self.csi = self.running.server.modules["urn:xmpp:csi:0"]

    def held(self, jid: str) -> int | None:
        """How many stanzas the session ``jid`` holds (None: it is active)."""
        bare, _, resource = jid.partition("/")
        session = self.running.server.sessions.get(bare, resource)
        return len(session.data["csi"]) if session is not None and is_inactive(session) else None

    async def pair(self, transport: type = Tcp) -> tuple[Tcp, Tcp]:
        """alice (TCP) and bob (``transport``), both available, subscribed both ways, each having seen
        the other's presence; bob inactive."""
        def connect():
            alice = Tcp(self.running, "alice", "a")
            online(alice)
            bob = transport(self.running, "bob", "b")
            online(bob, alice.jid)
            until(alice, lambda e: e.tag == PRESENCE and e.get("from") == bob.jid)
            bob.send(INACTIVE, ping("inactive"))
            self.assertEqual(answered(bob, "inactive"), [])
            return alice, bob

        alice, bob = await deferToThread(connect)
        self.addCleanup(alice.close)
        self.addCleanup(bob.close)
        self.assertEqual(self.held(bob.jid), 0)
        return alice, bob

    async def chatter(self, alice, bob) -> None:
        """alice changes her presence five times and sends bob three chat states; bob holds two stanzas."""
        def send():
            for n in range(1, 6):
                alice.send(status(n))
            until(alice, lambda e: e.tag == PRESENCE and e.findtext("{jabber:client}status") == "s5")
            for state in ("composing", "paused", "composing"):
                alice.send(chat_state(bob.jid, state))
            alice.send(ping("sent"))
            answered(alice, "sent")

        await deferToThread(send)
        self.assertEqual(self.held(bob.jid), 2)

    async def held_then_flushed_by_a_message(self, transport: type) -> None:
        alice, bob = await self.pair(transport)
        await self.chatter(alice, bob)

        def message():
            alice.send(f"<message xmlns='jabber:client' to='{bob.jid}' type='chat'><body>hello</body></message>")
            return [describe(e) for e in until(bob, lambda e: e.tag == MESSAGE and e.find("{jabber:client}body")
                                               is not None)]

        self.assertEqual(await deferToThread(message), [
            ("presence", alice.jid, None, "s5"),
            ("message", alice.jid, "composing"),
            ("message", alice.jid, "hello"),
        ])
        self.assertEqual(self.held(bob.jid), 0)  # still inactive, nothing held

    async def test_stream_feature_after_authentication_only(self) -> None:
        await self.start()
        await self.running.add_user("carol@localhost", PASSWORD)

        def features():
            client = RawClient(self.running.ports["c2s"]["plain"], ca_file=ca_file(self.running))
            try:
                first = client.open()
                tls = client.starttls()
                self.assertEqual(client.scram("carol", PASSWORD).tag, q(SASL, "success"))
                bound = client.open()
                return [f.find(q(CSI, "csi")) is not None for f in (first, tls, bound)], \
                    bound.find(q(BIND, "bind")) is not None
            finally:
                client.close()

        self.assertEqual(await deferToThread(features), ([False, False, True], True))

    async def test_switched_off_for_one_vhost(self) -> None:
        """``vhost-man/<domain>/sm-plugins``: no feature there, and ``<inactive/>`` is not a stanza."""
        running = await start_server(self, "vhost-man/b.example/sm-plugins[s]=-urn:xmpp:csi:0\n",
                                     domains=("a.example", "b.example"))
        for domain in ("a.example", "b.example"):
            await running.add_user(f"user@{domain}", PASSWORD)

        def indicate(domain: str) -> tuple:
            client = RawClient(running.ports["c2s"]["plain"], domain=domain, ca_file=ca_file(running))
            try:
                client.open()
                client.starttls()
                client.scram("user", PASSWORD)
                offered = client.open().find(q(CSI, "csi")) is not None
                client.send(f"<iq type='set' id='b'><bind xmlns='{BIND}'/></iq>")
                client.until(IQ)
                client.send(INACTIVE + ping("p").replace("localhost", domain))
                answer = client.until(IQ).get("id") if domain == "a.example" else client.error_condition()
                return offered, answer
            finally:
                client.close()

        self.assertEqual(await deferToThread(indicate, "a.example"), (True, "p"))
        self.assertEqual(await deferToThread(indicate, "b.example"), (False, "unsupported-stanza-type"))

    async def test_tcp_presence_coalesced_chat_states_held_flushed_by_a_message(self) -> None:
        await self.start()
        await self.held_then_flushed_by_a_message(Tcp)

    async def test_websocket(self) -> None:
        await self.start(("c2s", "ws2s"))
        await self.held_then_flushed_by_a_message(Ws)

    async def test_bosh(self) -> None:
        await self.start(("c2s", "bosh"))
        await self.held_then_flushed_by_a_message(Bosh)

    async def test_active_flushes_before_the_next_answer(self) -> None:
        await self.start()
        alice, bob = await self.pair()
        await self.chatter(alice, bob)

        def active():
            bob.send(ACTIVE, ping("after"))
            return [describe(e) for e in until(bob, lambda e: e.tag == IQ and e.get("id") == "after")]

        self.assertEqual(await deferToThread(active), [
            ("presence", alice.jid, None, "s5"), ("message", alice.jid, "composing"), ("iq", "after", "result")])
        self.assertIsNone(self.held(bob.jid))

        def live():  # active again: each presence arrives as it is sent
            alice.send(status(6))
            return describe(until(bob, lambda e: e.tag == PRESENCE)[-1])

        self.assertEqual(await deferToThread(live), ("presence", alice.jid, None, "s6"))

    async def test_an_iq_and_a_subscription_request_flush_too(self) -> None:
        await self.start()
        await self.running.add_user("carol@localhost", PASSWORD)
        alice, bob = await self.pair()
        await self.chatter(alice, bob)

        def iq():  # an IQ result for bob is urgent: what was held comes first
            bob.send(ping("own"))
            return [describe(e) for e in until(bob, lambda e: e.tag == IQ and e.get("id") == "own")]

        self.assertEqual(await deferToThread(iq), [
            ("presence", alice.jid, None, "s5"), ("message", alice.jid, "composing"), ("iq", "own", "result")])

        def subscribe():
            carol = Tcp(self.running, "carol", "c")
            try:
                alice.send(status(7))
                until(alice, lambda e: e.tag == PRESENCE and e.findtext("{jabber:client}status") == "s7")
                carol.send("<presence xmlns='jabber:client' to='bob@localhost' type='subscribe'/>")
                return [describe(e) for e in until(bob, lambda e: e.get("type") == "subscribe")]
            finally:
                carol.close()

        self.assertEqual(await deferToThread(subscribe), [
            ("presence", alice.jid, None, "s7"), ("presence", "carol@localhost", "subscribe", None)])

    async def test_cap_flushes_everything_held(self) -> None:
        await self.start(config="--csi-max-held=3\n")
        self.assertEqual(self.csi.max_held, 3)
        alice, bob = await self.pair()

        def headlines(numbers):
            for n in numbers:
                alice.send(f"<message xmlns='jabber:client' to='{bob.jid}' type='headline'><body>h{n}</body></message>")
            alice.send(ping(f"h{numbers[-1]}"))
            answered(alice, f"h{numbers[-1]}")

        await deferToThread(headlines, [1, 2, 3])
        self.assertEqual(self.held(bob.jid), 3)
        await deferToThread(headlines, [4])
        self.assertEqual(self.held(bob.jid), 0)
        received = await deferToThread(lambda: [describe(bob.next()) for _ in range(4)])
        self.assertEqual(received, [("message", alice.jid, f"h{n}") for n in range(1, 5)])

    async def test_a_session_that_ends_while_holding_loses_no_message(self) -> None:
        await self.start()
        alice, bob = await self.pair()

        def receipt():
            alice.send(f"<message xmlns='jabber:client' to='{bob.jid}' type='chat' id='r1'>"
                       f"<received xmlns='urn:xmpp:receipts' id='m1'/></message>")
            alice.send(status(2))
            until(alice, lambda e: e.tag == PRESENCE and e.findtext("{jabber:client}status") == "s2")

        await deferToThread(receipt)
        self.assertEqual(self.held(bob.jid), 2)
        bob.client.raw.close()  # gone without a word
        store = OfflineStore(self.running.server.storage.db)
        await eventually(lambda: store.count("bob", "localhost"))
        self.assertEqual(await store.count("bob", "localhost"), 1)  # the receipt; the presence is not stored

        def again():
            bob = Tcp(self.running, "bob", "b2")
            try:
                bob.send("<presence xmlns='jabber:client'/>")
                message = until(bob, lambda e: e.tag == MESSAGE)[-1]
                return message.get("id"), message.find("{urn:xmpp:receipts}received").get("id")
            finally:
                bob.close()

        self.assertEqual(await deferToThread(again), ("r1", "m1"))


class SlixmppTests(TestCase):
    """slixmpp's xep_0352 plugin sees the feature and its <inactive/> holds presence until a message."""

    timeout = 60

    async def test_slixmpp_inactive_holds_presence_until_a_chat_message(self) -> None:
        import json
        import sys

        from twisted.internet.utils import getProcessOutputAndValue

        from tests.support.slix import ROOT

        running = await start_server(self)
        for user in ("alice", "bob"):
            await running.add_user(f"{user}@localhost", PASSWORD)
        spec = {"port": running.ports["c2s"]["plain"], "ca": ca_file(running), "password": PASSWORD}
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "tests.clients.slix_csi", json.dumps(spec)], env=dict(os.environ), path=ROOT)
        self.assertEqual(code, 0, err.decode(errors="replace")[-2000:])
        result = json.loads(out.decode().strip().splitlines()[-1])
        self.assertTrue(result["csi_enabled"])
        # Five directed presences from alice, then a chat message: bob (inactive) sees the last presence only,
        # before the message.
        self.assertEqual(result["received"], [["presence", "s5"], ["message", "hello"]])


class AttackTests(TestCase):
    timeout = 90

    async def test_indications_before_bind_are_refused(self) -> None:
        running = await start_server(self)
        await running.add_user("mallory@localhost", PASSWORD)

        def before(stage: str) -> str | None:
            client = RawClient(running.ports["c2s"]["plain"], ca_file=ca_file(running))
            try:
                client.open()
                client.starttls()
                if stage == "bind":
                    client.scram("mallory", PASSWORD)
                    client.open()
                client.send(INACTIVE)
                return client.error_condition()
            finally:
                client.close()

        self.assertEqual(await deferToThread(before, "auth"), "not-authorized")
        self.assertEqual(await deferToThread(before, "bind"), "not-authorized")

    async def test_unknown_csi_element_is_an_unsupported_stanza_type(self) -> None:
        running = await start_server(self)
        await running.add_user("mallory@localhost", PASSWORD)

        def unknown() -> str | None:
            client = RawClient(running.ports["c2s"]["plain"], ca_file=ca_file(running))
            try:
                client.login("mallory", PASSWORD, "m")
                client.send(f"<sleepy xmlns='{CSI}'/>")
                return client.error_condition()
            finally:
                client.close()

        self.assertEqual(await deferToThread(unknown), "unsupported-stanza-type")

    async def test_flood_of_indications_leaves_the_node_responsive(self) -> None:
        running = await start_server(self)
        await running.add_user("mallory@localhost", PASSWORD)
        toggles = 20000

        def flood() -> tuple:
            client = RawClient(running.ports["c2s"]["plain"], ca_file=ca_file(running), timeout=60)
            try:
                client.login("mallory", PASSWORD, "m")
                client.send("<presence xmlns='jabber:client'/>")
                chunk = (INACTIVE + ACTIVE) * 500
                for _ in range(toggles // 500):
                    client.send(chunk)
                client.send(INACTIVE + ping("end"))
                return tuple(describe(e) for e in answered(client, "end"))
            finally:
                client.close()

        seen, rtts = await under_attack(running, flood)
        # Nothing answers an indication; the own presence echo is all the flooder got, and it stays connected.
        self.assertEqual(seen, (("presence", "mallory@localhost/m", None, None),))
        self.assertLess(max(rtts), MAX_RTT * 4, rtts)
        self.assertLess(sorted(rtts)[len(rtts) // 2], MAX_RTT, rtts)
        session = running.server.sessions.get("mallory@localhost", "m")
        self.assertTrue(session is None or is_inactive(session))



class ClusterTests(test_cluster.ClusterTestCase):
    """Presence from a contact on the other node arrives serialized over the cluster link: held all the same."""

    async def setUp(self) -> None:
        await super().setUp()
        storage = await open_storage(self.cluster.db_uri)
        try:
            store = RosterStore(storage.db)
            for owner, contact in (("alice", f"bob@{DOMAIN}"), ("bob", f"alice@{DOMAIN}")):
                await store.modify(owner, DOMAIN, contact,
                                   lambda item, pending, c=contact: (RosterItem(c, subscription="both"), None))
        finally:
            await storage.close()

    async def test_presence_from_the_other_node_is_held_and_flushed(self) -> None:
        def scenario():
            alice = self.client("t2.example.com", "alice", "a", priority=None)
            bob = self.client("t1.example.com", "bob", "b", priority=None)
            self.cluster.wait_replicated(1, 1)
            alice.jid, bob.jid = f"alice@{DOMAIN}/a", f"bob@{DOMAIN}/b"
            online(alice)
            online(bob, alice.jid)
            until(alice, lambda e: e.tag == PRESENCE and e.get("from") == bob.jid)
            bob.send(INACTIVE + ping("inactive").replace("to='localhost'", f"to='{DOMAIN}'"))
            answered(bob, "inactive")  # a presence sent before the indication may still be on its way: read it
            for n in range(1, 6):
                alice.send(status(n))
            until(alice, lambda e: e.tag == PRESENCE and e.findtext("{jabber:client}status") == "s5")
            alice.send(chat_state(bob.jid, "composing"))
            alice.send(chat_state(bob.jid, "paused"))
            alice.send(f"<message xmlns='jabber:client' to='{bob.jid}' type='chat'><body>across</body></message>")
            # alice's stanzas only: bob's own presence echo may come late across the nodes (held as well).
            return [describe(e) for e in until(bob, lambda e: e.tag == MESSAGE
                                               and e.find("{jabber:client}body") is not None)
                    if e.get("from") == alice.jid], alice.jid

        received, alice = await deferToThread(scenario)
        self.assertEqual(received, [("presence", alice, None, "s5"), ("message", alice, "paused"),
                                    ("message", alice, "across")])
