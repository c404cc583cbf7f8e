"""Failure judgement: which unreachable peers are suspects, and when a suspect is dead.

A peer whose link closed (or fell silent for ``failure-timeout``: :meth:`~xmppcluster.cluster.link.Link._beat`)
becomes a *suspect*: its sessions stay in the directory and stanzas for them wait. A suspect that another
live peer still reports a link to is alive behind a cut link, and its clock starts again. A suspect that
nobody reaches for ``failure-timeout`` is declared dead. Time comes from the clock given (``task.Clock``
in tests).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime


class FailureDetector:
    """Suspects by the time they became unreachable; :meth:`judge` declares the dead ones.

    ``linked(peer)``: this node has a link to ``peer`` now; ``reached(peer)``: a live peer reports a link to
    it; ``dead(peer)``: called once when ``peer`` is declared dead."""

    def __init__(self, clock: IReactorTime | Any, timeout: float, *, linked: Callable[[str], bool],
                 reached: Callable[[str], bool], dead: Callable[[str], None]) -> None:
        self.clock = clock
        self.timeout = timeout
        self._linked = linked
        self._reached = reached
        self._dead = dead
        self.suspects: dict[str, float] = {}  # node -> since when it is unreachable

    def suspect(self, peer: str) -> None:
        """``peer``'s link went down: unreachable from now on, not dead yet."""
        self.suspects[peer] = self.clock.seconds()

    def recovered(self, peer: str) -> None:
        """A link to ``peer`` is up again."""
        self.suspects.pop(peer, None)

    def is_suspect(self, peer: str) -> bool:
        return peer in self.suspects

    def judge(self) -> list[str]:
        """Declare dead the suspects unreachable for ``timeout`` that no live peer still reaches; returns them."""
        now = self.clock.seconds()
        dead = []
        for peer, since in list(self.suspects.items()):
            if self._linked(peer):
                self.suspects.pop(peer)
                continue
            if self._reached(peer):
                self.suspects[peer] = now  # alive behind another node: stanzas go through it
                continue
            if now - since < self.timeout:
                continue  # a blip or a quick restart: the reconnect's <sync/> will tell
            self.suspects.pop(peer)
            dead.append(peer)
            self._dead(peer)
        return dead
