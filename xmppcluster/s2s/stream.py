"""Server-to-server streams (RFC 6120 §4-§6, XEP-0178, XEP-0220, XEP-0368): one TCP connection each way.

:class:`IncomingStream` is a remote server's connection to us: STARTTLS, then SASL EXTERNAL with its
certificate or dialback, then its stanzas for our domains, each checked against the domain pairs the stream
authenticated. :class:`OutgoingStream` is ours to a remote server: STARTTLS, the peer's certificate checked
against its domain, EXTERNAL or dialback, then our stanzas; it also carries our ``<db:verify/>`` questions.

Both parse with the hardened parser and limits of client streams, read under a rate limit, write through a
bounded output queue, and close idle streams. Stanzas leave and enter the router in the ``jabber:client``
namespace: on the wire it is ``jabber:server`` (the serializer writes no ``xmlns`` for the stream's default).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish

from xmppcluster.core import namespaces as ns
from xmppcluster.core.jid import InvalidJID, parse_jid
from xmppcluster.core.serializer import serialize, start_tag
from xmppcluster.core.xml import StreamFault, StreamParser
from xmppcluster.s2s import dialback
from xmppcluster.s2s.tls import peer_identity, tls_version
from xmppcluster.streams.core import stream_error
from xmppcluster.streams.flow import InputGate, OutputQueue, no_delay, throttled_input
from xmppcluster.streams.throttle import ReadThrottle

if TYPE_CHECKING:
    from xmppcluster.s2s.federation import Federation, OutgoingLink

log = Logger()

SERVER = "jabber:server"
PING = "urn:xmpp:ping"
BIDI = "urn:xmpp:bidi"
BIDI_FEATURE = "urn:xmpp:features:bidi"
STANZAS = frozenset(("message", "presence", "iq"))
_PREFIXES = {ns.STREAMS: "stream", dialback.NS: "db"}
_IN_SCOPE = frozenset(("stream", "db"))
_CLOSE = b"</stream:stream>"
#: Seconds a closing stream has to flush before it is dropped.
CLOSE_TIMEOUT = 5.0
#: Output held for a peer that does not read, in bytes, before its stream is ended.
OUTPUT_LIMIT = 4 * 1024 * 1024


def wire(element: domish.Element) -> bytes:
    """An element as written on a server stream (``jabber:server`` default, ``stream:`` and ``db:`` declared)."""
    return serialize(element, ns.CLIENT, _PREFIXES, _IN_SCOPE).encode("utf-8")


def to_client_namespace(element: domish.Element, stream_namespace: str = SERVER) -> None:
    """Move a stanza received on a server (or component) stream from that stream's default namespace into
    ``jabber:client``, as the router and clients expect."""
    if element.uri == stream_namespace:
        element.uri = ns.CLIENT
    if element.defaultUri == stream_namespace:
        element.defaultUri = ns.CLIENT
    for child in element.children:
        if isinstance(child, domish.Element):
            to_client_namespace(child, stream_namespace)


def domain_of(address: str | None) -> str | None:
    """The domain of a JID (None when missing or malformed)."""
    if not address:
        return None
    try:
        return parse_jid(address).host
    except InvalidJID:
        return None


class ServerStream(Protocol):
    """What both directions share: framing, limits, output, timers, the close."""

    direction = ""

    def __init__(self, federation: Federation) -> None:
        self.federation = federation
        self.server = federation.server
        self.settings = federation.settings
        self.clock = federation.clock
        self.peer = "?"
        self.secure = False
        self.stream_id: str | None = None
        self.auth_method = ""
        self.closed = False
        self.parser: StreamParser | None = None
        self.gate: InputGate | None = None
        self.throttle: ReadThrottle | None = None
        self.output: OutputQueue | None = None
        self._idle = None
        self._drop = None
        self._header_sent = False
        self.started = self.clock.seconds()

    # -- twisted.internet.protocol ----------------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802 (Twisted interface)
        self.peer = getattr(self.transport.getPeer(), "host", "?")
        no_delay(self.transport)
        self.parser = StreamParser.within(self, self.server.limits)
        rate = self.settings.rate_limit
        self.gate, self.throttle = throttled_input(self.transport, self._feed, self.clock, rate, rate * 4)
        self.output = OutputQueue(self.transport.write, OUTPUT_LIMIT, on_pause=lambda: None,
                                  on_resume=lambda: None, on_overflow=self._overflow)
        self.transport.registerProducer(self.output, True)
        self._idle = self.clock.callLater(self.settings.idle_timeout, self._idle_timeout)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted interface)
        if not self.closed:
            self.throttle.received(data)

    def _feed(self, data: bytes) -> None:
        if self.closed:
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.settings.idle_timeout)
        try:
            self.parser.feed(data)
        except StreamFault as fault:
            self.fail(fault.condition, fault.text)

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802 (Twisted interface)
        for timer in (self._idle, self._drop):
            if timer is not None and timer.active():
                timer.cancel()
        if self.throttle is not None:
            self.throttle.stop()
            self.gate.stop()
        was_closed, self.closed = self.closed, True
        why = "closed" if was_closed else f"connection lost ({reason.getErrorMessage() if reason else '?'})"
        self.ended(why)

    # -- parser events ------------------------------------------------------------------------------------

    def stream_started(self, root: domish.Element) -> None:
        if root.uri != ns.STREAMS or root.name != "stream":
            self.fail("invalid-namespace", "the stream element must be stream:stream")
            return
        if root.defaultUri != SERVER:
            self.fail("invalid-namespace", "the default namespace must be jabber:server")
            return
        if root.getAttribute("version") != "1.0":
            self.fail("unsupported-version", "XMPP 1.0 streams only (TLS is required)")
            return
        self.header_received(root)

    def element_received(self, element: domish.Element) -> None:
        if not self.closed:
            self.handle(element)

    def stream_ended(self) -> None:
        self.close()

    # -- for subclasses --------------------------------------------------------------------------------------

    def header_received(self, root: domish.Element) -> None:
        raise NotImplementedError

    def handle(self, element: domish.Element) -> None:
        raise NotImplementedError

    def ended(self, reason: str) -> None:
        """The connection is gone."""

    # -- output ----------------------------------------------------------------------------------------------

    def open_stream(self, attrs: dict[str, str | None]) -> None:
        header = start_tag("stream:stream", {"xmlns": SERVER, "xmlns:stream": ns.STREAMS, "xmlns:db": dialback.NS,
                                             **{k: v for k, v in attrs.items() if v}, "version": "1.0"})
        self.output.write(f"<?xml version='1.0'?>{header}".encode())
        self._header_sent = True

    def send(self, element: domish.Element) -> None:
        if not self.closed:
            self.output.write(wire(element))

    def send_serialized(self, data: bytes) -> None:
        if not self.closed:
            self.output.write(data, stanza=True)

    def restart(self) -> None:
        """The next thing on the stream is a new header (after STARTTLS or SASL success)."""
        self.parser.reset()

    def fail(self, condition: str, text: str | None = None) -> None:
        """End the stream with a stream error (RFC 6120 §4.9)."""
        if self.closed:
            return
        log.info("s2s {direction} stream {id} ({peer}, {who}) error {condition}: {text}", direction=self.direction,
                 id=self.stream_id, peer=self.peer, who=self.describe(), condition=condition, text=text or "")
        if not self._header_sent and self.output is not None:  # RFC 6120 §4.9.1.2: a header before the error
            self.open_stream({})
        self._close(wire(stream_error(condition, text)))

    def close(self) -> None:
        """End the stream without an error."""
        self._close(b"")

    def _close(self, last: bytes) -> None:
        if self.closed:
            return
        self.closed = True
        if self.throttle is not None:
            self.throttle.stop()
            self.gate.stop()
        if self.output is not None:
            self.output.close()
            self.transport.write(last + _CLOSE)
            self.transport.unregisterProducer()
        self.transport.loseConnection()
        self._drop = self.clock.callLater(CLOSE_TIMEOUT, self.transport.abortConnection)

    def _overflow(self) -> None:
        self.fail("resource-constraint", "the peer does not read what we send")

    def _idle_timeout(self) -> None:
        if not self.closed:
            log.info("s2s {direction} stream {id} ({who}) idle, closing", direction=self.direction, id=self.stream_id,
                     who=self.describe())
            self.close()

    def describe(self) -> str:
        return "?"

    def status(self) -> dict[str, Any]:
        """One line of ``xmppcluster s2s-status``."""
        return {"direction": self.direction, "peer": self.peer, "stream": self.stream_id, "auth": self.auth_method,
                "tls": tls_version(self.transport) if self.transport is not None else None,
                "age": round(self.clock.seconds() - self.started, 1)}


class IncomingStream(ServerStream):
    """A remote server's stream to us (we are the receiving server)."""

    direction = "in"

    def __init__(self, federation: Federation, tls: bool) -> None:
        super().__init__(federation)
        self.secure = tls
        self.local: str | None = None  # the stream's 'to'
        self.hint: str | None = None  # the stream's 'from' (only a hint: authentication decides)
        #: remote domain -> our domains it may send to (the authenticated pairs)
        self.pairs: dict[str, set[str]] = {}
        self._sasl_done = False
        self.bidi = False
        self._announce: str | None = None

    def describe(self) -> str:
        return ",".join(sorted(self.pairs)) or (self.hint or "?")

    def connectionMade(self) -> None:  # noqa: N802 (Twisted interface)
        super().connectionMade()
        self.federation.incoming_opened(self)

    def ended(self, reason: str) -> None:
        self.federation.incoming_closed(self, reason)

    def header_received(self, root: domish.Element) -> None:
        to = (root.getAttribute("to") or "").lower()
        if not self.server.is_local_domain(to):
            self.fail("host-unknown", "this server does not serve that domain")
            return
        self.local = to
        self.hint = (root.getAttribute("from") or "").lower() or None
        self.stream_id = secrets.token_hex(12)
        self.open_stream({"from": to, "to": self.hint, "id": self.stream_id})
        features = domish.Element((ns.STREAMS, "features"))
        if not self.secure:
            starttls = features.addElement((ns.TLS, "starttls"))
            if self.settings.require_encryption:
                starttls.addElement("required")
            else:
                features.addChild(dialback.features())
        elif not self._sasl_done:
            if peer_identity(self.transport, self.hint).valid if self.hint else False:
                mechanisms = features.addElement((ns.SASL, "mechanisms"))
                mechanisms.addElement("mechanism", content="EXTERNAL")
            features.addChild(dialback.features())
            if self.settings.bidi:
                features.addElement((BIDI_FEATURE, "bidi"))
        self.send(features)
        if self._announce is not None:  # the stream restarted after EXTERNAL: it may carry stanzas now
            remote, self._announce = self._announce, None
            self.federation.incoming_authenticated(self, remote)

    def handle(self, element: domish.Element) -> None:
        uri, name = element.uri, element.name
        if uri == SERVER and name in STANZAS:
            self._stanza(element)
        elif uri == dialback.NS and name == "result":
            self._db_result(element)
        elif uri == dialback.NS and name == "verify":
            self._db_verify(element)
        elif uri == ns.TLS and name == "starttls":
            self._starttls()
        elif uri == ns.SASL and name == "auth":
            self._auth(element)
        elif uri == BIDI and name == "bidi" and self.settings.bidi and self.secure and not self.pairs:
            self.bidi = True  # XEP-0288: we may send our stanzas for its domains back on this stream
        else:
            self.fail("unsupported-stanza-type", f"<{name}/> is not expected here")

    # -- negotiation -----------------------------------------------------------------------------------------

    def _starttls(self) -> None:
        if self.secure:
            self.fail("policy-violation", "TLS is already on")
            return
        self.send(domish.Element((ns.TLS, "proceed")))
        self.transport.startTLS(self.federation.tls.server_creator(self.local))
        self.secure = True
        self.restart()

    def _auth(self, element: domish.Element) -> None:
        failure = domish.Element((ns.SASL, "failure"))
        if not self.secure or element.getAttribute("mechanism") != "EXTERNAL" or self._sasl_done:
            failure.addElement("invalid-mechanism" if self.secure else "encryption-required")
            self.send(failure)
            return
        text = str(element).strip()
        try:
            authzid = base64.b64decode(text, validate=True).decode("utf-8") if text not in ("", "=") else ""
        except (binascii.Error, UnicodeDecodeError):
            failure.addElement("incorrect-encoding")
            self.send(failure)
            return
        remote = (authzid or self.hint or "").lower()
        identity = peer_identity(self.transport, remote) if remote else None
        if not remote or not self.federation.allows(remote) or not identity.valid:
            why = identity.reason if identity is not None else "no domain"
            log.info("s2s in {id} ({peer}): EXTERNAL for {remote} refused: {why}", id=self.stream_id,
                     peer=self.peer, remote=remote or "?", why=why)
            failure.addElement("not-authorized")
            self.send(failure)
            return
        self._sasl_done = True
        self.auth_method = "EXTERNAL"
        self.send(domish.Element((ns.SASL, "success")))
        self.restart()
        # Our stanzas may use this stream (XEP-0288) only once the restarted stream is open: see header_received.
        self.authenticated(remote, self.local, announce=False)
        self._announce = remote

    def authenticated(self, remote: str, local: str, *, announce: bool = True) -> None:
        self.pairs.setdefault(remote, set()).add(local)
        log.info("s2s in {id} ({peer}): {remote} -> {local} authenticated ({method}, {tls})", id=self.stream_id,
                 peer=self.peer, remote=remote, local=local, method=self.auth_method,
                 tls=tls_version(self.transport) or "no TLS")
        if announce:
            self.federation.incoming_authenticated(self, remote)

    def _db_result(self, element: domish.Element) -> None:
        """A remote server asks to send from its domain to ours (XEP-0220 §2.1), perhaps one more pair."""
        remote = (element.getAttribute("from") or "").lower()
        local = (element.getAttribute("to") or "").lower()
        key = str(element).strip()
        if element.getAttribute("type") is not None or not remote or not key:
            self.fail("invalid-xml", "a db:result request needs from, to and a key")
            return

        def answer(kind: str, error: str | None = None) -> None:
            self.send(dialback.element("result", local, remote, type=kind, error=error))

        if not self.server.is_local_domain(local):
            answer("error", "item-not-found")
            return
        if not self.federation.allows(remote):
            answer("error", "forbidden")
            return
        if self.settings.require_encryption and not self.secure:
            answer("error", "policy-violation")
            return
        identity = peer_identity(self.transport, remote)
        if identity.valid:  # the certificate proves the domain already (what XEP-0344 calls dialback with TLS)
            self.auth_method = self.auth_method or "dialback+cert"
            answer("valid")
            self.authenticated(remote, local)
            return
        if self.settings.secure_auth and remote not in self.settings.insecure_domains:
            log.info("s2s in {id} ({peer}): dialback for {remote} refused: {why}", id=self.stream_id,
                     peer=self.peer, remote=remote, why=identity.reason)
            answer("error", "not-authorized")
            return
        if self.stream_id is None:
            answer("error", "internal-server-error")
            return
        stream_id = self.stream_id

        def verified(valid: bool) -> None:
            if self.closed:
                return
            if valid:
                self.auth_method = self.auth_method or "dialback"
                answer("valid")
                self.authenticated(remote, local)
            else:
                log.info("s2s in {id} ({peer}): dialback key for {remote} invalid", id=stream_id, peer=self.peer,
                         remote=remote)
                answer("invalid")

        def failed(failure: Failure) -> None:
            if not self.closed:
                log.info("s2s in {id}: dialback for {remote} not verified: {why}", id=stream_id, remote=remote,
                         why=failure.getErrorMessage())
                answer("error", "remote-server-timeout")

        self.federation.verify(local, remote, stream_id, key).addCallbacks(verified, failed)

    def _db_verify(self, element: domish.Element) -> None:
        """We are the authoritative server: is this the key one of our nodes sent? (stateless, XEP-0185)"""
        remote = (element.getAttribute("from") or "").lower()
        local = (element.getAttribute("to") or "").lower()
        stream_id = element.getAttribute("id")
        key = str(element).strip()
        if element.getAttribute("type") is not None or not remote or not stream_id or not key:
            self.fail("invalid-xml", "a db:verify request needs from, to, id and a key")
            return
        reply = dialback.element("verify", local, remote, id=stream_id)
        if not self.server.is_local_domain(local):
            reply["type"] = "error"
            reply.addChild(dialback.error_element("item-not-found"))
        else:
            valid = dialback.key_matches(self.federation.secret, remote, local, stream_id, key)
            reply["type"] = "valid" if valid else "invalid"
        self.send(reply)

    # -- stanzas -------------------------------------------------------------------------------------------

    def _stanza(self, stanza: domish.Element) -> None:
        frm = domain_of(stanza.getAttribute("from"))
        to = domain_of(stanza.getAttribute("to"))
        if not self.pairs:
            self.fail("not-authorized", "the stream is not authenticated")
            return
        if frm is None or to is None:
            self.fail("improper-addressing", "a stanza between servers needs a valid from and to")
            return
        locals_ = self.pairs.get(frm)
        if locals_ is None:
            self.fail("invalid-from", f"this stream is not authenticated for {frm}")
            return
        if to not in locals_:
            if not self.server.is_local_domain(to):
                self.fail("host-unknown", f"{to} is not served here")
                return
            self.fail("invalid-from", f"this stream is not authenticated for {frm} to {to}")
            return
        to_client_namespace(stanza)
        if stanza.name == "iq" and stanza.getAttribute("type") in ("result", "error") and \
                self.federation.pong(stanza):
            return
        self.federation.received(stanza)


class OutgoingStream(ServerStream):
    """Our stream to a remote server, for one domain pair (we are the initiating server)."""

    direction = "out"

    def __init__(self, federation: Federation, link: OutgoingLink, direct_tls: bool) -> None:
        super().__init__(federation)
        self.link = link
        self.local = link.local
        self.remote = link.remote
        self.secure = direct_tls
        self.direct_tls = direct_tls
        self.state = "connecting"  # -> features -> (tls) -> auth -> established
        #: Fires (with this stream) once stanzas may flow; errbacks with the reason they cannot; cancelling it
        #: closes the stream (a connection race it lost).
        self.ready: Deferred = Deferred(lambda _: self.close())
        self.verify_ready = False  # db:verify may be sent (the stream is open, TLS on when required)
        self._verifies: dict[str, list[Deferred]] = {}
        self._unsent_verifies: deque[tuple[str, str]] = deque()
        self._dialback_offered = False
        self.dialback_errors = False  # the peer handles dialback errors (XEP-0220 §2.4): pairs may be added
        self.identity = None
        self.bidi = False
        #: links of our other domains riding on this stream (dialback piggybacking), and those asking to
        self.riders: list[OutgoingLink] = []
        self._boarding: dict[str, Deferred] = {}

    def describe(self) -> str:
        return f"{self.local} -> {self.remote}"

    def connectionMade(self) -> None:  # noqa: N802 (Twisted interface)
        super().connectionMade()
        self._send_header()

    def _send_header(self) -> None:
        self.open_stream({"from": self.local, "to": self.remote})
        self.state = "header"

    def ended(self, reason: str) -> None:
        for waiting in self._verifies.values():
            for d in waiting:
                d.errback(ConnectionError(reason))
        self._verifies.clear()
        if not self.ready.called:
            self.ready.errback(ConnectionError(f"{self.describe()}: {reason}"))
        for d in self._boarding.values():
            d.errback(ConnectionError(reason))
        self._boarding.clear()
        self.link.stream_ended(self, reason)
        for rider in list(self.riders):
            rider.stream_ended(self, reason)

    # -- dialback piggybacking (XEP-0220 §2.6): more of our domains on this stream ---------------------------

    def can_carry(self, local: str) -> bool:
        """Whether ``local`` may be added to this stream with a ``<db:result/>`` of its own."""
        return (self.state == "established" and not self.closed and self.dialback_errors and self.stream_id is not None
                and local != self.local and local not in self._boarding)

    def board(self, link: OutgoingLink) -> Deferred:
        """Ask the peer to accept ``link.local`` on this stream; fires True once it answered ``valid``."""
        key = dialback.dialback_key(self.federation.secret, self.remote, link.local, self.stream_id)
        d = Deferred()
        self._boarding[link.local] = d
        self.send(dialback.element("result", link.local, self.remote, key=key))

        def boarded(valid: bool) -> bool:
            if valid:
                self.riders.append(link)
            return valid

        return d.addCallback(boarded)

    def give_up(self, why: str) -> None:
        """Authentication cannot succeed: close, and let whoever waits know why."""
        log.info("s2s out {who} ({peer}): {why}", who=self.describe(), peer=self.peer, why=why)
        if not self.ready.called:
            self.ready.errback(ConnectionError(why))
        self.close()

    def header_received(self, root: domish.Element) -> None:
        if (root.getAttribute("from") or self.remote).lower() != self.remote:
            self.fail("host-unknown", f"we asked for {self.remote}")
            return
        self.stream_id = root.getAttribute("id")
        self._dialback_offered = "db" in (root.localPrefixes or {})
        self.state = "features"

    def handle(self, element: domish.Element) -> None:
        uri, name = element.uri, element.name
        if uri == ns.STREAMS and name == "features":
            self._features(element)
        elif uri == ns.STREAMS and name == "error":
            condition = next((c.name for c in element.elements() if c.uri == ns.STREAM_ERRORS and c.name != "text"),
                             "undefined-condition")
            self.give_up(f"stream error from the peer: {condition}")
        elif uri == ns.TLS and name == "proceed":
            self._start_tls()
        elif uri == ns.TLS and name == "failure":
            self.give_up("the peer refused STARTTLS")
        elif uri == ns.SASL and name == "success":
            self.auth_method = "EXTERNAL"
            self.restart()
            self._send_header()
        elif uri == ns.SASL and name == "failure":
            self._dialback("EXTERNAL refused")
        elif uri == dialback.NS and name == "result":
            self._db_result(element)
        elif uri == dialback.NS and name == "verify":
            self._db_verify_answer(element)
        elif uri == SERVER and name in STANZAS and self.bidi and self.state == "established":
            self._stanza(element)
        elif uri == SERVER and name == "iq" and element.getAttribute("type") in ("result", "error"):
            to_client_namespace(element)
            self.federation.pong(element)
        else:  # stanzas on our own stream without XEP-0288: ignored
            log.debug("s2s out {who}: ignored <{name}/>", who=self.describe(), name=name)

    def _stanza(self, stanza: domish.Element) -> None:
        """A stanza the peer sent back on our bidirectional stream: from its domain, to one of ours."""
        frm = domain_of(stanza.getAttribute("from"))
        to = domain_of(stanza.getAttribute("to"))
        if frm is None or to is None:
            self.fail("improper-addressing", "a stanza between servers needs a valid from and to")
        elif frm != self.remote:
            self.fail("invalid-from", f"this stream is for {self.remote}")
        elif not self.server.is_local_domain(to):
            self.fail("host-unknown", f"{to} is not served here")
        else:
            to_client_namespace(stanza)
            if stanza.name == "iq" and stanza.getAttribute("type") in ("result", "error") and \
                    self.federation.pong(stanza):
                return
            self.federation.received(stanza)

    # -- negotiation ---------------------------------------------------------------------------------------

    def _features(self, features: domish.Element) -> None:
        children = {(child.uri, child.name): child for child in features.elements()}
        if self.auth_method:  # after SASL success: the stream is ready
            self._established()
            return
        if not self.secure:
            if (ns.TLS, "starttls") in children:
                self.send(domish.Element((ns.TLS, "starttls")))
                self.state = "tls"
                return
            if self.settings.require_encryption:
                self.give_up("the peer offers no TLS and our policy requires it")
                return
        self.verify_ready = True
        self._flush_verifies()
        if self.settings.bidi and (BIDI_FEATURE, "bidi") in children and not self.bidi:
            self.send(domish.Element((BIDI, "bidi")))  # XEP-0288: the peer may answer on this stream
            self.bidi = True
        identity = peer_identity(self.transport, self.remote) if self.secure else None
        self.identity = identity
        if identity is not None and not identity.valid and self.settings.secure_auth and \
                self.remote not in self.settings.insecure_domains:
            self.give_up(f"{identity.reason}; s2s/secure-auth refuses dialback for {self.remote}")
            return
        mechanisms = children.get((ns.SASL, "mechanisms"))
        offered = {str(m).strip() for m in mechanisms.elements() if m.name == "mechanism"} if mechanisms else set()
        if "EXTERNAL" in offered and identity is not None and identity.valid:
            auth = domish.Element((ns.SASL, "auth"))
            auth["mechanism"] = "EXTERNAL"
            auth.addContent(base64.b64encode(self.local.encode()).decode())
            self.send(auth)
            self.state = "auth"
            self._note_dialback(children)
            return
        self._note_dialback(children)
        self._dialback("EXTERNAL not offered")

    def _note_dialback(self, children: dict) -> None:
        feature = children.get((dialback.FEATURE, "dialback"))
        self._dialback_offered = self._dialback_offered or feature is not None
        self.dialback_errors = feature is not None and any(c.name == "errors" for c in feature.elements())

    def _start_tls(self) -> None:
        self.transport.startTLS(self.federation.tls.client_creator(self.local, self.remote, alpn=False))
        self.secure = True
        self.restart()
        self._send_header()

    def _dialback(self, why: str) -> None:
        if not self._dialback_offered:
            self.give_up(f"{why}, and no dialback")
            return
        if self.stream_id is None:
            self.give_up("the peer gave no stream id (needed by dialback)")
            return
        key = dialback.dialback_key(self.federation.secret, self.remote, self.local, self.stream_id)
        self.send(dialback.element("result", self.local, self.remote, key=key))
        self.state = "dialback"

    def _db_result(self, element: domish.Element) -> None:
        kind = element.getAttribute("type")
        if (element.getAttribute("from") or "").lower() != self.remote:
            return
        boarding = self._boarding.pop((element.getAttribute("to") or "").lower(), None)
        if boarding is not None and self.state == "established":
            boarding.callback(kind == "valid")
            return
        if self.state != "dialback":
            return
        if kind == "valid":
            self.auth_method = "dialback"
            self._established()
        else:
            condition = next((c.name for e in element.elements() for c in e.elements()), kind or "?")
            self.give_up(f"dialback refused by the peer ({condition})")

    def _established(self) -> None:
        self.state = "established"
        log.info("s2s out {who} ({peer}) established ({method}, {tls})", who=self.describe(), peer=self.peer,
                 method=self.auth_method, tls=tls_version(self.transport) or "no TLS")
        if not self.ready.called:
            self.ready.callback(self)

    # -- dialback verification for incoming streams ----------------------------------------------------------

    def verify(self, stream_id: str, key: str) -> Deferred:
        """Ask the peer (authoritative for its domain) whether ``key`` is its key for our stream ``stream_id``."""
        d = Deferred()
        self._verifies.setdefault(stream_id, []).append(d)
        self._unsent_verifies.append((stream_id, key))
        self._flush_verifies()
        return d

    def _flush_verifies(self) -> None:
        if not self.verify_ready or self.closed:
            return
        while self._unsent_verifies:
            stream_id, key = self._unsent_verifies.popleft()
            self.send(dialback.element("verify", self.local, self.remote, id=stream_id, key=key))

    def _db_verify_answer(self, element: domish.Element) -> None:
        waiting = self._verifies.get(element.getAttribute("id") or "")
        if not waiting:
            return
        d = waiting.pop(0)
        if not waiting:
            del self._verifies[element.getAttribute("id")]
        d.callback(element.getAttribute("type") == "valid")

    def status(self) -> dict[str, Any]:
        return {**super().status(), "local": self.local, "remote": self.remote, "state": self.state,
                "direct_tls": self.direct_tls, "bidi": self.bidi}
