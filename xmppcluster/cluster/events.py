"""Cache events between nodes (``roster/changed``, ``blocking/changed``): numbered, logged, replayed.

A node caches rosters and blocklists that live in the shared database; when one changes, its node tells the
others to drop their copy (and, for a blocklist, to push the change to their resources). Such an event must
not be lost to a cut link, or the other node keeps enforcing the old blocklist until the account is offline
there. So:

- each node numbers the events it originates (``seq``), within its *incarnation* (a random id per start),
  and keeps the last ones in a bounded log;
- an event goes on the direct link, or through a peer that reaches the target (``<relay/>``), or waits in
  the log while neither exists;
- at link-up each side sends ``<resync inc seq peer-inc seen/>``: its incarnation and last number, and what
  it processed of the other (the other's incarnation and the highest number below which it has everything).
  The other then replays exactly the missing events, or, when its log no longer reaches back that far, sends
  ``<reset seq/>``;
- a receiver drops duplicates by number (an event may come twice: through a relay and in a replay). A node
  first heard of is replayed from its first event; when a node is heard of with another incarnation than
  before, the receiver drops *every* cached roster and blocklist: events of the node that restarted may have
  been lost with it.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.logger import Logger
from twisted.words.xish import domish

from xmppcluster.core.serializer import tag

if TYPE_CHECKING:
    from xmppcluster.cluster.node import Cluster

log = Logger()

#: Events kept for replay, and their total size: past either, the oldest go (a peer that missed them gets
#: ``<reset/>``: it drops its whole cache).
LOG_EVENTS = 10_000
LOG_BYTES = 4 * 1024 * 1024
#: Events a receiver tracks above a gap before it gives up on the gap and drops its caches instead.
MAX_OUT_OF_ORDER = 10_000


class _Seen:
    """What this node processed of one origin's events: all up to ``prefix``, and ``above`` beyond a gap."""

    __slots__ = ("incarnation", "prefix", "above")

    def __init__(self, incarnation: str, prefix: int) -> None:
        self.incarnation = incarnation
        self.prefix = prefix
        self.above: set[int] = set()


class Events:
    """The numbered cache events of one node: what it sent (log, per-peer cursors) and what it received."""

    def __init__(self, cluster: Cluster, *, max_events: int = LOG_EVENTS, max_bytes: int = LOG_BYTES) -> None:
        self.cluster = cluster
        self.incarnation = secrets.token_hex(8)
        self.seq = 0
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._log: deque[tuple[int, float, bytes]] = deque()  # (seq, when, frame)
        self._bytes = 0
        # peer -> the last event sent to it; absent while a link handshake is under way (or before any).
        self._cursor: dict[str, int] = {}
        self._marks: dict[str, int] = {}  # peer -> our seq when our <resync> went to it
        self._seen: dict[str, _Seen] = {}  # origin -> what we processed of it
        #: Called to drop every cached roster and blocklist (set by the cluster).
        self.on_reset: Callable[[str], None] = lambda why: None

    # -- sending -----------------------------------------------------------------------------------

    def publish(self, name: str, attributes: dict[str, str], children: str = "") -> None:
        """Number and log an event of this node, and send it to every peer that can be reached now."""
        self.seq += 1
        frame = tag("event", {"name": name, "origin": self.cluster.name, "inc": self.incarnation, "seq": self.seq,
                              **attributes}, children).encode()
        self._log.append((self.seq, self.cluster.clock.seconds(), frame))
        self._bytes += len(frame)
        while self._log and (len(self._log) > self.max_events or self._bytes > self.max_bytes):
            self._bytes -= len(self._log.popleft()[2])
        for peer in self.cluster.peers():
            self.flush(peer)

    def flush(self, peer: str) -> None:
        """Send ``peer`` the logged events it has not been sent, if a path to it exists now."""
        cursor = self._cursor.get(peer)
        if cursor is None or cursor >= self.seq:
            return
        send = self.cluster.event_path(peer)
        if send is None:
            return  # unreachable: they wait in the log
        first = self._log[0][0] if self._log else self.seq + 1
        if cursor < first - 1:
            send(tag("reset", {"origin": self.cluster.name, "inc": self.incarnation, "seq": self.seq}).encode())
            log.info("cluster: {peer} missed more cache events than are kept; it drops its caches", peer=peer)
        else:
            for seq, _, frame in self._log:
                if seq > cursor:
                    send(frame)
        self._cursor[peer] = self.seq

    def flush_all(self) -> None:
        for peer in self.cluster.peers():
            self.flush(peer)

    def resync_frame(self, peer: str) -> bytes:
        """What this node sends first on a new link to ``peer``; events to it wait for the answer."""
        self._cursor.pop(peer, None)
        self._marks[peer] = self.seq
        seen = self._seen.get(peer)
        attributes = {"inc": self.incarnation, "seq": self.seq}
        if seen is not None:  # the peer's incarnation as it sent it
            attributes.update({"peer-inc": seen.incarnation, "seen": seen.prefix})
        return tag("resync", attributes).encode()

    def link_lost(self, peer: str, window: float) -> None:
        """The direct link to ``peer`` is gone: what was sent on it during the last ``window`` seconds may not
        have arrived. It goes again through a relay if there is one (duplicates are dropped), and in any case
        the next link-up replays what the peer reports missing."""
        cursor = self._cursor.get(peer)
        if cursor is None:
            return
        horizon = self.cluster.clock.seconds() - window
        recent = next((seq for seq, when, _ in self._log if when >= horizon and seq <= cursor), None)
        if recent is not None:
            self._cursor[peer] = recent - 1
        self.flush(peer)

    # -- receiving ---------------------------------------------------------------------------------

    def resync(self, peer: str, element: domish.Element) -> None:
        """The peer's ``<resync/>``: learn its incarnation, and replay what it reports missing of ours."""
        incarnation = element.getAttribute("inc") or ""
        self._observe(peer, incarnation, _number(element.getAttribute("seq")))
        known = element.getAttribute("peer-inc")
        if known == self.incarnation:
            start = _number(element.getAttribute("seen"))
        elif known is None:
            start = 0  # it never heard of this node: everything (or <reset/> if the log lost the start)
        else:
            # It knew an earlier incarnation: our <resync/> makes it drop its caches, so only what we
            # published since we sent that is missing.
            start = self._marks.get(peer, self.seq)
        self._marks.pop(peer, None)
        self._cursor[peer] = min(start, self.seq)
        self.flush(peer)

    def reset(self, element: domish.Element) -> None:
        """``<reset/>``: the origin no longer has the events we missed."""
        origin = element.getAttribute("origin") or ""
        seq = _number(element.getAttribute("seq"))
        self.on_reset(f"{origin} no longer has the cache events this node missed")
        self._seen[origin] = _Seen(element.getAttribute("inc") or "", seq)

    def accept(self, element: domish.Element) -> bool:
        """Whether to act on this ``<event/>``: False for one already processed."""
        origin = element.getAttribute("origin")
        incarnation = element.getAttribute("inc")
        seq = _number(element.getAttribute("seq"))
        if not origin or not incarnation or seq <= 0:
            return True  # not numbered: nothing to deduplicate
        self._observe(origin, incarnation, seq - 1)
        seen = self._seen[origin]
        if seq <= seen.prefix or seq in seen.above:
            return False
        seen.above.add(seq)
        while seen.prefix + 1 in seen.above:
            seen.prefix += 1
            seen.above.discard(seen.prefix)
        if len(seen.above) > MAX_OUT_OF_ORDER:
            self.on_reset(f"too many cache events of {origin} missing")
            seen.prefix = max(seen.above)
            seen.above.clear()
        return True

    def _observe(self, origin: str, incarnation: str, upto: int) -> None:
        """Hearing of ``origin``'s ``incarnation``. The first one heard of is replayed from its start. A
        different one means ``origin`` restarted, and events of the one before may have been lost with it:
        drop every cache, and count from ``upto``."""
        seen = self._seen.get(origin)
        if seen is None:
            self._seen[origin] = _Seen(incarnation, 0)
        elif seen.incarnation != incarnation:
            self.on_reset(f"{origin} restarted")
            self._seen[origin] = _Seen(incarnation, upto)


def _number(text: str | None) -> int:
    try:
        return max(0, int(text or 0))
    except ValueError:
        return 0
