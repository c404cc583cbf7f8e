"""Client throttles: read rate per connection, concurrent connections and log lines per client address.

:class:`ReadThrottle`: a client that sends faster than ``rate`` bytes/s beyond its ``burst`` is read more
slowly (TCP backpressure reaches it), as Prosody's mod_limits does; nothing is lost and the stream stays
open. Pausing a transport does not stop what a TLS layer already decrypted, so input that arrives while
paused is held here (at most one read's worth) and released as the bucket refills.

:class:`ConnectionLimit`: at most ``--max-connections-per-ip`` connections from one address (IPv6: one
/64) on all the client listeners of a node together; trusted proxies are exempt (the addresses they name
are counted instead, per WebSocket and per BOSH session).

:class:`LogBudget`: a client that has not authenticated gets a few info lines per address, then its lines
go to debug level until its budget refills, so no unauthenticated client can fill the log.
"""

from __future__ import annotations

import weakref
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from xmppcluster.auth.throttle import peer_key


class ReadThrottle:
    """``received(data)`` hands ``data`` to ``deliver`` now, or later when the rate allows."""

    def __init__(self, transport: Any, clock: Any, rate: float, burst: float,
                 deliver: Callable[[Any], None]) -> None:
        self.transport = transport
        self.clock = clock
        self.rate = float(rate)
        self.burst = float(max(burst, rate))
        self.deliver = deliver
        self.tokens = self.burst
        self.updated = clock.seconds()
        self.paused = False
        self._transport_paused = False
        self.held: deque[tuple[Any, int]] = deque()
        self._resume = None

    def received(self, data: Any, size: int | None = None) -> None:
        size = len(data) if size is None else size
        if self.paused or self.held:
            self.held.append((data, size))
            return
        self._pass(data, size)

    def _pass(self, data: Any, size: int) -> None:
        if self.rate > 0:
            now = self.clock.seconds()
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate) - size
            self.updated = now
            if self.tokens < 0 and not self.paused:
                self.paused = True
                if not self._transport_paused:
                    self._transport_paused = True
                    self.transport.pauseProducing()
                self._resume = self.clock.callLater(-self.tokens / self.rate, self._refilled)
        self.deliver(data)

    def _refilled(self) -> None:
        self._resume = None
        self.paused = False
        self.tokens = 0.0
        self.updated = self.clock.seconds()
        while self.held and not self.paused:
            data, size = self.held.popleft()
            self._pass(data, size)
        if not self.paused and self._transport_paused:
            self._transport_paused = False
            self.transport.resumeProducing()

    def stop(self) -> None:
        """The stream is ending: forget held input and the pending resume, and let the transport read
        again so that its close can complete."""
        self.held.clear()
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None
        self.paused = False
        if self._transport_paused:
            self._transport_paused = False
            self.transport.resumeProducing()


class Lease:
    """One counted connection; :meth:`release` is idempotent (several objects may see the connection end)."""

    __slots__ = ("_limit", "key")

    def __init__(self, limit: ConnectionLimit | None, key: str | None) -> None:
        self._limit = limit
        self.key = key

    def release(self) -> None:
        limit, self._limit = self._limit, None
        if limit is not None and self.key is not None:
            limit._release(self.key)


class ConnectionLimit:
    """Concurrent client connections per address, shared by the c2s, BOSH and WebSocket listeners of a node."""

    def __init__(self, limit: int, exempt: Callable[[str], bool]) -> None:
        self.limit = limit
        self.exempt = exempt
        self.counts: Counter[str] = Counter()
        #: (local port, peer host, peer port) -> lease of an HTTP connection, so that the WebSocket that takes
        #: the connection over (autobahn replaces the HTTP channel, whose connectionLost then never runs)
        #: releases it.
        self.by_connection: dict[tuple[int, str, int], Lease] = {}

    def acquire(self, address: str) -> Lease | None:
        """A lease for one more connection from ``address``, or None when it already has ``limit``."""
        if self.limit <= 0 or self.exempt(address):
            return Lease(None, None)
        key = peer_key(address)
        if self.counts[key] >= self.limit:
            return None
        self.counts[key] += 1
        return Lease(self, key)

    def _release(self, key: str) -> None:
        self.counts[key] -= 1
        if self.counts[key] <= 0:
            del self.counts[key]


class LogBudget:
    """Per-address token buckets for info log lines about unauthenticated clients (bounded table)."""

    def __init__(self, clock: Any, *, burst: float = 20.0, per_second: float = 1 / 6, max_entries: int = 4096,
                 log: Any = None) -> None:
        self.clock = clock
        self.burst = burst
        self.per_second = per_second
        self.max_entries = max_entries
        self._log = log
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, updated, muted]

    def allow(self, address: str) -> bool:
        """True when one more info line about ``address`` may be written (else log it at debug level)."""
        key = peer_key(address)
        now = self.clock.seconds()
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = [self.burst, now, 0.0]
            while len(self._buckets) >= self.max_entries:
                del self._buckets[next(iter(self._buckets))]
        bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.per_second)
        bucket[1] = now
        self._buckets[key] = bucket  # most recently used last
        if bucket[0] >= 1:
            bucket[0] -= 1
            bucket[2] = 0.0
            return True
        if not bucket[2]:
            bucket[2] = 1.0
            if self._log is not None:
                self._log.info("more log lines about unauthenticated clients from {peer} than allowed: the next "
                               "ones go to debug level for a while", peer=key)
        return False


_limits: weakref.WeakKeyDictionary[Any, ConnectionLimit] = weakref.WeakKeyDictionary()
_budgets: weakref.WeakKeyDictionary[Any, LogBudget] = weakref.WeakKeyDictionary()


def connection_limit(server: Any) -> ConnectionLimit:
    """The per-address connection limit of ``server`` (``--max-connections-per-ip``), created on first use."""
    limit = _limits.get(server)
    if limit is None:
        from xmppcluster.streams.peers import client_policy

        limit = _limits[server] = ConnectionLimit(server.config.peers.max_connections_per_ip,
                                                  client_policy(server).is_trusted_proxy)
    return limit


def log_budget(server: Any) -> LogBudget:
    """The unauthenticated-log budget of ``server``, created on first use."""
    budget = _budgets.get(server)
    if budget is None:
        from twisted.logger import Logger

        budget = _budgets[server] = LogBudget(server.clock, log=Logger(namespace="xmppcluster.streams"))
    return budget
