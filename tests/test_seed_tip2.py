"""The seed's Tip #2, end to end: nodes t1.example1.com and t2.example1.com host example2.com, each with a
certificate for its own node name only.  A web client discovers the nodes (XEP-0156 host-meta), connects to
``wss://t2.example1.com:5291/`` verifying that certificate against the test CA, opens ``to='example2.com'`` and
logs in as user@example2.com.  Tip #1's logic: a random node, another one when it fails; a dead node leaves the
list, a node that joins enters it.  Certificates reload on a real twistd with ``xmppcluster reload-certs``."""

from __future__ import annotations

import os
import random
import subprocess
import sys

from cryptography import x509
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.clients.tip1 import REL_WEBSOCKET, Session, Tip1Client, WebSocket, fetch_host_meta
from tests.support.certs import make_cert
from tests.support.server import test_ca
from tests.support.vhost_cluster import DOMAIN, NODES, VhostCluster, make_vhost_cluster, migrate
from tests.support.waiting import wait_until as _wait_until


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05):
    return _wait_until(predicate, timeout, interval)


T1, T2 = NODES
PASSWORD = "tip two pass"




class FirstOf(random.Random):
    """A 'random' choice that takes the alphabetically first URL: makes the failover path deterministic."""

    def choice(self, seq):  # type: ignore[override]
        return sorted(seq)[0]


class Tip2Tests(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.cluster: VhostCluster = make_vhost_cluster(self)
        await migrate(self.cluster)
        await self.cluster.add_users(f"user@{DOMAIN}", password=PASSWORD)
        for name in NODES:
            self.cluster.start(name, wait=False)
        await deferToThread(self.wait_linked)

    def wait_linked(self) -> None:
        """Both links up (30 s: two nodes start beside the rest of the suite); else every node's log."""
        try:
            for name in NODES:
                other = T2 if name == T1 else T1
                wait_until(lambda name=name, other=other: f"link to {other} up" in self.cluster.nodes[name].output(),
                           timeout=30.0)
        except AssertionError:
            logs = "\n".join(f"--- {name}\n{self.cluster.nodes[name].output()[-4000:]}" for name in NODES)
            raise AssertionError(f"cluster links did not come up:\n{logs}") from None

    # -- helpers -------------------------------------------------------------------------------------

    def host_meta_url(self, node: str, *, json: bool = True, port_key: str = "bosh_tls") -> str:
        name = "host-meta.json" if json else "host-meta"
        return f"https://{node}:{self.cluster.ports[port_key]}/.well-known/{name}?domain={DOMAIN}"

    def ws_url(self, node: str) -> str:
        return f"wss://{node}:{self.cluster.ports['ws2s_tls']}/"

    def listed(self, node: str) -> list[str]:
        meta = fetch_host_meta(self.host_meta_url(node), ca_file=self.cluster.ca_file, resolve=self.cluster.resolve)
        assert meta.status == 200, meta.status
        return sorted(meta.hrefs(REL_WEBSOCKET))

    def client(self, rng: random.Random | None = None) -> Tip1Client:
        return Tip1Client(DOMAIN, ca_file=self.cluster.ca_file, resolve=self.cluster.resolve, rng=rng)

    # -- the seed ------------------------------------------------------------------------------------

    def test_seed_scenario(self) -> None:
        def scenario():
            every = sorted([self.ws_url(T1), self.ws_url(T2)])
            # Discovery, from either node, JRD and XRD, on the BOSH and the WebSocket port.
            for node in NODES:
                for port_key in ("bosh_tls", "ws2s_tls"):
                    for json in (True, False):
                        meta = fetch_host_meta(self.host_meta_url(node, json=json, port_key=port_key),
                                               ca_file=self.cluster.ca_file, resolve=self.cluster.resolve)
                        assert meta.status == 200 and meta.headers["access-control-allow-origin"] == "*"
                        assert sorted(meta.hrefs(REL_WEBSOCKET)) == every, meta.links
            # Exactly the seed's connection: wss://t2.example1.com:5291/, verified, to='example2.com'.
            ws = WebSocket(self.ws_url(T2), ca_file=self.cluster.ca_file, resolve=self.cluster.resolve)
            cert = x509.load_der_x509_certificate(ws.sock.getpeercert(binary_form=True))
            session = Session(ws, DOMAIN)
            jid = session.login("user", PASSWORD, "seed")
            session.close()
            # Tip #1: the node list, a random node.
            client = self.client(random.Random(7))
            endpoints = client.discover([self.host_meta_url(T1)])
            picked = client.connect(endpoints, "user", PASSWORD, "random")
            picked.close()
            return cert, jid, endpoints, client.attempts

        cert, jid, endpoints, attempts = scenario()
        verify_certificate_hostname(cert, T2)
        self.assertRaises(VerificationError, verify_certificate_hostname, cert, DOMAIN)  # a node certificate only
        self.assertTrue(jid.startswith(f"user@{DOMAIN}/seed"), jid)
        self.assertEqual(sorted(endpoints), sorted([self.ws_url(T1), self.ws_url(T2)]))
        self.assertEqual(len(attempts), 1)
        self.assertEqual(attempts[0][1], "ok")

    def test_failover_and_membership(self) -> None:
        def scenario():
            client = self.client(FirstOf())
            endpoints = client.discover([self.host_meta_url(T2)])
            self.cluster.stop(T1)  # SIGKILL: t1 dies after the client fetched the list
            session = client.connect(endpoints, "user", PASSWORD, "failover")
            jid = session.jid
            session.close()
            after_death = wait_until(lambda: (lambda urls: urls if self.ws_url(T1) not in urls else None)(
                self.listed(T2)))
            self.cluster.start(T1)
            after_join = wait_until(lambda: (lambda urls: urls if self.ws_url(T1) in urls else None)(
                self.listed(T2)))
            return endpoints, client.attempts, jid, after_death, after_join

        endpoints, attempts, jid, after_death, after_join = scenario()
        self.assertEqual(len(endpoints), 2)
        self.assertEqual([url for url, _ in attempts], [self.ws_url(T1), self.ws_url(T2)])
        self.assertNotEqual(attempts[0][1], "ok")  # t1 refused the connection
        self.assertEqual(attempts[1][1], "ok")
        self.assertTrue(jid.startswith(f"user@{DOMAIN}/failover"), jid)
        self.assertEqual(after_death, [self.ws_url(T2)])
        self.assertEqual(after_join, sorted([self.ws_url(T1), self.ws_url(T2)]))

    def test_reload_certs_command_on_a_running_node(self) -> None:
        node = self.cluster.nodes[T2]
        new, _ = make_cert(test_ca(), [T2], os.path.join(node.certs, "default.pem"))
        command = os.path.join(os.path.dirname(sys.executable), "xmppcluster")

        def served() -> x509.Certificate:
            ws = WebSocket(self.ws_url(T2), ca_file=self.cluster.ca_file, resolve=self.cluster.resolve)
            try:
                return x509.load_der_x509_certificate(ws.sock.getpeercert(binary_form=True))
            finally:
                ws.close()

        def scenario():
            old = served()
            # Run in the node's directory: the command finds twistd's own twistd.pid there.
            done = subprocess.run([command, "reload-certs"], cwd=node.directory, capture_output=True, text=True,
                                  timeout=30)
            current = wait_until(lambda: (lambda c: c if c.serial_number == new.serial_number else None)(served()))
            return old, done, current

        old, done, current = scenario()
        self.assertNotEqual(old.serial_number, new.serial_number)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(current.serial_number, new.serial_number)
        verify_certificate_hostname(current, T2)
        self.assertIn("reloading certificates (SIGHUP)", node.output())

