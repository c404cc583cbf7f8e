"""XEP-0160 offline messages, stamped with XEP-0203 delays, delivered at the next non-negative presence.

Storing: ``message/offline`` (no resource can take the message) decides with :func:`offline_decision`
(XEP-0160 per-type rules, XEP-0334 hints), answers the hook at once and stores in the background; if the
store fails the sender gets an error, so nothing is dropped silently (unknown account or full queue:
``service-unavailable``, RFC 6121 §8.5.1 and XEP-0160 §2; database failure: ``internal-server-error``).
Whoever must know when the message is safe (a cluster link acknowledging a routed stanza) asks
:meth:`OfflineMessages.storing` for the store's end.

Delivering: when a resource of this node becomes available with a non-negative priority
(``presence/broadcast``, ``presence/initial``), the queue is claimed in the database, written to that
resource's open client stream in order, then deleted. Only resources of this node are written to: a row
is never deleted on the word of another node's link. A message stored while the account's only eligible
resources are on other nodes is announced to them (``offline-waiting``), and they deliver it.
Deliveries for one account run one at a time on this node; the database claim keeps other nodes (and a
second resource logging in at the same moment) from delivering the same rows again.
"""

from __future__ import annotations

import secrets
import weakref
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.words.xish import domish

from xmppcluster.core.background import Background
from xmppcluster.core.events import (
    MESSAGE_OFFLINE,
    OFFLINE_STORING,
    OFFLINE_WAITING,
    OFFLINE_WAITING_HERE,
    PRESENCE_BROADCAST,
    PRESENCE_INITIAL,
)
from xmppcluster.core.keyed import KeyedQueue
from xmppcluster.core.serializer import serialize
from xmppcluster.core.sessions import Session
from xmppcluster.core.stanza import utc_stamp
from xmppcluster.core.xml import StreamFault, reparse
from xmppcluster.modules.base import Module, hook
from xmppcluster.modules.blocking import Blocking, blocked_by
from xmppcluster.storage.errors import NoSuchAccount
from xmppcluster.storage.offline import OfflineQueueFull, OfflineStore

DELAY = "urn:xmpp:delay"
HINTS = "urn:xmpp:hints"
CHATSTATES = "http://jabber.org/protocol/chatstates"

#: Children that alone do not make a message worth keeping (XEP-0160 §3: chat-state-only messages).
_NOT_CONTENT = frozenset(((CHATSTATES, None), (HINTS, None), ("jabber:client", "thread")))

STORE, REFUSE, DROP = "store", "refuse", "drop"


def offline_decision(stanza: domish.Element) -> str:
    """What to do with a message nobody can take now: ``store``, ``refuse`` (error to sender) or ``drop``.

    XEP-0160 §3: store normal and chat, never error; groupchat is refused, headline dropped (RFC 6121
    §8.5.2.2.1). XEP-0334: ``<store/>`` stores any non-error message, ``<no-store/>`` refuses. A message
    with nothing but chat states, hints or a thread is dropped silently.
    """
    kind = stanza.getAttribute("type") or "normal"
    if kind == "error":
        return DROP
    hints = {child.name for child in stanza.elements() if child.uri == HINTS}
    if "store" in hints:
        return STORE
    if kind == "groupchat":
        return REFUSE
    if kind == "headline":
        return DROP
    if "no-store" in hints:
        return REFUSE
    for child in stanza.elements():
        if (child.uri, None) not in _NOT_CONTENT and (child.uri, child.name) not in _NOT_CONTENT:
            return STORE
    return DROP


def serialize_with_delay(stanza: domish.Element, domain: str, stamp: str) -> bytes:
    """The stanza as UTF-8 XML with ``<delay xmlns='urn:xmpp:delay' from=domain stamp=.../>`` appended.

    ``stanza`` is left as it was (the router may still bounce it).
    """
    delay = stanza.addElement((DELAY, "delay"), content="Offline Storage")
    delay["from"] = domain
    delay["stamp"] = stamp
    try:
        return serialize(stanza).encode("utf-8")
    finally:
        stanza.children.remove(delay)


class OfflineMessages(Module):
    """XEP-0160: store messages for accounts with no resource to take them; deliver at the next presence."""

    name = "msgoffline"
    features = ("msgoffline",)
    uses = (Blocking,)
    #: The blocking module (injected at load; None when it is not enabled): stored messages from JIDs
    #: blocked since are not delivered.
    blocking: Blocking | None = None

    #: Seconds after which another delivery may take over rows claimed by a delivery that never finished.
    claim_timeout = 300
    #: Messages claimed and delivered per database round trip.
    batch = 100

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.max_messages: int = self.config.quotas.offline_max_messages
        self.max_bytes: int = self.config.quotas.offline_max_bytes
        self.store: OfflineStore | None = None
        #: bare JID -> the delivery running for it (one at a time per account on this node)
        self._delivering: dict[str, Deferred] = {}
        #: bare JIDs whose queue must be looked at again when the running delivery ends
        self._again: set[str] = set()
        #: background stores and deliveries, for :meth:`drain`
        self._work = Background(self.log, "offline")
        #: bare JID -> lock that keeps its stores in arrival order
        self._stores = KeyedQueue()
        #: stanza being stored -> its store (see :meth:`storing`)
        self._storing: weakref.WeakKeyDictionary[domish.Element, Deferred] = weakref.WeakKeyDictionary()

    def start(self) -> None:
        db = getattr(self.server.storage, "db", None)
        self.store = OfflineStore(db) if db is not None else None

    def stop(self) -> Deferred:
        """Returns a Deferred firing once background work finished (wait for it before closing storage)."""
        return self.drain()

    def drain(self) -> Deferred:
        """A Deferred that fires once no background store or delivery is left (including ones they start)."""
        return self._work.drain()

    def _now(self) -> float:
        return float(self.server.clock.seconds())

    # -- storing --------------------------------------------------------------------------------

    @hook(MESSAGE_OFFLINE)
    def message_offline(self, stanza: domish.Element, bare: str) -> bool:
        """Take responsibility for a message no resource of ``bare`` can take (True = handled)."""
        if not self.serves(bare.partition("@")[2]):
            return False  # offline storage is off for this vhost: the sender gets service-unavailable
        decision = offline_decision(stanza)
        if decision == DROP:
            return True
        if decision == REFUSE or self.max_messages <= 0 or self.store is None:
            return False  # the router answers service-unavailable
        user, _, domain = bare.partition("@")
        now = self._now()
        data = serialize_with_delay(stanza, domain, utc_stamp(now))
        self._storing[stanza] = self._work.run(self._store(stanza, data, user, domain, int(now)), "store")
        return True

    @hook(OFFLINE_STORING)
    def storing(self, stanza: domish.Element) -> Deferred | None:
        """If ``stanza`` is being stored: a Deferred firing (with None) once the store is over, written or
        answered with an error. None when no store of it is running."""
        store = self._storing.get(stanza)
        if store is None or store.called:
            return None
        done = Deferred()
        store.addBoth(lambda result: (done.callback(None), result)[1])
        return done

    async def _store(self, stanza: domish.Element, data: bytes, user: str, domain: str, now: int) -> None:
        bare = f"{user}@{domain}"
        # One store at a time per account, in arrival order: the queue order is the order messages came in.
        if not await self._stores.run(bare, self._store_one, stanza, data, user, domain, now):
            return
        # A resource may have become available while the message was being written: hand it over now.
        target = self._target(bare)
        if target is not None:
            self.deliver(target)
            return
        for node in {s.node for s in self.server.sessions.available(bare) if s.node is not None and s.priority >= 0}:
            self.server.hooks.notify(OFFLINE_WAITING, bare, node)  # that node's resource fetched its queue already

    async def _store_one(self, stanza: domish.Element, data: bytes, user: str, domain: str, now: int) -> bool:
        """Write one message; False (and the sender told) when it cannot be stored."""
        assert self.store is not None
        try:
            await self.store.store(user, domain, stanza.getAttribute("from") or "", data,
                                   limit=self.max_messages, now=now, max_bytes=self.max_bytes)
        except (NoSuchAccount, OfflineQueueFull):
            self.server.router.bounce(stanza, "service-unavailable")
            return False
        except Exception:
            self.log.failure("storing an offline message for {user}@{domain} failed", user=user, domain=domain)
            self.server.router.bounce(stanza, "internal-server-error")
            return False
        return True
    # -- delivering -----------------------------------------------------------------------------

    @hook(PRESENCE_BROADCAST)
    def presence_broadcast(self, stanza: domish.Element, session: Session) -> bool:
        if session.available and session.priority >= 0:
            if not session.data.get(self.name):
                session.data[self.name] = True
                self.deliver(session)
        else:
            session.data.pop(self.name, None)  # a later non-negative presence looks at the queue again
        return False

    @hook(PRESENCE_INITIAL)
    def presence_initial(self, session: Session) -> bool:
        if session.available and session.priority >= 0 and not session.data.get(self.name):
            session.data[self.name] = True
            self.deliver(session)
        return False

    @hook(OFFLINE_WAITING_HERE)
    def offline_waiting(self, node: str, element: domish.Element) -> bool:
        """Another node stored a message for an account with an eligible resource here: deliver it."""
        target = self._target(element.getAttribute("owner") or "")
        if target is not None:
            self.deliver(target)
        return True

    def deliver(self, session: Session) -> Deferred:
        """Hand the stored messages of ``session``'s account to it (or to another eligible resource)."""
        if self.store is None:
            return succeed(None)
        bare = session.bare
        running = self._delivering.get(bare)
        if running is not None:
            self._again.add(bare)
            return running
        d = self._work.run(self._deliver_all(bare, session), "delivery")
        if not d.called:
            self._delivering[bare] = d
        return d

    def _eligible(self, session: Session) -> bool:
        """A resource of this node, available with a non-negative priority, whose stream is open."""
        return (session.node is None and session.available and session.priority >= 0
                and self.server.sessions.get(session.bare, session.resource) is session
                and session.is_open)

    def _target(self, bare: str) -> Session | None:
        """The most available resource of ``bare`` on this node with a non-negative priority, if any."""
        best = None
        for session in self.server.sessions.available(bare):
            if self._eligible(session) and (best is None or session.priority > best.priority):
                best = session
        return best

    async def _deliver_all(self, bare: str, session: Session) -> None:
        try:
            while True:
                self._again.discard(bare)
                more = await self._deliver_batch(bare, session)
                if not more and bare not in self._again:
                    return
                session = self._target(bare) if not self._eligible(session) else session
                if session is None:
                    return
        finally:
            self._delivering.pop(bare, None)
            self._again.discard(bare)

    async def _deliver_batch(self, bare: str, session: Session) -> bool:
        """Claim, hand over, delete one batch; True when a full batch went out (there may be more)."""
        assert self.store is not None
        user, _, domain = bare.partition("@")
        token = secrets.token_hex(8)
        messages = await self.store.claim(user, domain, token, now=int(self._now()),
                                          stale_after=self.claim_timeout, batch=self.batch)
        if not messages:
            return False
        blocked = await self.blocking.blocklist(bare) if self.blocking is not None else frozenset()
        done: list[int] = []
        for message in messages:
            target = session if self._eligible(session) else self._target(bare)
            if target is None:
                break  # nobody left to take them: the rest stays stored
            session = target
            try:
                stanza = reparse(message.stanza)
            except StreamFault:
                self.log.error("dropping unreadable offline message {seq} of {bare}", seq=message.seq, bare=bare)
                done.append(message.seq)
                continue
            if not (blocked and blocked_by(blocked, bare, stanza.getAttribute("from"))):
                # Written to an open stream of this node; what it cannot send before it closes, it routes again.
                session.deliver(stanza)
            done.append(message.seq)
            await session.stream.output_ready()  # a client not reading yet gets no more than its output limit
        try:
            await self.store.delete(user, domain, token, done)
        finally:
            if len(done) < len(messages):
                await self.store.release(user, domain, token)
        return len(done) == len(messages) == self.batch
