"""Several real ``twistd`` nodes on loopback serving one domain, sharing one database.

PostgreSQL (a fresh schema) when reachable, else one SQLite file: the issue's fallback.
Node names t1.example.com, t2.example.com, ... resolve nowhere, so ``--cluster-nodes`` gives each an
address (its fourth field). Every node gets its own ports; SIGKILL and SIGTERM are real.
"""

from __future__ import annotations

import os
import signal
import tempfile
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from tests.support.certs import make_cert
from tests.support.databases import new_pg_schema, postgres_skip_reason
from tests.support.process import Twistd, wait_for_port
from tests.support.server import free_port, test_ca
from tests.support.waiting import wait_until
from xmppcluster.storage import open_storage

DOMAIN = "example.com"


@dataclass
class Node:
    name: str
    config: str
    ports: dict[str, int]
    process: Twistd | None = None


@dataclass
class ClusterFixture:
    test: TestCase
    directory: str
    db_uri: str
    nodes: dict[str, Node] = field(default_factory=dict)
    ports: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ca_file(self) -> str:
        return os.path.join(self.directory, "ca.pem")

    def start(self, name: str, *, wait: bool = True, env: dict[str, str] | None = None) -> Node:
        """Start node ``name`` (``env``: extra environment variables for its process)."""
        node = self.nodes[name]
        node.process = Twistd(self.directory, node.config, f"--node-name={name}", name=name, env=env)
        if wait:
            wait_for_port(node.ports["c2s"], process=node.process)
        return node

    def kill(self, name: str) -> None:
        self.nodes[name].process.stop(signal.SIGKILL)

    def terminate(self, name: str) -> int | None:
        return self.nodes[name].process.stop(signal.SIGTERM, timeout=20)

    def stop_all(self) -> None:
        for node in self.nodes.values():
            if node.process is not None:
                node.process.stop(signal.SIGKILL)

    def log(self, name: str) -> str:
        return self.nodes[name].process.output()

    async def add_users(self, *jids: str, password: str) -> None:
        await add_users(self.db_uri, *jids, password=password)

    # -- barriers on what the nodes report (their cluster_nodes rows, written every heartbeat) -------

    async def rows(self) -> dict:
        """Every node's ``cluster_nodes`` row, by name (what ``xmppcluster cluster-status`` reads)."""
        from xmppcluster.cluster.membership import MembershipStore

        storage = await open_storage(self.db_uri)
        try:
            return {row.name: row for row in await MembershipStore(storage.db).rows()}
        finally:
            await storage.close()

    def rows_from_thread(self) -> dict:
        """:meth:`rows` from a test thread (``deferToThread``), the reactor running the query."""
        from twisted.internet import reactor
        from twisted.internet.threads import blockingCallFromThread

        return blockingCallFromThread(reactor, lambda: ensureDeferred(self.rows()))

    def wait_replicated(self, *counts: int, timeout: float = 20.0) -> dict:
        """Barrier, from a test thread: node i (by name) has ``counts[i]`` local sessions and every other node's
        row says it knows that many of them. A row is written after the directory changed (each heartbeat),
        so a session bound before the call is then in every directory."""
        names = sorted(self.nodes)
        expected = dict(zip(names, counts, strict=True))

        def replicated() -> dict | None:
            rows = self.rows_from_thread()
            agree = all(name in rows and rows[name].sessions == expected[name]
                        and all(rows[name].links.get(peer) == expected[peer] for peer in names if peer != name)
                        for name in names)
            return rows if agree else None

        try:
            return wait_until(replicated, timeout, interval=0.1)
        except AssertionError:
            raise AssertionError(f"directories did not agree on {expected}: {self.rows_from_thread()}") from None

    def wait_swept(self, name: str, after: float, timeout: float = 20.0) -> None:
        """Barrier, from a test thread: node ``name`` ran its periodic sweep (failure judgement, then its row)
        after the wall-clock time ``after``."""
        wait_until(lambda: name in (rows := self.rows_from_thread()) and rows[name].last_seen > after, timeout, 0.1)


async def add_users(db_uri: str, *jids: str, password: str) -> None:
    """Create accounts in a shared database (before or while nodes run on it)."""
    storage = await open_storage(db_uri, scram_iterations=4096)
    try:
        for jid in jids:
            user, _, domain = jid.partition("@")
            await storage.accounts.create(user, domain, password)
    finally:
        await storage.close()


def make_cluster(test: TestCase, count: int = 2, extra: str = "", *, heartbeat: float = 0.2,
                 failure_timeout: float = 1.5, discovery: bool = False,
                 via: dict[tuple[str, str], int] | None = None,
                 node_extra: dict[str, str] | None = None) -> ClusterFixture:
    """``count`` nodes; ``discovery`` leaves out --cluster-nodes (the cluster_nodes table is used);
    ``via[(a, b)] = port`` makes node ``a`` reach node ``b`` through 127.0.0.1:port (a test proxy);
    ``node_extra[name]``: configuration lines for that node only."""
    directory = tempfile.mkdtemp(prefix="cluster-", dir=os.getcwd())
    certs = os.path.join(directory, "certs")
    os.mkdir(certs)
    names = [f"t{i}.example.com" for i in range(1, count + 1)]
    make_cert(test_ca(), [DOMAIN, *names], os.path.join(certs, "default.pem"))
    with open(os.path.join(directory, "ca.pem"), "wb") as out:
        out.write(test_ca().root_pem())
    if postgres_skip_reason() is None:
        db_uri = new_pg_schema(test)[1]
    else:
        db_uri = f"sqlite:///{os.path.join(directory, 'shared.sqlite')}"
    ports = {name: {k: free_port() for k in ("c2s", "c2s_tls", "bosh", "ws2s", "cluster")} for name in names}
    via = via or {}
    fixture = ClusterFixture(test, directory, db_uri)
    fixture.ports = ports
    for name in names:
        p = ports[name]
        members = ",".join(f"{n}:secret-{n}:{via.get((name, n), ports[n]['cluster'])}:127.0.0.1" for n in names)
        lines = [
            f"--virt-hosts={DOMAIN}", "--cluster-mode=true",
            "" if discovery else f"--cluster-nodes={members}",
            f"--user-db-uri={db_uri}", f"--ssl-certs-location={certs}",
            "--auth-failure-delay=0.05", "--auth-failure-max-delay=0.2",
            f"c2s/connections/ports[i]={p['c2s']},{p['c2s_tls']}", f"c2s/connections/{p['c2s_tls']}/socket=ssl",
            f"bosh/connections/ports[i]={p['bosh']}", f"ws2s/connections/ports[i]={p['ws2s']}",
            f"cl-comp/connections/ports[i]={p['cluster']}",
            f"cl-comp/heartbeat-interval[F]={heartbeat}", f"cl-comp/failure-timeout[F]={failure_timeout}",
            "cl-comp/drain-timeout[F]=3",
        ]
        for key in ("c2s", "c2s_tls", "bosh", "ws2s", "cluster"):
            component = {"c2s_tls": "c2s", "cluster": "cl-comp"}.get(key, key)
            lines.append(f"{component}/connections/{p[key]}/ifc[s]=127.0.0.1")
        config = os.path.join(directory, f"{name}.properties")
        with open(config, "w") as out:
            out.write("\n".join(lines) + "\n" + extra + (node_extra or {}).get(name, ""))
        fixture.nodes[name] = Node(name, config, p)
    test.addCleanup(fixture.stop_all)
    return fixture


def cuttable_cluster(test: TestCase, count: int, cut: tuple[str, str], **options: Any) -> tuple[ClusterFixture,
                                                                                            CuttableLink]:
    """``make_cluster`` where node ``cut[0]`` reaches node ``cut[1]`` only through a :class:`CuttableLink`
    (up at first, cut again at cleanup); the other options go to ``make_cluster``."""
    proxy_port = free_port()
    cluster = make_cluster(test, count, via={cut: proxy_port}, **options)
    proxy = CuttableLink(proxy_port, cluster.ports[cut[1]]["cluster"])
    proxy.heal()
    test.addCleanup(proxy.cut)
    return cluster, proxy


async def migrate(fixture: ClusterFixture) -> None:
    """Open the shared database once so its schema exists before nodes race to create it."""
    storage = await open_storage(fixture.db_uri)
    await storage.close()


def run(coro):
    return ensureDeferred(coro)


class CuttableLink:
    """A TCP proxy in the test process standing for the network between two nodes: cut() and heal()."""

    def __init__(self, port: int, target_port: int) -> None:
        self.port = port
        self.target_port = target_port
        self.connections: set = set()
        self.listening = None

    def heal(self) -> None:
        from twisted.internet import reactor
        from twisted.protocols.portforward import ProxyFactory, ProxyServer

        link = self

        class Tracked(ProxyServer):
            def connectionMade(self) -> None:
                link.connections.add(self)
                super().connectionMade()

            def connectionLost(self, reason=None) -> None:
                link.connections.discard(self)
                super().connectionLost(reason)

        factory = ProxyFactory("127.0.0.1", self.target_port)
        factory.protocol = Tracked
        factory.noisy = False
        self.listening = reactor.listenTCP(self.port, factory, interface="127.0.0.1")

    async def cut(self) -> None:
        if self.listening is not None:
            await self.listening.stopListening()
            self.listening = None
        for connection in list(self.connections):
            connection.transport.abortConnection()
            if connection.peer is not None:
                connection.peer.transport.abortConnection()
