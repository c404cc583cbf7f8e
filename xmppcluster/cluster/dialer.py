"""Dialing the peers this node initiates links to, with backoff between failed attempts.

The node whose name sorts first in a pair dials; the other only accepts (:meth:`Cluster.should_accept`),
so a pair never has two links. A failed attempt doubles the delay before the next one, from 0.25 s up to
3 s; a link that comes up resets it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger(namespace="xmppcluster.cluster.node")

MIN_BACKOFF = 0.25
MAX_BACKOFF = 3.0


class Dialer:
    """Pending and scheduled connection attempts per peer. ``connect(peer)`` starts one (a Deferred firing
    when the TCP/TLS connection is made; the link then authenticates itself)."""

    def __init__(self, clock: IReactorTime | Any, connect: Callable[[str], defer.Deferred]) -> None:
        self.clock = clock
        self._connect = connect
        self.connecting: dict[str, Any] = {}  # peer -> the scheduled call, then the attempt's Deferred
        self.backoff: dict[str, float] = {}

    def busy(self, peer: str) -> bool:
        """An attempt to reach ``peer`` is scheduled or running."""
        return peer in self.connecting

    def dial(self, peer: str) -> None:
        """Schedule an attempt, after the peer's current backoff."""
        self.connecting[peer] = self.clock.callLater(self.backoff.get(peer, 0.0), self._attempt, peer)

    def _attempt(self, peer: str) -> None:
        attempt = self._connect(peer)
        self.connecting[peer] = attempt

        def failed(failure: Any) -> None:
            self.connecting.pop(peer, None)
            self.backoff[peer] = min(MAX_BACKOFF, max(MIN_BACKOFF, self.backoff.get(peer, 0.0) * 2))
            log.debug("cluster: cannot reach {peer}: {why}", peer=peer, why=failure.getErrorMessage())

        attempt.addCallbacks(lambda _: self.connecting.pop(peer, None), failed)

    def connected(self, peer: str) -> None:
        """A link to ``peer`` is up: the next attempt after a loss is immediate."""
        self.backoff.pop(peer, None)

    def lost(self, peer: str) -> None:
        """The link to ``peer`` went down: a new attempt may start."""
        self.connecting.pop(peer, None)

    def stop(self) -> None:
        for pending in list(self.connecting.values()):
            if hasattr(pending, "cancel"):
                pending.cancel()
