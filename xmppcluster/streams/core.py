"""The client stream core (RFC 6120): one negotiation state machine for TCP, BOSH and WebSocket.

A transport parses bytes into a stream header and elements, feeds them here, and implements the small
:class:`StreamTransport` sink. Everything else (STARTTLS, SASL, resource binding, stream errors,
timeouts, routing of stanzas) happens here once, whatever the transport.

States: ``header`` → (``tls``) → ``auth`` → ``authenticated`` (waiting for the restart) → ``bind`` →
``established`` → ``closed``.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.words.xish import domish

from xmppcluster.auth.sasl import ChannelInfo, SASLServer
from xmppcluster.core import namespaces as ns
from xmppcluster.core import stanza as stanzas
from xmppcluster.core.events import (
    OUTGOING,
    SESSION_BOUND,
    SESSION_UNBOUND,
    STREAM_AUTHENTICATED,
    STREAM_ELEMENT,
    STREAM_PRE_AUTH_IQ,
)
from xmppcluster.core.jid import InvalidJID, parse_jid, resourceprep
from xmppcluster.core.sessions import Session
from xmppcluster.core.tls import channel_bindings
from xmppcluster.core.xml import StreamFault, reparse
from xmppcluster.streams.throttle import log_budget

if TYPE_CHECKING:
    from xmppcluster.config import Listener
    from xmppcluster.core.server import XMPPServer

log = Logger()

STANZAS = frozenset(("message", "presence", "iq"))
MAX_RESOURCE_BYTES = 1023
#: Failed SASL attempts on one stream before it is closed (RFC 6120 §6.4.5 suggests 2 to 5).
MAX_AUTH_ATTEMPTS = 3
#: Elements a client may send before authentication while its input is held (a SASL step in progress: a
#: client waits for each answer; a retry or an ``<abort/>`` is one or two). Past this, ``policy-violation``.
MAX_BACKLOG = 8
#: IQ requests of one client being answered at once (storage look-ups); past this its input is held until
#: one is answered, so a client pipelining thousands of requests makes us work on a few at a time.
MAX_INFLIGHT = 16


@dataclass
class StreamHeader:
    """What the client's stream header (or RFC 7395 ``<open/>``, or BOSH session request) said."""

    to: str | None
    version: str | None
    lang: str | None = None
    frm: str | None = None


class StreamTransport(Protocol):
    """The sink a transport implements. Nothing about features, only moving elements."""

    #: The client's address (IP as text), for throttling and logs.
    peer: str
    #: True when this hop is TLS-encrypted.
    secure: bool
    #: True when this transport can upgrade itself with STARTTLS (plain TCP only).
    can_starttls: bool
    #: The listener the client came in on (its port is named by a ``<see-other-host/>``), or None.
    listener: Listener | None

    # Optional capabilities: declared by every transport, None where it lacks them (never probed).
    #: Stop and restart reading from the client (TCP, WebSocket); None where input is bounded per request (BOSH).
    pause_reading: Callable[[], None] | None
    resume_reading: Callable[[], None] | None
    #: Send the client to another node its own way (WebSocket: see-other-uri; BOSH); None: the core closes
    #: the stream with a ``<see-other-host/>`` naming the node.
    redirect_to: Callable[[str], None] | None

    def open_stream(self, attrs: dict[str, str]) -> None:
        """Send the response stream header with these attributes (from, id, version, xml:lang)."""

    def send(self, element: domish.Element) -> None:
        """Send one top-level element (stanza, features, SASL or TLS element)."""

    def close_stream(self, error: domish.Element | None = None) -> None:
        """Send ``error`` (a ``<stream:error/>``) if given, end the stream and drop the connection."""

    def send_serialized(self, xml: bytes) -> None:
        """Send one stanza already serialized by our serializer (UTF-8, with its xmlns), as it is."""

    def restart_stream(self) -> None:
        """The next thing from the client is a new stream header (after STARTTLS or SASL success)."""

    def start_tls(self, creator: Any) -> None:
        """Begin the server side of a TLS handshake (only when ``can_starttls``)."""

    def channel_info(self) -> ChannelInfo:
        """TLS state and channel-binding data of this hop."""


class StreamFailure(Exception):
    """Raised inside the core to end the stream with a stream error."""

    def __init__(self, condition: str, text: str | None = None) -> None:
        super().__init__(condition)
        self.condition = condition
        self.text = text


def tls_channel_info(transport: Any, secure: bool) -> ChannelInfo:
    """What SASL needs to know of a transport's TLS: whether it is on, and its channel-binding data."""
    if not secure:
        return ChannelInfo(secure=False, bindings={})
    return ChannelInfo(secure=True, bindings=channel_bindings(transport))


def _run_blocking(clock: Any) -> Any:
    """How SASL runs PBKDF2: in the reactor's thread pool; inline with a clock that has no threads (tests)."""
    if IReactorThreads.providedBy(clock):
        def in_thread(fn: Any, *args: Any) -> Deferred:
            return deferToThreadPool(clock, clock.getThreadPool(), fn, *args)
        return in_thread
    return maybeDeferred


def stream_error(condition: str, text: str | None = None) -> domish.Element:
    """A ``<stream:error/>`` element (RFC 6120 §4.9)."""
    error = domish.Element((ns.STREAMS, "error"))
    error.addElement((ns.STREAM_ERRORS, condition))
    if text:
        error.addElement((ns.STREAM_ERRORS, "text"), content=text)
    return error


class ClientStream:
    """One client-to-server stream, from the first header to the close."""

    def __init__(self, server: XMPPServer, transport: StreamTransport, *, tls_required: bool = True,
                 offer_starttls: bool = True) -> None:
        self.server = server
        self.transport = transport
        self.clock = server.clock
        self.state = "header"
        self.id = secrets.token_hex(8)
        self.domain: str | None = None
        self.lang = "en"
        self.user: str | None = None
        self.anonymous = False
        self.session: Session | None = None
        self.tls_required = tls_required and not transport.secure
        self.offer_starttls = offer_starttls and transport.can_starttls and server.certs is not None
        self._sasl: SASLServer | None = None
        # Input is held (elements wait in the backlog, the transport stops reading) while any reason holds:
        # "sasl" (a SASL step in progress), "requests" (MAX_INFLIGHT IQs being answered), "output" (the
        # client does not read what we send).
        self._holds: set[str] = set()
        self._output_waiters: list[Deferred] = []  # output_ready() callers while the client is not reading
        self._backlog: deque[domish.Element] = deque()
        self._draining = False
        self._inflight = 0
        limits = server.limits
        self._unauth_timer = self.clock.callLater(limits.unauthenticated_timeout, self._timed_out,
                                                  "not authenticated in time")
        self._idle_timer = (self.clock.callLater(limits.idle_timeout, self._timed_out, "idle")
                            if limits.idle_timeout > 0 else None)
        server.streams.add(self)
        # Logged at authentication and at the close (one line each per login, the peer in both): an
        # "opened" and a "bound" line cost ~3% of the server's CPU at a few hundred logins per second.

    # -- events from the transport -----------------------------------------------------------------

    def activity(self) -> None:
        """Any inbound traffic (including whitespace keepalives) keeps the stream alive."""
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(self.server.limits.idle_timeout)

    def stream_started(self, header: StreamHeader) -> None:
        """The client opened (or reopened after STARTTLS/SASL) the stream."""
        if self.state == "closed":
            return
        try:
            self._check_header(header)
        except StreamFailure as failure:
            self.fail(failure.condition, failure.text)
            return
        self.transport.open_stream({"from": self.domain, "id": self.id, "version": "1.0",
                                    "xml:lang": self.lang})
        self.transport.send(self._features())

    def element_received(self, element: domish.Element) -> None:
        """One complete top-level element from the client."""
        if self.state == "closed":
            return
        if self._holds or self._backlog:
            if len(self._backlog) >= MAX_BACKLOG and self.state != "established":
                self.fail("policy-violation", "too many elements while authentication is in progress")
                return
            self._backlog.append(element)
            return
        self._dispatch(element)

    def stream_ended(self) -> None:
        """The client closed its stream (``</stream:stream>``, ``<close/>``, BOSH terminate)."""
        self.close("client closed the stream")

    def connection_lost(self, reason: str = "connection lost") -> None:
        """The transport is gone; nothing more can be sent."""
        if self.state != "closed":
            self._finish(reason)

    def transport_failed(self, condition: str, text: str | None = None) -> None:
        """The transport found a stream-level fault (bad XML, size limit, framing)."""
        self.fail(condition, text)

    # -- flow control --------------------------------------------------------------------------------

    def hold_input(self, reason: str) -> None:
        """Stop taking the client's input for ``reason``: the transport stops reading, and elements it had
        already read wait in the backlog."""
        if self.state == "closed" or reason in self._holds:
            return
        if not self._holds:
            if self.transport.pause_reading is not None:
                self.transport.pause_reading()
        self._holds.add(reason)

    def output_ready(self) -> Deferred:
        """Fires once the client reads its output again (at once when it does; also when the stream ends).

        Producers of bulk output (offline messages) wait on it, so a reading client is never closed for
        output that a slow network had not yet carried.
        """
        if "output" not in self._holds or self.state == "closed":
            return succeed(None)
        waiter: Deferred = Deferred()
        self._output_waiters.append(waiter)
        return waiter

    def _wake_output_waiters(self) -> None:
        waiters, self._output_waiters = self._output_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def release_input(self, reason: str) -> None:
        """``reason`` no longer holds the input: handle the backlog, then read again if nothing else holds."""
        if reason not in self._holds:
            return
        self._holds.discard(reason)
        if reason == "output":
            self._wake_output_waiters()
        if self._holds or self._draining:
            return  # the drain in progress continues
        self._draining = True
        try:
            while self._backlog and not self._holds and self.state != "closed":
                self._dispatch(self._backlog.popleft())
        finally:
            self._draining = False
        if not self._holds and self.state != "closed":
            if self.transport.resume_reading is not None:
                self.transport.resume_reading()

    def request_started(self) -> None:
        """The router began answering an IQ request of this client asynchronously."""
        self._inflight += 1
        if self._inflight >= MAX_INFLIGHT:
            self.hold_input("requests")

    def request_finished(self) -> None:
        """An IQ request of this client has been answered."""
        self._inflight -= 1
        if self._inflight < MAX_INFLIGHT:
            self.release_input("requests")

    # -- sending -------------------------------------------------------------------------------------

    def send(self, element: domish.Element) -> None:
        if self.state != "closed":
            self.transport.send(element)

    def undelivered(self, stanzas: Iterable[bytes]) -> None:
        """Stanzas accepted for this stream's client but never written (it stopped reading, or went away).

        Call after the stream has ended (its session unbound): each takes the RFC 6121 fallback route
        (:meth:`Router.undeliverable`): messages go to the account's other resources or offline storage,
        IQ requests get ``service-unavailable``, the rest is dropped.
        """
        if self.user is None or self.domain is None:
            return
        bare = f"{self.user}@{self.domain}"
        router = self.server.router
        for xml in stanzas:
            try:
                element = reparse(xml)
            except StreamFault:  # pragma: no cover - our own serialization
                continue
            router.undeliverable(element, bare)

    def send_serialized(self, xml: bytes) -> None:
        """Send a stanza given as UTF-8 XML (by our serializer), as it is: no re-serializing."""
        if self.state == "closed":
            return
        self.transport.send_serialized(xml)

    def fail(self, condition: str, text: str | None = None) -> None:
        """End the stream with a stream error (RFC 6120 §4.9)."""
        if self.state == "closed":
            return
        self._info()("c2s stream {id} ({jid}) stream error {condition}: {text}", id=self.id,
                     jid=self._who(), condition=condition, text=text or "")
        if self.state == "header":
            # A stream error needs an open stream: answer the header first (RFC 6120 §4.9.1.2).
            self.transport.open_stream({"from": self.domain or next(iter(sorted(self.server.domains)), ""),
                                        "id": self.id, "version": "1.0"})
        self.transport.close_stream(stream_error(condition, text))
        self._finish(f"stream error {condition}")

    def redirect(self, node: str) -> None:
        """Send the client to another node and close (RFC 6120 §4.9.3.19; RFC 7395 see-other-uri).

        A transport with its own redirect (WebSocket, BOSH) implements ``redirect_to(node)``;
        otherwise a ``<see-other-host/>`` stream error names the node and this listener's port.
        """
        if self.state == "closed":
            return
        if self.transport.redirect_to is not None:
            self.transport.redirect_to(node)
            if self.state != "closed":
                self._finish(f"redirected to {node}")
            return
        listener = self.transport.listener
        port = listener.port if listener is not None else 5222
        error = domish.Element((ns.STREAMS, "error"))
        error.addElement((ns.STREAM_ERRORS, "see-other-host"), content=node if port == 5222 else f"{node}:{port}")
        if self.state == "header":
            self.transport.open_stream({"from": self.domain or "", "id": self.id, "version": "1.0"})
        log.info("c2s stream {id} ({who}) redirected to {node}", id=self.id, who=self._who(), node=node)
        self.transport.close_stream(error)
        self._finish(f"redirected to {node}")

    def close(self, reason: str = "closed") -> None:
        """Close cleanly: end our stream too."""
        if self.state == "closed":
            return
        self.transport.close_stream(None)
        self._finish(reason)

    # -- negotiation ---------------------------------------------------------------------------------

    def _check_header(self, header: StreamHeader) -> None:
        if header.version is None or header.version.split(".")[0] != "1":
            raise StreamFailure("unsupported-version", "XMPP version 1.0 is required")
        if header.lang:
            self.lang = header.lang
        if header.to is None:
            raise StreamFailure("host-unknown", "the stream header has no 'to'")
        try:
            domain = parse_jid(header.to)
        except InvalidJID:
            raise StreamFailure("host-unknown", "the 'to' address is not a domain") from None
        if domain.user is not None or domain.resource is not None:
            raise StreamFailure("host-unknown", "the 'to' address is not a domain")
        if not self.server.is_local_domain(domain.host):
            raise StreamFailure("host-unknown", f"this server does not serve {domain.host}")
        if self.domain is not None and domain.host != self.domain:
            raise StreamFailure("host-unknown", "the domain changed on stream restart")
        self.domain = domain.host
        if self.state == "header":
            self.state = "tls" if self.tls_required else "auth"
        elif self.state == "header-after-tls":
            self.state = "auth"
        elif self.state == "authenticated":
            self.state = "bind"
        else:
            raise StreamFailure("bad-format", "unexpected stream restart")

    def _features(self) -> domish.Element:
        features = domish.Element((ns.STREAMS, "features"))
        if self.state in ("tls", "auth"):
            if self.offer_starttls and not self.transport.secure:
                starttls = features.addElement((ns.TLS, "starttls"))
                if self.tls_required:
                    starttls.addElement("required")
            if self.state == "auth":
                for element in self._sasl_server().features():
                    features.addChild(element)
                for element in self.server.stream_features(self, "pre-auth"):
                    features.addChild(element)
        elif self.state == "bind":
            features.addElement((ns.BIND, "bind"))
            session = features.addElement((ns.SESSION, "session"))
            session.addElement("optional")
            for element in self.server.stream_features(self, "bound"):
                features.addChild(element)
        return features

    def _sasl_server(self) -> SASLServer:
        if self._sasl is None:
            assert self.domain is not None
            self._sasl = SASLServer(
                domain=self.domain,
                credentials=self.server.storage.accounts,
                channel=self.transport.channel_info(),
                peer=self.transport.peer,
                throttle=self.server.throttle,
                allow_anonymous=self.server.config.vhost(self.domain).anonymous,
                clock=self.clock,
                run_blocking=_run_blocking(self.clock),
                iterations=self.server.config.auth.scram_iterations,
                secret=self.server.sasl_secret,
                require_encryption=self.server.config.vhost(self.domain).tls_required,
                log_allowed=log_budget(self.server).allow,
            )
        return self._sasl

    # -- element dispatch ----------------------------------------------------------------------------

    def _dispatch(self, element: domish.Element) -> None:
        try:
            if self.state == "established":
                self._stanza(element)
            elif self.state == "tls":
                self._negotiate_tls(element)
            elif self.state == "auth":
                self._negotiate_auth(element)
            elif self.state == "bind":
                self._negotiate_bind(element)
            else:
                raise StreamFailure("not-authorized", "unexpected element before the stream restart")
        except StreamFailure as failure:
            self.fail(failure.condition, failure.text)

    def _negotiate_tls(self, element: domish.Element) -> None:
        if element.uri == ns.TLS and element.name == "starttls":
            self._starttls()
        elif element.uri == ns.SASL:
            raise StreamFailure("policy-violation", "STARTTLS is required before authentication")
        else:
            raise StreamFailure("not-authorized", "STARTTLS is required")

    def _starttls(self) -> None:
        if not self.offer_starttls or self.transport.secure:
            self.transport.send(domish.Element((ns.TLS, "failure")))
            self.close("STARTTLS refused")
            return
        self._sasl = None  # mechanisms and channel bindings change with TLS
        self.transport.send(domish.Element((ns.TLS, "proceed")))
        self.transport.start_tls(self.server.certs.creator_for(self.domain))
        self.transport.restart_stream()
        self.state = "header-after-tls"

    def _negotiate_auth(self, element: domish.Element) -> None:
        if element.uri == ns.TLS and element.name == "starttls":
            self._starttls()
            return
        if element.uri != ns.SASL:
            # Modules may serve a few IQs before authentication (XEP-0077 in-band registration).
            if element.name == "iq" and self.server.hooks.dispatch(STREAM_PRE_AUTH_IQ, self, element):
                return
            raise StreamFailure("not-authorized", "authenticate first")
        # Nothing more is read from the client until this step is answered: a flood sent during the
        # failure delay waits in the client's socket, not in our memory.
        self.hold_input("sasl")
        ensureDeferred(self._sasl_server().handle(element)).addCallbacks(
            self._sasl_result, self._internal_error)

    def _sasl_result(self, result: Any) -> None:
        if self.state == "closed":
            return
        self.transport.send(result.reply)
        if result.done:
            failed = None if result.user is not None else next(iter(result.reply.elements()), None)
            self.server.hooks.notify(STREAM_AUTHENTICATED, self, result.user,
                                     None if failed is None else failed.name)
        if result.done and result.user is not None:
            self.user = result.user
            self.anonymous = result.anonymous
            self.state = "authenticated"
            self._backlog.clear()
            self.transport.restart_stream()
            log.info("c2s stream {id} authenticated {user}@{domain} from {peer} ({secure})", id=self.id,
                     user=self.user, domain=self.domain, peer=self.transport.peer,
                     secure="TLS" if self.transport.secure else "plain")
        elif result.done and self._sasl is not None and self._sasl.failures >= MAX_AUTH_ATTEMPTS:
            # RFC 6120 §6.4.5: a configurable number of retries, then the stream is closed.
            self.fail("policy-violation", "too many failed authentication attempts")
            return
        self.release_input("sasl")

    def _negotiate_bind(self, element: domish.Element) -> None:
        if element.name != "iq" or element.uri != ns.CLIENT:
            raise StreamFailure("not-authorized", "bind a resource first")
        payload = stanzas.first_child(element)
        if element.getAttribute("type") != "set" or payload is None or payload.uri != ns.BIND:
            if payload is not None and payload.uri == ns.SESSION:
                self.send(stanzas.make("iq", type="result", id=element.getAttribute("id")))
                return
            self.send(stanzas.error_reply(element, "not-authorized"))
            return
        requested = None
        for child in payload.elements(ns.BIND, "resource"):
            requested = str(child).strip() or None
        try:
            resource = self._choose_resource(requested)
        except InvalidJID:
            self.send(stanzas.error_reply(element, "bad-request", text="invalid resource"))
            return
        self._bind(element, resource)

    def _choose_resource(self, requested: str | None) -> str:
        if requested is None:
            return secrets.token_hex(6)
        resource = resourceprep(requested)
        if not resource or len(resource.encode("utf-8")) > MAX_RESOURCE_BYTES:
            raise InvalidJID(requested)
        return resource

    def _bind(self, request: domish.Element, resource: str) -> None:
        assert self.user is not None and self.domain is not None
        session = Session(self.user, self.domain, resource, self)
        self.session = session
        previous = self.server.sessions.bind(session)
        if previous is not None:
            # RFC 6120 §7.7.2.2: the newest session wins; the older one gets <conflict/>.
            previous.replaced()
            previous.close("conflict", "replaced by a new session with the same resource")
        self.state = "established"
        if self._unauth_timer.active():
            self._unauth_timer.cancel()
        reply = stanzas.make("iq", type="result", id=request.getAttribute("id"))
        bind = reply.addElement((ns.BIND, "bind"))
        bind.addElement("jid", content=session.jid)
        self.send(reply)
        self.server.hooks.notify(SESSION_BOUND, session)

    def session_replaced(self) -> None:
        """Another stream took over this full JID: unbind without touching the new one."""
        if self.session is not None:
            self.server.hooks.notify(SESSION_UNBOUND, self.session, "conflict")
            self.session = None

    # -- established stream ----------------------------------------------------------------------------

    def _stanza(self, element: domish.Element) -> None:
        session = self.session
        assert session is not None
        if element.uri != ns.CLIENT or element.name not in STANZAS:
            if self.server.hooks.dispatch(STREAM_ELEMENT, self, element):
                return
            raise StreamFailure("unsupported-stanza-type", f"<{element.name}/> is not a stanza")
        frm = element.getAttribute("from")
        if frm is not None and frm != session.jid and frm != session.bare:
            try:
                claimed = parse_jid(frm)
            except InvalidJID:
                raise StreamFailure("invalid-from", "the 'from' address is not valid") from None
            if claimed.full() not in (session.jid, session.bare):
                raise StreamFailure("invalid-from", "the 'from' address is not this session's")
        element["from"] = session.jid
        if element.name == "iq" and element.getAttribute("type") in ("get", "set"):
            payload = stanzas.first_child(element)
            if (payload is not None and payload.uri == ns.SESSION
                    and not element.hasAttribute("to")):
                self.send(stanzas.make("iq", type="result", id=element.getAttribute("id")))
                return
        if self.server.hooks.dispatch(OUTGOING[element.name], element, session):
            return
        self.server.router.route(element, session)

    # -- internals -------------------------------------------------------------------------------------

    def _internal_error(self, failure: Any) -> None:
        log.failure("c2s stream {id} failed", failure, id=self.id)
        self.fail("internal-server-error")

    def _timed_out(self, why: str) -> None:
        if self.state == "closed":
            return
        if why != "idle" and self.state == "established":
            return
        self.fail("connection-timeout", f"{why}")

    def _who(self) -> str:
        if self.session is not None:
            return self.session.jid
        if self.user is not None:
            return f"{self.user}@{self.domain}"
        return self.transport.peer

    def _finish(self, reason: str) -> None:
        self.state = "closed"
        self._backlog.clear()
        self._holds.clear()
        self._wake_output_waiters()
        for timer in (self._unauth_timer, self._idle_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self.server.streams.discard(self)
        session = self.session
        self.session = None
        if session is not None and self.server.sessions.unbind(session):
            self.server.hooks.notify(SESSION_UNBOUND, session, reason)
        self._info()("c2s stream {id} ({who}, {peer}) closed: {reason}", id=self.id,
                      who=self._who() if session is None else session.jid, peer=self.transport.peer, reason=reason)

    def _info(self) -> Any:
        """``log.info``; ``log.debug`` for a client that never authenticated once its address's log budget is
        spent (streams/throttle.py): no unauthenticated client can fill the log."""
        if self.user is not None or log_budget(self.server).allow(self.transport.peer):
            return log.info
        return log.debug
