"""XEP-0012: Last Activity. Server uptime; an account's last logout and its unavailable status.

Only the account itself and entities allowed to see its presence (see
:func:`xmppcluster.modules.disco.presence_authorized`; until a roster module answers, the owner alone)
get an answer; others get ``forbidden`` (XEP-0012 §3), also for requests to a full JID, which are then
never delivered to the client. An account with a connected resource on this node answers ``seconds='0'``.
The logout time is recorded when an account's last local session ends (not for anonymous accounts).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.words.xish import domish

from xmppcluster.core import stanza as stanzas
from xmppcluster.core.events import IQ_FULL, PRESENCE_BROADCAST, SESSION_UNBOUND
from xmppcluster.modules.base import Module, StanzaError, hook, iq
from xmppcluster.modules.disco import presence_authorized, requester
from xmppcluster.storage.account_data import LastActivityStore
from xmppcluster.storage.errors import NoSuchAccount

LAST = "jabber:iq:last"
MAX_STATUS_CHARS = 1024


def _reply(request: domish.Element, seconds: float, status: str = "") -> domish.Element:
    reply = stanzas.result(request)
    query = reply.addElement((LAST, "query"))
    query["seconds"] = str(max(0, int(seconds)))
    if status:
        query.addContent(status)
    return reply


def _status(presence: domish.Element) -> str:
    for child in presence.elements(presence.uri, "status"):
        return str(child)[:MAX_STATUS_CHARS]
    return ""


class LastActivity(Module):
    name = LAST
    features = (LAST,)
    account_features = (LAST,)

    def start(self) -> None:
        self.started = self.server.clock.seconds()
        self.store = LastActivityStore(self.server.storage.db, self.server.clock)

    def stop(self) -> Deferred:
        return ensureDeferred(self.store.flush())

    @iq("get", LAST, to=("server",))
    def uptime(self, request: domish.Element, sender: Any) -> domish.Element:
        return _reply(request, self.server.clock.seconds() - self.started)

    @iq("get", LAST, to=("account",))
    async def last_logout(self, request: domish.Element, sender: Any) -> domish.Element:
        bare = self.target(request, sender)
        if not await presence_authorized(self.server, bare, requester(request)):
            raise StanzaError("forbidden")
        if self.server.sessions.of(bare):
            return _reply(request, 0)
        user, _, domain = bare.partition("@")
        record = await self.store.get(user, domain)
        if record is None:
            if not await self.server.storage.accounts.exists(user, domain):
                raise StanzaError("service-unavailable")
            raise StanzaError("item-not-found", "no logout recorded")
        when, status = record
        return _reply(request, self.server.clock.seconds() - when, status)

    @hook(IQ_FULL, 50)
    def to_resource(self, stanza: domish.Element, bare: str, resource: str, session: Any, sender: Any) -> bool:
        """XEP-0012 §4: a query to a full JID reaches the client only from an authorized entity."""
        payload = stanzas.first_child(stanza)
        if (stanza.getAttribute("type") != "get" or payload is None or payload.uri != LAST
                or requester(stanza) == bare):
            return False
        ensureDeferred(self._to_resource(stanza, bare, resource)).addErrback(
            lambda failure: self.log.failure("last activity query to {bare} failed", failure, bare=bare))
        return True

    async def _to_resource(self, stanza: domish.Element, bare: str, resource: str) -> None:
        if not await presence_authorized(self.server, bare, requester(stanza)):
            self.server.router.bounce(stanza, "forbidden")
            return
        session = self.server.sessions.get(bare, resource)
        if session is None:
            self.server.router.bounce(stanza, "service-unavailable")
        else:
            session.deliver(stanza)

    @hook(PRESENCE_BROADCAST, 100)
    def remember_status(self, stanza: domish.Element, session: Any) -> bool:
        if stanza.getAttribute("type") == "unavailable":
            session.data[self.name] = _status(stanza)
        else:
            session.data.pop(self.name, None)
        return False

    @hook(SESSION_UNBOUND, 0)
    def logged_out(self, session: Any, reason: str) -> bool:
        """Record the logout time once the account's last local session is gone; never stops the event."""
        if self.server.sessions.of(session.bare) or session.anonymous:
            return False
        status = str(session.data.get(self.name) or "")
        ensureDeferred(self._record(session.user, session.domain, status)).addErrback(
            lambda failure: self.log.failure("recording last activity of {bare} failed", failure, bare=session.bare))
        return False

    async def _record(self, user: str, domain: str, status: str) -> None:
        try:
            await self.store.set(user, domain, int(self.server.clock.seconds()), status)
        except NoSuchAccount:
            pass  # the account was just deleted (in-band cancellation)
