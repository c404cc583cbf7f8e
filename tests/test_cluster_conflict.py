"""Low: the same full JID bound on two real nodes is decided by the cluster's logical order, not wall clocks.

t2 runs with its wall clock an hour behind (a ``sitecustomize`` in its environment shifts ``time.time``).
Alice is bound as alice/same on t1; t2 learns of it; the link is cut; alice binds alice/same again on t2
(t2's kick cannot reach t1). At the heal both nodes see both sessions: the one bound on t2 knew of t1's,
so it is the newer and t1's gets ``<conflict/>``. Before, the bind times were compared, and t2's clock made
the user's new session lose to the old one.
"""

from __future__ import annotations

import os

from twisted.internet.threads import deferToThread

from tests.clients.raw import RawClient
from tests.support.cluster import DOMAIN, ClusterFixture, cuttable_cluster, migrate
from tests.support.process import ROOT
from tests.support.waiting import wait_until
from tests.test_cluster import PASSWORD, ClusterTestCase, ensure

T1, T2 = "t1.example.com", "t2.example.com"
SKEW = """import time

_real = time.time
time.time = lambda: _real() - 3600  # this node's wall clock is an hour behind
"""


class SkewedClockConflictTests(ClusterTestCase):
    def make(self) -> ClusterFixture:
        cluster, self.proxy = cuttable_cluster(self, 2, (T1, T2), failure_timeout=30.0)
        return cluster

    async def setUp(self) -> None:
        self.cluster = self.make()
        await migrate(self.cluster)
        await self.cluster.add_users(f"alice@{DOMAIN}", f"bob@{DOMAIN}", password=PASSWORD)
        skewed = os.path.join(self.cluster.directory, "skewed")
        os.mkdir(skewed)
        with open(os.path.join(skewed, "sitecustomize.py"), "w") as out:
            out.write(SKEW)
        self.cluster.start(T1, wait=False)
        self.cluster.start(T2, wait=False, env={"PYTHONPATH": f"{skewed}{os.pathsep}{ROOT}"})
        for name in self.cluster.nodes:
            await deferToThread(self.wait_linked, name)

    def ping(self, client: RawClient, ident: str) -> None:
        client.send(f"<iq type='get' id='{ident}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
        while client.until("{jabber:client}iq").get("id") != ident:
            pass

    def test_newer_bind_wins_although_its_node_clock_is_behind(self) -> None:
        async def scenario():
            old = await deferToThread(self.client, T1, "alice", "same")
            bob = await deferToThread(self.client, T2, "bob", "b")
            # t2 knows alice/same: bob's message there is routed to t1.
            bob.send(f"<message to='alice@{DOMAIN}/same' type='chat'><body>known</body></message>")
            await deferToThread(old.until, "{jabber:client}message")
            await self.proxy.cut()
            await deferToThread(wait_until, lambda: f"link to {T2} down" in self.cluster.log(T1)
                                and f"link to {T1} down" in self.cluster.log(T2), 15)
            new = await deferToThread(self.client, T2, "alice", "same")
            closing = deferToThread(old.error_condition)
            self.proxy.heal()
            try:
                condition = await closing
            except TimeoutError:  # t1's session stayed open: was the new one closed instead?
                condition = None
            lost = await deferToThread(new.error_condition) if condition is None else None
            self.assertEqual(condition, "conflict", f"the old session stayed; the new one got {lost!r}")
            await deferToThread(self.ping, new, "still-here")  # the new one lives on
            self.assertIsNone(new.stream_error)

        return ensure(scenario())
