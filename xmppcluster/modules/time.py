"""XEP-0202: Entity Time of the server, always given in UTC (``<tzo>+00:00</tzo>``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from twisted.words.xish import domish

from xmppcluster import stanza as stanzas
from xmppcluster.modules.base import Module, iq

TIME = "urn:xmpp:time"


def utc_stamp(seconds: float) -> str:
    """XEP-0082 DateTime in UTC, with milliseconds: ``2006-12-19T17:58:35.123Z``."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


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
