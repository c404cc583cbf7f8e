"""XEP-0030: Service Discovery of the server and, on their behalf, of its accounts.

The server's features are exactly those of the loaded modules that serve the addressed domain, so a
module switched off in ``--sm-plugins`` disappears from disco#info. A request for a node of the server is
answered by the module that owns it (``disco_info``/``disco_items``, e.g. the ad-hoc commands node of
modules/adhoc.py, which lists only what the requester may run); any other node is item-not-found.
Requests to a bare JID are answered by the server (XEP-0030 §3.1 and §8) only to the account itself and
to entities allowed to see its presence (:func:`presence_authorized`); everyone else, and any request for
an unknown account, gets ``service-unavailable`` (disco#info) or an empty list (disco#items), so accounts
cannot be harvested.
"""

from __future__ import annotations

import inspect
from typing import Any

from twisted.words.xish import domish

from xmppcluster.core import stanza as stanzas
from xmppcluster.core.jid import parse_jid
from xmppcluster.modules.base import Module, StanzaError, iq

INFO = "http://jabber.org/protocol/disco#info"
ITEMS = "http://jabber.org/protocol/disco#items"


def serves(module: Module, domain: str) -> bool:
    """Whether ``module`` is active on ``domain`` (see ``Module.serves``)."""
    return bool(module.serves(domain))


def requester(request: domish.Element) -> str | None:
    """The bare JID that sent ``request`` (None for the server itself)."""
    frm = request.getAttribute("from")
    return frm.split("/", 1)[0] if frm else None


async def presence_authorized(server: Any, owner: str, who: str | None) -> bool:
    """May ``who`` (a bare JID) see the presence of the local account ``owner``?

    The account itself always may. Anyone else may when a loaded module (the roster, which knows the
    subscriptions) answers true from ``may_see_presence(owner, who)`` (a bool, Deferred or coroutine);
    with no such module only the owner is authorized.
    """
    if who is None:
        return False
    if who == owner:
        return True
    for module in server.modules.values():
        check = getattr(module, "may_see_presence", None)
        if check is None:
            continue
        answer = check(owner, who)
        if inspect.isawaitable(answer):
            answer = await answer
        if answer:
            return True
    return False


def _no_node(query: domish.Element) -> None:
    if query.getAttribute("node"):
        raise StanzaError("item-not-found")


def _reply(request: domish.Element, namespace: str) -> tuple[domish.Element, domish.Element]:
    reply = stanzas.result(request)
    return reply, reply.addElement((namespace, "query"))


def _info(request: domish.Element, identity: tuple[str, str], features: list[str]) -> domish.Element:
    reply, query = _reply(request, INFO)
    element = query.addElement("identity")
    element["category"], element["type"] = identity
    for feature in features:
        query.addElement("feature")["var"] = feature
    return reply


class Disco(Module):
    name = "disco"
    features = (INFO, ITEMS)
    account_features = (INFO, ITEMS)

    def server_features(self, domain: str) -> list[str]:
        """The features of ``domain``: the loaded modules' that serve it (``server.features()`` by default)."""
        found: list[str] = []
        for module in self.server.modules.values():
            if serves(module, domain):
                found.extend(f for f in module.features if f not in found)
        return found

    def _node(self, method: str, node: str, domain: str, request: domish.Element) -> Any:
        """The answer of the module that owns ``node`` (its ``disco_info``/``disco_items(node, domain,
        requester)`` returns non-None); item-not-found when none does."""
        for module in self.server.modules.values():
            answer = getattr(module, method, None)
            if answer is not None and serves(module, domain):
                found = answer(node, domain, requester(request))
                if found is not None:
                    return found
        raise StanzaError("item-not-found")

    @iq("get", INFO, to=("server",))
    def server_info(self, request: domish.Element, sender: Any) -> domish.Element:
        domain = parse_jid(request["to"]).host
        node = stanzas.first_child(request).getAttribute("node")
        if not node:
            return _info(request, ("server", "im"), self.server_features(domain))
        identities, features = self._node("disco_info", node, domain, request)
        reply, query = _reply(request, INFO)
        query["node"] = node
        for category, kind, name in identities:
            element = query.addElement("identity")
            element["category"], element["type"], element["name"] = category, kind, name
        for feature in features:
            query.addElement("feature")["var"] = feature
        return reply

    @iq("get", ITEMS, to=("server",))
    def server_items(self, request: domish.Element, sender: Any) -> domish.Element:
        node = stanzas.first_child(request).getAttribute("node")
        if not node:
            # The XEP-0114 components named under this domain (push.example.com for example.com).
            reply, query = _reply(request, ITEMS)
            suffix = "." + parse_jid(request["to"]).host
            for component in sorted(self.config.components):
                if component.endswith(suffix):
                    query.addElement("item")["jid"] = component
            return reply
        items = self._node("disco_items", node, parse_jid(request["to"]).host, request)
        reply, query = _reply(request, ITEMS)
        query["node"] = node
        for jid, item_node, name in items:
            item = query.addElement("item")
            item["jid"], item["node"], item["name"] = jid, item_node, name
        return reply

    async def _account_visible(self, bare: str, request: domish.Element, sender: Any) -> bool:
        """Authorized, and the account exists (an anonymous owner exists while it has a session)."""
        if not await presence_authorized(self.server, bare, requester(request)):
            return False
        user, _, domain = bare.partition("@")
        if sender is not None and sender.bare == bare:
            return True
        return await self.server.storage.accounts.exists(user, domain)

    @iq("get", INFO, to=("account",))
    async def account_info(self, request: domish.Element, sender: Any) -> domish.Element:
        bare = self.target(request, sender)
        if not await self._account_visible(bare, request, sender):
            raise StanzaError("service-unavailable")
        _no_node(stanzas.first_child(request))
        anonymous = sender is not None and sender.bare == bare and sender.anonymous
        identity = ("account", "anonymous" if anonymous else "registered")
        return _info(request, identity, self.server.account_features())

    @iq("get", ITEMS, to=("account",))
    async def account_items(self, request: domish.Element, sender: Any) -> domish.Element:
        bare = self.target(request, sender)
        reply, query = _reply(request, ITEMS)
        if not await self._account_visible(bare, request, sender):
            return reply
        _no_node(stanzas.first_child(request))
        for session in self.server.sessions.available(bare):
            query.addElement("item")["jid"] = session.jid
        return reply
