"""What clients can make a real node write to its log, and the default cost of a stored password.

* Clients that never authenticate cannot fill the log (per-address budget, no HTTP access log).
* A BOSH sid (a bearer token) never appears whole in the log.
* New credentials get 10,000 PBKDF2 iterations by default, and unknown accounts show the same count.
"""

from __future__ import annotations

import base64
import os
import socket
import tempfile

from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.clients.raw import RawClient
from tests.support.attack import MAX_RTT, under_attack
from tests.support.server import free_port, start_server
from tests.test_attack_auth import Bosh
from xmppcluster.config import parse_text
from xmppcluster.ops.service import makeService

ATTACKER = "127.0.0.2"
ROUNDS = 60


class LogCapture:
    """Every log event of level info or above while it is installed, as text."""

    def __init__(self, test: TestCase) -> None:
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self)
        test.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict) -> None:
        level = event.get("log_level")
        if level is None or level >= LogLevel.info:
            self.lines.append(formatEvent(event) or "")


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(ATTACKER, 0))


def drain(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    finally:
        sock.close()
    return data


class UnauthenticatedLogTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.running = await start_server(self, components=("c2s", "bosh", "ws2s"))

    def hammer(self) -> None:
        """ROUNDS of each: broken BOSH bodies, c2s streams of garbage, WebSocket handshakes without xmpp."""
        ports = self.running.ports
        for _ in range(ROUNDS):
            sock = connect(ports["bosh"]["plain"])
            body = b"<body xmlns='http://jabber.org/protocol/httpbind' rid='1'"  # never closed
            sock.sendall(b"POST /http-bind HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            assert b"bad-request" in drain(sock)
            sock = connect(ports["c2s"]["plain"])
            sock.sendall(b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
                         b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'><a><b></a>")
            assert b"not-well-formed" in drain(sock)
            sock = connect(ports["ws2s"]["plain"])
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                         b"Sec-WebSocket-Protocol: chat\r\n\r\n")
            assert b" 400 " in drain(sock)

    async def test_garbage_from_one_address(self) -> None:
        capture = LogCapture(self)
        _, rtts = await under_attack(self.running, self.hammer)
        about = [line for line in capture.lines if ATTACKER in line or "handshake" in line or "POST" in line]
        # 3 x 60 refused clients, up to 4 lines each before; now the address's budget (20) and one notice.
        self.assertLessEqual(len(about), 21 + 1, "\n".join(about))
        self.assertTrue(any("than allowed" in line for line in about), about)
        self.assertLess(max(rtts), MAX_RTT, f"ping round trips under attack: {sorted(rtts)[-5:]}")


class BoshSidTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.running = await start_server(self, components=("c2s", "bosh"))
        await self.running.add_user("alice@localhost", "pencil")

    async def test_sid_never_logged_whole(self) -> None:
        capture = LogCapture(self)

        def session() -> str:
            bosh = Bosh(self.running.ports["bosh"]["plain"])
            bosh.features()
            assert bosh.scram("alice", "pencil").tag.endswith("success")
            sid = bosh.sid
            bosh.close()
            return sid

        sid, rtts = await under_attack(self.running, session)
        self.assertTrue(sid)
        self.assertTrue(any(sid[:8] in line for line in capture.lines), capture.lines)  # named by a prefix
        self.assertFalse([line for line in capture.lines if sid in line])
        self.assertLess(max(rtts), MAX_RTT)


class DefaultIterationsTests(TestCase):
    timeout = 60

    async def test_new_credentials_and_unknown_accounts_show_10000(self) -> None:
        directory = tempfile.mkdtemp(prefix="xmppcluster-test-", dir=os.getcwd())
        port = free_port()
        config = parse_text(
            f"--user-db-uri=sqlite:///{directory}/db.sqlite\n--ssl-certs-location={directory}/certs\n"
            f"--virt-hosts=localhost:-tls-required\nc2s/connections/ports[i]={port}\n"
            f"c2s/connections/{port}/tls/required[B]=false\nc2s/connections/{port}/ifc[s]=127.0.0.1\n"
            "bosh/connections/ports[i]=\nws2s/connections/ports[i]=\n")
        service = makeService(config)
        service.startService()
        self.addCleanup(service.stopService)
        await service.ready
        server = service.server
        await server.storage.accounts.create("alice", "localhost", "pencil")

        def server_first(user: str) -> str:
            client = RawClient(port)
            try:
                client.open()
                first = base64.b64encode(f"n,,n={user},r=abcdefgh".encode()).decode()
                client.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>"
                            f"{first}</auth>")
                return base64.b64decode(client.next().text).decode()
            finally:
                client.close()

        known, unknown = await deferToThread(lambda: (server_first("alice"), server_first("nobody")))
        self.assertTrue(known.endswith(",i=10000"), known)
        self.assertTrue(unknown.endswith(",i=10000"), unknown)


