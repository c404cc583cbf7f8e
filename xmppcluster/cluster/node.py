"""This node's place in the cluster: a thin :class:`Cluster` composing the parts, each with one job.

- :class:`~xmppcluster.cluster.membership.Membership`: who the peers are, link keys, the ``cluster_nodes`` row;
- :class:`~xmppcluster.cluster.dialer.Dialer`: dialing the peers this node initiates to, with backoff;
- :class:`~xmppcluster.cluster.link.Link`: one authenticated link, its heartbeats and acknowledgements;
- :class:`~xmppcluster.cluster.failure.FailureDetector`: suspects, and when a suspect is dead;
- :class:`~xmppcluster.cluster.delivery.Delivery`: routed stanzas, the outbox and acks, relays, replay;
- :class:`~xmppcluster.cluster.directory.Directory`: the replicated session directory;
- :class:`~xmppcluster.cluster.events.Events`: numbered cache events and their resync.

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

import time
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.endpoints import SSL4ClientEndpoint
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.words.xish import domish

from xmppcluster.cluster import protocol as wire
from xmppcluster.cluster.delivery import Delivery, kept_type
from xmppcluster.cluster.dialer import Dialer
from xmppcluster.cluster.directory import Directory, describe, directed_delta, sync_frames
from xmppcluster.cluster.events import Events
from xmppcluster.cluster.failure import FailureDetector
from xmppcluster.cluster.link import Link, LinkFactory
from xmppcluster.cluster.membership import Membership, MembershipStore
from xmppcluster.cluster.status import render
from xmppcluster.config import ClusterNode
from xmppcluster.core import events as ev
from xmppcluster.core.serializer import serialize, start_tag, tag

if TYPE_CHECKING:
    from xmppcluster.core.server import XMPPServer
    from xmppcluster.core.sessions import Session

log = Logger()


class Cluster:
    """Membership, links and the directory of one node."""

    def __init__(self, server: XMPPServer, *, reactor: Any) -> None:
        config = server.config
        self.server = server
        self.reactor = reactor
        self.clock = server.clock
        self.name = server.node_name
        self.heartbeat_interval = config.cluster.heartbeat_interval
        self.failure_timeout = config.cluster.failure_timeout
        self.handshake_timeout = config.cluster.handshake_timeout
        limits = server.limits
        #: Largest frame a link accepts (and sends): room for any stanza a client may send, with what the
        #: server adds to it (delay, error, forwarding wrappers). Every node has the same limits.
        self.max_frame_bytes = max(wire.MAX_ELEMENT_BYTES, 2 * limits.max_stanza_bytes + 65536)
        #: Limits for parsing a routed stanza again (to route it elsewhere): generous for the same reason.
        self.reparse_limits = {"max_elements": max(1_000_000, 4 * limits.max_elements),
                               "max_depth": max(1_000, 2 * limits.max_depth + 8)}
        self.membership = Membership(self.name, config, failure_timeout=self.failure_timeout, report=self._report)
        self.links: dict[str, Link] = {}
        self.directory = Directory(self)
        self.events = Events(self)
        self.events.on_reset = self._reset_caches
        self.delivery = Delivery(self)
        self.dialer = Dialer(self.clock, self._dial)
        self.failure = FailureDetector(self.clock, self.failure_timeout, linked=lambda peer: peer in self.links,
                                       reached=lambda peer: self._relay_for(peer) is not None,
                                       dead=self._declare_dead)
        self._stopping = False
        self._sweeper = None
        self.bosh = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.membership.join(self.server.storage.db)
        self.subscribe()
        from xmppcluster.cluster.bosh_forward import BoshForwarder

        self.bosh = BoshForwarder(self)
        self._sweeper = self.clock.callLater(0, self._sweep)
        log.info("cluster node {name}: peers {peers}", name=self.name,
                 peers=", ".join(sorted(self.peers())) or "none yet")

    def subscribe(self) -> None:
        """Observe this node's session and cache events (sent to peers)."""
        on = self.server.hooks.on
        on(ev.SESSION_BOUND, self._local_bound, 1000)
        on(ev.PRESENCE_BROADCAST, self._local_state, 1000)
        on(ev.SESSION_DIRECTED, self._local_directed, 1000)
        on(ev.SESSION_INTERESTED, self._local_changed, 1000)
        on(ev.SESSION_CARBONS, self._local_changed, 1000)
        on(ev.SESSION_UNBOUND, self._local_unbound, 1000)
        on(ev.ROSTER_CHANGED, self._roster_changed, -1000)
        on(ev.BLOCKING_CHANGED, self._blocking_changed, -1000)
        on(ev.OFFLINE_WAITING, self._offline_waiting)

    async def stop(self) -> None:
        self._stopping = True
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self.dialer.stop()
        for link in list(self.links.values()):
            link.closing = True
            link.transport.loseConnection()
        await self.membership.leave()

    def factory(self) -> LinkFactory:
        return LinkFactory(self)

    # -- membership (what links ask) ----------------------------------------------------------------

    @property
    def members(self) -> dict[str, ClusterNode]:
        return self.membership.members

    def peers(self) -> list[str]:
        return self.membership.peers()

    def knows(self, name: str) -> bool:
        return self.membership.knows(name)

    def should_accept(self, peer: str) -> bool:
        return self.membership.should_accept(peer)

    def key_for(self, peer: str) -> bytes:
        return self.membership.key_for(peer)

    async def status(self) -> list[str]:
        """The cluster as ``xmppcluster cluster-status`` prints it (every node's heartbeat row: state, age,
        sessions, links), then this node's own view: each peer's link state and the sessions of it known here.
        For the ad-hoc "cluster status" command (modules reach it as ``server.cluster.status()``)."""
        rows = await MembershipStore(self.server.storage.db).rows()
        lines = render(rows, time.time(), max(3 * self.failure_timeout, 5.0))
        lines.append(f"seen from {self.name} (sessions here: {self._report()[0]}):")
        for peer in sorted(self.peers()):
            state = "up" if peer in self.links else "suspect" if self.failure.is_suspect(peer) else "down"
            lines.append(f"  link to {peer}: {state}, {self.directory.count(peer)} sessions")
        return lines

    def _report(self) -> tuple[int, dict[str, int]]:
        """What this node's row says: its local sessions, and how many of each linked peer's it knows."""
        return (sum(1 for s in self.server.sessions if s.node is None),
                {name: self.directory.count(name) for name in self.links})

    def _sweep(self) -> None:
        """Periodic: connect to peers we initiate to, publish our row, judge silent nodes."""
        if self._stopping:
            return
        for peer in self.peers():
            if peer not in self.links and not self.dialer.busy(peer) and not self.should_accept(peer):
                self.dialer.dial(peer)
        self.failure.judge()
        self.events.flush_all()  # through a relay that appeared, for a peer without a link
        defer.ensureDeferred(self.membership.refresh()).addErrback(
            lambda f: log.failure("cluster membership update failed", f))
        self._sweeper = self.clock.callLater(self.heartbeat_interval, self._sweep)

    def _dial(self, peer: str) -> defer.Deferred:
        """One connection attempt to ``peer`` (the :class:`Dialer` schedules them)."""
        member = self.members[peer]
        # Peers are authenticated by the proof inside TLS (link.py), not by certificate.
        options = CertificateOptions(raiseMinimumTo=TLSVersion.TLSv1_3, verify=False)
        endpoint = SSL4ClientEndpoint(self.reactor, member.address or member.name, member.port, options,
                                      timeout=max(1, int(self.failure_timeout)))
        return endpoint.connect(_OneLink(self, peer))

    # -- link events -------------------------------------------------------------------------------

    def link_up(self, link: Link) -> None:
        peer = link.peer
        old = self.links.get(peer)
        if old is not None and old is not link:
            old.abort("replaced by a new link")
        self.links[peer] = link
        self.dialer.connected(peer)
        self.failure.recovered(peer)
        local = [s for s in self.server.sessions if s.node is None]
        self.directory.begin_sync(peer)
        link.send(self.events.resync_frame(peer))
        self._send_sync(link, sync_frames(local, self._live))
        self.delivery.link_up(peer)
        log.info("cluster: link to {peer} up ({n} local sessions sent)", peer=peer, n=len(local))
        self.server.hooks.notify(ev.CLUSTER_NODE_UP, peer)

    def link_lost(self, link: Link, why: str) -> None:
        peer = link.peer
        if peer is None or self.links.get(peer) is not link:
            return
        del self.links[peer]
        self.events.link_lost(peer, self.failure_timeout)
        unacked = self.delivery.link_lost(peer)
        if not self._stopping:
            log.warn("cluster: link to {peer} down: {why}", peer=peer, why=why)
            self.failure.suspect(peer)
            self.dialer.lost(peer)
            self.failure.judge()
        self.delivery.reroute(unacked)

    def _declare_dead(self, peer: str) -> None:
        waiting = self.delivery.node_dead(peer)
        gone = self.directory.drop_node(peer)
        announcer = self._announcer(excluding=peer)
        log.warn("cluster: node {peer} is down; {n} sessions removed{who}", peer=peer, n=len(gone),
                 who=" (this node announces them unavailable)" if announcer else "")
        self.server.hooks.notify(ev.CLUSTER_NODE_DOWN, peer)
        if announcer:
            for remote in gone:
                self.server.hooks.notify(ev.SESSION_UNBOUND, remote, f"node {peer} down")
        self.delivery.deliver_elsewhere(waiting)

    def _announcer(self, excluding: str) -> bool:
        """Whether this node speaks for ``excluding``'s lost sessions: the first live node by name."""
        return min([self.name, *(n for n in self.links if n != excluding)]) == self.name

    def acknowledged(self, link: Link, count: int) -> None:
        self.delivery.acknowledged(link.peer, count)

    # -- receiving ---------------------------------------------------------------------------------

    def routed(self, link: Link, target: str, jid: str, body: bytes) -> defer.Deferred | None:
        """A routed frame (see :meth:`Delivery.routed`): None when taken care of, or a Deferred firing once
        its offline store is over."""
        return self.delivery.routed(link, target, jid, body)

    def offline_storing(self, stanza: domish.Element) -> defer.Deferred | None:
        """The offline store started for ``stanza`` by the router's fallback, if any (acknowledged after it)."""
        return self.server.hooks.dispatch(ev.OFFLINE_STORING, stanza)

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
                    self.server.hooks.notify(ev.SESSION_UNBOUND, remote, f"gone from {peer}")
        elif name == "kick":
            self._kick(element.getAttribute("jid") or "", element.getAttribute("condition") or "conflict",
                       element.getAttribute("text"))
        elif name == "event":
            if self.events.accept(element):
                self._changed_elsewhere(element)
        elif name == "resync":
            self.events.resync(peer, element)
        elif name == "reset":
            self.events.reset(element)
        elif name == "relay":
            target = element.getAttribute("node")
            inner = next(element.elements(), None)
            if target in self.links and inner is not None:
                self.links[target].send(serialize(inner).encode())
        elif name in _PEER_EVENTS:
            self.server.hooks.notify(_PEER_EVENTS[name], peer, element)
        else:
            log.debug("cluster: <{name}/> from {peer} ignored", name=name, peer=peer)

    def _kick(self, jid: str, condition: str, text: str | None = None) -> None:
        """A peer ends a session of this node: a newer one took its full JID, or (with ``text``) an
        administrator's command on that peer did."""
        bare, _, resource = jid.partition("/")
        session = self.server.sessions.get(bare, resource)
        if session is not None and session.node is None:
            session.close(condition, text or "replaced by a newer session on another node")

    # -- sending -----------------------------------------------------------------------------------

    def route_to(self, node: str, stanza: domish.Element, jid: str) -> None:
        """Deliver a stanza to the session ``jid`` on ``node``: one hop, or two through a peer that reaches it."""
        self.delivery.route(node, serialize(stanza).encode("utf-8"), jid, kept_type(stanza))

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
        head = start_tag("relay", {"node": node}).encode()
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
            relay.send(tag("relay", {"node": node}, xml).encode())
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
        """Presence, priority, roster interest or the carbons flag changed: peers update the entry."""
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
            self.broadcast(tag("unbound", {"jid": session.jid}).encode())
        return False

    def _offline_waiting(self, owner: str, node: str) -> bool:
        """A message of ``owner`` was stored here while its eligible resources are on ``node``: that node
        delivers it (its ``cluster/offline-waiting`` hook)."""
        self.send_event(node, tag("offline-waiting", {"owner": owner}))
        return True

    def _roster_changed(self, owner: str, contact: str) -> bool:
        self.events.publish("roster/changed", {"owner": owner, "contact": contact})
        return False

    def _blocking_changed(self, owner: str, added: list[str], removed: list[str]) -> bool:
        """Peers forget their cached blocklist of ``owner`` and push the change to their resources of it."""
        items = "".join(tag("block", {"jid": jid}) for jid in added)
        items += "".join(tag("unblock", {"jid": jid}) for jid in removed)
        self.events.publish("blocking/changed", {"owner": owner}, items)
        return False

    def _changed_elsewhere(self, element: domish.Element) -> None:
        """A cache event of another node (applied once): the modules caching that data drop their copy."""
        name, owner = element.getAttribute("name"), element.getAttribute("owner") or ""
        if name == "roster/changed":
            self.server.hooks.notify(ev.ROSTER_CHANGED_ELSEWHERE, owner)
        elif name == "blocking/changed":
            changes: dict[str, list[str]] = {"block": [], "unblock": []}
            for child in element.elements():
                if child.name in changes and child.getAttribute("jid"):
                    changes[child.name].append(child["jid"])
            self.server.hooks.notify(ev.BLOCKLIST_CHANGED_ELSEWHERE, owner, changes["block"], changes["unblock"])

    def _reset_caches(self, why: str) -> None:
        """Cache events may have been lost: every cached roster and blocklist is to be dropped (reloaded on
        next use)."""
        log.info("cluster: cached rosters and blocklists dropped ({why})", why=why)
        self.server.hooks.notify(ev.CACHES_STALE)

    # -- draining ----------------------------------------------------------------------------------

    def live_peer(self) -> str | None:
        """A node to send clients to when this one stops."""
        live = sorted(self.links)
        return live[0] if live else None



#: Control elements from a peer handed to other parts of this node: a fixed table, never a name from the wire.
_PEER_EVENTS = {"offline-waiting": ev.OFFLINE_WAITING_HERE, "bosh-req": ev.CLUSTER_BOSH_REQUEST,
                "bosh-resp": ev.CLUSTER_BOSH_RESPONSE, "comp-up": ev.CLUSTER_COMPONENT,
                "comp-down": ev.CLUSTER_COMPONENT, "comp-stanza": ev.CLUSTER_COMPONENT}


class _OneLink(LinkFactory):
    """Client-side factory for one outgoing link."""

    def __init__(self, cluster: Cluster, peer: str) -> None:
        super().__init__(cluster)
        self.peer = peer

    def buildProtocol(self, addr: Any) -> Link:
        return Link(self.cluster, self.peer)

