"""Routed stanzas between nodes: the outbox and its acknowledgements, relays, the queue for unreachable
nodes, and what a node does with a routed frame it receives.

- Sending: a stanza for a session on another node goes on that node's link, or through a peer that
  reports a link to it (counted and kept on that peer's link: it acknowledges the hop). Chat and normal
  messages stay in the link's outbox until the peer's heartbeat acknowledges them (``<hb h=…/>``); when
  the link dies first they are routed again: queued until the node is back (replayed then) or declared
  dead (delivered elsewhere: other resources, offline storage).
- Receiving: a routed frame is written to the local session as it is (no XML pass), relayed, or given
  the RFC 6121 fallback when its session is gone; a stanza that cannot be handled is answered, never raised.
"""

from __future__ import annotations

import re
from collections import deque
from typing import TYPE_CHECKING
from xml.sax.saxutils import unescape

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from xmppcluster.core.namespaces import CLIENT
from xmppcluster.core.xml import StreamFault, reparse

if TYPE_CHECKING:
    from xmppcluster.cluster.link import Link
    from xmppcluster.cluster.node import Cluster

log = Logger(namespace="xmppcluster.cluster.node")

ROUTED_TYPES_KEPT = frozenset((None, "normal", "chat"))


class Delivery:
    """The outbox (per link), the queue per unreachable node, and routed frames received."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        # Routed messages not yet acknowledged, per link: (number, serialized stanza, session JID, the node of
        # that session: this link's peer, or the node it relays to). Kept as text, not
        # as the parsed tree: a tree (parent <-> child cycles) held ~1 s reaches the oldest GC generation and
        # makes its full collections take 100-250 ms at a few thousand messages/s.
        self.outbox: dict[str, deque[tuple[int, bytes, str, str]]] = {}
        self.sent: dict[str, int] = {}  # routed frames sent per link (the peer numbers them alike)
        self.waiting: dict[str, list[tuple[bytes, str, bool]]] = {}  # (stanza UTF-8, jid, kept) per unreachable node
        # Totals since start and the last acknowledgement per link, read by the metrics (ops/metrics.py).
        self.routed_out = 0  # stanzas written on a link (to the peer or through it)
        self.routed_in = 0  # routed frames received (delivered here or relayed)
        self.acked: dict[str, int] = {}  # per link: the peer's last ``h`` (frames it took care of)

    # -- links -------------------------------------------------------------------------------------

    def link_up(self, peer: str) -> None:
        """A new link to ``peer``: numbering starts again; what waited for the node is sent."""
        self.sent[peer] = 0
        self.acked[peer] = 0
        self.outbox[peer] = deque()
        for body, jid, keep in self.waiting.pop(peer, []):
            self.route(peer, body, jid, keep)

    def link_lost(self, peer: str) -> list[tuple[bytes, str, str]]:
        """The link to ``peer`` is gone: its unacknowledged messages, (stanza, session JID, node), to be
        given to :meth:`reroute` once the node is marked unreachable."""
        return [(body, jid, node) for _, body, jid, node in self.outbox.pop(peer, ())]

    def reroute(self, unacked: list[tuple[bytes, str, str]]) -> None:
        for body, jid, node in unacked:
            self.route(node, body, jid, keep=True)  # waits for the reconnect, or rerouted if dead

    def node_dead(self, peer: str) -> list[tuple[bytes, str, bool]]:
        """``peer`` is declared dead: what waited for it (given to :meth:`deliver_elsewhere` afterwards)."""
        return self.waiting.pop(peer, [])

    def deliver_elsewhere(self, waiting: list[tuple[bytes, str, bool]]) -> None:
        for body, jid, _ in waiting:
            self.undeliverable(body, jid)

    def acknowledged(self, peer: str, count: int) -> None:
        """``peer`` has taken care of the first ``count`` routed frames of this link: forget them."""
        self.acked[peer] = count
        outbox = self.outbox.get(peer)
        while outbox and outbox[0][0] <= count:
            outbox.popleft()

    # -- sending -----------------------------------------------------------------------------------

    def route(self, node: str, body: bytes, jid: str, keep: bool) -> None:
        """Send a serialized stanza (UTF-8, with its xmlns) towards ``jid`` on ``node``: on its link, or
        through a peer that reaches it (counted and kept on that peer's link: it acknowledges the hop)."""
        cluster = self.cluster
        link = cluster.links.get(node)
        via = link if link is not None else cluster._relay_for(node)
        if via is not None:
            if len(body) > cluster.max_frame_bytes - 4096:  # the rest of the frame: two JIDs at most
                log.warn("cluster: a stanza of {n} bytes for {jid} exceeds the frame limit; bounced",
                         n=len(body), jid=jid)
                self.bounce_text(body, "policy-violation", "too large to route between cluster nodes")
                return
            peer = via.peer
            self.sent[peer] += 1
            self.routed_out += 1
            if keep:
                self.outbox[peer].append((self.sent[peer], body, jid, node))
            via.send_routed("" if via is link else node, jid, body)
            return
        if cluster.failure.is_suspect(node):
            # Unreachable for now: keep it until the node is back (sent then) or declared dead (rerouted).
            self.waiting.setdefault(node, []).append((body, jid, keep))
            return
        # Not a member we can reach at all: forget its sessions and deliver elsewhere.
        cluster.directory.drop_node(node)
        self.undeliverable(body, jid)

    # -- receiving ---------------------------------------------------------------------------------

    def routed(self, link: Link, target: str, jid: str, body: bytes) -> defer.Deferred | None:
        """A routed frame: deliver ``body`` to the local session ``jid`` (the stanza's ``to`` may be a bare
        JID: the sender already chose the resource), or relay it to ``target``. The stanza travels as text
        and is written to the client as it is: no tree is built for it on this node.

        Returns None when the stanza is taken care of (written to a live client transport, relayed, routed
        elsewhere or answered with an error), or a Deferred firing once its offline store is over: the
        frame is acknowledged only then. Whatever goes wrong with it, the stanza is answered, never raised."""
        self.routed_in += 1
        if not body:
            return None
        if target and target != self.cluster.name:
            # Relay for a peer that lost its direct link; kept here until the next hop acknowledges it.
            self.route(target, body, jid, keep=kept(body))
            return None
        bare, _, resource = jid.partition("/")
        session = self.cluster.server.sessions.get(bare, resource)
        if session is not None and session.is_local and session.is_open:
            try:
                session.deliver_serialized(body)
            except Exception:
                log.failure("delivering a routed stanza to {jid} failed", jid=jid)
                self.bounce_text(body, "internal-server-error")
            return None
        return self.undeliverable(body, jid)

    def undeliverable(self, body: bytes, jid: str) -> defer.Deferred | None:
        """The session ``jid`` is gone: the RFC 6121 fallback (other resources, offline storage, an error).
        A Deferred when an offline store was started for the stanza."""
        stanza = self.reparse(body)
        if stanza is None or stanza.getAttribute("type") == "error":
            return None
        router = self.cluster.server.router
        try:
            router.undeliverable(stanza, jid.partition("/")[0])
        except Exception:
            log.failure("routing an undeliverable stanza for {jid} failed", jid=jid)
            router.bounce(stanza, "internal-server-error")
            return None
        return self.cluster.offline_storing(stanza)

    def reparse(self, body: bytes) -> domish.Element | None:
        """A stanza kept as text, as an element again (to route it another way); None (and the sender
        told) when it cannot be parsed."""
        try:
            return reparse(body, **self.cluster.reparse_limits)
        except StreamFault as fault:
            log.warn("cluster: a routed stanza cannot be parsed again ({condition}: {text}); bounced",
                     condition=fault.condition, text=fault.text or "")
            self.bounce_text(body, "policy-violation" if fault.condition == "policy-violation"
                             else "internal-server-error")
            return None

    def bounce_text(self, body: bytes, condition: str, text: str | None = None) -> None:
        """Answer a serialized stanza with an error, from its start tag alone (the rest may be unreadable)."""
        stanza = envelope(body)
        if stanza is not None:
            self.cluster.server.router.bounce(stanza, condition, text)


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


def kept(body: bytes) -> bool:
    """Whether a serialized stanza is a message kept until acknowledged (as :meth:`Cluster.route_to` decides)."""
    tag = _start_tag(body) if body.startswith(b"<message") else None
    return tag is not None and tag[1].get("type") in ROUTED_TYPES_KEPT


def envelope(body: bytes) -> domish.Element | None:
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


def kept_type(stanza: domish.Element) -> bool:
    """Whether a stanza is a message kept in the outbox until acknowledged."""
    return stanza.name == "message" and stanza.getAttribute("type") in ROUTED_TYPES_KEPT
