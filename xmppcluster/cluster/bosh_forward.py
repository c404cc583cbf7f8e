"""BOSH on any node: a request whose ``sid`` lives on another node is answered by that node.

A ``sid`` ends with a short tag of the node that created it (:func:`node_tag`), so any node knows the
owner of any session with no shared state and no race with the session's creation. A node that gets
a request for a session it does not hold sends the (already validated) ``<body/>`` over the cluster
link as ``<bosh-req/>`` and keeps the HTTP request open until ``<bosh-resp/>`` comes back. Neither a
sticky load balancer nor the ``host`` attribute is needed.

Every forwarded request is answered. While the owner is unreachable (a suspect: its link is down but it
is not declared dead) the request waits here and is sent when a link to it is up again; every request
still unanswered when a new link comes up is sent again, since the old link may have lost it or its
answer (the owner recognises a repeated ``rid`` and answers it from its cache, XEP-0124 §14.3). When the
owner is declared dead the request gets ``remote-connection-failed``; one with no answer after
``bosh/max-wait`` plus ``cl-comp/failure-timeout`` gets a recoverable ``<body type='error'/>``
(XEP-0124 §17.3: the client sends it again).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.words.xish import domish

from xmppcluster.core import events as ev
from xmppcluster.core.serializer import serialize, tag
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
            self.node, tag("bosh-resp", {"id": self.number, "status": status, "type": content_type}, encoded))


class _Forwarded:
    """A request sent (or to be sent) to its owner node, until its answer comes. Each sending has a new
    number: an answer to an earlier sending (e.g. the recoverable error the owner gives the request this
    sending replaces) is not this request's answer."""

    __slots__ = ("node", "exchange", "attrs", "request", "number", "timer")

    def __init__(self, node: str, exchange: Exchange, attrs: dict[str, object], request: str) -> None:
        self.node = node
        self.exchange = exchange
        self.attrs = attrs  # the <bosh-req/>'s attributes but its id
        self.request = request  # the client's <body/>, serialized
        self.number = ""
        self.timer: Any = None


class BoshForwarder:
    """Knows which node owns each BOSH session; forwards and answers requests."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.waiting: dict[str, _Forwarded] = {}  # request number -> the request
        self._numbers = itertools.count(1)
        #: The owner answers within the request's 'wait' (at most bosh/max-wait): longer means lost.
        self.timeout = bosh_sessions(cluster.server).settings.max_wait + cluster.failure_timeout
        on = cluster.server.hooks.on
        on(ev.CLUSTER_BOSH_REQUEST, self._request)
        on(ev.CLUSTER_BOSH_RESPONSE, self._response)
        on(ev.CLUSTER_NODE_DOWN, self._node_down)
        on(ev.CLUSTER_NODE_UP, self._node_up)

    def owner(self, sid: str) -> str | None:
        """The cluster member (reachable now or not) whose tag ends ``sid``."""
        suffix = sid[-TAG_LENGTH:]
        return next((node for node in self.cluster.peers() if node_tag(node) == suffix), None)

    def _node_down(self, node: str) -> bool:
        for number, forwarded in list(self.waiting.items()):
            if forwarded.node == node:
                self._answer(number, render_body({"type": "terminate", "condition": "remote-connection-failed"}))
        return False

    def _node_up(self, node: str) -> bool:
        """A new link to ``node``: send what waited for it, and again what the old link may have lost."""
        for forwarded in list(self.waiting.values()):
            if forwarded.node == node:
                self._send(forwarded)
        return False

    def _send(self, forwarded: _Forwarded) -> bool:
        """(Re)send a request under a new number; False when its owner cannot be reached now."""
        self.waiting.pop(forwarded.number, None)
        forwarded.number = str(next(self._numbers))
        self.waiting[forwarded.number] = forwarded
        return self.cluster.send_event(
            forwarded.node, tag("bosh-req", {"id": forwarded.number, **forwarded.attrs}, forwarded.request))

    def _expired(self, forwarded: _Forwarded) -> None:
        forwarded.timer = None
        if self.waiting.get(forwarded.number) is forwarded:
            log.info("BOSH request forwarded to {node} unanswered after {t:g} s: recoverable error",
                     node=forwarded.node, t=self.timeout)
            self._answer(forwarded.number, render_body({"type": "error"}))

    def _answer(self, number: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE, status: int = 200) -> None:
        forwarded = self.waiting.pop(number, None)
        if forwarded is None:
            return
        if forwarded.timer is not None and forwarded.timer.active():
            forwarded.timer.cancel()
        forwarded.exchange.reply(data, content_type, status)

    # -- forwarding -----------------------------------------------------------------------------

    def forward(self, sid: str, exchange: Exchange, body: domish.Element, secure: bool, peer: str) -> bool:
        """Send a request for a session of another node there; False when no node owns ``sid``."""
        node = self.owner(sid)
        if node is None:
            return False
        forwarded = _Forwarded(node, exchange, {"secure": int(secure), "peer": peer}, serialize(body))
        forwarded.timer = self.cluster.clock.callLater(self.timeout, self._expired, forwarded)
        if not self._send(forwarded):
            log.info("BOSH request for a session of {node} waits for {node} (unreachable)", node=node)
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
        number = element.getAttribute("id") or ""
        forwarded = self.waiting.get(number)
        if forwarded is not None and forwarded.node == node:
            try:
                status = int(element.getAttribute("status") or 200)
                data = base64.b64decode(str(element), validate=True)
            except ValueError:
                log.warn("BOSH answer from {node} unreadable: recoverable error instead", node=node)
                status, data = 200, render_body({"type": "error"})
            self._answer(number, data, element.getAttribute("type") or DEFAULT_CONTENT_TYPE, status)
        return True


def wire_bosh(cluster: Cluster) -> None:
    """Make this node's BOSH sessions cluster-wide (called by ops/service.py once the cluster runs): new
    sids end with this node's tag, and a request for a sid this node does not hold goes to its owner."""
    sessions = bosh_sessions(cluster.server)
    sessions.sid_suffix = node_tag(cluster.server.node_name)
    sessions.unknown_sid = cluster.bosh.forward
