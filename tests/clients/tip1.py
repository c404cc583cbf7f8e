"""The seed's Tip #1 / Tip #2 web-client logic, as a small blocking client (stdlib only).

1. Fetch the cluster's node list: XEP-0156 host-meta (JRD or XRD) from the first source URL that answers.
2. Pick one node's WebSocket URL at random (``wss://t2.example1.com:5291/``), verifying its certificate against
   the node's own host name, but ask for the hosted domain in ``<open to='example2.com'/>``.
3. If that node fails (refused, TLS failure, dropped stream), pick another at random among those left.

Node host names resolve nowhere in tests: ``resolve`` maps a host name to the address to dial (like
``curl --resolve``); TLS still sends the host name as SNI and checks the certificate against it.
Independent of the server's code (stdlib ``ssl``, ``http.client``, ElementTree), so a shared mistake cannot hide.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import random
import socket
import ssl
import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import urlsplit

XRD_NS = "http://docs.oasis-open.org/ns/xri/xrd-1.0"
REL_BOSH = "urn:xmpp:alt-connections:xbosh"
REL_WEBSOCKET = "urn:xmpp:alt-connections:websocket"
FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
STREAMS = "http://etherx.jabber.org/streams"
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class NodeFailed(Exception):
    """This node cannot be used now (network, TLS, HTTP or stream failure): try another."""


class AuthFailed(Exception):
    """The server refused the credentials: trying another node would not help."""


class NoNodeLeft(Exception):
    """Every node failed; ``attempts`` says how."""

    def __init__(self, attempts: list[tuple[str, str]]) -> None:
        super().__init__("no node left: " + "; ".join(f"{url}: {why}" for url, why in attempts))
        self.attempts = attempts


def tls_context(ca_file: str) -> ssl.SSLContext:
    """Verification on: the chain to ``ca_file`` and the host name; TLS >= 1.2."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def tls_connect(host: str, port: int, *, ca_file: str, resolve: dict[str, str] | None = None,
                timeout: float = 10.0) -> ssl.SSLSocket:
    """TCP to ``resolve[host]`` (or ``host``), then TLS with SNI = ``host``, certificate checked for ``host``."""
    raw = socket.create_connection(((resolve or {}).get(host, host), port), timeout=timeout)
    try:
        return tls_context(ca_file).wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise


# -- host-meta ---------------------------------------------------------------------------------------


@dataclass
class HostMeta:
    status: int
    headers: dict[str, str]
    body: bytes
    links: list[tuple[str, str]] = field(default_factory=list)

    def hrefs(self, rel: str) -> list[str]:
        return [href for r, href in self.links if r == rel]


def parse_xrd(body: bytes) -> list[tuple[str, str]]:
    root = ET.fromstring(body)
    if root.tag != f"{{{XRD_NS}}}XRD":
        raise ValueError(f"not an XRD document: {root.tag}")
    return [(link.get("rel", ""), link.get("href", "")) for link in root.findall(f"{{{XRD_NS}}}Link")]


def parse_jrd(body: bytes) -> list[tuple[str, str]]:
    document = json.loads(body)
    return [(link["rel"], link["href"]) for link in document.get("links", [])]


def fetch_host_meta(url: str, *, ca_file: str, resolve: dict[str, str] | None = None,
                    timeout: float = 10.0, origin: str | None = None) -> HostMeta:
    """GET a host-meta URL (https only); links parsed as JRD for ``*.json``, else XRD (only on HTTP 200)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"host-meta is fetched over https only: {url}")
    host, port = parts.hostname, parts.port or 443

    class Connection(http.client.HTTPSConnection):
        def connect(self) -> None:
            self.sock = tls_connect(host, port, ca_file=ca_file, resolve=resolve, timeout=timeout)

    connection = Connection(host, port, timeout=timeout)
    try:
        headers = {"Origin": origin} if origin else {}
        connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers)
        response = connection.getresponse()
        body = response.read()
        result = HostMeta(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        connection.close()
    if result.status == 200:
        result.links = parse_jrd(body) if parts.path.endswith(".json") else parse_xrd(body)
    return result


# -- WebSocket (RFC 6455 client side, just enough for RFC 7395) -----------------------------------------


class WebSocket:
    """A ``wss://`` connection with the ``xmpp`` subprotocol; text messages in and out."""

    def __init__(self, url: str, *, ca_file: str, resolve: dict[str, str] | None = None,
                 timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "wss" or not parts.hostname:
            raise ValueError(f"not a wss:// URL: {url}")
        self.host, self.port = parts.hostname, parts.port or 443
        self.sock = tls_connect(self.host, self.port, ca_file=ca_file, resolve=resolve, timeout=timeout)
        self.buffer = b""
        key = base64.b64encode(os.urandom(16))
        request = (f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n"
                   "Sec-WebSocket-Protocol: xmpp\r\n\r\n")
        self.sock.sendall(request.encode())
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest()).decode()
        if status.split(" ")[1:2] != ["101"] or headers.get("sec-websocket-accept") != accept:
            raise NodeFailed(f"WebSocket upgrade refused: {status}")
        if headers.get("sec-websocket-protocol") != "xmpp":
            raise NodeFailed("the server did not select the xmpp subprotocol")

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise NodeFailed("connection closed")
        self.buffer += data

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        header = bytes([0x80 | opcode])
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send_text(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def recv_text(self) -> str:
        message = b""
        while True:
            first, second = self._take(2)
            opcode, n = first & 0x0F, second & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._take(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._take(8))[0]
            payload = self._take(n)
            if opcode == 0x9:
                self._send_frame(0xA, payload)
            elif opcode == 0x8:
                raise NodeFailed(f"WebSocket closed by the server ({payload[:2].hex() or 'no code'})")
            elif opcode in (0x0, 0x1):
                message += payload
                if first & 0x80:
                    return message.decode()

    def close(self) -> None:
        try:
            self._send_frame(0x8, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()


class Session:
    """XMPP over one WebSocket (RFC 7395): open, SASL PLAIN (inside TLS), bind."""

    def __init__(self, ws: WebSocket, domain: str) -> None:
        self.ws = ws
        self.domain = domain
        self.jid: str | None = None
        self.url = f"wss://{ws.host}:{ws.port}/"

    def next(self) -> ET.Element:
        element = ET.fromstring(self.ws.recv_text())
        if element.tag == f"{{{STREAMS}}}error" or element.tag == f"{{{FRAMING}}}close":
            raise NodeFailed(f"stream ended: {ET.tostring(element)[:200]!r}")
        return element

    def open(self) -> ET.Element:
        """``<open to=domain/>``; the features that follow the server's ``<open/>``."""
        self.ws.send_text(f"<open xmlns='{FRAMING}' to='{self.domain}' version='1.0'/>")
        opened = self.next()
        if opened.tag != f"{{{FRAMING}}}open" or opened.get("from") != self.domain:
            raise NodeFailed(f"unexpected stream open: {ET.tostring(opened)[:200]!r}")
        return self.next()

    def login(self, user: str, password: str, resource: str) -> str:
        features = self.open()
        mechanisms = [m.text for m in features.iter(f"{{{SASL}}}mechanism")]
        if "PLAIN" not in mechanisms:
            raise NodeFailed(f"PLAIN not offered: {mechanisms}")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.ws.send_text(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
        if self.next().tag != f"{{{SASL}}}success":
            raise AuthFailed(f"{user}@{self.domain} refused")
        self.open()
        self.ws.send_text(f"<iq xmlns='jabber:client' type='set' id='bind'><bind xmlns='{BIND}'>"
                          f"<resource>{resource}</resource></bind></iq>")
        reply = self.next()
        jid = reply.find(f"{{{BIND}}}bind/{{{BIND}}}jid")
        if jid is None:
            raise NodeFailed(f"bind failed: {ET.tostring(reply)[:200]!r}")
        self.jid = jid.text
        return self.jid

    def close(self) -> None:
        try:
            self.ws.send_text(f"<close xmlns='{FRAMING}'/>")
        except OSError:
            pass
        self.ws.close()


# -- the Tip #1 logic ---------------------------------------------------------------------------------


class Tip1Client:
    """Discover the nodes, connect to a random one, fall back to the others on failure."""

    def __init__(self, domain: str, *, ca_file: str, resolve: dict[str, str] | None = None,
                 rng: random.Random | None = None, timeout: float = 10.0) -> None:
        self.domain = domain
        self.ca_file = ca_file
        self.resolve = resolve or {}
        self.rng = rng or random.Random()
        self.timeout = timeout
        self.attempts: list[tuple[str, str]] = []

    def discover(self, sources: list[str]) -> list[str]:
        """The WebSocket URLs from the first host-meta source that answers 200."""
        failures = []
        for url in sources:
            try:
                meta = fetch_host_meta(url, ca_file=self.ca_file, resolve=self.resolve, timeout=self.timeout)
            except (OSError, ValueError, http.client.HTTPException) as e:
                failures.append((url, repr(e)))
                continue
            if meta.status == 200:
                return meta.hrefs(REL_WEBSOCKET)
            failures.append((url, f"HTTP {meta.status}"))
        raise NoNodeLeft(failures)

    def connect(self, endpoints: list[str], user: str, password: str, resource: str = "web") -> Session:
        """Log in through a random endpoint; on a node failure, another random one among those left."""
        remaining = list(endpoints)
        self.attempts = []
        while remaining:
            url = self.rng.choice(remaining)
            remaining.remove(url)
            ws = None
            try:
                ws = WebSocket(url, ca_file=self.ca_file, resolve=self.resolve, timeout=self.timeout)
                session = Session(ws, self.domain)
                session.login(user, password, resource)
            except (OSError, NodeFailed, ET.ParseError) as e:
                self.attempts.append((url, repr(e)))
                if ws is not None:
                    ws.sock.close()
                continue
            self.attempts.append((url, "ok"))
            return session
        raise NoNodeLeft(self.attempts)
