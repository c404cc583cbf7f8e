"""The web chat: Converse.js served by every node at ``/chat`` (``/`` redirects there), configured by the server.

- ``/chat/`` the page: no inline script or style; it loads ``dist/converse.min.js`` and ``app.js``.
- ``/chat/config.json`` what ``app.js`` needs: the domain, the title, and per live node its WebSocket and BOSH
  URLs (this node first under the name the browser used, then the other live nodes by name).  ``app.js`` picks
  one node at random, and on a ``see-other-uri`` or a lost connection moves to another (docs/web-chat.rst).
- ``/chat/app.js`` the page script (``webchat_static/app.js`` in this package).
- ``/chat/dist/...`` the Converse.js distribution, from ``--webchat-dir`` (``xmppcluster install-webchat``);
  when it is missing the page answers ``503`` naming the command that installs it.

Every answer carries a strict Content-Security-Policy (:func:`content_security_policy`).  Per domain
(``vhost-man/<domain>/webchat``, ``.../webchat-title``): the domain is ``?domain=``, else the Host header when it
is hosted, else the first ``--virt-hosts`` entry.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from twisted.python.filepath import FilePath, InsecurePath
from twisted.web import static
from twisted.web.resource import Resource
from twisted.web.util import Redirect

from xmppcluster.core.serializer import escape_text
from xmppcluster.ops.hostmeta import live_nodes, requested_domain

if TYPE_CHECKING:
    from twisted.web.server import Request

    from xmppcluster.config import Config, Listener
    from xmppcluster.core.server import XMPPServer

__all__ = ["CONVERSE_VERSION", "STATIC", "WebChatResource", "assets_dir", "chat_config", "content_security_policy",
           "install_main", "mount"]

#: The Converse.js release served (pinned in ``webchat_static/package.json`` and its lock file).
CONVERSE_VERSION = "14.0.0"
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "webchat_static")
INSTALL_HINT = "xmppcluster install-webchat"
_TEXT = b"text/plain; charset=utf-8"
_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".json": "application/json",
          ".wasm": "application/wasm", ".svg": "image/svg+xml", ".png": "image/png", ".woff": "font/woff",
          ".woff2": "font/woff2", ".ttf": "font/ttf", ".eot": "application/vnd.ms-fontobject",
          ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".map": "application/json", ".html": "text/html"}


def assets_dir(directory: str) -> str | None:
    """The Converse.js ``dist`` directory under ``directory`` (an npm prefix, or the dist itself), or None."""
    for candidate in (os.path.join(directory, "node_modules", "converse.js", "dist"), directory):
        if os.path.isfile(os.path.join(candidate, "converse.min.js")):
            return candidate
    return None


def _templates(config: Config, tls: bool) -> list[tuple[str, str, int, str]]:
    """(kind, scheme, port, path) of this node's HTTP endpoints, TLS (``tls``) or plain; WebSocket first."""
    found: list[tuple[str, str, int, str]] = []
    ws2s = [lst for lst in config.listeners("ws2s") if lst.tls == tls and lst.type == "accept"]
    found += [("websocket", "wss" if tls else "ws", lst.port, "/xmpp-websocket") for lst in ws2s]
    for lst in config.listeners("bosh"):
        if lst.tls == tls and lst.type == "accept":
            found.append(("bosh", "https" if tls else "http", lst.port, "/http-bind"))
            if not ws2s:
                found.append(("websocket", "wss" if tls else "ws", lst.port, "/xmpp-websocket"))
    return found


def _host(name: str) -> str:
    return f"[{name}]" if ":" in name and not name.startswith("[") else name


def _node_entry(name: str, host: str, templates: list[tuple[str, str, int, str]]) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "websocket": [], "bosh": []}
    for kind, scheme, port, path in templates:
        entry[kind].append(f"{scheme}://{_host(host)}:{port}{path}")
    return entry


def chat_config(server: XMPPServer, domain: str, title: str, *, secure: bool, own_host: str | None) -> dict:
    """What the page script needs: domain, title and the nodes it may connect to (this one first).

    ``secure``: the page came over TLS, so only ``wss://``/``https://`` URLs (a secure page may not open
    plain ones); a plain page is offered plain URLs, or TLS ones when the node has no plain listener.
    ``own_host``: the host name the browser used for this node (it reaches it), else the node name.
    """
    settings = server.config.webchat
    if settings.endpoints:
        entry: dict[str, Any] = {"name": "proxy", "websocket": [], "bosh": []}
        for url in settings.endpoints:
            entry["websocket" if url.startswith(("ws:", "wss:")) else "bosh"].append(url)
        nodes = [entry]
    else:
        templates = _templates(server.config, True) if secure else (
            _templates(server.config, False) or _templates(server.config, True))
        me = server.node_name
        nodes = [_node_entry(me, own_host or me, templates)]
        nodes += [_node_entry(name, name, templates) for name in live_nodes(server) if name != me]
    return {"domain": domain, "title": title, "converse": CONVERSE_VERSION, "nodes": nodes}


def _origins(urls: list[str]) -> list[str]:
    """The origins of ``urls``; a WebSocket origin brings its HTTP twin (the page probes a node over HTTP)."""
    seen: list[str] = []
    for url in urls:
        parts = urlsplit(url)
        twin = {"wss": "https", "ws": "http"}.get(parts.scheme)
        for scheme in (parts.scheme, twin) if twin else (parts.scheme,):
            origin = f"{scheme}://{parts.netloc}"
            if origin not in seen:
                seen.append(origin)
    return seen


def content_security_policy(connect: list[str]) -> bytes:
    """The page's policy: scripts, styles, fonts only from this origin (no inline script, no eval);
    connections only to this origin and ``connect`` (the endpoints' origins); no framing, no plugins.

    ``style-src 'unsafe-inline'``: Converse.js 14 sets ``style`` attributes from its templates and adds one
    ``<style>`` element (tests/test_webchat.py sees ``style-src-attr``/``style-src-elem`` violations without it);
    inline *styles* cannot run code.  Neither ``'unsafe-eval'`` nor ``'wasm-unsafe-eval'`` is needed: Converse
    runs without eval, and only OMEMO needs WebAssembly (libsignal), which the page leaves out.
    """
    policy = [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self'",
        "media-src 'self' blob:",
        "connect-src " + " ".join(["'self'", *connect]),
        "manifest-src 'self'",
        "worker-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
    return "; ".join(policy).encode()


def _header(request: Request, name: bytes) -> str:
    value = request.getHeader(name)
    return value.decode("latin-1") if isinstance(value, bytes) else (value or "")


def _secure_request(request: Request, server: XMPPServer) -> bool:
    """The page reached the browser over TLS (here, or at a trusted proxy that says so)."""
    if request.isSecure():
        return True
    from xmppcluster.streams.peers import client_policy

    peer = getattr(request.getClientAddress(), "host", "")
    proto = _header(request, b"x-forwarded-proto") if client_policy(server).is_trusted_proxy(peer) else ""
    return proto.split(",")[-1].strip().lower() == "https"


_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?")


def _browser_host(request: Request) -> str | None:
    """The host name (no port) of the Host header when it is a plain DNS name or IP address, else None.

    It goes into ``config.json`` and the CSP header: anything else (``;``, blanks, quotes) is never echoed."""
    raw = _header(request, b"host").strip()
    if not raw or len(raw) > 255:
        return None
    if raw.startswith("["):
        name = raw[1:].partition("]")[0]
        try:
            return str(ipaddress.IPv6Address(name))
        except ValueError:
            return None
    name = raw.rpartition(":")[0] if ":" in raw else raw
    return name if _HOST_NAME.fullmatch(name) else None


class WebChatResource(Resource):
    """``/chat`` and everything under it (a leaf: it reads ``request.postpath`` itself)."""

    isLeaf = True

    def __init__(self, server: XMPPServer) -> None:
        super().__init__()
        self.xmpp = server
        self.dist = None

    # -- the domain and its settings --------------------------------------------------------------------------

    def _domain(self, request: Request) -> str | None:
        domain = requested_domain(request)
        if domain is not None and self.xmpp.is_local_domain(domain):
            return domain
        if request.args.get(b"domain"):
            return None  # asked for a domain not served here
        return self.xmpp.config.virt_hosts[0].lower() if self.xmpp.config.virt_hosts else None

    def _headers(self, request: Request) -> None:
        config = chat_config(self.xmpp, "", "", secure=_secure_request(request, self.xmpp),
                             own_host=_browser_host(request))
        urls = [url for node in config["nodes"] for url in node["websocket"] + node["bosh"]]
        request.setHeader(b"Content-Security-Policy", content_security_policy(_origins(urls)))
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        request.setHeader(b"X-Frame-Options", b"DENY")

    def _text(self, request: Request, code: int, text: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", _TEXT)
        request.setHeader(b"Cache-Control", b"no-cache")
        return text.encode() + b"\n"

    # -- rendering ------------------------------------------------------------------------------------------

    def render_GET(self, request: Request) -> Any:  # noqa: N802 (twisted.web)
        self._headers(request)
        path = [segment.decode("utf-8", "replace") for segment in request.postpath]
        if not path:  # /chat: the page's relative URLs need the slash
            request.setResponseCode(301)
            query = request.uri.partition(b"?")[2]
            request.setHeader(b"Location", b"/chat/" + (b"?" + query if query else b""))
            return b""
        domain = self._domain(request)
        settings = self.xmpp.config.webchat
        enabled, title = settings.for_domain(domain or "")
        if domain is None or not enabled:
            return self._text(request, 404, f"web chat is not enabled for {domain or 'this domain'}")
        dist = assets_dir(settings.directory)
        if dist is None:
            return self._text(request, 503, f"web chat assets not installed: run `{INSTALL_HINT} --webchat-dir "
                                            f"{settings.directory}` (needs npm) and reload this page")
        if path == [""]:
            return self._page(request, title)
        if path == ["config.json"]:
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Cache-Control", b"no-cache")
            config = chat_config(self.xmpp, domain, title, secure=_secure_request(request, self.xmpp),
                                 own_host=_browser_host(request))
            return json.dumps(config).encode()
        if path == ["app.js"]:
            return self._file(request, FilePath(STATIC).child("app.js"), cache=False)
        if path == ["app.css"]:
            return self._file(request, FilePath(STATIC).child("app.css"), cache=False)
        if path[0] == "dist" and len(path) > 1:
            try:
                target = FilePath(dist).descendant(path[1:])
            except InsecurePath:
                target = None
            if target is not None and target.isfile():
                return self._file(request, target, cache=True)
        return self._text(request, 404, "not found")

    def _page(self, request: Request, title: str) -> bytes:
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        name = escape_text(title)
        return (
            "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{name}</title>"
            "<link rel='stylesheet' href='dist/converse.min.css'><link rel='stylesheet' href='app.css'>"
            "<script type='module' src='dist/converse.min.js'></script><script type='module' src='app.js'></script>"
            f"</head><body class='converse-fullscreen'><div id='xc-status' role='status'>{name}: loading</div>"
            "<noscript>The web chat needs JavaScript.</noscript></body></html>\n"
        ).encode()

    def _file(self, request: Request, target: FilePath, *, cache: bool) -> Any:
        request.setHeader(b"Cache-Control", b"public, max-age=86400" if cache else b"no-cache")
        resource = static.File(target.path, defaultType="application/octet-stream")
        resource.contentTypes = dict(_TYPES)
        return resource.render(request)

    render_HEAD = render_GET  # noqa: N815 (twisted.web)


class RootRedirect(Resource):
    """``/``: to the web chat; on a ws2s port a WebSocket upgrade still goes to the endpoint there."""

    isLeaf = True

    def __init__(self, endpoint: Any = None) -> None:
        super().__init__()
        self.endpoint = endpoint

    def render(self, request: Request) -> Any:
        if self.endpoint is not None and _header(request, b"upgrade").lower() == "websocket":
            return self.endpoint.render(request)
        query = request.uri.partition(b"?")[2]
        return Redirect(b"/chat/" + (b"?" + query if query else b"")).render(request)


def mount(root: Any, server: XMPPServer, listener: Listener) -> None:
    """Add ``/chat`` and the ``/`` redirect to a BOSH or ws2s site's root."""
    root.putChild(b"chat", WebChatResource(server))
    endpoint = root.children.get(b"")
    root.putChild(b"", RootRedirect(endpoint))


# -- installing the assets ----------------------------------------------------------------------------------------


def install(directory: str, *, npm: str | None = None) -> None:
    """``npm ci`` the pinned Converse.js into ``directory`` (package.json and lock file copied from here)."""
    npm = npm or shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found: install Node.js (Debian: apt-get install npm)")
    os.makedirs(directory, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(os.path.join(STATIC, name), os.path.join(directory, name))
    subprocess.run([npm, "ci", "--ignore-scripts", "--omit=dev", "--no-audit", "--no-fund", "--loglevel=error"],
                   cwd=directory, check=True)
    if assets_dir(directory) is None:
        raise RuntimeError(f"npm ran but {directory}/node_modules/converse.js/dist/converse.min.js is missing")


def install_main(config_path: str, directory: str | None) -> int:
    """``xmppcluster install-webchat [--webchat-dir DIR]``: DIR, else ``--webchat-dir`` of the configuration."""
    if directory is None:
        from xmppcluster.config import ConfigError, load

        try:
            directory = load(config_path).webchat.directory if os.path.exists(config_path) else "webchat"
        except ConfigError as e:
            print(f"xmppcluster: {e}", file=sys.stderr)
            return 2
    dist = assets_dir(directory)
    stamp = os.path.join(directory, "node_modules", ".package-lock.json")
    lock = os.path.join(STATIC, "package-lock.json")
    if dist is not None and os.path.exists(stamp) and os.path.getmtime(stamp) >= os.path.getmtime(lock):
        print(f"web chat: Converse.js {CONVERSE_VERSION} already installed in {directory}")
        return 0
    try:
        install(directory)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        print(f"xmppcluster: install-webchat: {e}", file=sys.stderr)
        return 1
    print(f"web chat: Converse.js {CONVERSE_VERSION} installed in {directory}")
    return 0
