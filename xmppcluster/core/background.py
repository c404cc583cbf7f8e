"""Work a module runs in the background: each piece started at once, its failure logged, all of it waited
for at stop (before storage closes), including pieces started while waiting."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.logger import Logger


class Background:
    """The Deferreds of background coroutines still running; ``label`` names them in failure logs."""

    __slots__ = ("log", "label", "pending")

    def __init__(self, log: Logger, label: str) -> None:
        self.log = log
        self.label = label
        self.pending: set[Deferred] = set()

    def run(self, coroutine: Coroutine[Any, Any, Any], what: str) -> Deferred:
        """Start ``coroutine``; the returned Deferred fires with its result (None after a logged failure)."""
        d = ensureDeferred(coroutine)
        self.pending.add(d)

        def done(result: Any) -> Any:
            self.pending.discard(d)
            return result

        d.addBoth(done)
        d.addErrback(lambda failure: self.log.failure("{label} {what} failed", failure, label=self.label, what=what))
        return d

    def drain(self) -> Deferred:
        """Fires once nothing is running, including work started by the work waited for."""
        if not self.pending:
            return succeed(None)

        async def wait() -> None:
            while self.pending:
                await DeferredList(list(self.pending), consumeErrors=True)

        return ensureDeferred(wait())
