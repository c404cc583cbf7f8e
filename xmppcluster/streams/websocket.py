"""XMPP over WebSocket (RFC 7395): the ``xmpp`` subprotocol, served by autobahn inside twisted.web.

Each WebSocket text message carries exactly one complete element: ``<open/>`` and ``<close/>`` in the
framing namespace, or a stanza / stream-level element that declares its own namespaces. This module only
frames; negotiation (SASL, bind), limits and routing are the stream core's.

What bad input gets (also in docs/web-clients.rst):

* no ``xmpp`` in ``Sec-WebSocket-Protocol`` -> HTTP 400, no upgrade; Origin not allowed -> HTTP 403;
* a binary message -> stream error ``unsupported-encoding``, ``<close/>``, WebSocket close 1003;
* a message over the stanza size limit -> stream error ``policy-violation``, ``<close/>``, close 1009
  (refused from the frame header, before the payload is buffered);
* broken XML or two elements in one message -> ``not-well-formed`` (restricted XML: ``restricted-xml``);
* anything but ``<open/>`` where an ``<open/>`` is due -> ``bad-format``;
* a top-level element without a namespace -> ``invalid-namespace``;
* an unmasked client frame -> WebSocket close 1002 (protocol error), no XMPP answer.

Autobahn is used only through this module (protocol hooks ``onConnect``/``onOpen``/``onMessage``/``onClose``,
``sendMessage``/``sendClose``/``sendPing``), so moving to ``twisted.web.websocket`` once it can negotiate a
subprotocol and bound message sizes touches nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import txaio
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.words.xish import domish

from xmppcluster.auth.sasl import ChannelInfo
from xmppcluster.core import namespaces as ns
from xmppcluster.core.serializer import serialize as fast_serialize
from xmppcluster.core.xml import StreamFault, parse_element
from xmppcluster.streams.core import STANZAS, ClientStream, StreamHeader, tls_channel_info
from xmppcluster.streams.flow import InputGate, OutputQueue
from xmppcluster.streams.peers import client_policy
from xmppcluster.streams.throttle import Lease, ReadThrottle, connection_limit, log_budget

if TYPE_CHECKING:
    from xmppcluster.config import Listener
    from xmppcluster.core.server import XMPPServer

__all__ = ["SUBPROTOCOL", "WebSocketSettings", "XMPPWebSocketFactory", "XMPPWebSocketProtocol",
           "websocket_resource", "websocket_root"]

log = Logger()

SUBPROTOCOL = "xmpp"
_PREFIXES = {ns.STREAMS: "stream"}
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

# WebSocket close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_TOO_BIG = 1009
#: Seconds to wait for the client's close frame after ours before dropping the TCP connection.
CLOSE_HANDSHAKE_TIMEOUT = 2.0


def serialize(element: domish.Element) -> str:
    """One element as a self-contained RFC 7395 message: every namespace declared on it."""
    return fast_serialize(element, "", _PREFIXES)


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` lower-cased, without a default port or trailing slash (``null`` stays)."""
    origin = origin.strip().lower().rstrip("/")
    if origin in ("*", "null"):
        return origin
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return origin
    if not parts.scheme or not parts.hostname:
        return origin
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is None or _DEFAULT_PORTS.get(parts.scheme) == port:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


class WebSocketSettings:
    """The ``ws2s/*`` settings and stream limits, read once per listener."""

    def __init__(self, server: XMPPServer) -> None:
        settings = server.config.websocket
        origins = [normalize_origin(o) for o in settings.allowed_origins if o.strip()]
        self.any_origin = "*" in origins
        self.origins = frozenset(origins)
        self.ping_interval = settings.ping_interval
        self.idle_timeout = settings.idle_timeout
        limits = server.limits
        self.max_message_bytes = limits.max_stanza_bytes
        self.max_elements = limits.max_elements
        self.max_depth = limits.max_depth

    def origin_allowed(self, origin: str | None) -> bool:
        """Browsers always send Origin; a client without one (not a browser) is not restricted by it."""
        if not origin or self.any_origin:
            return True
        return normalize_origin(origin) in self.origins


class XMPPWebSocketProtocol(WebSocketServerProtocol):
    """One XMPP-over-WebSocket connection: the :class:`~xmppcluster.streams.core.StreamTransport` for RFC 7395."""

    can_starttls = False
    _close_code = CLOSE_NORMAL
    #: autobahn's own logger: it writes an info line for every refused handshake and a warning for every
    #: connection a client breaks (bad frame, refused handshake). Those are the client's doing; our own lines
    #: (per-address budget, streams/throttle.py) say what happened, so autobahn keeps only its errors.
    log = txaio.make_logger(level="error")

    def __init__(self, server: XMPPServer, listener: Listener, settings: WebSocketSettings) -> None:
        super().__init__()
        self.server = server
        self.listener = listener
        self.settings = settings
        self.secure = listener.tls  # TLS on this connection
        self.hop_secure = listener.tls  # the client's hop counts as encrypted (streams/peers.py)
        self.peer_host = "?"
        self.leases: list[Lease] = []  # of the per-address limit: this connection, the client behind a proxy
        self.stream: ClientStream | None = None
        self.origin: str | None = None
        self._opened = False  # an <open/> started the current stream (reset on restart)
        self._closing = False
        self._last_heard = 0.0  # clock time of the last inbound frame
        self._ping_sent_at: float | None = None
        self._ping_timer: Any = None
        self._idle_timer: Any = None
        self._drop_timer: Any = None
        self._throttle: ReadThrottle | None = None
        self._gate: InputGate | None = None
        self._output: OutputQueue | None = None

    # StreamTransport wants ``peer`` to be the client's address; autobahn keeps its own ``peer`` string
    # ("tcp4:1.2.3.4:5678"), so ours is exposed under the protocol's name through this property.
    @property
    def peer(self) -> str:  # type: ignore[override]
        return self.peer_host

    @peer.setter
    def peer(self, value: str) -> None:
        self._autobahn_peer = value

    # -- autobahn hooks -------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        address = self.transport.getPeer()
        self.peer_host = getattr(address, "host", "?")
        super().connectionMade()

    def onConnect(self, request: Any) -> str:
        if SUBPROTOCOL not in request.protocols:
            raise ConnectionDeny(400, "the 'xmpp' WebSocket subprotocol is required (RFC 7395)")
        client = client_policy(self.server).origin(self.peer_host, self.secure, self.listener.component,
                                                   request.headers.get)
        proxy, self.peer_host, self.hop_secure = self.peer_host, client.address, client.secure
        if not self.settings.origin_allowed(request.origin):
            self._refused("origin {origin} not allowed", origin=request.origin)
            raise ConnectionDeny(403, "origin not allowed")
        if client.address != proxy:  # behind a trusted proxy: the client it names counts, not the proxy
            limit = connection_limit(self.server)
            lease = limit.acquire(client.address)
            if lease is None:
                self._refused("more than {limit} connections", limit=limit.limit)
                raise ConnectionDeny(429, "too many connections from your address")
            self.leases.append(lease)
        self.origin = request.origin
        return SUBPROTOCOL

    def _refused(self, why: str, **fields: Any) -> None:
        """One line per refused handshake, at info while the client's address has log budget left."""
        emit = log.info if log_budget(self.server).allow(self.peer_host) else log.debug
        emit("ws2s: refused WebSocket from {peer}: " + why, peer=self.peer_host, **fields)

    def connectionLost(self, reason: Any = None) -> None:
        for lease in self.leases:
            lease.release()
        self.leases.clear()
        super().connectionLost(reason)

    def onOpen(self) -> None:
        # No STARTTLS on WebSocket: a domain's tls-required is enforced by SASL on an unencrypted hop.
        self.stream = ClientStream(self.server, self, tls_required=False, offer_starttls=False)
        clock = self.server.clock
        limits = self.server.limits
        # Input: read throttle -> gate (stopped while SASL works, or while our output backs up) -> parser.
        self._gate = InputGate(self.transport, lambda message: self._message(*message))
        self._throttle = ReadThrottle(self._gate.valve(), clock, limits.client_rate, limits.client_burst,
                                      self._gate.received)
        # Output: we, not twisted.web's channel (done with this connection), are the transport's producer.
        self._output = OutputQueue(self._frame, limits.client_output_limit,
                                   on_pause=lambda: self.stream and self.stream.hold_input("output"),
                                   on_resume=lambda: self.stream and self.stream.release_input("output"),
                                   on_overflow=self._output_overflow)
        self.transport.unregisterProducer()
        self.transport.registerProducer(self._output, True)
        self._last_heard = clock.seconds()
        if self.settings.ping_interval > 0:
            self._ping_timer = clock.callLater(self.settings.ping_interval, self._ping_tick)
        self._idle_timer = clock.callLater(self.settings.idle_timeout, self._idle)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.stream is None or self._closing:
            return
        self._traffic()
        self._throttle.received((payload, isBinary), len(payload))

    def _message(self, payload: bytes, isBinary: bool) -> None:
        stream = self.stream
        if stream is None or self._closing:
            return
        if isBinary:
            self._fail(CLOSE_UNSUPPORTED_DATA, "unsupported-encoding",
                       "only text WebSocket messages carry XMPP (RFC 7395 section 3.2)")
            return
        settings = self.settings
        try:
            element = parse_element(payload, max_bytes=settings.max_message_bytes,
                                    max_elements=settings.max_elements, max_depth=settings.max_depth)
        except StreamFault as fault:
            stream.transport_failed(fault.condition, fault.text)
            return
        self._element(element)

    def onPing(self, payload: bytes) -> None:
        self._traffic()
        super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        self._traffic()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._stop_timers()
        if self._throttle is not None:
            self._throttle.stop()
            self._gate.stop()
        if self._drop_timer is not None and self._drop_timer.active():
            self._drop_timer.cancel()
        self._drop_timer = None
        stream, self.stream = self.stream, None
        if stream is not None:
            if self._closing:
                stream.connection_lost("closed")
            else:
                stream.connection_lost(f"WebSocket closed ({code or 'no code'}{': ' + reason if reason else ''})")
            if self._output is not None:
                self._output.close()
                stream.undelivered(self._output.unsent_stanzas())

    def _max_message_size_exceeded(self, msg_size: int, max_msg_size: int, reason: str) -> None:
        # autobahn's hook, called from the frame header: answer in XMPP before closing with 1009.
        # The rest of the message is never buffered: autobahn then drops the connection (after flushing).
        log.debug("ws2s {peer}: {reason}", peer=self.peer_host, reason=reason)  # the stream error is logged
        if self.stream is not None and not self._closing:
            self._fail(CLOSE_TOO_BIG, "policy-violation",
                       f"a WebSocket message exceeds the {max_msg_size}-byte limit")
        super()._max_message_size_exceeded(msg_size, max_msg_size, reason)

    # -- framing --------------------------------------------------------------------------------------

    def _element(self, element: domish.Element) -> None:
        stream = self.stream
        if element.uri == ns.FRAMING and element.name == "open":
            self._opened = True
            attrs = element.attributes
            stream.stream_started(StreamHeader(to=attrs.get("to"), version=attrs.get("version"),
                                               lang=attrs.get((ns.XML, "lang")), frm=attrs.get("from")))
        elif element.uri == ns.FRAMING and element.name == "close":
            stream.stream_ended()
        elif not self._opened:
            stream.transport_failed("bad-format", "expected <open xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>")
        elif not element.uri:
            stream.transport_failed("invalid-namespace",
                                    f"<{element.name}/> must declare its namespace (xmlns='jabber:client')")
        else:
            stream.element_received(element)

    def _fail(self, code: int, condition: str, text: str) -> None:
        self._close_code = code
        self.stream.transport_failed(condition, text)

    # -- StreamTransport sink -------------------------------------------------------------------------

    def open_stream(self, attrs: dict[str, str]) -> None:
        element = domish.Element((ns.FRAMING, "open"))
        for key, value in attrs.items():
            if value:
                element[(ns.XML, "lang") if key == "xml:lang" else key] = value
        self._write(element)

    def send(self, element: domish.Element) -> None:
        if not self._closing:
            self._write(element)

    def close_stream(self, error: domish.Element | None = None) -> None:
        self._close(error, None)

    def redirect(self, uri: str) -> None:
        """Send the client to another endpoint (RFC 7395 section 3.6.1) and end this connection."""
        if self._closing:
            return
        self._close(None, uri)
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.connection_lost(f"redirected to {uri}")

    def redirect_to(self, node: str) -> None:
        """Send the client to the same endpoint on another cluster node (every node has one layout)."""
        scheme = "wss" if self.listener.tls else "ws"
        self.redirect(f"{scheme}://{node}:{self.listener.port}/xmpp-websocket")

    def restart_stream(self) -> None:
        self._opened = False

    def start_tls(self, creator: Any) -> None:
        raise NotImplementedError("WebSocket has no STARTTLS; use a TLS (wss) listener")

    def channel_info(self) -> ChannelInfo:
        if self.hop_secure and not self.secure:
            return ChannelInfo(secure=True, bindings={})  # TLS ended before us: nothing to bind to
        return tls_channel_info(self.transport, self.secure)

    # -- internals ------------------------------------------------------------------------------------

    def _write(self, element: domish.Element) -> None:
        data = serialize(element).encode("utf-8")
        if self._output is None or self._closing:
            self._frame(data)
        else:
            self._output.write(data, element.name in STANZAS and element.uri == ns.CLIENT)

    def _frame(self, data: bytes) -> None:
        self.sendMessage(data, isBinary=False)

    def send_serialized(self, xml: bytes) -> None:
        """A stanza already serialized with its xmlns (RFC 7395 wants it on every stanza): one frame."""
        if not self._closing:
            if self._output is None:
                self._frame(xml)
            else:
                self._output.write(xml, stanza=True)

    # -- flow control asked by the stream core --------------------------------------------------------

    def pause_reading(self) -> None:
        if self._gate is not None:
            self._gate.pause("core")

    def resume_reading(self) -> None:
        if self._gate is not None:
            self._gate.resume("core")

    def _output_overflow(self) -> None:
        """More than ``--client-output-limit`` bytes wait for a client that does not read: end its stream."""
        stream = self.stream
        if stream is None or self._closing:
            return
        stream.fail("resource-constraint", f"more than {self._output.limit} bytes wait for the client to read them")
        stream.undelivered(self._output.unsent_stanzas())

    def _close(self, error: domish.Element | None, see_other_uri: str | None) -> None:
        if self._closing:
            return
        self._closing = True
        self._stop_timers()
        if self._throttle is not None:
            self._throttle.stop()
            self._gate.stop()
            self._output.close()  # what it holds is routed again once the stream has ended
        if error is not None:
            self._write(error)
        close = domish.Element((ns.FRAMING, "close"))
        if see_other_uri:
            close["see-other-uri"] = see_other_uri
        self._write(close)
        self.sendCloseFrame(code=self._close_code, isReply=False)
        self._drop_timer = self.server.clock.callLater(CLOSE_HANDSHAKE_TIMEOUT, self._close_handshake_timeout)

    def _close_handshake_timeout(self) -> None:
        self._drop_timer = None
        self.onCloseHandshakeTimeout()  # autobahn: drop the TCP connection

    def _traffic(self) -> None:
        self._last_heard = self.server.clock.seconds()
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(self.settings.idle_timeout)
        if self.stream is not None:
            self.stream.activity()

    def _ping_tick(self) -> None:
        """A ping after ping-interval seconds without inbound traffic; no traffic for another interval -> gone."""
        self._ping_timer = None
        if self._closing or self.stream is None:
            return
        interval = self.settings.ping_interval
        now = self.server.clock.seconds()
        if self._ping_sent_at is not None:
            if self._last_heard < self._ping_sent_at:
                self.stream.transport_failed("connection-timeout", "no answer to a WebSocket ping")
                return
            self._ping_sent_at = None
        quiet = now - self._last_heard
        if quiet >= interval:
            self._ping_sent_at = now
            self.sendPing()
            delay = interval
        else:
            delay = interval - quiet
        self._ping_timer = self.server.clock.callLater(delay, self._ping_tick)

    def _idle(self) -> None:
        self._idle_timer = None
        if self.stream is not None and not self._closing:
            self.stream.transport_failed("connection-timeout", "idle")

    def _stop_timers(self) -> None:
        for timer in (self._ping_timer, self._idle_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._ping_timer = self._idle_timer = None


class XMPPWebSocketFactory(WebSocketServerFactory):
    """Builds one :class:`XMPPWebSocketProtocol` per upgraded request of one listener."""

    def __init__(self, server: XMPPServer, listener: Listener) -> None:
        scheme = "wss" if listener.tls else "ws"
        super().__init__(url=f"{scheme}://localhost:{listener.port}", protocols=[SUBPROTOCOL], server=None)
        self.xmpp_server = server  # ``server`` is autobahn's (the Server header; None = not sent)
        self.listener = listener
        self.settings = WebSocketSettings(server)
        limit = self.settings.max_message_bytes
        self.setProtocolOptions(
            webStatus=False,
            requireMaskedClientFrames=True,
            maxFramePayloadSize=limit,
            maxMessagePayloadSize=limit,
            failByDrop=False,  # close with a close frame, after our stream error has been written
            # Our own timers run on the server clock (cancellable, testable); autobahn's are off. The opening
            # handshake needs none: twisted.web hands over a complete request.
            autoPingInterval=0,
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
        )

    def buildProtocol(self, addr: Any) -> XMPPWebSocketProtocol:
        protocol = XMPPWebSocketProtocol(self.xmpp_server, self.listener, self.settings)
        protocol.factory = self
        # This WebSocket takes over an HTTP connection: and with it, that connection's per-address lease.
        key = (self.listener.port, getattr(addr, "host", "?"), getattr(addr, "port", 0))
        lease = connection_limit(self.xmpp_server).by_connection.pop(key, None)
        if lease is not None:
            protocol.leases.append(lease)
        return protocol


def websocket_resource(server: XMPPServer, listener: Listener) -> WebSocketResource:
    """The RFC 7395 endpoint as a twisted.web resource (mounted at ``/xmpp-websocket``)."""
    return WebSocketResource(XMPPWebSocketFactory(server, listener))


def websocket_root(server: XMPPServer, listener: Listener) -> Resource:
    """Root resource of a ws2s port: the WebSocket endpoint at ``/`` and at ``/xmpp-websocket``."""
    endpoint = websocket_resource(server, listener)
    root = Resource()
    root.putChild(b"", endpoint)
    root.putChild(b"xmpp-websocket", endpoint)
    return root
