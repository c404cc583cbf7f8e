"""RFC 6121 §2: roster get, set and remove, roster pushes, roster versioning (§2.6 / XEP-0237).

The roster module also owns what the presence module builds on: the store, a cache of the rosters of
online accounts, one queue per account (every read-modify-write of an account's roster and presence work
runs through :meth:`RosterModule.serialize`, in arrival order), and :meth:`RosterModule.apply`, which runs one step of
the subscription state machine (:mod:`xmppcluster.modules.subscription`) in one transaction.

Events fired: ``roster/changed``\\ (owner_bare, contact_bare) after an item was added, changed or removed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.words.xish import domish

from xmppcluster.core import stanza as stanzas
from xmppcluster.core.events import (
    CACHES_STALE,
    ROSTER_CHANGED,
    ROSTER_CHANGED_ELSEWHERE,
    ROSTER_SUBSCRIBED_FROM,
    SESSION_UNBOUND,
)
from xmppcluster.core.jid import InvalidJID, parse_jid
from xmppcluster.core.keyed import KeyedQueue
from xmppcluster.core.namespaces import CLIENT
from xmppcluster.core.serializer import tag
from xmppcluster.modules.base import Module, StanzaError, hook, iq
from xmppcluster.modules.subscription import State, Transition
from xmppcluster.storage.roster import Change, PendingTooLarge, RosterFull, RosterItem, RosterStore
from xmppcluster.storage.roster import Roster as StoredRoster

ROSTER = "jabber:iq:roster"
ROSTERVER = "urn:xmpp:features:rosterver"

#: Longest item name and group name, in UTF-8 bytes (RFC 6121 §2.3.3 "server-configured limit").
MAX_NAME_BYTES = 1023
MAX_GROUP_BYTES = 1023
#: Most groups on one item.
MAX_GROUPS = 100


def split_bare(bare: str) -> tuple[str, str]:
    """``user@domain`` -> ``(user, domain)``."""
    user, _, domain = bare.rpartition("@")
    return user, domain


def item_element(item: RosterItem) -> domish.Element:
    """The ``<item/>`` of a roster result or push."""
    element = domish.Element((ROSTER, "item"))
    element["jid"] = item.jid
    if item.name:
        element["name"] = item.name
    element["subscription"] = item.subscription
    if item.ask:
        element["ask"] = "subscribe"
    if item.approved:
        element["approved"] = "true"
    for group in item.groups:
        element.addElement("group", content=group)
    return element


def state_of(item: RosterItem | None, pending: str | None) -> State:
    """The subscription state of a stored item and pending request."""
    if item is None:
        return State(pending_in=pending is not None)
    return State(item.subscription, item.ask, pending is not None, item.approved)


class RosterModule(Module):
    name = "jabber:iq:roster"
    inject_as = "roster"

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.store: RosterStore | None = None
        self.max_items: int = self.config.quotas.roster_max_items
        self.max_pending_bytes: int = self.config.quotas.roster_pending_max_bytes
        self._cache: dict[str, StoredRoster] = {}
        self._jobs = KeyedQueue()
        self._ids = itertools.count(1)

    def start(self) -> None:
        self.store = RosterStore(self.server.storage.db)

    def stream_features(self, stream: Any, stage: str) -> list[domish.Element]:
        return [domish.Element((ROSTERVER, "ver"))] if stage == "bound" else []

    # -- one queue per account -------------------------------------------------------------------

    def serialize(self, bare: str, fn: Callable[..., Any], *args: Any) -> Deferred:
        """Run the coroutine function ``fn(*args)`` after every earlier job of ``bare``; its result.

        Never wait, inside a job, for another job of the same account (it would wait for itself).
        """
        return self._jobs.run(bare, fn, *args)

    def spawn(self, bare: str, fn: Callable[..., Any], *args: Any) -> None:
        """Like :meth:`serialize`, for work nobody waits for: failures are logged."""
        self.serialize(bare, fn, *args).addErrback(
            lambda failure: self.log.failure("roster/presence job for {bare} failed", failure, bare=bare))

    def busy(self, bare: str) -> bool:
        """True while jobs of ``bare`` are running or queued."""
        return self._jobs.busy(bare)

    async def settle(self) -> None:
        """Wait until no job is running or queued (tests, shutdown)."""
        while pending := self._jobs.pending():
            await DeferredList(pending, consumeErrors=True)
            await deferLater(reactor, 0, lambda: None)

    # -- reading -----------------------------------------------------------------------------------

    async def roster(self, bare: str) -> StoredRoster:
        """The roster of ``bare`` (cached while the account has sessions here). Call inside a job of ``bare``."""
        cached = self._cache.get(bare)
        if cached is not None:
            return cached
        assert self.store is not None
        loaded = await self.store.get(*split_bare(bare))
        if self.server.sessions.of(bare):
            self._cache[bare] = loaded
        return loaded

    async def item(self, bare: str, contact: str) -> RosterItem | None:
        """One item of ``bare``'s roster: from the cache (an account online here), else one indexed row (a
        probe to an offline account with a large roster must not load all of it). Call inside a job of ``bare``."""
        cached = self._cache.get(bare)
        if cached is None and self.server.sessions.of(bare):
            cached = await self.roster(bare)  # online here: load it whole, it stays cached
        if cached is not None:
            return cached.items.get(contact)
        assert self.store is not None
        return await self.store.get_item(*split_bare(bare), contact)

    @hook(ROSTER_CHANGED_ELSEWHERE)
    def invalidate(self, bare: str) -> None:
        """Forget the cached roster of ``bare`` (it changed elsewhere, e.g. on another cluster node)."""
        self._cache.pop(bare, None)

    @hook(CACHES_STALE)
    def invalidate_all(self) -> None:
        """Forget every cached roster (changes made elsewhere may have been missed)."""
        self._cache.clear()

    def may_see_presence(self, owner: str, who: str) -> Deferred:
        """True (in a Deferred) when ``who`` is subscribed to ``owner``'s presence ('from' or 'both')."""

        async def check() -> bool:
            item = await self.item(owner, who)
            return item is not None and item.subscription in ("from", "both")

        return self.serialize(owner, check)

    @hook(ROSTER_SUBSCRIBED_FROM)
    def subscribed_from(self, owner: str, contact: str) -> bool:
        """Synchronous form for other modules; answers from the cache (online accounts), else False."""
        cached = self._cache.get(owner)
        item = cached.items.get(contact) if cached is not None else None
        return item is not None and item.subscription in ("from", "both")

    @hook(SESSION_UNBOUND, -100)
    def _forget(self, session: Any, reason: str) -> None:
        if not self.server.sessions.of(session.bare):
            self.invalidate(session.bare)

    # -- writing -------------------------------------------------------------------------------------

    async def modify(self, bare: str, contact: str,
                     fn: Callable[[RosterItem | None, str | None], tuple[RosterItem | None, str | None]], *,
                     pending_quota: bool = True) -> Change:
        """Change one item (and pending request) of ``bare``; cache, pushes and ``roster/changed`` follow.

        Raises :class:`~xmppcluster.storage.roster.RosterFull` (:class:`PendingTooLarge` when a pending request
        would pass ``--roster-pending-max-bytes``, unless ``pending_quota`` is false). Call inside a job of
        ``bare``.
        """
        assert self.store is not None
        user, domain = split_bare(bare)
        change = await self.store.modify(user, domain, contact, fn, max_items=self.max_items,
                                         max_pending_bytes=self.max_pending_bytes if pending_quota else 0)
        if change.item_changed:
            cached = self._cache.get(bare)
            if cached is not None:
                items = dict(cached.items)
                if change.after is None:
                    items.pop(contact, None)
                else:
                    items[contact] = change.after
                self._cache[bare] = StoredRoster(change.version, items)
            self.push(bare, contact, change.after, change.version)
            self.server.hooks.notify(ROSTER_CHANGED, bare, contact)
        return change

    async def apply(self, bare: str, contact: str, step: Callable[[State, str], Transition], kind: str,
                    request: str | None = None) -> tuple[Change, Transition]:
        """Run ``step(state, kind)`` (``subscription.outbound`` or ``.inbound``) on the contact's state.

        ``request`` is the XML kept as the pending request when the step makes it "Pending In". A
        subscription change never creates an item for a stranger's request alone, nor removes one.
        """
        outcome: list[Transition] = []

        def fn(item: RosterItem | None, pending: str | None) -> tuple[RosterItem | None, str | None]:
            transition = step(state_of(item, pending), kind)
            outcome.append(transition)
            new = transition.state
            if item is None and new.subscription == "none" and not new.pending_out and not new.approved:
                new_item = None
            else:
                new_item = replace(item or RosterItem(contact), subscription=new.subscription,
                                   ask=new.pending_out, approved=new.approved)
            if not new.pending_in:
                new_pending = None
            else:
                new_pending = pending or request or tag(
                    "presence", {"xmlns": CLIENT, "type": "subscribe", "from": contact, "to": bare})
            return new_item, new_pending

        try:
            change = await self.modify(bare, contact, fn)
        except PendingTooLarge:
            # Past the byte quota of pending requests: keep this one without its payload (status, nick...),
            # which the count limit (--roster-max-size) bounds. The contact's request is never lost to bytes.
            request = None
            change = await self.modify(bare, contact, fn, pending_quota=False)
        return change, outcome[-1]

    def push(self, bare: str, contact: str, item: RosterItem | None, version: int) -> None:
        """Roster push (RFC 6121 §2.1.6) to every interested resource of ``bare`` on this node."""
        for session in self.server.sessions.of(bare):
            if not session.interested:
                continue
            push = stanzas.make("iq", to=session.jid, frm=bare, type="set", id=f"push{next(self._ids)}")
            query = push.addElement((ROSTER, "query"))
            if session.data.get(self.name):
                query["ver"] = str(version)
            if item is None:
                removed = query.addElement("item")
                removed["jid"] = contact
                removed["subscription"] = "remove"
            else:
                query.addChild(item_element(item))
            session.deliver(push)

    # -- IQ ------------------------------------------------------------------------------------------

    def _owner(self, request: domish.Element, sender: Any) -> str:
        if sender is None or self.target(request, sender) != sender.bare:
            raise StanzaError("forbidden", "only the account itself may use its roster")
        return sender.bare

    @iq("get", ROSTER, to=("account",))
    async def get(self, request: domish.Element, sender: Any) -> domish.Element | None:
        bare = self._owner(request, sender)
        return await self.serialize(bare, self._get, request, sender)

    async def _get(self, request: domish.Element, sender: Any) -> domish.Element | None:
        ver = stanzas.first_child(request).getAttribute("ver")
        sender.interested = True
        if ver is not None:
            sender.data[self.name] = True
        roster = await self.roster(sender.bare)
        if ver is not None and ver == str(roster.version):
            return None  # RFC 6121 §2.6.3: the client's copy is current
        reply = stanzas.result(request)
        query = reply.addElement((ROSTER, "query"))
        if ver is not None:
            query["ver"] = str(roster.version)
        for item in roster.items.values():
            query.addChild(item_element(item))
        return reply

    @iq("set", ROSTER, to=("account",))
    async def set(self, request: domish.Element, sender: Any) -> None:
        bare = self._owner(request, sender)
        contact, name, groups, remove = self._parse_set(request, bare)
        if remove:
            await self.serialize(bare, self._remove, bare, contact)
        else:
            await self.serialize(bare, self._update, bare, contact, name, groups)
        return None

    @staticmethod
    def _parse_set(request: domish.Element, bare: str) -> tuple[str, str | None, tuple[str, ...], bool]:
        """Validate a roster set (RFC 6121 §2.3.3); ``(contact, name, groups, remove)``."""
        items = list(stanzas.first_child(request).elements(ROSTER, "item"))
        if len(items) != 1:
            raise StanzaError("bad-request", "a roster set holds exactly one item")
        item = items[0]
        text = item.getAttribute("jid")
        if not text:
            raise StanzaError("bad-request", "the item has no jid")
        try:
            jid = parse_jid(text)
        except InvalidJID:
            raise StanzaError("jid-malformed", "the item's jid is not valid") from None
        if jid.resource is not None:
            raise StanzaError("bad-request", "roster items are bare JIDs")
        contact = jid.userhost()
        remove = item.getAttribute("subscription") == "remove"  # other values are ignored (§2.1.2.5)
        if remove:
            return contact, None, (), True
        if contact == bare:
            raise StanzaError("not-allowed", "an account is implicitly subscribed to itself")
        name = item.getAttribute("name") or None
        if name is not None and len(name.encode("utf-8")) > MAX_NAME_BYTES:
            raise StanzaError("not-acceptable", f"names are limited to {MAX_NAME_BYTES} bytes")
        groups: list[str] = []
        for element in item.elements(ROSTER, "group"):
            group = str(element)
            if not group.strip():
                raise StanzaError("not-acceptable", "empty group")
            if len(group.encode("utf-8")) > MAX_GROUP_BYTES:
                raise StanzaError("not-acceptable", f"group names are limited to {MAX_GROUP_BYTES} bytes")
            if group in groups:
                raise StanzaError("bad-request", "duplicate group")
            groups.append(group)
        if len(groups) > MAX_GROUPS:
            raise StanzaError("not-acceptable", f"at most {MAX_GROUPS} groups per item")
        return contact, name, tuple(groups), False

    async def _update(self, bare: str, contact: str, name: str | None, groups: tuple[str, ...]) -> None:
        def fn(item: RosterItem | None, pending: str | None) -> tuple[RosterItem | None, str | None]:
            return replace(item or RosterItem(contact), name=name, groups=groups), pending

        try:
            await self.modify(bare, contact, fn)
        except RosterFull:
            raise StanzaError("not-allowed", f"the roster is full ({self.max_items} items)") from None

    async def _remove(self, bare: str, contact: str) -> None:
        roster = await self.roster(bare)
        if contact not in roster.items:
            raise StanzaError("item-not-found", "no such roster item")
        change = await self.modify(bare, contact, lambda item, pending: (None, None))
        state = state_of(change.before, change.pending_before)
        router = self.server.router
        # RFC 6121 §2.5.2: cancel the subscriptions both ways.
        if state.has_to or state.pending_out:
            router.route(stanzas.make("presence", type="unsubscribe", frm=bare, to=contact))
        if state.has_from or state.pending_in:
            router.route(stanzas.make("presence", type="unsubscribed", frm=bare, to=contact))
        if state.has_from:
            for session in self.server.sessions.available(bare):
                router.route(stanzas.make("presence", type="unavailable", frm=session.jid, to=contact))

