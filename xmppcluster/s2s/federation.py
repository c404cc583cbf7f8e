"""Federation: stanzas for remote domains leave through outgoing streams; remote servers' stanzas come in.

Outgoing: one :class:`OutgoingLink` per (our domain, remote domain) pair on each node, opened by the node
whose user sent the stanza (docs/federation.rst says why: no extra hop and no owner to fail over). Stanzas
wait in the link's queue while it resolves, connects and authenticates, bounded by
``s2s/queue-max-stanzas``; when it cannot, they bounce with ``remote-server-not-found`` (no such service) or
``remote-server-timeout`` (DNS, connection or authentication failed). Written stanzas stay *unconfirmed*
until a XEP-0199 ping sent after them is answered (TCP and the peer keep order); when the stream breaks, the
unconfirmed ones are sent again once on a new stream, then bounced: never lost silently.

Incoming: any node may accept a remote server's stream; its stanzas enter the router like a local
session's, so they reach users on every node in one hop. Dialback keys come from the database's shared
secret, so a ``<db:verify/>`` is answered by whichever node it reaches.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.words.xish import domish
from zope.interface import implementer

from xmppcluster.core.events import ROUTE_REMOTE
from xmppcluster.core.jid import JID
from xmppcluster.core.serializer import start_tag
from xmppcluster.s2s import resolve
from xmppcluster.s2s.connect import connect_first, endpoint_for
from xmppcluster.s2s.stream import PING, SERVER, IncomingStream, OutgoingStream, domain_of, wire
from xmppcluster.s2s.tls import PeerContexts
from xmppcluster.streams.core import stream_error

if TYPE_CHECKING:
    from xmppcluster.config import Listener
    from xmppcluster.core.server import XMPPServer

log = Logger()

#: Times a stanza is written to a new stream after the one it was written on broke unconfirmed.
MAX_ATTEMPTS = 2


class _Entry:
    """One stanza waiting or unconfirmed: the element (to bounce it) and its bytes (written once made)."""

    __slots__ = ("stanza", "data", "attempts")

    def __init__(self, stanza: domish.Element, data: bytes) -> None:
        self.stanza = stanza
        self.data = data
        self.attempts = 0


def _empty_result(stanza: domish.Element) -> bool:
    return stanza.name == "iq" and stanza.getAttribute("type") in ("result", "error") and \
        stanza.firstChildElement() is None


class OutgoingLink:
    """Everything this node sends from ``local`` to ``remote``: the queue, the stream, its unconfirmed stanzas."""

    def __init__(self, federation: Federation, local: str, remote: str) -> None:
        self.federation = federation
        self.local = local
        self.remote = remote
        self.queue: deque[_Entry] = deque()
        self.unconfirmed: deque[_Entry] = deque()
        self.stream: OutgoingStream | None = None  # established
        self.pending: OutgoingStream | None = None  # connected, negotiating
        self.connecting: Deferred | None = None
        self.spare: OutgoingStream | None = None  # our own stream while a peer's bidirectional one carries ours
        self.ping_id: str | None = None
        self.ping_mark = 0  # stanzas unconfirmed when the outstanding ping was sent
        self._ping_timer = None
        self._verifies: list[tuple[str, str, Deferred]] = []
        self.last_error = ""
        self.last_write = federation.clock.seconds()

    # -- sending -----------------------------------------------------------------------------------------

    def send(self, stanza: domish.Element) -> None:
        if len(self.queue) + len(self.unconfirmed) >= self.federation.settings.queue_max_stanzas:
            self.federation.bounce(stanza, "resource-constraint", f"too many stanzas waiting for {self.remote}")
            return
        entry = _Entry(stanza, wire(stanza))
        if self.stream is not None and not self.stream.closed:
            self._write(entry)
            return
        self.queue.append(entry)
        self.open()

    def _write(self, entry: _Entry) -> None:
        self.stream.send_serialized(entry.data)
        self.last_write = self.federation.clock.seconds()
        if _empty_result(entry.stanza):  # an answer to a ping: confirming it would ping back and forth forever
            return
        entry.attempts += 1
        self.unconfirmed.append(entry)
        if self.ping_id is None:
            if self._ping_timer is not None and self._ping_timer.active():
                self._ping_timer.reset(0)  # a keepalive was due later: confirm now instead
            else:
                self._ping_timer = self.federation.clock.callLater(0, self._confirm)

    def _flush(self) -> None:
        while self.queue and self.stream is not None and not self.stream.closed:
            self._write(self.queue.popleft())

    # -- confirmation and keepalive (XEP-0199) ------------------------------------------------------------------

    def _confirm(self) -> None:
        """Ping the peer; its answer confirms every stanza written before (and keeps the stream alive)."""
        self._ping_timer = None
        stream = self.stream
        if stream is None or stream.closed or self.ping_id is not None:
            return
        now, idle = self.federation.clock.seconds(), stream.settings.idle_timeout
        if not self.unconfirmed and now - self.last_write >= idle:
            # Idle: nothing sent for s2s/idle-timeout seconds. Only our own stream's owner closes it, once every
            # link riding on it is idle too (a peer's bidirectional stream closes on its own idle timer).
            if getattr(stream, "link", None) is self and all(
                    not rider.unconfirmed and now - rider.last_write >= idle for rider in stream.riders):
                stream.close()
            return
        self.ping_id = self.federation.new_ping_id(self)
        self.ping_mark = len(self.unconfirmed)
        ping = domish.Element((SERVER, "iq"))
        ping.attributes.update({"type": "get", "id": self.ping_id, "from": self.local, "to": self.remote})
        ping.addElement((PING, "ping"))
        stream.send(ping)

    def pong(self) -> None:
        """The answer to our ping: what was written before it arrived."""
        for _ in range(min(self.ping_mark, len(self.unconfirmed))):
            self.unconfirmed.popleft()
        self.ping_id = None
        self.ping_mark = 0
        delay = 0 if self.unconfirmed else self.federation.settings.ping_interval
        if self._ping_timer is None:
            self._ping_timer = self.federation.clock.callLater(delay, self._confirm)

    # -- connecting -----------------------------------------------------------------------------------------

    def open(self) -> None:
        """Start connecting unless a stream exists or is being made."""
        if self.stream is not None or self.connecting is not None:
            return
        if self.federation.stopped:
            self.bounce_all("remote-server-timeout", "this server is shutting down")
            return
        self.connecting = ensureDeferred(self._connect())
        self.connecting.addErrback(self._failed)

    async def _connect(self) -> None:
        federation = self.federation
        settings = federation.settings
        reactor = federation.clock
        shared = federation.shareable(self.local, self.remote)
        if shared is not None and await self._ride(shared):
            return
        targets = await resolve.targets(self.remote, federation.resolver, settings.hosts)

        def connect_one(target: resolve.Target) -> Deferred:
            tls = federation.tls.client_creator(self.local, self.remote, alpn=True) if target.direct_tls else None
            endpoint = endpoint_for(reactor, target, tls, settings.connect_timeout,
                                    resolver=federation.resolver if settings.dns_servers else None)
            # Done once the stream is authenticated: a target whose TLS or authentication fails lets the race
            # go on to the next one (XEP-0368: direct TLS, then STARTTLS).
            connected = endpoint.connect(_OutgoingFactory(federation, self, target.direct_tls))
            return connected.addCallback(lambda stream: stream.ready)

        target, stream = await connect_first(reactor, targets, connect_one, timeout=settings.connect_timeout)
        self.pending = None
        self.connecting = None
        if self.stream is not None and not self.stream.closed:  # a bidirectional stream was adopted meanwhile:
            # it keeps carrying our stanzas (and their confirmations); ours stays open, because the peer may have
            # adopted it the same way, and takes over if the adopted one ends.
            self.spare = stream
            return
        self.stream = stream
        self.last_error = ""
        federation.link_established(self)
        self._flush()
        self.pong()  # schedules the keepalive

    async def _ride(self, stream: OutgoingStream) -> bool:
        """Dialback piggybacking: this link's domain joins another link's authenticated stream to the same
        peer (one connection for several of our domains). False: the peer refused; connect as usual."""
        timer = self.federation.clock.callLater(self.federation.settings.connect_timeout,
                                                lambda: d.cancel() if not d.called else None)
        d = stream.board(self)
        try:
            valid = await d
        except Exception:
            valid = False
        finally:
            if timer.active():
                timer.cancel()
        if not valid or stream.closed:
            return False
        self.connecting = None
        self.stream = stream
        self.last_error = ""
        log.info("s2s out {local} -> {remote}: piggybacked on the stream of {other}", local=self.local,
                 remote=self.remote, other=stream.local)
        self._flush()
        self.pong()
        return True

    def _failed(self, failure: Any) -> None:
        self.connecting = None
        self.pending = None
        error = failure.value
        condition = getattr(error, "condition", "remote-server-timeout")
        if isinstance(error, ConnectionError):
            condition = "remote-server-timeout"
        reasons = [reason for _, reason in getattr(error, "reasons", ())]
        if reasons and all(reason.startswith("DNSLookupError") for reason in reasons):
            condition = "remote-server-not-found"  # no address at all for the domain (RFC 6120 §8.3.3.16)
        self.last_error = str(error)
        log.info("s2s out {local} -> {remote}: cannot connect: {why}", local=self.local, remote=self.remote,
                 why=error)
        for _, _, d in self._verifies:
            d.errback(failure)
        self._verifies.clear()
        self.bounce_all(condition, self.last_error)

    def bounce_all(self, condition: str, text: str) -> None:
        while self.unconfirmed:
            self.federation.bounce(self.unconfirmed.popleft().stanza, condition, text)
        while self.queue:
            self.federation.bounce(self.queue.popleft().stanza, condition, text)
        self.federation.forget(self)

    def stream_ended(self, stream: OutgoingStream, reason: str) -> None:
        """A stream of this link is gone: send again what it did not confirm (once), then bounce."""
        if self.pending is stream:
            self.pending = None
        if stream is self.spare:
            self.spare = None
            return
        if stream is not self.stream:
            return
        self.stream = None
        self.ping_id = None
        if self._ping_timer is not None and self._ping_timer.active():
            self._ping_timer.cancel()
        self._ping_timer = None
        again = [entry for entry in self.unconfirmed if entry.attempts < MAX_ATTEMPTS]
        for entry in self.unconfirmed:
            if entry.attempts >= MAX_ATTEMPTS:
                self.federation.bounce(entry.stanza, "remote-server-timeout", f"stream to {self.remote} lost")
        self.unconfirmed.clear()
        self.queue.extendleft(reversed(again))
        spare, self.spare = self.spare, None
        if spare is not None and not spare.closed:
            self.stream = spare
            self._flush()
            self.pong()
            return
        if self.queue:
            log.info("s2s out {local} -> {remote} lost ({why}); {n} stanzas go on a new stream", local=self.local,
                     remote=self.remote, why=reason, n=len(self.queue))
            self.open()
        else:
            self.federation.forget(self)

    def adopt(self, stream: Any) -> None:
        """A remote server's bidirectional stream (XEP-0288) carries this link's stanzas, unless it has its own."""
        if self.stream is not None and not self.stream.closed:
            return
        self.stream = stream
        self.last_error = ""
        self._flush()
        self.pong()  # schedules the keepalive

    # -- dialback verification --------------------------------------------------------------------------------

    def verify(self, stream_id: str, key: str) -> Deferred:
        stream = self.stream or self.pending
        if stream is not None and not stream.closed:
            return stream.verify(stream_id, key)
        d = Deferred()
        self._verifies.append((stream_id, key, d))
        self.open()
        return d

    def stream_connected(self, stream: OutgoingStream) -> None:
        """A new stream: the verifications waiting for one go on it (sent once it may carry them)."""
        self.pending = stream
        for stream_id, key, d in self._verifies:
            stream.verify(stream_id, key).chainDeferred(d)
        self._verifies.clear()

    def status(self) -> dict[str, Any]:
        stream = self.stream or self.pending
        line = stream.status() if stream is not None else {"direction": "out", "state": "connecting"
                                                             if self.connecting else "idle"}
        return {**line, "local": self.local, "remote": self.remote, "queued": len(self.queue),
                "unconfirmed": len(self.unconfirmed), "error": self.last_error}


class _OutgoingFactory(Factory):
    noisy = False

    def __init__(self, federation: Federation, link: OutgoingLink, direct_tls: bool) -> None:
        self.federation = federation
        self.link = link
        self.direct_tls = direct_tls

    def buildProtocol(self, addr: Any) -> OutgoingStream:  # noqa: N802 (Twisted interface)
        stream = OutgoingStream(self.federation, self.link, self.direct_tls)
        self.link.stream_connected(stream)
        return stream


class Federation:
    """The node's federation: outgoing links, incoming streams, the routing hook, dialback answers."""

    def __init__(self, server: XMPPServer, secret: bytes, clock: Any) -> None:
        self.server = server
        self.settings = server.config.s2s
        self.secret = secret
        self.clock = clock
        self.tls = PeerContexts(server.certs, self.settings.ca_file)
        self.resolver = resolve.resolver_for(list(self.settings.dns_servers) or None, reactor=clock) \
            if self.settings.dns_servers else None
        self.links: dict[tuple[str, str], OutgoingLink] = {}
        self.incoming: set[IncomingStream] = set()
        self.unauthenticated: set[IncomingStream] = set()
        self._pings: dict[str, OutgoingLink] = {}
        self._ping_counter = 0
        self.stopped = False

    def start(self) -> None:
        self.server.hooks.on(ROUTE_REMOTE, self.route_remote)

    async def stop(self) -> None:
        self.stopped = True
        for link in list(self.links.values()):
            for stream in (link.stream, link.pending):
                if stream is not None:
                    stream.close()
            if link.connecting is not None:
                link.connecting.cancel()
        for stream in list(self.incoming):
            stream.fail("system-shutdown")

    # -- policy ---------------------------------------------------------------------------------------------

    def allows(self, remote: str) -> bool:
        return self.settings.allows(remote) and not self.server.is_local_domain(remote)

    # -- outgoing -------------------------------------------------------------------------------------------

    def route_remote(self, stanza: domish.Element, target: JID, sender: Any) -> bool:
        """``route/remote``: a stanza for a domain that is not ours goes to its link."""
        local = domain_of(stanza.getAttribute("from"))
        if local is None or not self.server.is_local_domain(local):
            return False  # never relay between two remote domains (no open proxying)
        remote = target.host
        if self.stopped:
            self.bounce(stanza, "remote-server-timeout", "this server is shutting down")
            return True
        if not self.allows(remote):
            self.bounce(stanza, "not-allowed", f"this server does not federate with {remote}")
            return True
        self._link(local, remote).send(stanza)
        return True

    def _link(self, local: str, remote: str) -> OutgoingLink:
        link = self.links.get((local, remote))
        if link is None:
            link = self.links[(local, remote)] = OutgoingLink(self, local, remote)
        return link

    def shareable(self, local: str, remote: str) -> OutgoingStream | None:
        """An established stream of ours to ``remote`` that another of our domains may join by dialback."""
        for (other, peer), link in self.links.items():
            stream = link.stream
            if peer == remote and other != local and isinstance(stream, OutgoingStream) and stream.link is link \
                    and stream.can_carry(local):
                return stream
        return None

    def bounce(self, stanza: domish.Element, condition: str, text: str | None = None) -> None:
        self.server.router.bounce(stanza, condition, text)

    def forget(self, link: OutgoingLink) -> None:
        if self.links.get((link.local, link.remote)) is link and link.stream is None and link.connecting is None \
                and not link.queue:
            del self.links[(link.local, link.remote)]

    def link_established(self, link: OutgoingLink) -> None:
        """Hook for status and tests: ``link`` carries stanzas now."""

    def new_ping_id(self, link: OutgoingLink) -> str:
        self._ping_counter += 1
        ping_id = f"s2s-{self._ping_counter}"
        self._pings[ping_id] = link
        return ping_id

    def pong(self, iq: domish.Element) -> bool:
        """An answer to one of our pings (true: consumed)."""
        link = self._pings.get(iq.getAttribute("id") or "")
        if link is None or domain_of(iq.getAttribute("from")) != link.remote:
            return False
        del self._pings[iq["id"]]
        if link.ping_id == iq["id"]:
            link.pong()
        return True

    # -- dialback --------------------------------------------------------------------------------------------

    def verify(self, local: str, remote: str, stream_id: str, key: str) -> Deferred:
        """Ask ``remote``'s authoritative server whether ``key`` is valid for our stream ``stream_id``."""
        return self._link(local, remote).verify(stream_id, key)

    # -- incoming ---------------------------------------------------------------------------------------------

    def incoming_opened(self, stream: IncomingStream) -> None:
        self.incoming.add(stream)
        self.unauthenticated.add(stream)

    def incoming_authenticated(self, stream: IncomingStream, remote: str) -> None:
        self.unauthenticated.discard(stream)
        if stream.bidi:
            for local in stream.pairs[remote]:
                self._link(local, remote).adopt(stream)
        same = sorted((s for s in self.incoming if remote in s.pairs and not s.closed), key=lambda s: s.started)
        for old in same[:max(0, len(same) - self.settings.max_connections_per_domain)]:
            old.fail("conflict", f"more than {self.settings.max_connections_per_domain} streams from {remote}")

    def incoming_closed(self, stream: IncomingStream, reason: str) -> None:
        self.incoming.discard(stream)
        self.unauthenticated.discard(stream)
        for link in list(self.links.values()):
            if link.stream is stream:
                link.stream_ended(stream, reason)
        log.info("s2s in {id} ({peer}, {who}) closed: {reason}", id=stream.stream_id, peer=stream.peer,
                 who=stream.describe(), reason=reason)

    def received(self, stanza: domish.Element) -> None:
        """A stanza a remote server sent, checked against its stream's authenticated pairs."""
        self.server.router.route(stanza, None)

    # -- operations -------------------------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """Every stream and link of this node (``xmppcluster s2s-status``)."""
        node = self.server.config.node_name
        lines = [{**link.status(), "node": node} for link in self.links.values()]
        for stream in self.incoming:
            remote = ",".join(sorted(stream.pairs)) or stream.hint or "?"
            lines.append({**stream.status(), "node": node, "local": stream.local, "remote": remote,
                          "state": "established" if stream.pairs else "negotiating"})
        return lines


class TooManyStreams(Protocol):
    """A server connection over ``s2s/max-incoming-unauthenticated``: ``resource-constraint``, then the close."""

    def connectionMade(self) -> None:  # noqa: N802 (Twisted interface)
        header = start_tag("stream:stream", {"xmlns": SERVER, "xmlns:stream": "http://etherx.jabber.org/streams",
                                             "version": "1.0"})
        self.transport.write(f"<?xml version='1.0'?>{header}".encode()
                             + wire(stream_error("resource-constraint", "too many unauthenticated streams"))
                             + b"</stream:stream>")
        self.transport.loseConnection()


@implementer(IProtocolNegotiationFactory)
class IncomingFactory(Factory):
    """The s2s listeners (5269 STARTTLS, 5270 direct TLS): one :class:`IncomingStream` per connection."""

    noisy = False

    def __init__(self, federation: Federation, listener: Listener) -> None:
        self.federation = federation
        self.listener = listener

    def acceptableProtocols(self) -> list[bytes]:  # noqa: N802 (Twisted interface)
        return [b"xmpp-server"]

    def buildProtocol(self, addr: Any) -> Protocol:  # noqa: N802 (Twisted interface)
        if len(self.federation.unauthenticated) >= self.federation.settings.max_incoming_unauthenticated:
            return TooManyStreams()
        return IncomingStream(self.federation, self.listener.tls)
