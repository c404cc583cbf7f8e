"""Authentication attacks against a real node: plaintext hops (tls-required) and parallel password guessing.

Each attack runs while a well-behaved client pings the node (tests/support/attack.py): its round trip must
stay under 250 ms.
"""

from __future__ import annotations

import base64
import urllib.request
import xml.etree.ElementTree as ET

from twisted.trial.unittest import TestCase

from tests.clients.raw import SASL, Scram, mechanisms, q
from tests.clients.ws import WSClient
from tests.support.attack import MAX_RTT, under_attack
from tests.support.server import start_server

PASSWORD = "pencil"
HTTPBIND = "http://jabber.org/protocol/httpbind"
REMOTE = "203.0.113.7"  # a client address that is not loopback


class Bosh:
    """A minimal BOSH client sending extra request headers (as a reverse proxy in front of the node would)."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.url = f"http://127.0.0.1:{port}/http-bind"
        self.headers = headers or {}
        self.rid = 5000
        self.sid: str | None = None

    def post(self, payload: str = "", attrs: str = "") -> ET.Element:
        self.rid += 1
        sid = f" sid='{self.sid}'" if self.sid else ""
        body = f"<body xmlns='{HTTPBIND}' rid='{self.rid}'{sid} {attrs} xmlns:xmpp='urn:xmpp:xbosh'>{payload}</body>"
        request = urllib.request.Request(self.url, data=body.encode(),
                                         headers={"Content-Type": "text/xml", **self.headers})
        with urllib.request.urlopen(request, timeout=15) as answer:
            return ET.fromstring(answer.read())

    def close(self) -> None:
        """End the session (a terminate request: the node answers it and forgets the session)."""
        if self.sid is not None:
            self.post(attrs="type='terminate'")

    def features(self) -> ET.Element:
        created = self.post(attrs="to='localhost' wait='5' hold='1' ver='1.11' xmpp:version='1.0'")
        self.sid = created.get("sid")
        features = created.find("{http://etherx.jabber.org/streams}features")
        return features if features is not None else self.post()[0]

    def scram(self, user: str, password: str) -> ET.Element:
        scram = Scram(user, password, "SCRAM-SHA-1")
        answer = self.post(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'>{scram.first()}</auth>")[0]
        if answer.tag != q(SASL, "challenge"):
            return answer
        return self.post(f"<response xmlns='{SASL}'>{scram.final(answer.text)}</response>")[0]

    def plain(self, user: str, password: str) -> ET.Element:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return self.post(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")[0]


def ws_client(port: int, headers: dict[str, str]) -> WSClient:
    class Proxied(WSClient):
        extra_headers = "".join(f"{name}: {value}\r\n" for name, value in headers.items())

    return Proxied(port)


def ws_scram(client: WSClient, user: str, password: str) -> tuple[list[str], ET.Element]:
    features = client.open("localhost")
    scram = Scram(user, password, "SCRAM-SHA-1")
    client.send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'>{scram.first()}</auth>")
    answer = client.next()
    if answer is not None and answer.tag == q(SASL, "challenge"):
        client.send(f"<response xmlns='{SASL}'>{scram.final(answer.text)}</response>")
        answer = client.next()
    return mechanisms(features), answer


class TlsRequiredCase(TestCase):
    """H5: a domain's ``tls-required`` (default true) holds on BOSH and WebSocket too."""

    timeout = 60
    extra_config = ""

    async def setUp(self) -> None:
        self.running = await start_server(self, self.extra_config, components=("c2s", "bosh", "ws2s"))
        await self.running.add_user("alice@localhost", PASSWORD)

    async def attack(self, attack):
        result, rtts = await under_attack(self.running, attack)
        self.assertLess(max(rtts), MAX_RTT, f"ping round trips under attack: {sorted(rtts)[-5:]}")
        return result

    def assertEncryptionRequired(self, answer: ET.Element) -> None:
        self.assertEqual(answer.tag, q(SASL, "failure"), ET.tostring(answer))
        self.assertIsNotNone(answer.find(q(SASL, "encryption-required")), ET.tostring(answer))
        self.assertIn("encrypted connection", answer.findtext(q(SASL, "text")) or "")


class TrustedProxyTests(TlsRequiredCase):
    """The default trusted proxy is loopback: the test client plays a reverse proxy in front of the node."""

    async def test_bosh_client_on_plain_http_behind_proxy_gets_encryption_required(self) -> None:
        def attack():
            client = Bosh(self.running.ports["bosh"]["plain"], {"X-Forwarded-For": REMOTE,
                                                               "X-Forwarded-Proto": "http"})
            try:
                return mechanisms(client.features()), client.scram("alice", PASSWORD)
            finally:
                client.close()

        offered, answer = await self.attack(attack)
        self.assertNotIn("PLAIN", offered)
        self.assertEncryptionRequired(answer)

    async def test_bosh_client_on_https_behind_proxy_may_use_plain(self) -> None:
        def login():
            client = Bosh(self.running.ports["bosh"]["plain"], {"X-Forwarded-For": REMOTE,
                                                               "X-Forwarded-Proto": "https"})
            try:
                return mechanisms(client.features()), client.plain("alice", PASSWORD)
            finally:
                client.close()

        offered, answer = await self.attack(login)
        self.assertIn("PLAIN", offered)
        self.assertEqual(answer.tag, q(SASL, "success"))

    async def test_websocket_behind_proxy_on_plain_http(self) -> None:
        def attack():
            client = ws_client(self.running.ports["ws2s"]["plain"], {"X-Forwarded-For": REMOTE,
                                                                     "X-Forwarded-Proto": "http"})
            try:
                return ws_scram(client, "alice", PASSWORD)
            finally:
                client.close()

        offered, answer = await self.attack(attack)
        self.assertNotIn("PLAIN", offered)
        self.assertEncryptionRequired(answer)

    async def test_loopback_client_counts_as_encrypted(self) -> None:
        def login():
            client = WSClient(self.running.ports["ws2s"]["plain"])
            try:
                return ws_scram(client, "alice", PASSWORD)
            finally:
                client.close()

        offered, answer = await self.attack(login)
        self.assertIn("PLAIN", offered)  # --secure-loopback (default): the hop counts as encrypted
        self.assertEqual(answer.tag, q(SASL, "success"))


class UntrustedPeerTests(TlsRequiredCase):
    """Nobody is trusted and loopback is not special: headers from the client itself are ignored."""

    extra_config = "--trusted-proxies=\n--secure-loopback=false\n"

    async def test_forged_forwarded_proto_is_ignored(self) -> None:
        def attack():
            headers = {"X-Forwarded-For": REMOTE, "X-Forwarded-Proto": "https",
                       "Forwarded": "for=198.51.100.1;proto=https"}
            client = ws_client(self.running.ports["ws2s"]["plain"], headers)
            try:
                websocket = ws_scram(client, "alice", PASSWORD)
            finally:
                client.close()
            bosh = Bosh(self.running.ports["bosh"]["plain"], headers)
            try:
                return websocket, (mechanisms(bosh.features()), bosh.scram("alice", PASSWORD))
            finally:
                bosh.close()

        (ws_offered, ws_answer), (bosh_offered, bosh_answer) = await self.attack(attack)
        self.assertNotIn("PLAIN", ws_offered)
        self.assertNotIn("PLAIN", bosh_offered)
        self.assertEncryptionRequired(ws_answer)
        self.assertEncryptionRequired(bosh_answer)


class ConsiderSecureTests(TlsRequiredCase):
    """``bosh/consider-secure``: TLS ends at a proxy that sends no scheme header; the operator says so."""

    extra_config = "--trusted-proxies=\n--secure-loopback=false\nbosh/consider-secure[B]=true\n"

    async def test_bosh_counts_as_encrypted_websocket_does_not(self) -> None:
        def login():
            bosh = Bosh(self.running.ports["bosh"]["plain"])
            offered = mechanisms(bosh.features())
            client = WSClient(self.running.ports["ws2s"]["plain"])
            try:
                websocket = ws_scram(client, "alice", PASSWORD)
            finally:
                client.close()
            try:
                return offered, bosh.plain("alice", PASSWORD), websocket
            finally:
                bosh.close()

        offered, answer, (_, ws_answer) = await self.attack(login)
        self.assertIn("PLAIN", offered)
        self.assertEqual(answer.tag, q(SASL, "success"))
        self.assertEncryptionRequired(ws_answer)


class GuessingTests(TestCase):
    """M2: N parallel connections guessing passwords are throttled as one (per account, per address)."""

    timeout = 90
    workers = 8
    max_delay = 0.2  # start_server's --auth-failure-max-delay (its --auth-failure-delay is 0.05)

    async def setUp(self) -> None:
        self.running = await start_server(self, components=("c2s", "ws2s"))
        await self.running.add_user("alice@localhost", PASSWORD)

    def guess(self, accounts: list[str], replies: int = 48) -> tuple[list[str], float]:
        """``workers`` threads, each over its own WebSocket (reconnecting after 3 failures), send PLAIN with
        wrong passwords for ``accounts`` (round robin) until ``replies`` answers came back; the answers'
        conditions and the time it took."""
        import threading
        import time

        port = self.running.ports["ws2s"]["plain"]
        conditions: list[str] = []
        lock = threading.Lock()
        started = time.monotonic()

        def worker(n: int) -> None:
            tries = 0
            while True:
                client = WSClient(port)
                try:
                    client.open("localhost")
                    for _ in range(3):
                        with lock:
                            if len(conditions) >= replies:
                                return
                        user = accounts[(n + tries) % len(accounts)]
                        tries += 1
                        token = base64.b64encode(f"\0{user}\0guess{tries}".encode()).decode()
                        client.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
                        answer = client.next()
                        with lock:
                            conditions.append(answer[0].tag.split("}")[1])
                finally:
                    client.close()

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(self.workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return conditions, time.monotonic() - started

    async def check(self, accounts: list[str]) -> None:
        (conditions, elapsed), rtts = await under_attack(self.running, lambda: self.guess(accounts))
        checked = conditions.count("not-authorized")
        self.assertEqual(set(conditions) - {"not-authorized", "temporary-auth-failure"}, set(), conditions)
        # One burst of at most one guess per connection (nothing was failing yet), a few for the address's
        # grace, then one check per max-delay slot, whatever the number of connections.
        bound = self.workers + 2 + elapsed / self.max_delay + 1
        self.assertLessEqual(checked, bound, f"{checked} passwords checked in {elapsed:.2f} s "
                                             f"({checked / elapsed:.1f}/s) by {self.workers} connections")
        self.assertLess(max(rtts), MAX_RTT, f"ping round trips under attack: {sorted(rtts)[-5:]}")

    async def test_parallel_guesses_on_one_account(self) -> None:
        await self.check(["alice"])

    async def test_parallel_guesses_on_many_accounts_from_one_address(self) -> None:
        await self.check([f"user{n}" for n in range(40)])
