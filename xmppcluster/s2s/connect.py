"""Reaching one of a remote domain's targets: staggered parallel attempts, the first to connect wins.

:func:`connect_first` races the :class:`~xmppcluster.s2s.resolve.Target` list from
:func:`~xmppcluster.s2s.resolve.targets` the way RFC 8305 (happy eyeballs) races addresses: the next
target starts when the previous one fails or after ``stagger`` seconds without success, earlier attempts
keep running, the first success cancels the others. It does not know about TCP or TLS: ``connect_one``
makes each attempt; :func:`endpoint_for` builds the usual endpoint for it (``HostnameEndpoint``, which
itself races the IPv6 and IPv4 addresses of one name, wrapped in TLS for XEP-0368 direct TLS targets).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IHostnameResolver,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from xmppcluster.s2s.resolve import NamesHostnameResolver, Target

__all__ = ["ConnectError", "close_connection", "connect_first", "endpoint_for"]

_log = Logger()


class ConnectError(Exception):
    """No target could be reached: bounce with ``remote-server-timeout`` (RFC 6120 §8.3.3.17: the domain
    was resolved but no connection could be made).

    ``reasons`` has one ``(target, reason)`` per target, in the order given: the failure of each attempt,
    ``"timed out"`` for attempts still running at the overall timeout, ``"not tried"`` for targets never
    started before it. ``timed_out`` tells whether the overall timeout ended the race.
    """

    condition = "remote-server-timeout"

    def __init__(self, reasons: Sequence[tuple[Target, str]], timed_out: bool = False) -> None:
        super().__init__(list(reasons), timed_out)
        self.reasons = list(reasons)
        self.timed_out = timed_out

    def __str__(self) -> str:
        if not self.reasons:
            return "no target to connect to"
        head = "timed out" if self.timed_out else "every target failed"
        return f"{head}: " + "; ".join(f"{target}: {reason}" for target, reason in self.reasons)


def close_connection(connection: Any) -> None:
    """Drop a connection nobody will use: ``connection`` is a protocol (its transport is aborted)."""
    transport = getattr(connection, "transport", None)
    if transport is None:
        return
    abort = getattr(transport, "abortConnection", None)
    (abort or transport.loseConnection)()


def _describe(failure: Failure) -> str:
    error = failure.value
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def connect_first(
    reactor: IReactorTime,
    targets: Sequence[Target],
    connect_one: Callable[[Target], Deferred],
    stagger: float = 0.25,
    timeout: float = 10.0,
    *,
    close: Callable[[Any], None] = close_connection,
) -> tuple[Target, Any]:
    """Connect to the first of ``targets`` that answers; returns ``(target, what connect_one gave)``.

    Attempt *n+1* starts when attempt *n* fails or ``stagger`` seconds after it started, whichever comes
    first; earlier attempts keep running. The first success wins: the attempts still running are cancelled
    (``connect_one``'s Deferreds should abort their attempt when cancelled, as endpoint ``connect()``
    Deferreds do) and a connection that completes anyway is passed to ``close``. ``timeout`` bounds the
    whole race. Cancelling the call cancels every attempt.

    Raises :class:`ConnectError` with every target's reason when all fail or the timeout passes.
    """
    race = _Race(reactor, list(targets), connect_one, stagger, timeout, close)
    return await race.start()


class _Race:
    def __init__(self, reactor, targets: list[Target], connect_one, stagger: float, timeout: float, close) -> None:
        self.reactor = reactor
        self.targets = targets
        self.connect_one = connect_one
        self.stagger = stagger
        self.timeout = timeout
        self.close = close
        self.result: Deferred[tuple[Target, Any]] = Deferred(self._cancelled)
        self.finished = False
        self.started = 0
        self.running: dict[int, Deferred] = {}
        self.reasons: dict[int, str] = {}
        self.next_call = None
        self.deadline = None

    def start(self) -> Deferred[tuple[Target, Any]]:
        if not self.targets:
            self._finish()
            self.result.errback(ConnectError([]))
            return self.result
        self.deadline = self.reactor.callLater(self.timeout, self._timed_out)
        self._start_next()
        return self.result

    def _start_next(self) -> None:
        if self.next_call is not None and self.next_call.active():
            self.next_call.cancel()
        self.next_call = None
        if self.finished or self.started >= len(self.targets):
            return
        index = self.started
        self.started += 1
        try:
            attempt = self.connect_one(self.targets[index])
            if inspect.isawaitable(attempt) and not isinstance(attempt, Deferred):
                attempt = defer.ensureDeferred(attempt)
            elif not isinstance(attempt, Deferred):
                attempt = defer.succeed(attempt)
        except Exception:
            attempt = defer.fail()
        self.running[index] = attempt
        attempt.addCallbacks(self._connected, self._failed, callbackArgs=(index,), errbackArgs=(index,))
        # A synchronous failure has already started the next attempt; otherwise wait ``stagger``.
        if index in self.running and not self.finished and self.next_call is None and self.started < len(self.targets):
            self.next_call = self.reactor.callLater(self.stagger, self._start_next)

    def _connected(self, connection: Any, index: int) -> None:
        self.running.pop(index, None)
        if self.finished:
            _log.debug("s2s: closing late connection to {target}", target=self.targets[index])
            self.close(connection)
            return
        self._finish()
        self.result.callback((self.targets[index], connection))

    def _failed(self, failure: Failure, index: int) -> None:
        self.running.pop(index, None)
        if self.finished:
            return
        self.reasons[index] = _describe(failure)
        if self.started < len(self.targets):
            self._start_next()
        elif not self.running:
            self._finish()
            self.result.errback(ConnectError([(target, self.reasons[i]) for i, target in enumerate(self.targets)]))

    def _timed_out(self) -> None:
        self.deadline = None
        reasons = []
        for index, target in enumerate(self.targets):
            if index in self.reasons:
                reasons.append((target, self.reasons[index]))
            elif index in self.running:
                reasons.append((target, f"timed out after {self.timeout:g} s"))
            else:
                reasons.append((target, "not tried"))
        self._finish()
        self.result.errback(ConnectError(reasons, timed_out=True))

    def _cancelled(self, result: Deferred) -> None:
        self._finish()

    def _finish(self) -> None:
        """Stop the timers and cancel the attempts still running (their late successes get closed)."""
        self.finished = True
        for call in (self.next_call, self.deadline):
            if call is not None and call.active():
                call.cancel()
        self.next_call = self.deadline = None
        for attempt in list(self.running.values()):
            attempt.cancel()


@implementer(IReactorPluggableNameResolver, IReactorTCP, IReactorTime)
class _ResolvingReactor:
    """The reactor, except that host names are resolved by ``nameResolver`` (for ``HostnameEndpoint``)."""

    def __init__(self, reactor, name_resolver: IHostnameResolver) -> None:
        self._reactor = reactor
        self.nameResolver = name_resolver

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        previous, self.nameResolver = self.nameResolver, resolver
        return previous

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


def endpoint_for(
    reactor,
    target: Target,
    tls_options=None,
    timeout: float = 10.0,
    *,
    resolver=None,
    attempt_delay: float | None = None,
) -> IStreamClientEndpoint:
    """The endpoint that reaches ``target``: a ``HostnameEndpoint``, wrapped in TLS for direct TLS.

    ``tls_options``: an ``IOpenSSLClientConnectionCreator`` such as
    ``optionsForClientTLS(<remote XMPP domain>, trustRoot=..., acceptableProtocols=[b"xmpp-server"])``
    (certificate checked against the XMPP domain, never the SRV host, RFC 6125 / XEP-0368; ALPN
    ``xmpp-server``). Required for a direct TLS target, ignored otherwise (STARTTLS happens in the stream).
    ``timeout`` bounds each TCP connection attempt. ``resolver``: a ``twisted.names`` resolver for the
    target's A/AAAA records (:func:`~xmppcluster.s2s.resolve.resolver_for`); None uses the reactor's own
    name resolution (getaddrinfo in a thread, ``/etc/hosts`` included).
    """
    if resolver is not None:
        reactor = _ResolvingReactor(reactor, NamesHostnameResolver(resolver))
    endpoint = HostnameEndpoint(reactor, target.host, target.port, timeout=timeout, attemptDelay=attempt_delay)
    if not target.direct_tls:
        return endpoint
    if tls_options is None:
        raise ValueError(f"{target}: direct TLS needs tls_options")
    return wrapClientTLS(tls_options, endpoint, clock=reactor)
