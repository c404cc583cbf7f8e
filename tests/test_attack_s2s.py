"""Attacks on the s2s listener of a real node (b.test), from a fake remote server nobody here trusts more than
the protocol says: spoofed domains, unauthenticated stanzas, oversized stanzas, floods, connection storms.

Each attack runs beside the legitimate server a.test; after it, a.test's users still reach b.test's (other
federated traffic continues), and a client of b.test keeps its ping round trip under ``MAX_RTT`` meanwhile.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.clients.raw import Closed, RawClient
from tests.clients.raw_s2s import DIALBACK, RawServer
from tests.support.attack import MAX_RSS_GROWTH, MAX_RTT, MiB, Pinger, pinged_attack
from tests.support.certs import make_cert
from tests.support.federation import PASSWORD, ca_path, start_domains
from tests.support.server import test_ca
from xmppcluster.s2s.dialback import dialback_key

CLIENT = "{jabber:client}"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


class S2SAttackCase(TestCase):
    timeout = 90
    extra_b = ""

    async def setUp(self) -> None:
        self.domains = await start_domains(self, extra={"b.test": self.extra_b})
        self.a, self.b = self.domains["a.test"], self.domains["b.test"]
        self.ca = ca_path(self)
        directory = tempfile.mkdtemp(prefix="fake-peer-", dir=os.getcwd())
        self.cert_a = os.path.join(directory, "a.pem")  # what a.test's real server holds: valid for a.test
        make_cert(test_ca(), ["a.test"], self.cert_a)

    def peer(self, origin: str = "a.test", *, cert: str | None = "a") -> RawServer:
        server = RawServer(self.b.s2s_port, origin, "b.test", cert_file=self.cert_a if cert == "a" else cert,
                           ca_file=self.ca, timeout=20)
        self.addCleanup(server.close)
        return server

    def legit_chat(self) -> str:
        """alice@a.test -> bob@b.test through the real servers; the body bob got."""
        bob = RawClient(self.b.c2s_port, domain="b.test", ca_file=self.ca, timeout=20)
        alice = RawClient(self.a.c2s_port, domain="a.test", ca_file=self.ca, timeout=20)
        try:
            bob.login("bob", PASSWORD, "r")
            bob.send("<presence/>")
            alice.login("alice", PASSWORD, "r")
            alice.send("<message to='bob@b.test/r' type='chat'><body>still here</body></message>")
            return bob.until(f"{CLIENT}message").findtext(f"{CLIENT}body")
        finally:
            alice.close()
            bob.close()

    async def under_attack(self, attack) -> tuple[object, list[float], int]:
        """Run ``attack()`` in a thread while pinger@b.test pings b.test; (result, round trips, RSS growth)."""
        await self.b.running.add_user("pinger@b.test", "pinger-pass")
        pinger = await deferToThread(Pinger, self.b.c2s_port, self.ca, "pinger", "pinger-pass", domain="b.test")
        return await pinged_attack(pinger, attack, self.id())

    def assertBehaved(self, rtts: list[float], growth: int) -> None:
        self.assertLess(max(rtts), MAX_RTT, f"ping round trips under attack: {sorted(rtts)[-5:]}")
        self.assertLess(growth, MAX_RSS_GROWTH, f"peak RSS grew by {growth / MiB:.0f} MiB")


class SpoofingTests(S2SAttackCase):
    async def test_spoofed_from_domain_ends_the_stream(self) -> None:
        def attack() -> str | None:
            mallory = self.peer()
            mallory.login()
            mallory.send("<message from='boss@c.test' to='bob@b.test' type='chat'><body>forged</body></message>")
            return mallory.error_condition()

        self.assertEqual(await deferToThread(attack), "invalid-from")
        self.assertEqual(await deferToThread(self.legit_chat), "still here")

    async def test_external_for_a_domain_the_certificate_does_not_name(self) -> None:
        def attack() -> tuple[str, str | None]:
            mallory = self.peer("c.test")
            result = mallory.external("c.test")
            mallory.send("<message from='boss@c.test' to='bob@b.test'><body>forged</body></message>")
            return result.tag, mallory.error_condition()

        tag, condition = await deferToThread(attack)
        self.assertEqual(tag, f"{{{SASL}}}failure")
        self.assertEqual(condition, "not-authorized")  # stanzas on a stream that authenticated nothing

    async def test_dialback_without_a_valid_certificate_is_refused(self) -> None:
        """secure-auth: a dialback request for a domain the certificate does not prove gets an error."""
        def attack() -> tuple[str | None, str | None]:
            mallory = self.peer("c.test")
            mallory.open()
            mallory.starttls()
            mallory.send(f"<db:result xmlns:db='{DIALBACK}' from='c.test' to='b.test'>00ff</db:result>")
            answer = mallory.until(f"{{{DIALBACK}}}result")
            return answer.get("type"), answer.get("from")

        self.assertEqual(await deferToThread(attack), ("error", "b.test"))

    async def test_stanza_before_authentication(self) -> None:
        def attack() -> str | None:
            mallory = self.peer()
            mallory.open()
            mallory.starttls()
            mallory.send("<message from='alice@a.test' to='bob@b.test'><body>x</body></message>")
            return mallory.error_condition()

        self.assertEqual(await deferToThread(attack), "not-authorized")

    async def test_plaintext_refused_by_policy(self) -> None:
        def attack() -> str | None:
            mallory = self.peer()
            mallory.open()
            mallory.send(f"<db:result xmlns:db='{DIALBACK}' from='a.test' to='b.test'>00ff</db:result>")
            return mallory.until(f"{{{DIALBACK}}}result").get("type")

        self.assertEqual(await deferToThread(attack), "error")

    async def test_unknown_target_domain(self) -> None:
        def attack() -> str | None:
            mallory = RawServer(self.b.s2s_port, "a.test", "nowhere.test", cert_file=self.cert_a, ca_file=None)
            self.addCleanup(mallory.close)
            mallory.send("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
                         "xmlns:stream='http://etherx.jabber.org/streams' to='nowhere.test' version='1.0'>")
            return mallory.error_condition()

        self.assertEqual(await deferToThread(attack), "host-unknown")


class DialbackVerifyTests(S2SAttackCase):
    """b.test answers <db:verify/> for keys any node of its cluster made (stateless, XEP-0185)."""

    async def test_verify_answers_valid_and_invalid(self) -> None:
        secret = self.b.federation.secret
        good = dialback_key(secret, "a.test", "b.test", "stream-1")

        def ask() -> list[str | None]:
            peer = self.peer()
            peer.open()
            peer.starttls()
            answers = []
            for key in (good, "0" * 64):
                peer.send(f"<db:verify xmlns:db='{DIALBACK}' from='a.test' to='b.test' id='stream-1'>{key}"
                          "</db:verify>")
                answers.append(peer.until(f"{{{DIALBACK}}}verify").get("type"))
            return answers

        self.assertEqual(await deferToThread(ask), ["valid", "invalid"])


class SizeAndFloodTests(S2SAttackCase):
    extra_b = "s2s/rate-limit[I]=200000\n"

    async def test_oversized_stanza(self) -> None:
        def attack() -> str | None:
            mallory = self.peer()
            mallory.login()
            body = "x" * (300 * 1024)
            try:
                mallory.send(f"<message from='m@a.test' to='bob@b.test'><body>{body}</body></message>")
            except (Closed, OSError):
                pass
            return mallory.error_condition()

        self.assertEqual(await deferToThread(attack), "policy-violation")
        self.assertEqual(await deferToThread(self.legit_chat), "still here")

    async def test_flood_is_read_at_the_rate_limit(self) -> None:
        """1.5 MiB of stanzas take b.test at least (size - burst) / rate seconds to read: the peer cannot go
        faster, and the node stays responsive meanwhile."""
        federation = self.b.federation
        done = threading.Event()
        received = federation.received

        def watch(stanza) -> None:
            if stanza.getAttribute("id") == "barrier":
                done.set()
            received(stanza)

        self.patch(federation, "received", watch)

        def attack() -> tuple[int, float]:
            mallory = self.peer()
            mallory.login()
            chunk = "".join(f"<presence from='m@a.test/x' to='bob@b.test/{n}'/>" for n in range(200)).encode()
            started = time.monotonic()
            sent = 0
            while sent < 1.5 * MiB:
                mallory.send(chunk)
                sent += len(chunk)
            mallory.send("<message from='m@a.test' to='nobody@b.test' id='barrier' type='headline'/>")
            done.wait(60)
            return sent, time.monotonic() - started

        (sent, elapsed), rtts, growth = await self.under_attack(attack)
        rate = 200_000
        self.assertGreater(elapsed, (sent - 4 * rate) / rate * 0.9)
        self.assertBehaved(rtts, growth)
        self.assertEqual(await deferToThread(self.legit_chat), "still here")


class ConnectionStormTests(S2SAttackCase):
    extra_b = "s2s/max-incoming-unauthenticated[I]=5\n"

    async def test_unauthenticated_connections_are_capped(self) -> None:
        def attack() -> str | None:
            held = []
            for _ in range(5):
                peer = self.peer()
                peer.open()
                held.append(peer)
            extra = self.peer()
            extra.send("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
                       "xmlns:stream='http://etherx.jabber.org/streams' to='b.test' version='1.0'>")
            return extra.error_condition()

        self.assertEqual(await deferToThread(attack), "resource-constraint")


class PiggybackTests(S2SAttackCase):
    """One incoming stream, several domain pairs: EXTERNAL for a.test, then <db:result/> for a2.test."""

    async def test_second_domain_on_one_stream(self) -> None:
        both = os.path.join(os.path.dirname(self.cert_a), "both.pem")
        make_cert(test_ca(), ["a.test", "a2.test"], both)

        def run() -> tuple[str | None, str, str | None]:
            bob = RawClient(self.b.c2s_port, domain="b.test", ca_file=self.ca, timeout=20)
            self.addCleanup(bob.close)
            bob.login("bob", PASSWORD, "r")
            bob.send("<presence/>")
            peer = self.peer(cert=both)
            peer.login()
            peer.send(f"<db:result xmlns:db='{DIALBACK}' from='a2.test' to='b.test'>00ff</db:result>")
            answer = peer.until(f"{{{DIALBACK}}}result").get("type")
            peer.send("<message from='x@a2.test/r' to='bob@b.test/r' type='chat'><body>via a2</body></message>")
            body = bob.until(f"{CLIENT}message").findtext(f"{CLIENT}body")
            peer.send("<message from='x@c.test/r' to='bob@b.test/r' type='chat'><body>forged</body></message>")
            return answer, body, peer.error_condition()

        self.assertEqual(await deferToThread(run), ("valid", "via a2", "invalid-from"))


class PerDomainCapTests(S2SAttackCase):
    """s2s/max-connections-per-domain: a third authenticated stream from a.test closes the oldest."""

    extra_b = "s2s/max-connections-per-domain[I]=2\n"

    async def test_oldest_stream_is_closed(self) -> None:
        def attack() -> tuple[str | None, bool]:
            first, second, third = self.peer(), self.peer(), self.peer()
            for peer in (first, second, third):
                peer.login()
            third.send("<message from='m@a.test' to='bob@b.test' type='headline'/>")  # still usable
            return first.error_condition(), second.stream_closed

        condition, second_closed = await deferToThread(attack)
        self.assertEqual(condition, "conflict")
        self.assertFalse(second_closed)


class IdleTests(S2SAttackCase):
    """A remote server that authenticates and then says nothing is closed after s2s/idle-timeout."""

    extra_b = "s2s/idle-timeout[I]=1\n"

    async def test_idle_stream_is_closed(self) -> None:
        def attack() -> bool:
            quiet = self.peer()
            quiet.login()
            quiet.wait_closed()
            return quiet.stream_closed

        self.assertTrue(await deferToThread(attack))
