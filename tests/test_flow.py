"""The flow-control pieces on their own: InputGate (reasons to stop reading) and OutputQueue (held output)."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from xmppcluster.streams.flow import InputGate, OutputQueue


class FakeTransport:
    def __init__(self) -> None:
        self.paused = False
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.paused = True
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.paused = False
        self.calls.append("resume")


class InputGateTests(TestCase):
    def setUp(self) -> None:
        self.transport = FakeTransport()
        self.delivered: list[str] = []
        self.gate = InputGate(self.transport, self.delivered.append)

    def test_passes_input_through(self) -> None:
        self.gate.received("a")
        self.assertEqual(self.delivered, ["a"])
        self.assertEqual(self.transport.calls, [])

    def test_paused_input_waits_in_order(self) -> None:
        self.gate.pause("core")
        self.gate.received("a")
        self.gate.received("b")
        self.assertEqual((self.delivered, self.transport.paused), ([], True))
        self.gate.resume("core")
        self.assertEqual((self.delivered, self.transport.paused), (["a", "b"], False))

    def test_reading_resumes_when_the_last_reason_goes(self) -> None:
        self.gate.pause("core")
        self.gate.pause("output")
        self.gate.resume("core")
        self.assertTrue(self.transport.paused)
        self.gate.resume("output")
        self.assertEqual(self.transport.calls, ["pause", "resume"])

    def test_throttle_valve_pauses_reading_but_not_delivery(self) -> None:
        valve = self.gate.valve()
        valve.pauseProducing()
        self.gate.received("a")  # the throttle delivers what it already let through
        self.assertEqual(self.delivered, ["a"])
        self.gate.pause("core")
        valve.resumeProducing()  # the throttle may not resume what the gate paused
        self.assertTrue(self.transport.paused)
        self.gate.resume("core")
        self.assertFalse(self.transport.paused)

    def test_deliveries_never_nest(self) -> None:
        depth = []

        def deliver(data: str) -> None:
            depth.append(data)
            if data == "a":
                self.gate.pause("core")
                self.gate.received("b")
                self.gate.resume("core")  # from inside a delivery: "b" follows once "a" returns
                self.assertEqual(depth, ["a"])

        self.gate.deliver = deliver
        self.gate.received("a")
        self.assertEqual(depth, ["a", "b"])

    def test_a_reason_set_again_while_released_keeps_the_rest(self) -> None:
        def deliver(data: str) -> None:
            self.delivered.append(data)
            if data == "b":
                self.gate.pause("core")

        self.gate.deliver = deliver
        self.gate.pause("core")
        for data in "abc":
            self.gate.received(data)
        self.gate.resume("core")
        self.assertEqual((self.delivered, list(self.gate.held), self.transport.paused), (["a", "b"], ["c"], True))

    def test_stop_forgets_and_lets_the_transport_read(self) -> None:
        self.gate.pause("core")
        self.gate.received("a")
        self.gate.stop()
        self.gate.received("b")
        self.assertEqual((self.delivered, self.transport.paused), ([], False))


class OutputQueueTests(TestCase):
    def setUp(self) -> None:
        self.sent: list[bytes] = []
        self.events: list[str] = []
        self.queue = OutputQueue(self.send, 10, on_pause=lambda: self.events.append("pause"),
                                 on_resume=lambda: self.events.append("resume"),
                                 on_overflow=lambda: self.events.append("overflow"))
        self.pause_on: bytes | None = None

    def send(self, data: bytes) -> None:
        self.sent.append(data)
        if data == self.pause_on:
            self.queue.pauseProducing()  # the transport's buffer filled up again

    def test_passes_output_through(self) -> None:
        self.queue.write(b"a")
        self.assertEqual(self.sent, [b"a"])

    def test_held_while_paused_then_sent_in_order(self) -> None:
        self.queue.pauseProducing()
        self.queue.write(b"a", stanza=True)
        self.queue.write(b"b")
        self.assertEqual((self.sent, self.queue.held_bytes, self.events), ([], 2, ["pause"]))
        self.queue.resumeProducing()
        self.assertEqual((self.sent, self.queue.held_bytes, self.events), ([b"a", b"b"], 0, ["pause", "resume"]))

    def test_paused_again_while_flushing(self) -> None:
        self.queue.pauseProducing()
        for data in (b"a", b"b", b"c"):
            self.queue.write(data)
        self.pause_on = b"b"
        self.queue.resumeProducing()
        self.assertEqual((self.sent, list(self.queue.held)), ([b"a", b"b"], [(b"c", False)]))
        self.assertEqual(self.events, ["pause"])  # still paused: input stays stopped

    def test_overflow_once_and_nothing_more_sent(self) -> None:
        self.queue.pauseProducing()
        self.queue.write(b"12345", stanza=True)
        self.queue.write(b"678", stanza=True)
        self.queue.write(b"<features/>")  # 19 bytes held: over the limit of 10
        self.assertEqual(self.events, ["pause", "overflow"])
        self.queue.write(b"more", stanza=True)  # the stream is ending: taken by nobody
        self.queue.resumeProducing()
        self.assertEqual(self.sent, [])
        self.assertEqual(self.queue.unsent_stanzas(), [b"12345", b"678"])
        self.assertEqual(self.queue.unsent_stanzas(), [])

    def test_closed_queue_keeps_what_it_holds(self) -> None:
        self.queue.pauseProducing()
        self.queue.write(b"a", stanza=True)
        self.queue.close()
        self.queue.resumeProducing()
        self.assertEqual((self.sent, self.queue.unsent_stanzas()), ([], [b"a"]))
