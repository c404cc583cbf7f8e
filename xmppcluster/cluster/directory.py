"""The replicated session directory: sessions of other nodes, as seen on this one.

Each entry is owned by the node hosting the session and changed only by its events (bound, state,
unbound, sync). A :class:`RemoteSession` sits in the same :class:`~xmppcluster.core.sessions.SessionRegistry`
as local sessions, so routing, presence and roster pushes treat every resource of the cluster alike;
delivering to it sends the stanza over the owner's link: one hop.

Two sessions with one full JID are ordered by a Lamport clock, not by wall clocks: a node stamps each
session it binds with its counter plus one, and raises its counter to every stamp it hears of. A session
bound on a node that already knew the other one is therefore the newer, whatever the clocks say; binds
that could not see each other are ordered by stamp, then node name, the same way on every node.

The ``<sync>`` at link-up comes in frames of at most :data:`SYNC_BATCH_BYTES` of entries (the last one
marked ``end``), and directed-presence recipients travel as deltas: no frame grows with the whole
directory, nor with a session's whole recipient list.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from twisted.logger import Logger
from twisted.words.xish import domish

from xmppcluster.cluster.delivery import kept
from xmppcluster.core.events import SESSION_CARBONS
from xmppcluster.core.namespaces import CARBONS, CLIENT
from xmppcluster.core.serializer import serialize
from xmppcluster.core.serializer import tag as element
from xmppcluster.core.sessions import Session

if TYPE_CHECKING:
    from xmppcluster.cluster.node import Cluster

log = Logger()
_order = itertools.count(1_000_000_000)
#: Entries per ``<sync>`` frame stop at this many bytes (one entry larger than that goes alone: a presence is
#: at most ``--max-stanza-size``, its recipients at most ``--directed-presence-max`` JIDs).
SYNC_BATCH_BYTES = 64 * 1024
#: Where a local session keeps its stamp (``Session.data``).
STAMP = "cluster/stamp"


class RemoteSession:
    """A session bound on another node (a :class:`~xmppcluster.core.sessions.BoundSession`)."""

    stream = None
    is_local = False
    #: Only the owner node knows; what this node does for an anonymous session it does for its own only.
    anonymous = False
    #: Open while the directory holds it (the owner node says when it ends).
    is_open = True

    def __init__(self, cluster: Cluster, node: str, jid: str, stamp: int) -> None:
        self.cluster = cluster
        self.node = node
        self.jid = jid
        self.bare, _, self.resource = jid.partition("/")
        self.user, _, self.domain = self.bare.partition("@")
        self.stamp = stamp
        self.priority = 0
        self.presence: domish.Element | None = None
        self.interested = False
        self.directed: set[str] = set()
        self.data: dict[str, object] = {}
        self.order = next(_order)

    @property
    def available(self) -> bool:
        return self.presence is not None

    def deliver(self, stanza: domish.Element) -> None:
        self.cluster.route_to(self.node, stanza, self.jid)

    def deliver_serialized(self, xml: bytes) -> None:
        self.cluster.delivery.route(self.node, xml, self.jid, kept(xml))

    def close(self, condition: str, text: str | None = None) -> None:
        attrs = {"jid": self.jid, "condition": condition}
        if text:
            attrs["text"] = text[:200]
        self.cluster.send_event(self.node, element("kick", attrs))

    def replaced(self) -> None:
        """The owner node ends it when it hears of the newer session."""

    def __repr__(self) -> str:
        return f"<RemoteSession {self.jid} on {self.node} prio={self.priority} available={self.available}>"


def stamp_of(session: Session | RemoteSession) -> int:
    """The Lamport stamp of a session's bind (0 for a local session bound before the cluster started)."""
    if session.node is not None:
        return session.stamp
    return session.data.get(STAMP, 0)


def newer(a: Session | RemoteSession, b: Session | RemoteSession, local_node: str) -> bool:
    """True when ``a`` was bound after ``b`` in the cluster's logical order (ties broken by node name, so
    every node agrees)."""
    return (stamp_of(a), a.node or local_node) > (stamp_of(b), b.node or local_node)


def describe(session: Session, tag: str = "bound") -> bytes:
    """A local session's directory entry as sent to other nodes: ``bound`` (with its stamp and directed-presence
    recipients) or ``state`` (presence, priority and interest only)."""
    presence = session.presence
    inner = serialize(presence) if presence is not None else ""
    stamp = None
    if tag == "bound":
        stamp = stamp_of(session)
        inner += "".join(element("directed", {"to": target}) for target in session.directed)
    return element(tag, {"jid": session.jid, "stamp": stamp, "prio": session.priority,
                         "interested": int(session.interested),
                         "carbons": 1 if session.data.get(CARBONS) else None}, inner).encode()


def directed_delta(session: Session, target: str | None, added: bool) -> bytes:
    """One change of a local session's directed-presence recipients: ``<directed jid to/>`` (added),
    ``<undirected jid to/>`` (removed) or ``<undirected jid/>`` (all removed)."""
    return element("directed" if added else "undirected", {"jid": session.jid, "to": target}).encode()


def sync_frames(sessions: Iterable[Session], live: Callable[[Session], bool],
                limit: int = SYNC_BATCH_BYTES) -> Iterator[bytes]:
    """The ``<sync>`` elements for ``sessions``: entries gathered up to ``limit`` bytes per element, the last
    element marked ``end='1'`` (one even with no session). Consumed lazily: an entry is described when its
    frame is built, and a session that ``live`` rejects by then (it ended) is left out."""
    batch: list[bytes] = []
    size = 0
    for session in sessions:
        if not live(session):
            continue
        entry = describe(session)
        if batch and size + len(entry) > limit:
            yield b"<sync>" + b"".join(batch) + b"</sync>"
            batch, size = [], 0
        batch.append(entry)
        size += len(entry)
    yield b"<sync end='1'>" + b"".join(batch) + b"</sync>"


def parse_state(element: domish.Element) -> tuple[int, bool, domish.Element | None]:
    """(priority, interested, presence or None) of a bound/state element."""
    try:
        priority = int(element.getAttribute("prio") or 0)
    except ValueError:
        priority = 0
    presence = None
    for child in element.elements(CLIENT, "presence"):
        presence = child
    return priority, element.getAttribute("interested") == "1", presence


def parse_carbons(element: domish.Element, remote: RemoteSession) -> bool:
    """Set ``remote``'s XEP-0280 carbons flag (``data[CARBONS]``) from its bound/state element; True when it
    changed."""
    enabled = element.getAttribute("carbons") == "1"
    if enabled == bool(remote.data.get(CARBONS)):
        return False
    if enabled:
        remote.data[CARBONS] = True
    else:
        remote.data.pop(CARBONS, None)
    return True


def parse_directed(element: domish.Element) -> set[str]:
    """The JIDs a session sent directed presence to, from its bound element."""
    return {child["to"] for child in element.elements(element.uri, "directed") if child.getAttribute("to")}


def parse_stamp(element: domish.Element) -> int:
    try:
        return max(0, int(element.getAttribute("stamp") or 0))
    except ValueError:
        return 0


class Directory:
    """Remote sessions by node, mirrored into the server's session registry; the Lamport clock of binds."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.sessions = cluster.server.sessions
        self.by_node: dict[str, dict[str, RemoteSession]] = {}
        self.clock = 0
        self._listed: dict[str, set[str]] = {}  # node -> JIDs its <sync> in progress has listed so far

    def count(self, node: str) -> int:
        return len(self.by_node.get(node, {}))

    def stamp(self, session: Session) -> int:
        """Stamp a local session just bound: after every bind this node has heard of."""
        self.clock += 1
        session.data[STAMP] = self.clock
        return self.clock

    def bound(self, node: str, element: domish.Element) -> None:
        jid = element.getAttribute("jid") or ""
        if "/" not in jid or "@" not in jid.partition("/")[0]:
            return
        listed = self._listed.get(node)
        if listed is not None:
            listed.add(jid)
        remote = RemoteSession(self.cluster, node, jid, parse_stamp(element))
        self.clock = max(self.clock, remote.stamp)
        remote.priority, remote.interested, remote.presence = parse_state(element)
        remote.directed = parse_directed(element)
        existing = self.sessions.get(remote.bare, remote.resource)
        if existing is not None and existing is not self.by_node.get(node, {}).get(jid):
            if not newer(remote, existing, self.cluster.name):
                remote.close("conflict", "an older session with this resource")
                return
            # The newer session wins everywhere: the older one is closed by its owner.
            existing.replaced()
            if existing.node is None:
                existing.close("conflict", "replaced by a newer session on another node")
            self._forget(existing)
        self.by_node.setdefault(node, {})[jid] = remote
        self.sessions.bind(remote)
        if parse_carbons(element, remote):
            self.cluster.server.hooks.notify(SESSION_CARBONS, remote)

    def state(self, node: str, element: domish.Element) -> None:
        remote = self.by_node.get(node, {}).get(element.getAttribute("jid") or "")
        if remote is not None:
            remote.priority, remote.interested, remote.presence = parse_state(element)
            if parse_carbons(element, remote):
                self.cluster.server.hooks.notify(SESSION_CARBONS, remote)

    def directed(self, node: str, element: domish.Element, added: bool) -> None:
        """A ``<directed/>`` or ``<undirected/>`` delta of a session of ``node``."""
        remote = self.by_node.get(node, {}).get(element.getAttribute("jid") or "")
        if remote is None:
            return
        target = element.getAttribute("to")
        if target is None:
            if not added:
                remote.directed.clear()
        elif added:
            remote.directed.add(target)
        else:
            remote.directed.discard(target)

    def unbound(self, node: str, jid: str) -> RemoteSession | None:
        listed = self._listed.get(node)
        if listed is not None:
            listed.discard(jid)
        remote = self.by_node.get(node, {}).pop(jid, None)
        if remote is not None:
            self.sessions.unbind(remote)
        return remote

    def begin_sync(self, node: str) -> None:
        """A link to ``node`` came up: its ``<sync>`` frames follow."""
        self._listed[node] = set()

    def sync(self, node: str, element: domish.Element) -> list[RemoteSession]:
        """One ``<sync>`` frame of ``node``: its entries replace what was known of them. At the last frame,
        what ``node`` did not list (nor bind since) is dropped and returned: a node that restarted faster than
        the failure timeout no longer has those sessions."""
        listed = self._listed.setdefault(node, set())
        for child in element.elements(element.uri, "bound"):
            jid = child.getAttribute("jid") or ""
            listed.add(jid)
            known = self.by_node.get(node, {}).get(jid)
            if known is not None and self.sessions.get(known.bare, known.resource) is known:
                known.priority, known.interested, known.presence = parse_state(child)
                known.directed = parse_directed(child)
                self.clock = max(self.clock, known.stamp)
                if parse_carbons(child, known):
                    self.cluster.server.hooks.notify(SESSION_CARBONS, known)
                continue
            if known is not None:
                # Replaced here while the link was down (a bind on this node): decide the conflict again.
                self.by_node[node].pop(jid, None)
            self.bound(node, child)
        if element.getAttribute("end") != "1":
            return []
        del self._listed[node]
        vanished = []
        for jid in [j for j in self.by_node.get(node, {}) if j not in listed]:
            remote = self.unbound(node, jid)
            if remote is not None:
                vanished.append(remote)
        return vanished

    def drop_node(self, node: str) -> list[RemoteSession]:
        """Forget every session of ``node``; return them."""
        self._listed.pop(node, None)
        gone = list(self.by_node.pop(node, {}).values())
        for remote in gone:
            self.sessions.unbind(remote)
        return gone

    def _forget(self, session: Session | RemoteSession) -> None:
        if session.node is not None:
            self.by_node.get(session.node, {}).pop(session.jid, None)
        self.sessions.unbind(session)
