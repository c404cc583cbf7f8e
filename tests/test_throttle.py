"""Read throttling holds input beyond the rate and releases it as the bucket refills; nothing is dropped."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from xmppcluster.streams.throttle import ReadThrottle


class FakeTransport:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")


class ReadThrottleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.transport = FakeTransport()
        self.delivered: list[tuple[float, bytes]] = []
        self.throttle = ReadThrottle(self.transport, self.clock, rate=1000, burst=5000,
                                     deliver=lambda data: self.delivered.append((self.clock.seconds(), data)))

    def test_within_burst_passes_at_once(self) -> None:
        self.throttle.received(b"x" * 5000)
        self.assertEqual(self.transport.events, [])
        self.assertEqual(len(self.delivered), 1)

    def test_over_burst_pauses_and_holds_what_follows(self) -> None:
        self.throttle.received(b"a" * 5500)  # 500 bytes over: reading pauses for half a second
        self.throttle.received(b"b" * 100)  # arrives anyway (e.g. already decrypted by TLS): held
        self.assertEqual(self.transport.events, ["pause"])
        self.assertEqual([d for _, d in self.delivered], [b"a" * 5500])
        self.clock.advance(0.5)
        self.assertEqual([d[:1] for _, d in self.delivered], [b"a", b"b"])
        self.assertEqual(self.transport.events, ["pause"])  # "b" spent the refill: still paused
        self.clock.advance(0.1)
        self.assertEqual(self.transport.events, ["pause", "resume"])

    def test_order_is_kept(self) -> None:
        for n in range(50):
            self.throttle.received(bytes([n]) * 500)
        self.clock.pump([0.1] * 400)
        self.assertEqual([d[0] for _, d in self.delivered], list(range(50)))

    def test_sustained_rate_is_the_configured_one(self) -> None:
        for _ in range(100):
            self.throttle.received(b"x" * 1000)
        self.clock.pump([0.25] * 500)
        self.assertEqual(len(self.delivered), 100)
        # 100 kB at 1 kB/s after a 5 kB burst: the last one passes after about 95 s.
        self.assertLessEqual(abs(self.delivered[-1][0] - 95), 1.5)

    def test_zero_rate_disables(self) -> None:
        throttle = ReadThrottle(self.transport, self.clock, rate=0, burst=0, deliver=lambda data: None)
        throttle.received(b"x" * 10**6)
        self.assertEqual(self.transport.events, [])

    def test_stop_forgets_held_input(self) -> None:
        self.throttle.received(b"x" * 6000)
        self.throttle.received(b"y")
        self.throttle.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.throttle.held), 0)
