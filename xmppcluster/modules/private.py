"""XEP-0049: Private XML Storage. An account stores and reads back XML fragments keyed by namespace.

Only the account itself has access (others: ``forbidden``). Fragments in reserved namespaces
(``jabber:*``, ``http://jabber.org/*``, ``vcard-temp``) are refused with ``not-acceptable`` (XEP-0049
§2.3), as is a query without a child element. Each account may keep :data:`MAX_BYTES` of serialized
XML in total; a set beyond it gets ``policy-violation``. One set may carry several namespaces; each
replaces what was stored under its namespace.
"""

from __future__ import annotations

from typing import Any

from twisted.words.xish import domish

from xmppcluster.core import stanza as stanzas
from xmppcluster.core.serializer import serialize, tag
from xmppcluster.core.xml import parse_element
from xmppcluster.modules.base import Module, StanzaError, iq
from xmppcluster.modules.disco import requester
from xmppcluster.storage.account_data import PrivateStore, QuotaExceeded
from xmppcluster.storage.errors import NoSuchAccount

PRIVATE = "jabber:iq:private"
RESERVED_PREFIXES = ("jabber:", "http://jabber.org/", "vcard-temp")
#: Private XML one account may store, in bytes (all namespaces together).
MAX_BYTES = 262144


def _children(query: domish.Element) -> list[domish.Element]:
    children = list(query.elements())
    if not children:
        raise StanzaError("not-acceptable", "the query needs a child element in its own namespace")
    for child in children:
        if not child.uri or child.uri.startswith(RESERVED_PREFIXES):
            raise StanzaError("not-acceptable", f"namespace {child.uri!r} is reserved")
    return children


class PrivateStorage(Module):
    name = PRIVATE
    features = (PRIVATE,)
    account_features = (PRIVATE,)

    def start(self) -> None:
        self.store = PrivateStore(self.server.storage.db)

    def _own(self, request: domish.Element, sender: Any) -> None:
        if sender is None or requester(request) != self.target(request, sender):
            raise StanzaError("forbidden", "private XML is only for its owner")

    @iq("get", PRIVATE, to=("account",))
    async def get(self, request: domish.Element, sender: Any) -> domish.Element:
        self._own(request, sender)
        children = _children(stanzas.first_child(request))
        if len(children) > 1:
            raise StanzaError("bad-request", "ask for one namespace at a time")
        wanted = children[0]
        text = await self.store.get(sender.user, sender.domain, wanted.uri)
        reply = stanzas.result(request)
        if text is None:
            query = reply.addElement((PRIVATE, "query"))
            query.addElement((wanted.uri, wanted.name))
        else:
            limits = self.server.limits
            wrapped = tag("query", {"xmlns": PRIVATE}, text)
            reply.addChild(parse_element(wrapped, max_bytes=max(limits.max_stanza_bytes, len(wrapped.encode()) + 1),
                                         max_elements=limits.max_elements, max_depth=limits.max_depth))
        return reply

    @iq("set", PRIVATE, to=("account",))
    async def set(self, request: domish.Element, sender: Any) -> None:
        self._own(request, sender)
        items: dict[str, str] = {}
        for child in _children(stanzas.first_child(request)):
            items[child.uri] = items.get(child.uri, "") + serialize(child)
        try:
            await self.store.set(sender.user, sender.domain, items, MAX_BYTES)
        except QuotaExceeded:
            raise StanzaError("policy-violation", f"private storage is limited to {MAX_BYTES} bytes") from None
        except NoSuchAccount:
            raise StanzaError("not-allowed", "this account cannot store private XML") from None
        return None
