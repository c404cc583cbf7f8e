"""Brute-force throttling for SASL: failures make the next guesses wait, on every stream of the node.

Two tables, one keyed by peer address (IPv6 grouped by /64) and one by account (bare JID). An entry holds
the recent failures of its key, the time of the last one and ``next_at``, the earliest time the key's next
password check may run. It is forgotten once ``window`` seconds pass without a new failure (and no check
is booked). Each table holds at most ``max_entries`` keys: dicts keep insertion order and a failure
re-inserts its key, so the oldest entries are at the front and are dropped first.

After ``n`` failures a key's checks are spaced by ``base_delay * 2 ** (n - 1)`` seconds, capped at
``max_delay``. :meth:`AuthThrottle.admit` is called before each password check (PLAIN, a SCRAM proof): it
books the next free slot of the account and of the address and says how long to wait for it, so that N
parallel connections guessing one account get one guess per slot, not N. A booked check counts as a
failure until its outcome is known, so the slots of parallel guesses double like those of sequential ones.
An account is gated from its first failure; an address only after more than ``peer_grace`` failures (a few
typos behind a shared NAT must not slow everybody else down). A check that would have to wait more than
``max_delay`` is refused (:meth:`admit` returns None) instead of queued, so no amount of parallel attempts
can push a key's slots further into the future than that. The failure reply itself is also delayed
(:meth:`delay`), as before.
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


class _Entry:
    __slots__ = ("booked", "failures", "last", "next_at")

    def __init__(self, failures: int, last: float, next_at: float, booked: int = 0) -> None:
        self.failures = failures
        self.last = last
        self.next_at = next_at
        self.booked = booked  # checks admitted since the last failure, counted as if each will fail


class AuthThrottle:
    """Per-IP and per-account failure counters and check slots with a growing, capped spacing. One per node."""

    def __init__(
        self,
        *,
        base_delay: float = 1.0,
        max_delay: float = 30.0,
        clock: IReactorTime | None = None,
        window: float = 600.0,
        max_entries: int = 100_000,
        peer_grace: int = 2,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.window = window
        self.max_entries = max_entries
        self.peer_grace = peer_grace
        self._clock = clock
        self._peers: dict[str, _Entry] = {}
        self._accounts: dict[str, _Entry] = {}

    def _live(self, table: dict[str, _Entry], key: str | None, now: float) -> _Entry | None:
        entry = table.get(key) if key is not None else None
        if entry is None or (now - entry.last > self.window and entry.next_at <= now):
            return None
        return entry

    def _count(self, table: dict[str, _Entry], key: str | None) -> int:
        entry = self._live(table, key, self._clock.seconds())
        return entry.failures if entry is not None else 0

    def spacing(self, failures: int) -> float:
        """Seconds between two checks of a key with ``failures`` recent failures."""
        if failures <= 0:
            return 0.0
        return min(self.max_delay, self.base_delay * 2 ** min(failures - 1, 64))

    def delay(self, peer: str, user: str | None) -> float:
        """Seconds to wait before replying to the next failure from ``peer`` for account ``user``."""
        failures = max(self._count(self._peers, peer_key(peer)), self._count(self._accounts, user))
        return min(self.max_delay, self.base_delay * 2 ** min(failures, 64))

    def admit(self, peer: str, user: str | None) -> float | None:
        """Book a slot for one password check from ``peer`` for ``user``: the seconds to wait before running it,
        or None when the slot is more than ``max_delay`` away (refuse the attempt without checking it)."""
        if self.base_delay <= 0:
            return 0.0
        now = self._clock.seconds()
        gates = []
        account = self._live(self._accounts, user, now)
        if account is not None and account.failures > 0:
            gates.append(account)
        address = self._live(self._peers, peer_key(peer), now)
        if address is not None and address.failures > self.peer_grace:
            gates.append(address)
        if not gates:
            return 0.0
        start = max(now, *(gate.next_at for gate in gates))
        if start - now > self.max_delay:
            return None
        for gate in gates:
            gate.booked += 1
            gate.next_at = start + self.spacing(gate.failures + gate.booked)
        return start - now

    def failed(self, peer: str, user: str | None) -> None:
        """Record one failure."""
        self._record(self._peers, peer_key(peer))
        if user is not None:
            self._record(self._accounts, user)

    def succeeded(self, peer: str, user: str) -> None:
        """Clear the account's counter; the peer's stays (it may be guessing other accounts)."""
        self._accounts.pop(user, None)

    def _record(self, table: dict[str, _Entry], key: str) -> None:
        now = self._clock.seconds()
        entry = self._live(table, key, now)
        table.pop(key, None)
        failures = (entry.failures if entry is not None else 0) + 1
        next_at = entry.next_at if entry is not None else now
        booked = max(0, entry.booked - 1) if entry is not None else 0
        table[key] = _Entry(failures, now, max(next_at, now + self.spacing(failures)), booked)
        while table:
            oldest = next(iter(table))
            first = table[oldest]
            if len(table) <= self.max_entries and (now - first.last <= self.window or first.next_at > now):
                break
            del table[oldest]

    def __len__(self) -> int:
        """Number of tracked keys (both tables), for tests and metrics."""
        return len(self._peers) + len(self._accounts)
