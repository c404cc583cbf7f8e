"""TLS and ALPN interop with TLS stacks nobody here wrote: OpenSSL's ``s_client``, Go's crypto/tls (Debian's
``go-sendxmpp``), Node's tls (``@xmpp/client`` over TCP) and Chromium (Strophe.js over https and wss).

The node serves a default certificate and one per vhost, so SNI switches contexts. Every server-side ALPN
decision is recorded (a spy around ``xmppcluster.core.tls.select_alpn``): what each client offered and what the
listener selected. Each tool is installed by ``./dev test`` (``tests/install-tls-clients``, ``tests/js/install``);
a missing one skips its tests with the reason printed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from OpenSSL import SSL
from twisted.internet import reactor, task
from twisted.internet.defer import ensureDeferred
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest

from tests.support.browser import require, run_js, spki_sha256
from tests.support.slix import run_slixmpp
from tests.test_alpn import DOMAINS, NODE, PASSWORD, UNKNOWN, ALPNTestCase
from xmppcluster.core import tls


def skip_because(reason: str) -> None:
    print(f"\nSKIPPED interop test: {reason}", file=sys.stderr)
    raise SkipTest(reason)


class ALPNSpy:
    """Wraps the real select callback: records (offered, selected or None) for every handshake with ALPN."""

    def __init__(self, original) -> None:
        self.original = original
        self.seen: list[tuple[tuple[bytes, ...], bytes | None]] = []

    def __call__(self, connection: SSL.Connection, offered: list[bytes]) -> bytes | object:
        selected = self.original(connection, offered)
        self.seen.append((tuple(offered), None if selected is SSL.NO_OVERLAPPING_PROTOCOLS else selected))
        return selected


class InteropTestCase(ALPNTestCase):
    async def setUp(self) -> None:
        # Before the server starts: every context the store builds (now or on reload) takes the spy.
        self.spy = ALPNSpy(getattr(tls, "select_alpn", None))
        if self.spy.original is not None:  # (absent before the ALPN fix: nothing recorded, the checks fail)
            self.patch(tls, "select_alpn", self.spy)
        await super().setUp()


# -- OpenSSL s_client --------------------------------------------------------------------------------

#: -alpn argument (None: no ALPN extension)
ALPN_OFFERS = {"none": None, "xmpp-client": "xmpp-client", "unknown": "foo,bar", "http/1.1": "http/1.1"}
SNIS = {"none": None, "vhost": DOMAINS[0], "unknown": UNKNOWN}


def s_client(openssl: str, port: int, *, alpn: str | None, sni: str | None, ca_file: str,
             starttls_host: str | None = None) -> tuple[int, str]:
    """One ``openssl s_client`` handshake (stdin empty: it closes right after); (exit code, stdout + stderr)."""
    argv = [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", ca_file, "-verify_return_error"]
    argv += ["-servername", sni] if sni else ["-noservername"]
    if alpn:
        argv += ["-alpn", alpn]
    if starttls_host:
        argv += ["-starttls", "xmpp", "-xmpphost", starttls_host]
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=15, check=False)
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


class OpenSSLMatrixTests(InteropTestCase):
    """ALPN {none, xmpp-client, unknown, http/1.1} x SNI {none, vhost, unknown} on every kind of TLS listener."""

    def setUp(self):
        self.openssl = shutil.which("openssl")
        if self.openssl is None:
            skip_because("openssl is not installed (Debian: apt-get install openssl)")
        return super().setUp()

    def run_matrix(self, port: int, speaks: str, *, starttls: bool = False) -> list[str]:
        """Every combination against ``port``; a list of what went wrong (empty: all good)."""
        problems = []
        for alpn_name, alpn in ALPN_OFFERS.items():
            for sni_name, sni in SNIS.items():
                label = f"ALPN {alpn_name}, SNI {sni_name}"
                code, out = s_client(self.openssl, port, alpn=alpn, sni=sni, ca_file=self.ca_file,
                                     starttls_host=DOMAINS[0] if starttls else None)
                expected_alpn = f"ALPN protocol: {speaks}" if alpn == speaks else "No ALPN negotiated"
                # STARTTLS: the stream `to` picks the vhost's context, and an unknown SNI keeps it.
                expected_cn = DOMAINS[0] if starttls or sni == DOMAINS[0] else NODE
                if code != 0 or re.search(r"\balert\b", out, re.IGNORECASE):
                    problems.append(f"{label}: exit {code}: {out[-600:]}")
                elif expected_alpn not in out:
                    found = re.findall(r"^(?:ALPN protocol: .*|No ALPN negotiated)$", out, re.MULTILINE)
                    problems.append(f"{label}: expected {expected_alpn!r}, got {found}")
                elif f"subject=CN = {expected_cn}\n" not in out or "Verify return code: 0 (ok)" not in out:
                    problems.append(f"{label}: expected a verified certificate for {expected_cn}")
        return problems

    async def test_starttls_c2s(self) -> None:
        problems = await deferToThread(self.run_matrix, self.running.ports["c2s"]["plain"], "xmpp-client",
                                       starttls=True)
        self.assertEqual(problems, [])

    async def test_direct_tls_c2s(self) -> None:
        self.assertEqual(await deferToThread(self.run_matrix, self.port("c2s"), "xmpp-client"), [])

    async def test_https_bosh_and_websocket(self) -> None:
        for component in ("bosh", "ws2s"):
            self.assertEqual(await deferToThread(self.run_matrix, self.port(component), "http/1.1"), [], component)

    async def test_after_reload(self) -> None:
        self.write_certificates()
        self.running.server.certs.reload()
        problems = await deferToThread(self.run_matrix, self.running.ports["c2s"]["plain"], "xmpp-client",
                                       starttls=True)
        problems += await deferToThread(self.run_matrix, self.port("c2s"), "xmpp-client")
        self.assertEqual(problems, [])


# -- go-sendxmpp (Go's crypto/tls) --------------------------------------------------------------------


class GoSendxmppTests(InteropTestCase):
    """go-sendxmpp (offers ALPN ``xmpp-client`` and SNI = the JID's domain, on STARTTLS and on direct TLS) sends;
    slixmpp (Python's ssl, over STARTTLS) receives."""

    def setUp(self):
        self.go_sendxmpp = shutil.which("go-sendxmpp")
        if self.go_sendxmpp is None:
            skip_because("go-sendxmpp is not installed (tests/install-tls-clients installs Debian's go-sendxmpp)")
        return super().setUp()

    async def send(self, port: int, body: str, *, direct_tls: bool) -> None:
        home = os.path.abspath(self.mktemp())  # no ~/.config/go-sendxmpp/sendxmpprc from the user running tests
        os.makedirs(home)
        message = os.path.join(home, "message.txt")
        with open(message, "w") as f:
            f.write(body)
        argv = ["-j", f"127.0.0.1:{port}", "-u", f"user@{DOMAINS[0]}", "-p", PASSWORD, "-m", message,
                "--timeout", "10", *(["-t"] if direct_tls else []), f"user@{DOMAINS[1]}"]
        # Go reads its trust roots from SSL_CERT_FILE on Linux: the test CA only.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "SSL_CERT_FILE": self.ca_file}
        out, err, code = await getProcessOutputAndValue(self.go_sendxmpp, argv, env=env)
        self.assertEqual(code, 0, (out + err).decode(errors="replace"))

    async def test_message_through_starttls_and_direct_tls(self) -> None:
        receiver = f"user@{DOMAINS[1]}"
        received = ensureDeferred(run_slixmpp(self.running, [
            {"jid": f"{receiver}/slix", "password": PASSWORD, "expect": 2}], timeout=15))
        self.addCleanup(lambda: received.addErrback(lambda _: None))  # the subprocess ends before the server stops
        for _ in range(500):  # barrier: the receiver is online (bound, available presence) before anything is sent
            if self.running.server.sessions.available(receiver) or received.called:
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        await self.send(self.running.ports["c2s"]["plain"], "via STARTTLS (5222)", direct_tls=False)
        await self.send(self.port("c2s"), "via direct TLS (5223)", direct_tls=True)
        [result] = await received
        self.assertIsNone(result["error"], result)
        self.assertEqual(sorted(m["body"] for m in result["received"]),
                         ["via STARTTLS (5222)", "via direct TLS (5223)"])
        self.assertTrue(all(m["from"].startswith(f"user@{DOMAINS[0]}/") for m in result["received"]), result)
        go = [(offered, selected) for offered, selected in self.spy.seen if offered == (b"xmpp-client",)]
        self.assertEqual(go, [((b"xmpp-client",), b"xmpp-client")] * 2, self.spy.seen)


# -- @xmpp/client (Node's tls) ------------------------------------------------------------------------


class XmppClientTCPTests(InteropTestCase):
    """@xmpp/client over TCP: ``xmpp://`` (STARTTLS) and ``xmpps://`` (direct TLS), offering ALPN xmpp-client."""

    def setUp(self):
        require(browser=False, packages=("@xmpp/client",))
        return super().setUp()

    async def login(self, service: str, domain: str, *, alpn: list[str] | None) -> dict:
        spec = {"service": service, "domain": domain, "username": "user", "password": PASSWORD,
                "resource": "node", "timeout": 20000, "servername": domain}
        if alpn is not None:
            spec["alpn"] = alpn
        js = run_js("xmpp_client.mjs", spec, env={"NODE_EXTRA_CA_CERTS": self.ca_file}, timeout=40)
        self.addCleanup(js.stop)
        result = await js.result
        self.assertIsNone(result["error"], result)
        self.assertEqual(result["jid"], f"user@{domain}/node")
        self.assertEqual(result["roster"]["type"], "result", result)
        return result

    async def test_direct_tls_negotiates_xmpp_client(self) -> None:
        result = await self.login(f"xmpps://127.0.0.1:{self.port('c2s')}", DOMAINS[0], alpn=["xmpp-client"])
        self.assertEqual([(t["alpn"], t["servername"]) for t in result["tls"]], [("xmpp-client", DOMAINS[0])])

    async def test_direct_tls_with_unknown_protocols(self) -> None:
        result = await self.login(f"xmpps://127.0.0.1:{self.port('c2s')}", DOMAINS[1], alpn=["h2", "foo"])
        self.assertEqual([t["alpn"] for t in result["tls"]], [None])
        self.assertIn(((b"h2", b"foo"), None), self.spy.seen)

    async def test_starttls_with_alpn(self) -> None:
        result = await self.login(f"xmpp://127.0.0.1:{self.running.ports['c2s']['plain']}", DOMAINS[1],
                                  alpn=["xmpp-client"])
        self.assertEqual([t["alpn"] for t in result["tls"]], ["xmpp-client"])


# -- Chromium (Strophe.js over https BOSH and wss) ---------------------------------------------------


class ChromiumTests(InteropTestCase):
    """Chromium offers ALPN h2 and http/1.1; the https listeners pick http/1.1. The URLs name a vhost (mapped to
    127.0.0.1), so Chromium sends it as SNI and gets the vhost's certificate (trusted by its key)."""

    timeout = 120

    def setUp(self):
        require(browser=True, packages=("strophe.js", "playwright-core"))
        return super().setUp()

    async def login(self, service: str, domain: str, offer: tuple[bytes, ...]) -> dict:
        spki = spki_sha256(os.path.join(self.certs_dir, f"{domain}.pem"))
        js = run_js("strophe.mjs", {"service": service, "jid": f"user@{domain}/web", "password": PASSWORD,
                                    "spki": [spki], "hostRules": f"MAP {domain} 127.0.0.1", "timeout": 30000})
        self.addCleanup(js.stop)
        result = await js.result
        self.assertIsNone(result.get("error"), result)
        self.assertTrue(result["connected"], result)
        self.assertEqual(result["jid"], f"user@{domain}/web")
        self.assertEqual(result["roster"]["type"], "result", result)
        self.assertEqual(set(self.spy.seen), {(offer, b"http/1.1")}, self.spy.seen)
        return result

    async def test_https_bosh(self) -> None:
        result = await self.login(f"https://{DOMAINS[0]}:{self.port('bosh')}/http-bind", DOMAINS[0],
                                  (b"h2", b"http/1.1"))
        self.assertTrue(result["protocols"], result)
        self.assertEqual(set(result["protocols"]), {"http/1.1"}, result["protocols"])

    async def test_wss(self) -> None:
        # Chromium offers h2 only where it could use it: its WebSocket handshake offers http/1.1 alone.
        await self.login(f"wss://{DOMAINS[1]}:{self.port('ws2s')}/xmpp-websocket", DOMAINS[1], (b"http/1.1",))
