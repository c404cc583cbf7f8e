"""A child process spoken to in JSON lines: commands on its stdin, answers and events on its stdout.

``tests/js/webchat.mjs`` (the browser) and ``tests/clients/slix_peer.py`` (a slixmpp peer) speak it.
:meth:`LineProcess.call` sends ``{"id", "cmd", ...}`` and waits for the line with that id;
:meth:`LineProcess.wait_event` waits for an event line matching a predicate (events already seen count).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error, protocol, reactor


class _Protocol(protocol.ProcessProtocol):
    def __init__(self, owner: LineProcess) -> None:
        self.owner = owner
        self.buffer = b""

    def outReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted interface)
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            try:
                self.owner._line(json.loads(line))
            except ValueError:
                continue

    def errReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted interface)
        self.owner.stderr = (self.owner.stderr + data)[-20000:]

    def processEnded(self, reason: Any) -> None:  # noqa: N802 (Twisted interface)
        self.owner._ended()


class LineProcess:
    """One child; stop it with :meth:`stop` (a test adds that as cleanup)."""

    def __init__(self, name: str, executable: str, args: list[str], *, path: str,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.events: list[dict] = []
        self.stderr = b""
        self.running = True
        self._ids = itertools.count(1)
        self._answers: dict[int, defer.Deferred] = {}
        self._waiters: list[tuple[Callable[[dict], bool], defer.Deferred]] = []
        self._end: list[defer.Deferred] = []
        environment = dict(os.environ)
        environment.update(env or {})
        self.transport = reactor.spawnProcess(_Protocol(self), executable, args, env=environment, path=path)

    def _line(self, line: dict) -> None:
        if "id" in line and line["id"] in self._answers:
            self._answers.pop(line["id"]).callback(line)
            return
        self.events.append(line)
        for waiter in list(self._waiters):
            predicate, d = waiter
            if predicate(line):
                self._waiters.remove(waiter)
                d.callback(line)

    def _ended(self) -> None:
        self.running = False
        failure = AssertionError(f"{self.name} ended; stderr: {self.stderr.decode(errors='replace')[-3000:]}")
        for d in list(self._answers.values()) + [d for _, d in self._waiters]:
            if not d.called:
                d.errback(failure)
        self._answers.clear()
        self._waiters.clear()
        for d in self._end:
            d.callback(None)
        self._end.clear()

    def send(self, command: dict) -> None:
        self.transport.write(json.dumps(command).encode() + b"\n")

    async def call(self, cmd: str, *, wait: float = 30, **fields: Any) -> dict:
        """Send one command; its answer within ``wait`` seconds (AssertionError when it answers an error)."""
        if not self.running:
            raise AssertionError(f"{self.name} is not running")
        ident = next(self._ids)
        d: defer.Deferred = defer.Deferred()
        self._answers[ident] = d
        self.send({"id": ident, "cmd": cmd, **fields})
        answer = await d.addTimeout(wait, reactor)
        if "error" in answer:
            raise AssertionError(f"{self.name} {cmd} failed: {answer['error']}")
        return answer

    async def wait_event(self, predicate: Callable[[dict], bool], *, timeout: float = 30) -> dict:
        for event in self.events:
            if predicate(event):
                return event
        if not self.running:
            raise AssertionError(f"{self.name} is not running; stderr: {self.stderr.decode(errors='replace')[-3000:]}")
        d: defer.Deferred = defer.Deferred()
        self._waiters.append((predicate, d))
        try:
            return await d.addTimeout(timeout, reactor)
        except defer.TimeoutError:
            raise AssertionError(f"{self.name}: no such event in {timeout} s; seen: {self.events[-20:]}") from None

    def stop(self) -> defer.Deferred:
        """Ask it to quit, kill it if it has not after a few seconds; fires when it has ended."""
        if not self.running:
            return defer.succeed(None)
        ended: defer.Deferred = defer.Deferred()
        self._end.append(ended)
        if len(self._end) == 1:
            try:
                self.send({"cmd": "quit", "quit": True})
                self.transport.closeStdin()
            except Exception:  # noqa: BLE001 (its pipe may be gone already)
                pass
            killer = reactor.callLater(5, self._kill)
            ended.addBoth(lambda _: killer.cancel() if killer.active() else None)
        return ended

    def _kill(self) -> None:
        try:
            self.transport.signalProcess(signal.SIGKILL)
        except error.ProcessExitedAlready:
            pass
