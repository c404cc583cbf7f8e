"""Federation between two xmppcluster servers on loopback (a.test and b.test), certificates from the test CA.

Each test drives real clients on both servers: what one user sends arrives at the other over a real
server-to-server stream, authenticated as the test says (SASL EXTERNAL, dialback).
"""

from __future__ import annotations

import os

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.clients.raw import RawClient
from tests.support.federation import PASSWORD, ca_path, start_domains

CLIENT = "{jabber:client}"
STANZAS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"


def client(domain, user: str, resource: str = "r", *, ca: str) -> RawClient:
    raw = RawClient(domain.c2s_port, domain=domain.name, ca_file=ca, timeout=20)
    raw.login(user, PASSWORD, resource)
    return raw


def next_message(raw: RawClient) -> object:
    return raw.until(f"{CLIENT}message")


def error_of(element) -> str | None:
    error = element.find(f"{CLIENT}error")
    if error is None:
        return None
    return next((child.tag.split("}")[1] for child in error if child.tag.startswith(STANZAS)), None)


class FederationCase(TestCase):
    timeout = 60
    direct_tls = False
    trusted = True
    extra: dict[str, str] = {}

    async def setUp(self) -> None:
        self.domains = await start_domains(self, direct_tls=self.direct_tls, trusted=self.trusted, extra=self.extra)
        self.a, self.b = self.domains["a.test"], self.domains["b.test"]
        self.ca = ca_path(self)

    def chat(self) -> tuple[object, object]:
        """alice@a.test and bob@b.test send each other a message; what each received."""
        alice = client(self.a, "alice", ca=self.ca)
        bob = client(self.b, "bob", ca=self.ca)
        try:
            alice.send("<presence/>")
            bob.send("<presence/>")
            alice.send("<message to='bob@b.test/r' type='chat' id='a1'><body>hello from a</body></message>")
            got_bob = next_message(bob)
            bob.send("<message to='alice@a.test/r' type='chat' id='b1'><body>hello from b</body></message>")
            got_alice = next_message(alice)
            return got_bob, got_alice
        finally:
            alice.close()
            bob.close()

    def bounce_of(self, to: str, ident: str) -> object:
        """What alice@a.test gets back for a chat message to ``to`` (run in a thread)."""
        alice = client(self.a, "alice", ca=self.ca)
        try:
            alice.send(f"<message to='{to}' type='chat' id='{ident}'><body>x</body></message>")
            return alice.until(f"{CLIENT}message")
        finally:
            alice.close()

    def methods(self, domain) -> set[str]:
        return {line["auth"] for line in domain.federation.status() if line.get("auth")}


class ExternalTests(FederationCase):
    """Trusted certificates on both sides: SASL EXTERNAL (XEP-0178) both ways, over STARTTLS."""

    async def test_chat_both_ways(self) -> None:
        got_bob, got_alice = await deferToThread(self.chat)
        self.assertEqual((got_bob.get("from"), got_bob.findtext(f"{CLIENT}body")), ("alice@a.test/r", "hello from a"))
        self.assertEqual((got_alice.get("from"), got_alice.findtext(f"{CLIENT}body")),
                         ("bob@b.test/r", "hello from b"))
        self.assertEqual(self.methods(self.a), {"EXTERNAL"})
        self.assertEqual(self.methods(self.b), {"EXTERNAL"})
        tls = {line["tls"] for line in self.a.federation.status()}
        self.assertTrue(tls <= {"TLSv1.2", "TLSv1.3"}, tls)

    async def test_iq_round_trip_and_error(self) -> None:
        def ask() -> tuple[object, object]:
            alice = client(self.a, "alice", ca=self.ca)
            try:
                alice.send("<iq type='get' id='v1' to='b.test'><query xmlns='jabber:iq:version'/></iq>")
                version = alice.until(f"{CLIENT}iq")
                alice.send("<iq type='get' id='x1' to='b.test'><query xmlns='urn:example:none'/></iq>")
                missing = alice.until(f"{CLIENT}iq")
                alice.send("<iq type='get' id='d1' to='b.test'><query xmlns='http://jabber.org/protocol/disco#info'/>"
                           "</iq>")
                self.disco = alice.until(f"{CLIENT}iq")
                return version, missing
            finally:
                alice.close()

        version, missing = await deferToThread(ask)
        self.assertEqual((version.get("type"), version.get("from")), ("result", "b.test"))
        self.assertIsNotNone(version.find("{jabber:iq:version}query/{jabber:iq:version}name"))
        self.assertEqual((missing.get("type"), error_of(missing)), ("error", "service-unavailable"))
        features = {f.get("var") for f in self.disco.iter("{http://jabber.org/protocol/disco#info}feature")}
        self.assertEqual((self.disco.get("type"), self.disco.get("from")), ("result", "b.test"))
        self.assertIn("urn:xmpp:ping", features)


class DirectTLSTests(FederationCase):
    """XEP-0368: the static map points at the direct TLS ports; EXTERNAL over them."""

    direct_tls = True

    async def test_chat_both_ways(self) -> None:
        got_bob, got_alice = await deferToThread(self.chat)
        self.assertEqual(got_bob.findtext(f"{CLIENT}body"), "hello from a")
        self.assertEqual(got_alice.findtext(f"{CLIENT}body"), "hello from b")
        self.assertEqual(self.methods(self.a), {"EXTERNAL"})


class UntrustedTests(FederationCase):
    """Neither server trusts the other's certificate authority: secure-auth refuses, messages bounce."""

    trusted = False
    extra = {"a.test": "s2s/connect-timeout=5\n"}

    async def test_refused_and_bounced(self) -> None:
        bounced = await deferToThread(self.bounce_of, "bob@b.test", "u1")
        self.assertEqual((bounced.get("type"), bounced.get("id")), ("error", "u1"))
        self.assertEqual(error_of(bounced), "remote-server-timeout")


class DialbackTests(FederationCase):
    """Untrusted certificates, but each lists the other in s2s/insecure-domains: dialback (XEP-0220) both ways."""

    trusted = False
    extra = {"a.test": "s2s/insecure-domains[s]=b.test\n", "b.test": "s2s/insecure-domains[s]=a.test\n"}

    async def test_chat_both_ways(self) -> None:
        got_bob, got_alice = await deferToThread(self.chat)
        self.assertEqual(got_bob.findtext(f"{CLIENT}body"), "hello from a")
        self.assertEqual(got_alice.findtext(f"{CLIENT}body"), "hello from b")
        self.assertIn("dialback", self.methods(self.a))
        self.assertIn("dialback", self.methods(self.b))


class SubscriptionTests(FederationCase):
    """RFC 6121 with a remote contact: subscription to both, presence both ways, unavailable at logout."""

    def subscribe_both(self) -> dict[str, list]:
        alice = client(self.a, "alice", ca=self.ca)
        bob = client(self.b, "bob", ca=self.ca)
        seen: dict[str, list] = {"alice": [], "bob": []}
        try:
            alice.send("<presence/>")
            bob.send("<presence/>")
            alice.send("<presence to='bob@b.test' type='subscribe'/>")
            request = bob.until(f"{CLIENT}presence")
            while request.get("from", "").startswith("bob@"):  # his own initial presence, reflected
                request = bob.until(f"{CLIENT}presence")
            seen["bob"].append((request.get("type"), request.get("from")))
            bob.send("<presence to='alice@a.test' type='subscribed'/>")
            bob.send("<presence to='alice@a.test' type='subscribe'/>")
            while True:  # alice: bob's approval, bob's available presence, bob's request
                element = alice.next()
                if element.tag == f"{CLIENT}presence":
                    seen["alice"].append((element.get("type"), element.get("from")))
                    if element.get("type") == "subscribe":
                        break
            alice.send("<presence to='bob@b.test' type='subscribed'/>")
            while True:  # bob: alice's available presence after his subscription is approved
                element = bob.next()
                if element.tag == f"{CLIENT}presence":
                    seen["bob"].append((element.get("type"), element.get("from")))
                    if element.get("type") is None and element.get("from") == "alice@a.test/r":
                        break
            alice.send("<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>")
            roster = alice.until(f"{CLIENT}iq")
            seen["roster"] = [(item.get("jid"), item.get("subscription"))
                              for item in roster.iter("{jabber:iq:roster}item")]
            alice.send("<presence type='unavailable'/>")
            while True:
                element = bob.next()
                if element.tag == f"{CLIENT}presence" and element.get("type") == "unavailable":
                    seen["bob"].append(("unavailable", element.get("from")))
                    break
            return seen
        finally:
            alice.close()
            bob.close()

    async def test_subscription_to_both_and_presence(self) -> None:
        seen = await deferToThread(self.subscribe_both)
        self.assertEqual(seen["bob"][0], ("subscribe", "alice@a.test"))
        self.assertIn((None, "bob@b.test/r"), seen["alice"])
        self.assertIn(("subscribed", "bob@b.test"), seen["alice"])
        self.assertEqual(seen["roster"], [("bob@b.test", "both")])
        self.assertEqual(seen["bob"][-1], ("unavailable", "alice@a.test/r"))

    async def test_probe_at_login(self) -> None:
        """Once subscribed both ways, a new login of alice learns bob's presence from b.test (a probe)."""
        await deferToThread(self.subscribe_both)

        def login_again() -> object:
            bob = client(self.b, "bob", "phone", ca=self.ca)
            alice = client(self.a, "alice", "laptop", ca=self.ca)
            try:
                bob.send("<presence><show>away</show></presence>")
                bob.until(f"{CLIENT}presence")  # his own presence back: the broadcast has gone out
                alice.send("<presence/>")
                while True:
                    element = alice.until(f"{CLIENT}presence")
                    if element.get("from") == "bob@b.test/phone":
                        return element
            finally:
                alice.close()
                bob.close()

        presence = await deferToThread(login_again)
        self.assertEqual(presence.findtext(f"{CLIENT}show"), "away")


class ResendTests(FederationCase):
    """Stanzas written on a stream that breaks before a ping confirms them go again on a new stream, once."""

    async def test_unconfirmed_stanzas_survive_a_broken_stream(self) -> None:
        from twisted.internet import reactor, task

        bob = await deferToThread(client, self.b, "bob", ca=self.ca)
        alice = await deferToThread(client, self.a, "alice", ca=self.ca)
        self.addCleanup(bob.close)
        self.addCleanup(alice.close)
        await deferToThread(bob.send, "<presence/>")
        await deferToThread(alice.send, "<message to='bob@b.test/r' type='chat'><body>m0</body></message>")
        self.assertEqual((await deferToThread(next_message, bob)).findtext(f"{CLIENT}body"), "m0")
        # b.test stops reading its stream from a.test: what a.test writes now stays in buffers, unconfirmed.
        incoming = next(s for s in self.b.federation.incoming if "a.test" in s.pairs)
        incoming.transport.pauseProducing()
        link = self.a.federation.links[("a.test", "b.test")]
        for n in (1, 2, 3):
            await deferToThread(alice.send, f"<message to='bob@b.test/r' type='chat'><body>m{n}</body></message>")
        while len(link.unconfirmed) < 3:
            await task.deferLater(reactor, 0.01, lambda: None)
        link.stream.transport.abortConnection()  # the stream dies with m1..m3 unread
        incoming.transport.abortConnection()
        got = [(await deferToThread(next_message, bob)).findtext(f"{CLIENT}body") for _ in range(3)]
        self.assertEqual(got, ["m1", "m2", "m3"])
        await deferToThread(alice.send, "<message to='bob@b.test/r' type='chat'><body>m4</body></message>")
        self.assertEqual((await deferToThread(next_message, bob)).findtext(f"{CLIENT}body"), "m4")  # none twice


class StatusTests(FederationCase):
    """``xmppcluster s2s-status`` lists each node's streams from the database (one each way: no XEP-0288)."""

    extra = {"a.test": "s2s/bidi[B]=false\n", "b.test": "s2s/bidi[B]=false\n"}

    async def test_status_lists_streams_with_auth_and_tls(self) -> None:
        import sys

        from twisted.internet.utils import getProcessOutputAndValue

        await deferToThread(self.chat)
        await self.a.running.service.s2s_reporter.report()
        config = os.path.join(self.a.running.directory, "status.properties")
        with open(config, "w") as out:
            out.write(f"--virt-hosts=a.test\n--user-db-uri=sqlite:///{self.a.running.directory}/db.sqlite\n")
        stdout, stderr, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "xmppcluster.ops.cli", "--config", config, "s2s-status"], env=dict(os.environ))
        text = stdout.decode()
        self.assertEqual(code, 0, text + stderr.decode())
        lines = [line.split() for line in text.splitlines()[1:]]
        seen = {(line[1], line[3], line[4], line[5]) for line in lines}
        self.assertEqual(seen, {("b.test", "out", "established", "EXTERNAL"),
                                ("b.test", "in", "established", "EXTERNAL")}, text)
        self.assertTrue(all(line[6] in ("TLSv1.2", "TLSv1.3") for line in lines), text)


class DNSTests(FederationCase):
    """a.test finds b.test by DNS SRV (XEP-0368 direct TLS preferred), from a DNS server the test runs."""

    async def setUp(self) -> None:
        from twisted.names import dns

        from tests.test_s2s_resolve import DNSServerMixin, Zone, srv

        self.b_ports = {}
        mixin = DNSServerMixin()
        mixin.addCleanup = self.addCleanup
        mixin.fail = self.fail
        self.zone = Zone(b"b.test", {})
        self.dns_address = mixin.start_dns(self.zone)
        self.extra = {"a.test": f"s2s/dns-servers[s]={self.dns_address[0]}:{self.dns_address[1]}\n"}
        self.srv, self.record = srv, dns.Record_A
        self.domains = await start_domains(self, extra=self.extra, unmapped=(("a.test", "b.test"),))
        self.a, self.b = self.domains["a.test"], self.domains["b.test"]
        self.ca = ca_path(self)
        self.zone.records.update({
            b"_xmpps-server._tcp.b.test": [srv(5, 0, self.b.s2s_tls_port, "xmpp.b.test")],
            b"_xmpp-server._tcp.b.test": [srv(10, 0, self.b.s2s_port, "xmpp.b.test")],
            b"xmpp.b.test": [dns.Record_A("127.0.0.1", ttl=60)],
        })

    async def test_srv_direct_tls_first(self) -> None:
        got_bob, _ = await deferToThread(self.chat)
        self.assertEqual(got_bob.findtext(f"{CLIENT}body"), "hello from a")
        out = [line for line in self.a.federation.status() if line["direction"] == "out"]
        self.assertEqual([(line["remote"], line["direct_tls"], line["auth"]) for line in out],
                         [("b.test", True, "EXTERNAL")])

    async def test_starttls_when_direct_tls_is_refused(self) -> None:
        self.zone.records[b"_xmpps-server._tcp.b.test"] = [self.srv(5, 0, 1, "xmpp.b.test")]  # nothing on port 1
        got_bob, _ = await deferToThread(self.chat)
        self.assertEqual(got_bob.findtext(f"{CLIENT}body"), "hello from a")
        out = [line for line in self.a.federation.status() if line["direction"] == "out"]
        self.assertEqual([(line["remote"], line["direct_tls"]) for line in out], [("b.test", False)])

    async def test_starttls_when_direct_tls_negotiation_fails(self) -> None:
        """The direct TLS target answers TLS, but is a client port: the stream fails, STARTTLS takes over."""
        c2s_tls = self.b.running.ports["c2s"]["ssl"]
        self.zone.records[b"_xmpps-server._tcp.b.test"] = [self.srv(5, 0, c2s_tls, "xmpp.b.test")]
        got_bob, _ = await deferToThread(self.chat)
        self.assertEqual(got_bob.findtext(f"{CLIENT}body"), "hello from a")
        out = [line for line in self.a.federation.status() if line["direction"] == "out"]
        self.assertEqual([(line["remote"], line["direct_tls"]) for line in out], [("b.test", False)])

    async def test_no_such_domain_bounces_not_found(self) -> None:
        bounced = await deferToThread(self.bounce_of, "x@nowhere.b.test", "n1")
        self.assertEqual((bounced.get("type"), error_of(bounced)), ("error", "remote-server-not-found"))


class SlixmppTests(FederationCase):
    """Two slixmpp users, one per server: subscription to both, presence, chat (the interop tests' client)."""

    async def test_subscription_presence_chat(self) -> None:
        from tests.support.federation import federated_pair

        ours = {"host": "127.0.0.1", "port": self.a.c2s_port, "ca": self.ca, "jid": "alice@a.test",
                "password": PASSWORD}
        theirs = {"host": "127.0.0.1", "port": self.b.c2s_port, "ca": self.ca, "jid": "bob@b.test",
                  "password": PASSWORD}
        alice, bob = await federated_pair(ours, theirs)
        for result in (alice, bob):
            self.assertIsNone(result["error"], result)
            self.assertEqual(result["subscription"], "both", result)
            self.assertTrue(result["contact_available"], result)
        self.assertEqual(alice["received"], ["hello from theirs"])
        self.assertEqual(bob["received"], ["hello from ours"])


class BidiTests(FederationCase):
    """XEP-0288: a.test's stream to b.test carries b.test's answers too; nobody opens a second connection."""

    async def test_one_connection_both_ways(self) -> None:
        got_bob, got_alice = await deferToThread(self.chat)
        self.assertEqual(got_bob.findtext(f"{CLIENT}body"), "hello from a")
        self.assertEqual(got_alice.findtext(f"{CLIENT}body"), "hello from b")
        a_lines = self.a.federation.status()
        self.assertEqual([(line["direction"], line["bidi"], line["auth"]) for line in a_lines],
                         [("out", True, "EXTERNAL")])
        self.assertEqual(self.a.federation.incoming, set())
        self.assertEqual(len(self.b.federation.incoming), 1)
        b_link = self.b.federation.links[("b.test", "a.test")]
        self.assertIs(b_link.stream, next(iter(self.b.federation.incoming)))

    async def test_spoofed_from_on_a_bidirectional_stream(self) -> None:
        """What b.test sends back on a.test's stream must come from b.test."""
        await deferToThread(self.chat)
        incoming = next(iter(self.b.federation.incoming))
        incoming.send_serialized(b"<message from='boss@c.test' to='alice@a.test/r'><body>forged</body></message>")
        out = self.a.federation.links[("a.test", "b.test")]
        from twisted.internet import reactor, task

        while out.stream is not None:  # a.test ends the stream (invalid-from)
            await task.deferLater(reactor, 0.01, lambda: None)


class PolicyTests(FederationCase):
    """s2s/denied-domains on a.test: nothing goes to b.test, and b.test cannot authenticate to a.test."""

    extra = {"a.test": "s2s/denied-domains[s]=b.test\n", "b.test": "s2s/connect-timeout=3\n"}

    async def test_denied_both_ways(self) -> None:
        def send() -> tuple[object, object]:
            alice = client(self.a, "alice", ca=self.ca)
            bob = client(self.b, "bob", ca=self.ca)
            try:
                alice.send("<message to='bob@b.test' type='chat' id='d1'><body>x</body></message>")
                bob.send("<message to='alice@a.test' type='chat' id='d2'><body>x</body></message>")
                return alice.until(f"{CLIENT}message"), bob.until(f"{CLIENT}message")
            finally:
                alice.close()
                bob.close()

        to_b, to_a = await deferToThread(send)
        self.assertEqual((to_b.get("id"), error_of(to_b)), ("d1", "not-allowed"))
        self.assertEqual((to_a.get("id"), error_of(to_a)), ("d2", "remote-server-timeout"))


class QueueTests(FederationCase):
    """While b.test cannot be reached, a.test keeps at most s2s/queue-max-stanzas for it; the rest bounce at once."""

    extra = {"a.test": "s2s/queue-max-stanzas[I]=3\ns2s/connect-timeout=3\n"}

    async def setUp(self) -> None:
        await super().setUp()
        await self.b.running.stop()  # nothing listens on b.test's ports any more

    async def test_queue_cap_then_timeout(self) -> None:
        def send() -> list[tuple[str, str | None]]:
            alice = client(self.a, "alice", ca=self.ca)
            try:
                for n in range(5):
                    alice.send(f"<message to='bob@b.test' type='chat' id='q{n}'><body>x</body></message>")
                return [(m.get("id"), error_of(m)) for m in (alice.until(f"{CLIENT}message") for _ in range(5))]
            finally:
                alice.close()

        bounced = await deferToThread(send)
        self.assertEqual(bounced[:2], [("q3", "resource-constraint"), ("q4", "resource-constraint")])
        self.assertEqual(sorted(bounced[2:]), [(f"q{n}", "remote-server-timeout") for n in range(3)])


class SimultaneousBidiTests(FederationCase):
    """Both servers open their streams at the same moment, each offering XEP-0288: nothing bounces (a stream
    adopted at EXTERNAL <success/> carries stanzas only after its restart)."""

    async def test_both_directions_at_once(self) -> None:
        def run() -> list[str]:
            alice = client(self.a, "alice", ca=self.ca)
            bob = client(self.b, "bob", ca=self.ca)
            try:
                alice.send("<presence/>")
                bob.send("<presence/>")
                for n in range(20):
                    alice.send(f"<message to='bob@b.test/r' type='chat'><body>a{n}</body></message>")
                    bob.send(f"<message to='alice@a.test/r' type='chat'><body>b{n}</body></message>")
                got = [next_message(bob) for _ in range(20)] + [next_message(alice) for _ in range(20)]
                return [m.findtext(f"{CLIENT}body") or f"error:{error_of(m)}" for m in got]
            finally:
                alice.close()
                bob.close()

        bodies = await deferToThread(run)
        self.assertEqual(bodies, [f"a{n}" for n in range(20)] + [f"b{n}" for n in range(20)])


class PiggybackOutgoingTests(FederationCase):
    """Two of our domains (a.test, a2.test on one server) share one stream to b.test: the second joins by
    dialback on the first's stream (XEP-0220 piggybacking) instead of opening a connection."""

    async def setUp(self) -> None:
        from tests.support.federation import Domain, s2s_lines
        from tests.support.server import free_port, start_server

        self.ca = ca_path(self)
        self.a = Domain("a.test", free_port(), free_port())
        self.b = Domain("b.test", free_port(), free_port())
        self.a.running = await start_server(
            self, s2s_lines(self.a, {"b.test": (self.b.s2s_port, False)}, self.ca, "s2s/bidi[B]=false\\n"),
            domains=("a.test", "a2.test"))
        self.b.running = await start_server(
            self, s2s_lines(self.b, {"a.test": (self.a.s2s_port, False), "a2.test": (self.a.s2s_port, False)},
                            self.ca, "s2s/bidi[B]=false\\n"), domains=("b.test",))
        for jid in ("alice@a.test", "carol@a2.test"):
            await self.a.running.add_user(jid, PASSWORD)
        await self.b.running.add_user("bob@b.test", PASSWORD)

    async def test_second_domain_rides_the_first_stream(self) -> None:
        def run() -> list[tuple[str, str]]:
            bob = client(self.b, "bob", ca=self.ca)
            alice = client(self.a, "alice", ca=self.ca)
            carol = RawClient(self.a.c2s_port, domain="a2.test", ca_file=self.ca, timeout=20)
            carol.login("carol", PASSWORD, "r")
            try:
                bob.send("<presence/>")
                alice.send("<message to='bob@b.test/r' type='chat'><body>from a</body></message>")
                first = next_message(bob)
                carol.send("<message to='bob@b.test/r' type='chat'><body>from a2</body></message>")
                second = next_message(bob)
                return [(m.get("from"), m.findtext(f"{CLIENT}body")) for m in (first, second)]
            finally:
                for c in (alice, carol, bob):
                    c.close()

        got = await deferToThread(run)
        self.assertEqual(got, [("alice@a.test/r", "from a"), ("carol@a2.test/r", "from a2")])
        federation = self.a.running.server.federation
        streams = {id(link.stream) for link in federation.links.values() if link.stream is not None}
        self.assertEqual(len(streams), 1, federation.status())
        incoming = next(iter(self.b.running.server.federation.incoming))
        self.assertEqual(incoming.pairs, {"a.test": {"b.test"}, "a2.test": {"b.test"}})


class MetricsTests(FederationCase):
    """The federation's gauges on /metrics (docs/metrics.rst): streams by direction and state."""

    async def setUp(self) -> None:
        from tests.support.server import free_port

        self.metrics_port = free_port()
        self.extra = {"a.test": f"--metrics-port={self.metrics_port}\n"}
        await super().setUp()

    async def test_streams_counted(self) -> None:
        from tests.test_metrics import fetch, samples, value

        await deferToThread(self.chat)
        status, _, text = await deferToThread(fetch, self.metrics_port)
        self.assertEqual(status, 200)
        table = samples(text)
        self.assertEqual(value(table, "xmpp_s2s_streams", direction="out", state="established"), 1.0, text)
        self.assertEqual(value(table, "xmpp_s2s_queued"), 0.0)


class KeepaliveTests(FederationCase):
    """XEP-0199 on an idle outgoing stream: a ping every s2s/ping-interval, answered, the stream kept."""

    extra = {"a.test": "s2s/ping-interval[F]=1\n"}

    async def test_idle_stream_is_pinged(self) -> None:
        from twisted.internet import reactor, task

        await deferToThread(self.chat)
        federation = self.a.federation
        link = federation.links[("a.test", "b.test")]
        stream, first = link.stream, federation._ping_counter
        while federation._ping_counter < first + 2:  # two keepalives, each sent after the last was answered
            await task.deferLater(reactor, 0.1, lambda: None)
        self.assertIs(link.stream, stream)
        self.assertFalse(stream.closed)
