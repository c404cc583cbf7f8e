"""XMPP over WebSocket (RFC 7395): framing, limits, bad input, pings, and the real listeners.

The unit tests drive the autobahn protocol with raw client bytes over a StringTransport and a task.Clock;
the integration tests use a raw WebSocket client on real sockets (plain and TLS), so every byte on the wire
is the test's own.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from types import SimpleNamespace

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import CertificateOptions, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from twisted.words.xish import domish

from tests.support.server import free_port, start_server
from xmppcluster.config import Listener, parse_text
from xmppcluster.core import namespaces as ns
from xmppcluster.core.server import XMPPServer
from xmppcluster.core.xml import parse_element
from xmppcluster.streams.websocket import XMPPWebSocketFactory, normalize_origin

FRAMING = ns.FRAMING
OPEN = f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>"
CLOSE = f"<close xmlns='{FRAMING}'/>"
PASSWORD = "pässword 1"

TEXT, BINARY, CLOSE_OP, PING, PONG = 1, 2, 8, 9, 10


# -- raw WebSocket framing (the client side, written here from RFC 6455) --------------------------------

def client_frame(payload: bytes | str, opcode: int = TEXT, *, masked: bool = True, fin: bool = True) -> bytes:
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def parse_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Complete server frames in ``data`` (unmasked, as RFC 6455 requires) and the unparsed rest."""
    frames = []
    while len(data) >= 2:
        opcode, length, offset = data[0] & 0x0F, data[1] & 0x7F, 2
        assert not data[1] & 0x80, "server frames must not be masked"
        if length == 126:
            if len(data) < 4:
                break
            length, offset = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            if len(data) < 10:
                break
            length, offset = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < offset + length:
            break
        frames.append((opcode, data[offset:offset + length]))
        data = data[offset + length:]
    return frames, data


def handshake_request(path: str = "/xmpp-websocket", protocols: str | None = "xmpp", origin: str | None = None,
                      host: str = "localhost") -> tuple[bytes, str]:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if protocols is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocols}")
    if origin is not None:
        lines.append(f"Origin: {origin}")
    accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), accept.decode()


def close_code(payload: bytes) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


# -- unit harness: one protocol on a StringTransport, time on a Clock -------------------------------------

class _Transport(StringTransport):
    def unregisterProducer(self) -> None:  # autobahn unregisters whether or not it registered
        self.producer = None

class Harness:
    def __init__(self, extra_config: str = "") -> None:
        config = parse_text("--virt-hosts=localhost\n--node-name=node1.test\n" + extra_config)
        self.clock = Clock()
        self.server = XMPPServer(config, SimpleNamespace(accounts=None), None, clock=self.clock)
        factory = XMPPWebSocketFactory(self.server, Listener("ws2s", 5290, "plain", "accept"))
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)  # autobahn's own timers
        self.protocol = factory.buildProtocol(None)
        self.transport = _Transport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        self.protocol.makeConnection(self.transport)
        self._rest = b""

    def handshake(self, **kwargs) -> bytes:
        request, self.accept = handshake_request(**kwargs)
        self.protocol.dataReceived(request)
        response = self.transport.value()
        self.transport.clear()
        return response

    def open(self) -> list[str]:
        response = self.handshake()
        assert response.startswith(b"HTTP/1.1 101"), response
        return self.send(OPEN)

    def send(self, payload: bytes | str, opcode: int = TEXT, **kwargs) -> list[str]:
        self.protocol.dataReceived(client_frame(payload, opcode, **kwargs))
        return self.texts()

    def frames(self) -> list[tuple[int, bytes]]:
        frames, self._rest = parse_frames(self._rest + self.transport.value())
        self.transport.clear()
        return frames

    def texts(self) -> list[str]:
        self.last_frames = self.frames()
        return [payload.decode() for opcode, payload in self.last_frames if opcode == TEXT]


class HandshakeTests(TestCase):
    def test_xmpp_subprotocol_is_echoed(self) -> None:
        h = Harness()
        response = h.handshake()
        self.assertTrue(response.startswith(b"HTTP/1.1 101"), response)
        self.assertIn(b"Sec-WebSocket-Protocol: xmpp\r\n", response)
        self.assertIn(f"Sec-WebSocket-Accept: {h.accept}".encode(), response)

    def test_xmpp_chosen_among_several(self) -> None:
        response = Harness().handshake(protocols="chat, xmpp")
        self.assertIn(b"Sec-WebSocket-Protocol: xmpp\r\n", response)

    def test_missing_subprotocol_is_refused_with_http_400(self) -> None:
        h = Harness()
        response = h.handshake(protocols=None)
        self.assertTrue(response.startswith(b"HTTP/1.1 400"), response)
        self.assertNotIn(b"101", response.split(b"\r\n")[0])
        self.assertIsNone(h.protocol.stream)

    def test_other_subprotocol_is_refused(self) -> None:
        response = Harness().handshake(protocols="chat")
        self.assertTrue(response.startswith(b"HTTP/1.1 400"), response)

    def test_default_allows_any_origin(self) -> None:
        response = Harness().handshake(origin="https://anything.example")
        self.assertTrue(response.startswith(b"HTTP/1.1 101"), response)

    def test_origin_allow_list(self) -> None:
        config = "ws2s/allowed-origins[s]=https://app.example.com,http://localhost:8080\n"
        self.assertTrue(Harness(config).handshake(origin="https://app.example.com").startswith(b"HTTP/1.1 101"))
        self.assertTrue(Harness(config).handshake(origin="https://APP.example.com:443").startswith(b"HTTP/1.1 101"))
        self.assertTrue(Harness(config).handshake(origin="http://localhost:8080").startswith(b"HTTP/1.1 101"))
        refused = Harness(config).handshake(origin="https://evil.example")
        self.assertTrue(refused.startswith(b"HTTP/1.1 403"), refused)
        self.assertTrue(Harness(config).handshake(origin="http://app.example.com").startswith(b"HTTP/1.1 403"))
        # Non-browser clients send no Origin; the allow-list is a browser protection.
        self.assertTrue(Harness(config).handshake().startswith(b"HTTP/1.1 101"))

    def test_normalize_origin(self) -> None:
        self.assertEqual(normalize_origin("HTTPS://Example.COM:443/"), "https://example.com")
        self.assertEqual(normalize_origin("http://example.com:8080"), "http://example.com:8080")
        self.assertEqual(normalize_origin("null"), "null")


class FramingTests(TestCase):
    def test_open_gets_open_and_features(self) -> None:
        h = Harness()
        opened, features = h.open()
        element = parse_element(opened)
        self.assertEqual((element.uri, element.name), (FRAMING, "open"))
        self.assertEqual(element["from"], "localhost")
        self.assertEqual(element["version"], "1.0")
        self.assertTrue(element["id"])
        self.assertEqual(element.getAttribute((ns.XML, "lang")), "en")
        # Each message parses alone: the stream prefix is declared on the features element itself.
        features = parse_element(features)
        self.assertEqual((features.uri, features.name), (ns.STREAMS, "features"))
        self.assertTrue(all(opcode == TEXT for opcode, _ in h.last_frames))

    def test_stanza_namespace_is_explicit(self) -> None:
        h = Harness()
        h.open()
        stanza = domish.Element((ns.CLIENT, "message"))
        stanza.addElement("body", content="hi")
        h.protocol.send(stanza)
        [text] = h.texts()
        self.assertEqual(parse_element(text).uri, ns.CLIENT)
        self.assertIn("xmlns='jabber:client'", text)

    def assertStreamError(self, texts: list[str], condition: str, frames, code: int = 1000) -> None:
        *_, error, close = texts
        error = parse_element(error)
        self.assertEqual((error.uri, error.name), (ns.STREAMS, "error"))
        self.assertEqual([c.name for c in error.elements(ns.STREAM_ERRORS)][0], condition)
        self.assertEqual((parse_element(close).uri, parse_element(close).name), (FRAMING, "close"))
        [(_, payload)] = [f for f in frames if f[0] == CLOSE_OP]
        self.assertEqual(close_code(payload), code)

    def test_stanza_before_open(self) -> None:
        h = Harness()
        h.handshake()
        texts = h.send("<message xmlns='jabber:client' to='a@localhost'><body>x</body></message>")
        # The error needs an open stream: <open/> first, then the error, then <close/>.
        self.assertEqual(parse_element(texts[0]).name, "open")
        self.assertStreamError(texts, "bad-format", h.last_frames)
        self.assertEqual(h.server.streams, set())

    def test_binary_message(self) -> None:
        h = Harness()
        h.open()
        texts = h.send(b"<presence xmlns='jabber:client'/>", BINARY)
        self.assertStreamError(texts, "unsupported-encoding", h.last_frames, code=1003)

    def test_oversized_message_is_refused_from_the_frame_header(self) -> None:
        h = Harness("--max-stanza-size=10000\n")
        h.open()
        body = "x" * 10001
        frame = client_frame(f"<message xmlns='jabber:client'><body>{body}</body></message>")
        h.protocol.dataReceived(frame[:200])  # the header announces the size: no need to wait for the rest
        texts = h.texts()
        self.assertStreamError(texts, "policy-violation", h.last_frames, code=1009)
        self.assertTrue(h.transport.disconnecting)

    def test_message_at_the_limit_is_accepted(self) -> None:
        h = Harness("--max-stanza-size=10000\n")
        h.open()
        stanza = "<presence xmlns='jabber:client'><status>{}</status></presence>"
        stanza = stanza.format("x" * (10000 - len(stanza) + 2))
        self.assertEqual(len(stanza), 10000)
        texts = h.send(stanza)
        # Not yet authenticated: the core answers, but not with a size error.
        self.assertNotIn("policy-violation", "".join(texts))

    def test_two_elements_in_one_message(self) -> None:
        h = Harness()
        h.open()
        texts = h.send("<presence xmlns='jabber:client'/><presence xmlns='jabber:client'/>")
        self.assertStreamError(texts, "not-well-formed", h.last_frames)

    def test_restricted_xml(self) -> None:
        h = Harness()
        h.open()
        texts = h.send("<!DOCTYPE x [<!ENTITY a 'b'>]><presence xmlns='jabber:client'/>")
        self.assertStreamError(texts, "restricted-xml", h.last_frames)

    def test_element_without_namespace(self) -> None:
        h = Harness()
        h.open()
        texts = h.send("<presence/>")
        self.assertStreamError(texts, "invalid-namespace", h.last_frames)

    def test_unmasked_client_frame_is_a_protocol_error(self) -> None:
        h = Harness()
        h.open()
        texts = h.send("<presence xmlns='jabber:client'/>", masked=False)
        self.assertEqual(texts, [])
        [(_, payload)] = [f for f in h.last_frames if f[0] == CLOSE_OP]
        self.assertEqual(close_code(payload), 1002)

    def test_client_close(self) -> None:
        h = Harness()
        h.open()
        self.assertEqual(len(h.server.streams), 1)
        texts = h.send(CLOSE)
        [close] = texts
        self.assertEqual(parse_element(close).name, "close")
        [(_, payload)] = [f for f in h.last_frames if f[0] == CLOSE_OP]
        self.assertEqual(close_code(payload), 1000)
        self.assertEqual(h.server.streams, set())

    def test_redirect_sends_see_other_uri(self) -> None:
        h = Harness()
        h.open()
        h.protocol.redirect("wss://t2.example.com:5291/xmpp-websocket")
        [close] = h.texts()
        close = parse_element(close)
        self.assertEqual((close.uri, close.name), (FRAMING, "close"))
        self.assertEqual(close["see-other-uri"], "wss://t2.example.com:5291/xmpp-websocket")
        self.assertIn(CLOSE_OP, [opcode for opcode, _ in h.last_frames])
        self.assertEqual(h.server.streams, set())
        h.protocol.send(domish.Element((ns.CLIENT, "message")))  # late stanzas are dropped
        self.assertEqual(h.texts(), [])

    def test_client_that_never_finishes_the_close_handshake_is_dropped(self) -> None:
        h = Harness()
        h.open()
        h.send("<presence/>")  # a stream error: our close frame goes out
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(2)
        self.assertTrue(h.transport.disconnecting)

    def test_connection_lost_ends_the_stream(self) -> None:
        h = Harness()
        h.open()
        h.protocol.connectionLost(SimpleNamespace(value=ConnectionError("gone")))
        self.assertEqual(h.server.streams, set())
        self.assertEqual(h.clock.getDelayedCalls(), [])


class TimerTests(TestCase):
    def test_ping_on_a_quiet_connection_and_timeout_without_pong(self) -> None:
        h = Harness("ws2s/ping-interval[I]=30\n--unauthenticated-timeout=3600\n")
        h.open()
        h.clock.advance(29)
        self.assertEqual(h.frames(), [])
        h.clock.advance(1)
        self.assertEqual([opcode for opcode, _ in h.frames()], [PING])
        h.clock.advance(30)  # no pong within an interval: the peer is gone
        self.assertStreamError(h.texts(), "connection-timeout")

    def test_pong_keeps_the_connection(self) -> None:
        h = Harness("ws2s/ping-interval[I]=30\n--unauthenticated-timeout=3600\n")
        h.open()
        h.clock.advance(30)  # a quiet interval: a ping
        [(opcode, payload)] = h.frames()
        self.assertEqual(opcode, PING)
        h.clock.advance(5)
        h.protocol.dataReceived(client_frame(payload, PONG))
        h.clock.advance(25)  # 30 s after the ping: answered, and only 25 s quiet
        self.assertEqual(h.frames(), [])
        h.clock.advance(5)
        self.assertEqual([opcode for opcode, _ in h.frames()], [PING])
        for _ in range(5):  # answered pings keep a silent client connected indefinitely
            h.protocol.dataReceived(client_frame(b"", PONG))
            h.clock.advance(30)
            self.assertEqual([opcode for opcode, _ in h.frames()], [PING])
        self.assertEqual(len(h.server.streams), 1)

    def test_traffic_means_no_ping(self) -> None:
        h = Harness("ws2s/ping-interval[I]=30\n--unauthenticated-timeout=3600\n")
        h.open()
        h.clock.advance(20)
        h.protocol.dataReceived(client_frame(b"", PING))  # a client ping is traffic (and gets a pong)
        self.assertEqual([opcode for opcode, _ in h.frames()], [PONG])
        h.clock.advance(10)
        self.assertEqual(h.frames(), [])
        h.clock.advance(20)  # 30 s after the client's ping
        self.assertEqual([opcode for opcode, _ in h.frames()], [PING])

    def test_idle_timeout(self) -> None:
        h = Harness("ws2s/ping-interval[I]=0\nws2s/idle-timeout[I]=100\n--unauthenticated-timeout=3600\n")
        h.open()
        h.clock.advance(60)
        h.protocol.dataReceived(client_frame(b"", PING))
        h.frames()
        h.clock.advance(99)
        self.assertEqual(h.frames(), [])
        h.clock.advance(1)
        self.assertStreamError(h.texts(), "connection-timeout")

    def assertStreamError(self, texts: list[str], condition: str) -> None:
        *_, error, close = texts
        self.assertEqual([c.name for c in parse_element(error).elements(ns.STREAM_ERRORS)][0], condition)
        self.assertEqual(parse_element(close).name, "close")


# -- integration: real listeners, raw client on real sockets ---------------------------------------------

class RawWebSocket(Protocol):
    """A minimal WebSocket client: our own handshake and frames, messages queued as they arrive."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.head: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()
        self._buffer = b""
        self._upgraded = False
        self._messages: list[str] = []
        self._waiting: list[defer.Deferred] = []
        self.close_codes: list[int | None] = []

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if not self._upgraded:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self._buffer = self._buffer[:end + 4], self._buffer[end + 4:]
            self._upgraded = head.startswith(b"HTTP/1.1 101")
            self.head.callback(head)
            if not self._upgraded:
                return
        frames, self._buffer = parse_frames(self._buffer)
        for opcode, payload in frames:
            if opcode == TEXT:
                self._messages.append(payload.decode())
            elif opcode == CLOSE_OP:
                self.close_codes.append(close_code(payload))
                self.transport.write(client_frame(payload[:2], CLOSE_OP))
            elif opcode == PING:
                self.transport.write(client_frame(payload, PONG))
        while self._messages and self._waiting:
            self._waiting.pop(0).callback(self._messages.pop(0))

    def connectionLost(self, reason: object = None) -> None:
        for waiting in self._waiting:
            waiting.errback(ConnectionError("closed"))
        self._waiting.clear()
        self.closed.callback(None)

    def send(self, text: str) -> None:
        self.transport.write(client_frame(text))

    def next(self) -> defer.Deferred:
        if self._messages:
            return defer.succeed(self._messages.pop(0))
        waiting: defer.Deferred = defer.Deferred()
        self._waiting.append(waiting)
        return waiting

    async def element(self) -> domish.Element:
        return parse_element(await self.next())


async def connect_ws(port: int, *, tls: bool = False, path: str = "/xmpp-websocket", trust=None,
                     protocols: str | None = "xmpp") -> tuple[RawWebSocket, bytes]:
    request, _ = handshake_request(path, protocols)
    client = RawWebSocket(request)
    if tls:
        options = (optionsForClientTLS("localhost", trustRoot=trust) if trust is not None
                   else CertificateOptions(verify=False))
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port, options)
    else:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await connectProtocol(endpoint, client)
    head = await client.head
    return client, head


async def disconnect(client: RawWebSocket) -> None:
    client.transport.loseConnection()
    await client.closed


async def open_stream(client: RawWebSocket) -> domish.Element:
    client.send(OPEN)
    opened = await client.element()
    assert (opened.uri, opened.name) == (FRAMING, "open"), opened.toXml()
    return await client.element()  # the features


class ListenerTests(TestCase):
    timeout = 30

    async def connect_and_open(self, port: int, **kwargs) -> RawWebSocket:
        client, head = await connect_ws(port, **kwargs)
        self.addCleanup(disconnect, client)
        self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
        self.assertIn(b"Sec-WebSocket-Protocol: xmpp", head)
        features = await open_stream(client)
        self.assertEqual(features.name, "features")
        return client

    async def test_ws2s_ports_serve_root_and_xmpp_websocket(self) -> None:
        running = await start_server(self, components=("ws2s",))
        plain, ssl = running.ports["ws2s"]["plain"], running.ports["ws2s"]["ssl"]
        for path in ("/", "/xmpp-websocket"):
            await self.connect_and_open(plain, path=path)
            await self.connect_and_open(ssl, path=path, tls=True, trust=running.ca.trust_root())
        client, head = await connect_ws(plain, path="/elsewhere")
        self.addCleanup(disconnect, client)
        self.assertTrue(head.startswith(b"HTTP/1.1 404"), head)

    async def test_bosh_ports_serve_xmpp_websocket(self) -> None:
        running = await start_server(self, components=("bosh",))
        await self.connect_and_open(running.ports["bosh"]["plain"])
        await self.connect_and_open(running.ports["bosh"]["ssl"], tls=True, trust=running.ca.trust_root())

    async def test_missing_subprotocol_on_a_real_port(self) -> None:
        running = await start_server(self, components=("ws2s",))
        client, head = await connect_ws(running.ports["ws2s"]["plain"], protocols=None)
        self.addCleanup(disconnect, client)
        self.assertTrue(head.startswith(b"HTTP/1.1 400"), head)

    async def test_login_over_wss_with_channel_binding_data(self) -> None:
        running = await start_server(self, components=("ws2s",))
        await running.add_user("alice@localhost", PASSWORD)
        client = await self.connect_and_open(running.ports["ws2s"]["ssl"], tls=True, trust=running.ca.trust_root())
        credentials = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
        client.send(f"<auth xmlns='{ns.SASL}' mechanism='PLAIN'>{credentials}</auth>")
        self.assertEqual((await client.element()).name, "success")
        features = await open_stream(client)  # a new <open/> after SASL (RFC 7395 section 3.5)
        self.assertIn("bind", [child.name for child in features.elements()])
        client.send(f"<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='{ns.BIND}'>"
                    "<resource>web</resource></bind></iq>")
        bound = await client.element()
        self.assertEqual(bound["type"], "result")
        self.assertEqual(str(next(bound.elements(ns.BIND, "bind")).firstChildElement()), "alice@localhost/web")
        client.send("<message xmlns='jabber:client' to='alice@localhost/web' type='chat' id='m1'>"
                    "<body>to myself</body></message>")
        echoed = await client.element()
        self.assertEqual((echoed.name, echoed["from"]), ("message", "alice@localhost/web"))
        self.assertEqual(str(next(echoed.elements(ns.CLIENT, "body"))), "to myself")
        [stream] = running.server.streams
        channel = stream.transport.channel_info()
        self.assertTrue(channel.secure)
        self.assertTrue(channel.bindings, "TLS WebSocket connections expose channel-binding data")
        client.send(CLOSE)
        self.assertEqual((await client.element()).name, "close")
        await client.closed
        self.assertEqual(client.close_codes, [1000])


class SeedTests(TestCase):
    """The seed's three lines, added to the default configuration, give a plain and a TLS WebSocket port."""

    timeout = 60

    async def test_seed_ws2s_lines(self) -> None:
        plain, ssl = free_port(), free_port()
        seed = (f"ws2s/connections/ports[i]={plain},{ssl}\n"
                f"ws2s/connections/{ssl}/socket=ssl\n"
                f"ws2s/connections/{ssl}/type=accept\n")
        # Only so as not to collide with other servers on this machine: the default c2s/bosh ports stay shut.
        # Everything else is the built-in default (certs/default.pem generated on first start, SQLite).
        config = parse_text("c2s/connections/ports[i]=\nbosh/connections/ports[i]=\n" + seed)
        listeners = {(lst.port, lst.socket, lst.type) for lst in config.listeners("ws2s")}
        self.assertEqual(listeners, {(plain, "plain", "accept"), (ssl, "ssl", "accept")})
        from xmppcluster.ops.service import makeService

        service = makeService(config)
        service.startService()
        self.addCleanup(service.stopService)
        await service.ready
        for port, tls in ((plain, False), (ssl, True)):
            client, head = await connect_ws(port, tls=tls, path="/")
            self.addCleanup(disconnect, client)
            self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
            features = await open_stream(client)
            mechanisms = [str(c) for m in features.elements(ns.SASL, "mechanisms") for c in m.elements()]
            # Channel binding is offered only on TLS: proof that 'socket=ssl' made the port TLS (PLAIN would
            # not be: a loopback client counts as encrypted, --secure-loopback).
            self.assertEqual("SCRAM-SHA-256-PLUS" in mechanisms, tls, mechanisms)
