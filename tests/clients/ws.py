"""A blocking RFC 6455 client speaking RFC 7395 framing, for protocol tests (one element per message)."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import struct
import xml.etree.ElementTree as ET

from tests.clients.raw import SASL, Scram, q

FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"


class WSClient:
    def __init__(self, port: int, path: str = "/xmpp-websocket", host: str = "127.0.0.1",
                 timeout: float = 10.0, tls: ssl.SSLContext | None = None, server_name: str | None = None) -> None:
        """``tls``: speak wss (TLS from the first byte), verifying the certificate for ``server_name``."""
        self.sock = socket.create_connection((host, port), timeout=timeout)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=server_name or host)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           f"Sec-WebSocket-Protocol: xmpp\r\n{self.extra_headers}\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            head += chunk
        status, _, rest = head.partition(b"\r\n\r\n")
        if b" 101 " not in status.split(b"\r\n")[0]:
            raise ConnectionError(status.decode(errors="replace"))
        self.buffer = rest

    #: More handshake header lines, each ending in CRLF (a subclass sets e.g. X-Forwarded-For).
    extra_headers = ""

    def send(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        header = bytes([0x81])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        elif len(payload) < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _need(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def next(self) -> ET.Element | None:
        """The next text message as an element; None for a close frame."""
        while True:
            first, second = self._need(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._need(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._need(8))[0]
            payload = self._need(length)
            opcode = first & 0x0F
            if opcode == 0x8:
                return None
            if opcode == 0x1:
                return ET.fromstring(payload)

    def until(self, tag: str) -> ET.Element:
        while True:
            element = self.next()
            if element is None:
                raise ConnectionError("closed")
            if element.tag == tag:
                return element

    def open(self, domain: str) -> ET.Element:
        self.send(f"<open xmlns='{FRAMING}' to='{domain}' version='1.0'/>")
        self.until(q(FRAMING, "open"))
        return self.until("{http://etherx.jabber.org/streams}features")

    def login(self, domain: str, user: str, password: str, resource: str) -> str:
        self.open(domain)
        scram = Scram(user, password, "SCRAM-SHA-1")
        self.send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'>{scram.first()}</auth>")
        challenge = self.until(q(SASL, "challenge"))
        self.send(f"<response xmlns='{SASL}'>{scram.final(challenge.text)}</response>")
        self.until(q(SASL, "success"))
        self.open(domain)
        self.send("<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  f"<resource>{resource}</resource></bind></iq>")
        reply = self.until("{jabber:client}iq")
        return reply.find(".//{urn:ietf:params:xml:ns:xmpp-bind}jid").text

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
