"""xmppcluster.core.keyed.KeyedQueue: one job at a time per key, in order, failures isolated."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from xmppcluster.core.keyed import KeyedQueue


class KeyedQueueTests(TestCase):
    def test_jobs_of_one_key_run_in_order_and_others_do_not_wait(self) -> None:
        queue, log, gates = KeyedQueue(), [], {}

        async def job(name: str) -> str:
            log.append(f"start {name}")
            gate = gates[name] = Deferred()
            await gate
            log.append(f"end {name}")
            return name

        first, second = queue.run("a", job, "a1"), queue.run("a", job, "a2")
        other = queue.run("b", job, "b1")
        self.assertEqual(log, ["start a1", "start b1"])  # a2 waits for a1; b1 does not
        self.assertTrue(queue.busy("a"))
        gates["a1"].callback(None)
        self.assertEqual(self.successResultOf(first), "a1")
        self.assertEqual(log, ["start a1", "start b1", "end a1", "start a2"])
        gates["a2"].callback(None)
        gates["b1"].callback(None)
        self.assertEqual((self.successResultOf(second), self.successResultOf(other)), ("a2", "b1"))
        self.assertFalse(queue.busy("a") or queue.busy("b"))
        self.assertEqual(queue.pending(), [])

    def test_a_failure_reaches_its_caller_only(self) -> None:
        queue = KeyedQueue()

        async def boom() -> None:
            raise ValueError("no")

        async def fine() -> int:
            return 7

        gate = Deferred()

        async def held() -> None:
            await gate

        queue.run("a", held)
        failed, after = queue.run("a", boom), queue.run("a", fine)
        gate.callback(None)
        self.failureResultOf(failed, ValueError)
        self.assertEqual(self.successResultOf(after), 7)

    def test_synchronous_jobs_leave_nothing_behind(self) -> None:
        queue = KeyedQueue()

        async def now(x: int) -> int:
            return x * 2

        self.assertEqual(self.successResultOf(queue.run("a", now, 4)), 8)
        self.assertFalse(queue.busy("a"))
