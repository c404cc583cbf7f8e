"""One ordered, authenticated stream between two nodes (TLS, the node secrets proven inside it).

The initiator is the node whose name sorts first; the other only accepts, so a pair never has two
links. Everything travels in frames (:mod:`~xmppcluster.cluster.protocol`). After the ``<hello/>``
frames each side sends ``<auth proof=…/>``: an HMAC of the link key over the roles, the names and the
TLS exporter value (RFC 9266), so the proof is worthless outside this TLS session. Then: heartbeats
(``<hb h=…/>``, which also acknowledge routed stanzas), routed stanzas and directory events, handed to
:class:`~xmppcluster.cluster.node.Cluster`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.words.xish import domish

from xmppcluster.cluster import protocol as wire
from xmppcluster.tls import channel_binding
from xmppcluster.xml import StreamFault, parse_element

if TYPE_CHECKING:
    from xmppcluster.cluster.node import Cluster

log = Logger()


class Link(Protocol):
    """A cluster link, either role. ``peer`` is known from the start on the initiating side."""

    def __init__(self, cluster: Cluster, peer: str | None = None) -> None:
        self.cluster = cluster
        self.initiator = peer is not None
        self.peer = peer
        self.up = False
        self.closing = False
        self.decoder = wire.FrameDecoder()
        self.hello = False  # the peer's <hello/> was accepted
        self.received = 0  # routed stanzas received: acknowledged in heartbeats
        self.last_heard = 0.0
        self.peer_links: set[str] = set()  # the nodes the peer reports links to
        self._heartbeat = None

    # -- connection --------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)  # stanzas are small and latency-bound: no Nagle delay
        self.last_heard = self.cluster.clock.seconds()
        self._heartbeat = self.cluster.clock.callLater(self.cluster.heartbeat_interval, self._beat)
        if self.initiator:
            self._send_header()

    def dataReceived(self, data: bytes) -> None:
        self.last_heard = self.cluster.clock.seconds()
        try:
            for kind, payload in self.decoder.feed(data):
                if self.closing:
                    return
                if kind == wire.ROUTED and self.up:
                    self.received += 1
                    self.cluster.routed(self, *wire.split_routed(payload))
                elif kind == wire.CONTROL:
                    self._control(parse_element(payload, max_bytes=wire.MAX_ELEMENT_BYTES,
                                                max_elements=wire.MAX_ELEMENTS, max_depth=wire.MAX_DEPTH))
                else:
                    raise wire.FrameError("routed stanza before authentication")
        except wire.FrameError as error:
            self.abort(f"{error} (not a version {wire.VERSION} cluster link?)")
        except StreamFault as fault:
            self.abort(f"{fault.condition}: {fault.text or ''}")

    def connectionLost(self, reason: Any = None) -> None:
        if self._heartbeat is not None and self._heartbeat.active():
            self._heartbeat.cancel()
        why = reason.getErrorMessage() if reason is not None else "closed"
        self.cluster.link_lost(self, why)

    def abort(self, why: str) -> None:
        if not self.closing:
            self.closing = True
            log.warn("cluster link {peer}: {why}", peer=self.peer or "?", why=why)
            self.transport.abortConnection()

    # -- opening -----------------------------------------------------------------------------------

    def _send_header(self) -> None:
        attrs = {"from": self.cluster.name, "version": wire.VERSION}
        if self.peer:
            attrs["to"] = self.peer
        rendered = "".join(f" {k}={quoteattr(v)}" for k, v in attrs.items())
        self.transport.write(wire.control(f"<hello xmlns='{wire.NS}'{rendered}/>".encode()))

    def _hello(self, root: domish.Element) -> None:
        if root.name != "hello" or root.uri != wire.NS:
            return self.abort("not a cluster link")
        if root.getAttribute("version") != wire.VERSION:
            return self.abort(f"unsupported cluster protocol version {root.getAttribute('version')!r}")
        sender = root.getAttribute("from")
        if self.initiator:
            if sender != self.peer:
                return self.abort(f"expected {self.peer}, got {sender!r}")
            self._send_auth()
        else:
            if sender is None or root.getAttribute("to") != self.cluster.name or not self.cluster.knows(sender):
                return self.abort(f"unknown node {sender!r}")
            if not self.cluster.should_accept(sender):
                return self.abort(f"{sender} must accept, not initiate")
            self.peer = sender
            self._send_header()
        self.hello = True

    def _binding(self) -> bytes:
        value = channel_binding(self.transport, "tls-exporter")
        if value is None:
            raise ValueError("cluster links need TLS 1.3 (tls-exporter)")
        return value

    def _proof(self, role: str) -> str:
        initiator, acceptor = (self.cluster.name, self.peer) if self.initiator else (self.peer, self.cluster.name)
        return wire.proof(self.cluster.key_for(self.peer), role, initiator, acceptor, self._binding())

    def _send_auth(self) -> None:
        role = "initiator" if self.initiator else "acceptor"
        self.transport.write(wire.control(f"<auth proof='{self._proof(role)}'/>".encode()))

    def _control(self, element: domish.Element) -> None:
        if not self.hello:
            return self._hello(element)
        if not self.up:
            return self._authenticate(element)
        if element.name == "hb":
            self._acknowledged(element)
        else:
            self.cluster.event(self, element)

    def _authenticate(self, element: domish.Element) -> None:
        if element.name != "auth":
            return self.abort("expected <auth/>")
        role = "acceptor" if self.initiator else "initiator"
        try:
            claimed = element.getAttribute("proof") or ""
            initiator, acceptor = (self.cluster.name, self.peer) if self.initiator else (self.peer, self.cluster.name)
            valid = wire.check(self.cluster.key_for(self.peer), role, initiator, acceptor, self._binding(), claimed)
        except (ValueError, wire.NoSecret) as err:
            return self.abort(str(err))
        if not valid:
            return self.abort("wrong proof: the node secrets differ")
        if not self.initiator:
            self._send_auth()
        self.up = True
        self.cluster.link_up(self)

    # -- sending -----------------------------------------------------------------------------------

    def send(self, xml: bytes) -> None:
        """One control element (serialized)."""
        if not self.closing:
            self.transport.write(wire.control(xml))

    def send_routed(self, node: str, session: str, body: str) -> None:
        """A serialized stanza for ``session``, on this peer or (``node``) relayed by it."""
        if not self.closing:
            self.transport.write(wire.routed(node, session, body))

    def _beat(self) -> None:
        clock = self.cluster.clock
        silent = clock.seconds() - self.last_heard
        if silent > self.cluster.failure_timeout:
            self.abort(f"no heartbeat for {silent:.1f}s")
            return
        if self.up:
            links = ",".join(sorted(self.cluster.links))
            self.send(f"<hb h='{self.received}' links={quoteattr(links)}/>".encode())
        self._heartbeat = clock.callLater(self.cluster.heartbeat_interval, self._beat)

    def _acknowledged(self, element: domish.Element) -> None:
        self.peer_links = set(filter(None, (element.getAttribute("links") or "").split(",")))
        try:
            self.cluster.acknowledged(self, int(element.getAttribute("h") or 0))
        except ValueError:
            self.abort("bad acknowledgement")


class LinkFactory(Factory):
    """Accepts links on the cl-comp port."""

    noisy = False

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def buildProtocol(self, addr: Any) -> Link:
        return Link(self.cluster)
