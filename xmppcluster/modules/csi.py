"""XEP-0352 Client State Indication: while a client says it is inactive, what is not urgent waits.

The stream feature ``<csi xmlns='urn:xmpp:csi:0'/>`` is offered after authentication; ``<inactive/>`` and
``<active/>`` are top-level nonzas of a bound stream (``stream/element``), never answered.

While a session is inactive its class is :class:`InactiveSession`, whose ``deliver`` and
``deliver_serialized`` sort every stanza (:func:`classify`): presence updates (available, unavailable)
are held and coalesced to the latest per sender (full JID); chat-state-only messages (XEP-0085) are held
the same way; other messages without a body (receipts, markers, headlines, PEP events) are held in order;
anything urgent (a message with a body or subject, an error, an IQ, a subscription presence, a carbon sent by
the user, a XEP-0334 ``<store/>`` hint, an invitation, an encrypted message, a call) is written after
everything held, in order, at once. ``<active/>`` writes everything held, as does a session holding more
than ``--csi-max-held`` stanzas (default 256). A session that never went inactive keeps the plain
:class:`Session` methods: its delivery costs nothing more.

The state is the session's (``session.data["csi"]`` and its class), not the stream's. A session that ends
while holding stanzas has them routed again (RFC 6121 fallback: other resources, offline storage), after
whatever its transport could not write.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.words.xish import domish

from xmppcluster.core.events import SESSION_UNBOUND, STREAM_ELEMENT
from xmppcluster.core.sessions import Session
from xmppcluster.core.xml import StreamFault, reparse
from xmppcluster.modules.base import Module, hook

CSI = "urn:xmpp:csi:0"
CLIENT = "jabber:client"
HINTS = "urn:xmpp:hints"
CHATSTATES = "http://jabber.org/protocol/chatstates"
CARBONS = "urn:xmpp:carbons:2"
FORWARD = "urn:xmpp:forward:0"
MUC_USER = "http://jabber.org/protocol/muc#user"
#: Payload namespaces that make a message without a body urgent anyway (XEP-0380 encryption marker,
#: XEP-0249 direct invitation, XEP-0353 call proposals).
URGENT_PAYLOADS = frozenset(("urn:xmpp:eme:0", "jabber:x:conference", "urn:xmpp:jingle-message:0",
                             "urn:xmpp:jingle-message:1"))
#: Default of ``--csi-max-held``: stanzas held per inactive session; one more and everything held is written.
MAX_HELD = 256
#: Where a session keeps its held stanzas.
KEY = "csi"

URGENT, HOLD, LATEST = "urgent", "hold", "latest"

log = Logger()


def classify(stanza: domish.Element) -> tuple[str, Any]:
    """(verdict, key): ``urgent`` (write now, after what is held), ``hold`` (keep in order) or ``latest``
    (keep only the newest with the same key: presence updates and chat states, per sender)."""
    name = stanza.name
    kind = stanza.getAttribute("type")
    if stanza.uri != CLIENT or kind == "error":
        return URGENT, None
    if name == "presence":
        if kind is None or kind == "unavailable":
            return LATEST, ("presence", stanza.getAttribute("from"))
        return URGENT, None  # subscription requests and answers, probes
    if name != "message":
        return URGENT, None  # IQs: someone waits for them
    if kind == "headline":
        return HOLD, None  # ephemeral by definition (RFC 6121 §5.2.2)
    inner = stanza
    for child in stanza.elements():
        if child.uri == CARBONS:
            if child.name == "sent":
                return URGENT, None  # the user wrote it on another device
            if child.name == "received":
                for forwarded in child.elements(FORWARD, "forwarded"):
                    for message in forwarded.elements(CLIENT, "message"):
                        inner = message
    states, only_states = False, True
    for child in inner.elements():
        uri = child.uri
        if uri == CLIENT and child.name in ("body", "subject"):
            return URGENT, None
        if uri in URGENT_PAYLOADS or (uri == HINTS and child.name == "store"):
            return URGENT, None
        if uri == MUC_USER and next(child.elements(MUC_USER, "invite"), None) is not None:
            return URGENT, None
        if uri == CHATSTATES:
            states = True
        elif uri != HINTS and not (uri == CLIENT and child.name == "thread"):
            only_states = False
    if states and only_states and inner is stanza:
        return LATEST, ("chatstate", stanza.getAttribute("from"))
    return HOLD, None


def classify_serialized(xml: bytes) -> tuple[str, Any]:
    """:func:`classify` for a stanza routed as text: an IQ by its first bytes, the rest parsed (only
    inactive sessions pay for this)."""
    if xml.startswith(b"<iq"):
        return URGENT, None
    try:
        return classify(reparse(xml))
    except StreamFault:
        return URGENT, None


def _write(session: Session, item: domish.Element | bytes) -> None:
    if item.__class__ is bytes:
        Session.deliver_serialized(session, item)
    else:
        Session.deliver(session, item)


def write_all(session: Session, items: list[domish.Element | bytes]) -> None:
    """Write ``items`` in order; if the stream ends on the way (its client stopped reading), the rest is
    routed again (:func:`reroute`) instead of being written to a closed stream."""
    for index, item in enumerate(items):
        if not session.is_open:
            reroute(session.stream.server, session.bare, items[index:])
            return
        _write(session, item)


def reroute(server: Any, bare: str, items: list[domish.Element | bytes]) -> None:
    """The RFC 6121 fallback for stanzas held for a session that is gone: messages to the account's other
    resources or offline storage, IQ requests answered with an error, the rest dropped."""
    router = server.router
    for item in items:
        try:
            router.undeliverable(reparse(item) if item.__class__ is bytes else item, bare)
        except Exception:
            log.failure("routing a stanza held for {bare} again failed", bare=bare)


class Held:
    """What an inactive session holds, oldest first; a coalesced stanza takes the place of the newest."""

    __slots__ = ("stanzas", "limit", "_next")

    def __init__(self, limit: int = MAX_HELD) -> None:
        self.stanzas: dict[Any, domish.Element | bytes] = {}
        self.limit = limit
        self._next = 0

    def take(self, session: Session, item: domish.Element | bytes, verdict: str, key: Any) -> None:
        """Hold ``item``, or write everything held and then it (urgent); past the limit, write all."""
        if verdict == URGENT:
            write_all(session, [*self.drain(), item])
            return
        stanzas = self.stanzas
        if key is None:
            self._next += 1
            key = self._next
        else:
            stanzas.pop(key, None)  # the newest goes last: it is newer than what is held before it
        stanzas[key] = item
        if len(stanzas) > self.limit:
            self.flush(session)

    def drain(self) -> list[domish.Element | bytes]:
        """Everything held, oldest first, forgotten here."""
        held, self.stanzas = self.stanzas, {}
        return list(held.values())

    def flush(self, session: Session) -> None:
        """Write everything held to the session's client, in order."""
        if self.stanzas:
            write_all(session, self.drain())

    def __len__(self) -> int:
        return len(self.stanzas)


class InactiveSession(Session):
    """A :class:`Session` whose client said ``<inactive/>``: deliveries go through its :class:`Held`."""

    __slots__ = ()

    def deliver(self, stanza: domish.Element) -> None:
        verdict, key = classify(stanza)
        self.data[KEY].take(self, stanza, verdict, key)

    def deliver_serialized(self, xml: bytes) -> None:
        verdict, key = classify_serialized(xml)
        self.data[KEY].take(self, xml, verdict, key)


def is_inactive(session: Any) -> bool:
    """Whether a session's client said ``<inactive/>`` (and not ``<active/>`` since)."""
    return session.__class__ is InactiveSession


def go_inactive(session: Session, limit: int = MAX_HELD) -> None:
    """Start holding for ``session`` (nothing happens when it already holds)."""
    if session.__class__ is Session:
        session.data[KEY] = Held(limit)
        session.__class__ = InactiveSession


def go_active(session: Session) -> list[domish.Element | bytes]:
    """Stop holding for ``session``; what it held, oldest first (not written: the caller decides)."""
    if session.__class__ is not InactiveSession:
        return []
    held = session.data.pop(KEY)
    session.__class__ = Session
    return held.drain()


class ClientStateIndication(Module):
    """XEP-0352: ``<inactive/>`` holds what is not urgent, ``<active/>`` writes it."""

    name = "urn:xmpp:csi:0"
    def __init__(self, server: Any) -> None:
        super().__init__(server)
        #: Stanzas held per session before everything is written (``--csi-max-held``).
        self.max_held: int = self.config.quotas.csi_max_held

    def stream_features(self, stream: Any, stage: str) -> list[domish.Element]:
        if stage == "bound" and self.serves(stream.domain):
            return [domish.Element((CSI, "csi"))]
        return []

    @hook(STREAM_ELEMENT)
    def indication(self, stream: Any, element: domish.Element) -> bool:
        """``<inactive/>`` or ``<active/>`` from a bound client (anything else in the namespace is refused by
        the stream core: ``unsupported-stanza-type``)."""
        session = stream.session
        if element.uri != CSI or session is None or not self.serves(session.domain):
            return False
        if element.name == "inactive":
            go_inactive(session, self.max_held)
        elif element.name == "active":
            # Written before the client's next element is read (XEP-0352 §5.1, in-order processing).
            write_all(session, go_active(session))
        else:
            return False
        return True

    @hook(SESSION_UNBOUND)
    def unbound(self, session: Any, reason: str) -> None:
        """A session that ends while holding: what it held is routed again, once the transport has routed
        what it could not write (those are older)."""
        held = go_active(session)
        if held:
            self.server.clock.callLater(0, reroute, self.server, session.bare, held)
