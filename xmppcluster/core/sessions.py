"""Bound resources of this node: who is connected, with which priority and presence.

:class:`BoundSession` is what the router, the modules and the cluster may ask of any bound resource, local
(:class:`Session`, here) or on another node (``xmppcluster.cluster.directory.RemoteSession``). Nothing looks
at a session's stream to find out more: what a stream knows that others need is a property of the session.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from twisted.words.xish import domish

from xmppcluster.core.events import SESSION_INTERESTED

if TYPE_CHECKING:
    from xmppcluster.streams.core import ClientStream

_order = itertools.count()


class BoundSession(Protocol):
    """A bound resource, on this node or another: what the router, modules and cluster may use."""

    user: str
    domain: str
    resource: str
    bare: str
    jid: str
    #: None for a session of this node, else the cluster node it is bound on.
    node: str | None
    priority: int
    #: Last broadcast presence (available), or None while unavailable.
    presence: domish.Element | None
    interested: bool
    #: Full or bare JIDs that got directed presence from this resource (RFC 6121 §4.6).
    directed: set[str]
    #: Per-module state, keyed by module name.
    data: dict[str, object]
    order: int

    @property
    def is_local(self) -> bool:
        """Bound on this node (its stream is here)."""

    @property
    def available(self) -> bool:
        """Has sent available presence."""

    @property
    def anonymous(self) -> bool:
        """Logged in with SASL ANONYMOUS (False for another node's session: only its node knows)."""

    @property
    def is_open(self) -> bool:
        """Its stream can still be written to (another node's session: while the directory holds it)."""

    def deliver(self, stanza: domish.Element) -> None:
        """Send a stanza to this resource's client."""

    def deliver_serialized(self, xml: bytes) -> None:
        """Send a stanza already serialized by our serializer (UTF-8, with its xmlns)."""

    def close(self, condition: str, text: str | None = None) -> None:
        """End the session's stream with a stream error."""

    def replaced(self) -> None:
        """A newer session took this full JID."""


class Session:
    """One bound resource of this node (a :class:`BoundSession`). Transport-neutral: delivery goes through
    the stream core."""

    __slots__ = ("user", "domain", "resource", "bare", "jid", "stream", "priority", "presence",
                 "_interested", "directed", "order", "bound_at", "data")

    #: Local sessions live on this node; remote ones (xmppcluster.cluster.directory) on another.
    node: str | None = None

    def __init__(self, user: str, domain: str, resource: str, stream: ClientStream) -> None:
        self.user = user
        self.domain = domain
        self.resource = resource
        self.bare = f"{user}@{domain}"
        self.jid = f"{self.bare}/{resource}"
        self.stream = stream
        self.priority = 0
        #: Last broadcast presence (available), or None while unavailable.
        self.presence: domish.Element | None = None
        self._interested = False
        #: Full or bare JIDs that got directed presence from this resource (RFC 6121 §4.6).
        self.directed: set[str] = set()
        self.order = next(_order)
        #: Wall-clock bind time: the older of two sessions with one full JID is the one replaced.
        self.bound_at = time.time()
        #: Per-module state, keyed by module name.
        self.data: dict[str, object] = {}

    @property
    def available(self) -> bool:
        return self.presence is not None

    @property
    def is_local(self) -> bool:
        return True

    @property
    def anonymous(self) -> bool:
        return self.stream.anonymous

    @property
    def is_open(self) -> bool:
        return self.stream.state != "closed"

    @property
    def interested(self) -> bool:
        """True once the client asked for its roster (RFC 6121 "interested resource")."""
        return self._interested

    @interested.setter
    def interested(self, value: bool) -> None:
        if value != self._interested:
            self._interested = value
            server = self.stream.server
            if server is not None:
                server.hooks.notify(SESSION_INTERESTED, self)

    def replaced(self) -> None:
        """Another session took this full JID: detach it from the registry's point of view."""
        self.stream.session_replaced()

    def deliver(self, stanza: domish.Element) -> None:
        """Send a stanza to this resource's client."""
        stream = self.stream
        server = stream.server
        if server is not None:  # None: a stream of a unit test that has no server
            server.traffic.sent[stanza.name] += 1
        stream.send(stanza)

    def deliver_serialized(self, xml: bytes) -> None:
        """Send a stanza already serialized (UTF-8, with its xmlns), e.g. one routed from another node."""
        stream = self.stream
        server = stream.server
        if server is not None:
            server.traffic.sent_serialized(xml)
        stream.send_serialized(xml)

    def close(self, condition: str, text: str | None = None) -> None:
        """End the stream with a stream error (e.g. ``conflict``)."""
        self.stream.fail(condition, text)

    def request_started(self) -> None:
        """An IQ of this client is being answered (its input waits while too many are)."""
        self.stream.request_started()

    def request_finished(self) -> None:
        self.stream.request_finished()

    def __repr__(self) -> str:
        return f"<Session {self.jid} prio={self.priority} available={self.available}>"


class SessionRegistry:
    """Local sessions indexed by bare JID then resource: every lookup is a dict access."""

    def __init__(self) -> None:
        self._by_bare: dict[str, dict[str, Session]] = {}

    def bind(self, session: Session) -> Session | None:
        """Register ``session``; return the older session with the same full JID, now replaced."""
        resources = self._by_bare.setdefault(session.bare, {})
        previous = resources.get(session.resource)
        resources[session.resource] = session
        return previous

    def unbind(self, session: Session) -> bool:
        """Forget ``session`` (only if it is still the one registered); True when it was."""
        resources = self._by_bare.get(session.bare)
        if not resources or resources.get(session.resource) is not session:
            return False
        del resources[session.resource]
        if not resources:
            del self._by_bare[session.bare]
        return True

    def get(self, bare: str, resource: str) -> Session | None:
        resources = self._by_bare.get(bare)
        return resources.get(resource) if resources else None

    def of(self, bare: str) -> list[Session]:
        """All sessions of an account (empty list when offline)."""
        resources = self._by_bare.get(bare)
        return list(resources.values()) if resources else []

    def available(self, bare: str) -> list[Session]:
        """Sessions of an account that sent available presence."""
        resources = self._by_bare.get(bare)
        return [s for s in resources.values() if s.presence is not None] if resources else []

    def __iter__(self) -> Iterator[Session]:
        for resources in self._by_bare.values():
            yield from resources.values()

    def __len__(self) -> int:
        return sum(len(r) for r in self._by_bare.values())
