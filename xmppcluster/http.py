"""The twisted.web Site of the HTTP ports: /http-bind (BOSH), /xmpp-websocket (RFC 7395), /.well-known/host-meta.

BOSH ports serve both paths, so one HTTP port can carry both transports; ws2s ports serve the
WebSocket endpoint at ``/`` as well.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.web.resource import Resource
from twisted.web.server import Site

if TYPE_CHECKING:
    from xmppcluster.config import Listener
    from xmppcluster.server import XMPPServer


class XmppSite(Site):
    """twisted.web's Site, negotiating HTTP/1.1 only over ALPN: BOSH and RFC 7395 WebSocket are HTTP/1.1."""

    def acceptableProtocols(self) -> list[bytes]:  # noqa: N802 (Twisted interface)
        return [b"http/1.1"]


def build_site(server: XMPPServer, listener: Listener) -> Site:
    """The Site for one BOSH or ws2s listener."""
    from xmppcluster.streams.bosh import limited_request
    from xmppcluster.streams.websocket import websocket_resource, websocket_root

    if listener.component == "ws2s":
        root = websocket_root(server, listener)
    else:
        from xmppcluster.streams.bosh import BoshResource

        root = Resource()
        bosh = BoshResource(server, listener)
        root.putChild(b"http-bind", bosh)
        root.putChild(b"xmpp-websocket", websocket_resource(server, listener))
    from xmppcluster.hostmeta import mount

    mount(root, server)  # /.well-known/host-meta[.json] (XEP-0156)
    site = XmppSite(root)
    # Stop storing a request body once it passes the BOSH limit (the stanza limit bounds WebSocket).
    site.requestFactory = limited_request(server.config.get("bosh", "max-body-size"))
    site.displayTracebacks = False
    site.noisy = False
    return site
