"""Certificate store, SNI selection, reload, generation and channel binding, over real TLS on loopback."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import sys
import types

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import SSL4ClientEndpoint, SSL4ServerEndpoint, TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, CertificateOptions, TLSVersion, optionsForClientTLS
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.trial import unittest
from zope.interface import implementer

from tests.support.certs import make_ca, make_cert
from xmppcluster.core import tls
from xmppcluster.core.tls import CertificateError, CertificateStore


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@implementer(IHandshakeListener)
class _Peer(Protocol):
    """Either end: records the handshake, echoes (server) or collects (client) application data.

    A server peer given ``starttls`` waits for ``STARTTLS\\n`` in clear, answers ``PROCEED\\n`` and starts TLS with it;
    a client peer given ``starttls`` sends ``STARTTLS\\n`` and starts TLS on ``PROCEED\\n``.
    """

    def __init__(self, echo: bool, starttls=None) -> None:
        self.echo = echo
        self.starttls = starttls
        self.handshake: defer.Deferred = defer.Deferred()
        self.lost: defer.Deferred = defer.Deferred()
        self.received = b""
        self._waiting: list[tuple[bytes, defer.Deferred]] = []

    def connectionMade(self) -> None:
        if self.starttls is not None and not self.echo:
            self.transport.write(b"STARTTLS\n")

    def handshakeCompleted(self) -> None:
        self.handshake.callback(self)

    def dataReceived(self, data: bytes) -> None:
        if self.starttls is not None and not tls.is_tls(self.transport):
            if self.echo and data == b"STARTTLS\n":
                self.transport.write(b"PROCEED\n")
                self.transport.startTLS(self.starttls)
            elif not self.echo and data == b"PROCEED\n":
                self.transport.startTLS(self.starttls)
            return
        if self.echo:
            self.transport.write(data)
            return
        self.received += data
        for expected, d in list(self._waiting):
            if expected in self.received:
                self._waiting.remove((expected, d))
                d.callback(self.received)

    def wait_for(self, expected: bytes) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((expected, d))
        self.dataReceived(b"")
        return d

    def connectionLost(self, reason) -> None:
        if not self.handshake.called:
            self.handshake.errback(reason)
        self.lost.callback(None)


@implementer(IOpenSSLClientConnectionCreator)
class _SNIOverride:
    """Verify the server against ``verify_name`` but send ``sni`` (or none) as the server name."""

    def __init__(self, verify_name: str, sni: bytes | None, trust_root: Certificate) -> None:
        self._inner = optionsForClientTLS(verify_name, trustRoot=trust_root, sendServerName=False)
        self._sni = sni

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:  # noqa: N802
        conn = self._inner.clientConnectionForTLS(tlsProtocol)
        if self._sni is not None:
            conn.set_tlsext_host_name(self._sni)
        return conn


class _TLSTestCase(unittest.TestCase):
    """Makes a test CA and a certs directory; runs loopback servers and clients and tears them down."""

    def setUp(self) -> None:
        self.ca = make_ca()
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.default_leaf, _ = make_cert(self.ca, ["default.example"], self.path("default"))
        self.peers: list[_Peer] = []
        self.server_peers: defer.DeferredQueue = defer.DeferredQueue()
        self.addCleanup(self._close_all)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name + ".pem")

    async def _close_all(self) -> None:
        for peer in self.peers:
            peer.handshake.addErrback(lambda _: None)  # failed handshakes the test did not wait for
            if peer.transport is not None and not peer.lost.called:
                peer.transport.abortConnection()
        await defer.gatherResults([p.lost for p in self.peers])

    def _peer(self, echo: bool, starttls=None) -> _Peer:
        peer = _Peer(echo, starttls)
        self.peers.append(peer)
        if echo:
            self.server_peers.put(peer)
        return peer

    async def listen(self, creator, starttls: bool = False) -> int:
        factory = Factory.forProtocol(lambda: self._peer(True, creator if starttls else None))
        if starttls:
            endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        else:
            endpoint = SSL4ServerEndpoint(reactor, 0, creator, interface="127.0.0.1")
        port = await endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    async def connect(self, port: int, creator, starttls: bool = False) -> _Peer:
        """Connect and finish the handshake (raises if it fails)."""
        peer = self._peer(False, creator if starttls else None)
        if starttls:
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        else:
            endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port, creator)
        factory = Factory.forProtocol(lambda: peer)
        await endpoint.connect(factory)
        return await peer.handshake

    def client(self, name: str, **kw) -> object:
        return optionsForClientTLS(name, trustRoot=self.ca.trust_root(), **kw)

    @staticmethod
    def peer_cert(peer: _Peer) -> x509.Certificate:
        return peer.transport.getHandle().get_peer_certificate(as_cryptography=True)


class SelectionTests(_TLSTestCase):
    """SNI selection over real connections (clients verify the chain and the host name)."""

    async def test_default_without_sni(self) -> None:
        make_cert(self.ca, ["a.example"], self.path("a.example"))
        port = await self.listen(CertificateStore(self.dir).server_creator())
        peer = await self.connect(port, self.client("default.example", sendServerName=False))
        self.assertEqual(_der(self.peer_cert(peer)), _der(self.default_leaf))

    async def test_unknown_sni_gets_default(self) -> None:
        make_cert(self.ca, ["a.example"], self.path("a.example"))
        port = await self.listen(CertificateStore(self.dir).server_creator())
        peer = await self.connect(port, _SNIOverride("default.example", b"nosuch.example", self.ca.trust_root()))
        self.assertEqual(_der(self.peer_cert(peer)), _der(self.default_leaf))

    async def test_sni_exact_name(self) -> None:
        a_leaf, _ = make_cert(self.ca, ["a.example"], self.path("a.example"))
        make_cert(self.ca, ["b.example"], self.path("b.example"))
        port = await self.listen(CertificateStore(self.dir).server_creator())
        peer = await self.connect(port, self.client("a.example"))
        self.assertEqual(_der(self.peer_cert(peer)), _der(a_leaf))

    async def test_sni_wildcard_file(self) -> None:
        leaf, _ = make_cert(self.ca, ["*.b.example"], self.path("*.b.example"))
        port = await self.listen(CertificateStore(self.dir).server_creator())
        peer = await self.connect(port, self.client("chat.b.example"))
        self.assertEqual(_der(self.peer_cert(peer)), _der(leaf))

    async def test_sni_matches_vhost_certificate_sans(self) -> None:
        leaf, _ = make_cert(self.ca, ["c.example", "*.c.example"], self.path("c.example"))
        port = await self.listen(CertificateStore(self.dir).server_creator())
        peer = await self.connect(port, self.client("muc.c.example"))
        self.assertEqual(_der(self.peer_cert(peer)), _der(leaf))

    async def test_sni_is_normalized(self) -> None:
        leaf, _ = make_cert(self.ca, ["a.example"], self.path("a.example"))
        port = await self.listen(CertificateStore(self.dir).server_creator())
        peer = await self.connect(port, _SNIOverride("a.example", b"A.Example.", self.ca.trust_root()))
        self.assertEqual(_der(self.peer_cert(peer)), _der(leaf))

    def test_selection_order(self) -> None:
        exact, _ = make_cert(self.ca, ["x.d.example"], self.path("x.d.example"))
        wild_file, _ = make_cert(self.ca, ["*.d.example"], self.path("*.d.example"))
        vhost, _ = make_cert(self.ca, ["d.example", "*.d.example", "y.d.example"], self.path("d.example"))
        store = CertificateStore(self.dir)
        self.assertEqual(store.names(), ["*.d.example", "d.example", "default", "x.d.example"])
        self.assertEqual(store.certificate_for("x.d.example"), exact)
        self.assertEqual(store.certificate_for("z.d.example"), wild_file)
        self.assertEqual(store.certificate_for("y.d.example"), wild_file)  # a *.parent file beats a SAN match
        self.assertEqual(store.certificate_for("d.example"), vhost)
        self.assertEqual(store.certificate_for("D.Example."), vhost)
        self.assertEqual(store.certificate_for("other.example"), self.default_leaf)
        self.assertEqual(store.certificate_for(None), self.default_leaf)

    def test_san_match_without_wildcard_file(self) -> None:
        vhost, _ = make_cert(self.ca, ["e.example", "chat.e.example"], self.path("e.example"))
        store = CertificateStore(self.dir)
        self.assertEqual(store.certificate_for("chat.e.example"), vhost)
        self.assertEqual(store.certificate_for("other.e.example"), self.default_leaf)

    def test_custom_default_name(self) -> None:
        leaf, _ = make_cert(self.ca, ["e.example"], self.path("e.example"))
        os.unlink(self.path("default"))
        store = CertificateStore(self.dir, "E.example")
        self.assertEqual(store.certificate_for("unknown.example"), leaf)


class StartTLSTests(_TLSTestCase):
    """creator_for(name): the stream's `to` picks the certificate unless the client names another by SNI."""

    async def test_stream_to_without_sni(self) -> None:
        leaf, _ = make_cert(self.ca, ["a.example"], self.path("a.example"))
        port = await self.listen(CertificateStore(self.dir).creator_for("a.example"), starttls=True)
        peer = await self.connect(port, self.client("a.example", sendServerName=False), starttls=True)
        self.assertEqual(_der(self.peer_cert(peer)), _der(leaf))
        self.assertTrue(tls.is_tls(peer.transport))
        peer.transport.write(b"ping")
        await peer.wait_for(b"ping")

    async def test_sni_preferred_over_stream_to(self) -> None:
        make_cert(self.ca, ["a.example"], self.path("a.example"))
        b_leaf, _ = make_cert(self.ca, ["b.example"], self.path("b.example"))
        port = await self.listen(CertificateStore(self.dir).creator_for("a.example"), starttls=True)
        peer = await self.connect(port, self.client("b.example"), starttls=True)
        self.assertEqual(_der(self.peer_cert(peer)), _der(b_leaf))

    async def test_unknown_sni_keeps_stream_to(self) -> None:
        leaf, _ = make_cert(self.ca, ["a.example"], self.path("a.example"))
        port = await self.listen(CertificateStore(self.dir).creator_for("a.example"), starttls=True)
        client = _SNIOverride("a.example", b"nosuch.example", self.ca.trust_root())
        peer = await self.connect(port, client, starttls=True)
        self.assertEqual(_der(self.peer_cert(peer)), _der(leaf))


class ReloadTests(_TLSTestCase):
    async def test_reload_new_cert_for_new_connections_old_connection_stays(self) -> None:
        old_leaf, _ = make_cert(self.ca, ["a.example"], self.path("a.example"))
        store = CertificateStore(self.dir)
        port = await self.listen(store.server_creator())
        first = await self.connect(port, self.client("a.example"))

        new_leaf, _ = make_cert(self.ca, ["a.example"], self.path("a.example"))
        make_cert(self.ca, ["b.example"], self.path("b.example"))
        store.reload()
        self.assertEqual(store.names(), ["a.example", "b.example", "default"])

        second = await self.connect(port, self.client("a.example"))
        self.assertEqual(_der(self.peer_cert(second)), _der(new_leaf))
        self.assertEqual(_der(self.peer_cert(first)), _der(old_leaf))
        third = await self.connect(port, self.client("b.example"))
        self.assertEqual(self.peer_cert(third).subject, x509.Name.from_rfc4514_string("CN=b.example"))
        first.transport.write(b"still here")
        await first.wait_for(b"still here")

    async def test_reload_error_keeps_old_set(self) -> None:
        leaf, _ = make_cert(self.ca, ["a.example"], self.path("a.example"))
        store = CertificateStore(self.dir)
        port = await self.listen(store.server_creator())
        with open(self.path("a.example"), "wb") as f:
            f.write(b"garbage")
        error = self.assertRaises(CertificateError, store.reload)
        self.assertIn(self.path("a.example"), str(error))
        self.assertEqual(store.names(), ["a.example", "default"])
        peer = await self.connect(port, self.client("a.example"))
        self.assertEqual(_der(self.peer_cert(peer)), _der(leaf))


class ValidationTests(_TLSTestCase):
    def assertBad(self, path: str, fragment: str, **kw) -> None:
        error = self.assertRaises(CertificateError, CertificateStore, self.dir, **kw)
        message = str(error)
        self.assertIn(path, message)
        self.assertIn(fragment, message)
        self.assertNotIn("\n", message)

    def test_key_mismatch(self) -> None:
        make_cert(self.ca, ["a.example"], self.path("a.example"), key_mismatch=True)
        self.assertBad(self.path("a.example"), "does not match")

    def test_expired(self) -> None:
        make_cert(self.ca, ["a.example"], self.path("a.example"), expired=True)
        self.assertBad(self.path("a.example"), "expired")

    def test_expired_default(self) -> None:
        make_cert(self.ca, ["default.example"], self.path("default"), expired=True)
        self.assertBad(self.path("default"), "expired")

    def test_not_yet_valid(self) -> None:
        make_cert(self.ca, ["a.example"], self.path("a.example"), not_yet_valid=True)
        self.assertBad(self.path("a.example"), "not valid before")

    def test_expiry_uses_clock(self) -> None:
        clock = task.Clock()
        clock.advance(self.default_leaf.not_valid_after_utc.timestamp() + 1)
        self.assertBad(self.path("default"), "expired", clock=clock)
        clock = task.Clock()
        clock.advance(self.default_leaf.not_valid_after_utc.timestamp() - 60)
        CertificateStore(self.dir, clock=clock)

    def test_garbage(self) -> None:
        with open(self.path("a.example"), "wb") as f:
            f.write(b"not a pem file\n")
        self.assertBad(self.path("a.example"), "no private key")

    def test_key_without_certificate(self) -> None:
        _, pem = make_cert(self.ca, ["a.example"])
        with open(self.path("a.example"), "wb") as f:
            f.write(pem.split(b"-----BEGIN CERTIFICATE-----")[0])
        self.assertBad(self.path("a.example"), "no parsable certificate")

    def test_unreadable(self) -> None:
        if os.geteuid() == 0:
            raise unittest.SkipTest("root reads mode-000 files")
        make_cert(self.ca, ["a.example"], self.path("a.example"))
        os.chmod(self.path("a.example"), 0)
        self.assertBad(self.path("a.example"), "cannot read")

    def test_directory_named_pem(self) -> None:
        os.mkdir(self.path("a.example"))
        self.assertBad(self.path("a.example"), "cannot read")

    def test_encrypted_key(self) -> None:
        leaf, pem = make_cert(self.ca, ["a.example"])
        key = serialization.load_pem_private_key(pem, password=None)
        encrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        with open(self.path("a.example"), "wb") as f:
            f.write(encrypted + leaf.public_bytes(serialization.Encoding.PEM))
        self.assertBad(self.path("a.example"), "encrypted")

    def test_missing_default(self) -> None:
        os.unlink(self.path("default"))
        self.assertBad(self.path("default"), "missing")

    def test_missing_directory(self) -> None:
        error = self.assertRaises(CertificateError, CertificateStore, os.path.join(self.dir, "nope"))
        self.assertIn("nope", str(error))


class GenerationTests(_TLSTestCase):
    async def test_generate_default_on_first_start(self) -> None:
        directory = os.path.join(self.dir, "fresh")
        with capturedLogs() as events:
            store = CertificateStore(directory, generate_names=["gen.example", "*.gen.example"])
        self.assertEqual(len([e for e in events if "self-signed" in e.get("log_format", "")]), 1)
        path = os.path.join(directory, "default.pem")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(store.names(), ["default"])
        cert = store.certificate_for(None)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["gen.example", "*.gen.example"])
        # A client that trusts exactly this certificate verifies it (host name included).
        trust = Certificate.loadPEM(cert.public_bytes(serialization.Encoding.PEM))
        port = await self.listen(store.server_creator())
        peer = await self.connect(port, optionsForClientTLS("muc.gen.example", trustRoot=trust))
        self.assertEqual(_der(self.peer_cert(peer)), _der(cert))

    def test_generate_bad_names(self) -> None:
        directory = os.path.join(self.dir, "fresh")
        error = self.assertRaises(CertificateError, CertificateStore, directory, generate_names=["bad name"])
        self.assertIn(os.path.join(directory, "default.pem"), str(error))

    def test_existing_default_not_regenerated(self) -> None:
        with open(self.path("default"), "rb") as f:
            before = f.read()
        store = CertificateStore(self.dir, generate_names=["gen.example"])
        with open(self.path("default"), "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(store.certificate_for(None), self.default_leaf)

    def _gencert(self, *args, **kw) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        code = tls.gencert_main(*args, **kw)
        return code, out.getvalue(), err.getvalue()

    def _fake_config(self, certs: str) -> None:
        class ConfigError(Exception):
            pass

        def load(path):
            if path == "broken.properties":
                raise ConfigError("broken.properties: line 1: nonsense")
            return types.SimpleNamespace(ssl_certs_location=certs)

        fake = types.ModuleType("xmppcluster.config")
        fake.ConfigError, fake.load = ConfigError, load
        saved = sys.modules.get("xmppcluster.config")
        sys.modules["xmppcluster.config"] = fake
        self.addCleanup(
            lambda: sys.modules.__setitem__("xmppcluster.config", saved)
            if saved is not None
            else sys.modules.pop("xmppcluster.config", None)
        )

    def _sans(self, path: str) -> list[str]:
        with open(path, "rb") as f:
            cert = x509.load_pem_x509_certificates(f.read())[0]
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )

    def test_gencert_writes_into_certs_location_and_refuses_overwrite(self) -> None:
        certs = os.path.join(self.dir, "certs")
        self._fake_config(certs)
        code, out, _ = self._gencert("etc/init.properties", ["Chat.Example", "muc.chat.example"])
        path = os.path.join(certs, "chat.example.pem")
        self.assertEqual((code, out), (0, path + "\n"))
        self.assertEqual(self._sans(path), ["chat.example", "muc.chat.example"])
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(CertificateStore(certs, "chat.example").names(), ["chat.example"])

        with open(path, "rb") as f:
            before = f.read()
        code, out, err = self._gencert("etc/init.properties", ["chat.example"])
        self.assertEqual((code, out), (1, ""))
        self.assertIn(path, err)
        self.assertEqual(err.count("\n"), 1)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), before)

        code, out, _ = self._gencert("etc/init.properties", ["chat.example", "other.example"], force=True)
        self.assertEqual(code, 0)
        self.assertEqual(self._sans(path), ["chat.example", "other.example"])

    def test_gencert_out(self) -> None:
        out_path = os.path.join(self.dir, "x", "mine.pem")
        code, out, _ = self._gencert("does-not-matter", ["x.example"], out=out_path)
        self.assertEqual((code, out), (0, out_path + "\n"))
        self.assertEqual(self._sans(out_path), ["x.example"])

    def test_gencert_bad_input(self) -> None:
        self._fake_config(os.path.join(self.dir, "certs"))
        code, _, err = self._gencert("broken.properties", ["x.example"])
        self.assertEqual(code, 1)
        self.assertIn("line 1", err)
        for bad in (["../evil"], ["a/b.example"], ["bad_name!"]):
            code, _, err = self._gencert("etc/init.properties", bad)
            self.assertEqual(code, 1, bad)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "certs")))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "evil.pem")))


class ChannelBindingTests(_TLSTestCase):
    async def _pair(self, **client_kw) -> tuple[_Peer, _Peer, x509.Certificate]:
        leaf, _ = make_cert(self.ca, ["a.example"], self.path("a.example"))
        port = await self.listen(CertificateStore(self.dir).server_creator())
        client = await self.connect(port, self.client("a.example", **client_kw))
        server = await self.server_peers.get()
        await server.handshake
        return server, client, leaf

    async def test_tls13_both_types_match(self) -> None:
        server, client, leaf = await self._pair()
        self.assertEqual(server.transport.getHandle().get_protocol_version_name(), "TLSv1.3")
        for side in (server, client):
            self.assertEqual(tls.channel_binding_types(side.transport), ["tls-exporter", "tls-server-end-point"])
        exporter = tls.channel_binding(server.transport, "tls-exporter")
        self.assertEqual(len(exporter), 32)
        self.assertEqual(exporter, tls.channel_binding(client.transport, "tls-exporter"))
        end_point = tls.channel_binding(server.transport, "tls-server-end-point")
        self.assertEqual(end_point, hashlib.sha256(_der(leaf)).digest())
        self.assertEqual(end_point, tls.channel_binding(client.transport, "tls-server-end-point"))
        self.assertIsNone(tls.channel_binding(server.transport, "tls-unique"))

    async def test_tls12_has_no_exporter(self) -> None:
        options = {"lowerMaximumSecurityTo": TLSVersion.TLSv1_2}
        server, client, leaf = await self._pair(extraCertificateOptions=options)
        self.assertEqual(server.transport.getHandle().get_protocol_version_name(), "TLSv1.2")
        for side in (server, client):
            self.assertEqual(tls.channel_binding_types(side.transport), ["tls-server-end-point"])
            self.assertIsNone(tls.channel_binding(side.transport, "tls-exporter"))
            self.assertEqual(
                tls.channel_binding(side.transport, "tls-server-end-point"), hashlib.sha256(_der(leaf)).digest()
            )

    def test_not_tls(self) -> None:
        transport = StringTransport()
        self.assertFalse(tls.is_tls(transport))
        self.assertIsNone(tls.channel_binding(transport, "tls-exporter"))
        self.assertEqual(tls.channel_binding_types(transport), [])


class PolicyTests(_TLSTestCase):
    async def _try_tls11(self, server_creator) -> _Peer:
        port = await self.listen(server_creator)
        options = CertificateOptions(
            trustRoot=self.ca.trust_root(),
            insecurelyLowerMinimumTo=TLSVersion.TLSv1_1,
            lowerMaximumSecurityTo=TLSVersion.TLSv1_1,
        )
        context = options.getContext()
        context.set_cipher_list(b"ALL:@SECLEVEL=0")
        return await self.connect(port, options)

    async def test_tls11_refused(self) -> None:
        # Control: the same client does get through to a server that allows TLS 1.1, so the refusal below is ours.
        leaf, pem = make_cert(self.ca, ["default.example"])
        permissive = CertificateOptions(
            privateKey=serialization.load_pem_private_key(pem, password=None),
            certificate=leaf,
            extraCertChain=list(self.ca.chain),
            insecurelyLowerMinimumTo=TLSVersion.TLSv1_0,
        )
        permissive.getContext().set_cipher_list(b"ALL:@SECLEVEL=0")
        try:
            peer = await self._try_tls11(permissive)
        except SSL.Error as e:
            raise unittest.SkipTest(f"this OpenSSL cannot speak TLS 1.1 at all: {e}") from None
        self.assertEqual(peer.transport.getHandle().get_protocol_version_name(), "TLSv1.1")
        d = defer.ensureDeferred(self._try_tls11(CertificateStore(self.dir).server_creator()))
        error = await self.assertFailure(d, SSL.Error)
        self.assertIn("version", str(error).lower())

    async def test_cbc_suite_refused_on_tls12(self) -> None:
        # Twisted's default list would accept ECDHE-ECDSA-AES128-SHA; our policy is ECDHE + AEAD only.
        port = await self.listen(CertificateStore(self.dir).server_creator())
        options = CertificateOptions(trustRoot=self.ca.trust_root(), lowerMaximumSecurityTo=TLSVersion.TLSv1_2)
        options.getContext().set_cipher_list(b"ECDHE-ECDSA-AES128-SHA")
        await self.assertFailure(defer.ensureDeferred(self.connect(port, options)), SSL.Error)

    def test_context_options(self) -> None:
        context = CertificateStore(self.dir)._snapshot.default.context
        current = context.set_options(0)  # returns the option mask (the context is still unused here)
        for flag in ("OP_NO_TLSv1", "OP_NO_TLSv1_1", "OP_NO_COMPRESSION", "OP_NO_RENEGOTIATION", "OP_NO_TICKET"):
            self.assertTrue(current & getattr(SSL, flag), flag)
