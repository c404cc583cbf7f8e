"""XEP-0156 discovery: ``/.well-known/host-meta`` (XRD) and ``/.well-known/host-meta.json`` (JRD).

The answer lists the BOSH (``https://``) and WebSocket (``wss://``) URLs of every live node, by node host name, so
a web client can pick one node at random and retry another when it fails (no load balancer needed; each node
presents a certificate for its own name, which the browser can verify).

- Live nodes: this node, plus the peers it has a cluster link to (``server.cluster.links``); a node that died
  disappears when its link does.  Every node is assumed to have the same listener layout as this one.
- Only direct-TLS listeners are listed (XEP-0156: ``https://`` and ``wss://`` URLs only).  BOSH listeners give
  ``/http-bind``; ws2s listeners give ``/``; a BOSH listener also gives ``/xmpp-websocket`` when no ws2s listener
  is TLS.
- The domain asked for is ``?domain=`` or else the ``Host`` header; it must be a hosted vhost, else 404.
- ``Access-Control-Allow-Origin: *`` on these two files only; ``Cache-Control: no-cache`` (membership changes).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, NamedTuple

from twisted.web.resource import Resource

from xmppcluster.core.serializer import tag

if TYPE_CHECKING:
    from twisted.web.server import Request

    from xmppcluster.config import Config
    from xmppcluster.core.server import XMPPServer

__all__ = ["REL_BOSH", "REL_WEBSOCKET", "XRD_NS", "HostMetaResource", "Link", "host_meta_links", "live_nodes",
           "mount", "render_jrd", "render_xrd", "requested_domain", "well_known_resource"]

XRD_NS = "http://docs.oasis-open.org/ns/xri/xrd-1.0"
REL_BOSH = "urn:xmpp:alt-connections:xbosh"
REL_WEBSOCKET = "urn:xmpp:alt-connections:websocket"
XRD_TYPE = b"application/xrd+xml; charset=utf-8"
JRD_TYPE = b"application/json"
_MAX_DOMAIN = 1023


class Link(NamedTuple):
    rel: str
    href: str


def live_nodes(server: XMPPServer) -> list[str]:
    """Host names of the nodes that can take a client now: this one and the linked peers, sorted."""
    names = {server.node_name}
    cluster = getattr(server, "cluster", None)
    if cluster is not None:
        names.update(cluster.links)
    return sorted(names)


def _templates(config: Config) -> list[tuple[str, str, int, str]]:
    """(rel, scheme, port, path) of each TLS endpoint of this node's listener layout."""
    ws2s = [lst for lst in config.listeners("ws2s") if lst.tls and lst.type == "accept"]
    found = [(REL_WEBSOCKET, "wss", lst.port, "/") for lst in ws2s]
    for lst in config.listeners("bosh"):
        if lst.tls and lst.type == "accept":
            found.append((REL_BOSH, "https", lst.port, "/http-bind"))
            if not ws2s:
                found.append((REL_WEBSOCKET, "wss", lst.port, "/xmpp-websocket"))
    return found


def host_meta_links(server: XMPPServer) -> list[Link]:
    """Every link to publish: each TLS endpoint on each live node."""
    templates = _templates(server.config)
    return [Link(rel, f"{scheme}://{node}:{port}{path}")
            for node in live_nodes(server) for rel, scheme, port, path in templates]


def render_xrd(links: list[Link]) -> bytes:
    """The XRD document (RFC 6415) with one ``<Link/>`` per entry."""
    lines = ["<?xml version='1.0' encoding='utf-8'?>", f"<XRD xmlns='{XRD_NS}'>"]
    lines += ["  " + tag("Link", {"rel": link.rel, "href": link.href}) for link in links]
    lines.append("</XRD>")
    return ("\n".join(lines) + "\n").encode("utf-8")


def render_jrd(links: list[Link]) -> bytes:
    """The JRD document (RFC 6415 appendix A)."""
    return json.dumps({"links": [{"rel": link.rel, "href": link.href} for link in links]}, indent=1).encode()


def requested_domain(request: Request) -> str | None:
    """``?domain=`` if given, else the Host header without its port; lower case, no trailing dot."""
    given = request.args.get(b"domain")
    raw = given[0] if given else (request.getHeader(b"host") or b"")
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "replace")
    if len(raw) > _MAX_DOMAIN:
        return None
    text = raw.decode("utf-8", "replace").strip()
    if not given:
        if text.startswith("["):  # an IPv6 literal never names a vhost
            return None
        text = text.rpartition(":")[0] if ":" in text else text
    return text.rstrip(".").lower() or None


class HostMetaResource(Resource):
    """One host-meta file, XRD or JRD (``as_json=True``)."""

    isLeaf = True

    def __init__(self, server: XMPPServer, *, as_json: bool = False) -> None:
        super().__init__()
        self.xmpp = server
        self.as_json = as_json

    def _cors(self, request: Request) -> None:
        request.setHeader(b"Access-Control-Allow-Origin", b"*")

    def render_OPTIONS(self, request: Request) -> bytes:  # noqa: N802 (twisted.web)
        self._cors(request)
        request.setHeader(b"Access-Control-Allow-Methods", b"GET, HEAD, OPTIONS")
        request.setHeader(b"Access-Control-Max-Age", b"86400")
        request.setResponseCode(204)
        return b""

    def render_GET(self, request: Request) -> bytes:  # noqa: N802 (twisted.web)
        self._cors(request)
        domain = requested_domain(request)
        if request.postpath or domain is None or not self.xmpp.is_local_domain(domain):
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"Not found: not a domain served here\n"
        links = host_meta_links(self.xmpp)
        request.setHeader(b"Content-Type", JRD_TYPE if self.as_json else XRD_TYPE)
        request.setHeader(b"Cache-Control", b"no-cache")
        return render_jrd(links) if self.as_json else render_xrd(links)


def well_known_resource(server: XMPPServer) -> Resource:
    """``/.well-known`` holding ``host-meta`` and ``host-meta.json`` (see :func:`mount`)."""
    root = Resource()
    root.putChild(b"host-meta", HostMetaResource(server))
    root.putChild(b"host-meta.json", HostMetaResource(server, as_json=True))
    return root


def mount(root: Any, server: XMPPServer) -> None:
    """Add ``/.well-known/host-meta[.json]`` to a site's root resource."""
    root.putChild(b".well-known", well_known_resource(server))
