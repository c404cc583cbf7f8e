"""Federation of a two-node cluster (example.com on t1 and t2, real twistd processes) with b.test.

b.test's static map lists both nodes (t1 first): its stream lands on t1, and users on t2 are reached in one
more hop over the cluster link. Each node opens its own outgoing streams. When t1 dies (SIGKILL), b.test
sends what its stream to t1 had not confirmed again, to t2: no message b.test accepted is lost.
"""

from __future__ import annotations

import os

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.clients.raw import RawClient
from tests.support.certs import make_ca
from tests.support.cluster import DOMAIN, make_cluster, migrate
from tests.support.federation import PASSWORD, ca_path
from tests.support.server import free_port, start_server

CLIENT = "{jabber:client}"
NODES = ("t1.example.com", "t2.example.com")


class ClusterFederationTests(TestCase):
    timeout = 120
    #: b.test trusts the cluster's certificate authority (EXTERNAL); else both sides use dialback.
    trusted = True

    async def setUp(self) -> None:
        self.s2s = {name: free_port() for name in NODES}
        b_port = free_port()
        self.ca = ca_path(self)
        b_ca = self.ca
        insecure_b = insecure_nodes = ""
        if not self.trusted:
            other = make_ca("b.test's own CA")
            b_ca = os.path.join(os.path.dirname(self.ca), "other-ca.pem")
            with open(b_ca, "wb") as out:
                out.write(other.root_pem())
            insecure_b = f"s2s/insecure-domains[s]={DOMAIN}\n"
            insecure_nodes = "s2s/insecure-domains[s]=b.test\n"
        node_extra = {
            name: (f"s2s/connections/ports[i]={self.s2s[name]}\n"
                   f"s2s/connections/{self.s2s[name]}/ifc[s]=127.0.0.1\n"
                   f"s2s/hosts[s]=b.test=127.0.0.1:{b_port}\n"
                   f"s2s/ca-file={self.ca}\n" + insecure_nodes)
            for name in NODES}
        self.cluster = make_cluster(self, 2, node_extra=node_extra)
        await migrate(self.cluster)
        await self.cluster.add_users(f"alice@{DOMAIN}", f"carol@{DOMAIN}", password=PASSWORD)
        for name in NODES:
            self.cluster.start(name)
        hosts = ",".join(f"{DOMAIN}=127.0.0.1:{self.s2s[name]}" for name in NODES)
        self.b = await start_server(self, f"s2s/connections/ports[i]={b_port}\n"
                                          f"s2s/connections/{b_port}/ifc[s]=127.0.0.1\n"
                                          f"s2s/hosts[s]={hosts}\ns2s/ca-file={b_ca}\n"
                                          "s2s/connect-timeout=10\n" + insecure_b, domains=("b.test",))
        await self.b.add_user("bob@b.test", PASSWORD)

    def local(self, node: str, user: str) -> RawClient:
        client = RawClient(self.cluster.ports[node]["c2s"], domain=DOMAIN, ca_file=self.cluster.ca_file, timeout=30)
        client.login(user, PASSWORD, "r")
        client.send("<presence/>")
        return client

    def bob(self) -> RawClient:
        client = RawClient(self.b.ports["c2s"]["plain"], domain="b.test", ca_file=self.ca, timeout=30)
        client.login("bob", PASSWORD, "r")
        client.send("<presence/>")
        return client

    @staticmethod
    def bodies(client: RawClient, count: int) -> list[str]:
        got = []
        while len(got) < count:
            message = client.until(f"{CLIENT}message")
            got.append(message.findtext(f"{CLIENT}body"))
        return got

    def scenario(self) -> dict[str, list[str]]:
        alice = self.local(NODES[0], "alice")
        carol = self.local(NODES[1], "carol")
        bob = self.bob()
        self.cluster.wait_replicated(1, 1)
        seen: dict[str, list[str]] = {}
        try:
            # b.test -> users on both nodes (its stream lands on t1)
            bob.send(f"<message to='alice@{DOMAIN}/r' type='chat'><body>to alice</body></message>")
            bob.send(f"<message to='carol@{DOMAIN}/r' type='chat'><body>to carol 1</body></message>")
            seen["alice"] = self.bodies(alice, 1)
            seen["carol"] = self.bodies(carol, 1)
            # each node's own outgoing stream to b.test
            alice.send("<message to='bob@b.test/r' type='chat'><body>from t1</body></message>")
            carol.send("<message to='bob@b.test/r' type='chat'><body>from t2</body></message>")
            seen["bob"] = sorted(self.bodies(bob, 2))
            # t1 dies; what bob sends next reaches carol through t2
            self.cluster.kill(NODES[0])
            for n in range(2, 6):
                bob.send(f"<message to='carol@{DOMAIN}/r' type='chat'><body>to carol {n}</body></message>")
            seen["carol"] += self.bodies(carol, 4)
            return seen
        finally:
            for client in (alice, carol, bob):
                client.close()

    async def test_remote_users_reach_both_nodes_and_survive_a_node_death(self) -> None:
        seen = await deferToThread(self.scenario)
        self.assertEqual(seen["alice"], ["to alice"])
        self.assertEqual(seen["bob"], ["from t1", "from t2"])
        self.assertEqual(seen["carol"], [f"to carol {n}" for n in range(1, 6)])


class ClusterDialbackTests(ClusterFederationTests):
    """No trusted certificates between the cluster and b.test: dialback both ways. b.test verifies the key
    t2 sent by asking t1 (the first address of its map): any node answers for the domain (shared secret)."""

    trusted = False

    async def test_dialback_verified_by_another_node(self) -> None:
        def run() -> str:
            carol = self.local(NODES[1], "carol")
            bob = self.bob()
            try:
                carol.send("<message to='bob@b.test/r' type='chat'><body>from t2</body></message>")
                return self.bodies(bob, 1)[0]
            finally:
                carol.close()
                bob.close()

        self.assertEqual(await deferToThread(run), "from t2")
        methods = {(line["direction"], line["auth"]) for line in self.b.server.federation.status()}
        self.assertIn(("in", "dialback"), methods)
