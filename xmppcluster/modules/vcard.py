"""XEP-0054: vcard-temp. Anyone may read an account's vCard; only the account itself may change it.

A missing vCard reads as an empty ``<vCard/>`` for its owner; for anyone else a missing vCard and a
missing account give the same ``service-unavailable`` (XEP-0054 §3.3, against directory harvesting).
A vCard larger than ``--vcard-max-size`` bytes (serialized) is refused with ``policy-violation``: the
request is well-formed, it breaks a local limit (RFC 6120 §8.3.3.12). Setting an empty ``<vCard/>``
deletes the stored one.
"""

from __future__ import annotations

from typing import Any

from twisted.words.xish import domish

from xmppcluster.core import stanza as stanzas
from xmppcluster.core.serializer import serialize
from xmppcluster.core.xml import parse_element
from xmppcluster.modules.base import Module, StanzaError, iq
from xmppcluster.modules.disco import requester
from xmppcluster.storage.account_data import VCardStore
from xmppcluster.storage.errors import NoSuchAccount

VCARD = "vcard-temp"


class VCard(Module):
    name = VCARD
    features = (VCARD,)
    account_features = (VCARD,)

    def start(self) -> None:
        self.store = VCardStore(self.server.storage.db)
        self.max_size = self.config.quotas.vcard_max_bytes

    @iq("get", VCARD, to=("account",))
    async def get(self, request: domish.Element, sender: Any) -> domish.Element:
        bare = self.target(request, sender)
        user, _, domain = bare.partition("@")
        text = await self.store.get(user, domain)
        reply = stanzas.result(request)
        if text is not None:
            limits = self.server.limits
            reply.addChild(parse_element(text, max_bytes=max(limits.max_stanza_bytes, len(text.encode()) + 1),
                                         max_elements=limits.max_elements, max_depth=limits.max_depth))
        elif requester(request) == bare:
            reply.addElement((VCARD, "vCard"))
        else:
            raise StanzaError("service-unavailable")
        return reply

    @iq("set", VCARD, to=("account",))
    async def set(self, request: domish.Element, sender: Any) -> None:
        bare = self.target(request, sender)
        if sender is None or requester(request) != bare:
            raise StanzaError("forbidden", "only the account itself may change its vCard")
        vcard = stanzas.first_child(request)
        if vcard.name != "vCard":
            raise StanzaError("bad-request", "expected <vCard xmlns='vcard-temp'/>")
        text = serialize(vcard) if any(True for _ in vcard.elements()) else None
        if text is not None and len(text.encode("utf-8")) > self.max_size:
            raise StanzaError("policy-violation", f"a vCard may have at most {self.max_size} bytes")
        try:
            await self.store.set(sender.user, sender.domain, text)
        except NoSuchAccount:
            raise StanzaError("not-allowed", "this account cannot store a vCard") from None
        return None
