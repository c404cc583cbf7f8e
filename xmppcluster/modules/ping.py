"""XEP-0199: XMPP Ping. The server and every account answer."""

from xmppcluster.modules.base import Module, iq


class Ping(Module):
    name = "urn:xmpp:ping"
    features = ("urn:xmpp:ping",)

    @iq("get", "urn:xmpp:ping", to=("server", "account"))
    def ping(self, request, sender):
        return None
