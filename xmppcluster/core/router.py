"""The one place that decides where a stanza goes (RFC 6120 §10, RFC 6121 §8.5).

Routing is by dictionary lookups on the already-parsed stanza: nothing is re-parsed or serialized here.
Feature modules extend delivery through events (``message/bare``, ``presence/bare``, ...: core/events.py); the defaults
below implement the bare rules so that a server with no modules still routes correctly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.words.xish import domish

from xmppcluster.core import stanza as stanzas
from xmppcluster.core.events import (
    IQ_BARE,
    IQ_RESPONSE,
    MESSAGE_BARE,
    MESSAGE_OFFLINE,
    PRESENCE_BARE,
    PRESENCE_BROADCAST,
    PRESENCE_INITIAL,
    ROUTE_REMOTE,
    TO_FULL,
    TO_SERVER,
)
from xmppcluster.core.jid import InvalidJID, parse_jid
from xmppcluster.core.sessions import Session
from xmppcluster.core.stanza import StanzaError

if TYPE_CHECKING:
    from xmppcluster.core.server import XMPPServer

log = Logger()

IQ_REQUEST = frozenset(("get", "set"))
#: The ``type`` values RFC 6120 §8.2.3 and RFC 6121 §4.7.1 define (None: no attribute, i.e. available).
IQ_TYPES = frozenset(("get", "set", "result", "error"))
PRESENCE_TYPES = frozenset((None, "unavailable", "subscribe", "subscribed", "unsubscribe", "unsubscribed",
                            "probe", "error"))
# A message of a type it does not know is a normal message (RFC 6121 §5.2.2): messages are not checked.


def _domain_of(stanza: domish.Element, sender: Session | None) -> str | None:
    """The local domain an IQ is addressed to (the sender's own when it has no ``to``)."""
    to = stanza.getAttribute("to")
    if to is None:
        return sender.domain if sender is not None else None
    return to.partition("@")[2].partition("/")[0] if "@" in to else to.partition("/")[0]


def _priority(presence: domish.Element) -> int:
    """The <priority/> of a presence, clamped to -128..127 (RFC 6121 §4.7.2.3); 0 when absent or bad."""
    for child in presence.elements(presence.uri, "priority"):
        try:
            return max(-128, min(127, int(str(child).strip())))
        except ValueError:
            return 0
    return 0


def _finished(result: object, sender: Session) -> object:
    sender.request_finished()
    return result


class Router:
    """Routes stanzas between local sessions, the server itself, and its modules."""

    def __init__(self, server: XMPPServer) -> None:
        self.server = server
        self.sessions = server.sessions
        self.hooks = server.hooks
        #: (iq type, payload namespace, "server"|"account") -> handler(request, sender)
        self.iq_handlers: dict[tuple[str, str, str], object] = {}

    # -- entry point ---------------------------------------------------------------------------

    def route(self, stanza: domish.Element, sender: Session | None = None) -> None:
        """Deliver ``stanza``; its ``from`` is already trustworthy (stamped by the stream core)."""
        name = stanza.name
        if name not in TO_FULL:
            log.warn("not routing a <{name}/>: not a stanza", name=name)
            return
        if name != "message" and stanza.getAttribute("type") not in (IQ_TYPES if name == "iq" else PRESENCE_TYPES):
            self.bounce(stanza, "bad-request", f"unknown {name} type")
            return
        to = stanza.getAttribute("to")
        if to is None:
            if sender is None:
                return
            if name == "presence":
                self._presence_update(stanza, sender)
            else:
                self._to_account(name, stanza, sender.bare, sender, own=True)
            return
        try:
            target = parse_jid(to)
        except InvalidJID:
            self.bounce(stanza, "jid-malformed")
            return
        if not self.server.is_local_domain(target.host):
            if not self.hooks.dispatch(ROUTE_REMOTE, stanza, target, sender):
                self.bounce(stanza, "remote-server-not-found")
            return
        if target.user is None:
            if target.resource is None:
                self._to_server(name, stanza, sender)
            else:
                self.bounce(stanza, "service-unavailable")
            return
        bare = f"{target.user}@{target.host}"
        if target.resource is None:
            self._to_account(name, stanza, bare, sender, own=sender is not None and sender.bare == bare)
        else:
            self._to_full(name, stanza, bare, target.resource, sender)

    # -- destinations ----------------------------------------------------------------------------

    def _to_server(self, name: str, stanza: domish.Element, sender: Session | None) -> None:
        if name == "iq":
            self._iq(stanza, "server", sender)
        elif not self.hooks.dispatch(TO_SERVER[name], stanza, sender) and name == "message":
            if stanza.getAttribute("type") not in ("error", "groupchat", "headline"):
                self.bounce(stanza, "service-unavailable")

    def _to_account(self, name: str, stanza: domish.Element, bare: str, sender: Session | None,
                    own: bool) -> None:
        if name == "iq":
            if not self.hooks.dispatch(IQ_BARE, stanza, bare, sender):
                self._iq(stanza, "account", sender)
        elif name == "message":
            if not self.hooks.dispatch(MESSAGE_BARE, stanza, bare, sender):
                self.deliver_message_to_bare(stanza, bare)
        elif name == "presence":
            if not self.hooks.dispatch(PRESENCE_BARE, stanza, bare, sender):
                for session in self.sessions.available(bare):
                    session.deliver(stanza)

    def _to_full(self, name: str, stanza: domish.Element, bare: str, resource: str,
                 sender: Session | None) -> None:
        session = self.sessions.get(bare, resource)
        if self.hooks.dispatch(TO_FULL[name], stanza, bare, resource, session, sender):
            return
        if session is not None:
            session.deliver(stanza)
            return
        kind = stanza.getAttribute("type")
        if name == "message":
            # RFC 6121 §8.5.3.2.1, no such resource: chat goes to the bare JID; normal and groupchat get
            # an error; headline and error are ignored.
            if kind == "chat":
                self._to_account(name, stanza, bare, sender, own=False)
            elif kind not in ("error", "headline"):
                self.bounce(stanza, "service-unavailable")
        elif name == "iq":
            if kind in IQ_REQUEST:
                self.bounce(stanza, "service-unavailable")
        elif name == "presence" and kind in ("subscribe", "subscribed", "unsubscribe", "unsubscribed"):
            self._to_account(name, stanza, bare, sender, own=False)

    # -- presence ------------------------------------------------------------------------------

    def _presence_update(self, stanza: domish.Element, session: Session) -> None:
        """Presence without ``to``: the session's own availability (RFC 6121 §4.2, §4.4, §4.5).

        The core keeps the state routing depends on (availability, priority); the presence module
        broadcasts it (``presence/broadcast``); ``presence/initial`` follows a first available presence.
        Subscription requests and probes need a ``to``; an ``error`` is dropped (never answered).
        """
        kind = stanza.getAttribute("type")
        if kind not in (None, "unavailable"):
            self.bounce(stanza, "bad-request", f"a presence of type {kind} needs a 'to'")
            return
        initial = session.presence is None and kind is None
        if kind is None:
            session.priority = _priority(stanza)
            session.presence = stanza
        else:
            session.presence = None
        self.hooks.notify(PRESENCE_BROADCAST, stanza, session)
        if initial:
            self.hooks.notify(PRESENCE_INITIAL, session)

    # -- messages --------------------------------------------------------------------------------

    def deliver_message_to_bare(self, stanza: domish.Element, bare: str) -> None:
        """RFC 6121 §8.5.2: pick the resources of ``bare`` that take this message, else go offline."""
        kind = stanza.getAttribute("type") or "normal"
        if kind == "error":
            return
        if kind == "groupchat":
            self.bounce(stanza, "service-unavailable")
            return
        eligible = self.message_recipients(bare, kind)
        if eligible:
            for session in eligible:
                session.deliver(stanza)
            return
        if kind == "headline":
            return
        if not self.hooks.dispatch(MESSAGE_OFFLINE, stanza, bare):
            self.bounce(stanza, "service-unavailable")

    def message_recipients(self, bare: str, kind: str) -> list[Session]:
        """The resources of ``bare`` that take a message of type ``kind`` (normal, chat or headline) sent to the
        bare JID (RFC 6121 §8.5.2.1): available, non-negative priority, and for all but headline the highest."""
        eligible = [s for s in self.sessions.available(bare) if s.priority >= 0]
        if eligible and kind != "headline":
            top = max(s.priority for s in eligible)
            eligible = [s for s in eligible if s.priority == top]
        return eligible

    def undeliverable(self, stanza: domish.Element, bare: str) -> None:
        """A stanza for a session that vanished on the way (e.g. its node died): the RFC 6121 fallback.

        Messages that would have been delivered go to the account again (other resources, or offline
        storage); IQ requests get ``service-unavailable``; anything else is dropped.
        """
        kind = stanza.getAttribute("type")
        if stanza.name == "message" and kind in (None, "normal", "chat"):
            if not self.hooks.dispatch(MESSAGE_BARE, stanza, bare, None):
                self.deliver_message_to_bare(stanza, bare)
        elif stanza.name == "iq" and kind in IQ_REQUEST:
            self.bounce(stanza, "service-unavailable")

    # -- IQ ----------------------------------------------------------------------------------------

    def _iq(self, stanza: domish.Element, target: str, sender: Session | None) -> None:
        kind = stanza.getAttribute("type")
        if kind not in IQ_REQUEST:
            if kind in ("result", "error"):
                self.hooks.dispatch(IQ_RESPONSE, stanza, target, sender)
            else:
                self.bounce(stanza, "bad-request")
            return
        payload = stanzas.first_child(stanza)
        if payload is None:
            self.bounce(stanza, "bad-request")
            return
        handler = self.iq_handlers.get((kind, payload.uri, target))
        if handler is None or not handler.__self__.serves(_domain_of(stanza, sender)):
            self.bounce(stanza, "service-unavailable")
            return
        try:
            reply = handler(stanza, sender)
        except StanzaError as err:
            self.bounce(stanza, err.condition, err.text, err.type)
            return
        except Exception:
            log.failure("IQ handler for {ns} failed", ns=payload.uri)
            self.bounce(stanza, "internal-server-error")
            return
        if isinstance(reply, Deferred) or hasattr(reply, "__await__"):
            pending = ensureDeferred(reply)
            if sender is not None:
                # The client's input waits while too many of its requests are being answered.
                sender.request_started()
                pending.addBoth(_finished, sender)
            pending.addCallbacks(
                lambda value: self._answer(stanza, value),
                lambda failure: self._handler_failed(stanza, failure, payload.uri))
        else:
            self._answer(stanza, reply)

    def _answer(self, request: domish.Element, reply: domish.Element | None) -> None:
        if reply is False:  # the handler answered by itself
            return
        if reply is None:
            reply = stanzas.result(request)
        self.route(reply)

    def _handler_failed(self, request: domish.Element, failure, namespace: str) -> None:
        if failure.check(StanzaError):
            err = failure.value
            self.bounce(request, err.condition, err.text, err.type)
            return
        log.failure("IQ handler for {ns} failed", failure, ns=namespace)
        self.bounce(request, "internal-server-error")

    # -- errors ----------------------------------------------------------------------------------

    def bounce(self, stanza: domish.Element, condition: str, text: str | None = None,
                type: str | None = None) -> None:
        """Answer a stanza with an error, unless it is an error itself (never bounce errors)."""
        if stanza.getAttribute("type") == "error" or not stanza.hasAttribute("from"):
            return
        if stanza.name == "presence" and condition not in ("jid-malformed", "bad-request"):
            return
        self.route(stanzas.error_reply(stanza, condition, type=type, text=text))
