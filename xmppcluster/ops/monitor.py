"""The operators' HTTP listener (``--metrics-port``, on 127.0.0.1 by default): ``/metrics`` and ``/status``.

It is for a local Prometheus and a person on the host (or an SSH tunnel), so it defends the node rather
than serving many: at most :data:`MAX_CONNECTIONS` connections at once (more are answered 503 and closed),
GET and HEAD only, no request body (a body is refused once :data:`MAX_BODY` bytes arrived, never stored),
Twisted's bounds on the request line and headers, :data:`IDLE_TIMEOUT` seconds for an idle connection, and
each page rendered at most once per :data:`MIN_RENDER_INTERVAL` (a flood of scrapes costs the reactor
little). No access log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client.exposition import choose_encoder
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from xmppcluster.ops import status_page

if TYPE_CHECKING:
    from xmppcluster.ops.metrics import NodeMetrics

log = Logger()

MAX_CONNECTIONS = 16
MAX_BODY = 1024
IDLE_TIMEOUT = 10
MIN_RENDER_INTERVAL = 0.5
#: Twisted's own bound on the request line and each header line is 16 KiB; the headers together get this.
MAX_HEADERS_BYTES = 16384


class _Cached:
    """A rendered page kept for :data:`MIN_RENDER_INTERVAL` seconds, per variant (content type)."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.pages: dict[Any, tuple[float, bytes]] = {}

    def get(self, key: Any, render: Any) -> bytes:
        now = self.clock.seconds()
        cached = self.pages.get(key)
        if cached is not None and now - cached[0] < MIN_RENDER_INTERVAL:
            return cached[1]
        body = render()
        self.pages[key] = (now, body)
        return body


class _Page(Resource):
    isLeaf = True

    def __init__(self, metrics: NodeMetrics) -> None:
        super().__init__()
        self.metrics = metrics
        self.cache = _Cached(metrics.clock)

    def render_GET(self, request: Request) -> bytes:  # noqa: N802 (twisted.web interface)
        if getattr(request, "body_too_large", False):
            request.setResponseCode(413)
            request.setHeader(b"connection", b"close")
            return b"request body refused\n"
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return self.page(request)

    render_HEAD = render_GET  # noqa: N815 (twisted.web interface)

    def page(self, request: Request) -> bytes:
        raise NotImplementedError


class MetricsResource(_Page):
    """``/metrics``: the registry in Prometheus text format, or OpenMetrics when the scraper asks for it."""

    def page(self, request: Request) -> bytes:
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")[:1024]
        encoder, content_type = choose_encoder(accept)
        request.setHeader(b"content-type", content_type.encode())
        return self.cache.get(content_type, lambda: encoder(self.metrics.registry))


class StatusResource(_Page):
    """``/status``: the HTML page of :mod:`xmppcluster.ops.status_page`, under a strict CSP."""

    def page(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", status_page.CSP.encode())
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"x-frame-options", b"DENY")
        return self.cache.get("html", lambda: status_page.render(self.metrics))


class _Root(Resource):
    def getChild(self, path: bytes, request: Request) -> Resource:  # noqa: N802 (twisted.web interface)
        if path == b"":
            return self.children[b"status"]
        return super().getChild(path, request)


class BoundedRequest(Request):
    """Refuses a body: beyond :data:`MAX_BODY` bytes nothing more is stored (the page answers 413)."""

    body_too_large = False
    _received = 0

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802 (Twisted interface)
        self._received += len(data)
        if self._received > MAX_BODY:
            if not self.body_too_large:
                self.body_too_large = True
                self.channel.transport.loseConnection()  # nobody sends a body here on purpose
            return
        super().handleContentChunk(data)


class MonitorSite(Site):
    """The Site of the metrics listener, counting its connections."""

    def __init__(self, metrics: NodeMetrics) -> None:
        root = _Root()
        root.putChild(b"metrics", MetricsResource(metrics))
        root.putChild(b"status", StatusResource(metrics))
        super().__init__(root, timeout=IDLE_TIMEOUT)
        self.requestFactory = BoundedRequest
        self.displayTracebacks = False
        self.noisy = False
        self.open = 0
        self.peak = 0  # the most connections open at once
        self.refused = 0

    def log(self, request: Any) -> None:
        """No access log."""

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 (Twisted interface)
        if self.open >= MAX_CONNECTIONS:
            self.refused += 1
            return _Busy()
        channel = super().buildProtocol(addr)
        channel.totalHeadersSize = MAX_HEADERS_BYTES
        self.open += 1
        self.peak = max(self.peak, self.open)
        lost = channel.connectionLost

        def connection_lost(reason: Any) -> Any:
            self.open -= 1
            return lost(reason)

        channel.connectionLost = connection_lost
        return channel


class _Busy(Protocol):
    """A connection over :data:`MAX_CONNECTIONS`: ``503``, then the close."""

    def connectionMade(self) -> None:  # noqa: N802 (Twisted interface)
        text = b"too many connections to the metrics listener\n"
        self.transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(text), text))
        self.transport.loseConnection()


async def start_monitor(server: Any, reactor: Any) -> tuple[NodeMetrics | None, list[Any]]:
    """With ``--metrics-port`` set: count through the server's events and listen; (metrics, ports)."""
    from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

    from xmppcluster.ops.metrics import MetricsSettings, NodeMetrics

    settings = MetricsSettings.from_config(server.config)
    if not settings.port:
        return None, []
    metrics = NodeMetrics(server, settings)
    metrics.start()
    site = MonitorSite(metrics)
    ports = []
    try:
        for interface in settings.interfaces:
            host = "" if interface == "*" else interface
            endpoint = (TCP6ServerEndpoint if ":" in host else TCP4ServerEndpoint)(
                reactor, settings.port, interface=host, backlog=MAX_CONNECTIONS)
            ports.append(await endpoint.listen(site))
            log.info("listening: metrics {port} (/metrics, /status) on {ifc}", port=settings.port, ifc=interface)
    except Exception:
        metrics.stop()
        for port in ports:
            await port.stopListening()
        raise
    return metrics, ports
