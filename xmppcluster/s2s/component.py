"""External components (XEP-0114): a trusted service connects to the ``ext`` ports and serves one domain.

:class:`ComponentStream` reuses the server streams' framing, parser limits, rate limit, output queue and close
(:class:`~xmppcluster.s2s.stream.ServerStream`): the component opens a ``jabber:component:accept`` stream to its
domain, proves the shared secret with ``<handshake>`` (hex SHA-1 of the stream id and the secret), then sends
stanzas from its domain. :class:`Components` routes stanzas for a component domain to the connection holding
it (``route/remote``, above federation). One connection per domain and node: a new one that authenticates
replaces the old one (``conflict``). In a cluster, nodes tell each other which components they hold
(``<comp-up/>``, ``<comp-down/>``) and forward stanzas for them (``<comp-stanza/>``): docs/components.rst.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.words.xish import domish

from xmppcluster.core import namespaces as ns
from xmppcluster.core.events import CLUSTER_COMPONENT, CLUSTER_NODE_DOWN, CLUSTER_NODE_UP, ROUTE_REMOTE
from xmppcluster.core.jid import JID
from xmppcluster.core.serializer import serialize, start_tag, tag
from xmppcluster.s2s.stream import ServerStream, domain_of, to_client_namespace, wire
from xmppcluster.streams.core import stream_error

if TYPE_CHECKING:
    from xmppcluster.core.server import XMPPServer

log = Logger()

ACCEPT = "jabber:component:accept"
STANZAS = frozenset(("message", "presence", "iq"))
#: Priority of the route/remote handler: above federation (0), below blocking (100, which only refuses).
PRIORITY = 50


@dataclass(frozen=True)
class ComponentSettings:
    """The ``ext/*`` keys the streams read (the names :class:`ServerStream` expects)."""

    rate_limit: int
    idle_timeout: float
    handshake_timeout: float
    max_unauthenticated: int

    @classmethod
    def from_config(cls, config: Any) -> ComponentSettings:
        return cls(rate_limit=config.get("ext", "rate-limit"), idle_timeout=float(config.get("ext", "idle-timeout")),
                   handshake_timeout=float(config.get("ext", "handshake-timeout")),
                   max_unauthenticated=config.get("ext", "max-unauthenticated"))


def handshake_digest(stream_id: str, secret: str) -> str:
    """XEP-0114 §3: lowercase hex SHA-1 of the stream id followed by the secret."""
    return hashlib.sha1((stream_id + secret).encode("utf-8")).hexdigest()


class ComponentStream(ServerStream):
    """One component's connection: header, handshake, then its stanzas."""

    direction = "component"

    def __init__(self, components: Components) -> None:
        super().__init__(components)
        self.components = components
        self.domain: str | None = None
        self.authenticated = False
        self._handshake_timer = None

    def describe(self) -> str:
        return self.domain or "?"

    def connectionMade(self) -> None:  # noqa: N802 (Twisted interface)
        super().connectionMade()
        self.components.unauthenticated.add(self)
        self._handshake_timer = self.clock.callLater(self.settings.handshake_timeout, self._handshake_expired)

    def ended(self, reason: str) -> None:
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self.components.closed(self, reason)

    def _handshake_expired(self) -> None:
        if not self.authenticated:
            self.fail("connection-timeout", "no handshake in time")

    # -- parser events ----------------------------------------------------------------------------------------

    def stream_started(self, root: domish.Element) -> None:
        if root.uri != ns.STREAMS or root.name != "stream":
            self.fail("invalid-namespace", "the stream element must be stream:stream")
            return
        if root.defaultUri != ACCEPT:
            self.fail("invalid-namespace", f"the default namespace must be {ACCEPT}")
            return
        to = (root.getAttribute("to") or "").lower()
        if to not in self.components.secrets:
            self.fail("host-unknown", "no such component domain")
            return
        self.domain = to
        self.stream_id = secrets.token_hex(12)
        self.open_stream({"from": to, "id": self.stream_id})

    def open_stream(self, attrs: dict[str, str | None]) -> None:
        header = start_tag("stream:stream", {"xmlns": ACCEPT, "xmlns:stream": ns.STREAMS,
                                             **{k: v for k, v in attrs.items() if v}})
        self.output.write(f"<?xml version='1.0'?>{header}".encode())
        self._header_sent = True

    def handle(self, element: domish.Element) -> None:
        if element.uri == ACCEPT and element.name == "handshake" and not self.authenticated:
            self._handshake(element)
        elif element.uri == ACCEPT and element.name in STANZAS and self.authenticated:
            self._stanza(element)
        elif not self.authenticated:
            self.fail("not-authorized", "handshake first")
        else:
            self.fail("unsupported-stanza-type", f"<{element.name}/> is not expected here")

    def _handshake(self, element: domish.Element) -> None:
        secret = self.components.secrets.get(self.domain or "")
        if secret is None or self.stream_id is None:
            self.fail("not-authorized", "no stream header")
            return
        given = str(element).strip().lower().encode("ascii", "replace")
        if not hmac.compare_digest(given, handshake_digest(self.stream_id, secret).encode("ascii")):
            self.fail("not-authorized", "wrong handshake")
            return
        self.authenticated = True
        self.auth_method = "handshake"
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self.components.authenticated(self)  # peers hear of it before the component may send (link order)
        self.output.write(b"<handshake/>")

    def _stanza(self, stanza: domish.Element) -> None:
        frm = stanza.getAttribute("from")
        if domain_of(frm) != self.domain:
            self.fail("invalid-from", f"this component is {self.domain}")
            return
        to_client_namespace(stanza, ACCEPT)
        self.server.router.route(stanza, None)

    def status(self) -> dict[str, Any]:
        return {**super().status(), "domain": self.domain, "state": "connected" if self.authenticated else "handshake"}


class TooManyComponents(Protocol):
    """A connection over ``ext/max-unauthenticated``: ``resource-constraint``, then the close."""

    def connectionMade(self) -> None:  # noqa: N802 (Twisted interface)
        header = start_tag("stream:stream", {"xmlns": ACCEPT, "xmlns:stream": ns.STREAMS})
        self.transport.write(f"<?xml version='1.0'?>{header}".encode()
                             + wire(stream_error("resource-constraint", "too many unauthenticated connections"))
                             + b"</stream:stream>")
        self.transport.loseConnection()


class Components:
    """The configured components, their connections on this node, and routing to them."""

    def __init__(self, server: XMPPServer, clock: Any) -> None:
        self.server = server
        self.clock = clock
        self.settings = ComponentSettings.from_config(server.config)
        self.secrets: dict[str, str] = dict(server.config.components)
        self.connected: dict[str, ComponentStream] = {}
        self.unauthenticated: set[ComponentStream] = set()
        #: component domain -> the other cluster nodes holding a connection of it (from their <comp-up/>)
        self.elsewhere: dict[str, set[str]] = {}

    def start(self) -> None:
        hooks = self.server.hooks
        hooks.on(ROUTE_REMOTE, self.route_remote, PRIORITY)
        hooks.on(CLUSTER_COMPONENT, self._peer_frame)
        hooks.on(CLUSTER_NODE_UP, self._node_up)
        hooks.on(CLUSTER_NODE_DOWN, self._node_down)

    def stop(self) -> None:
        for stream in list(self.connected.values()) + list(self.unauthenticated):
            stream.fail("system-shutdown")

    def factory(self) -> Factory:
        return ComponentFactory(self)

    # -- streams ---------------------------------------------------------------------------------------------

    def authenticated(self, stream: ComponentStream) -> None:
        self.unauthenticated.discard(stream)
        old = self.connected.get(stream.domain)
        self.connected[stream.domain] = stream
        log.info("component {domain} connected ({peer}, stream {id})", domain=stream.domain, peer=stream.peer,
                 id=stream.stream_id)
        if old is not None and old is not stream:
            old.fail("conflict", "the component connected again")
        self._broadcast(tag("comp-up", {"domain": stream.domain}))

    def closed(self, stream: ComponentStream, reason: str) -> None:
        self.unauthenticated.discard(stream)
        if stream.domain is not None and self.connected.get(stream.domain) is stream:
            del self.connected[stream.domain]
            log.info("component {domain} disconnected: {reason}", domain=stream.domain, reason=reason)
            self._broadcast(tag("comp-down", {"domain": stream.domain}))

    # -- routing ---------------------------------------------------------------------------------------------

    def route_remote(self, stanza: domish.Element, target: JID, sender: Any) -> bool:
        """``route/remote``: a stanza for a component domain goes to its connection, or bounces."""
        if target.host not in self.secrets:
            return False
        stream = self.connected.get(target.host)
        if stream is not None and not stream.closed:
            stream.send(stanza)
            return True
        cluster = self.server.cluster
        for node in sorted(self.elsewhere.get(target.host, ())):
            body = serialize(stanza)
            if len(body) > cluster.max_frame_bytes - 4096:
                self.server.router.bounce(stanza, "policy-violation", "too large to route between cluster nodes")
                return True
            if cluster.send_event(node, f"{start_tag('comp-stanza', {'domain': target.host})}{body}</comp-stanza>"):
                return True
        self.server.router.bounce(stanza, "service-unavailable", "the component is not connected")
        return True

    # -- cluster: which node holds which component, and stanzas forwarded to it -----------------------------

    def _broadcast(self, xml: str) -> None:
        if self.server.cluster is not None:
            self.server.cluster.broadcast(xml.encode())

    def _node_up(self, peer: str) -> None:
        for domain in self.connected:  # a new link: the peer learns what this node holds
            self.server.cluster.send_event(peer, tag("comp-up", {"domain": domain}))

    def _node_down(self, peer: str) -> None:
        for nodes in self.elsewhere.values():
            nodes.discard(peer)

    def _peer_frame(self, peer: str, frame: domish.Element) -> None:
        domain = (frame.getAttribute("domain") or "").lower()
        if domain not in self.secrets:
            return
        if frame.name == "comp-up":
            self.elsewhere.setdefault(domain, set()).add(peer)
        elif frame.name == "comp-down":
            self.elsewhere.get(domain, set()).discard(peer)
        elif frame.name == "comp-stanza":
            stanza = next(frame.elements(), None)
            if stanza is None or stanza.name not in STANZAS:
                return
            stream = self.connected.get(domain)
            if stream is not None and not stream.closed:
                stream.send(stanza)
            else:
                self.server.router.bounce(stanza, "service-unavailable", "the component is not connected")

    def status(self) -> list[dict[str, Any]]:
        return [stream.status() for stream in self.connected.values()]


class ComponentFactory(Factory):
    """The ``ext`` listeners: one :class:`ComponentStream` per connection."""

    noisy = False

    def __init__(self, components: Components) -> None:
        self.components = components

    def buildProtocol(self, addr: Any) -> Protocol:  # noqa: N802 (Twisted interface)
        if len(self.components.unauthenticated) >= self.components.settings.max_unauthenticated:
            return TooManyComponents()
        return ComponentStream(self.components)
