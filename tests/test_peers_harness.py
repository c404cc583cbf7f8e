"""The harness that runs real Prosody and ejabberd beside our servers (tests/support/peers.py).

Each peer starts with its own configuration, a slixmpp client logs in with a user the harness created, its
outgoing s2s connections follow the test routes (no DNS), and stop leaves no process behind. Prosody and
ejabberd federate with each other through the harness: SASL EXTERNAL on the test CA's certificates, dialback
when the certificates are not trusted, and the secure_auth / insecure_domains policies of each.
"""

from __future__ import annotations

import os
import re
import socket

from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.ssl import CertificateOptions, optionsForClientTLS
from twisted.trial.unittest import SkipTest, TestCase

from tests.support import peers
from tests.support.certs import make_ca, make_cert
from tests.support.peers import PeerServer, run_clients, start_ejabberd, start_prosody
from tests.support.server import free_port, test_ca

NS_STREAMS = "http://etherx.jabber.org/streams"


class StreamHeaderCatcher(protocol.Protocol):
    """Records what a connecting server sends until its stream header is complete, then hangs up."""

    def connectionMade(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if re.search(rb"<(stream:)?stream[^>]*>", self.data) and not self.factory.headers.called:
            self.factory.headers.callback(self.data.decode(errors="replace"))
            self.transport.loseConnection()


def listen_for_stream_header(test: TestCase) -> tuple[int, defer.Deferred]:
    """A TCP listener on 127.0.0.1 (free port) that fires with the first stream header received."""
    factory = protocol.ServerFactory.forProtocol(StreamHeaderCatcher)
    factory.headers = defer.Deferred()
    port = free_port()
    listening = reactor.listenTCP(port, factory, interface="127.0.0.1")
    test.addCleanup(listening.stopListening)
    return port, factory.headers


class FirstBytes(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        if not self.factory.first.called:
            self.factory.first.callback(data)
        self.transport.loseConnection()


def listen_for_first_bytes(test: TestCase) -> tuple[int, defer.Deferred]:
    """A TCP listener on 127.0.0.1 (free port) that fires with the first bytes a client sends."""
    factory = protocol.ServerFactory.forProtocol(FirstBytes)
    factory.first = defer.Deferred()
    port = free_port()
    listening = reactor.listenTCP(port, factory, interface="127.0.0.1")
    test.addCleanup(listening.stopListening)
    return port, factory.first


class FeaturesCatcher(protocol.Protocol):
    """Sends an s2s stream header on connect; fires ``done`` with (header, features) once features arrive."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.data = b""
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(
            f"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='{NS_STREAMS}' "
            f"xmlns:db='jabber:server:dialback' to='{self.domain}' from='remote.test' version='1.0'>".encode())

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        text = self.data.decode(errors="replace")
        end = re.search(r"</stream:features>|<stream:features\s*/>", text)
        if end and not self.done.called:
            header = re.search(r"<stream:stream[^>]*>", text)
            self.done.callback((header.group(0) if header else "", text[text.index("<stream:features"):end.end()]))
            self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        if not self.done.called:
            self.done.errback(AssertionError(f"stream ended before its features: {self.data!r}"))


async def s2s_features(peer: PeerServer, client_certificate: bool = False) -> tuple[str, str]:
    """Open a direct TLS s2s stream from remote.test to ``peer``; its stream header and stream features.

    Without ``client_certificate`` the peer's certificate is verified for its domain with the test CA;
    with it, remote.test presents a certificate (and chain) from the test CA.
    """
    ca = test_ca()
    if client_certificate:
        leaf, pem = make_cert(ca, ["remote.test"])
        options = CertificateOptions(privateKey=serialization.load_pem_private_key(pem, password=None),
                                     certificate=leaf, extraCertChain=list(ca.chain))
    else:
        options = optionsForClientTLS(peer.domain, trustRoot=ca.trust_root())
    endpoint = endpoints.wrapClientTLS(options, endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1",
                                                                             peer.s2s_tls_port))
    client = FeaturesCatcher(peer.domain)
    await endpoints.connectProtocol(endpoint, client)
    return await client.done.addTimeout(20, reactor)


def assert_stopped(test: TestCase, peer: PeerServer, pgid: int) -> None:
    """Nothing is left of the peer: its process group is empty and its ports are closed."""
    with test.assertRaises(ProcessLookupError):
        os.killpg(pgid, 0)
    for port in (peer.c2s_port, peer.s2s_port):
        with test.assertRaises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass


class PeerHarnessMixin:
    kind = ""

    async def start(self, domain: str, **options) -> PeerServer:
        starter = start_prosody if self.kind == "prosody" else start_ejabberd
        return await starter(self, domain, ca=test_ca(), **options)

    async def test_login_and_stop(self) -> None:
        """A user the harness created logs in over STARTTLS with the test CA; stop ends every process."""
        peer = await self.start(f"{self.kind}.test")
        self.assertEqual(peer.kind, self.kind)
        await peer.add_user("bob", "s3cret pass")
        results = await run_clients(peer, [{"jid": peer.jid("bob"), "password": "s3cret pass"}])
        self.assertTrue(results[0]["authenticated"], results)
        self.assertTrue(results[0]["bound"].startswith(f"bob@{self.kind}.test/"), results)
        wrong = await run_clients(peer, [{"jid": peer.jid("bob"), "password": "nope"}])
        self.assertFalse(wrong[0]["authenticated"], wrong)
        pgid = peer.process.pid
        status = await peer.stop()
        self.assertIsNotNone(status)
        assert_stopped(self, peer, pgid)
        self.assertIsNone(await peer.stop())  # twice is harmless

    async def test_routes_reach_the_listener_without_dns(self) -> None:
        """A message to a routed domain opens an s2s stream to the route's port (the domain has no DNS)."""
        port, headers = listen_for_stream_header(self)
        peer = await self.start(f"{self.kind}.test", routes={"remote.test": ("127.0.0.1", port)})
        await peer.add_user("bob", "pw-bob")
        clients = [{"jid": peer.jid("bob"), "password": "pw-bob",
                    "send": [{"to": "alice@remote.test", "body": "hello"}]}]
        results = await run_clients(peer, clients, timeout=5)
        self.assertTrue(results[0]["authenticated"], results)
        header = await headers.addTimeout(30, reactor)
        self.assertIn("jabber:server", header)
        self.assertRegex(header, r"""to=["']remote\.test["']""")
        self.assertRegex(header, rf"""from=["']{self.kind}\.test["']""")

    async def test_route_retried_after_a_failure(self) -> None:
        """A route to a port where nothing listens yet fails; once something listens, a later message gets
        through within seconds (ejabberd: ``retry_delay``, not its default 300 s lock-out)."""
        port = free_port()
        peer = await self.start(f"{self.kind}.test", routes={"remote.test": ("127.0.0.1", port)})
        await peer.add_user("bob", "pw-bob")
        clients = [{"jid": peer.jid("bob"), "password": "pw-bob",
                    "send": [{"to": "alice@remote.test", "body": "hello"}]}]
        await run_clients(peer, clients, timeout=5)
        await peer.wait_for_log(r"Failed to establish outbound s2s connection ejabberd\.test -> remote\.test"
                                if self.kind == "ejabberd" else
                                r"Sending error replies for 1 queued stanzas because of failed outgoing "
                                r"connection to remote\.test")
        factory = protocol.ServerFactory.forProtocol(StreamHeaderCatcher)
        factory.headers = defer.Deferred()
        listening = reactor.listenTCP(port, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        for _ in range(10):  # each try is a client login, ~1 s; the lock-out is at most 1 s
            await run_clients(peer, clients, timeout=5)
            if factory.headers.called:
                break
        self.assertTrue(factory.headers.called, f"no new connection to remote.test:\n{peer.logs()[-4000:]}")
        header = await factory.headers
        self.assertRegex(header, r"""to=["']remote\.test["']""")

    async def test_tls_routes_use_direct_tls(self) -> None:
        """A tls_routes domain gets a direct TLS connection (XEP-0368): a TLS ClientHello, no stream header."""
        port, first = listen_for_first_bytes(self)
        peer = await self.start(f"{self.kind}.test",
                                                     tls_routes={"remote.test": ("127.0.0.1", port)})
        await peer.add_user("bob", "pw-bob")
        clients = [{"jid": peer.jid("bob"), "password": "pw-bob",
                    "send": [{"to": "alice@remote.test", "body": "hello"}]}]
        await run_clients(peer, clients, timeout=5)
        data = await first.addTimeout(30, reactor)
        self.assertEqual(data[:1], b"\x16", data[:40])  # a TLS handshake record
        self.assertIn(b"remote.test", data)  # SNI

    async def test_direct_tls_listener_and_features(self) -> None:
        """``direct_tls=True``: s2s_tls_port speaks TLS with the peer's certificate; dialback is offered."""
        peer = await self.start(f"{self.kind}.test", direct_tls=True)
        self.assertIsNotNone(peer.s2s_tls_port)
        header, features = await s2s_features(peer)
        self.assertRegex(header, rf"""from=["']{self.kind}\.test["']""")
        self.assertIn("urn:xmpp:features:dialback", features)

    async def test_external_offered_to_a_trusted_certificate(self) -> None:
        """A remote server with a certificate from the test CA is offered SASL EXTERNAL."""
        peer = await self.start(f"{self.kind}.test", direct_tls=True)
        _, features = await s2s_features(peer, client_certificate=True)
        self.assertRegex(features, r"<mechanism>EXTERNAL</mechanism>")

    async def test_without_dialback_no_dialback_feature(self) -> None:
        peer = await self.start(f"{self.kind}.test", direct_tls=True, dialback=False)
        _, features = await s2s_features(peer, client_certificate=True)
        self.assertRegex(features, r"<mechanism>EXTERNAL</mechanism>")
        self.assertNotIn("urn:xmpp:features:dialback", features)


class ProsodyHarnessTests(PeerHarnessMixin, TestCase):
    kind = "prosody"
    timeout = 120

    async def test_bidi(self) -> None:
        """``bidi=True`` loads mod_s2s_bidi: XEP-0288 is offered on an encrypted stream; not by default."""
        peer = await self.start("prosody.test", direct_tls=True, bidi=True)
        _, features = await s2s_features(peer)
        self.assertIn("urn:xmpp:features:bidi", features)
        plain = await self.start("plain.test", direct_tls=True)
        _, features = await s2s_features(plain)
        self.assertNotIn("urn:xmpp:features:bidi", features)


class EjabberdHarnessTests(PeerHarnessMixin, TestCase):
    kind = "ejabberd"
    timeout = 180


class PeerFederationTests(TestCase):
    """Prosody and ejabberd federate through the harness: certificates, CA trust, policies and routes."""

    timeout = 240

    async def pair(self, prosody: dict, ejabberd: dict) -> tuple[PeerServer, PeerServer]:
        """prosody.test (with bob) and ejabberd.test (with carol), each routed to the other."""
        ejabberd_s2s = free_port()  # Prosody's route needs it before ejabberd starts
        first = await start_prosody(self, "prosody.test", **{"ca": test_ca(), **prosody},
                                    routes={"ejabberd.test": ("127.0.0.1", ejabberd_s2s)})
        second = await start_ejabberd(self, "ejabberd.test", **{"ca": test_ca(), **ejabberd}, s2s_port=ejabberd_s2s,
                                      routes={"prosody.test": ("127.0.0.1", first.s2s_port)})
        await first.add_user("bob", "pw-bob")
        await second.add_user("carol", "pw-carol")
        return first, second

    async def send(self, peer: PeerServer, user: str, to: str, body: str) -> None:
        sent = await run_clients(peer, [{"jid": peer.jid(user), "password": f"pw-{user}",
                                         "send": [{"to": to, "body": body}]}])
        self.assertTrue(sent[0]["authenticated"], sent)

    async def federate(self, prosody: dict, ejabberd: dict) -> tuple[PeerServer, PeerServer]:
        """bob@prosody.test and carol@ejabberd.test send each other a chat message; both arrive."""
        peers = await self.pair(prosody, ejabberd)
        bob = {"jid": "bob@prosody.test", "password": "pw-bob"}
        carol = {"jid": "carol@ejabberd.test", "password": "pw-carol"}
        # One direction at a time, each message stored offline, then fetched: a receiver that logged in to
        # ejabberd while the message crossed never got it (twice in full runs; a race at login, not studied
        # further), and a client that has received all it expects leaves, maybe before its own sends.
        for (peer, other), sender, receiver in ((peers, bob, carol), (peers[::-1], carol, bob)):
            body = f"hi {receiver['jid']}"
            await self.send(peer, sender["jid"].split("@")[0], receiver["jid"], body)
            await other.wait_for_offline(receiver["jid"].split("@")[0])
            received = await run_clients(other, [{**receiver, "expect": 1}], timeout=30)
            logs = peers[0].logs()[-8000:] + peers[1].logs()[-8000:]
            self.assertEqual([m["body"] for m in received[0]["received"]], [body], f"{received}\n{logs}")
            self.assertEqual(received[0]["received"][0]["from"].split("/")[0], sender["jid"])
        return peers

    async def test_sasl_external_both_ways(self) -> None:
        """Secure auth without dialback: only EXTERNAL (XEP-0178) with the test CA's certificates can work."""
        strict = {"secure_auth": True, "dialback": False}
        prosody, ejabberd = await self.federate(strict, strict)
        await ejabberd.wait_for_log(r"Accepted inbound s2s EXTERNAL authentication prosody\.test -> ejabberd\.test")
        await ejabberd.wait_for_log(r"Accepted outbound s2s EXTERNAL authentication ejabberd\.test -> prosody\.test")
        await prosody.wait_for_log(r"Accepting SASL EXTERNAL identity from ejabberd\.test")

    async def test_dialback_with_untrusted_certificates(self) -> None:
        """Each trusts a different CA: neither certificate verifies, so dialback (XEP-0220) authenticates."""
        prosody, ejabberd = await self.federate({}, {"ca": make_ca("other test CA")})
        await ejabberd.wait_for_log(r"Accepted inbound s2s dialback authentication prosody\.test -> ejabberd\.test")
        await ejabberd.wait_for_log(r"Accepted outbound s2s dialback authentication ejabberd\.test -> prosody\.test")

    async def test_insecure_domains_may_use_dialback(self) -> None:
        """Secure auth with the other domain listed as insecure: dialback over untrusted TLS is allowed."""
        prosody, ejabberd = await self.federate(
            {"secure_auth": True, "insecure_domains": ["ejabberd.test"]},
            {"secure_auth": True, "insecure_domains": ["prosody.test"], "ca": make_ca("other test CA")})
        await ejabberd.wait_for_log(r"Accepted inbound s2s dialback authentication prosody\.test -> ejabberd\.test")
        await ejabberd.wait_for_log(r"Accepted outbound s2s dialback authentication ejabberd\.test -> prosody\.test")

    async def test_prosody_secure_auth_refuses_untrusted_certificate(self) -> None:
        prosody, ejabberd = await self.pair({"secure_auth": True, "ca": make_ca("other test CA")}, {})
        await self.send(prosody, "bob", "carol@ejabberd.test", "refused")
        await prosody.wait_for_log(r"Forbidding insecure connection to/from ejabberd\.test because its certificate "
                                   r"is not trusted")
        await prosody.wait_for_log(r"Sending error replies for 1 queued stanzas because of failed outgoing "
                                   r"connection to ejabberd\.test")

    async def test_ejabberd_secure_auth_refuses_untrusted_certificate(self) -> None:
        prosody, ejabberd = await self.pair({"ca": make_ca("other test CA")}, {"secure_auth": True})
        await self.send(ejabberd, "carol", "bob@prosody.test", "refused")
        await ejabberd.wait_for_log(r"Failed to establish outbound s2s connection ejabberd\.test -> prosody\.test: "
                                    r"Peer certificate rejected")


class MissingPeerTests(TestCase):
    """Without the peer's package the tests that need it skip and say why."""

    async def test_missing_prosody_skips(self) -> None:
        self.patch(peers, "PROSODY", "/nonexistent/prosody")
        with self.assertRaises(SkipTest) as caught:
            await start_prosody(self, "prosody.test", ca=test_ca())
        self.assertIn("/nonexistent/prosody missing", str(caught.exception))

    async def test_missing_ejabberd_skips(self) -> None:
        self.patch(peers, "EJABBERDCTL", "/nonexistent/ejabberdctl")
        with self.assertRaises(SkipTest) as caught:
            await start_ejabberd(self, "ejabberd.test", ca=test_ca())
        self.assertIn("/nonexistent/ejabberdctl missing", str(caught.exception))

