"""XEP-0077: In-Band Registration, on the vhosts whose ``register`` option is on (off by default).

- Before authentication, on a TLS stream only (the password travels in the clear inside the stream):
  ``get`` returns the fields, ``set`` with ``<username/>`` and ``<password/>`` creates the account.
  The ``<register/>`` stream feature is offered under the same conditions.
- After authentication: ``get`` answers ``<registered/>`` (the password is never returned), ``set``
  changes the password (TLS only) or, with ``<remove/>``, deletes the account, then ends every local
  session of it with a ``not-authorized`` stream error and fires ``account/removed``(user, domain).
- ``max-users`` (vhost option, 0 = unlimited) caps the accounts of a domain (``not-allowed``; checked
  before creating, so concurrent registrations may overshoot it by a few).
- Each client address (IPv6 by /64) may create :data:`THROTTLE_MAX` accounts per :data:`THROTTLE_WINDOW`
  seconds on this node, and each stream one account; beyond: ``policy-violation`` / ``not-acceptable``.
Errors never echo the request's payload (it holds a password, XEP-0077 §3.3).
"""

from __future__ import annotations

import weakref
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.words.xish import domish

from xmppcluster.auth.credentials import saslprep
from xmppcluster.auth.throttle import peer_key
from xmppcluster.core import stanza as stanzas
from xmppcluster.core.events import ACCOUNT_REMOVED, STREAM_PRE_AUTH_IQ
from xmppcluster.core.jid import InvalidJID, nodeprep, parse_jid
from xmppcluster.modules.base import Module, StanzaError, hook, iq
from xmppcluster.storage.errors import AccountExists, NoSuchAccount

REGISTER = "jabber:iq:register"
FEATURE = "http://jabber.org/features/iq-register"
#: Accounts one client address may create per window, per node.
THROTTLE_MAX = 5
THROTTLE_WINDOW = 3600.0
#: Addresses remembered by the throttle at most (the oldest are forgotten first).
THROTTLE_ENTRIES = 100_000
MAX_PASSWORD_BYTES = 1023
INSTRUCTIONS = "Choose a username and password to register with this server."


def error(request: domish.Element, condition: str, text: str | None = None,
          type: str | None = None) -> domish.Element:
    """An error reply to ``request`` without its payload."""
    reply = stanzas.error_reply(request, condition, text=text, type=type)
    reply.children = [c for c in reply.children if isinstance(c, domish.Element) and c.name == "error"]
    return reply


def _field(query: domish.Element, name: str) -> str | None:
    for child in query.elements(REGISTER, name):
        return str(child)
    return None


def _encrypted(stream: Any) -> bool:
    """The client's hop counts as encrypted: TLS, or what streams/peers.py accepts (loopback, trusted proxy)."""
    return stream.transport.channel_info().secure


def _is_domain(address: str, domain: str) -> bool:
    try:
        return parse_jid(address).full() == domain
    except InvalidJID:
        return False


class Registration(Module):
    name = REGISTER
    features = (REGISTER,)

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        #: client address -> times of its recent registrations (and those in progress)
        self._recent: dict[str, list[float]] = {}
        self._registered: weakref.WeakSet = weakref.WeakSet()

    def serves(self, domain: str | None) -> bool:
        """In-band registration is on for ``domain`` (vhost option ``register``)."""
        return (domain is not None and domain in self.domains
                and self.config.vhost(domain).register)

    def stream_features(self, stream: Any, stage: str) -> list[domish.Element]:
        if stage == "pre-auth" and self.serves(stream.domain) and _encrypted(stream):
            return [domish.Element((FEATURE, "register"))]
        return []

    # -- before authentication -------------------------------------------------------------------

    @hook(STREAM_PRE_AUTH_IQ)
    def pre_auth(self, stream: Any, request: domish.Element) -> bool:
        payload = stanzas.first_child(request)
        if payload is None or payload.uri != REGISTER:
            return False
        ensureDeferred(self._pre_auth(stream, request, payload)).addCallbacks(
            stream.send, lambda failure: self._failed(failure, stream.send, request))
        return True

    async def _pre_auth(self, stream: Any, request: domish.Element, query: domish.Element) -> domish.Element:
        try:
            to = request.getAttribute("to")
            if (to is not None and not _is_domain(to, stream.domain)) or not self.serves(stream.domain):
                raise StanzaError("service-unavailable")
            if not _encrypted(stream):
                raise StanzaError("not-authorized", "registration needs an encrypted stream")
            kind = request.getAttribute("type")
            if kind == "get":
                return self._form(request)
            if kind != "set":
                raise StanzaError("bad-request")
            if any(True for _ in query.elements(REGISTER, "remove")):
                raise StanzaError("unexpected-request", "authenticate before removing an account")
            await self._create(stream, query)
            return stanzas.result(request)
        except StanzaError as err:
            return error(request, err.condition, err.text, err.type)

    def _form(self, request: domish.Element) -> domish.Element:
        reply = stanzas.result(request)
        query = reply.addElement((REGISTER, "query"))
        query.addElement("instructions", content=INSTRUCTIONS)
        query.addElement("username")
        query.addElement("password")
        return reply

    async def _create(self, stream: Any, query: domish.Element) -> None:
        username, password = _field(query, "username"), _field(query, "password")
        if not username or not password:
            raise StanzaError("not-acceptable", "a username and a password are required")
        try:
            user = nodeprep(username.strip())
        except InvalidJID:
            raise StanzaError("not-acceptable", "this username is not allowed") from None
        self._check_password(password)
        if stream in self._registered:
            raise StanzaError("not-acceptable", "one registration per connection")
        domain = stream.domain
        limit = self.config.vhost(domain).max_users
        if limit and await self.server.storage.accounts.count(domain) >= limit:
            raise StanzaError("not-allowed", "this server accepts no more accounts")
        stamp = self._reserve(peer_key(stream.transport.peer))
        try:
            await self.server.storage.accounts.create(user, domain, password)
        except AccountExists:
            self._release(peer_key(stream.transport.peer), stamp)
            raise StanzaError("conflict", "this username is taken") from None
        except BaseException:
            self._release(peer_key(stream.transport.peer), stamp)
            raise
        self._registered.add(stream)
        self.log.info("in-band registration of {user}@{domain} from {peer}", user=user, domain=domain,
                      peer=stream.transport.peer)

    @staticmethod
    def _check_password(password: str) -> None:
        try:
            prepared = saslprep(password)
        except ValueError:
            prepared = ""
        if not prepared or len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
            raise StanzaError("not-acceptable", "this password is not allowed")

    def _reserve(self, key: str) -> float:
        """Count one registration from ``key``, or raise when it has used up its window."""
        now = self.server.clock.seconds()
        recent = [t for t in self._recent.pop(key, ()) if now - t < THROTTLE_WINDOW]
        if len(recent) >= THROTTLE_MAX:
            self._recent[key] = recent
            raise StanzaError("policy-violation", "too many registrations from your address; try later", "wait")
        recent.append(now)
        self._recent[key] = recent  # re-inserted: the dict stays ordered oldest first
        while len(self._recent) > THROTTLE_ENTRIES:
            del self._recent[next(iter(self._recent))]
        return now

    def _release(self, key: str, stamp: float) -> None:
        recent = self._recent.get(key)
        if recent and stamp in recent:
            recent.remove(stamp)

    # -- after authentication --------------------------------------------------------------------

    def _own(self, request: domish.Element, sender: Any) -> None:
        if sender is None:
            raise StanzaError("service-unavailable")
        to = request.getAttribute("to")
        if to is not None and "@" not in to:
            if not _is_domain(to, sender.domain):
                raise StanzaError("service-unavailable")
        elif self.target(request, sender) != sender.bare:
            raise StanzaError("forbidden")
        if not self.serves(sender.domain):
            raise StanzaError("service-unavailable")

    @iq("get", REGISTER, to=("server", "account"))
    def registered(self, request: domish.Element, sender: Any) -> domish.Element:
        try:
            self._own(request, sender)
        except StanzaError as err:
            return error(request, err.condition, err.text)
        reply = stanzas.result(request)
        query = reply.addElement((REGISTER, "query"))
        query.addElement("registered")
        query.addElement("username", content=sender.user)
        query.addElement("password")
        return reply

    @iq("set", REGISTER, to=("server", "account"))
    async def change(self, request: domish.Element, sender: Any) -> domish.Element | bool:
        try:
            self._own(request, sender)
            if sender.anonymous:
                raise StanzaError("not-allowed", "anonymous accounts cannot be changed")
            query = stanzas.first_child(request)
            if any(True for _ in query.elements(REGISTER, "remove")):
                if len(list(query.elements())) != 1:
                    raise StanzaError("bad-request", "<remove/> must be alone")
                await self._remove(request, sender)
                return False
            await self._change_password(query, sender)
        except StanzaError as err:
            return error(request, err.condition, err.text, err.type)
        return stanzas.result(request)

    async def _change_password(self, query: domish.Element, sender: Any) -> None:
        if not _encrypted(sender.stream):
            raise StanzaError("not-authorized", "change passwords over an encrypted stream")
        username, password = _field(query, "username"), _field(query, "password")
        if username is None or password is None:
            raise StanzaError("bad-request", "a username and a password are required")
        try:
            if nodeprep(username.strip()) != sender.user:
                raise StanzaError("not-allowed", "you may only change your own password")
        except InvalidJID:
            raise StanzaError("bad-request", "invalid username") from None
        self._check_password(password)
        try:
            await self.server.storage.accounts.set_password(sender.user, sender.domain, password)
        except NoSuchAccount:
            raise StanzaError("not-allowed", "no such account") from None
        self.log.info("password changed in-band for {bare}", bare=sender.bare)

    async def _remove(self, request: domish.Element, sender: Any) -> None:
        user, domain, bare = sender.user, sender.domain, sender.bare
        try:
            await self.server.storage.accounts.delete(user, domain)
        except NoSuchAccount:
            raise StanzaError("registration-required") from None
        self.log.info("account {bare} removed in-band", bare=bare)
        self.server.hooks.notify(ACCOUNT_REMOVED, user, domain)
        self.server.router.route(stanzas.result(request))
        for session in self.server.sessions.of(bare):
            session.close("not-authorized", "the account was removed")

    def _failed(self, failure: Any, send: Any, request: domish.Element) -> None:
        self.log.failure("in-band registration failed", failure)
        send(error(request, "internal-server-error"))
