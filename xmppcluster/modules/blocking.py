"""XEP-0191 blocking command: blocklist get/set, pushes, and enforcement on every stanza path.

Enforcement is synchronous, from a per-account cache of blocklists (loaded at bind, or on first use: the
stanza then waits for the load and resumes in order). Inbound stanzas from a blocked JID (XEP-0191 §3.3):
presence dropped, message answered ``service-unavailable`` (headline and error dropped, as for an offline
user), IQ get/set answered ``service-unavailable``, other IQs dropped. Outbound stanzas from a client to a
blocked JID: ``not-acceptable`` + ``<blocked xmlns='urn:xmpp:blocking:errors'/>``. Stanzas the server
generates on a user's behalf (presence broadcasts) to a JID the user blocks are dropped silently. An
account's own resources and its own server are never blocked.

Events fired for other modules: ``blocking/changed``(bare, added: list[str], removed: list[str]) after a
blocklist changed (the cluster sends it on: each node pushes the change to its own resources). Asked of
other modules: ``roster/subscribed-from``(owner_bare, contact_bare) — a handler returns True when the
contact is subscribed to the owner's presence ('from' or 'both'), so that blocking sends it unavailable
presence and unblocking sends it the current presence (XEP-0191 §3.3, §3.4).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.python.failure import Failure
from twisted.words.xish import domish

from xmppcluster.core import stanza as stanzas
from xmppcluster.core.events import (
    BLOCKING_CHANGED,
    BLOCKLIST_CHANGED_ELSEWHERE,
    CACHES_STALE,
    IQ_BARE,
    IQ_FULL,
    IQ_OUTGOING,
    MESSAGE_BARE,
    MESSAGE_FULL,
    MESSAGE_OUTGOING,
    OUTGOING,
    PRESENCE_BARE,
    PRESENCE_FULL,
    PRESENCE_OUTGOING,
    ROSTER_SUBSCRIBED_FROM,
    ROUTE_REMOTE,
    SESSION_BOUND,
)
from xmppcluster.core.jid import InvalidJID, parse_jid
from xmppcluster.core.keyed import KeyedQueue
from xmppcluster.core.sessions import Session
from xmppcluster.modules.base import Module, StanzaError, hook, iq
from xmppcluster.storage.blocking import BlockingStore, BlocklistFull
from xmppcluster.storage.errors import NoSuchAccount

NS = "urn:xmpp:blocking"
ERRORS = "urn:xmpp:blocking:errors"

#: Attribute set on a stanza that already passed the checks and is being resumed after a blocklist load.
_PASSED = "_xmppcluster_blocking_passed"  # read with vars(): a missing attribute on a domish Element
# goes through Element.__getattr__, a scan of the children (about 10% of a cluster node's CPU per message)


def blocked_by(items: frozenset[str], owner: str, jid: str | None) -> bool:
    """True when ``jid`` matches an entry of ``owner``'s blocklist ``items`` (XEP-0191 §5).

    ``user@domain/resource`` and ``domain/resource`` entries match that JID only, ``user@domain`` any of its
    resources, ``domain`` the domain and everything at it. The owner's own account and server never match.
    """
    if not items or not jid:
        return False
    try:
        parsed = parse_jid(jid)
    except InvalidJID:
        return False
    host = parsed.host
    if parsed.user is not None:
        bare = f"{parsed.user}@{host}"
        if bare == owner:
            return False
        if bare in items:
            return True
    elif parsed.resource is None and owner.endswith("@" + host):
        return False
    return parsed.full() in items or host in items


class Blocking(Module):
    """XEP-0191: blocklists, their pushes, and blocking of stanzas in both directions."""

    name = "urn:xmpp:blocking"
    inject_as = "blocking"
    features = (NS,)

    #: Most JIDs one account may block.
    max_items = 1000
    #: Blocklists kept in memory for accounts without a session on this node.
    cache_size = 10_000

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.store: BlockingStore | None = None
        self._lists: OrderedDict[str, frozenset[str]] = OrderedDict()
        self._loading: dict[str, list[Deferred]] = {}
        self._changes = KeyedQueue()  # one block/unblock at a time per account

    def start(self) -> None:
        db = getattr(self.server.storage, "db", None)
        self.store = BlockingStore(db) if db is not None else None

    # -- the cache ----------------------------------------------------------------------------------

    def cached(self, bare: str) -> frozenset[str] | None:
        """The blocklist of ``bare`` if it is in memory, else None."""
        items = self._lists.get(bare)
        if items is not None:
            self._lists.move_to_end(bare)
        return items

    def is_blocked(self, owner: str, jid: str) -> bool | None:
        """Whether ``owner`` (a local bare JID) blocks ``jid``; None when its blocklist is not loaded.

        For modules that send on a user's behalf (e.g. presence broadcasts) and want to skip blocked JIDs.
        """
        items = self.cached(owner)
        return None if items is None else blocked_by(items, owner, jid)

    def invalidate(self, bare: str) -> None:
        """Forget the cached blocklist of ``bare`` (e.g. changed on another cluster node)."""
        self._lists.pop(bare, None)

    @hook(CACHES_STALE)
    def invalidate_all(self) -> None:
        """Forget every cached blocklist (changes made elsewhere may have been missed)."""
        self._lists.clear()

    def _remember(self, bare: str, items: frozenset[str]) -> None:
        self._lists[bare] = items
        self._lists.move_to_end(bare)
        for _ in range(len(self._lists)):
            if len(self._lists) <= self.cache_size:
                break
            oldest = next(iter(self._lists))
            if self.server.sessions.of(oldest):
                self._lists.move_to_end(oldest)  # online accounts stay
            else:
                del self._lists[oldest]

    def blocklist(self, bare: str) -> Deferred:
        """Deferred firing with the blocklist (a frozenset of JID texts) of local account ``bare``."""
        items = self.cached(bare)
        if items is not None:
            return succeed(items)
        if self.store is None:  # no database (a test server): nothing is blocked
            return succeed(frozenset())
        waiter: Deferred = Deferred()
        waiters = self._loading.get(bare)
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        self._loading[bare] = [waiter]
        user, _, domain = bare.partition("@")
        ensureDeferred(self.store.get(user, domain)).addBoth(self._loaded, bare)
        return waiter

    def _loaded(self, result: Any, bare: str) -> None:
        waiters = self._loading.pop(bare, [])
        if isinstance(result, Failure):
            for waiter in waiters:
                waiter.errback(result)
            return
        items = self._lists.get(bare)
        if items is None:  # a write that finished meanwhile already holds the newer list
            items = frozenset(result)
            self._remember(bare, items)
        for waiter in waiters:
            waiter.callback(items)

    def _hold(self, bare: str, resume: Callable[[frozenset[str]], None], fail: Callable[[], None]) -> None:
        """Call ``resume(blocklist of bare)`` once it is loaded (``fail()`` if it cannot be)."""

        def failed(failure: Failure) -> None:
            self.log.failure("loading the blocklist of {bare} failed", failure, bare=bare)
            fail()

        self.blocklist(bare).addCallbacks(resume, failed).addErrback(
            lambda failure: self.log.failure("resuming a stanza held for {bare} failed", failure, bare=bare))

    @hook(SESSION_BOUND)
    def session_bound(self, session: Session) -> bool:
        self.blocklist(session.bare).addErrback(
            lambda failure: self.log.failure("loading the blocklist of {bare} failed", failure, bare=session.bare))
        return False

    # -- inbound: stanzas to a local user --------------------------------------------------------

    @hook(MESSAGE_BARE, 100)
    def message_bare(self, stanza: domish.Element, bare: str, sender: Any) -> bool:
        return self._inbound(stanza, bare, sender)

    @hook(MESSAGE_FULL, 100)
    def message_full(self, stanza: domish.Element, bare: str, resource: str, session: Any, sender: Any) -> bool:
        return self._inbound(stanza, bare, sender)

    @hook(PRESENCE_BARE, 100)
    def presence_bare(self, stanza: domish.Element, bare: str, sender: Any) -> bool:
        return self._inbound(stanza, bare, sender)

    @hook(PRESENCE_FULL, 100)
    def presence_full(self, stanza: domish.Element, bare: str, resource: str, session: Any, sender: Any) -> bool:
        return self._inbound(stanza, bare, sender)

    @hook(IQ_BARE, 100)
    def iq_bare(self, stanza: domish.Element, bare: str, sender: Any) -> bool:
        return self._inbound(stanza, bare, sender)

    @hook(IQ_FULL, 100)
    def iq_full(self, stanza: domish.Element, bare: str, resource: str, session: Any, sender: Any) -> bool:
        return self._inbound(stanza, bare, sender)

    def _inbound(self, stanza: domish.Element, bare: str, sender: Any) -> bool:
        if vars(stanza).get(_PASSED) == bare:
            return False
        frm = stanza.getAttribute("from")
        if frm is None:
            return False
        if self._sender_blocks(stanza, frm):
            return True
        items = self.cached(bare)
        if items is not None:
            return self._refuse_inbound(stanza, items, bare)

        def resume(items: frozenset[str]) -> None:
            if not self._refuse_inbound(stanza, items, bare):
                setattr(stanza, _PASSED, bare)
                self.server.router.route(stanza, sender)

        self._hold(bare, resume, lambda: self.server.router.bounce(stanza, "internal-server-error"))
        return True

    def _refuse_inbound(self, stanza: domish.Element, items: frozenset[str], bare: str) -> bool:
        """XEP-0191 §3.3 for a stanza to ``bare`` from a JID it blocks; False when not blocked."""
        if not blocked_by(items, bare, stanza.getAttribute("from")):
            return False
        name, kind = stanza.name, stanza.getAttribute("type")
        if name == "message" and kind not in ("error", "headline"):
            self.server.router.bounce(stanza, "service-unavailable")
        elif name == "iq" and kind in ("get", "set"):
            self.server.router.bounce(stanza, "service-unavailable")
        return True

    def _sender_blocks(self, stanza: domish.Element, frm: str) -> bool:
        """A stanza the server sends for a local user to a JID that user blocks (errors always pass)."""
        if stanza.getAttribute("type") == "error":
            return False
        try:
            sender = parse_jid(frm)
        except InvalidJID:
            return False
        if sender.user is None or not self.server.is_local_domain(sender.host):
            return False
        owner = f"{sender.user}@{sender.host}"
        items = self._lists.get(owner)
        return bool(items) and blocked_by(items, owner, stanza.getAttribute("to"))

    @hook(ROUTE_REMOTE, 100)
    def route_remote(self, stanza: domish.Element, target: Any, sender: Any) -> bool:
        frm = stanza.getAttribute("from")
        return frm is not None and self._sender_blocks(stanza, frm)

    # -- outbound: stanzas a client sends --------------------------------------------------------

    @hook(MESSAGE_OUTGOING, 100)
    def message_outgoing(self, stanza: domish.Element, session: Session) -> bool:
        return self._outbound(stanza, session)

    @hook(PRESENCE_OUTGOING, 100)
    def presence_outgoing(self, stanza: domish.Element, session: Session) -> bool:
        return self._outbound(stanza, session)

    @hook(IQ_OUTGOING, 100)
    def iq_outgoing(self, stanza: domish.Element, session: Session) -> bool:
        return self._outbound(stanza, session)

    def _outbound(self, stanza: domish.Element, session: Session) -> bool:
        to = stanza.getAttribute("to")
        if to is None or vars(stanza).get(_PASSED) == "out":
            return False
        items = self.cached(session.bare)
        if items is not None:
            return self._refuse_outbound(stanza, items, session)

        def resume(items: frozenset[str]) -> None:
            if not self._refuse_outbound(stanza, items, session):
                setattr(stanza, _PASSED, "out")
                if not self.server.hooks.dispatch(OUTGOING[stanza.name], stanza, session):
                    self.server.router.route(stanza, session)

        self._hold(session.bare, resume, lambda: self._answer(stanza, session, "internal-server-error"))
        return True

    def _refuse_outbound(self, stanza: domish.Element, items: frozenset[str], session: Session) -> bool:
        if not blocked_by(items, session.bare, stanza.getAttribute("to")):
            return False
        self._answer(stanza, session, "not-acceptable", blocked=True)
        return True

    @staticmethod
    def _answer(stanza: domish.Element, session: Session, condition: str, *, blocked: bool = False) -> None:
        if stanza.getAttribute("type") == "error":
            return
        reply = stanzas.error_reply(stanza, condition, type="cancel")
        if blocked:
            error = next(reply.elements(stanzas.CLIENT, "error"))
            error.addElement((ERRORS, "blocked"))
        session.deliver(reply)

    # -- the protocol ------------------------------------------------------------------------------

    def _own(self, request: domish.Element, sender: Session | None) -> str:
        if sender is None or self.target(request, sender) != sender.bare:
            raise StanzaError("service-unavailable")
        return sender.bare

    @iq("get", NS, to=("account",))
    async def get_blocklist(self, request: domish.Element, sender: Session | None) -> domish.Element:
        bare = self._own(request, sender)
        if stanzas.first_child(request).name != "blocklist":
            raise StanzaError("bad-request")
        items = await self.blocklist(bare)
        sender.data[self.name] = True  # this resource now gets pushes (XEP-0191 §3.3)
        reply = stanzas.result(request)
        blocklist = reply.addElement((NS, "blocklist"))
        for jid in sorted(items):
            blocklist.addElement("item")["jid"] = jid
        return reply

    @iq("set", NS, to=("account",))
    async def set_blocklist(self, request: domish.Element, sender: Session | None) -> bool:
        bare = self._own(request, sender)
        payload = stanzas.first_child(request)
        if payload.name not in ("block", "unblock"):
            raise StanzaError("bad-request")
        jids = self._items(payload)
        if payload.name == "block" and not jids:
            raise StanzaError("bad-request", "<block/> needs at least one <item/>")
        await self._changes.run(bare, self._block if payload.name == "block" else self._unblock, bare, jids)
        self.server.router.route(stanzas.result(request))
        self._push(bare, payload.name, jids)
        return False

    def _items(self, payload: domish.Element) -> list[str]:
        jids = []
        for item in payload.elements(NS, "item"):
            text = item.getAttribute("jid")
            if not text:
                raise StanzaError("bad-request", "<item/> needs a 'jid'")
            try:
                jids.append(parse_jid(text).full())
            except InvalidJID:
                raise StanzaError("jid-malformed", f"not a JID: {text[:100]}") from None
            if len(jids) > self.max_items:
                raise StanzaError("policy-violation", f"at most {self.max_items} items")
        return list(dict.fromkeys(jids))

    async def _block(self, bare: str, jids: list[str]) -> None:
        assert self.store is not None
        current = await self.blocklist(bare)
        user, _, domain = bare.partition("@")
        try:
            added = await self.store.block(user, domain, jids, limit=self.max_items)
        except BlocklistFull:
            raise StanzaError("policy-violation", f"a blocklist holds at most {self.max_items} JIDs") from None
        except NoSuchAccount:
            raise StanzaError("item-not-found") from None
        if added:
            # Before the cache knows: these unavailable presences must not be stopped as "to a blocked JID".
            self._send_presence(bare, added, available=False)
        self._remember(bare, current | frozenset(added))
        if added:
            self.server.hooks.notify(BLOCKING_CHANGED, bare, added, [])

    async def _unblock(self, bare: str, jids: list[str]) -> None:
        assert self.store is not None
        await self.blocklist(bare)
        user, _, domain = bare.partition("@")
        if jids:
            removed = await self.store.unblock(user, domain, jids)
        else:
            removed = await self.store.unblock_all(user, domain)
        now = self.cached(bare) or frozenset()
        self._remember(bare, now - frozenset(removed))
        if removed:
            self._send_presence(bare, removed, available=True)
            self.server.hooks.notify(BLOCKING_CHANGED, bare, [], removed)

    @hook(BLOCKLIST_CHANGED_ELSEWHERE)
    def pushed_elsewhere(self, bare: str, added: list[str], removed: list[str]) -> None:
        """Another cluster node changed the blocklist of ``bare`` (and pushed it to its own resources): push
        the change to this node's resources, forget the cached list (the next use reloads it)."""
        self.invalidate(bare)
        if added:
            self._push(bare, "block", added)
        if removed:
            self._push(bare, "unblock", removed)

    def _push(self, bare: str, action: str, jids: list[str]) -> None:
        """XEP-0191 §3.3-3.5: the change to every resource here that asked for the blocklist (resources on
        other cluster nodes get it from their node: :meth:`pushed_elsewhere`)."""
        for session in self.server.sessions.of(bare):
            if not session.is_local or not session.data.get(self.name):
                continue
            push = stanzas.make("iq", to=session.jid, type="set", id=f"block-{secrets.token_hex(4)}")
            element = push.addElement((NS, action))
            for jid in jids:
                element.addElement("item")["jid"] = jid
            session.deliver(push)

    def _send_presence(self, bare: str, jids: list[str], *, available: bool) -> None:
        """Unavailable (on block) or current (on unblock) presence to the JIDs entitled to the user's presence."""
        changed = frozenset(jids)
        for session in self.server.sessions.available(bare):
            for contact in self._entitled(bare, session, changed):
                if available:
                    presence = stanzas.copy(session.presence, to=contact, frm=session.jid)
                else:
                    presence = stanzas.make("presence", to=contact, frm=session.jid, type="unavailable")
                self.server.router.route(presence, session)

    def _entitled(self, bare: str, session: Session, changed: frozenset[str]) -> list[str]:
        """Which of ``changed`` (or directed-presence recipients they cover) may see ``session``'s presence."""
        found = [jid for jid in sorted(session.directed) if blocked_by(changed, bare, jid)]
        for jid in sorted(changed):
            if jid in found:
                continue
            try:
                parsed = parse_jid(jid)
            except InvalidJID:
                continue
            if parsed.user is None:
                continue
            contact = f"{parsed.user}@{parsed.host}"
            if contact != bare and self.server.hooks.dispatch(ROSTER_SUBSCRIBED_FROM, bare, contact):
                found.append(jid)
        return found
