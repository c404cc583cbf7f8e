"""The administration commands in a two-node cluster: online users, announcements and account deletion reach
every node; the cluster status command shows both nodes and their link. slixmpp is the administrator."""

from __future__ import annotations

from twisted.internet.threads import deferToThread

from tests.support.cluster import DOMAIN, ClusterFixture, make_cluster
from tests.test_adhoc import slix_admin
from tests.test_cluster import PASSWORD, ClusterTestCase

ADMIN = f"admin@{DOMAIN}"
MESSAGE = "{jabber:client}message"
T1, T2 = "t1.example.com", "t2.example.com"


class AdminAcrossNodesTests(ClusterTestCase):
    timeout = 120

    def make(self) -> ClusterFixture:
        return make_cluster(self, 2, f"--admins={ADMIN}\n")

    async def admin(self, node: str, *steps: dict) -> list[dict]:
        result = await slix_admin(self.cluster.nodes[node].ports["c2s"], self.cluster.ca_file, ADMIN, PASSWORD,
                                  list(steps))
        self.assertIsNone(result["error"], result)
        return result["steps"]

    async def test_online_users_announce_delete_and_status_across_nodes(self) -> None:
        await self.cluster.add_users(ADMIN, password=PASSWORD)

        def online():
            alice = self.client(T1, "alice", "a")
            bob = self.client(T2, "bob", "b")
            carol = self.client(T2, "carol", "c")
            self.cluster.wait_replicated(1, 2)  # barrier: t1's directory holds bob and carol
            return alice, bob, carol

        alice, bob, carol = await deferToThread(online)
        listed, count, announced, deleted, status = await self.admin(
            T1,
            {"command": "get-online-users-list", "values": {"max_items": "none"}},
            {"command": "get-online-users-num"},
            {"command": "announce", "values": {"announcement": "from t1 to everyone"}},
            {"command": "delete-user", "values": {"accountjids": [f"carol@{DOMAIN}"]}},
            {"command": "urn:xmppcluster:commands#cluster-status"})
        self.assertEqual(listed["fields"]["onlineuserjids"], [ADMIN, f"alice@{DOMAIN}", f"bob@{DOMAIN}",
                                                              f"carol@{DOMAIN}"])
        self.assertEqual(count["fields"]["onlineusersnum"], ["4"])
        self.assertEqual(announced["notes"], [["info", "Sent to 4 sessions"]])
        for client in (alice, bob):
            headline = await deferToThread(client.until, MESSAGE)
            self.assertEqual(headline.find("{jabber:client}body").text, "from t1 to everyone")
        self.assertEqual(deleted["notes"], [["info", f"Deleted: carol@{DOMAIN}"]])
        self.assertEqual(await deferToThread(carol.error_condition), "not-authorized")  # ended on t2
        lines = status["fields"]["status"]
        self.assertRegex(lines[1], rf"^{T1}\s+up\s")
        self.assertRegex(lines[2], rf"^{T2}\s+up\s")
        self.assertEqual(lines[3], f"seen from {T1} (sessions here: 2):")  # the admin and alice
        self.assertRegex(lines[4], rf"^  link to {T2}: up, [12] sessions$")  # carol's end may not be known yet
        self.assertEqual(len(lines), 5)
