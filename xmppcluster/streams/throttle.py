"""Per-connection read throttling: a token bucket that pauses the transport, never drops data.

A client that sends faster than ``rate`` bytes/s beyond its ``burst`` is read more slowly (TCP
backpressure reaches it), as Prosody's mod_limits does; nothing is lost and the stream stays open.
Pausing a transport does not stop what a TLS layer already decrypted, so input that arrives while
paused is held here (at most one read's worth) and released as the bucket refills.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any


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
