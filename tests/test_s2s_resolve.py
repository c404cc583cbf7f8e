"""Outgoing s2s: SRV resolution (RFC 6120 §3.2, XEP-0368, RFC 2782) against a real DNS server on loopback,
and the staggered connection race over the targets (task.Clock for the timing, real sockets for the rest).
"""

from __future__ import annotations

import random
from collections import Counter

from OpenSSL import crypto
from twisted.internet import defer, reactor, ssl, task
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.names import authority, dns, server
from twisted.names.common import ResolverBase
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from tests.support.certs import make_ca, make_cert
from xmppcluster.s2s.connect import ConnectError, close_connection, connect_first, endpoint_for
from xmppcluster.s2s.resolve import (
    DEFAULT_PORT,
    NotFound,
    ResolveError,
    Target,
    ascii_domain,
    order_srv,
    resolver_for,
    targets,
)

SHORT = (0.3,)


class Broken(Exception):
    """What the test zone raises for a name that must get SERVFAIL."""


def srv(priority: int, weight: int, port: int, target: str) -> dns.Record_SRV:
    return dns.Record_SRV(priority, weight, port, target.encode("ascii"), ttl=60)


class Zone(authority.FileAuthority):
    """An in-memory zone: ``records`` maps a lower case name (bytes) to record payloads."""

    def __init__(self, origin: bytes, records: dict[bytes, list], broken: set[bytes] = frozenset()) -> None:
        ResolverBase.__init__(self)
        soa = dns.Record_SOA(mname=b"ns." + origin, rname=b"admin." + origin, serial=1, refresh=60, retry=60,
                             expire=60, minimum=60, ttl=60)
        self.soa = (origin, soa)
        self.records = {origin: [soa], **{name.lower(): list(found) for name, found in records.items()}}
        self.broken = set(broken)
        self._cache = {}

    def _lookup(self, name, cls, type, timeout=None):
        if name.lower() in self.broken:
            return defer.fail(Broken(name))
        return super()._lookup(name, cls, type, timeout)


class TruncatingFactory(server.DNSServerFactory):
    """Answers over UDP with an empty, truncated reply, so the client must ask again over TCP."""

    def sendReply(self, protocol, message, address):
        if address is not None:
            message.answers, message.authority, message.additional, message.trunc = [], [], [], 1
        super().sendReply(protocol, message, address)


def when_lost(protocol: Protocol) -> Deferred:
    """A Deferred fired once ``protocol`` has seen connectionLost."""
    lost: Deferred = Deferred()
    original = protocol.connectionLost

    def connectionLost(reason):
        try:
            original(reason)
        finally:
            lost.callback(None)

    protocol.connectionLost = connectionLost
    return lost


class DNSServerMixin:
    """Start ``twisted.names`` authoritative servers on 127.0.0.1, UDP and TCP on one port."""

    def start_dns(self, zone: Zone, factory_class=server.DNSServerFactory) -> tuple[str, int]:
        factory = factory_class(authorities=[zone], verbose=0)
        built = []
        original_build = factory.buildProtocol

        def buildProtocol(address):
            protocol = original_build(address)
            built.append(when_lost(protocol))
            return protocol

        factory.buildProtocol = buildProtocol
        for _ in range(20):
            udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
            port = udp.getHost().port
            try:
                tcp = reactor.listenTCP(port, factory, interface="127.0.0.1")
            except Exception:
                udp.stopListening()
                continue
            break
        else:
            self.fail("no port free for UDP and TCP at once")

        async def stop():
            await defer.maybeDeferred(udp.stopListening)
            await defer.maybeDeferred(tcp.stopListening)
            await defer.gatherResults(built)

        self.addCleanup(lambda: defer.ensureDeferred(stop()))
        return ("127.0.0.1", port)

    def start_silent(self) -> tuple[str, int]:
        """A UDP port that swallows every query (a DNS server that never answers)."""
        udp = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(udp.stopListening)
        return ("127.0.0.1", udp.getHost().port)

    def resolver(self, address: tuple[str, int], timeout=(2.0,)):
        resolver = resolver_for([address], timeout=timeout)

        async def close_tcp():
            for protocol in list(resolver.connections):
                lost = when_lost(protocol)
                protocol.transport.loseConnection()
                await lost

        self.addCleanup(lambda: defer.ensureDeferred(close_tcp()))
        return resolver


EXAMPLE = {
    b"_xmpps-server._tcp.example.test": [srv(5, 0, 5270, "tls.example.test"), srv(20, 0, 5270, "tls2.example.test")],
    b"_xmpp-server._tcp.example.test": [srv(10, 0, 5269, "plain.example.test"),
                                        srv(30, 0, 5269, "backup.example.test.")],
    b"_xmpp-server._tcp.dot.test": [srv(0, 0, 0, ".")],
    b"_xmpps-server._tcp.dot.test": [srv(0, 0, 0, ".")],
    b"_xmpps-server._tcp.tlsdot.test": [srv(0, 0, 0, ".")],
    b"_xmpps-server._tcp.plaindot.test": [srv(0, 0, 5270, "only-tls.plaindot.test")],
    b"_xmpp-server._tcp.plaindot.test": [srv(0, 0, 0, ".")],
    b"_xmpp-server._tcp.xn--mnchen-3ya.test": [srv(0, 0, 5269, "xmpp.xn--mnchen-3ya.test")],
    b"_xmpp-server._tcp.half.test": [srv(0, 0, 5269, "xmpp.half.test")],
    b"_xmpp-server._tcp.servfail.test": [srv(0, 0, 5269, "never.used")],
    b"nodata.test": [dns.Record_A("192.0.2.1", ttl=60)],
}
BROKEN = {b"_xmpps-server._tcp.half.test", b"_xmpps-server._tcp.servfail.test", b"_xmpp-server._tcp.servfail.test"}


class ResolveTests(DNSServerMixin, TestCase):
    """targets() against a real twisted.names server over UDP on loopback."""

    def setUp(self) -> None:
        self.address = self.start_dns(Zone(b"test", EXAMPLE, BROKEN))

    async def lookup(self, domain: str, **kwargs) -> list[Target]:
        return await targets(domain, self.resolver(self.address), rng=random.Random(1), **kwargs)

    async def test_both_kinds_merged_in_priority_order(self) -> None:
        self.assertEqual(await self.lookup("example.test"), [
            Target("tls.example.test", 5270, True),
            Target("plain.example.test", 5269, False),
            Target("tls2.example.test", 5270, True),
            Target("backup.example.test", 5269, False),
        ])

    async def test_dot_on_both_is_not_found(self) -> None:
        with self.assertRaises(NotFound) as caught:
            await self.lookup("dot.test")
        self.assertEqual((caught.exception.reason, caught.exception.condition),
                         ("no-service", "remote-server-not-found"))

    async def test_dot_speaks_for_its_own_kind_only(self) -> None:
        # "." for direct TLS and no _xmpp-server record: the RFC 6120 fallback still applies.
        self.assertEqual(await self.lookup("tlsdot.test"), [Target("tlsdot.test", DEFAULT_PORT, False)])
        # "." for STARTTLS but a direct TLS record: only the direct TLS target, no fallback.
        self.assertEqual(await self.lookup("plaindot.test"), [Target("only-tls.plaindot.test", 5270, True)])

    async def test_no_srv_falls_back_to_the_domain_on_5269(self) -> None:
        self.assertEqual(await self.lookup("nxdomain.test"), [Target("nxdomain.test", 5269, False)])
        # NOERROR without SRV answers (the name has only an A record) is the same.
        self.assertEqual(await self.lookup("nodata.test"), [Target("nodata.test", 5269, False)])
        # Outside every zone the server knows: NXDOMAIN too.
        self.assertEqual(await self.lookup("Elsewhere.Example."), [Target("elsewhere.example", 5269, False)])

    async def test_unicode_domain_is_asked_as_a_label(self) -> None:
        self.assertEqual(await self.lookup("münchen.test"), [Target("xmpp.xn--mnchen-3ya.test", 5269, False)])
        self.assertEqual(ascii_domain("MÜNCHEN.test."), "xn--mnchen-3ya.test")

    async def test_invalid_domain_is_not_found_without_dns(self) -> None:
        for domain in ("a" * 64 + ".test", "a..test", ""):
            with self.assertRaises(NotFound) as caught:
                await targets(domain, None)
            self.assertEqual(caught.exception.reason, "invalid-domain", domain)

    async def test_ip_literal_skips_dns(self) -> None:
        self.assertEqual(await targets("192.0.2.7", None), [Target("192.0.2.7", 5269, False)])
        self.assertEqual(await targets("[2001:DB8::1]", None), [Target("2001:db8::1", 5269, False)])

    async def test_static_map_wins_over_dns(self) -> None:
        static = {"example.test": [("10.0.0.5", 5269, False), ("10.0.0.6", 5270, True)]}
        self.assertEqual(await self.lookup("example.test", static=static),
                         [Target("10.0.0.5", 5269, False), Target("10.0.0.6", 5270, True)])
        # Other domains still use DNS.
        self.assertEqual((await self.lookup("münchen.test", static=static))[0].host, "xmpp.xn--mnchen-3ya.test")
        with self.assertRaises(NotFound):
            await self.lookup("example.test", static={"example.test": []})

    async def test_servfail_is_a_resolve_error(self) -> None:
        with self.assertRaises(ResolveError) as caught:
            await self.lookup("servfail.test")
        self.assertEqual((caught.exception.reason, caught.exception.condition),
                         ("server-failure", "remote-server-timeout"))
        self.assertEqual(len(self.flushLoggedErrors(Broken)), 2)

    async def test_one_kind_failing_uses_the_other(self) -> None:
        self.assertEqual(await self.lookup("half.test"), [Target("xmpp.half.test", 5269, False)])
        self.assertEqual(len(self.flushLoggedErrors(Broken)), 1)

    async def test_truncated_udp_answer_is_asked_again_over_tcp(self) -> None:
        address = self.start_dns(Zone(b"test", EXAMPLE), TruncatingFactory)
        resolver = self.resolver(address)
        found = await targets("example.test", resolver, rng=random.Random(1))
        self.assertEqual(len(found), 4)
        self.assertTrue(resolver.connections)  # the answers came over TCP (one connection per concurrent query)


class TimeoutTests(DNSServerMixin, TestCase):
    async def test_silent_server_is_a_timeout_error(self) -> None:
        resolver = self.resolver(self.start_silent(), timeout=(5.0,))
        started = reactor.seconds()
        with self.assertRaises(ResolveError) as caught:
            await targets("example.test", resolver, timeout=SHORT)
        self.assertEqual((caught.exception.reason, caught.exception.condition), ("timeout", "remote-server-timeout"))
        self.assertLess(reactor.seconds() - started, 3.0)  # the per-call timeout, not the resolver's 5 s



class Unanswered(ResolverBase):
    """A resolver whose lookups never end unless cancelled (twisted.names' own client keeps its
    retransmission timer after a cancel, which would outlive the test)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[bytes] = []
        self.cancelled: list[bytes] = []

    def _lookup(self, name, cls, type, timeout):
        self.asked.append(name)
        return Deferred(lambda d: self.cancelled.append(name))


class CancelTests(SynchronousTestCase):
    def test_cancelling_targets_cancels_both_lookups(self) -> None:
        resolver = Unanswered()
        lookup = defer.ensureDeferred(targets("example.test", resolver))
        self.assertEqual(sorted(resolver.asked),
                         [b"_xmpp-server._tcp.example.test", b"_xmpps-server._tcp.example.test"])
        lookup.cancel()
        self.failureResultOf(lookup, CancelledError)
        self.assertEqual(sorted(resolver.cancelled), sorted(resolver.asked))


class WeightTests(SynchronousTestCase):
    """RFC 2782 ordering, drawn with a seeded random.Random: deterministic, not timed."""

    def test_lower_priority_always_first(self) -> None:
        records = [(srv(20, 100, 1, "late"), False), (srv(10, 1, 1, "early"), True)]
        for seed in range(50):
            self.assertEqual([t.host for t in order_srv(records, random.Random(seed))], ["early", "late"])

    def test_weights_are_respected(self) -> None:
        records = [(srv(0, 10, 1, "ten"), False), (srv(0, 30, 1, "thirty"), True), (srv(0, 60, 1, "sixty"), False)]
        rng = random.Random(2026)
        draws = 20000
        first = Counter(order_srv(records, rng)[0].host for _ in range(draws))
        for host, share in (("ten", 0.1), ("thirty", 0.3), ("sixty", 0.6)):
            self.assertLess(abs(first[host] / draws - share), 0.015, (host, first))
        # Second place once "sixty" went first: ten:thirty = 1:3.
        second = Counter(order[1].host for order in (order_srv(records, rng) for _ in range(draws))
                         if order[0].host == "sixty")
        self.assertLess(abs(second["thirty"] / sum(second.values()) - 0.75), 0.02, second)

    def test_zero_weights_rarely_first_and_all_zero_uniform(self) -> None:
        rng = random.Random(7)
        records = [(srv(0, 0, 1, "zero"), False), (srv(0, 99, 1, "heavy"), False)]
        first = Counter(order_srv(records, rng)[0].host for _ in range(10000))
        self.assertLess(abs(first["zero"] / 10000 - 0.01), 0.005, first)
        records = [(srv(0, 0, 1, name), False) for name in ("a", "b", "c", "d")]
        first = Counter(order_srv(records, rng)[0].host for _ in range(8000))
        for name in "abcd":
            self.assertLess(abs(first[name] / 8000 - 0.25), 0.03, first)

    def test_same_seed_same_order(self) -> None:
        records = [(srv(0, w, 1, f"h{w}"), False) for w in (1, 2, 3, 4, 5)]
        self.assertEqual(order_srv(records, random.Random(3)), order_srv(records, random.Random(3)))


class Attempts:
    """connect_one under the test's control: every attempt is a Deferred the test fires."""

    def __init__(self) -> None:
        self.started: list[Target] = []
        self.pending: dict[str, Deferred] = {}
        self.cancelled: list[str] = []

    def __call__(self, target: Target) -> Deferred:
        self.started.append(target)
        attempt: Deferred = Deferred(lambda d: self.cancelled.append(target.host))
        self.pending[target.host] = attempt
        return attempt


class Conn:
    """A stand-in connection that records being closed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False


HOSTS = [Target("a", 1, False), Target("b", 2, True), Target("c", 3, False)]


class StaggerTests(SynchronousTestCase):
    """The race's timing with task.Clock."""

    def race(self, attempts, clock, targets=HOSTS, **kwargs) -> Deferred:
        closed = kwargs.pop("closed", [])
        return defer.ensureDeferred(connect_first(clock, targets, attempts, stagger=0.25, timeout=10.0,
                                                  close=closed.append, **kwargs))

    def test_first_success_starts_nothing_else(self) -> None:
        clock, attempts = task.Clock(), Attempts()
        result = self.race(attempts, clock)
        attempts.pending["a"].callback(Conn("a"))
        self.assertEqual(self.successResultOf(result)[0], HOSTS[0])
        self.assertEqual([t.host for t in attempts.started], ["a"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_next_starts_after_stagger_and_winner_cancels_the_rest(self) -> None:
        clock, attempts = task.Clock(), Attempts()
        result = self.race(attempts, clock)
        clock.advance(0.24)
        self.assertEqual([t.host for t in attempts.started], ["a"])
        clock.advance(0.01)
        self.assertEqual([t.host for t in attempts.started], ["a", "b"])
        clock.advance(0.25)
        self.assertEqual([t.host for t in attempts.started], ["a", "b", "c"])
        attempts.pending["b"].callback(Conn("b"))
        target, conn = self.successResultOf(result)
        self.assertEqual((target, conn.name), (HOSTS[1], "b"))
        self.assertEqual(sorted(attempts.cancelled), ["a", "c"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_failure_starts_the_next_at_once(self) -> None:
        clock, attempts = task.Clock(), Attempts()
        result = self.race(attempts, clock)
        attempts.pending["a"].errback(ConnectionRefusedError("nope"))
        self.assertEqual([t.host for t in attempts.started], ["a", "b"])
        clock.advance(0.1)
        attempts.pending["b"].errback(ConnectionRefusedError("nope"))
        self.assertEqual([t.host for t in attempts.started], ["a", "b", "c"])
        attempts.pending["c"].callback(Conn("c"))
        self.assertEqual(self.successResultOf(result)[0], HOSTS[2])

    def test_synchronous_failures_run_through(self) -> None:
        clock, tried = task.Clock(), []

        def connect_one(target):
            tried.append(target.host)
            if target.host != "c":
                raise OSError(f"no route to {target.host}")
            return defer.succeed(Conn("c"))

        self.assertEqual(self.successResultOf(self.race(connect_one, clock))[0], HOSTS[2])
        self.assertEqual(tried, ["a", "b", "c"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_late_connection_is_closed(self) -> None:
        clock, closed = task.Clock(), []
        late = Conn("a")
        slow: Deferred = Deferred(lambda d: d.callback(late))  # cannot stop: it connected as it was cancelled
        fast: Deferred = Deferred()
        result = self.race(lambda t: slow if t.host == "a" else fast, clock, targets=HOSTS[:2], closed=closed)
        clock.advance(0.25)
        winner = Conn("b")
        fast.callback(winner)
        self.assertIs(self.successResultOf(result)[1], winner)
        self.assertEqual(closed, [late])

    def test_all_failing_lists_every_reason(self) -> None:
        clock, attempts = task.Clock(), Attempts()
        result = self.race(attempts, clock)
        clock.advance(0.25)
        clock.advance(0.25)
        attempts.pending["c"].errback(ConnectionRefusedError("refused c"))
        attempts.pending["a"].errback(OSError("unreachable a"))
        self.assertNoResult(result)
        attempts.pending["b"].errback(ValueError("bad b"))
        error = self.failureResultOf(result, ConnectError).value
        self.assertEqual([t.host for t, _ in error.reasons], ["a", "b", "c"])
        self.assertIn("OSError: unreachable a", error.reasons[0][1])
        self.assertIn("ValueError: bad b", error.reasons[1][1])
        self.assertIn("ConnectionRefusedError", error.reasons[2][1])
        self.assertFalse(error.timed_out)
        self.assertEqual(error.condition, "remote-server-timeout")
        self.assertIn("b:2 (direct TLS): ValueError: bad b", str(error))

    def test_overall_timeout(self) -> None:
        clock, attempts = task.Clock(), Attempts()
        many = [Target(f"h{i}", i + 1, False) for i in range(60)]
        result = self.race(attempts, clock, targets=many)
        attempts.pending["h0"].errback(OSError("down"))
        clock.advance(10.0)
        error = self.failureResultOf(result, ConnectError).value
        self.assertTrue(error.timed_out)
        self.assertEqual(error.reasons[0], (many[0], "OSError: down"))
        self.assertEqual(error.reasons[1][1], "timed out after 10 s")
        self.assertEqual(error.reasons[-1][1], "not tried")
        self.assertEqual(len(attempts.cancelled), len(attempts.started) - 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancel_stops_everything(self) -> None:
        clock, attempts = task.Clock(), Attempts()
        result = self.race(attempts, clock)
        clock.advance(0.25)
        result.cancel()
        self.failureResultOf(result, CancelledError)
        self.assertEqual(sorted(attempts.cancelled), ["a", "b"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_no_targets(self) -> None:
        self.failureResultOf(self.race(Attempts(), task.Clock(), targets=[]), ConnectError)


class Greeter(Protocol):
    """Server side: says hello (unless the factory is silent), tells when it is gone."""

    def connectionMade(self) -> None:
        self.lost = when_lost(self)
        self.factory.connections.append(self)
        if not self.factory.accepted.called:
            self.factory.accepted.callback(self)
        if self.factory.greet:
            self.transport.write(b"hello")


@implementer(IHandshakeListener)
class Client(Protocol):
    """Client side: fires ``ready`` on the first bytes from the server (after the handshake with TLS)."""

    def __init__(self) -> None:
        self.made: Deferred = Deferred()
        self.ready: Deferred = Deferred()
        self.lost = when_lost(self)

    def connectionMade(self) -> None:
        self.made.callback(self)

    def handshakeCompleted(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        if not self.ready.called:
            self.ready.callback(data)

    def connectionLost(self, reason) -> None:
        if not self.ready.called:
            self.ready.errback(reason)


class RealSocketTests(DNSServerMixin, TestCase):
    """connect_first and endpoint_for over real loopback sockets, names from the test's DNS server."""

    def listen(self, tls: ssl.CertificateOptions | None = None, greet: bool = True) -> tuple[int, Factory]:
        factory = Factory.forProtocol(Greeter)
        factory.connections, factory.greet, factory.accepted = [], greet, Deferred()
        if tls is None:
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        else:
            port = reactor.listenSSL(0, factory, tls, interface="127.0.0.1")

        async def stop():
            await port.stopListening()
            for connection in factory.connections:
                if not connection.lost.called:
                    connection.transport.abortConnection()
                await connection.lost

        self.addCleanup(lambda: defer.ensureDeferred(stop()))
        return port.getHost().port, factory

    def setUp(self) -> None:
        self.clients: dict[Target, Client] = {}

    def refused_port(self) -> int:
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        number = port.getHost().port
        port.stopListening()
        return number

    def connect_one(self, resolver=None, tls_options=None):
        """Connect, then wait for the greeting (a TLS target counts once the handshake is through).

        Cancelled while connected but not greeted, the attempt hands its connection over (connect_first
        closes it); cancelled while connecting, it cancels the endpoint.
        """

        def attempt(target: Target) -> Deferred:
            client = Client()
            self.clients[target] = client
            self.addCleanup(self.close_client, client)
            endpoint = endpoint_for(reactor, target, tls_options, timeout=5.0, resolver=resolver)

            def cancel(result: Deferred) -> None:
                if client.transport is not None:
                    result.callback(client)
                else:
                    connecting.cancel()

            result: Deferred = Deferred(cancel)

            def settle(outcome, success: bool) -> None:
                if not result.called:
                    (result.callback if success else result.errback)(client if success else outcome)

            def connected(_protocol) -> None:
                client.ready.addCallbacks(settle, settle, callbackArgs=(True,), errbackArgs=(False,))

            connecting = endpoint.connect(Factory.forProtocol(lambda: client))
            connecting.addCallbacks(connected, settle, errbackArgs=(False,))
            return result

        return attempt

    async def close_client(self, client: Client) -> None:
        if client.transport is None:
            return
        if client.transport.connected:
            client.transport.abortConnection()
        await client.lost

    async def test_refused_first_target_then_the_second(self) -> None:
        good, factory = self.listen()
        found = [Target("127.0.0.1", self.refused_port(), False), Target("127.0.0.1", good, False)]
        target, client = await connect_first(reactor, found, self.connect_one(), stagger=1.0)
        self.assertEqual(target, found[1])
        self.assertEqual(len(factory.connections), 1)

    async def test_all_refused_reports_each(self) -> None:
        found = [Target("127.0.0.1", self.refused_port(), False), Target("127.0.0.1", self.refused_port(), False)]
        with self.assertRaises(ConnectError) as caught:
            await connect_first(reactor, found, self.connect_one(), stagger=1.0)
        self.assertEqual([t for t, _ in caught.exception.reasons], found)
        for _target, reason in caught.exception.reasons:
            self.assertIn("ConnectionRefusedError", reason)

    async def test_losing_connection_is_closed(self) -> None:
        silent_port, silent = self.listen(greet=False)
        greeting_port, greeting = self.listen()
        found = [Target("127.0.0.1", silent_port, False), Target("127.0.0.1", greeting_port, False)]
        plain, closed = self.connect_one(), []

        async def after_the_first_connected(target: Target) -> Client:
            await silent.accepted
            await self.clients[found[0]].made
            return await plain(target)

        def connect_one(target: Target) -> Deferred:
            return plain(target) if target == found[0] else defer.ensureDeferred(after_the_first_connected(target))

        def close(connection) -> None:
            closed.append(connection)
            close_connection(connection)

        target, _client = await connect_first(reactor, found, connect_one, stagger=0.05, close=close)
        self.assertEqual(target, found[1])
        # The first attempt was connected but not greeted when the second won: closed by connect_first.
        self.assertEqual(closed, [self.clients[found[0]]])
        await silent.connections[0].lost
        self.assertEqual(len(greeting.connections), 1)

    async def test_srv_and_address_records_from_dns_end_to_end(self) -> None:
        refused = self.refused_port()
        good, factory = self.listen()
        zone = Zone(b"test", {
            b"_xmpp-server._tcp.e2e.test": [srv(0, 0, refused, "a.e2e.test"), srv(1, 0, good, "b.e2e.test")],
            b"a.e2e.test": [dns.Record_A("127.0.0.1", ttl=60)],
            b"b.e2e.test": [dns.Record_AAAA("::1", ttl=60), dns.Record_A("127.0.0.1", ttl=60)],
        })
        resolver = self.resolver(self.start_dns(zone))
        found = await targets("e2e.test", resolver)
        self.assertEqual(found, [Target("a.e2e.test", refused, False), Target("b.e2e.test", good, False)])
        target, client = await connect_first(reactor, found, self.connect_one(resolver), stagger=1.0)
        self.assertEqual(target, found[1])
        self.assertEqual(client.transport.getPeer().host, "127.0.0.1")

    async def test_unknown_host_name_fails_that_target(self) -> None:
        resolver = self.resolver(self.start_dns(Zone(b"test", {})))
        with self.assertRaises(ConnectError) as caught:
            await connect_first(reactor, [Target("missing.test", 5269, False)], self.connect_one(resolver))
        self.assertIn("DNSLookupError", caught.exception.reasons[0][1])

    async def test_direct_tls_verified_against_the_domain(self) -> None:
        ca = make_ca()
        _leaf, pem = make_cert(ca, ["tls.test"])
        private = ssl.PrivateCertificate.loadPEM(pem)
        options = ssl.CertificateOptions(
            privateKey=private.privateKey.original, certificate=private.original,
            extraCertChain=[crypto.X509.from_cryptography(c) for c in ca.chain],
        )
        tls_port, _ = self.listen(options)
        plain_port, _ = self.listen()
        zone = Zone(b"test", {
            b"_xmpps-server._tcp.tls.test": [srv(0, 0, tls_port, "direct.tls.test")],
            b"_xmpp-server._tcp.tls.test": [srv(5, 0, plain_port, "direct.tls.test")],
            b"direct.tls.test": [dns.Record_A("127.0.0.1", ttl=60)],
        })
        resolver = self.resolver(self.start_dns(zone))
        found = await targets("tls.test", resolver)
        self.assertEqual([t.direct_tls for t in found], [True, False])
        # Certificate checked against the XMPP domain (tls.test), not the SRV host (direct.tls.test).
        good = ssl.optionsForClientTLS("tls.test", trustRoot=ca.trust_root())
        target, client = await connect_first(reactor, found, self.connect_one(resolver, good), stagger=2.0)
        self.assertEqual(target, found[0])
        self.assertIsNotNone(client.transport.getPeerCertificate())
        # A certificate that does not match: the direct TLS attempt fails, the STARTTLS port is next.
        wrong = ssl.optionsForClientTLS("other.test", trustRoot=ca.trust_root())
        with self.assertRaises(ConnectError) as caught:
            await connect_first(reactor, found[:1], self.connect_one(resolver, wrong))
        self.assertIn("VerificationError", caught.exception.reasons[0][1])
        target, client = await connect_first(reactor, found, self.connect_one(resolver, wrong), stagger=2.0)
        self.assertEqual(target, found[1])

    def test_direct_tls_needs_options(self) -> None:
        with self.assertRaises(ValueError):
            endpoint_for(reactor, Target("x.test", 5270, True), None)
