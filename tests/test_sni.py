"""A certificate per name on every TLS listener: SNI on 5223/5281/5291, the stream ``to`` after STARTTLS on 5222,
and after a reload (SIGHUP, ``xmppcluster reload-certs``).  Every client verifies against the test CA."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import ssl
import subprocess
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet import reactor, task
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.clients.raw import RawClient
from tests.clients.tip1 import Session, WebSocket, tls_connect
from tests.support.certs import make_cert
from tests.support.server import RunningServer, start_server, test_ca
from xmppcluster.ops import cli

NODE = "node1.test"
DOMAINS = ("example2.com", "example3.com")
PASSWORD = "sni pass"


def reload_certs(*argv: str) -> tuple[int, str]:
    """``xmppcluster reload-certs ARGV``: (exit code, stdout + stderr)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = cli.main(["reload-certs", *argv])
    return code, out.getvalue()


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def served(port: int, sni: str | None, ca_file: str) -> x509.Certificate:
    """The leaf served on a direct-TLS port.  With ``sni``: SNI sent and the host name verified (stdlib ssl)."""
    if sni is not None:
        with tls_connect(sni, port, ca_file=ca_file, resolve={sni: "127.0.0.1"}) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3"), tls.version()
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = False  # no name to check against; the chain is still verified
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10)) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


class NoSNIClient(RawClient):
    """RawClient whose TLS sends no SNI: only the stream ``to`` can pick the certificate."""

    def _wrap_tls(self) -> None:
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.load_verify_locations(self.ca_file)
        context.set_verify(SSL.VERIFY_PEER, lambda *args: args[-1])
        connection = SSL.Connection(context, self.raw)
        connection.set_connect_state()
        self._retry(connection.do_handshake)
        self.tls = self.sock = connection


def starttls_certificate(port: int, domain: str, ca_file: str, *, login: bool = False) -> x509.Certificate:
    """STARTTLS on the plain c2s port for stream ``to=domain``, no SNI; the verified certificate (and a login)."""
    client = NoSNIClient(port, domain=domain, ca_file=ca_file)
    try:
        client.open()
        client.starttls()
        cert = client.tls.get_peer_certificate(as_cryptography=True)
        if login:
            result = client.scram("user", PASSWORD)
            assert result.tag.endswith("}success"), result.tag
            jid = client.bind("sni")
            assert jid.startswith(f"user@{domain}/"), jid
        return cert
    finally:
        client.close()


class SNITestCase(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.certs_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.certs_dir)
        ca = test_ca()
        self.ca_file = os.path.join(self.certs_dir, "..", "ca.pem")
        with open(self.ca_file, "wb") as f:
            f.write(ca.root_pem())
        self.leaves = {"default": make_cert(ca, [NODE], os.path.join(self.certs_dir, "default.pem"))[0]}
        for domain in DOMAINS:
            self.leaves[domain] = make_cert(ca, [domain], os.path.join(self.certs_dir, f"{domain}.pem"))[0]
        self.running: RunningServer = await start_server(
            self, f"--ssl-certs-location={self.certs_dir}\n", components=("c2s", "bosh", "ws2s"), domains=DOMAINS)
        for domain in DOMAINS:
            await self.running.add_user(f"user@{domain}", PASSWORD)
        ports = self.running.ports
        self.tls_ports = {"c2s 5223": ports["c2s"]["ssl"], "bosh 5281": ports["bosh"]["ssl"],
                          "ws2s 5291": ports["ws2s"]["ssl"]}

    def check_all(self, expected: dict[str, x509.Certificate]) -> None:
        """Every name on every direct-TLS port (SNI), and every vhost after STARTTLS (by ``to``)."""
        for label, port in self.tls_ports.items():
            for name in (*DOMAINS, NODE):
                cert = served(port, name, self.ca_file)
                self.assertEqual(_der(cert), _der(expected[name if name in DOMAINS else "default"]), (label, name))
            for sni in (None, "unknown.example"):  # no or unknown SNI: the default certificate
                cert = served(port, sni, self.ca_file) if sni is None else self._unknown(port)
                self.assertEqual(_der(cert), _der(expected["default"]), (label, sni))
                verify_certificate_hostname(cert, NODE)
        for domain in DOMAINS:
            cert = starttls_certificate(self.running.ports["c2s"]["plain"], domain, self.ca_file)
            verify_certificate_hostname(cert, domain)
            self.assertEqual(_der(cert), _der(expected[domain]), ("starttls", domain))

    def _unknown(self, port: int) -> x509.Certificate:
        context = ssl.create_default_context(cafile=self.ca_file)
        context.check_hostname = False
        with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                 server_hostname="unknown.example") as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))

    def replace_certificates(self) -> dict[str, x509.Certificate]:
        """New keys and certificates for every file of the directory, written in place."""
        ca = test_ca()
        new = {"default": make_cert(ca, [NODE], os.path.join(self.certs_dir, "default.pem"))[0]}
        for domain in DOMAINS:
            new[domain] = make_cert(ca, [domain], os.path.join(self.certs_dir, f"{domain}.pem"))[0]
        return new

    async def wait_served(self, cert: x509.Certificate, name: str = DOMAINS[0]) -> None:
        port = self.tls_ports["ws2s 5291"]
        for _ in range(200):
            current = await deferToThread(served, port, name, self.ca_file)
            if _der(current) == _der(cert):
                return
            await task.deferLater(reactor, 0.02, lambda: None)
        self.fail("the reloaded certificate was never served")


class SelectionTests(SNITestCase):
    async def test_certificate_per_name_on_every_listener(self) -> None:
        await deferToThread(self.check_all, self.leaves)

    async def test_wrong_name_fails_verification(self) -> None:
        # The default certificate names only the node: a client asking for a vhost without its own file would
        # fail verification, so the per-vhost selection above is what makes verification pass.
        os.unlink(os.path.join(self.certs_dir, "example3.com.pem"))
        self.running.server.certs.reload()
        with self.assertRaises(ssl.SSLCertVerificationError):
            await deferToThread(served, self.tls_ports["ws2s 5291"], "example3.com", self.ca_file)
        cert = await deferToThread(starttls_certificate, self.running.ports["c2s"]["plain"], "example3.com",
                                   self.ca_file)
        self.assertRaises(VerificationError, verify_certificate_hostname, cert, "example3.com")

    async def test_websocket_login_by_vhost_url(self) -> None:
        """wss://example2.com:5291/ and wss://example3.com:5291/ on one node: each verified, each logs in."""
        port = self.tls_ports["ws2s 5291"]

        def login(domain: str) -> str:
            ws = WebSocket(f"wss://{domain}:{port}/", ca_file=self.ca_file, resolve={domain: "127.0.0.1"})
            session = Session(ws, domain)
            try:
                return session.login("user", PASSWORD, "ws")
            finally:
                session.close()

        for domain in DOMAINS:
            jid = await deferToThread(login, domain)
            self.assertTrue(jid.startswith(f"user@{domain}/"), jid)

    async def test_starttls_then_login_per_vhost(self) -> None:
        for domain in DOMAINS:
            cert = await deferToThread(starttls_certificate, self.running.ports["c2s"]["plain"], domain,
                                       self.ca_file, login=True)
            self.assertEqual(_der(cert), _der(self.leaves[domain]))


class ReloadTests(SNITestCase):
    async def test_sighup_reloads_for_new_connections(self) -> None:
        handler = signal.getsignal(signal.SIGHUP)
        self.assertEqual(handler, self.running.service.sighup._on_signal)
        new = self.replace_certificates()
        await deferToThread(self.check_all, self.leaves)  # nothing changes before the signal
        os.kill(os.getpid(), signal.SIGHUP)
        await self.wait_served(new[DOMAINS[0]])
        await deferToThread(self.check_all, new)

    async def test_broken_file_keeps_previous_set(self) -> None:
        with open(os.path.join(self.certs_dir, "example2.com.pem"), "wb") as f:
            f.write(b"not a certificate")
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(5):
            await task.deferLater(reactor, 0.02, lambda: None)
        await deferToThread(self.check_all, self.leaves)

    async def test_admin_command(self) -> None:
        pidfile = os.path.abspath(self.mktemp())
        with open(pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
        new = self.replace_certificates()
        # --force: this test process is not twistd (the real-process path is in test_seed_tip2).
        self.assertEqual(reload_certs("--pidfile", pidfile, "--force"), (0, f"sent SIGHUP to {os.getpid()}; "
                                                                          "the server log reports the reloaded "
                                                                          "certificates\n"))
        await self.wait_served(new[DOMAINS[0]])
        await deferToThread(self.check_all, new)

    def test_admin_command_refuses_other_processes(self) -> None:
        pidfile = os.path.abspath(self.mktemp())
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        self.addCleanup(other.wait)
        self.addCleanup(other.kill)
        with open(pidfile, "w") as f:
            f.write(str(other.pid))
        code, text = reload_certs("--pidfile", pidfile)
        self.assertEqual(code, 1)
        self.assertIn("is not an xmppcluster server", text)
        self.assertIsNone(other.poll())  # not killed by a SIGHUP
        code, text = reload_certs("--pidfile", pidfile + ".missing")
        self.assertEqual(code, 1)
        self.assertIn("No such file", text)
        with open(pidfile, "w") as f:
            f.write("garbage")
        self.assertEqual(reload_certs("--pidfile", pidfile), (1, f"xmppcluster reload-certs: {pidfile}: not a process "
                                                               "id\n"))
