"""BOSH on any node: a request whose ``sid`` lives on another node is answered by that node.

A ``sid`` ends with a short tag of the node that created it (:func:`node_tag`), so any node knows the
owner of any session with no shared state and no race with the session's creation. A node that gets
a request for a session it does not hold sends the (already validated) ``<body/>`` over the cluster
link as ``<bosh-req/>`` and keeps the HTTP request open until ``<bosh-resp/>`` comes back. Neither a
sticky load balancer nor the ``host`` attribute is needed.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from twisted.logger import Logger
from twisted.words.xish import domish

from xmppcluster.streams.bosh import bosh_sessions, render_body
from xmppcluster.streams.bosh_session import DEFAULT_CONTENT_TYPE, Exchange

if TYPE_CHECKING:
    from xmppcluster.cluster.node import Cluster

log = Logger()

TAG_LENGTH = 8


def node_tag(node: str) -> str:
    """The suffix of every BOSH ``sid`` created on ``node``."""
    return hashlib.sha256(node.encode()).hexdigest()[:TAG_LENGTH]


class ForwardedExchange(Exchange):
    """The owner's side of a forwarded request: the answer goes back over the link."""

    __slots__ = ("forwarder", "node", "number")

    def __init__(self, forwarder: BoshForwarder, node: str, number: str) -> None:
        self.request = None
        self.alive = True
        self.forwarder = forwarder
        self.node = node
        self.number = number

    def reply(self, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE, status: int = 200) -> None:
        if not self.alive:
            return
        self.alive = False
        encoded = base64.b64encode(data).decode("ascii")
        self.forwarder.cluster.send_event(
            self.node, f"<bosh-resp id={quoteattr(self.number)} status='{status}' "
                       f"type={quoteattr(content_type)}>{encoded}</bosh-resp>")


class BoshForwarder:
    """Knows which node owns each BOSH session; forwards and answers requests."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.waiting: dict[str, tuple[str, Exchange]] = {}  # request number -> (node, HTTP exchange)
        self._numbers = itertools.count(1)
        hooks = cluster.server.hooks
        hooks.add("cluster/bosh-req", self._request)
        hooks.add("cluster/bosh-resp", self._response)
        hooks.add("cluster/node-down", self._node_down)

    def owner(self, sid: str) -> str | None:
        """The live peer whose tag ends ``sid``."""
        tag = sid[-TAG_LENGTH:]
        return next((node for node in self.cluster.links if node_tag(node) == tag), None)

    def _node_down(self, node: str) -> bool:
        for number, (owner, exchange) in list(self.waiting.items()):
            if owner == node:
                del self.waiting[number]
                exchange.reply(render_body({"type": "terminate", "condition": "remote-connection-failed"}))
        return False

    # -- forwarding -----------------------------------------------------------------------------

    def forward(self, sid: str, exchange: Exchange, body: domish.Element, secure: bool, peer: str) -> bool:
        """Send a request for a session of another node there; False when no node owns ``sid``."""
        node = self.owner(sid)
        if node is None:
            return False
        number = str(next(self._numbers))
        self.waiting[number] = (node, exchange)
        self.cluster.send_event(node, f"<bosh-req id='{number}' secure='{int(secure)}' peer={quoteattr(peer)}>"
                                      f"{body.toXml()}</bosh-req>")
        return True

    def _request(self, node: str, element: domish.Element) -> bool:
        number = element.getAttribute("id") or ""
        exchange = ForwardedExchange(self, node, number)
        body = next(element.elements(), None)
        sessions = bosh_sessions(self.cluster.server)
        session = sessions.find_session(body.getAttribute("sid") or "") if body is not None else None
        if session is None:
            exchange.reply(render_body({"type": "terminate", "condition": "item-not-found"}))
        elif session.secure and element.getAttribute("secure") != "1":
            exchange.reply(render_body({"type": "terminate", "condition": "item-not-found"}))
        else:
            session.handle(exchange, body)
        return True

    def _response(self, node: str, element: domish.Element) -> bool:
        waiting = self.waiting.pop(element.getAttribute("id") or "", None)
        if waiting is not None:
            try:
                status = int(element.getAttribute("status") or 200)
            except ValueError:
                status = 200
            data = base64.b64decode(str(element))
            waiting[1].reply(data, element.getAttribute("type") or DEFAULT_CONTENT_TYPE, status)
        return True


def forwarder_of(server: Any) -> BoshForwarder | None:
    cluster = getattr(server, "cluster", None)
    return getattr(cluster, "bosh", None) if cluster is not None else None
