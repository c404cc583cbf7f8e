"""XEP-0357 push notifications for accounts with no online resource.

A client enables an app server with ``<enable xmlns='urn:xmpp:push:0' jid=... node=...>`` (optionally a
XEP-0004 publish-options form) and disables it with ``<disable jid=... [node=...]/>``. Registrations live in
the shared database (:mod:`xmppcluster.storage.push`), so whichever node stores an offline message notifies.

When offline storage (:mod:`xmppcluster.modules.offline`) has stored a message for an account, each of its
app servers gets a pubsub publish of a ``urn:xmpp:push:summary`` form (message-count, last-message-sender;
never the body) with the stored publish-options, routed like any stanza (XEP-0114 component on any node of
the cluster, or a remote server over federation). Notifications are coalesced: at most one per registration
every :attr:`PushNotifications.min_interval` seconds on a node, carrying the count at the time it is sent.
An error reply from the app server (except a ``wait`` error) disables the registration (XEP-0357 §7); the
notification's IQ id names the registration, so the node that receives the reply can do that.

Stream management does not exist yet: when hibernated sessions come, they call :meth:`PushNotifications.notify`.
"""

from __future__ import annotations

import secrets
from typing import Any

from twisted.internet.defer import Deferred
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from xmppcluster.core import stanza as stanzas
from xmppcluster.core.background import Background
from xmppcluster.core.events import IQ_RESPONSE, MESSAGE_OFFLINE
from xmppcluster.core.jid import InvalidJID, parse_jid
from xmppcluster.core.serializer import serialize
from xmppcluster.core.sessions import Session
from xmppcluster.core.xml import StreamFault, reparse
from xmppcluster.modules import forms
from xmppcluster.modules.base import Module, StanzaError, hook, iq
from xmppcluster.modules.offline import STORE, offline_decision
from xmppcluster.storage.errors import NoSuchAccount
from xmppcluster.storage.push import PushStore, Registration, TooManyRegistrations

NS = "urn:xmpp:push:0"
PUBSUB = "http://jabber.org/protocol/pubsub"
SUMMARY = "urn:xmpp:push:summary"
ID_PREFIX = "push-"


class PushNotifications(Module):
    """XEP-0357: enable/disable app servers; notify them when a message is stored offline."""

    name = "push"
    account_features = (NS,)

    #: App servers (jid, node) one account may enable.
    max_registrations = 10
    #: Bytes of the serialized publish-options form kept per registration.
    max_options_bytes = 4096
    #: Characters of a node name.
    max_node_chars = 512
    #: Seconds between two notifications of one registration from one node (more are coalesced).
    min_interval = 5.0

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.store: PushStore | None = None
        #: (bare, jid, node) -> when the last notification went out
        self._last: dict[tuple[str, str, str], float] = {}
        #: (bare, jid, node) -> the delayed coalesced notification
        self._later: dict[tuple[str, str, str], Any] = {}
        #: (bare, jid, node) -> the last sender seen while a notification waits
        self._sender: dict[tuple[str, str, str], str] = {}
        self._work = Background(self.log, "push")

    def start(self) -> None:
        db = getattr(self.server.storage, "db", None)
        self.store = PushStore(db) if db is not None else None

    def stop(self) -> Deferred:
        for call in self._later.values():
            if call.active():
                call.cancel()
        self._later.clear()
        return self._work.drain()

    # -- enable / disable ------------------------------------------------------------------------

    def _own(self, request: domish.Element, sender: Session | None) -> tuple[str, str]:
        if sender is None or self.target(request, sender) != sender.bare:
            raise StanzaError("forbidden", "push is enabled by the account's own client")
        if self.store is None:
            raise StanzaError("service-unavailable")
        user, _, domain = sender.bare.partition("@")
        return user, domain

    def _app_server(self, payload: domish.Element) -> str:
        text = payload.getAttribute("jid")
        if not text:
            raise StanzaError("bad-request", "the app server 'jid' is missing")
        try:
            jid = parse_jid(text)
        except InvalidJID:
            raise StanzaError("jid-malformed") from None
        if self.server.is_local_domain(jid.host):
            raise StanzaError("not-acceptable", "the app server cannot be a local account or this server")
        return jid.full()

    @iq("set", NS, to=("account",))
    async def set_push(self, request: domish.Element, sender: Session | None) -> None:
        user, domain = self._own(request, sender)
        assert self.store is not None
        payload = stanzas.first_child(request)
        jid = self._app_server(payload)
        node = payload.getAttribute("node")
        if payload.name == "disable":
            await self.store.disable(user, domain, jid, node or None)
            return None
        if payload.name != "enable":
            raise StanzaError("bad-request")
        if not node or len(node) > self.max_node_chars:
            raise StanzaError("bad-request", f"'node' is required, at most {self.max_node_chars} characters")
        options = self._options(payload)
        try:
            await self.store.enable(user, domain, jid, node, options, secrets.token_hex(8),
                                    limit=self.max_registrations, now=int(self.server.clock.seconds()))
        except TooManyRegistrations:
            raise StanzaError("resource-constraint", f"at most {self.max_registrations} push registrations",
                              type="wait") from None
        except NoSuchAccount:
            raise StanzaError("item-not-found") from None
        return None

    def _options(self, payload: domish.Element) -> str:
        """The publish-options form, rebuilt from its submitted values and serialized ('' when none)."""
        form = forms.find(payload)
        if form is None:
            return ""
        values = forms.parse_submit(form)
        clean = domish.Element((forms.DATA, "x"))
        clean["type"] = "submit"
        for var, found in values.items():
            field = clean.addElement("field")
            field["var"] = var
            for value in found:
                field.addElement("value", content=value)
        text = serialize(clean)
        if len(text.encode("utf-8")) > self.max_options_bytes:
            raise StanzaError("not-acceptable", f"publish-options over {self.max_options_bytes} bytes")
        return text

    # -- notifying -------------------------------------------------------------------------------

    @hook(MESSAGE_OFFLINE, 10)
    def message_offline(self, stanza: domish.Element, bare: str) -> bool:
        """Watch (never take) messages going to offline storage: notify once the store is over."""
        if self.store is None or not self.serves(bare.partition("@")[2]) or offline_decision(stanza) != STORE:
            return False
        sender = stanza.getAttribute("from") or ""
        # Offline storage takes the stanza right after this handler: ask it for the store's end next turn.
        self.server.clock.callLater(0, self._after_store, stanza, bare, sender)
        return False

    def _after_store(self, stanza: domish.Element, bare: str, sender: str) -> None:
        offline = self.server.modules.get("msgoffline")
        storing = offline.storing(stanza) if offline is not None else None
        if storing is None:
            self.notify(bare, sender)
        else:
            storing.addCallback(lambda _: self.notify(bare, sender))

    def notify(self, bare: str, sender: str) -> Deferred:
        """Tell the app servers of ``bare`` that something waits for it (from ``sender``): the one entry
        point, also for hibernated sessions once stream management exists."""
        return self._work.run(self._notify(bare, sender), "notification")

    async def _notify(self, bare: str, sender: str) -> None:
        if self.store is None:
            return
        user, _, domain = bare.partition("@")
        for registration in await self.store.list(user, domain):
            key = (bare, registration.jid, registration.node)
            self._sender[key] = sender
            if key in self._later:
                continue  # a coalesced notification is already due
            now = float(self.server.clock.seconds())
            last = self._last.get(key)
            if last is None or now - last >= self.min_interval:
                await self._send(key)
            else:
                self._later[key] = self.server.clock.callLater(last + self.min_interval - now, self._due, key)

    def _due(self, key: tuple[str, str, str]) -> None:
        self._later.pop(key, None)
        self._work.run(self._send(key), "notification")

    async def _send(self, key: tuple[str, str, str]) -> None:
        assert self.store is not None
        bare, jid, node = key
        user, _, domain = bare.partition("@")
        sender = self._sender.pop(key, "")
        registration = next((r for r in await self.store.list(user, domain) if (r.jid, r.node) == (jid, node)),
                            None)
        if registration is None:
            return
        offline = self.server.modules.get("msgoffline")
        count = await offline.store.count(user, domain) if offline is not None and offline.store else 0
        if count <= 0:
            return  # delivered meanwhile
        self._prune()
        self._last[key] = float(self.server.clock.seconds())
        self.server.router.route(self._notification(bare, registration, count, sender))

    def _prune(self) -> None:
        if len(self._last) > 10_000:
            now = float(self.server.clock.seconds())
            for key in [k for k, t in self._last.items() if now - t >= self.min_interval]:
                del self._last[key]

    def _notification(self, bare: str, registration: Registration, count: int, sender: str) -> domish.Element:
        iq_ = stanzas.make("iq", to=registration.jid, frm=bare, type="set",
                           id=f"{ID_PREFIX}{registration.token}-{secrets.token_hex(4)}")
        pubsub = iq_.addElement((PUBSUB, "pubsub"))
        publish = pubsub.addElement("publish")
        publish["node"] = registration.node
        notification = publish.addElement("item").addElement((NS, "notification"))
        fields = [forms.Field("FORM_TYPE", "hidden", values=[SUMMARY]),
                  forms.Field("message-count", "text-single", values=[str(count)])]
        if sender:
            fields.append(forms.Field("last-message-sender", "jid-single", values=[sender]))
        notification.addChild(forms.build("form", fields))
        if registration.options:
            try:
                pubsub.addElement("publish-options").addChild(reparse(registration.options))
            except StreamFault:
                self.log.error("unreadable publish-options of a push registration of {bare}", bare=bare)
        return iq_

    # -- app server replies ----------------------------------------------------------------------

    @hook(IQ_RESPONSE)
    def response(self, stanza: domish.Element, target: str, sender: Any) -> bool:
        """Take the app server's reply to a notification; an error (but ``wait``) disables the registration."""
        ident = stanza.getAttribute("id") or ""
        if target != "account" or not ident.startswith(ID_PREFIX) or self.store is None:
            return False
        if stanza.getAttribute("type") == "error":
            error = next((child for child in stanza.elements() if child.name == "error"), None)
            if error is None or error.getAttribute("type") != "wait":
                token = ident[len(ID_PREFIX):].partition("-")[0]
                try:
                    app = parse_jid(stanza.getAttribute("from") or "").full()
                    owner: JID = parse_jid(stanza.getAttribute("to") or "")
                except InvalidJID:
                    return True
                self._work.run(self._disable(owner.user or "", owner.host, app, token), "disable")
        return True

    async def _disable(self, user: str, domain: str, app: str, token: str) -> None:
        assert self.store is not None
        if await self.store.disable_token(user, domain, app, token):
            self.log.info("push registration of {user}@{domain} at {app} disabled: the app server answered "
                          "an error", user=user, domain=domain, app=app)
