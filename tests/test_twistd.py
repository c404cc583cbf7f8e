"""The real entry point: ``twistd -n xmppcluster`` as a separate process."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile

from twisted.trial.unittest import TestCase

from tests.support.process import ROOT, TWISTD, Twistd, wait_for_port
from tests.support.server import free_port

HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


class TwistdTests(TestCase):
    timeout = 60

    def directory(self) -> str:
        return tempfile.mkdtemp(prefix="twistd-", dir=os.getcwd())

    def test_plugin_listed(self) -> None:
        out = subprocess.run([TWISTD, "--help"], capture_output=True, text=True, cwd=ROOT).stdout
        self.assertIn("xmppcluster", out)

    def test_default_config_answers_with_stream_header(self) -> None:
        """The embedded default (SQLite, localhost, generated certificate) answers on c2s."""
        directory = self.directory()
        ports = {name: free_port() for name in ("c2s", "c2s_tls", "bosh", "ws2s")}
        config = os.path.join(directory, "init.properties")
        with open(os.path.join(ROOT, "etc", "init.properties")) as sample, open(config, "w") as out:
            out.write(sample.read())
            out.write(f"\nc2s/connections/ports[i]={ports['c2s']},{ports['c2s_tls']}\n"
                      f"c2s/connections/{ports['c2s_tls']}/socket=ssl\n"
                      f"bosh/connections/ports[i]={ports['bosh']}\n"
                      f"ws2s/connections/ports[i]={ports['ws2s']}\n")
        server = Twistd(directory, config, "--node-name=node1.test")
        self.addCleanup(server.stop)
        wait_for_port(ports["c2s"], process=server)
        with socket.create_connection(("127.0.0.1", ports["c2s"]), timeout=5) as client:
            client.sendall(HEADER)
            answer = b""
            while b"</stream:features>" not in answer:
                chunk = client.recv(4096)
                if not chunk:
                    break
                answer += chunk
        self.assertIn(b"<stream:stream", answer)
        self.assertIn(b"from='localhost'", answer)
        self.assertIn(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>", answer)
        self.assertTrue(os.path.exists(os.path.join(directory, "certs", "default.pem")))
        self.assertTrue(os.path.exists(os.path.join(directory, "data", "xmppcluster.sqlite")))
        # twistd exits by the signal it stopped on, after a clean shutdown.
        self.assertIn(server.stop(), (0, -15))
        self.assertIn("node node1.test serving localhost", server.output())

    def test_config_error_is_one_line(self) -> None:
        directory = self.directory()
        config = os.path.join(directory, "bad.properties")
        with open(config, "w") as out:
            out.write("# seed lines with a typo\nws2s/connections/ports[i]=5290,5291\n"
                      "ws2s/connections/5291/socket=sll\n")
        result = subprocess.run([TWISTD, "-n", "--pidfile=", "xmppcluster", "--config", config],
                                capture_output=True, text=True, cwd=directory, timeout=30)
        self.assertNotEqual(result.returncode, 0)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn(f"{config}:3:", lines[0])
        self.assertIn("ws2s/connections/5291/socket", lines[0])
        self.assertIn("sll", lines[0])
        self.assertIn("plain", lines[0])
