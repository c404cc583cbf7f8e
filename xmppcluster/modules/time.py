"""XEP-0202: Entity Time of the server, always given in UTC (``<tzo>+00:00</tzo>``)."""

from __future__ import annotations

from typing import Any

from twisted.words.xish import domish

from xmppcluster.core import stanza as stanzas
from xmppcluster.core.stanza import utc_stamp
from xmppcluster.modules.base import Module, iq

TIME = "urn:xmpp:time"


class EntityTime(Module):
    name = TIME
    features = (TIME,)

    @iq("get", TIME, to=("server",))
    def time(self, request: domish.Element, sender: Any) -> domish.Element:
        reply = stanzas.result(request)
        element = reply.addElement((TIME, "time"))
        element.addElement("tzo", content="+00:00")
        element.addElement("utc", content=utc_stamp(self.server.clock.seconds()))
        return reply
