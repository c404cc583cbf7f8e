"""The seed's Tip #2 cluster: real ``twistd`` nodes t1.example1.com, t2.example1.com hosting example2.com.

Unlike :mod:`tests.support.cluster`, every node has **the same port layout** (as in production: 5222, 5223, 5281,
5291 on each machine): node *i* binds its own loopback address ``127.0.0.i``, and a client maps node names to
those addresses (``resolve``).  Each node has its own certificate directory whose ``default.pem`` names only the
node (Tip #2: "each of our nodes contains default SSL certificate which domain matches name of cluster node"), and
its own working directory where twistd writes ``twistd.pid`` (so ``xmppcluster reload-certs`` finds it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field

from twisted.trial.unittest import TestCase

from tests.support.certs import make_cert
from tests.support.cluster import add_users
from tests.support.databases import new_pg_schema, postgres_skip_reason
from tests.support.process import ROOT, TWISTD, wait_for_port
from tests.support.server import free_port, test_ca
from xmppcluster.storage import open_storage

DOMAIN = "example2.com"
NODES = ("t1.example1.com", "t2.example1.com")
PORT_KEYS = ("c2s", "c2s_tls", "bosh_tls", "ws2s_tls", "cluster")


@dataclass
class VhostNode:
    name: str
    address: str
    directory: str
    certs: str
    config: str
    process: subprocess.Popen | None = None
    log: object = None

    @property
    def pidfile(self) -> str:
        return os.path.join(self.directory, "twistd.pid")

    def output(self) -> str:
        with open(os.path.join(self.directory, "twistd.log"), errors="replace") as f:
            return f.read()


@dataclass
class VhostCluster:
    directory: str
    db_uri: str
    ports: dict[str, int]
    nodes: dict[str, VhostNode] = field(default_factory=dict)

    @property
    def ca_file(self) -> str:
        return os.path.join(self.directory, "ca.pem")

    @property
    def resolve(self) -> dict[str, str]:
        """Node host name -> loopback address (what DNS would say)."""
        return {node.name: node.address for node in self.nodes.values()}

    def start(self, name: str, *, wait: bool = True) -> VhostNode:
        node = self.nodes[name]
        node.log = open(os.path.join(node.directory, "twistd.log"), "wb")
        # twistd writes twistd.pid in its working directory (the default), as in a real deployment.
        node.process = subprocess.Popen(
            [TWISTD, "-n", "xmppcluster", "--config", node.config, f"--node-name={name}"],
            cwd=node.directory, stdout=node.log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=ROOT))
        if wait:
            wait_for_port(self.ports["ws2s_tls"], host=node.address)
        return node

    def stop(self, name: str, sig: int = signal.SIGKILL) -> None:
        node = self.nodes[name]
        if node.process is not None and node.process.poll() is None:
            node.process.send_signal(sig)
            try:
                node.process.wait(15)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
        if node.log is not None:
            node.log.close()
            node.log = None

    def stop_all(self) -> None:
        for name in self.nodes:
            self.stop(name)

    async def add_users(self, *jids: str, password: str) -> None:
        await add_users(self.db_uri, *jids, password=password)


def make_vhost_cluster(test: TestCase, names: tuple[str, ...] = NODES, *, domains: tuple[str, ...] = (DOMAIN,),
                       heartbeat: float = 0.2, failure_timeout: float = 1.5) -> VhostCluster:
    directory = tempfile.mkdtemp(prefix="vhost-cluster-", dir=os.getcwd())
    ca = test_ca()
    with open(os.path.join(directory, "ca.pem"), "wb") as out:
        out.write(ca.root_pem())
    db_uri = (new_pg_schema(test)[1] if postgres_skip_reason() is None
              else f"sqlite:///{os.path.join(directory, 'shared.sqlite')}")
    addresses = [f"127.0.0.{i}" for i in range(1, len(names) + 1)]
    ports = {key: free_port(tuple(addresses)) for key in PORT_KEYS}  # one port, every node's address
    members = ",".join(f"{n}:secret-{n}:{ports['cluster']}:{a}" for n, a in zip(names, addresses, strict=True))
    cluster = VhostCluster(directory, db_uri, ports)
    for name, address in zip(names, addresses, strict=True):
        node_dir = os.path.join(directory, name)
        certs = os.path.join(node_dir, "certs")
        os.makedirs(certs)
        make_cert(ca, [name], os.path.join(certs, "default.pem"))
        p = ports
        lines = [
            f"--virt-hosts={','.join(domains)}", "--cluster-mode=true", f"--cluster-nodes={members}",
            f"--user-db-uri={db_uri}", f"--ssl-certs-location={certs}",
            "--auth-failure-delay=0.05", "--auth-failure-max-delay=0.2", "--scram-iterations=4096",
            f"c2s/connections/ports[i]={p['c2s']},{p['c2s_tls']}", f"c2s/connections/{p['c2s_tls']}/socket=ssl",
            f"bosh/connections/ports[i]={p['bosh_tls']}", f"bosh/connections/{p['bosh_tls']}/socket=ssl",
            f"ws2s/connections/ports[i]={p['ws2s_tls']}", f"ws2s/connections/{p['ws2s_tls']}/socket=ssl",
            f"cl-comp/connections/ports[i]={p['cluster']}",
            f"cl-comp/heartbeat-interval[F]={heartbeat}", f"cl-comp/failure-timeout[F]={failure_timeout}",
            "cl-comp/drain-timeout[F]=3",
        ]
        for key in PORT_KEYS:
            component = {"c2s_tls": "c2s", "bosh_tls": "bosh", "ws2s_tls": "ws2s", "cluster": "cl-comp"}.get(key, key)
            lines.append(f"{component}/connections/{p[key]}/ifc[s]={address}")
        config = os.path.join(node_dir, "init.properties")
        with open(config, "w") as out:
            out.write("\n".join(lines) + "\n")
        cluster.nodes[name] = VhostNode(name, address, node_dir, certs, config)
    test.addCleanup(cluster.stop_all)
    return cluster


async def migrate(cluster: VhostCluster) -> None:
    """Create the shared schema once, before the nodes race to."""
    storage = await open_storage(cluster.db_uri)
    await storage.close()
