"""H3: directed presence (RFC 6121 §4.6) from a hostile client: the recipients a resource may have are capped,
and peers are told of each change, not of the whole list again.

Before: every ``<presence to=X/>`` target was kept without a cap and the whole list was sent to every other
node on each change, so 1,500 targets cost the nodes ~1.1 million list entries to format, send and parse.
"""

from __future__ import annotations

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.clients.raw import RawClient
from tests.support.cluster import DOMAIN
from tests.support.cluster_attack import MAX_RTT, under_attack
from tests.support.databases import SQLiteBackend
from tests.test_cluster import PASSWORD, ClusterTestCase
from tests.test_roster import IMHarness
from xmppcluster.core.namespaces import CLIENT, STANZA_ERRORS

A, C = "alice@localhost", "carol@localhost"


def condition(stanza) -> tuple[str | None, str | None]:
    """(error type, condition) of an error stanza."""
    error = next(stanza.elements(CLIENT, "error"))
    return error.getAttribute("type"), next(c.name for c in error.elements() if c.uri == STANZA_ERRORS)


class DirectedPresenceCapTests(IMHarness, SQLiteBackend, TestCase):
    async def test_one_target_past_the_cap_is_refused_and_not_sent(self) -> None:
        await self.start("--directed-presence-max=3\n")
        alice = await self.login(A, available=True)
        carol = await self.login(C, available=True)
        for i in range(3):
            await alice.presence(f"{C}/r{i}")
        await alice.presence(C + "/r1", payload="<status>still tracked: updates pass</status>")
        self.assertEqual([e.name for e in alice.take()], [])
        self.assertEqual(len(carol.presences()), 2)  # carol is online as r1
        await alice.presence(C)  # a fourth recipient
        [refused] = alice.take()
        self.assertEqual((refused.name, refused["type"], refused["from"]), ("presence", "error", C))
        self.assertEqual(condition(refused), ("wait", "policy-violation"))
        self.assertEqual(carol.presences(), [])  # not sent: it could not be ended later
        self.assertEqual(alice.session.directed, {f"{C}/r0", f"{C}/r1", f"{C}/r2"})
        await alice.presence(C + "/r0", "unavailable")  # ends one: room for another
        await alice.presence(C)
        self.assertEqual(alice.take(), [])
        self.assertEqual(alice.session.directed, {C, f"{C}/r1", f"{C}/r2"})
        await alice.close()  # §4.6.3: unavailable to each tracked recipient (carol/r2 is offline)
        self.assertEqual(sorted(p["to"] for p in carol.presences("unavailable")), [C, C + "/r1"])


class DirectedPresenceFloodTests(ClusterTestCase):
    """A client on t1 sends directed presence to 1,500 JIDs while clients on t1 and t2 ping their nodes."""

    timeout = 120
    targets = 1500

    async def test_flood_is_capped_and_peers_keep_up(self) -> None:
        await self.cluster.add_users(f"pinger1@{DOMAIN}", f"pinger2@{DOMAIN}", password=PASSWORD)
        attacker = RawClient(self.cluster.nodes["t1.example.com"].ports["c2s"], domain=DOMAIN,
                             ca_file=self.cluster.ca_file, timeout=60)
        self.addCleanup(attacker.close)
        await deferToThread(attacker.login, "carol", PASSWORD, "flood")
        resource = "r" * 200  # long JIDs: each copy of the list weighs more

        def attack() -> list:
            """Batches of 100 (25 KiB) as fast as t1 takes them: one read's worth of stanzas costs the same
            whatever the batch, so what the pings measure is the cost of the list growing."""
            errors = []
            for start in range(0, self.targets, 100):
                attacker.send("".join(f"<presence to='nobody{i}@{DOMAIN}/{resource}'/>"
                                      for i in range(start, start + 100)))
                attacker.send(f"<iq type='get' id='b{start}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
                while (element := attacker.next()).get("id") != f"b{start}":
                    if element.tag == "{jabber:client}presence" and element.get("type") == "error":
                        errors.append(element)
            return errors

        errors, rtts = await under_attack(self.cluster, attack, {"t1.example.com": "pinger1",
                                                                 "t2.example.com": "pinger2"}, PASSWORD)
        self.assertEqual(len(errors), self.targets - 1000)  # the default --directed-presence-max
        self.assertEqual({e.find("{jabber:client}error")[0].tag for e in errors},
                         {"{urn:ietf:params:xml:ns:xmpp-stanzas}policy-violation"})
        self.assertEqual(errors[0].get("from"), f"nobody1000@{DOMAIN}/{resource}")
        for node, times in rtts.items():
            self.assertLess(max(times), MAX_RTT, f"{node}: ping round trips under attack {sorted(times)[-5:]}")
