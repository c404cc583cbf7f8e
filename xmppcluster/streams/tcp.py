"""Client connections over TCP: 5222 with STARTTLS, 5223 direct TLS (XEP-0368).

This module only frames: bytes → hardened parser → stream core, and elements → bytes.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish
from zope.interface import implementer

from xmppcluster.auth.sasl import ChannelInfo
from xmppcluster.core import namespaces as ns
from xmppcluster.core.serializer import serialize as fast_serialize
from xmppcluster.core.serializer import start_tag
from xmppcluster.core.xml import StreamFault, StreamParser
from xmppcluster.streams.core import STANZAS, ClientStream, StreamHeader, stream_error, tls_channel_info
from xmppcluster.streams.flow import InputGate, OutputQueue, no_delay, throttled_input
from xmppcluster.streams.peers import client_policy
from xmppcluster.streams.throttle import Lease, ReadThrottle, connection_limit, log_budget

if TYPE_CHECKING:
    from xmppcluster.config import Listener
    from xmppcluster.core.server import XMPPServer

log = Logger()

_PREFIXES = {ns.STREAMS: "stream"}
_IN_SCOPE = ["stream"]
_CLOSE = b"</stream:stream>"
_STREAM_XMLNS = {"xmlns": ns.CLIENT, "xmlns:stream": ns.STREAMS}
#: Seconds a closing connection has to flush its output before it is dropped (a client that does not read).
CLOSE_TIMEOUT = 10.0
#: server -> its connections that are closing (flushing, or waiting for the client's TLS close_notify).
_closing: weakref.WeakKeyDictionary[Any, set[ClientConnection]] = weakref.WeakKeyDictionary()


def closing_count(server: XMPPServer) -> int:
    """How many connections of ``server`` are closing."""
    return len(_closing.get(server, ()))


def abort_closing(server: XMPPServer) -> int:
    """Drop at once every connection of ``server`` still closing (at shutdown); returns how many."""
    connections = _closing.pop(server, set())
    for connection in connections:
        connection.transport.abortConnection()
    return len(connections)


def serialize(element: domish.Element) -> bytes:
    """An element as it appears inside a jabber:client stream."""
    return fast_serialize(element, ns.CLIENT, _PREFIXES, _IN_SCOPE).encode("utf-8")


def serialize_standalone(element: domish.Element) -> bytes:
    """A stanza with its xmlns declared: it can be parsed again on its own (to route it elsewhere)."""
    return fast_serialize(element, "", _PREFIXES, _IN_SCOPE).encode("utf-8")


class ClientConnection(Protocol):
    """A TCP (or direct-TLS) client connection: the :class:`StreamTransport` for TCP."""

    can_starttls = True
    #: No redirect of its own: the core sends ``<see-other-host/>`` (StreamTransport).
    redirect_to = None

    def __init__(self, server: XMPPServer, listener: Listener) -> None:
        self.server = server
        self.listener = listener
        self.secure = listener.tls
        self.can_starttls = not listener.tls
        self.peer = "?"
        self.stream: ClientStream | None = None
        self.parser: StreamParser | None = None
        self.throttle: ReadThrottle | None = None
        self.gate: InputGate | None = None
        self.output: OutputQueue | None = None
        self._keepalive = None
        self._drop = None
        self._sent_since_keepalive = False
        self._closing = False

    # -- twisted.internet.protocol ------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.peer = getattr(self.transport.getPeer(), "host", "?")
        no_delay(self.transport)
        limits = self.server.limits
        self.parser = StreamParser.within(self, limits)
        self.stream = ClientStream(self.server, self, tls_required=self.listener.tls_required)
        # Input: read throttle -> gate (stopped while SASL works or while our output backs up) -> parser.
        self.gate, self.throttle = throttled_input(self.transport, self._feed, self.server.clock, limits.client_rate,
                                                   limits.client_burst)
        # Output: the transport pauses us when its buffer is full; then output waits, bounded.
        self.output = OutputQueue(self.transport.write, limits.client_output_limit,
                                  on_pause=lambda: self.stream.hold_input("output"),
                                  on_resume=lambda: self.stream.release_input("output"),
                                  on_overflow=self._output_overflow)
        self.transport.registerProducer(self.output, True)
        if limits.whitespace_keepalive > 0:
            self._keepalive = self.server.clock.callLater(limits.whitespace_keepalive, self._send_keepalive)

    def dataReceived(self, data: bytes) -> None:
        if self.stream is not None and not self._closing:
            self.throttle.received(data)

    def _feed(self, data: bytes) -> None:
        stream = self.stream
        if stream is None or self._closing:
            return
        stream.activity()
        try:
            self.parser.feed(data)
        except StreamFault as fault:
            stream.transport_failed(fault.condition, fault.text)

    def connectionLost(self, reason: Failure = None) -> None:
        _closing.get(self.server, set()).discard(self)
        for timer in (self._keepalive, self._drop):
            if timer is not None and timer.active():
                timer.cancel()
        if self.throttle is not None:
            self.throttle.stop()
            self.gate.stop()
        if self.stream is not None:
            why = reason.getErrorMessage() if reason is not None else "connection lost"
            self.stream.connection_lost(f"connection lost ({why})" if not self._closing else "closed")
            self.stream.undelivered(self.output.unsent_stanzas())

    # -- parser events --------------------------------------------------------------------------------

    def stream_started(self, root: domish.Element) -> None:
        if root.uri != ns.STREAMS or root.name != "stream":
            self.stream.fail("invalid-namespace", "the stream element must be stream:stream")
            return
        if root.defaultUri != ns.CLIENT:
            self.stream.fail("invalid-namespace", "the default namespace must be jabber:client")
            return
        attrs = root.attributes
        self.stream.stream_started(StreamHeader(
            to=attrs.get("to"), version=attrs.get("version"), lang=attrs.get((ns.XML, "lang")),
            frm=attrs.get("from")))

    def element_received(self, element: domish.Element) -> None:
        self.stream.element_received(element)

    def stream_ended(self) -> None:
        self.stream.stream_ended()

    # -- StreamTransport sink -------------------------------------------------------------------------

    def open_stream(self, attrs: dict[str, str]) -> None:
        header = start_tag("stream:stream", {**_STREAM_XMLNS, **{key: value for key, value in attrs.items() if value}})
        self.output.write(f"<?xml version='1.0'?>{header}".encode())
        self._sent_since_keepalive = True

    def send(self, element: domish.Element) -> None:
        if self._closing:
            return
        output = self.output
        if output.paused and element.name in STANZAS and element.uri == ns.CLIENT:
            output.write(serialize_standalone(element), stanza=True)
        else:
            output.write(serialize(element))
        self._sent_since_keepalive = True

    def send_serialized(self, xml: bytes) -> None:
        if not self._closing:
            self.output.write(xml, stanza=True)
            self._sent_since_keepalive = True

    def close_stream(self, error: domish.Element | None = None) -> None:
        if self._closing:
            return
        self._closing = True
        self.throttle.stop()
        self.gate.stop()
        self.output.close()
        # Output still held is not sent: its stanzas are routed again once the stream has ended. The
        # error and the close go behind what the transport holds; a client that never reads them is dropped.
        self.transport.write((serialize(error) if error is not None else b"") + _CLOSE)
        # Nothing more is produced: a TLS transport sends close_notify and closes only once no producer is
        # registered (otherwise every TLS close waited for the drop below).
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        _closing.setdefault(self.server, set()).add(self)
        self._drop = self.server.clock.callLater(CLOSE_TIMEOUT, self.transport.abortConnection)

    def _output_overflow(self) -> None:
        """More than ``--client-output-limit`` bytes wait for a client that does not read: end its stream."""
        stream = self.stream
        if stream is None or self._closing:
            return
        stream.fail("resource-constraint", f"more than {self.output.limit} bytes wait for the client to read them")
        stream.undelivered(self.output.unsent_stanzas())

    # -- flow control asked by the stream core ------------------------------------------------------------

    def pause_reading(self) -> None:
        if self.gate is not None:
            self.gate.pause("core")

    def resume_reading(self) -> None:
        if self.gate is not None:
            self.gate.resume("core")

    def restart_stream(self) -> None:
        self.parser.reset()

    def start_tls(self, creator: Any) -> None:
        self.transport.startTLS(creator)
        self.secure = True
        self.can_starttls = False

    def channel_info(self) -> ChannelInfo:
        if not self.secure and client_policy(self.server).stream_secure(self.peer, False):
            return ChannelInfo(secure=True, bindings={})  # a loopback client (--secure-loopback)
        return tls_channel_info(self.transport, self.secure)

    # -- keepalive ------------------------------------------------------------------------------------

    def _send_keepalive(self) -> None:
        if self._closing:
            return
        if not self._sent_since_keepalive and not self.output.paused:
            self.transport.write(b" ")
        self._sent_since_keepalive = False
        self._keepalive = self.server.clock.callLater(self.server.limits.whitespace_keepalive,
                                                      self._send_keepalive)


class CountedConnection(ClientConnection):
    """A :class:`ClientConnection` holding one lease of the per-address limit (``--max-connections-per-ip``)."""

    def __init__(self, server: XMPPServer, listener: Listener, lease: Lease) -> None:
        super().__init__(server, listener)
        self.lease = lease

    def connectionLost(self, reason: Failure = None) -> None:
        self.lease.release()
        super().connectionLost(reason)


class RefusedConnection(Protocol):
    """A connection over the per-address limit: a ``policy-violation`` stream error, then the close."""

    def __init__(self, server: XMPPServer, peer: str, limit: int) -> None:
        self.server = server
        self.peer = peer
        self.limit = limit

    def connectionMade(self) -> None:
        domain = next(iter(sorted(self.server.domains)), "")
        text = f"too many connections from your address (at most {self.limit})"
        (log.info if log_budget(self.server).allow(self.peer) else log.debug)(
            "c2s connection from {peer} refused: {text}", peer=self.peer, text=text)
        self.transport.write(
            f"<?xml version='1.0'?>{start_tag('stream:stream', {**_STREAM_XMLNS, 'from': domain, 'version': '1.0'})}"
            .encode()
            + serialize(stream_error("policy-violation", text)) + _CLOSE)
        self.transport.loseConnection()


@implementer(IProtocolNegotiationFactory)
class ClientFactory(Factory):
    """Builds a :class:`ClientConnection` per accepted socket."""

    noisy = False

    def acceptableProtocols(self) -> list[bytes]:  # noqa: N802 (Twisted interface)
        """ALPN: ``xmpp-client`` (XEP-0368), on direct TLS and, when a client offers it, after STARTTLS."""
        return [b"xmpp-client"]

    def __init__(self, server: XMPPServer, listener: Listener) -> None:
        self.server = server
        self.listener = listener

    def buildProtocol(self, addr: Any) -> Protocol:
        peer = getattr(addr, "host", "?")
        limit = connection_limit(self.server)
        lease = limit.acquire(peer)
        if lease is None:
            return RefusedConnection(self.server, peer, limit.limit)
        protocol = CountedConnection(self.server, self.listener, lease)
        protocol.factory = self
        return protocol
