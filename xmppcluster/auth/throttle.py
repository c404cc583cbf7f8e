"""Brute-force throttling for SASL: a delay before each failure reply, doubling per recent failure.

Two tables, one keyed by peer address (IPv6 grouped by /64) and one by account (bare JID). An entry
is ``key -> (failures, time of last failure)``; it is forgotten once ``window`` seconds pass without a
new failure. The delay for the next failure is ``base_delay * 2 ** n`` capped at ``max_delay``, where
``n`` is the larger of the two counts. Each table holds at most ``max_entries`` keys: dicts keep
insertion order and a failure re-inserts its key, so the oldest entries are at the front and are
dropped first (expired ones always, live ones only when the table is full).
"""

from __future__ import annotations

import ipaddress

from twisted.internet.interfaces import IReactorTime


def peer_key(peer: str) -> str:
    """IPv4 address as is, IPv6 as its /64 (one host usually owns a whole /64), anything else unchanged."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class AuthThrottle:
    """Per-IP and per-account failure counters with a growing, capped delay. One per node."""

    def __init__(
        self,
        *,
        base_delay: float = 1.0,
        max_delay: float = 30.0,
        clock: IReactorTime | None = None,
        window: float = 600.0,
        max_entries: int = 100_000,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.window = window
        self.max_entries = max_entries
        self._clock = clock
        self._peers: dict[str, tuple[int, float]] = {}
        self._accounts: dict[str, tuple[int, float]] = {}

    def _count(self, table: dict[str, tuple[int, float]], key: str | None) -> int:
        entry = table.get(key) if key is not None else None
        if entry is None or self._clock.seconds() - entry[1] > self.window:
            return 0
        return entry[0]

    def delay(self, peer: str, user: str | None) -> float:
        """Seconds to wait before replying to the next failure from ``peer`` for account ``user``."""
        failures = max(self._count(self._peers, peer_key(peer)), self._count(self._accounts, user))
        return min(self.max_delay, self.base_delay * 2 ** min(failures, 64))

    def failed(self, peer: str, user: str | None) -> None:
        """Record one failure."""
        self._record(self._peers, peer_key(peer))
        if user is not None:
            self._record(self._accounts, user)

    def succeeded(self, peer: str, user: str) -> None:
        """Clear the account's counter; the peer's stays (it may be guessing other accounts)."""
        self._accounts.pop(user, None)

    def _record(self, table: dict[str, tuple[int, float]], key: str) -> None:
        count = self._count(table, key)
        table.pop(key, None)
        now = self._clock.seconds()
        table[key] = (count + 1, now)
        while table:
            oldest = next(iter(table))
            if len(table) <= self.max_entries and now - table[oldest][1] <= self.window:
                break
            del table[oldest]

    def __len__(self) -> int:
        """Number of tracked keys (both tables), for tests and metrics."""
        return len(self._peers) + len(self._accounts)
