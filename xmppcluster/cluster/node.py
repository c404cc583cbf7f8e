"""This node's place in the cluster: links to peers, the replicated directory, failure handling.

- Peers come from ``--cluster-nodes`` (static) or, when that is empty, from the ``cluster_nodes``
  table of the shared database (each node heartbeats its row; stale rows are ignored).
- The node whose name sorts first in a pair connects; the other accepts. Reconnects back off.
- Local session events (bound, presence/interest changes, unbound) are sent to every peer; each peer
  mirrors them as :class:`~xmppcluster.cluster.directory.RemoteSession` entries.
- Stanzas to remote sessions travel as routed frames on the owner's link (or via a peer that still sees the
  owner when the direct link is cut). Routed messages are kept until the peer acknowledges them, which
  it does once the stanza is written to a live client transport, stored offline or answered; if the
  peer dies first they are routed again (to another resource, or offline storage).
- A node is dead when this node has no link to it and no live peer reports one. Its sessions leave the
  directory; the first live node by name sends their unavailable presence, so it happens once.
"""

from __future__ import annotations

import re
import secrets as _secrets
import time
from collections import deque
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr, unescape

from twisted.internet import defer
from twisted.internet.endpoints import SSL4ClientEndpoint
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.words.xish import domish

from xmppcluster.cluster import protocol as wire
from xmppcluster.cluster.directory import Directory, describe, directed_delta, sync_frames
from xmppcluster.cluster.events import Events
from xmppcluster.cluster.link import Link, LinkFactory
from xmppcluster.config import ClusterNode
from xmppcluster.core.namespaces import CLIENT
from xmppcluster.core.serializer import serialize
from xmppcluster.core.xml import StreamFault, parse_element

if TYPE_CHECKING:
    from xmppcluster.core.server import XMPPServer
    from xmppcluster.core.sessions import Session

log = Logger()

ROUTED_TYPES_KEPT = frozenset((None, "normal", "chat"))


class Cluster:
    """Membership, links and the directory of one node."""

    def __init__(self, server: XMPPServer, *, reactor: Any) -> None:
        config = server.config
        self.server = server
        self.reactor = reactor
        self.clock = server.clock
        self.name = server.node_name
        self.heartbeat_interval = float(config.get("cl-comp", "heartbeat-interval"))
        self.failure_timeout = float(config.get("cl-comp", "failure-timeout"))
        self.handshake_timeout = float(config.get("cl-comp", "handshake-timeout"))
        limits = server.limits
        #: Largest frame a link accepts (and sends): room for any stanza a client may send, with what the
        #: server adds to it (delay, error, forwarding wrappers). Every node has the same limits.
        self.max_frame_bytes = max(wire.MAX_ELEMENT_BYTES, 2 * limits.max_stanza_bytes + 65536)
        #: Limits for parsing a routed stanza again (to route it elsewhere): generous for the same reason.
        self.reparse_limits = {"max_elements": max(1_000_000, 4 * limits.max_elements),
                               "max_depth": max(1_000, 2 * limits.max_depth + 8)}
        self.static = bool(config.cluster_nodes)
        self.members: dict[str, ClusterNode] = {n.name: n for n in config.cluster_nodes}
        me = self.members.get(self.name)
        self.secret = me.secret if me is not None and me.secret else None
        self.links: dict[str, Link] = {}
        self.directory = Directory(self)
        self.events = Events(self)
        self.events.on_reset = self._reset_caches
        self.started_at = time.time()
        # Routed messages not yet acknowledged, per link: (number, serialized stanza, session JID, the node of
        # that session: this link's peer, or the node it relays to). Kept as text, not
        # as the parsed tree: a tree (parent <-> child cycles) held ~1 s reaches the oldest GC generation and
        # makes its full collections take 100-250 ms at a few thousand messages/s.
        self._outbox: dict[str, deque[tuple[int, bytes, str, str]]] = {}
        self._sent: dict[str, int] = {}
        self._connecting: dict[str, Any] = {}
        self._backoff: dict[str, float] = {}
        self._suspects: dict[str, float] = {}  # node -> since when it is unreachable
        self._waiting: dict[str, list[tuple[bytes, str, bool]]] = {}  # (stanza UTF-8, jid, kept) per unreachable node
        self._stopping = False
        self._sweeper = None
        self.bosh = None
        self.store = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        from xmppcluster.cluster.membership import MembershipStore

        self.store = MembershipStore(self.server.storage.db)
        if self.secret is None and not self.static:
            self.secret = _secrets.token_hex(32)
        await self.publish()
        if not self.static:
            await self.refresh_members()
        hooks = self.server.hooks
        hooks.add("session/bound", self._local_bound, 1000)
        hooks.add("presence/broadcast", self._local_state, 1000)
        hooks.add("session/directed", self._local_directed, 1000)
        hooks.add("session/interested", self._local_changed, 1000)
        hooks.add("session/unbound", self._local_unbound, 1000)
        hooks.add("roster/changed", self._roster_changed, -1000)
        hooks.add("remote/roster/changed", self._remote_roster_changed)
        hooks.add("blocking/changed", self._blocking_changed, -1000)
        hooks.add("remote/blocking/changed", self._remote_blocking_changed)
        hooks.add("offline/waiting", self._offline_waiting)
        from xmppcluster.cluster.bosh_forward import BoshForwarder

        self.bosh = BoshForwarder(self)
        self._sweeper = self.clock.callLater(0, self._sweep)
        log.info("cluster node {name}: peers {peers}", name=self.name,
                 peers=", ".join(sorted(self.peers())) or "none yet")

    async def stop(self) -> None:
        self._stopping = True
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        for pending in self._connecting.values():
            if hasattr(pending, "cancel"):
                pending.cancel()
        for link in list(self.links.values()):
            link.closing = True
            link.transport.loseConnection()
        if self.store is not None:
            await self.store.leave(self.name)

    def factory(self) -> LinkFactory:
        return LinkFactory(self)

    # -- membership --------------------------------------------------------------------------------

    def peers(self) -> list[str]:
        return [name for name in self.members if name != self.name]

    def knows(self, name: str) -> bool:
        return name in self.members and name != self.name

    def should_accept(self, peer: str) -> bool:
        return peer < self.name

    def key_for(self, peer: str) -> bytes:
        member = self.members[peer]
        return wire.link_key((self.name, self.secret), (peer, member.secret))

    async def publish(self) -> None:
        """Heartbeat this node's row in the cluster_nodes table (discovery and cluster-status)."""
        me = self.members.get(self.name)
        port = self._cluster_port()
        links = {name: self.directory.count(name) for name in self.links}
        address = me.address if me is not None else self._listen_address()
        await self.store.heartbeat(self.name, address=address, port=port,
                                   secret=None if self.static else self.secret, started_at=self.started_at,
                                   sessions=sum(1 for s in self.server.sessions if s.node is None),
                                   links=links)

    async def refresh_members(self) -> None:
        rows = await self.store.live(max_age=max(3 * self.failure_timeout, 15.0))
        for row in rows:
            if row.name != self.name:
                self.members[row.name] = ClusterNode(row.name, row.secret, row.port or 5277, row.address)

    def _listen_address(self) -> str | None:
        """The cl-comp interface peers should dial when it is a specific address (discovery mode)."""
        for listener in self.server.config.listeners("cl-comp"):
            for interface in listener.ifc:
                if interface != "*":
                    return interface
        return None

    def _cluster_port(self) -> int:
        ports = [listener.port for listener in self.server.config.listeners("cl-comp")]
        return ports[0] if ports else 5277

    def _sweep(self) -> None:
        """Periodic: connect to peers we initiate to, publish our row, judge silent nodes."""
        if self._stopping:
            return
        for peer in self.peers():
            if peer not in self.links and peer not in self._connecting and not self.should_accept(peer):
                self._connect(peer)
        self._judge()
        self.events.flush_all()  # through a relay that appeared, for a peer without a link
        defer.ensureDeferred(self._publish_and_refresh()).addErrback(
            lambda f: log.failure("cluster membership update failed", f))
        self._sweeper = self.clock.callLater(self.heartbeat_interval, self._sweep)

    async def _publish_and_refresh(self) -> None:
        await self.publish()
        if not self.static:
            await self.refresh_members()

    def _connect(self, peer: str) -> None:
        member = self.members[peer]
        delay = self._backoff.get(peer, 0.0)
        self._connecting[peer] = self.clock.callLater(delay, self._dial, peer, member)

    def _dial(self, peer: str, member: ClusterNode) -> None:
        # Peers are authenticated by the proof inside TLS (link.py), not by certificate.
        options = CertificateOptions(raiseMinimumTo=TLSVersion.TLSv1_3, verify=False)
        endpoint = SSL4ClientEndpoint(self.reactor, member.address or member.name, member.port, options,
                                      timeout=max(1, int(self.failure_timeout)))
        attempt = endpoint.connect(_OneLink(self, peer))
        self._connecting[peer] = attempt

        def failed(failure: Any) -> None:
            self._connecting.pop(peer, None)
            self._backoff[peer] = min(3.0, max(0.25, self._backoff.get(peer, 0.0) * 2))
            log.debug("cluster: cannot reach {peer}: {why}", peer=peer, why=failure.getErrorMessage())

        attempt.addCallbacks(lambda _: self._connecting.pop(peer, None), failed)

    # -- link events -------------------------------------------------------------------------------

    def link_up(self, link: Link) -> None:
        peer = link.peer
        old = self.links.get(peer)
        if old is not None and old is not link:
            old.abort("replaced by a new link")
        self.links[peer] = link
        self._backoff.pop(peer, None)
        self._suspects.pop(peer, None)
        self._sent[peer] = 0
        self._outbox[peer] = deque()
        local = [s for s in self.server.sessions if s.node is None]
        self.directory.begin_sync(peer)
        link.send(self.events.resync_frame(peer))
        self._send_sync(link, sync_frames(local, self._live))
        for body, jid, keep in self._waiting.pop(peer, []):
            self._route_body(peer, body, jid, keep)
        log.info("cluster: link to {peer} up ({n} local sessions sent)", peer=peer, n=len(local))
        self.server.hooks.fire("cluster/node-up", peer)

    def link_lost(self, link: Link, why: str) -> None:
        peer = link.peer
        if peer is None or self.links.get(peer) is not link:
            return
        del self.links[peer]
        self.events.link_lost(peer, self.failure_timeout)
        unacked = [(body, jid, node) for _, body, jid, node in self._outbox.pop(peer, ())]
        if not self._stopping:
            log.warn("cluster: link to {peer} down: {why}", peer=peer, why=why)
            self._suspects[peer] = self.clock.seconds()
            self._connecting.pop(peer, None)
            self._judge()
        for body, jid, node in unacked:
            self._route_body(node, body, jid, keep=True)  # waits for the reconnect, or rerouted if dead

    def _judge(self) -> None:
        """Declare dead the suspects unreachable for ``failure-timeout`` that no live peer still reaches."""
        now = self.clock.seconds()
        for peer, since in list(self._suspects.items()):
            if peer in self.links:
                self._suspects.pop(peer)
                continue
            if any(peer in link.peer_links for link in self.links.values()):
                self._suspects[peer] = now  # alive behind another node: stanzas go through it
                continue
            if now - since < self.failure_timeout:
                continue  # a blip or a quick restart: the reconnect's <sync/> will tell
            self._suspects.pop(peer)
            self._declare_dead(peer)

    def _declare_dead(self, peer: str) -> None:
        waiting = self._waiting.pop(peer, [])
        gone = self.directory.drop_node(peer)
        announcer = self._announcer(excluding=peer)
        log.warn("cluster: node {peer} is down; {n} sessions removed{who}", peer=peer, n=len(gone),
                 who=" (this node announces them unavailable)" if announcer else "")
        self.server.hooks.fire("cluster/node-down", peer)
        if announcer:
            for remote in gone:
                self.server.hooks.fire("session/unbound", remote, f"node {peer} down")
        for body, jid, _ in waiting:
            self._undeliverable(body, jid)

    def _announcer(self, excluding: str) -> bool:
        """Whether this node speaks for ``excluding``'s lost sessions: the first live node by name."""
        return min([self.name, *(n for n in self.links if n != excluding)]) == self.name

    def acknowledged(self, link: Link, count: int) -> None:
        outbox = self._outbox.get(link.peer)
        while outbox and outbox[0][0] <= count:
            outbox.popleft()

    # -- receiving ---------------------------------------------------------------------------------

    def routed(self, link: Link, target: str, jid: str, body: bytes) -> defer.Deferred | None:
        """A routed frame: deliver ``body`` to the local session ``jid`` (the stanza's ``to`` may be a bare
        JID: the sender already chose the resource), or relay it to ``target``. The stanza travels as text
        and is written to the client as it is: no tree is built for it on this node.

        Returns None when the stanza is taken care of (written to a live client transport, relayed, routed
        elsewhere or answered with an error), or a Deferred firing once its offline store is over: the
        frame is acknowledged only then. Whatever goes wrong with it, the stanza is answered, never raised."""
        if not body:
            return None
        if target and target != self.name:
            # Relay for a peer that lost its direct link; kept here until the next hop acknowledges it.
            self._route_body(target, body, jid, keep=_kept(body))
            return None
        bare, _, resource = jid.partition("/")
        session = self.server.sessions.get(bare, resource)
        if session is not None and session.node is None and getattr(session.stream, "state", None) != "closed":
            try:
                session.deliver_serialized(body)
            except Exception:
                log.failure("delivering a routed stanza to {jid} failed", jid=jid)
                self._bounce_text(body, "internal-server-error")
            return None
        return self._undeliverable(body, jid)

    def _undeliverable(self, body: bytes, jid: str) -> defer.Deferred | None:
        """The session ``jid`` is gone: the RFC 6121 fallback (other resources, offline storage, an error).
        A Deferred when an offline store was started for the stanza."""
        stanza = self._reparse(body)
        if stanza is None or stanza.getAttribute("type") == "error":
            return None
        try:
            self.server.router.undeliverable(stanza, jid.partition("/")[0])
        except Exception:
            log.failure("routing an undeliverable stanza for {jid} failed", jid=jid)
            self.server.router.bounce(stanza, "internal-server-error")
            return None
        offline = self.server.modules.get("msgoffline")
        storing = getattr(offline, "storing", None)
        return storing(stanza) if storing is not None else None

    def _reparse(self, body: bytes) -> domish.Element | None:
        """A stanza kept as text, as an element again (to route it another way); None (and the sender
        told) when it cannot be parsed."""
        try:
            return parse_element(body, max_bytes=len(body) + 1, **self.reparse_limits)
        except StreamFault as fault:
            log.warn("cluster: a routed stanza cannot be parsed again ({condition}: {text}); bounced",
                     condition=fault.condition, text=fault.text or "")
            self._bounce_text(body, "policy-violation" if fault.condition == "policy-violation"
                              else "internal-server-error")
            return None

    def _bounce_text(self, body: bytes, condition: str, text: str | None = None) -> None:
        """Answer a serialized stanza with an error, from its start tag alone (the rest may be unreadable)."""
        stanza = _envelope(body)
        if stanza is not None:
            self.server.router.bounce(stanza, condition, text)

    def event(self, link: Link, element: domish.Element) -> None:
        name, peer = element.name, link.peer
        if name == "bound":
            self.directory.bound(peer, element)
        elif name == "state":
            self.directory.state(peer, element)
        elif name == "unbound":
            self.directory.unbound(peer, element.getAttribute("jid") or "")
        elif name in ("directed", "undirected"):
            self.directory.directed(peer, element, name == "directed")
        elif name == "sync":
            vanished = self.directory.sync(peer, element)
            if vanished and self._announcer(excluding=peer):
                for remote in vanished:  # ended while we could not hear of it: say so, once
                    self.server.hooks.fire("session/unbound", remote, f"gone from {peer}")
        elif name == "kick":
            self._kick(element.getAttribute("jid") or "", element.getAttribute("condition") or "conflict")
        elif name == "event":
            if self.events.accept(element):
                self.server.hooks.fire(f"remote/{element.getAttribute('name')}", element)
        elif name == "resync":
            self.events.resync(peer, element)
        elif name == "reset":
            self.events.reset(element)
        elif name == "relay":
            target = element.getAttribute("node")
            inner = next(element.elements(), None)
            if target in self.links and inner is not None:
                self.links[target].send(serialize(inner).encode())
        else:
            self.server.hooks.fire(f"cluster/{name}", peer, element)

    def _kick(self, jid: str, condition: str) -> None:
        bare, _, resource = jid.partition("/")
        session = self.server.sessions.get(bare, resource)
        if session is not None and session.node is None:
            session.close(condition, "replaced by a newer session on another node")

    # -- sending -----------------------------------------------------------------------------------

    def route_to(self, node: str, stanza: domish.Element, jid: str) -> None:
        """Deliver a stanza to the session ``jid`` on ``node``: one hop, or two through a peer that reaches it."""
        keep = stanza.name == "message" and stanza.getAttribute("type") in ROUTED_TYPES_KEPT
        self._route_body(node, serialize(stanza).encode("utf-8"), jid, keep)

    def _route_body(self, node: str, body: bytes, jid: str, keep: bool) -> None:
        """Send a serialized stanza (UTF-8, with its xmlns) towards ``jid`` on ``node``: on its link, or
        through a peer that reaches it (counted and kept on that peer's link: it acknowledges the hop)."""
        link = self.links.get(node)
        via = link if link is not None else self._relay_for(node)
        if via is not None:
            if len(body) > self.max_frame_bytes - 4096:  # the rest of the frame: two JIDs at most
                log.warn("cluster: a stanza of {n} bytes for {jid} exceeds the frame limit; bounced",
                         n=len(body), jid=jid)
                self._bounce_text(body, "policy-violation", "too large to route between cluster nodes")
                return
            peer = via.peer
            self._sent[peer] += 1
            if keep:
                self._outbox[peer].append((self._sent[peer], body, jid, node))
            via.send_routed("" if via is link else node, jid, body)
            return
        if node in self._suspects:
            # Unreachable for now: keep it until the node is back (sent then) or declared dead (rerouted).
            self._waiting.setdefault(node, []).append((body, jid, keep))
            return
        # Not a member we can reach at all: forget its sessions and deliver elsewhere.
        self.directory.drop_node(node)
        self._undeliverable(body, jid)

    def _send_sync(self, link: Link, frames: Any, count: int = 0, largest: int = 0) -> None:
        """The ``<sync>`` frames, one per reactor turn: a large directory neither stalls this node nor makes
        one frame the peer refuses."""
        if self.links.get(link.peer) is not link:
            return  # the link went down: the next one syncs again
        frame = next(frames)
        link.send(frame)
        count, largest = count + 1, max(largest, len(frame))
        if frame.startswith(b"<sync end="):
            log.info("cluster: directory sent to {peer} in {count} frames (largest {largest} bytes)",
                     peer=link.peer, count=count, largest=largest)
        else:
            self.clock.callLater(0, self._send_sync, link, frames, count, largest)

    def _live(self, session: Session) -> bool:
        return self.server.sessions.get(session.bare, session.resource) is session

    def event_path(self, node: str) -> Any:
        """How to send a control element to ``node`` now: its link's ``send``, a relay through a peer that
        reaches it, or None."""
        link = self.links.get(node)
        if link is not None:
            return link.send
        relay = self._relay_for(node)
        if relay is None:
            return None
        head = f"<relay node={quoteattr(node)}>".encode()
        return lambda xml: relay.send(head + xml + b"</relay>")

    def send_event(self, node: str, xml: str) -> bool:
        """Send a control element to ``node``, directly or relayed; False when it cannot be reached now."""
        link = self.links.get(node)
        if link is not None:
            link.send(xml.encode())
        else:
            relay = self._relay_for(node)
            if relay is None:
                return False
            relay.send(f"<relay node={quoteattr(node)}>{xml}</relay>".encode())
        return True

    def _relay_for(self, node: str) -> Link | None:
        """A live peer that reports a link to ``node``."""
        return next((link for link in self.links.values() if node in link.peer_links), None)

    def broadcast(self, data: bytes) -> None:
        for link in self.links.values():
            link.send(data)

    # -- local events (hooks; they observe, never handle) ------------------------------------------

    def _local_bound(self, session: Session) -> bool:
        if session.node is None:
            self.directory.stamp(session)
            self.broadcast(describe(session))
        return False

    def _local_state(self, stanza: domish.Element, session: Session) -> bool:
        return self._local_changed(session)

    def _local_changed(self, session: Session) -> bool:
        """Presence, priority or roster interest changed: peers update the entry."""
        if session.node is None:
            self.broadcast(describe(session, "state"))
        return False

    def _local_directed(self, session: Session, target: str | None, added: bool) -> bool:
        """A directed-presence recipient added or removed (kept by peers, so that whoever announces this
        node's death also ends directed presence): peers get the change, not the whole list."""
        if session.node is None:
            self.broadcast(directed_delta(session, target, added))
        return False

    def _local_unbound(self, session: Session, reason: str) -> bool:
        if session.node is None:
            self.broadcast(f"<unbound jid={quoteattr(session.jid)}/>".encode())
        return False

    def _offline_waiting(self, owner: str, node: str) -> bool:
        """A message of ``owner`` was stored here while its eligible resources are on ``node``: that node
        delivers it (its ``cluster/offline-waiting`` hook)."""
        self.send_event(node, f"<offline-waiting owner={quoteattr(owner)}/>")
        return True

    def _roster_changed(self, owner: str, contact: str) -> bool:
        self.events.publish("roster/changed", {"owner": owner, "contact": contact})
        return False

    def _blocking_changed(self, owner: str, added: list[str], removed: list[str]) -> bool:
        """Peers forget their cached blocklist of ``owner`` and push the change to their resources of it."""
        items = "".join(f"<block jid={quoteattr(jid)}/>" for jid in added)
        items += "".join(f"<unblock jid={quoteattr(jid)}/>" for jid in removed)
        self.events.publish("blocking/changed", {"owner": owner}, items)
        return False

    def _remote_roster_changed(self, element: domish.Element) -> bool:
        """Another node changed a roster in the shared database: drop our cached copy."""
        return self._invalidate("jabber:iq:roster", element)

    def _remote_blocking_changed(self, element: domish.Element) -> bool:
        module = self.server.modules.get("urn:xmpp:blocking")
        if module is not None:
            changes = {"block": [], "unblock": []}
            for child in element.elements():
                if child.name in changes and child.getAttribute("jid"):
                    changes[child.name].append(child["jid"])
            module.pushed_elsewhere(element.getAttribute("owner") or "", changes["block"], changes["unblock"])
        return True

    def _reset_caches(self, why: str) -> None:
        """Cache events may have been lost: forget every cached roster and blocklist (reloaded on next use)."""
        log.info("cluster: cached rosters and blocklists dropped ({why})", why=why)
        for name in ("jabber:iq:roster", "urn:xmpp:blocking"):
            module = self.server.modules.get(name)
            if module is not None:
                module.invalidate_all()

    def _invalidate(self, module_name: str, element: domish.Element) -> bool:
        module = self.server.modules.get(module_name)
        if module is not None:
            module.invalidate(element.getAttribute("owner") or "")
        return True

    # -- draining ----------------------------------------------------------------------------------

    def live_peer(self) -> str | None:
        """A node to send clients to when this one stops."""
        live = sorted(self.links)
        return live[0] if live else None



_START_TAG = re.compile(rb"<(message|presence|iq)[\s/>]")
_ATTRIBUTE = re.compile(rb"""\s([a-z]+)=(['"])(.*?)\2""")
_ENTITIES = {"&apos;": "'", "&quot;": '"'}


def _start_tag(body: bytes) -> tuple[str, dict[str, str]] | None:
    """Name and plain attributes of a serialized stanza's start tag (as our serializer writes it)."""
    match = _START_TAG.match(body)
    end = body.find(b">")
    if match is None or end < 0:
        return None
    try:
        attributes = {name.decode(): unescape(value.decode("utf-8"), _ENTITIES)
                      for name, _, value in _ATTRIBUTE.findall(body, match.end() - 1, end)}
    except UnicodeDecodeError:
        return None
    return match.group(1).decode(), attributes


def _kept(body: bytes) -> bool:
    """Whether a serialized stanza is a message kept until acknowledged (as :meth:`Cluster.route_to` decides)."""
    tag = _start_tag(body) if body.startswith(b"<message") else None
    return tag is not None and tag[1].get("type") in ROUTED_TYPES_KEPT


def _envelope(body: bytes) -> domish.Element | None:
    """A serialized stanza's start tag alone as an element (enough to answer it with an error)."""
    tag = _start_tag(body)
    if tag is None:
        return None
    name, attributes = tag
    stanza = domish.Element((CLIENT, name))
    for key in ("from", "to", "id", "type"):
        if key in attributes:
            stanza[key] = attributes[key]
    return stanza


class _OneLink(LinkFactory):
    """Client-side factory for one outgoing link."""

    def __init__(self, cluster: Cluster, peer: str) -> None:
        super().__init__(cluster)
        self.peer = peer

    def buildProtocol(self, addr: Any) -> Link:
        return Link(self.cluster, self.peer)

