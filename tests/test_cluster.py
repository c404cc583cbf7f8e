"""Real twistd nodes t1, t2 (t3) serving example.com over a shared database."""

from __future__ import annotations

import time

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.clients.raw import RawClient
from tests.support.cluster import DOMAIN, ClusterFixture, make_cluster, migrate

PASSWORD = "cluster pass"
BODY = "{jabber:client}body"


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


class ClusterTestCase(TestCase):
    timeout = 90
    nodes = 2

    async def setUp(self) -> None:
        self.cluster: ClusterFixture = make_cluster(self, self.nodes)
        await migrate(self.cluster)
        await self.cluster.add_users(*(f"{u}@{DOMAIN}" for u in ("alice", "bob", "carol")), password=PASSWORD)
        for name in self.cluster.nodes:
            self.cluster.start(name, wait=False)
        for name in self.cluster.nodes:
            await deferToThread(self.wait_linked, name)

    def wait_linked(self, name: str) -> None:
        from tests.support.process import wait_for_port

        wait_for_port(self.cluster.nodes[name].ports["c2s"])
        others = [n for n in self.cluster.nodes if n != name]
        wait_until(lambda: all(f"link to {o} up" in self.cluster.log(name) for o in others), timeout=20)

    def client(self, node: str, user: str, resource: str, *, priority: int | None = 0) -> RawClient:
        client = RawClient(self.cluster.nodes[node].ports["c2s"], domain=DOMAIN, ca_file=self.cluster.ca_file)
        self.addCleanup(client.close)
        client.login(user, PASSWORD, resource)
        if priority is not None:
            client.send(f"<presence><priority>{priority}</priority></presence>")
        return client


class TwoNodeTests(ClusterTestCase):
    def test_messages_cross_nodes_both_ways(self) -> None:
        def scenario():
            alice = self.client("t1.example.com", "alice", "a")
            bob = self.client("t2.example.com", "bob", "b")
            time.sleep(0.5)  # directory replication
            alice.send(f"<message to='bob@{DOMAIN}/b' type='chat'><body>to t2</body></message>")
            got = bob.until("{jabber:client}message")
            bob.send(f"<message to='alice@{DOMAIN}/a' type='chat'><body>to t1</body></message>")
            back = alice.until("{jabber:client}message")
            return got, back

        return deferToThread(scenario).addCallback(self._check_messages)

    def _check_messages(self, result) -> None:
        got, back = result
        self.assertEqual(got.get("from"), f"alice@{DOMAIN}/a")
        self.assertEqual(got.find(BODY).text, "to t2")
        self.assertEqual(back.get("from"), f"bob@{DOMAIN}/b")
        self.assertEqual(back.find(BODY).text, "to t1")

    def test_bare_jid_message_follows_cluster_wide_priority(self) -> None:
        def scenario():
            low = self.client("t1.example.com", "alice", "low", priority=1)
            high = self.client("t2.example.com", "alice", "high", priority=5)
            negative = self.client("t1.example.com", "alice", "neg", priority=-1)
            bob = self.client("t1.example.com", "bob", "b")
            time.sleep(0.5)
            bob.send(f"<message to='alice@{DOMAIN}' type='chat'><body>highest wins</body></message>")
            received = high.until("{jabber:client}message")
            low.send(f"<iq type='get' id='p1' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
            low_next = low.until("{jabber:client}iq")  # the ping answer comes first: no message went to low
            negative.send(f"<iq type='get' id='p2' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
            negative_next = negative.until("{jabber:client}iq")
            return received, low_next, negative_next, low, negative

        return deferToThread(scenario).addCallback(self._check_priority)

    def _check_priority(self, result) -> None:
        received, low_next, negative_next, low, negative = result
        self.assertEqual(received.find(BODY).text, "highest wins")
        self.assertEqual(low_next.get("id"), "p1")
        self.assertEqual(negative_next.get("id"), "p2")
        self.assertFalse([e for e in low.pending + negative.pending if e.tag == "{jabber:client}message"])

    def test_same_full_jid_on_two_nodes_conflicts(self) -> None:
        def scenario():
            first = self.client("t1.example.com", "carol", "same")
            time.sleep(0.5)
            self.client("t2.example.com", "carol", "same")
            return first.error_condition()

        return deferToThread(scenario).addCallback(self.assertEqual, "conflict")


class BoshAnyNodeTests(ClusterTestCase):
    def test_bosh_session_created_on_t1_continues_on_t2(self) -> None:
        from tests.clients.bosh import BoshClient

        def url(node: str) -> str:
            return f"http://127.0.0.1:{self.cluster.nodes[node].ports['bosh']}/http-bind"

        def scenario():
            bob = self.client("t2.example.com", "bob", "b")
            web = BoshClient(DOMAIN)
            jid = web.login([url("t1.example.com"), url("t2.example.com")], "alice", PASSWORD, "web")
            web.post(url("t2.example.com"), payload=f"<message xmlns='jabber:client' to='bob@{DOMAIN}/b' "
                                                     f"type='chat'><body>via t2</body></message>")
            got = bob.until("{jabber:client}message")
            bob.send(f"<message to='{jid}' type='chat'><body>back</body></message>")
            replies = web.children(url("t2.example.com"), "message")
            return web.created, jid, got, replies

        return deferToThread(scenario).addCallback(self._check)

    def _check(self, result) -> None:
        created, jid, got, replies = result
        self.assertEqual(created.get("host"), "t1.example.com")  # the owner node, as bosh/send-node-hostname says
        self.assertEqual(jid, f"alice@{DOMAIN}/web")
        self.assertEqual(got.get("from"), jid)
        self.assertEqual(got.find(BODY).text, "via t2")
        self.assertEqual([r.find(BODY).text for r in replies if r.tag == "{jabber:client}message"], ["back"])
