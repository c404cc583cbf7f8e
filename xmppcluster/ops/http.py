"""The twisted.web Site of the HTTP ports: /http-bind (BOSH), /xmpp-websocket (RFC 7395), /.well-known/host-meta.

BOSH ports serve both paths, so one HTTP port can carry both transports; ws2s ports serve the
WebSocket endpoint at ``/`` as well.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from xmppcluster.streams.throttle import connection_limit, log_budget

if TYPE_CHECKING:
    from xmppcluster.config import Listener
    from xmppcluster.core.server import XMPPServer


log = Logger()


class XmppSite(Site):
    """twisted.web's Site, negotiating HTTP/1.1 only over ALPN: BOSH and RFC 7395 WebSocket are HTTP/1.1.

    Each connection holds a lease of the per-address limit (``--max-connections-per-ip``); one over it is
    answered ``429 Too Many Requests`` and closed. No access log: one line per HTTP request (every BOSH poll,
    from clients that never authenticate too) would let anyone fill the log.
    """

    xmpp: Any = None  # the XMPPServer
    port = 0  # the listener's port

    def acceptableProtocols(self) -> list[bytes]:  # noqa: N802 (Twisted interface)
        return [b"http/1.1"]

    def log(self, request: Any) -> None:
        """No access log (see the class docstring)."""

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 (Twisted interface)
        if self.xmpp is None:
            return super().buildProtocol(addr)
        host = getattr(addr, "host", "?")
        limit = connection_limit(self.xmpp)
        lease = limit.acquire(host)
        if lease is None:
            return TooManyConnections(self.xmpp, host, limit.limit)
        channel = super().buildProtocol(addr)
        # A WebSocket that takes this connection over takes the lease with it (streams/websocket.py).
        key = (self.port, host, getattr(addr, "port", 0))
        limit.by_connection[key] = lease
        lost = channel.connectionLost

        def connection_lost(reason: Any) -> Any:
            if limit.by_connection.get(key) is lease:
                del limit.by_connection[key]
            lease.release()
            return lost(reason)

        channel.connectionLost = connection_lost
        return channel


class TooManyConnections(Protocol):
    """An HTTP connection over the per-address limit: ``429 Too Many Requests``, then the close."""

    def __init__(self, server: Any, peer: str, limit: int) -> None:
        self.server = server
        self.peer = peer
        self.limit = limit

    def connectionMade(self) -> None:  # noqa: N802 (Twisted interface)
        text = f"too many connections from your address (at most {self.limit})\n".encode()
        (log.info if log_budget(self.server).allow(self.peer) else log.debug)(
            "HTTP connection from {peer} refused: more than {limit} connections", peer=self.peer, limit=self.limit)
        self.transport.write(b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain; charset=utf-8\r\n"
                             b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text))
        self.transport.loseConnection()


def build_site(server: XMPPServer, listener: Listener) -> Site:
    """The Site for one BOSH or ws2s listener."""
    from xmppcluster.streams.bosh import limited_request
    from xmppcluster.streams.websocket import websocket_resource, websocket_root

    if listener.component == "ws2s":
        root = websocket_root(server, listener)
    else:
        from xmppcluster.streams.bosh import BoshResource

        root = Resource()
        bosh = BoshResource(server, listener)
        root.putChild(b"http-bind", bosh)
        root.putChild(b"xmpp-websocket", websocket_resource(server, listener))
    from xmppcluster.ops.hostmeta import mount

    mount(root, server)  # /.well-known/host-meta[.json] (XEP-0156)
    from xmppcluster.ops import webchat

    webchat.mount(root, server, listener)  # /chat (Converse.js) and / redirecting there
    site = XmppSite(root)
    site.xmpp, site.port = server, listener.port
    # Stop storing a request body once it passes the BOSH limit (the stanza limit bounds WebSocket).
    site.requestFactory = limited_request(server.config.bosh.max_body)
    site.displayTracebacks = False
    site.noisy = False
    return site
