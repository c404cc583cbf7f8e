"""One BOSH session (XEP-0124 + XEP-0206): rid ordering, held requests, caches, timers.

A :class:`BoshSession` is the :class:`~xmppcluster.streams.core.StreamTransport` of one
:class:`~xmppcluster.streams.core.ClientStream`. HTTP requests reach it as :class:`Exchange` objects; it
answers each exactly once, in rid order, with a ``<body/>`` holding every stanza queued so far.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.words.xish import domish

from xmppcluster.auth.sasl import ChannelInfo
from xmppcluster.core import namespaces as ns
from xmppcluster.core.serializer import serialize, tag
from xmppcluster.core.xml import StreamFault, reparse
from xmppcluster.streams.core import ClientStream, StreamHeader

if TYPE_CHECKING:
    from xmppcluster.streams.bosh import BoshSessions

log = Logger()

HTTPBIND = "http://jabber.org/protocol/httpbind"
XBOSH = "urn:xmpp:xbosh"
#: The BOSH protocol version we implement (XEP-0124 1.11).
BOSH_VERSION = (1, 11)
DEFAULT_CONTENT_TYPE = "text/xml; charset=utf-8"
#: Largest rid a client may use (2**53 - 1, XEP-0124 §14.1).
MAX_RID = 9007199254740991
#: A request whose ``ack`` shows a response older than this (seconds) is missing gets an immediate ``report``.
REPORT_AFTER = 1.0
#: Times one rid may be re-sent before the session ends with ``policy-violation``.
MAX_REPLAYS = 5
#: Legacy clients (no ``ver``) get HTTP errors instead of these binding conditions (XEP-0124 §17.1).
LEGACY_STATUS = {"bad-request": 400, "policy-violation": 403, "item-not-found": 404}
STANZAS = frozenset(("message", "presence", "iq"))

_PREFIXES = {ns.STREAMS: "stream"}
_IN_SCOPE = ["stream"]
_NUMBER = re.compile(r"[0-9]{1,16}")


class BoshError(Exception):
    """A request must end the session with this terminal binding condition."""

    def __init__(self, condition: str, text: str = "") -> None:
        super().__init__(condition)
        self.condition = condition
        self.text = text


def number(body: domish.Element, name: str, default: int | None = None) -> int | None:
    """A non-negative integer attribute, ``default`` when absent; ``bad-request`` when malformed."""
    value = body.getAttribute(name)
    if value is None:
        return default
    if not _NUMBER.fullmatch(value):
        raise BoshError("bad-request", f"'{name}' is not a number")
    return int(value)


def render_body(attrs: dict[str, str], children: Iterable[domish.Element | bytes] = ()) -> bytes:
    """A response ``<body/>``; each child keeps its own namespace (stanzas get ``xmlns='jabber:client'``).
    A child given as bytes is a stanza already serialized with its xmlns: written as it is."""
    parts = [child.decode("utf-8") if child.__class__ is bytes else serialize(child, HTTPBIND, _PREFIXES, _IN_SCOPE)
             for child in children]
    head = {"xmlns": HTTPBIND}
    if any(key.startswith("xmpp:") for key in attrs):
        head["xmlns:xmpp"] = XBOSH
    if any("<stream:" in part for part in parts):
        head["xmlns:stream"] = ns.STREAMS
    return tag("body", {**head, **attrs}, "".join(parts) if parts else None).encode("utf-8")


def as_client_namespace(element: domish.Element) -> domish.Element:
    """Stanzas written without a namespace inherit the body's; XEP-0206 §3 says they mean jabber:client."""
    if element.uri == HTTPBIND:
        element.uri = ns.CLIENT
        if element.defaultUri == HTTPBIND:
            element.defaultUri = ns.CLIENT
        for child in element.elements():
            as_client_namespace(child)
    return element


class Exchange:
    """One HTTP request waiting for its answer. ``reply`` writes at most once; a lost connection is noted."""

    __slots__ = ("request", "alive", "__weakref__")

    def __init__(self, request: Any) -> None:
        self.request = request
        self.alive = True
        request.notifyFinish().addErrback(self._lost)

    def _lost(self, _failure: Any) -> None:
        self.alive = False

    def reply(self, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE, status: int = 200) -> None:
        if not self.alive:
            return
        self.alive = False
        request = self.request
        if status != 200:
            request.setResponseCode(status)
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        request.setHeader(b"Content-Length", str(len(data)).encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        request.write(data)
        request.finish()


@dataclass(frozen=True)
class Terms:
    """What was agreed at session creation (the values of the creation response)."""

    wait: int
    hold: int
    requests: int
    inactivity: int
    polling: int
    maxpause: int
    ver: str
    legacy: bool  # the client sent no 'ver': use HTTP status codes for errors
    client_acks: bool
    content_type: str


class _Held:
    """A request processed in rid order and not answered yet."""

    __slots__ = ("rid", "exchange", "deadline", "creation", "pause", "key")

    def __init__(self, rid: int, exchange: Exchange | None, deadline: float, key: str | None,
                 creation: bool = False, pause: bool = False) -> None:
        self.rid = rid
        self.exchange = exchange
        self.deadline = deadline
        self.key = key
        self.creation = creation
        self.pause = pause


class BoshSession:
    """A BOSH session and the sink of its client stream."""

    can_starttls = False
    listener = None
    #: Input is bounded per request (StreamTransport): nothing to pause.
    pause_reading = None
    resume_reading = None

    def __init__(self, manager: BoshSessions, sid: str, peer: str, secure: bool, rid: int, terms: Terms,
                 key: str | None, host: str | None) -> None:
        self.manager = manager
        self.port: int | None = None  # the HTTP port the session was created on
        self.tls = False  # that port is https (``secure`` may also be true for loopback or a trusted proxy)
        self.server = manager.server
        self.clock = manager.server.clock
        self.sid = sid
        self.peer = peer
        self.secure = secure
        self.terms = terms
        self.host = host
        self.stream: ClientStream | None = None
        self.closed = False
        self.authid: str | None = None
        self.stream_from: str | None = None
        self.xmpp_version = "1.0"
        self.last_rid = rid  # the highest rid processed (all lower ones processed too)
        self.key = key  # the key the next request must hash to (XEP-0124 §15)
        self.pending: dict[int, tuple[Exchange, domish.Element]] = {}  # arrived early, waiting for lower rids
        self.held: list[_Held] = []  # processed, not answered; ascending rid
        self.queue: list[domish.Element | bytes] = []  # stanzas for the client (bytes: already serialized)
        self.queued_bytes = 0  # serialized size of what was queued while no request was held
        self.cache: dict[int, tuple[bytes, float, str | None]] = {}  # rid -> (response, sent at, key)
        self.final: bytes | None = None  # terminal response nobody could receive yet
        self._busy = False
        self._flush_call: Any = None
        self._wait_timer: Any = None
        self._inactivity_timer: Any = None
        self._pause: int | None = None
        self._report: tuple[int, float] | None = None
        self._replays = 0
        self._last_arrival = -1e9
        self._last_empty = False
        self._last_response_empty = False

    # -- StreamTransport ---------------------------------------------------------------------------

    def open_stream(self, attrs: dict[str, str]) -> None:
        self.authid = attrs.get("id") or self.authid
        self.stream_from = attrs.get("from") or self.stream_from
        self.xmpp_version = attrs.get("version") or self.xmpp_version

    def send_serialized(self, xml: bytes) -> None:
        """A stanza already serialized (UTF-8, with its xmlns; e.g. routed from another node): queued and
        written into a response as it is, never parsed again."""
        self.send(xml)

    def send(self, element: domish.Element | bytes) -> None:
        if self.closed:
            return
        if not self.held:
            # Nobody is polling: the stanza waits, bounded in count and in bytes (--client-output-limit).
            data = element if element.__class__ is bytes else \
                serialize(element, HTTPBIND, _PREFIXES, _IN_SCOPE).encode("utf-8")
            if (len(self.queue) >= self.manager.settings.max_waiting
                    or self.queued_bytes + len(data) > self.server.limits.client_output_limit):
                self._overflow(element)
                return
            self.queued_bytes += len(data)
            element = data
        self.queue.append(element)
        if not self._busy and self._flush_call is None and self.held:
            self._flush_call = self.clock.callLater(0, self._flush_now)

    def close_stream(self, error: domish.Element | None = None) -> None:
        if self.closed:
            return
        if error is None:
            self.terminate(None, notify_core=False)
            return
        condition = next((child.name for child in error.elements() if child.uri == ns.STREAM_ERRORS), None)
        if condition == "system-shutdown":
            self.terminate("system-shutdown", list(self.queue), notify_core=False)
        else:
            self.terminate("remote-stream-error", [*self.queue, error], notify_core=False)

    def restart_stream(self) -> None:
        """BOSH restarts come as ``xmpp:restart='true'`` requests; nothing to reset here."""

    def start_tls(self, creator: Any) -> None:
        raise RuntimeError("BOSH never negotiates STARTTLS")

    def channel_info(self) -> ChannelInfo:
        # A session's requests may use different TLS connections, so no channel binding is offered.
        return ChannelInfo(secure=self.secure, bindings={})

    # -- requests ----------------------------------------------------------------------------------

    def start(self, exchange: Exchange, header: StreamHeader) -> None:
        """Process the session-creation request (its rid is ``last_rid``)."""
        self._busy = True
        self.held.append(_Held(self.last_rid, exchange, self._deadline(), self.key, creation=True))
        self._last_arrival = self.clock.seconds()
        self.stream = ClientStream(self.server, self, tls_required=False, offer_starttls=False)
        self.stream.stream_started(header)
        self._busy = False
        self._flush()

    def handle(self, exchange: Exchange, body: domish.Element) -> None:
        """A request naming this session's sid."""
        if self.final is not None:
            exchange.reply(self.final, self.terms.content_type)
            self.manager.remove(self)
            return
        if self.closed:
            exchange.reply(render_body({"type": "terminate", "condition": "item-not-found"}))
            return
        try:
            rid = number(body, "rid")
            if rid is None or rid > MAX_RID:
                raise BoshError("bad-request", "missing or invalid 'rid'")
            self._arrive(rid, exchange, body)
        except BoshError as error:
            self._fail(error.condition, exchange, error.text)
            return
        self._flush()

    def _arrive(self, rid: int, exchange: Exchange, body: domish.Element) -> None:
        if rid <= self.last_rid or rid in self.pending:
            self._repeat(rid, exchange, body)
            return
        self._cancel_inactivity()
        pause_or_terminate = body.hasAttribute("pause") or body.getAttribute("type") == "terminate"
        extra = 1 if pause_or_terminate else 0
        terms = self.terms
        outstanding = len(self.held) + len(self.pending) + 1
        if outstanding > terms.requests + extra:
            raise BoshError("policy-violation", "too many simultaneous requests")
        if rid > self.last_rid + terms.requests + extra:
            raise BoshError("item-not-found", "rid outside the window")
        now = self.clock.seconds()
        empty = not pause_or_terminate and not _children(body) and body.getAttribute((XBOSH, "restart")) != "true"
        if empty and self._last_empty and now - self._last_arrival < terms.polling:
            if terms.hold == 0 and self._last_response_empty:
                raise BoshError("policy-violation", "polling too frequently")
            if terms.hold > 0 and outstanding == terms.requests:
                raise BoshError("policy-violation", "requests too frequent")
        self._last_arrival = now
        self._last_empty = empty
        self._replays = 0
        self.pending[rid] = (exchange, body)
        while self.last_rid + 1 in self.pending and not self.closed:
            next_rid = self.last_rid + 1
            early_exchange, early_body = self.pending.pop(next_rid)
            self._process(next_rid, early_exchange, early_body)

    def _repeat(self, rid: int, exchange: Exchange, body: domish.Element) -> None:
        """A rid seen before: the cached response, or this connection replaces the old one."""
        self._replays += 1
        if self._replays > MAX_REPLAYS:
            raise BoshError("policy-violation", "too many repeated requests")
        cached = self.cache.get(rid)
        if cached is not None:
            data, _sent, key = cached
            if key is not None and body.getAttribute("key") != key:
                raise BoshError("item-not-found", "wrong key")
            exchange.reply(data, self.terms.content_type)
            return
        recoverable = render_body({"type": "error"})
        for held in self.held:
            if held.rid == rid:
                if held.exchange is not None:
                    held.exchange.reply(recoverable, self.terms.content_type)
                held.exchange = exchange
                return
        if rid in self.pending:
            old, early_body = self.pending[rid]
            old.reply(recoverable, self.terms.content_type)
            self.pending[rid] = (exchange, early_body)
            return
        raise BoshError("item-not-found", "the response to this rid is gone")

    def _process(self, rid: int, exchange: Exchange, body: domish.Element) -> None:
        """Forward one request's payloads to the stream core (called in rid order)."""
        self.last_rid = rid
        held = _Held(rid, exchange, self._deadline(), body.getAttribute("key"), pause=body.hasAttribute("pause"))
        self.held.append(held)
        self._check_key(body)
        self._client_ack(body)
        pause = number(body, "pause")
        self.stream.activity()
        self._busy = True
        try:
            stream = self.stream
            if body.getAttribute((XBOSH, "restart")) == "true":
                # XEP-0206 §5: payloads of a restart request are ignored.
                stream.stream_started(StreamHeader(
                    to=body.getAttribute("to") or stream.domain, version=self.xmpp_version,
                    lang=body.getAttribute((ns.XML, "lang")), frm=body.getAttribute("from")))
            else:
                for child in _children(body):
                    if stream.state == "closed":
                        break
                    stream.element_received(as_client_namespace(child))
            if body.getAttribute("type") == "terminate" and not self.closed:
                stream.stream_ended()
        finally:
            self._busy = False
        if pause is not None and not self.closed:
            self._pause = min(pause, self.terms.maxpause)
            for waiting in list(self.held):
                self._answer(waiting, ())

    def _check_key(self, body: domish.Element) -> None:
        if self.key is not None:
            key = body.getAttribute("key")
            if key is None or hashlib.sha1(key.lower().encode("ascii", "replace")).hexdigest() != self.key:
                raise BoshError("item-not-found", "invalid key")
            self.key = key.lower()
        newkey = body.getAttribute("newkey")
        if newkey is not None:
            self.key = newkey.lower()

    def _client_ack(self, body: domish.Element) -> None:
        if not self.terms.client_acks:
            return
        ack = number(body, "ack")
        if ack is None:
            return
        for rid in [r for r in self.cache if r <= ack]:
            del self.cache[rid]
        missing = self.cache.get(ack + 1)
        if missing is not None and self.clock.seconds() - missing[1] >= REPORT_AFTER:
            self._report = (ack + 1, missing[1])

    # -- answering ---------------------------------------------------------------------------------

    def _flush_now(self) -> None:
        self._flush_call = None
        self._flush()

    def _flush(self) -> None:
        """Answer what must be answered now; arm the wait or inactivity timer for the rest."""
        if self.closed:
            return
        while len(self.held) > self.terms.hold:
            self._answer(self.held[0], self._take_queue())
        if self.held and (self.queue or self._report is not None):
            self._answer(self.held[0], self._take_queue())
        self._arm_timers()

    def _take_queue(self) -> list[domish.Element | bytes]:
        queue, self.queue, self.queued_bytes = self.queue, [], 0
        return queue

    def _answer(self, held: _Held, children: list[domish.Element | bytes] | tuple) -> None:
        self.held.remove(held)
        terms = self.terms
        attrs: dict[str, str] = {}
        if held.creation:
            attrs.update(self._creation_attributes(held.rid))
        elif self.last_rid > held.rid:
            attrs["ack"] = str(self.last_rid)
        if self._report is not None and not held.creation:
            report, sent = self._report
            self._report = None
            attrs["report"] = str(report)
            attrs["time"] = str(int((self.clock.seconds() - sent) * 1000))
        data = render_body(attrs, children)
        if not held.pause:
            self.cache[held.rid] = (data, self.clock.seconds(), held.key)
            while len(self.cache) > max(terms.requests, 1):
                del self.cache[next(iter(self.cache))]
        self._last_response_empty = not children
        if held.exchange is not None:
            held.exchange.reply(data, terms.content_type)

    def _creation_attributes(self, rid: int) -> dict[str, str]:
        terms = self.terms
        attrs = {
            "sid": self.sid,
            "wait": str(terms.wait),
            "requests": str(terms.requests),
            "hold": str(terms.hold),
            "inactivity": str(terms.inactivity),
            "polling": str(terms.polling),
            "maxpause": str(terms.maxpause),
            "ver": terms.ver,
            "ack": str(rid),
            "secure": "true",  # the connection manager and the XMPP server are one process
            "xmpp:version": self.xmpp_version,
            "xmpp:restartlogic": "true",
        }
        if self.stream_from:
            attrs["from"] = self.stream_from
        if self.authid:
            attrs["authid"] = self.authid
        if self.host:
            attrs["host"] = self.host
        return attrs

    def _deadline(self) -> float:
        return self.clock.seconds() + self.terms.wait

    def _arm_timers(self) -> None:
        if self._wait_timer is not None and self._wait_timer.active():
            self._wait_timer.cancel()
        self._wait_timer = None
        if self.held:
            delay = max(0.0, self.held[0].deadline - self.clock.seconds())
            self._wait_timer = self.clock.callLater(delay, self._wait_expired)
        elif not self.pending and self._inactivity_timer is None:
            period = self._pause if self._pause is not None else self.terms.inactivity
            self._pause = None
            self._inactivity_timer = self.clock.callLater(period, self._inactive)

    def _wait_expired(self) -> None:
        self._wait_timer = None
        now = self.clock.seconds()
        while self.held and self.held[0].deadline <= now and not self.closed:
            self._answer(self.held[0], self._take_queue())
        self._arm_timers()

    def _cancel_inactivity(self) -> None:
        if self._inactivity_timer is not None:
            if self._inactivity_timer.active():
                self._inactivity_timer.cancel()
            self._inactivity_timer = None

    def _inactive(self) -> None:
        self._inactivity_timer = None
        if self.final is not None:
            self.manager.remove(self)
            return
        log.info("BOSH session {sid} ({peer}) inactive: ending it", sid=self.sid[:8], peer=self.peer)
        self._end("inactivity timeout", notify_core=True)
        self.manager.remove(self)

    def _overflow(self, element: domish.Element | bytes) -> None:
        """Nobody is polling and the queue is full: bounce instead of growing (XEP-0206 §7)."""
        if element.__class__ is bytes:
            try:  # a stanza this server serialized
                element = reparse(element)
            except StreamFault:
                log.warn("BOSH session {sid}: queue full, an unreadable stanza dropped", sid=self.sid[:8])
                return
        if element.name == "message" and element.uri == ns.CLIENT:
            self.server.router.bounce(element, "recipient-unavailable")
        elif element.name == "iq" and element.getAttribute("type") in ("get", "set"):
            self.server.router.bounce(element, "service-unavailable")
        log.warn("BOSH session {sid}: {n} stanzas waiting, {name} refused", sid=self.sid[:8],
                 n=len(self.queue), name=element.name)

    # -- termination -------------------------------------------------------------------------------

    def _fail(self, condition: str, trigger: Exchange, text: str = "") -> None:
        log.info("BOSH session {sid} ({peer}): {condition} {text}", sid=self.sid[:8], peer=self.peer,
                 condition=condition, text=text)
        self.terminate(condition, trigger=trigger, notify_core=True)

    def redirect_to(self, node: str) -> None:
        """End the session with see-other-uri naming the same endpoint on another cluster node."""
        scheme = "https" if self.tls else "http"
        port = f":{self.port}" if self.port else ""
        self.terminate("see-other-uri", uri=f"{scheme}://{node}{port}/http-bind")

    def terminate(self, condition: str | None, children: list[domish.Element | bytes] | None = None, *,
                  trigger: Exchange | None = None, notify_core: bool = True, uri: str | None = None) -> None:
        """End the session with a terminal binding condition (None: a clean end, as after a client terminate).

        The oldest open request (or ``trigger``) carries the ``type='terminate'`` body; the other open
        requests get an empty body on a clean end, else ``other-request``. ``uri`` fills see-other-uri.
        """
        if self.closed:
            return
        children = list(self.queue) if children is None else children
        self.queue = []
        attrs = {"type": "terminate"}
        if condition is not None:
            attrs["condition"] = condition
        if uri is not None:
            element = domish.Element((HTTPBIND, "uri"))
            element.addContent(uri)
            children = [*children, element]
        final = render_body(attrs, children)
        status = LEGACY_STATUS.get(condition, 200) if self.terms.legacy else 200
        exchanges = [held.exchange for held in self.held if held.exchange is not None]
        exchanges += [self.pending[rid][0] for rid in sorted(self.pending)]
        if trigger is not None and trigger not in exchanges:
            exchanges.append(trigger)
        primary = trigger if trigger is not None else (exchanges[0] if exchanges else None)
        other = render_body({} if condition is None else {"type": "terminate", "condition": "other-request"})
        for exchange in exchanges:
            if exchange is primary:
                exchange.reply(final, self.terms.content_type, status)
            else:
                exchange.reply(other, self.terms.content_type)
        self.held.clear()
        self.pending.clear()
        self._end(f"BOSH {condition or 'terminate'}", notify_core=notify_core)
        if primary is None:
            # Nobody could hear it: keep the answer for the next request, for one inactivity period.
            self.final = final
            self._inactivity_timer = self.clock.callLater(self.terms.inactivity, self._inactive)
        else:
            self.manager.remove(self)

    def forget(self) -> None:
        """Drop the answer kept for a late request and its timer (the node is stopping)."""
        self.final = None
        self._cancel_inactivity()

    def _end(self, reason: str, notify_core: bool) -> None:
        self.closed = True
        for name in ("_wait_timer", "_flush_call"):
            timer = getattr(self, name)
            if timer is not None and timer.active():
                timer.cancel()
            setattr(self, name, None)
        self._cancel_inactivity()
        self.cache.clear()
        if notify_core and self.stream is not None:
            self.stream.connection_lost(reason)


def _children(body: domish.Element) -> list[domish.Element]:
    return [child for child in body.children if isinstance(child, domish.Element)]
