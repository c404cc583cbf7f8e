"""c2s over real sockets: channel binding, and hostile input refused while others chat undisturbed."""

from __future__ import annotations

import select
import xml.etree.ElementTree as ET

from twisted.internet.defer import gatherResults
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.clients.raw import HEADER, SASL, RawClient, mechanisms, q
from tests.support.server import start_server
from tests.support.slix import ca_file

PASSWORD = "pencil"


class ChannelBindingTests(TestCase):
    timeout = 30

    async def setUp(self) -> None:
        self.running = await start_server(self)
        await self.running.add_user("alice@localhost", PASSWORD)
        self.ca = ca_file(self.running)

    def client(self, *, direct_tls: bool = False) -> RawClient:
        port = self.running.ports["c2s"]["ssl" if direct_tls else "plain"]
        client = RawClient(port, direct_tls=direct_tls, ca_file=self.ca)
        self.addCleanup(client.close)
        return client

    def scram_plus(self, binding: str, *, direct_tls: bool = False, data: bytes | None = None) -> ET.Element:
        client = self.client(direct_tls=direct_tls)
        features = client.open()
        if not direct_tls:
            features = client.starttls()
        self.assertIn("SCRAM-SHA-256-PLUS", mechanisms(features))
        advertised = [cb.get("type") for cb in features.iter("{urn:xmpp:sasl-cb:0}channel-binding")]
        self.assertIn(binding, advertised)
        return client.scram("alice", PASSWORD, "SCRAM-SHA-256-PLUS", binding=binding, binding_data=data)

    async def test_tls_exporter(self) -> None:
        result = await deferToThread(self.scram_plus, "tls-exporter")
        self.assertEqual(result.tag, q(SASL, "success"))

    async def test_tls_server_end_point(self) -> None:
        result = await deferToThread(self.scram_plus, "tls-server-end-point")
        self.assertEqual(result.tag, q(SASL, "success"))

    async def test_direct_tls_exporter(self) -> None:
        result = await deferToThread(self.scram_plus, "tls-exporter", direct_tls=True)
        self.assertEqual(result.tag, q(SASL, "success"))

    async def test_wrong_binding_fails(self) -> None:
        result = await deferToThread(self.scram_plus, "tls-exporter", data=b"\0" * 32)
        self.assertEqual(result.tag, q(SASL, "failure"))
        self.assertEqual(result[0].tag, q(SASL, "not-authorized"))

    async def test_nothing_offered_before_required_starttls(self) -> None:
        client = RawClient(self.running.ports["c2s"]["plain"])
        self.addCleanup(client.close)
        features = await deferToThread(client.open)
        self.assertEqual(mechanisms(features), [])  # TLS required: nothing offered before STARTTLS


BILLION_LAUGHS = (
    "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>"
    + "".join(f"<!ENTITY lol{i} '{('&lol' + (str(i - 1) if i > 1 else '') + ';') * 10}'>" for i in range(1, 10))
    + "]><lolz>&lol9;</lolz>"
)


class HostileInputTests(TestCase):
    """Each attack gets its stream error while alice and bob log in and chat on the same server."""

    timeout = 60

    async def setUp(self) -> None:
        self.running = await start_server(self, "--unauthenticated-timeout=2\n")
        for user in ("alice", "bob"):
            await self.running.add_user(f"{user}@localhost", PASSWORD)
        self.port = self.running.ports["c2s"]["plain"]
        self.ca = ca_file(self.running)

    def chat(self) -> str:
        alice = RawClient(self.port, ca_file=self.ca)
        bob = RawClient(self.port, ca_file=self.ca)
        try:
            alice.login("alice", PASSWORD, "a")
            bob.login("bob", PASSWORD, "b")
            alice.send("<message to='bob@localhost/b' type='chat'><body>still here</body></message>")
            message = bob.until("{jabber:client}message")
            return message.find("{jabber:client}body").text
        finally:
            alice.close()
            bob.close()

    def attack(self, payload: str | bytes, *, after_header: bool = True) -> str | None:
        client = RawClient(self.port)
        try:
            if after_header:
                client.open()
            client.send(payload)
            return client.error_condition()
        finally:
            client.close()

    async def check(self, expected: str, attack) -> None:
        condition, body = await gatherResults([deferToThread(attack), deferToThread(self.chat)])
        self.assertEqual(condition, expected)
        self.assertEqual(body, "still here")

    async def test_billion_laughs(self) -> None:
        await self.check("restricted-xml", lambda: self.attack(BILLION_LAUGHS, after_header=False))

    async def test_doctype(self) -> None:
        header = HEADER.format(to="localhost")
        doctype = header.replace("<stream:stream", "<!DOCTYPE stream:stream><stream:stream", 1)
        await self.check("restricted-xml", lambda: self.attack(doctype, after_header=False))

    async def test_doctype_inside_stream_is_not_well_formed(self) -> None:
        await self.check("not-well-formed", lambda: self.attack("<!DOCTYPE foo>"))

    async def test_comment(self) -> None:
        await self.check("restricted-xml", lambda: self.attack("<!-- hello -->"))

    async def test_processing_instruction(self) -> None:
        await self.check("restricted-xml", lambda: self.attack("<?evil data?>"))

    async def test_not_well_formed(self) -> None:
        await self.check("not-well-formed", lambda: self.attack("<message><body></message>"))

    async def test_deep_nesting(self) -> None:
        await self.check("policy-violation", lambda: self.attack("<message>" + "<a>" * 100_000))

    def huge_stanza(self) -> tuple[str | None, int]:
        client = RawClient(self.port)
        sent = 0
        try:
            client.open()
            client.send("<message><body>")
            chunk = b"x" * 65536
            while sent < 10 * 1024 * 1024:
                readable, _, _ = select.select([client.raw], [], [], 0)
                if readable:
                    break
                try:
                    client.send(chunk)
                except OSError:
                    break
                sent += len(chunk)
            return client.error_condition(), sent
        finally:
            client.close()

    async def test_ten_mebibyte_stanza(self) -> None:
        (condition, sent), body = await gatherResults([deferToThread(self.huge_stanza), deferToThread(self.chat)])
        self.assertEqual(condition, "policy-violation")
        self.assertEqual(body, "still here")
        # Refused before the end: the server stopped at the 256 KiB limit (what the client managed to send
        # beyond that sits in kernel buffers, bounded by the read throttle's backpressure).
        self.assertLess(sent, 10 * 1024 * 1024)

    def silent(self) -> str | None:
        client = RawClient(self.port, timeout=15)
        try:
            client.send(HEADER.format(to="localhost"))
            return client.error_condition()
        finally:
            client.close()

    async def test_never_authenticates(self) -> None:
        await self.check("connection-timeout", self.silent)


class RateLimitTests(TestCase):
    """A client sending faster than --client-rate-limit is read more slowly; nothing is lost."""

    timeout = 60

    async def test_fast_sender_is_slowed_not_dropped(self) -> None:
        import time

        running = await start_server(self, "--client-rate-limit=20000\n--client-rate-burst=20000\n")
        for user in ("alice", "bob"):
            await running.add_user(f"{user}@localhost", PASSWORD)
        ca = ca_file(running)
        port = running.ports["c2s"]["plain"]

        def scenario():
            alice = RawClient(port, ca_file=ca, timeout=30)
            bob = RawClient(port, ca_file=ca, timeout=30)
            try:
                alice.login("alice", PASSWORD, "a")
                bob.login("bob", PASSWORD, "b")
                body = "x" * 900
                started = time.monotonic()
                for n in range(100):  # ~100 KB: 20 KB of burst, then 20 KB/s
                    alice.send(f"<message to='bob@localhost/b' id='{n}'><body>{body}</body></message>")
                ids = []
                while len(ids) < 100:
                    ids.append(bob.until("{jabber:client}message").get("id"))
                return ids, time.monotonic() - started
            finally:
                alice.close()
                bob.close()

        ids, elapsed = await deferToThread(scenario)
        self.assertEqual(ids, [str(n) for n in range(100)])  # all of them, in order
        self.assertGreater(elapsed, 3.0)  # (100 KB - 20 KB burst) / 20 KB/s = ~4 s: it was throttled
