"""The replicated session directory: sessions of other nodes, as seen on this one.

Each entry is owned by the node hosting the session and changed only by its events (bound, state,
unbound, sync). A :class:`RemoteSession` sits in the same :class:`~xmppcluster.sessions.SessionRegistry`
as local sessions, so routing, presence and roster pushes treat every resource of the cluster alike;
delivering to it sends the stanza over the owner's link: one hop.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING
from xml.sax.saxutils import quoteattr

from twisted.logger import Logger
from twisted.words.xish import domish

from xmppcluster.namespaces import CLIENT
from xmppcluster.serializer import serialize
from xmppcluster.sessions import Session

if TYPE_CHECKING:
    from xmppcluster.cluster.node import Cluster

log = Logger()
_order = itertools.count(1_000_000_000)


class RemoteSession:
    """A session bound on another node."""

    stream = None

    def __init__(self, cluster: Cluster, node: str, jid: str, bound_at: float) -> None:
        self.cluster = cluster
        self.node = node
        self.jid = jid
        self.bare, _, self.resource = jid.partition("/")
        self.user, _, self.domain = self.bare.partition("@")
        self.bound_at = bound_at
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

    def close(self, condition: str, text: str | None = None) -> None:
        self.cluster.send_event(self.node, f"<kick jid={quoteattr(self.jid)} condition={quoteattr(condition)}/>")

    def replaced(self) -> None:
        """The owner node ends it when it hears of the newer session."""

    def __repr__(self) -> str:
        return f"<RemoteSession {self.jid} on {self.node} prio={self.priority} available={self.available}>"


def newer(a: Session | RemoteSession, b: Session | RemoteSession, local_node: str) -> bool:
    """True when ``a`` was bound after ``b`` (ties broken by node name, so every node agrees)."""
    return (a.bound_at, a.node or local_node) > (b.bound_at, b.node or local_node)


def describe(session: Session, tag: str = "bound") -> bytes:
    """A local session's directory entry as sent to other nodes."""
    presence = session.presence
    inner = serialize(presence) if presence is not None else ""
    inner += "".join(f"<directed to={quoteattr(target)}/>" for target in sorted(session.directed))
    return (f"<{tag} jid={quoteattr(session.jid)} at='{session.bound_at!r}' prio='{session.priority}' "
            f"interested='{int(session.interested)}'>{inner}</{tag}>").encode()


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


def parse_directed(element: domish.Element) -> set[str]:
    """The JIDs a session sent directed presence to, from its bound/state element."""
    return {child["to"] for child in element.elements(element.uri, "directed") if child.getAttribute("to")}


class Directory:
    """Remote sessions by node, mirrored into the server's session registry."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.sessions = cluster.server.sessions
        self.by_node: dict[str, dict[str, RemoteSession]] = {}

    def count(self, node: str) -> int:
        return len(self.by_node.get(node, {}))

    def bound(self, node: str, element: domish.Element) -> None:
        jid = element.getAttribute("jid") or ""
        if "/" not in jid or "@" not in jid.partition("/")[0]:
            return
        try:
            at = float(element.getAttribute("at") or 0)
        except ValueError:
            at = 0.0
        remote = RemoteSession(self.cluster, node, jid, at)
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

    def state(self, node: str, element: domish.Element) -> None:
        remote = self.by_node.get(node, {}).get(element.getAttribute("jid") or "")
        if remote is not None:
            remote.priority, remote.interested, remote.presence = parse_state(element)
            remote.directed = parse_directed(element)

    def unbound(self, node: str, jid: str) -> RemoteSession | None:
        remote = self.by_node.get(node, {}).pop(jid, None)
        if remote is not None:
            self.sessions.unbind(remote)
        return remote

    def sync(self, node: str, element: domish.Element) -> list[RemoteSession]:
        """Replace everything known of ``node`` with its full list; return the sessions that vanished
        (a node that restarted faster than the failure timeout no longer has them)."""
        listed = {child.getAttribute("jid") for child in element.elements(element.uri, "bound")}
        vanished = []
        for jid in [j for j in self.by_node.get(node, {}) if j not in listed]:
            remote = self.unbound(node, jid)
            if remote is not None:
                vanished.append(remote)
        for child in element.elements(element.uri, "bound"):
            known = self.by_node.get(node, {}).get(child.getAttribute("jid"))
            if known is not None:
                known.priority, known.interested, known.presence = parse_state(child)
            else:
                self.bound(node, child)
        return vanished

    def drop_node(self, node: str) -> list[RemoteSession]:
        """Forget every session of ``node``; return them."""
        gone = list(self.by_node.pop(node, {}).values())
        for remote in gone:
            self.sessions.unbind(remote)
        return gone

    def _forget(self, session: Session | RemoteSession) -> None:
        if session.node is not None:
            self.by_node.get(session.node, {}).pop(session.jid, None)
        self.sessions.unbind(session)
