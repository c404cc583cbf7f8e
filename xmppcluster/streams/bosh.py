"""BOSH (XEP-0124, XEP-0206): the ``/http-bind`` resource and the sessions of this node.

The resource only does HTTP: CORS, size limits, parsing the ``<body/>`` with the hardened parser, and
handing it to the session (:mod:`xmppcluster.streams.bosh_session`) or creating one. Every session lives
in :class:`BoshSessions` (one per server, ``server.bosh``, shared by all BOSH ports), looked up by
:meth:`find_session`. The registry knows nothing of a cluster: ``ops/service.py`` gives it the suffix every
new sid ends with (:attr:`BoshSessions.sid_suffix`, the owner node's tag) and the handler of a sid this node
does not hold (:attr:`BoshSessions.unknown_sid`, forwarding to the owner node).
"""

from __future__ import annotations

import re
import secrets
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from xmppcluster.auth.throttle import peer_key
from xmppcluster.config import BoshSettings
from xmppcluster.core import namespaces as ns
from xmppcluster.core.jid import InvalidJID, parse_jid
from xmppcluster.core.xml import StreamFault, parse_element
from xmppcluster.streams.bosh_session import (
    BOSH_VERSION,
    DEFAULT_CONTENT_TYPE,
    HTTPBIND,
    LEGACY_STATUS,
    MAX_RID,
    XBOSH,
    BoshError,
    BoshSession,
    Exchange,
    Terms,
    number,
    render_body,
)
from xmppcluster.streams.core import StreamHeader
from xmppcluster.streams.peers import ClientOrigin, client_policy
from xmppcluster.streams.throttle import log_budget

if TYPE_CHECKING:
    from twisted.words.xish import domish

    from xmppcluster.config import Listener
    from xmppcluster.core.server import XMPPServer

#: ``unknown_sid(sid, exchange, body, secure, peer)``: answers a request for a session this node does not
#: hold (e.g. by forwarding it to the owner node); False when nobody owns ``sid`` (``item-not-found``).
UnknownSid = Callable[[str, Exchange, "domish.Element", bool, str], bool]

__all__ = ["BoshResource", "BoshSession", "BoshSessions", "BoshSettings", "bosh_sessions", "limited_request"]

log = Logger()

#: Every sid has this many hex digits, whatever the (even, at most 8 digits) :attr:`BoshSessions.sid_suffix`.
SID_LENGTH = 40

_CONTENT = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(; ?charset=[A-Za-z0-9_-]+)?")
_GET_PAGE = (b"This is an XMPP BOSH endpoint (XEP-0124, XEP-0206).\n"
             b"XMPP clients POST <body xmlns='http://jabber.org/protocol/httpbind'/> requests here.\n")


class BoshSessions:
    """The BOSH sessions of one server, by sid."""

    def __init__(self, server: XMPPServer, settings: BoshSettings | None = None) -> None:
        self.server = server
        self.settings = settings or server.config.bosh
        self.sessions: dict[str, BoshSession] = {}
        self.per_ip: Counter[str] = Counter()
        self._owners: dict[str, str | None] = {}
        #: Appended to every new sid (a cluster puts the owner node's tag there); injected by ops/service.py.
        self.sid_suffix = ""
        #: Answers requests for sids this node does not hold; injected by ops/service.py (cluster mode).
        self.unknown_sid: UnknownSid | None = None

    def find_session(self, sid: str) -> BoshSession | None:
        """The session with this sid on this node (None: the request goes to :attr:`unknown_sid`)."""
        return self.sessions.get(sid)

    def create(self, exchange: Exchange, body: Any, peer: str, secure: bool, *, tls: bool = False) -> None:
        """Answer a session-creation request (a ``<body/>`` without ``sid``); ``tls``: it came over https."""
        settings = self.settings
        rid = number(body, "rid")
        if rid is None or rid > MAX_RID:
            raise BoshError("bad-request", "missing or invalid 'rid'")
        to = body.getAttribute("to")
        if not to:
            raise BoshError("improper-addressing", "'to' is required")
        try:
            domain = parse_jid(to)
        except InvalidJID:
            raise BoshError("host-unknown", "'to' is not a domain") from None
        if domain.user is not None or domain.resource is not None or not self.server.is_local_domain(domain.host):
            raise BoshError("host-unknown", f"this server does not serve {to}")
        # Per client address (IPv6: per /64); a trusted proxy that names no client is not limited.
        key = None if client_policy(self.server).is_trusted_proxy(peer) else peer_key(peer)
        if key is not None and settings.max_per_ip and self.per_ip[key] >= settings.max_per_ip:
            raise BoshError("policy-violation", "too many sessions from this address")
        # 'route' is deliberately never looked at: this is not a proxy.
        wait = min(number(body, "wait", settings.max_wait), settings.max_wait)
        hold = min(number(body, "hold", 1), settings.hold_requests, settings.concurrent_requests - 1)
        if wait == 0:
            hold = 0
        polling = settings.min_polling
        inactivity = settings.max_inactivity + (polling if hold == 0 else 0)
        client_ver = _version(body.getAttribute("ver"))
        ver = min(client_ver or BOSH_VERSION, BOSH_VERSION)
        content = body.getAttribute("content")
        terms = Terms(
            wait=wait, hold=hold, requests=hold + 1, inactivity=inactivity, polling=polling,
            maxpause=settings.max_pause, ver=f"{ver[0]}.{ver[1]}", legacy=client_ver is None,
            client_acks=body.getAttribute("ack") == "1",
            content_type=content if content and _CONTENT.fullmatch(content) else DEFAULT_CONTENT_TYPE)
        # 40 hex digits: random (at least 128 bits) then the suffix (a cluster puts the owner's tag there).
        sid = secrets.token_hex((SID_LENGTH - len(self.sid_suffix)) // 2) + self.sid_suffix
        newkey = body.getAttribute("newkey")
        session = BoshSession(self, sid, peer, secure, rid, terms, newkey.lower() if newkey else None,
                              self.server.node_name if settings.send_host else None)
        session.port = getattr(exchange.request.getHost(), "port", None)
        session.tls = tls
        self.sessions[sid] = session
        if key is not None:
            self.per_ip[key] += 1
        self._owners[sid] = key
        # A sid is a bearer token: logs name the session by its first 8 characters only.
        emit = log.info if log_budget(self.server).allow(peer) else log.debug
        emit("BOSH session {sid} from {peer} ({secure})", sid=sid[:8], peer=peer,
             secure="encrypted" if secure else "unencrypted")
        session.start(exchange, StreamHeader(
            to=domain.host, version=body.getAttribute((XBOSH, "version")) or "1.0",
            lang=body.getAttribute((ns.XML, "lang")), frm=body.getAttribute("from")))

    def remove(self, session: BoshSession) -> None:
        if self.sessions.get(session.sid) is not session:
            return
        del self.sessions[session.sid]
        key = self._owners.pop(session.sid)
        if key is None:
            return
        self.per_ip[key] -= 1
        if self.per_ip[key] <= 0:
            del self.per_ip[key]

    def shutdown(self) -> None:
        """End every session with ``system-shutdown`` (the node is stopping): nothing of them stays scheduled."""
        for session in list(self.sessions.values()):
            session.terminate("system-shutdown", notify_core=True)  # a no-op for a closed session
            session.forget()
            self.remove(session)


def bosh_sessions(server: XMPPServer) -> BoshSessions:
    """The session registry of ``server`` (``server.bosh``, made on first use, shared by all BOSH ports)."""
    if server.bosh is None:
        server.bosh = BoshSessions(server)
    return server.bosh


def _version(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    major, _, minor = value.partition(".")
    if not (major.isascii() and major.isdigit() and minor.isascii() and minor.isdigit()):
        return None
    return int(major), int(minor)


def _terminal(condition: str) -> bytes:
    return render_body({"type": "terminate", "condition": condition})


class BoshResource(Resource):
    """``/http-bind`` (and ``/http-bind/``): POST carries BOSH, OPTIONS answers CORS preflights, GET says hello."""

    isLeaf = True

    def __init__(self, server: XMPPServer, listener: Listener | None = None) -> None:
        super().__init__()
        # Not 'self.server': twisted.web's putChild overwrites that attribute.
        self.xmpp = server
        self.sessions = bosh_sessions(server)
        self.settings = self.sessions.settings
        self.secure = bool(listener is not None and listener.tls)  # TLS on this port
        self.policy = client_policy(server)
        limits = server.limits
        self._max_elements = limits.max_elements
        self._max_depth = limits.max_depth + 1  # the <body/> wrapper is one more level

    # -- HTTP methods ------------------------------------------------------------------------------

    def render_OPTIONS(self, request: Request) -> bytes:
        if self._known_path(request) and self._cors(request):
            request.setHeader(b"Access-Control-Allow-Methods", b"POST, GET, OPTIONS")
            request.setHeader(b"Access-Control-Allow-Headers", b"Content-Type")
            request.setHeader(b"Access-Control-Max-Age", b"86400")
        request.setHeader(b"Content-Length", b"0")
        return b""

    def render_GET(self, request: Request) -> bytes:
        if not self._known_path(request):
            request.setResponseCode(404)
            return b"Not found\n"
        self._cors(request)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return _GET_PAGE

    def render_POST(self, request: Request) -> Any:
        if not self._known_path(request):
            request.setResponseCode(404)
            return b"Not found\n"
        if not self._cors(request):
            request.setResponseCode(403)
            return b"Origin not allowed\n"
        exchange = Exchange(request)
        origin = self.origin(request)
        data = self._read_body(request)
        if data is None:
            self._refused(origin, "BOSH request from {peer} refused: body too large")
            exchange.reply(_terminal("policy-violation"))
            return NOT_DONE_YET
        try:
            body = parse_element(data, max_bytes=self.settings.max_body, max_elements=self._max_elements * 4,
                                 max_depth=self._max_depth)
        except StreamFault as fault:
            self._refused(origin, "BOSH request from {peer} refused: {fault}", fault=str(fault))
            exchange.reply(_terminal("bad-request"))
            return NOT_DONE_YET
        if body.uri != HTTPBIND or body.name != "body" or not self._stanza_limits(body):
            exchange.reply(_terminal("bad-request"))
            return NOT_DONE_YET
        sid = body.getAttribute("sid")
        if sid is None:
            try:
                self.sessions.create(exchange, body, origin.address, origin.secure, tls=self.secure)
            except BoshError as error:
                self._refused(origin, "BOSH session refused for {peer}: {condition} {text}",
                              condition=error.condition, text=error.text)
                legacy = body.getAttribute("ver") is None
                exchange.reply(_terminal(error.condition),
                               status=LEGACY_STATUS.get(error.condition, 200) if legacy else 200)
            return NOT_DONE_YET
        session = self.sessions.find_session(sid)
        if session is None:
            unknown = self.sessions.unknown_sid
            if unknown is None or not unknown(sid, exchange, body, origin.secure, origin.address):
                exchange.reply(_terminal("item-not-found"))
            return NOT_DONE_YET
        if session.secure and not origin.secure:
            # XEP-0124 §20.1: a secure session's request over plain HTTP: drop it, keep the session.
            exchange.alive = False
            request.transport.loseConnection()
            return NOT_DONE_YET
        session.handle(exchange, body)
        return NOT_DONE_YET

    # -- helpers -----------------------------------------------------------------------------------

    def _refused(self, origin: ClientOrigin, message: str, **fields: Any) -> None:
        """A refused request: at info while the client's address has log budget left (streams/throttle.py)."""
        emit = log.info if log_budget(self.xmpp).allow(origin.address) else log.debug
        emit(message, peer=origin.address, **fields)

    def origin(self, request: Request) -> ClientOrigin:
        """The client behind ``request`` (a trusted proxy's headers believed) and whether its hop is secure."""
        headers = request.requestHeaders

        def header(name: str) -> str | None:
            values = headers.getRawHeaders(name.encode("ascii"))
            return b",".join(values).decode("latin-1") if values else None

        return self.policy.origin(_peer(request), self.secure, "bosh", header)

    def _known_path(self, request: Request) -> bool:
        return request.postpath in ([], [b""])

    def _cors(self, request: Request) -> bool:
        """Set the CORS headers; False when the request's Origin is not allowed."""
        allowed = self.settings.cors_origins
        origin = request.getHeader(b"Origin")
        if "*" in allowed:
            request.setHeader(b"Access-Control-Allow-Origin", b"*")
            return True
        request.setHeader(b"Vary", b"Origin")
        if origin is None:
            return True  # not a browser cross-origin request
        if origin.decode("latin-1") in allowed:
            request.setHeader(b"Access-Control-Allow-Origin", origin)
            return True
        return False

    def _read_body(self, request: Request) -> bytes | None:
        """The request body, or None when it is larger than ``bosh/max-body-size``."""
        limit = self.settings.max_body
        if getattr(request, "body_too_large", False):
            return None
        length = request.getHeader(b"Content-Length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return None
        content = request.content
        content.seek(0)
        data = content.read(limit + 1)
        return None if len(data) > limit else data

    def _stanza_limits(self, body: Any) -> bool:
        """Each payload stays within ``--elements-number-limit`` (the body as a whole has 4x that)."""
        limit = self._max_elements
        for child in body.elements():
            count = 0
            stack = [child]
            while stack:
                element = stack.pop()
                count += 1
                if count > limit:
                    return False
                stack.extend(element.elements())
        return True


def _peer(request: Request) -> str:
    address = request.getClientAddress()
    return getattr(address, "host", None) or "?"


def limited_request(max_bytes: int) -> type[Request]:
    """A ``Site.requestFactory`` that stops storing a request body beyond ``max_bytes`` while it arrives.

    The body is then refused by :class:`BoshResource` (``body_too_large``) without ever being buffered whole.
    """

    class LimitedRequest(Request):
        body_too_large = False
        _received = 0

        def handleContentChunk(self, data: bytes) -> None:
            self._received += len(data)
            if self._received > max_bytes:
                self.body_too_large = True
                return
            super().handleContentChunk(data)

    return LimitedRequest
