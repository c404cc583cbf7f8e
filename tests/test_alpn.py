"""ALPN (RFC 7301) on every TLS listener, with Python's ``ssl`` as the client.

c2s selects ``xmpp-client`` (XEP-0368) on direct TLS and after STARTTLS; BOSH and WebSocket over https select
``http/1.1``; a client whose list has nothing we speak gets no ALPN answer and the handshake goes on (no
``no_application_protocol``, no ``internal_error``). Checked on every context the certificate store builds:
the default one, the one a vhost's stream ``to`` picks after STARTTLS, the one SNI switches to, and the ones a
reload rebuilds. Each check also proves which certificate was served and that the stream works afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import socket
import ssl
import xml.etree.ElementTree as ET

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.clients.raw import SASL, RawClient, q
from tests.clients.tip1 import _WS_GUID, Session, WebSocket
from tests.support.certs import make_cert
from tests.support.server import RunningServer, start_server, test_ca

NODE = "node1.test"
DOMAINS = ("example2.com", "example3.com")
UNKNOWN = "unknown.example"
PASSWORD = "alpn pass"
HTTPBIND = "http://jabber.org/protocol/httpbind"


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def client_context(ca_file: str, alpn: list[str] | None) -> ssl.SSLContext:
    """The chain is verified against the test CA; which leaf was served is checked by the caller."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    return context


class SslClient(RawClient):
    """RawClient over the stdlib ``ssl`` module, offering ``alpn`` and sending ``sni`` (None: no SNI)."""

    def __init__(self, port: int, *, domain: str, alpn: list[str] | None, sni: str | None, ca_file: str,
                 direct_tls: bool) -> None:
        self.alpn = alpn
        self.sni = sni
        super().__init__(port, domain=domain, ca_file=ca_file, direct_tls=direct_tls)

    def _wrap_tls(self) -> None:
        assert self.ca_file is not None
        self.tls = self.sock = client_context(self.ca_file, self.alpn).wrap_socket(self.raw, server_hostname=self.sni)

    def handshake(self) -> tuple[str | None, bytes]:
        """(the ALPN protocol the server selected, the DER of the leaf it served)."""
        assert isinstance(self.tls, ssl.SSLSocket)
        return self.tls.selected_alpn_protocol(), self.tls.getpeercert(binary_form=True)


def c2s(port: int, *, domain: str, alpn: list[str] | None, sni: str | None, ca_file: str,
        direct_tls: bool) -> tuple[str | None, bytes, str]:
    """Direct TLS (or STARTTLS), then SCRAM and bind: (selected ALPN, served leaf, bound JID)."""
    client = SslClient(port, domain=domain, alpn=alpn, sni=sni, ca_file=ca_file, direct_tls=direct_tls)
    try:
        if not direct_tls:
            client.open()
            client.starttls()
        selected, leaf = client.handshake()
        if direct_tls:
            client.open()
        result = client.scram("user", PASSWORD)
        assert result.tag == q(SASL, "success"), ET.tostring(result)
        return selected, leaf, client.bind("alpn")
    finally:
        client.close()


def _tls(port: int, sni: str | None, alpn: list[str] | None, ca_file: str) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        return client_context(ca_file, alpn).wrap_socket(raw, server_hostname=sni)
    except BaseException:
        raw.close()
        raise


def bosh(port: int, *, domain: str, alpn: list[str] | None, sni: str | None,
         ca_file: str) -> tuple[str | None, bytes, ET.Element]:
    """A BOSH session request over https (HTTP/1.1 whatever ALPN said): (selected ALPN, leaf, response body)."""
    tls = _tls(port, sni, alpn, ca_file)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.sock = tls
    try:
        selected, leaf = tls.selected_alpn_protocol(), tls.getpeercert(binary_form=True)
        body = (f"<body xmlns='{HTTPBIND}' rid='1000' to='{domain}' wait='5' hold='1' ver='1.11' "
                "xmlns:xmpp='urn:xmpp:xbosh' xmpp:version='1.0'/>")
        connection.request("POST", "/http-bind", body.encode(), {"Content-Type": "text/xml", "Host": domain})
        answer = connection.getresponse()
        assert answer.status == 200, (answer.status, answer.read()[:200])
        created = ET.fromstring(answer.read())
        terminate = f"<body xmlns='{HTTPBIND}' rid='1001' sid='{created.get('sid')}' type='terminate'/>"
        connection.request("POST", "/http-bind", terminate.encode(), {"Content-Type": "text/xml", "Host": domain})
        connection.getresponse().read()
        return selected, leaf, created
    finally:
        connection.close()


class _UpgradedWebSocket(WebSocket):
    """tip1's WebSocket framing over a TLS socket made here (so the ALPN offer is ours)."""

    def __init__(self, tls: ssl.SSLSocket, host: str, port: int) -> None:
        self.host, self.port, self.sock, self.buffer = host, port, tls, b""
        key = base64.b64encode(os.urandom(16))
        tls.sendall((f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n"
                     "Sec-WebSocket-Protocol: xmpp\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest()).decode()
        assert head.startswith(b"HTTP/1.1 101 ") and accept.encode() in head, head


def wss(port: int, *, domain: str, alpn: list[str] | None, sni: str | None,
        ca_file: str) -> tuple[str | None, bytes, str]:
    """RFC 7395 over wss: (selected ALPN, served leaf, bound JID)."""
    tls = _tls(port, sni, alpn, ca_file)
    selected, leaf = tls.selected_alpn_protocol(), tls.getpeercert(binary_form=True)
    session = Session(_UpgradedWebSocket(tls, domain, port), domain)
    try:
        return selected, leaf, session.login("user", PASSWORD, "alpn")
    finally:
        session.close()


#: ALPN offers (None: no ALPN extension) -> what c2s selects / what the https listeners select.
C2S_OFFERS = ((["xmpp-client"], "xmpp-client"), (["h2", "xmpp-client"], "xmpp-client"), (["h2", "foo"], None),
              (["http/1.1"], None), (None, None))
HTTP_OFFERS = ((["http/1.1"], "http/1.1"), (["h2", "http/1.1"], "http/1.1"), (["h2"], None),
               (["xmpp-client"], None), (None, None))


class ALPNTestCase(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.certs_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.certs_dir)
        self.ca_file = os.path.join(self.certs_dir, "..", "ca.pem")
        with open(self.ca_file, "wb") as f:
            f.write(test_ca().root_pem())
        self.leaves = self.write_certificates()
        self.running: RunningServer = await start_server(
            self, f"--ssl-certs-location={self.certs_dir}\n", components=("c2s", "bosh", "ws2s"), domains=DOMAINS)
        for domain in DOMAINS:
            await self.running.add_user(f"user@{domain}", PASSWORD)

    def write_certificates(self) -> dict[str, bytes]:
        """A default certificate for the node and one per vhost (SNI switches to those): name -> leaf DER."""
        ca = test_ca()
        leaves = {"default": _der(make_cert(ca, [NODE], os.path.join(self.certs_dir, "default.pem"))[0])}
        for domain in DOMAINS:
            leaves[domain] = _der(make_cert(ca, [domain], os.path.join(self.certs_dir, f"{domain}.pem"))[0])
        return leaves

    def port(self, component: str) -> int:
        return self.running.ports[component]["ssl"]

    def expected_leaf(self, sni: str | None) -> bytes:
        return self.leaves[sni] if sni in DOMAINS else self.leaves["default"]

    # -- the checks (blocking; run in a thread) -------------------------------------------------------

    def check_direct(self, snis: tuple[str | None, ...]) -> None:
        """Direct-TLS c2s: every offer, for every SNI (no SNI and an unknown one stay on the default context)."""
        for sni in snis:
            domain = sni if sni in DOMAINS else DOMAINS[0]
            for offer, selected in C2S_OFFERS:
                got, leaf, jid = c2s(self.port("c2s"), domain=domain, alpn=offer, sni=sni, ca_file=self.ca_file,
                                     direct_tls=True)
                self.assertEqual(got, selected, (sni, offer))
                self.assertEqual(leaf, self.expected_leaf(sni), (sni, offer))
                self.assertTrue(jid.startswith(f"user@{domain}/"), jid)

    def check_starttls(self) -> None:
        """STARTTLS without SNI: the vhost's own context (picked by the stream ``to``), same ALPN answers."""
        for domain in DOMAINS:
            for offer, selected in C2S_OFFERS:
                got, leaf, jid = c2s(self.running.ports["c2s"]["plain"], domain=domain, alpn=offer, sni=None,
                                     ca_file=self.ca_file, direct_tls=False)
                self.assertEqual(got, selected, (domain, offer))
                self.assertEqual(leaf, self.leaves[domain], (domain, offer))
                self.assertTrue(jid.startswith(f"user@{domain}/"), jid)

    def check_https(self, snis: tuple[str | None, ...]) -> None:
        """BOSH (5281) and WebSocket (5291) over https: http/1.1 or nothing, and the session works either way."""
        for sni in snis:
            domain = sni if sni in DOMAINS else DOMAINS[0]
            for offer, selected in HTTP_OFFERS:
                got, leaf, created = bosh(self.port("bosh"), domain=domain, alpn=offer, sni=sni, ca_file=self.ca_file)
                self.assertEqual((got, leaf), (selected, self.expected_leaf(sni)), ("bosh", sni, offer))
                self.assertTrue(created.get("sid"), ET.tostring(created))
                got, leaf, jid = wss(self.port("ws2s"), domain=domain, alpn=offer, sni=sni, ca_file=self.ca_file)
                self.assertEqual((got, leaf), (selected, self.expected_leaf(sni)), ("wss", sni, offer))
                self.assertTrue(jid.startswith(f"user@{domain}/"), jid)


class DirectTLSTests(ALPNTestCase):
    async def test_default_context(self) -> None:
        await deferToThread(self.check_direct, (None, NODE, UNKNOWN))

    async def test_sni_switched_context(self) -> None:
        await deferToThread(self.check_direct, DOMAINS)


class STARTTLSTests(ALPNTestCase):
    async def test_per_domain_context(self) -> None:
        await deferToThread(self.check_starttls)


class HTTPSTests(ALPNTestCase):
    async def test_default_and_sni_switched_contexts(self) -> None:
        await deferToThread(self.check_https, (None, DOMAINS[1]))


class ReloadTests(ALPNTestCase):
    async def test_reloaded_contexts(self) -> None:
        self.leaves = self.write_certificates()  # new keys in place: the served leaf proves the new contexts
        self.running.server.certs.reload()
        await deferToThread(self.check_direct, (None, DOMAINS[0]))
        await deferToThread(self.check_starttls)
        await deferToThread(self.check_https, (DOMAINS[0],))


def exchange(port: int, alpn: list[str], request: bytes, ca_file: str) -> tuple[str | None, bytes]:
    """Direct TLS offering ``alpn``, send ``request``, read until the server closes or ends the stream:
    (selected ALPN, answer)."""
    with _tls(port, None, alpn, ca_file) as tls:
        selected = tls.selected_alpn_protocol()
        tls.sendall(request)
        answer = b""
        try:
            # Until the server closes, or ends the XMPP stream (its TLS close can wait for the drop timer).
            while b"</stream:stream>" not in answer and (data := tls.recv(65536)):
                answer += data
        except (ssl.SSLError, ConnectionResetError):
            pass
        return selected, answer


class CrossProtocolTests(ALPNTestCase):
    """No overlap never aborts the handshake; what the client then sends is answered by the listener's protocol."""

    async def test_h2_client_without_alpn_gets_an_http_error(self) -> None:
        """An h2-only client that ignores the missing ALPN answer and sends the h2 preface: an HTTP/1.1 error."""
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        selected, answer = await deferToThread(exchange, self.port("bosh"), ["h2"], preface, self.ca_file)
        self.assertIsNone(selected)
        self.assertRegex(answer, rb"^HTTP/1\.1 [45]\d\d ")

    async def test_http_request_on_c2s_is_not_reflected(self) -> None:
        """A browser's request sent to the c2s TLS port (ALPACA): a stream error that echoes none of it."""
        marker = b"<script>alpaca-7f3a</script>"
        request = b"POST / HTTP/1.1\r\nHost: example2.com\r\nContent-Length: 28\r\n\r\n" + marker
        selected, answer = await deferToThread(exchange, self.port("c2s"), ["h2", "http/1.1"], request,
                                               self.ca_file)
        self.assertIsNone(selected)
        self.assertIn(b"<stream:error>", answer)
        self.assertNotIn(b"alpaca", answer)
        self.assertNotIn(b"HTTP", answer)


class SelectCallbackTests(TestCase):
    def test_connection_without_a_listener_gets_no_alpn(self) -> None:
        """Never a raise (OpenSSL would answer it with internal_error): no listener known, no protocol picked."""
        from xmppcluster.core.tls import select_alpn

        connection = SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD))
        self.assertIs(select_alpn(connection, [b"xmpp-client"]), SSL.NO_OVERLAPPING_PROTOCOLS)
        connection.set_app_data(object())
        self.assertIs(select_alpn(connection, [b"xmpp-client", b"http/1.1"]), SSL.NO_OVERLAPPING_PROTOCOLS)
