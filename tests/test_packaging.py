"""The operator's files in etc/: the systemd unit passes ``systemd-analyze verify`` and the nginx sample passes
``nginx -t``. Each is checked as shipped, with only the paths that exist on an operator's machine and not on this
one replaced (the virtualenv's twistd; a test certificate). Skipped, with the reason printed, without
systemd-analyze or nginx (``tests/install-nginx``, run by ``./dev test``, unpacks Debian's nginx).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SkipTest, TestCase

from tests.support.certs import make_cert
from tests.support.process import ROOT, TWISTD
from tests.support.server import test_ca

UNIT = os.path.join(ROOT, "etc", "xmppcluster.service")
NGINX_CONF = os.path.join(ROOT, "etc", "nginx-xmppcluster.conf")
NGINX_CANDIDATES = (os.path.join(ROOT, "tests", ".nginx", "usr", "sbin", "nginx"), "/usr/sbin/nginx")


def skip_test(reason: str) -> None:
    print(f"\nSKIPPED packaging test: {reason}", file=sys.stderr)
    raise SkipTest(reason)


def find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return next((path for path in NGINX_CANDIDATES if os.access(path, os.X_OK)), None)


class SystemdUnit(TestCase):
    def verify(self, text: str) -> tuple[int, str]:
        tool = shutil.which("systemd-analyze")
        if tool is None:
            skip_test("systemd-analyze is not installed (Debian: systemd)")
        directory = tempfile.mkdtemp(prefix="unit-", dir=os.getcwd())
        path = os.path.join(directory, "xmppcluster.service")
        with open(path, "w") as out:
            out.write(text)
        done = subprocess.run([tool, "verify", path], capture_output=True, text=True, timeout=60)
        return done.returncode, (done.stdout + done.stderr).strip()

    def shipped(self) -> str:
        with open(UNIT) as unit:
            text = unit.read()
        # The unit names /opt/xmppcluster/bin/twistd, which verify checks is executable: use this virtualenv's.
        return text.replace("/opt/xmppcluster/bin/twistd", TWISTD)

    def test_unit_verifies_without_a_warning(self) -> None:
        code, output = self.verify(self.shipped())
        self.assertEqual((code, output), (0, ""))

    def test_unit_runs_twistd_in_the_foreground_with_limits(self) -> None:
        text = self.shipped()
        self.assertIn("Type=simple\n", text)
        self.assertRegex(text, r"\nExecStart=\S+/twistd --nodaemon .* xmppcluster --config /\S+\n")
        self.assertIn("Restart=on-failure\n", text)
        self.assertIn("User=xmpp\n", text)
        self.assertGreaterEqual(int(re.search(r"\nLimitNOFILE=(\d+)\n", text).group(1)), 65536)

    def test_verify_catches_a_broken_unit(self) -> None:
        """The check can fail: a misspelt key is reported."""
        code, output = self.verify(self.shipped().replace("Restart=on-failure", "Restartt=on-failure"))
        self.assertIn("Unknown key", output)


class NginxSample(TestCase):
    def nginx_t(self, text: str) -> tuple[int, str]:
        nginx = find_nginx()
        if nginx is None:
            skip_test("nginx is not installed and tests/install-nginx could not unpack it")
        prefix = tempfile.mkdtemp(prefix="nginx-", dir=os.getcwd())
        os.mkdir(os.path.join(prefix, "tmp"))
        pem = os.path.join(prefix, "chat.pem")  # certificate and key in one file: nginx reads each from it
        make_cert(test_ca(), ["chat.example.com"], pem)
        text = text.replace("/etc/ssl/xmppcluster/chat.example.com.pem", pem)
        text = text.replace("/etc/ssl/xmppcluster/chat.example.com.key", pem)
        with open(os.path.join(prefix, "xmppcluster.conf"), "w") as out:
            out.write(text)
        temp = "\n".join(f"    {kind}_temp_path {prefix}/tmp/{kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        main = os.path.join(prefix, "nginx.conf")
        with open(main, "w") as out:
            out.write(f"pid {prefix}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n{temp}\n"
                      f"    access_log off;\n    include {prefix}/xmppcluster.conf;\n}}\n")
        done = subprocess.run([nginx, "-t", "-q", "-p", prefix + "/", "-c", main, "-e", "stderr"],
                              capture_output=True, text=True, timeout=60)
        return done.returncode, (done.stdout + done.stderr).strip()

    def shipped(self) -> str:
        with open(NGINX_CONF) as conf:
            return conf.read()

    def test_sample_parses(self) -> None:
        code, output = self.nginx_t(self.shipped())
        self.assertEqual((code, output), (0, ""))

    def test_sample_proxies_bosh_websocket_and_the_web_chat(self) -> None:
        text = self.shipped()
        self.assertIn("listen 443 ssl;", text)
        for location in ("/http-bind", "/xmpp-websocket", "/chat/"):
            self.assertIn(f"location {location} {{", text)
        self.assertIn("proxy_set_header Upgrade $http_upgrade;", text)
        self.assertEqual(len(re.findall(r"server 192\.0\.2\.1\d:5280", text)), 6)  # three nodes, two upstreams
        # The client's own X-Forwarded-For is never passed on (the nodes believe this header from the proxy).
        self.assertIn("proxy_set_header X-Forwarded-For $remote_addr;", text)
        self.assertNotIn("$proxy_add_x_forwarded_for", text)

    def test_nginx_t_catches_a_broken_sample(self) -> None:
        """The check can fail: an unknown directive is reported."""
        code, output = self.nginx_t(self.shipped().replace("proxy_buffering off;", "proxy_bufering off;"))
        self.assertNotEqual(code, 0)
        self.assertIn("unknown directive", output)


class DeploymentGuide(TestCase):
    """Every ``properties`` block of docs/deployment.rst is a file the server reads without error or warning."""

    def blocks(self) -> list[str]:
        with open(os.path.join(ROOT, "docs", "deployment.rst")) as doc:
            text = doc.read()
        found = re.findall(r"\.\. code-block:: properties\n\n((?:   .*\n)+)", text)
        return [re.sub(r"(?m)^   ", "", block) for block in found]

    def test_every_properties_block_reads_cleanly(self) -> None:
        from xmppcluster.config import parse_text

        blocks = self.blocks()
        self.assertEqual(len(blocks), 3)
        for block in blocks:
            config = parse_text(block, "docs/deployment.rst")
            self.assertEqual(config.warnings, [], block)
        one, three, proxy = (parse_text(block, "docs/deployment.rst") for block in blocks)
        self.assertEqual([(lst.component, lst.port, lst.tls) for lst in one.all_listeners()],
                         [("c2s", 5222, False), ("c2s", 5223, True), ("bosh", 5280, False), ("bosh", 5281, True),
                          ("ws2s", 5290, False), ("ws2s", 5291, True)])
        self.assertTrue(three.cluster_mode)
        self.assertEqual([node.name for node in three.cluster_nodes],
                         ["t1.example.com", "t2.example.com", "t3.example.com"])
        self.assertTrue(three.user_db_uri.startswith("postgresql://"))
        self.assertEqual(proxy.webchat.endpoints, ("wss://chat.example.com/xmpp-websocket",
                                                   "https://chat.example.com/http-bind"))
