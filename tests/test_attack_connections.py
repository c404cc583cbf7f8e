"""Connection floods from one address against a real node: the per-address cap on every listener (TCP, HTTP,
WebSocket), the client address behind a trusted proxy, and the log lines such clients can cause.

The attacker connects from 127.0.0.2 while a well-behaved client on 127.0.0.1 pings the node
(tests/support/attack.py): its round trip must stay under 250 ms.
"""

from __future__ import annotations

import socket
import urllib.error
import xml.etree.ElementTree as ET

from twisted.internet import task
from twisted.trial.unittest import TestCase

from tests.clients.ws import WSClient
from tests.support.attack import MAX_RTT, under_attack
from tests.support.server import start_server
from tests.test_attack_auth import Bosh
from xmppcluster.streams.throttle import connection_limit

ATTACKER = "127.0.0.2"
CAP = 10
FLOOD = 40
HEADER = ("<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(ATTACKER, 0))


def read_all(sock: socket.socket) -> bytes:
    """Everything the node sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def read_some(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class ConnectionCapTests(TestCase):
    timeout = 90

    async def setUp(self) -> None:
        self.running = await start_server(self, f"--max-connections-per-ip={CAP}\n",
                                          components=("c2s", "bosh", "ws2s"))
        self.limit = connection_limit(self.running.server)

    async def until(self, condition, what: str) -> None:
        """Wait (in the reactor) until ``condition()`` holds: the node has processed the closes."""
        from twisted.internet import reactor

        for _ in range(500):
            if condition():
                return
            await task.deferLater(reactor, 0.01, lambda: None)
        self.fail(f"never happened: {what}")

    def flood(self, port: int, greeting: bytes, marker: bytes) -> tuple[list[bytes], list[socket.socket]]:
        """CAP + FLOOD connections from the attacker: what the refused ones got, and the open ones."""
        kept: list[socket.socket] = []
        refused: list[bytes] = []
        for _ in range(CAP + FLOOD):
            sock = connect(port)
            sock.sendall(greeting)
            if len(kept) < CAP:
                answer = read_some(sock, marker)
                self.assertIn(marker, answer)  # served: the answer to the greeting
                kept.append(sock)
            else:
                refused.append(read_all(sock))
                sock.close()
        return refused, kept

    async def attack(self, port: int, greeting: bytes, marker: bytes) -> list[bytes]:
        def attack():
            refused, kept = self.flood(port, greeting, marker)
            for sock in kept:
                sock.close()
            return refused

        refused, rtts = await under_attack(self.running, attack)
        self.assertLess(max(rtts), MAX_RTT, f"ping round trips under attack: {sorted(rtts)[-5:]}")
        # Every lease went back when the connections closed (the pinger's own is gone too).
        await self.until(lambda: ATTACKER not in self.limit.counts, f"{self.limit.counts}")
        return refused

    async def test_c2s(self) -> None:
        refused = await self.attack(self.running.ports["c2s"]["plain"], HEADER.encode(), b"<stream:features")
        self.assertEqual(len(refused), FLOOD)
        for answer in refused:
            self.assertIn(b"<policy-violation", answer)
            self.assertIn(b"too many connections from your address", answer)
            self.assertTrue(answer.endswith(b"</stream:stream>"), answer)

    async def test_http(self) -> None:
        request = b"GET /http-bind HTTP/1.1\r\nHost: localhost\r\n\r\n"
        refused = await self.attack(self.running.ports["bosh"]["plain"], request, b"BOSH endpoint")
        self.assertEqual(len(refused), FLOOD)
        for answer in refused:
            self.assertTrue(answer.startswith(b"HTTP/1.1 429 Too Many Requests\r\n"), answer)

    async def test_websocket_connections_count_once(self) -> None:
        # A WebSocket takes its HTTP connection over, and with it the connection's lease: 10 WebSockets, then
        # the 11th connection is refused before any HTTP is read.
        def attack():
            sockets = []
            try:
                for _ in range(CAP):
                    sock = connect(self.running.ports["ws2s"]["plain"])
                    sockets.append(sock)
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                 b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n")
                    head = read_some(sock, b"\r\n\r\n")
                    self.assertIn(b" 101 ", head.split(b"\r\n")[0])
                extra = connect(self.running.ports["ws2s"]["plain"])
                sockets.append(extra)
                return read_all(extra)
            finally:
                for sock in sockets:
                    sock.close()

        answer, rtts = await under_attack(self.running, attack)
        self.assertTrue(answer.startswith(b"HTTP/1.1 429"), answer)
        self.assertLess(max(rtts), MAX_RTT)
        await self.until(lambda: ATTACKER not in self.limit.counts, f"{self.limit.counts}")


class BehindProxyTests(TestCase):
    """The node behind a reverse proxy on loopback (trusted by default): clients are told apart by the
    address the proxy names, and the proxy itself is never capped."""

    timeout = 90

    async def setUp(self) -> None:
        self.running = await start_server(self, f"--max-connections-per-ip={CAP}\nbosh/max-sessions-per-ip[I]=3\n",
                                          components=("c2s", "bosh", "ws2s"))

    async def test_bosh_sessions_per_client_not_per_proxy(self) -> None:
        def attack():
            outcomes = {}
            sessions = []
            for client in ("198.51.100.1", "198.51.100.2"):
                for n in range(4):
                    bosh = Bosh(self.running.ports["bosh"]["plain"], {"X-Forwarded-For": client,
                                                                     "X-Forwarded-Proto": "https"})
                    try:
                        created = bosh.post(attrs="to='localhost' wait='5' hold='1' ver='1.11' "
                                                  "xmpp:version='1.0'")
                    except urllib.error.HTTPError as error:  # pragma: no cover - legacy status codes
                        created = ET.fromstring(error.read())
                    outcomes[(client, n)] = created.get("condition") or "created"
                    bosh.sid = created.get("sid")
                    sessions.append(bosh)
            for bosh in sessions:
                if bosh.sid:
                    bosh.close()
            return outcomes

        outcomes, rtts = await under_attack(self.running, attack)
        for client in ("198.51.100.1", "198.51.100.2"):
            self.assertEqual([outcomes[(client, n)] for n in range(4)],
                             ["created", "created", "created", "policy-violation"], outcomes)
        self.assertLess(max(rtts), MAX_RTT)

    async def test_websockets_per_client_not_per_proxy(self) -> None:
        def attack():
            def open_ws(client: str) -> WSClient | str:
                class Proxied(WSClient):
                    extra_headers = f"X-Forwarded-For: {client}\r\nX-Forwarded-Proto: https\r\n"

                try:
                    return Proxied(self.running.ports["ws2s"]["plain"])
                except ConnectionError as error:
                    return str(error)

            opened = [open_ws("198.51.100.7") for _ in range(CAP + 1)]
            other = open_ws("198.51.100.8")  # another client behind the same proxy
            for client in [*opened, other]:
                if isinstance(client, WSClient):
                    client.close()
            return opened, other

        (opened, other), rtts = await under_attack(self.running, attack)
        self.assertTrue(all(isinstance(client, WSClient) for client in opened[:CAP]))
        self.assertIn("429", opened[CAP])
        self.assertIsInstance(other, WSClient)
        self.assertLess(max(rtts), MAX_RTT)
