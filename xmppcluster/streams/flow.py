"""Flow control for a client connection: input that can be stopped, output that is bounded.

:class:`InputGate` stops reading a transport for named reasons (SASL busy, output backed up, the read
throttle) and holds what was already read until the last reason goes, so nothing is lost and nothing is
parsed while stopped. :class:`OutputQueue` is the transport's streaming producer: once the transport's
own buffer is full it holds further output (serialized, counted in bytes), stops the client's input, and
reports an overflow past ``limit``; the stanzas it never handed to the transport can then be routed again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

#: Reason of the read throttle's pauses (it pauses the transport but wants its input delivered).
RATE = "rate"


class _Valve:
    """What :class:`~xmppcluster.streams.throttle.ReadThrottle` takes for a transport: pausing goes via the gate."""

    __slots__ = ("_gate", "_reason")

    def __init__(self, gate: InputGate, reason: str) -> None:
        self._gate = gate
        self._reason = reason

    def pauseProducing(self) -> None:
        self._gate._stop(self._reason)

    def resumeProducing(self) -> None:
        self._gate._start(self._reason)


class InputGate:
    """``received(data)`` hands ``data`` to ``deliver`` unless input is paused; then it waits, in order.

    Deliveries never nest: a reason removed from inside ``deliver`` releases held input once the current
    delivery returns. One gate per connection, most of them idle: slots, and no queue until input waits.
    """

    __slots__ = ("transport", "deliver", "held", "_reasons", "_stops", "_delivering", "_stopped")

    def __init__(self, transport: Any, deliver: Callable[[Any], None]) -> None:
        self.transport = transport
        self.deliver = deliver
        self.held: deque[Any] | None = None  # input read while paused (or during a delivery), in order
        self._reasons: set[str] = set()  # reasons to hold input
        self._stops: set[str] = set()  # reasons the transport is paused (the above, and the throttle's)
        self._delivering = False
        self._stopped = False

    @property
    def paused(self) -> bool:
        return bool(self._reasons)

    def valve(self, reason: str = RATE) -> _Valve:
        """A pause/resume pair for another component that must not resume what the gate paused."""
        return _Valve(self, reason)

    def received(self, data: Any) -> None:
        if self._stopped:
            return
        if self.held is None:
            self.held = deque()
        self.held.append(data)
        self._pump()

    def pause(self, reason: str) -> None:
        """Stop reading for ``reason`` (idempotent)."""
        if self._stopped:
            return
        self._reasons.add(reason)
        self._stop(reason)

    def resume(self, reason: str) -> None:
        """``reason`` is gone; read again when no other reason remains."""
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        self._pump()
        if reason not in self._reasons:
            self._start(reason)

    def stop(self) -> None:
        """The stream is ending: forget held input and let the transport read again, so its close completes."""
        self._stopped = True
        self.held = None
        self._reasons.clear()
        if self._stops:
            self._stops.clear()
            self.transport.resumeProducing()

    def _pump(self) -> None:
        if self._delivering:
            return  # the delivery in progress continues with what is held
        while self.held and not self._reasons and not self._stopped:
            data = self.held.popleft()
            self._delivering = True
            try:
                self.deliver(data)
            finally:
                self._delivering = False
        if not self.held:
            self.held = None

    def _stop(self, reason: str) -> None:
        if self._stopped:
            return
        if not self._stops:
            self.transport.pauseProducing()
        self._stops.add(reason)

    def _start(self, reason: str) -> None:
        if self._stopped or reason not in self._stops:
            return
        self._stops.discard(reason)
        if not self._stops:
            self.transport.resumeProducing()


@implementer(IPushProducer)
class OutputQueue:
    """The streaming producer registered on a client transport.

    While the transport has room, ``write`` passes data straight through. When the transport pauses us
    (its buffer is full: the client is not reading), output is held here and ``on_pause`` runs (the caller
    stops reading the client); ``on_resume`` runs once everything held has been handed over again. Held
    bytes beyond ``limit`` call ``on_overflow`` once.
    """

    __slots__ = ("send", "limit", "on_pause", "on_resume", "on_overflow", "paused", "overflowed", "closed",
                 "_input_stopped", "held", "held_bytes", "__weakref__")

    def __init__(self, send: Callable[[bytes], None], limit: int, *, on_pause: Callable[[], None],
                 on_resume: Callable[[], None], on_overflow: Callable[[], None]) -> None:
        self.send = send
        self.limit = limit
        self.on_pause = on_pause
        self.on_resume = on_resume
        self.on_overflow = on_overflow
        self.paused = False
        self.overflowed = False
        self.closed = False
        self._input_stopped = False  # on_pause ran, on_resume not yet
        self.held: deque[tuple[bytes, bool]] | None = None  # (data, is a stanza); a queue only while paused
        self.held_bytes = 0

    def write(self, data: bytes, stanza: bool = False) -> None:
        """Send ``data`` now or hold it; ``stanza`` marks a stanza that can be routed again if never sent."""
        if self.closed:
            return
        if not self.paused:
            self.send(data)
            return
        if self.held is None:
            self.held = deque()
        self.held.append((data, stanza))
        self.held_bytes += len(data)
        if self.held_bytes > self.limit and not self.overflowed:
            self.overflowed = True
            self.closed = True
            self.on_overflow()

    def close(self) -> None:
        """The stream is ending: hand nothing more to the transport (held stanzas are routed again)."""
        self.closed = True

    def unsent_stanzas(self) -> list[bytes]:
        """Take the stanzas never handed to the transport (after the stream has ended)."""
        held, self.held, self.held_bytes = self.held or (), None, 0
        return [data for data, stanza in held if stanza]

    # -- IPushProducer: called by the transport --------------------------------------------------------

    def pauseProducing(self) -> None:
        if self.paused:
            return
        self.paused = True
        if not self._input_stopped:
            self._input_stopped = True
            self.on_pause()

    def resumeProducing(self) -> None:
        if not self.paused or self.closed:
            return
        self.paused = False
        while self.held and not self.paused:
            data, _stanza = self.held.popleft()
            self.held_bytes -= len(data)
            self.send(data)
        if not self.held:
            self.held = None
        if not self.paused:
            self._input_stopped = False
            self.on_resume()

    def stopProducing(self) -> None:
        """The connection is going away; what is still held stays for :meth:`unsent_stanzas`."""


def no_delay(transport: Any) -> None:
    """Turn Nagle's algorithm off where the transport has it: XMPP is request/response at every negotiation
    step, and Nagle with delayed ACKs would add ~40 ms to each."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)


def throttled_input(transport: Any, deliver: Callable[[Any], None], clock: Any, rate: float,
                    burst: float) -> tuple[InputGate, Any]:
    """Input read from ``transport`` at ``rate`` bytes/s (``burst`` above it), through a gate that can stop
    it, to ``deliver``: (the gate, the read throttle that ``dataReceived`` feeds)."""
    from xmppcluster.streams.throttle import ReadThrottle

    gate = InputGate(transport, deliver)
    return gate, ReadThrottle(gate.valve(), clock, rate, burst, gate.received)
