"""XEP-0092: Software Version of the server.

Name and version only: the operating system (``<os/>``, optional in XEP-0092) is not disclosed, since
it helps an attacker more than a user (XEP-0092 Security Considerations).
"""

from __future__ import annotations

from typing import Any

from twisted.words.xish import domish

import xmppcluster
from xmppcluster.core import stanza as stanzas
from xmppcluster.modules.base import Module, iq

VERSION = "jabber:iq:version"


class Version(Module):
    name = VERSION
    features = (VERSION,)

    @iq("get", VERSION, to=("server",))
    def version(self, request: domish.Element, sender: Any) -> domish.Element:
        reply = stanzas.result(request)
        query = reply.addElement((VERSION, "query"))
        query.addElement("name", content="xmppcluster")
        query.addElement("version", content=xmppcluster.__version__)
        return reply
