"""One ordered, authenticated stream between two nodes (TLS, the node secrets proven inside it).

The initiator is the node whose name sorts first; the other only accepts, so a pair never has two
links. Everything travels in frames (:mod:`~xmppcluster.cluster.protocol`). After the ``<hello/>``
frames each side sends ``<auth proof=…/>``: an HMAC of the link key over the roles, the names and the
TLS exporter value (RFC 9266), so the proof is worthless outside this TLS session. Then: heartbeats
(``<hb h=…/>``, which also acknowledge routed stanzas), routed stanzas and directory events, handed to
:class:`~xmppcluster.cluster.node.Cluster`.

Until the peer is authenticated a link accepts only frames of :data:`~xmppcluster.cluster.protocol.PREAUTH_MAX_BYTES`
holding one childless element, and it must authenticate within ``cl-comp/handshake-timeout`` (TLS handshake
included). Afterwards each frame stands alone: a frame that cannot be parsed or handled is logged and
skipped (a routed stanza is bounced by the node), never a reason to drop the link, since the peer would
only send the same frame again after the reconnect.

Acknowledgements: routed frames are numbered in arrival order, and ``h`` is the highest number up to
which every frame was delivered to a live client transport, relayed, stored offline or answered with an
error; a frame whose offline store is still running holds ``h`` back until the database says it is done.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.words.xish import domish

from xmppcluster.cluster import protocol as wire
from xmppcluster.core.serializer import tag
from xmppcluster.core.tls import channel_binding
from xmppcluster.core.xml import StreamFault, parse_element

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
        self.decoder = wire.FrameDecoder(wire.PREAUTH_MAX_BYTES)
        self.hello = False  # the peer's <hello/> was accepted
        self.received = 0  # routed frames received (numbered from 1 in arrival order)
        self._unfinished: deque[int] = deque()  # numbers of frames still being stored, ascending
        self._finished: set[int] = set()  # of those, the ones done since
        self.last_heard = 0.0
        self.peer_links: set[str] = set()  # the nodes the peer reports links to
        self._heartbeat = None
        self._deadline = None

    # -- connection --------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)  # stanzas are small and latency-bound: no Nagle delay
        clock = self.cluster.clock
        self.last_heard = clock.seconds()
        self._heartbeat = clock.callLater(self.cluster.heartbeat_interval, self._beat)
        timeout = self.cluster.handshake_timeout
        self._deadline = clock.callLater(timeout, self.abort, f"not authenticated within {timeout:g} s")
        if self.initiator:
            self._send_header()

    def dataReceived(self, data: bytes) -> None:
        self.last_heard = self.cluster.clock.seconds()
        try:
            for kind, payload in self.decoder.feed(data):
                if self.closing:
                    return
                if kind == wire.ROUTED and self.up:
                    self._routed(payload)
                elif kind == wire.CONTROL and self.up:
                    self._control_frame(payload)
                elif kind == wire.CONTROL:
                    self._control(parse_element(payload, max_bytes=wire.PREAUTH_MAX_BYTES,
                                                max_elements=wire.PREAUTH_MAX_ELEMENTS,
                                                max_depth=wire.PREAUTH_MAX_DEPTH))
                else:
                    raise wire.FrameError("routed stanza before authentication")
        except wire.FrameError as error:
            self.abort(f"{error} (not a version {wire.VERSION} cluster link?)")
        except StreamFault as fault:
            self.abort(f"{fault.condition}: {fault.text or ''}")
        except Exception:
            log.failure("cluster link {peer}: handshake failed", peer=self.peer or "?")
            self.abort("handshake failed")

    def _routed(self, payload: bytes) -> None:
        """One routed frame: counted, handed to the node; a failure is this frame's, never the link's."""
        self.received += 1
        number = self.received
        try:
            done = self.cluster.routed(self, *wire.split_routed(payload))
        except wire.FrameError as error:
            log.warn("cluster link {peer}: routed frame {n} dropped: {error}", peer=self.peer, n=number, error=error)
            return
        except Exception:
            log.failure("cluster link {peer}: routed frame {n} failed", peer=self.peer, n=number)
            return
        if done is not None:  # being stored: acknowledged once that is over, whatever its outcome
            self._unfinished.append(number)
            done.addBoth(self._done, number)

    def _done(self, result: Any, number: int) -> None:
        self._finished.add(number)

    def acknowledgeable(self) -> int:
        """The ``h`` to send: every routed frame up to it is delivered, relayed, stored or answered."""
        unfinished, finished = self._unfinished, self._finished
        while unfinished and unfinished[0] in finished:
            finished.discard(unfinished.popleft())
        return unfinished[0] - 1 if unfinished else self.received

    def _control_frame(self, payload: bytes) -> None:
        """One control frame of an authenticated peer: refused or failing alone, the link stays."""
        try:
            element = parse_element(payload, max_bytes=self.decoder.max_payload, max_elements=wire.MAX_ELEMENTS,
                                    max_depth=wire.MAX_DEPTH)
        except StreamFault as fault:
            log.warn("cluster link {peer}: control frame dropped ({condition}: {text})", peer=self.peer,
                     condition=fault.condition, text=fault.text or "")
            return
        try:
            self._control(element)
        except Exception:
            log.failure("cluster link {peer}: handling <{name}/> failed", peer=self.peer, name=element.name)

    def connectionLost(self, reason: Any = None) -> None:
        for timer in (self._heartbeat, self._deadline):
            if timer is not None and timer.active():
                timer.cancel()
        why = reason.getErrorMessage() if reason is not None else "closed"
        self.cluster.link_lost(self, why)

    def abort(self, why: str) -> None:
        if not self.closing:
            self.closing = True
            log.warn("cluster link {peer}: {why}", peer=self.peer or "?", why=why)
            self.transport.abortConnection()

    # -- opening -----------------------------------------------------------------------------------

    def _send_header(self) -> None:
        attrs = {"xmlns": wire.NS, "from": self.cluster.name, "version": wire.VERSION}
        if self.peer:
            attrs["to"] = self.peer
        self.transport.write(wire.control(tag("hello", attrs).encode()))

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
        self.transport.write(wire.control(tag("auth", {"proof": self._proof(role)}).encode()))

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
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self.decoder.max_payload = self.cluster.max_frame_bytes
        self.cluster.link_up(self)

    # -- sending -----------------------------------------------------------------------------------

    def send(self, xml: bytes) -> None:
        """One control element (serialized). One larger than the peer accepts is not sent (the peer would
        drop the link, and the frame would be sent again after the reconnect)."""
        if self.closing:
            return
        if len(xml) > self.cluster.max_frame_bytes:
            log.error("cluster link {peer}: <{head}…> of {n} bytes not sent (the frame limit is {limit})",
                      peer=self.peer, head=xml[1:20].decode("utf-8", "replace"), n=len(xml),
                      limit=self.cluster.max_frame_bytes)
            return
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
            self.send(tag("hb", {"h": self.acknowledgeable(), "links": links}).encode())
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
