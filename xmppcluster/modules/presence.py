"""RFC 6121 §3 and §4: presence subscriptions (with pre-approval) and presence broadcast, probes, directed presence.

Builds on the roster module (``jabber:iq:roster``): its store, cache, per-account job queue and
:meth:`~xmppcluster.modules.roster.RosterModule.apply`. All work for one account runs in that account's
queue, so stanzas are processed in the order they arrived even though storage is asynchronous.

Fires ``session/directed``(session, target, added) when a resource's set of directed-presence recipients
changes: ``target`` added (``added`` True) or removed, or every target removed (``target`` None).
Hooks: ``presence/outgoing`` (subscription stanzas and directed presence a client sends),
``presence/bare`` and ``presence/full`` (what arrives for a local account), ``presence/broadcast``,
``presence/initial`` and ``session/unbound`` (a resource's own availability).
"""

from __future__ import annotations

from typing import Any

from twisted.words.xish import domish

from xmppcluster.core import stanza as stanzas
from xmppcluster.core.events import (
    PRESENCE_BARE,
    PRESENCE_BROADCAST,
    PRESENCE_FULL,
    PRESENCE_INITIAL,
    PRESENCE_OUTGOING,
    SESSION_DIRECTED,
    SESSION_UNBOUND,
)
from xmppcluster.core.jid import InvalidJID, parse_jid
from xmppcluster.core.serializer import serialize
from xmppcluster.core.stanza import copy
from xmppcluster.core.xml import StreamFault, reparse
from xmppcluster.modules.base import Module, hook
from xmppcluster.modules.roster import RosterModule, split_bare
from xmppcluster.modules.subscription import KINDS, SUBSCRIBE, SUBSCRIBED, Transition, inbound, outbound
from xmppcluster.storage.roster import Change, RosterFull

PRE_APPROVAL = "urn:xmpp:features:pre-approval"
FROM = ("from", "both")
TO = ("to", "both")


def _bare_of(text: str) -> str | None:
    try:
        return parse_jid(text).userhost()
    except InvalidJID:
        return None


class Presence(Module):
    name = "presence"
    uses = (RosterModule,)
    #: The roster module (injected at load; None when it is not enabled: presence is then passed on as is).
    roster: RosterModule | None = None

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.max_directed: int = self.config.quotas.directed_presence_max

    def _ready(self) -> bool:
        return self.roster is not None

    def stream_features(self, stream: Any, stage: str) -> list[domish.Element]:
        return [domish.Element((PRE_APPROVAL, "sub"))] if stage == "bound" else []

    # -- what a client sends -------------------------------------------------------------------------

    @hook(PRESENCE_OUTGOING)
    def outgoing(self, stanza: domish.Element, session: Any) -> bool:
        to = stanza.getAttribute("to")
        if to is None or not self._ready():
            return False
        try:
            target = parse_jid(to)
        except InvalidJID:
            return False  # the router answers jid-malformed
        kind = stanza.getAttribute("type")
        if kind in KINDS:
            contact = target.userhost()
            if contact != session.bare:  # an account is implicitly subscribed to itself
                self.roster.spawn(session.bare, self._outbound, stanza, session, contact, kind)
            return True
        if kind in (None, "unavailable") and target.userhost() != session.bare:
            return self._directed(stanza, session, target.full(), kind is None)
        return False

    def _directed(self, stanza: domish.Element, session: Any, target: str, available: bool) -> bool:
        """RFC 6121 §4.6: remember directed presence, to end it with unavailable later. A resource tracks at
        most ``--directed-presence-max`` recipients: available presence to one more is refused (and not
        sent), since the server could not end it; updates to a tracked recipient and unavailable pass."""
        directed = session.directed
        if available and target not in directed:
            if len(directed) >= self.max_directed:
                session.deliver(stanzas.error_reply(
                    stanza, "policy-violation", type="wait",
                    text=f"directed presence to at most {self.max_directed} JIDs at once: send unavailable "
                         "to some first"))
                return True
            directed.add(target)
            self.server.hooks.notify(SESSION_DIRECTED, session, target, True)
        elif not available and target in directed:
            directed.discard(target)
            self.server.hooks.notify(SESSION_DIRECTED, session, target, False)
        return False

    async def _outbound(self, stanza: domish.Element, session: Any, contact: str, kind: str) -> None:
        bare = session.bare
        try:
            change, transition = await self.roster.apply(bare, contact, outbound, kind)
        except RosterFull:
            session.deliver(stanzas.error_reply(stanza, "not-allowed", text="the roster is full"))
            return
        if transition.forward:
            # §3.1.2 and following: stamped with the bare JIDs.
            self.server.router.route(copy(stanza, frm=bare, to=contact))
        self._from_changed(bare, contact, change, transition)

    def _from_changed(self, bare: str, contact: str, change: Change, transition: Transition) -> None:
        """The contact gained (or lost) a subscription to the user: send presence (or unavailable)."""
        had = change.before is not None and change.before.subscription in FROM
        has = change.after is not None and change.after.subscription in FROM
        router = self.server.router
        if has and (not had or transition.auto_reply == SUBSCRIBED):
            for session in self.server.sessions.available(bare):
                router.route(copy(session.presence, frm=session.jid, to=contact))
        elif had and not has:
            for session in self.server.sessions.available(bare):
                router.route(stanzas.make("presence", type="unavailable", frm=session.jid, to=contact))

    # -- what arrives for a local account --------------------------------------------------------------

    @hook(PRESENCE_BARE)
    def to_bare(self, stanza: domish.Element, bare: str, sender: Any) -> bool:
        if not self._ready():
            return False
        kind = stanza.getAttribute("type")
        frm = stanza.getAttribute("from")
        contact = _bare_of(frm) if frm else None
        if kind in KINDS or kind == "probe":
            if contact is not None:
                if kind == "probe":
                    self.roster.spawn(bare, self._probe, bare, None, frm)
                else:
                    self.roster.spawn(bare, self._inbound, stanza, bare, contact, kind)
            return True
        if self.roster.busy(bare):
            # Keep presence in order behind subscription work still queued for this account.
            self.roster.spawn(bare, self._deliver_to_bare, stanza, bare)
            return True
        return False  # §8.5.2.1.2: available, unavailable, error: every available resource (router default)

    async def _deliver_to_bare(self, stanza: domish.Element, bare: str) -> None:
        for session in self.server.sessions.available(bare):
            session.deliver(stanza)

    @hook(PRESENCE_FULL)
    def to_full(self, stanza: domish.Element, bare: str, resource: str, session: Any, sender: Any) -> bool:
        if not self._ready() or stanza.getAttribute("type") != "probe":
            return False
        frm = stanza.getAttribute("from")
        if frm and _bare_of(frm):
            self.roster.spawn(bare, self._probe, bare, resource, frm)
        return True

    async def _inbound(self, stanza: domish.Element, bare: str, contact: str, kind: str) -> None:
        router = self.server.router
        if contact == bare:
            return
        if not await self.server.storage.accounts.exists(*split_bare(bare)):
            # RFC 6121 §8.5.1: no such user.
            if kind == SUBSCRIBE:
                router.route(stanzas.make("presence", type="unsubscribed", frm=bare, to=contact))
            return
        stamped = copy(stanza, frm=contact, to=bare)
        try:
            change, transition = await self.roster.apply(bare, contact, inbound, kind,
                                                         serialize(stamped) if kind == SUBSCRIBE else None)
        except RosterFull:
            self.log.info("dropped a subscription request from {contact} to {bare}: too many pending",
                          contact=contact, bare=bare)
            return
        if transition.auto_reply:
            router.route(stanzas.make("presence", type=transition.auto_reply, frm=bare, to=contact))
        self._from_changed(bare, contact, change, transition)
        if transition.forward:
            # A request for an account with no available resource waits in storage (presence/initial).
            for session in self.server.sessions.available(bare):
                session.deliver(stamped)

    async def _probe(self, bare: str, resource: str | None, prober: str) -> None:
        """RFC 6121 §4.3.2: answer a probe of ``bare`` (or one resource) only to subscribers."""
        router = self.server.router
        prober_bare = _bare_of(prober)
        if prober_bare != bare:
            item = await self.roster.item(bare, prober_bare)  # none for an account that does not exist either
            if item is None or item.subscription not in FROM:
                router.route(stanzas.make("presence", type="unsubscribed", frm=bare, to=prober_bare))
                return
        available = [s for s in self.server.sessions.available(bare) if resource in (None, s.resource)]
        for session in available:
            router.route(copy(session.presence, frm=session.jid, to=prober))
        if not available:
            frm = bare if resource is None else f"{bare}/{resource}"
            router.route(stanzas.make("presence", type="unavailable", frm=frm, to=prober))

    # -- a resource's own availability -----------------------------------------------------------------

    @hook(PRESENCE_BROADCAST)
    def broadcast(self, stanza: domish.Element, session: Any) -> None:
        if self._ready():
            self.roster.spawn(session.bare, self._broadcast, stanza, session, None)

    @hook(SESSION_UNBOUND)
    def unbound(self, session: Any, reason: str) -> None:
        if self._ready() and (session.presence is not None or session.directed):
            gone = stanzas.make("presence", type="unavailable", frm=session.jid)
            self.roster.spawn(session.bare, self._broadcast, gone, session, session.presence is not None)

    async def _broadcast(self, stanza: domish.Element, session: Any, was_available: bool | None) -> None:
        """RFC 6121 §4.2.2, §4.4.2, §4.5.2: to subscribers and to every available resource of the account."""
        state = session.data.setdefault(self.name, {})
        if was_available is None:
            was_available = state.get("announced", False)
        available = stanza.getAttribute("type") is None
        roster = await self.roster.roster(session.bare)
        router = self.server.router
        if available or was_available:
            for item in roster.items.values():
                if item.subscription in FROM:
                    router.route(copy(stanza, frm=session.jid, to=item.jid))
            for other in self.server.sessions.available(session.bare):
                other.deliver(copy(stanza, frm=session.jid, to=other.jid))
        state["announced"] = available
        if not available and session.directed:
            # §4.6.3: end directed presence (subscribers already got the broadcast).
            covered = {item.jid for item in roster.items.values() if item.subscription in FROM} \
                if was_available else set()
            for target in sorted(session.directed):
                if _bare_of(target) not in covered:
                    router.route(stanzas.make("presence", type="unavailable", frm=session.jid, to=target))
            session.directed.clear()
            self.server.hooks.notify(SESSION_DIRECTED, session, None, False)

    @hook(PRESENCE_INITIAL)
    def initial(self, session: Any) -> None:
        if self._ready():
            self.roster.spawn(session.bare, self._initial, session)

    async def _initial(self, session: Any) -> None:
        """RFC 6121 §4.2: probes, the account's other resources, and pending subscription requests."""
        bare = session.bare
        if session.presence is None or self.server.sessions.get(bare, session.resource) is not session:
            return
        roster = await self.roster.roster(bare)
        for item in roster.items.values():
            if item.subscription not in TO:
                continue
            contact_domain = split_bare(item.jid)[1] if "@" in item.jid else item.jid
            if "@" in item.jid and self.server.is_local_domain(contact_domain):
                # A local contact: answer as its server would, straight to the new resource.
                self.roster.spawn(item.jid, self._probe, item.jid, None, session.jid)
            else:
                self.server.router.route(stanzas.make("presence", type="probe", frm=bare, to=item.jid))
        for other in self.server.sessions.available(bare):
            if other is not session:
                session.deliver(copy(other.presence, frm=other.jid, to=session.jid))
        assert self.roster.store is not None
        for contact, xml in (await self.roster.store.pending(*split_bare(bare))).items():
            try:
                stanza = reparse(xml)
            except StreamFault as fault:  # a damaged row: say which, once, without a traceback
                self.log.error("stored subscription request from {contact} is unreadable: {fault}",
                               contact=contact, fault=fault)
                continue
            session.deliver(stanza)
