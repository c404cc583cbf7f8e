"""A small blocking XMPP client for protocol tests: raw bytes in, parsed elements out.

It is deliberately independent of the server's code (stdlib XML pull parser, pyOpenSSL for TLS and
channel bindings, its own SCRAM), so a shared misunderstanding cannot make both ends agree.
Run it from a thread (``deferToThread``) when the server runs in the test's reactor.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import xml.etree.ElementTree as ET

from cryptography.hazmat.primitives import hashes, serialization
from OpenSSL import SSL

STREAMS = "http://etherx.jabber.org/streams"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
TLS = "urn:ietf:params:xml:ns:xmpp-tls"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
HEADER = ("<?xml version='1.0'?><stream:stream to='{to}' xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


class Closed(Exception):
    """The server closed the connection."""


def q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


class RawClient:
    def __init__(self, port: int, *, host: str = "127.0.0.1", domain: str = "localhost", direct_tls: bool = False,
                 ca_file: str | None = None, timeout: float = 10.0) -> None:
        self.domain = domain
        self.ca_file = ca_file
        self.timeout = timeout
        self.sock: socket.socket | SSL.Connection = socket.create_connection((host, port), timeout=timeout)
        self.raw = self.sock
        self.tls: SSL.Connection | None = None
        if direct_tls:
            self._wrap_tls()
        self._new_parser()

    # -- transport -----------------------------------------------------------------------------------

    def _new_parser(self) -> None:
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.pending: list[ET.Element] = []
        self.stream_error: ET.Element | None = None
        self.stream_closed = False

    def _context(self) -> SSL.Context:
        """The TLS context of the handshake (a subclass may add a client certificate)."""
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        return context

    def _wrap_tls(self) -> None:
        context = self._context()
        if self.ca_file:
            context.load_verify_locations(self.ca_file)
            context.set_verify(SSL.VERIFY_PEER, lambda *args: args[-1])
        connection = SSL.Connection(context, self.raw)
        connection.set_tlsext_host_name(self.domain.encode())
        connection.set_connect_state()
        self._retry(connection.do_handshake)
        self.tls = self.sock = connection

    def _retry(self, operation, *args):
        """Run a pyOpenSSL operation on the (timeout-mode) socket, waiting while it wants I/O."""
        import select

        while True:
            try:
                return operation(*args)
            except SSL.WantReadError:
                readable, _, _ = select.select([self.raw], [], [], self.raw.gettimeout())
                if not readable:
                    raise TimeoutError("TLS read timed out") from None
            except SSL.WantWriteError:
                _, writable, _ = select.select([], [self.raw], [], self.raw.gettimeout())
                if not writable:
                    raise TimeoutError("TLS write timed out") from None

    def send(self, data: str | bytes) -> None:
        data = data.encode() if isinstance(data, str) else data
        if self.tls is None:
            self.sock.sendall(data)
        else:
            self._retry(self.tls.sendall, data)

    def _read(self) -> bytes:
        try:
            data = self.sock.recv(65536) if self.tls is None else self._retry(self.tls.recv, 65536)
        except SSL.ZeroReturnError:
            data = b""
        except (SSL.SysCallError, ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            raise Closed()
        return data

    def _pump(self) -> None:
        self.parser.feed(self._read())
        for event, element in self.parser.read_events():
            if event == "start":
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth == 0:
                    self.stream_closed = True
                elif self.depth == 1:
                    if element.tag == q(STREAMS, "error"):
                        self.stream_error = element
                    self.pending.append(element)

    def next(self) -> ET.Element:
        """The next top-level element from the server."""
        while not self.pending:
            self._pump()
        return self.pending.pop(0)

    def until(self, tag: str) -> ET.Element:
        while True:
            element = self.next()
            if element.tag == tag:
                return element

    def wait_closed(self) -> ET.Element | None:
        """Read until the server closes; its stream error, if any."""
        try:
            while not self.stream_closed:
                self._pump()
            while True:
                self._read()
        except Closed:
            pass
        return self.stream_error

    def error_condition(self) -> str | None:
        error = self.wait_closed()
        if error is None:
            return None
        for child in error:
            if child.tag.startswith("{urn:ietf:params:xml:ns:xmpp-streams}") and not child.tag.endswith("}text"):
                return child.tag.split("}")[1]
        return None

    def close(self) -> None:
        try:
            self.send("</stream:stream>")
        except Exception:
            pass
        try:
            self.raw.close()
        except Exception:
            pass

    # -- negotiation -----------------------------------------------------------------------------------

    def open(self) -> ET.Element:
        """Send a stream header; return the features."""
        self._new_parser()
        self.send(HEADER.format(to=self.domain))
        return self.until(q(STREAMS, "features"))

    def starttls(self) -> ET.Element:
        self.send(f"<starttls xmlns='{TLS}'/>")
        self.until(q(TLS, "proceed"))
        self._wrap_tls()
        return self.open()

    def channel_binding(self, kind: str) -> bytes:
        assert self.tls is not None
        if kind == "tls-exporter":
            return self.tls.export_keying_material(b"EXPORTER-Channel-Binding", 32)
        cert = self.tls.get_peer_certificate(as_cryptography=True)
        algorithm = cert.signature_hash_algorithm
        if algorithm is None or isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
            algorithm = hashes.SHA256()
        digest = hashes.Hash(algorithm)
        digest.update(cert.public_bytes(serialization.Encoding.DER))
        return digest.finalize()

    def scram(self, user: str, password: str, mechanism: str = "SCRAM-SHA-256", *, binding: str | None = None,
              binding_data: bytes | None = None) -> ET.Element:
        """A whole SCRAM exchange; returns <success/> or <failure/>."""
        if binding and binding_data is None:
            binding_data = self.channel_binding(binding)
        scram = Scram(user, password, mechanism, binding=binding, binding_data=binding_data)
        self.send(f"<auth xmlns='{SASL}' mechanism='{mechanism}'>{scram.first()}</auth>")
        challenge = self.next()
        if challenge.tag != q(SASL, "challenge"):
            return challenge
        self.send(f"<response xmlns='{SASL}'>{scram.final(challenge.text or '')}</response>")
        return self.next()

    def plain(self, user: str, password: str) -> ET.Element:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
        return self.next()

    def bind(self, resource: str) -> str:
        self.open()
        self.send(f"<iq type='set' id='bind'><bind xmlns='{BIND}'><resource>{resource}</resource></bind></iq>")
        reply = self.until("{jabber:client}iq")
        return reply.find(f"{q(BIND, 'bind')}/{q(BIND, 'jid')}").text

    def login(self, user: str, password: str, resource: str = "raw") -> str:
        """STARTTLS (unless already TLS), SCRAM-SHA-256, bind; the bound JID."""
        features = self.open()
        if self.tls is None and features.find(q(TLS, "starttls")) is not None:
            self.starttls()
        result = self.scram(user, password)
        if result.tag != q(SASL, "success"):
            raise AssertionError(f"login failed: {ET.tostring(result)!r}")
        return self.bind(resource)


def mechanisms(features: ET.Element) -> list[str]:
    return [m.text for m in features.iter(q(SASL, "mechanism"))]


class Scram:
    """The client side of SCRAM (RFC 5802), base64 in and out."""

    def __init__(self, user: str, password: str, mechanism: str = "SCRAM-SHA-256", *, binding: str | None = None,
                 binding_data: bytes | None = None) -> None:
        self.hash = "sha256" if "SHA-256" in mechanism else "sha1"
        self.password = password
        self.gs2 = f"p={binding},," if binding else "n,,"
        self.binding_data = binding_data or b""
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.first_bare = f"n={user},r={self.nonce}"

    def first(self) -> str:
        return base64.b64encode((self.gs2 + self.first_bare).encode()).decode()

    def final(self, challenge: str) -> str:
        server_first = base64.b64decode(challenge).decode()
        fields = dict(part.split("=", 1) for part in server_first.split(","))
        salted = hashlib.pbkdf2_hmac(self.hash, self.password.encode(), base64.b64decode(fields["s"]),
                                     int(fields["i"]))
        cbind = self.gs2.encode() + self.binding_data
        final_bare = f"c={base64.b64encode(cbind).decode()},r={fields['r']}"
        auth_message = f"{self.first_bare},{server_first},{final_bare}".encode()
        client_key = hmac.digest(salted, b"Client Key", self.hash)
        signature = hmac.digest(hashlib.new(self.hash, client_key).digest(), auth_message, self.hash)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return base64.b64encode(f"{final_bare},p={base64.b64encode(proof).decode()}".encode()).decode()
