"""Hostile clients against a real node: floods during SASL, clients that never read, blocking logins, bad types.

Each attack runs while a well-behaved client pings the server: its round trip must stay under 250 ms, and
the test process's peak RSS (the node runs in it) must grow less than the bound documented in
docs/security.rst.
"""

from __future__ import annotations

import ssl
import threading
import xml.etree.ElementTree as ET

from OpenSSL import SSL
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.clients.bosh import BoshClient
from tests.clients.raw import SASL, Closed, RawClient, q
from tests.clients.ws import FRAMING, WSClient
from tests.support.attack import MAX_RSS_GROWTH, MAX_RTT, MiB, Pinger, pinged_attack
from tests.support.server import start_server
from tests.support.slix import ca_file
from xmppcluster.auth import mechanisms
from xmppcluster.streams import core, tcp

PASSWORD = "pencil"
CLIENT = "{jabber:client}"
class AttackCase(TestCase):
    timeout = 120
    extra_config = ""

    components: tuple[str, ...] = ("c2s",)

    async def setUp(self) -> None:
        self.running = await start_server(self, self.extra_config, components=self.components)
        for user in ("alice", "bob", "carol"):
            await self.running.add_user(f"{user}@localhost", PASSWORD)
        self.port = self.running.ports["c2s"]["plain"]
        self.ca = ca_file(self.running)

    def client(self, *, direct_tls: bool = False) -> RawClient:
        port = self.running.ports["c2s"]["ssl" if direct_tls else "plain"]
        client = RawClient(port, ca_file=self.ca, timeout=30, direct_tls=direct_tls)
        self.addCleanup(client.close)
        return client

    def offline(self, expected: int) -> list[str]:
        """Bob's stored messages, as a new session gets them."""
        again = self.client()
        again.login("bob", PASSWORD, "again")
        again.sock.settimeout(5)
        again.send("<presence/>")
        stored: list[str] = []
        try:
            while len(stored) < expected:
                element = again.next()
                if element.tag == f"{CLIENT}message":
                    stored.append(element.get("id"))
        except TimeoutError:
            pass
        return stored

    def unbound(self, reason: str) -> threading.Event:
        """Set when a session ends with ``reason`` (a barrier the node itself reports)."""
        event = threading.Event()

        def hook(session, why: str) -> None:
            if reason in why:
                event.set()

        self.running.server.hooks.on("session/unbound", hook)
        return event

    async def under_attack(self, attack) -> tuple[object, list[float], int]:
        """Run ``attack()`` in a thread while carol pings; (its result, carol's round trips, peak RSS growth)."""
        pinger = await deferToThread(Pinger, self.port, self.ca, "carol", PASSWORD)
        return await pinged_attack(pinger, attack, self.id())

    def assertBehaved(self, rtts: list[float], growth: int) -> None:
        self.assertLess(max(rtts), MAX_RTT, f"ping round trips under attack: {sorted(rtts)[-5:]}")
        self.assertLess(growth, MAX_RSS_GROWTH, f"peak RSS grew by {growth / MiB:.0f} MiB")


class SASLFloodTests(AttackCase):
    """H1: what a client sends while its SASL step waits (the failure delay) is not read into memory."""

    async def setUp(self) -> None:
        await super().setUp()
        throttle = self.running.server.throttle  # a failure is answered after 4 s (start_server sets 0.05 s)
        throttle.base_delay = throttle.max_delay = 4.0

    def flood(self) -> tuple[str | None, int]:
        client = self.client(direct_tls=True)
        client.open()
        client.send(f"<auth xmlns='{SASL}' mechanism='X-NO-SUCH'/>")  # invalid-mechanism: delayed 4 s
        chunk = b"<a/>" * 16384  # 64 KiB, ~16k elements
        sent = 0
        try:
            while sent < 8 * MiB:
                client.send(chunk)
                sent += len(chunk)
        except Exception:  # the server closed while we were still sending
            pass
        return client.error_condition(), sent

    async def test_flood_during_failure_delay(self) -> None:
        (condition, sent), rtts, growth = await self.under_attack(self.flood)
        # The flood is refused: at once when it came with the <auth/> (policy-violation), else when the
        # failure is answered and reading resumes (<a/> is not a SASL element).
        self.assertIn(condition, ("policy-violation", "not-authorized"))
        self.assertBehaved(rtts, growth)


class SlowReaderTests(AttackCase):
    """H2: a client that does not read its output cannot make the node buffer without bound."""

    extra_config = ("--client-rate-limit=0\n--offline-max-messages=5000\n"
                    "bosh/max-session-waiting-packets[I]=100000\n")
    components = ("c2s", "ws2s", "bosh")

    def stalled(self, user: str) -> threading.Event:
        """Set when the stream of ``user`` stops taking input because its client does not read."""
        event = threading.Event()
        original = core.ClientStream.hold_input

        def hold_input(stream, reason: str) -> None:
            if reason == "output" and stream.user == user:
                event.set()
            original(stream, reason)

        self.patch(core.ClientStream, "hold_input", hold_input)
        return event

    def pipeline(self, gets: int) -> tuple[int, list[str]]:
        stalled = self.stalled("alice")
        client = self.client()
        client.login("alice", PASSWORD, "attacker")
        vcard = "<vCard xmlns='vcard-temp'><DESC>" + "x" * 16000 + "</DESC></vCard>"
        client.send(f"<iq type='set' id='set'>{vcard}</iq>")
        self.assertEqual(client.until(f"{CLIENT}iq").get("type"), "result")
        request = b"".join(b"<iq type='get' id='v%d'><vCard xmlns='vcard-temp'/></iq>" % n for n in range(gets))
        sent = 0
        try:
            while sent < len(request):  # as much as the node takes, reading nothing
                sent += client.tls.send(request[sent:sent + 16384])
        except (SSL.WantWriteError, SSL.WantReadError):
            pass  # our socket is full: the node stopped reading us
        if not stalled.wait(60):
            raise AssertionError("the node kept reading a client that reads nothing")
        # Nothing was lost: once the client reads, the answers come, in order.
        ids = [client.until(f"{CLIENT}iq").get("id") for _ in range(200)]
        return sent, ids

    async def test_pipelined_vcard_gets_never_read(self) -> None:
        (sent, ids), rtts, growth = await self.under_attack(lambda: self.pipeline(10_000))
        self.assertEqual(ids, [f"v{n}" for n in range(200)])
        self.assertBehaved(rtts, growth)

    def flood_bob(self, count: int) -> list[str]:
        """Alice sends ``count`` 4 KB messages to bob/victim; the ids bounced to her, once all are routed."""
        flooder = self.client()
        flooder.login("alice", PASSWORD, "flooder")
        body = "y" * 4000
        for n in range(count):
            flooder.send(f"<message to='bob@localhost/victim' type='chat' id='m{n}'><body>{body}</body></message>")
        flooder.send("<iq type='get' id='barrier' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        errors = []
        while (element := flooder.next()).get("id") != "barrier":  # all routed once the ping is answered
            if element.tag == f"{CLIENT}message" and element.get("type") == "error":
                errors.append(element.get("id"))
        return errors

    def flood_victim(self, count: int, websocket: bool = False) -> tuple[str | None, list[str], list[str]]:
        """Alice floods bob, who reads nothing until his stream is closed; then he reads what he was sent."""
        closed = self.unbound("resource-constraint")
        if websocket:
            victim = self.ws_client()
            victim.login("localhost", "bob", PASSWORD, "victim")
        else:
            victim = self.client()
            victim.login("bob", PASSWORD, "victim")
        errors = self.flood_bob(count)
        if not closed.wait(30):
            raise AssertionError("the stream of a client that never reads was not closed")
        received, condition = [], None
        for element in self.read_all(victim):
            if element.tag == f"{CLIENT}message":
                received.append(element.get("id"))
            elif element.tag == "{http://etherx.jabber.org/streams}error":
                condition = element[0].tag.split("}")[1]
        return condition, received, errors

    def read_all(self, client: RawClient | WSClient) -> list[ET.Element]:
        """Everything the server sent, up to the end of the stream."""
        elements: list[ET.Element] = []
        try:
            if isinstance(client, WSClient):
                while (element := client.next()) is not None and element.tag != q(FRAMING, "close"):
                    elements.append(element)
            else:
                while not client.stream_closed:
                    client._pump()
                    elements += client.pending
                    client.pending.clear()
        except (OSError, ConnectionError, Closed):
            pass
        return elements

    def ws_client(self) -> WSClient:
        context = ssl.create_default_context(cafile=self.ca)
        client = WSClient(self.running.ports["ws2s"]["ssl"], tls=context, server_name="localhost", timeout=30)
        self.addCleanup(client.close)
        return client


    async def test_flooded_victim_never_reads(self) -> None:
        await self.flooded_victim(websocket=False)

    async def test_flooded_websocket_victim_never_reads(self) -> None:
        await self.flooded_victim(websocket=True)

    async def flooded_victim(self, websocket: bool) -> None:
        count = 2000  # 8 MB of messages for a client that reads none of them
        (condition, received, errors), rtts, growth = await self.under_attack(
            lambda: self.flood_victim(count, websocket))
        self.assertEqual(condition, "resource-constraint")
        await self.running.server.modules["msgoffline"].drain()
        stored = await deferToThread(self.offline, count - len(received) - len(errors))
        # Nothing the server accepted vanished: read by the victim, kept offline, or bounced.
        self.assertEqual(sorted(received + stored + errors, key=lambda i: int(i[1:])),
                         [f"m{n}" for n in range(count)])
        self.assertGreater(len(stored), 0)
        self.assertBehaved(rtts, growth)


    def flood_bosh_victim(self, count: int) -> tuple[list[str], list[str], int]:
        """Bob's BOSH session stops polling while alice floods it; then he polls again."""
        url = f"https://localhost:{self.running.ports['bosh']['ssl']}/http-bind"
        victim = BoshClient("localhost", ssl.create_default_context(cafile=self.ca))
        victim.login([url], "bob", PASSWORD, "victim")  # and no request waits from now on
        errors = self.flood_bob(count)
        queued = self.running.server.sessions.get("bob@localhost", "victim").stream.transport.queued_bytes
        received: list[str] = []
        while len(received) + len(errors) < count:
            answer = victim.post(url)
            if not len(answer):
                break
            received += [e.get("id") for e in answer if e.tag == f"{CLIENT}message"]
        victim.post(url, "type='terminate'")
        return received, errors, queued

    async def test_bosh_session_that_stops_polling(self) -> None:
        count = 400  # 1.6 MB of messages
        (received, errors, queued), rtts, growth = await self.under_attack(lambda: self.flood_bosh_victim(count))
        self.assertLessEqual(queued, 1024 * 1024)  # --client-output-limit
        self.assertGreater(len(errors), 0)
        self.assertEqual(sorted(received + errors, key=lambda i: int(i[1:])), [f"m{n}" for n in range(count)])
        self.assertBehaved(rtts, growth)


class TLSCloseTests(AttackCase):
    """A stream the server ends over TLS is closed at once (close_notify), not left to the drop timer."""

    async def test_stream_error_over_tls_closes_the_connection(self) -> None:
        self.patch(tcp, "CLOSE_TIMEOUT", 120.0)  # only a prompt close can beat the client's timeout below

        def provoke() -> tuple[str | None, bool]:
            client = self.client(direct_tls=True)
            client.open()
            client.sock.settimeout(5)
            client.send(b"<not well formed")
            client.send(b"</>")
            try:
                return client.error_condition(), True
            except (TimeoutError, SSL.WantReadError):  # still open 5 s after the error
                return None, False

        condition, closed = await deferToThread(provoke)
        self.assertTrue(closed, "the connection stayed open after the stream error")
        self.assertEqual(condition, "not-well-formed")


class OfflineToReadingClientTests(AttackCase):
    """Offline delivery waits for a client that reads slower than the node writes: it is never closed for it."""

    extra_config = "--client-rate-limit=0\n--client-output-limit=65536\n--offline-max-messages=5000\n"

    def store_and_fetch(self, count: int) -> list[str]:
        sender = self.client()
        sender.login("alice", PASSWORD, "sender")
        body = "z" * 8000  # 100 per batch: twelve times the output limit in each batch
        for n in range(count):
            sender.send(f"<message to='bob@localhost' type='chat' id='o{n}'><body>{body}</body></message>")
        sender.send("<iq type='get' id='barrier' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        while sender.next().get("id") != "barrier":
            pass
        return self.offline(count)

    async def test_offline_batches_wait_for_the_reader(self) -> None:
        count = 300
        closed = self.unbound("resource-constraint")
        received = await deferToThread(self.store_and_fetch, count)
        self.assertFalse(closed.is_set(), "a reading client was closed for its offline messages")
        self.assertEqual(received, [f"o{n}" for n in range(count)])


class PlainOffReactorTests(AttackCase):
    """M3: PLAIN's PBKDF2 runs in a thread; the reactor answers others meanwhile."""

    async def test_slow_plain_login_does_not_block_pings(self) -> None:
        self.running.server.storage.accounts.scram_iterations = 2_000_000
        await self.running.add_user("slow@localhost", PASSWORD)
        started, finished = threading.Event(), threading.Event()
        original = mechanisms.verify_password

        def watched(credentials, password):
            started.set()
            try:
                return original(credentials, password)
            finally:
                finished.set()

        self.patch(mechanisms, "verify_password", watched)
        pinger = await deferToThread(Pinger, self.port, self.ca, "carol", PASSWORD)

        def scenario() -> tuple[bool, float, ET.Element]:
            client = self.client(direct_tls=True)
            client.open()
            token = "AHNsb3cAcGVuY2ls"  # base64 of "\0slow\0pencil"
            client.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
            if not started.wait(30):
                raise AssertionError("PLAIN never checked the password")
            rtt = pinger.ping()
            answered_during = not finished.is_set()
            return answered_during, rtt, client.next()

        try:
            answered_during, rtt, result = await deferToThread(scenario)
        finally:
            pinger.client.close()
        self.assertTrue(answered_during, "the ping waited for PLAIN's PBKDF2")
        self.assertLess(rtt, MAX_RTT)
        self.assertEqual(result.tag, q(SASL, "success"))


class StanzaTypeTests(AttackCase):
    """M5: unknown stanza types get <bad-request/>; no hook name is built from the wire."""

    def login_available(self, resource: str) -> RawClient:
        client = self.client()
        client.login("alice", PASSWORD, resource)
        client.send("<presence/>")
        return client

    def scenario(self) -> tuple[list[ET.Element], list[ET.Element]]:
        one = self.login_available("one")
        two = self.login_available("two")
        # Both see each other's available presence once both are online.
        one.send("<presence><status>ready</status></presence>")
        while two.until(f"{CLIENT}presence").find(f"{CLIENT}status") is None:
            pass
        answers = []
        for n, kind in enumerate(("initial", "broadcast", "bare", "outgoing", "x/../y")):
            one.send(f"<presence type='{kind}' id='p{n}'/>")
        one.send("<iq type='initial' id='iq1' to='alice@localhost/two'><query xmlns='jabber:iq:version'/></iq>")
        one.send("<iq type='get' id='barrier' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        while True:
            element = one.next()
            if element.get("id") == "barrier":
                break
            answers.append(element)
        # A last available presence: it reaches "two" after anything the bad ones could have caused.
        one.send("<presence><status>last</status></presence>")
        seen = []
        while True:
            element = two.next()
            seen.append(element)
            status = element.find(f"{CLIENT}status")
            if status is not None and status.text == "last":
                break
        return answers, seen

    async def test_unknown_types_get_bad_request(self) -> None:
        answers, seen = await deferToThread(self.scenario)
        # Nothing was broadcast or delivered to the other resource because of them.
        self.assertEqual([e.get("type") for e in seen if e.get("type")], [])
        errors = {(a.tag, a.get("id")): a for a in answers if a.get("type") == "error"}
        expected = {(f"{CLIENT}presence", f"p{n}") for n in range(5)} | {(f"{CLIENT}iq", "iq1")}
        self.assertEqual(set(errors), expected)
        for error in errors.values():
            condition = error.find(f"{CLIENT}error")[0].tag
            self.assertEqual(condition, "{urn:ietf:params:xml:ns:xmpp-stanzas}bad-request")
        self.assertEqual(self.flushLoggedErrors(), [])
