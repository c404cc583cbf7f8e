"""One job at a time per key (an account), in arrival order, without a lock object per job.

``DeferredLock`` costs a lock, ``maybeDeferred`` and two extra Deferreds per job; a login runs half a
dozen roster/presence jobs, so the queue is a chain of "previous job done" Deferreds instead. A job that
finishes without waiting (SQLite reads are synchronous) leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred


class KeyedQueue:
    """Runs coroutine functions one after another per key; different keys run independently."""

    def __init__(self) -> None:
        self._tails: dict[str, Deferred] = {}  # key -> fires when its last queued job has ended

    def run(self, key: str, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Deferred:
        """``fn(*args)`` once every earlier job of ``key`` has ended; a Deferred of its result.

        Never wait, inside a job, for another job of the same key (it would wait for itself)."""
        previous = self._tails.get(key)
        ended: Deferred = Deferred()
        self._tails[key] = ended

        def finished(outcome: Any) -> Any:
            if self._tails.get(key) is ended:
                del self._tails[key]
            ended.callback(None)
            return outcome

        if previous is None:
            return ensureDeferred(fn(*args)).addBoth(finished)
        result: Deferred = Deferred()

        def start(_: Any) -> None:
            ensureDeferred(fn(*args)).addBoth(finished).chainDeferred(result)

        previous.addCallback(start)
        return result

    def busy(self, key: str) -> bool:
        """True while a job of ``key`` runs or waits."""
        return key in self._tails

    def pending(self) -> list[Deferred]:
        """One Deferred per busy key, fired when its queue is empty (for tests and shutdown)."""
        return list(self._tails.values())
