"""M1: cached rosters and blocklists between real nodes when the link between them is cut.

Before: the node that made a change told the nodes it had a link to at that moment, and nobody else, ever:
a block (or a cancelled subscription) made during a cut was ignored by the other node until the account
had no session left there. Now cache events are relayed around a cut, kept while a node is unreachable and
replayed when its link comes back (xmppcluster/cluster/events.py).
"""

from __future__ import annotations

from twisted.internet.threads import deferToThread

from tests.clients.raw import RawClient
from tests.support.cluster import DOMAIN, ClusterFixture, cuttable_cluster
from tests.support.waiting import wait_until
from tests.test_cluster import ClusterTestCase, ensure, roster_of, subscribe_both

BLOCKING = "urn:xmpp:blocking"
ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"
T1, T2, T3 = "t1.example.com", "t2.example.com", "t3.example.com"


def ask_blocklist(client: RawClient) -> None:
    """Request the blocklist: the resource gets pushes from now on (XEP-0191 §3.2)."""
    client.send(f"<iq type='get' id='bl'><blocklist xmlns='{BLOCKING}'/></iq>")
    while client.until("{jabber:client}iq").get("id") != "bl":
        pass


def block(client: RawClient, jid: str, ident: str) -> None:
    client.send(f"<iq type='set' id='{ident}'><block xmlns='{BLOCKING}'><item jid='{jid}'/></block></iq>")
    while (reply := client.until("{jabber:client}iq")).get("id") != ident:
        pass
    assert reply.get("type") == "result", reply.attrib


def push_of(client: RawClient, jid: str) -> None:
    """Wait for the push blocking ``jid`` (AssertionError if it does not come within the client's timeout)."""
    try:
        while True:
            iq = client.until("{jabber:client}iq")
            items = iq.findall(f"{{{BLOCKING}}}block/{{{BLOCKING}}}item")
            if iq.get("type") == "set" and [i.get("jid") for i in items] == [jid]:
                return
    except TimeoutError:
        raise AssertionError(f"no block push for {jid}: the other node never heard of the change") from None


def message_answer(sender: RawClient, to: str, body: str) -> str | None:
    """Send a message, then a ping: the error condition the message got before the ping's answer, or None."""
    sender.send(f"<message to='{to}' type='chat'><body>{body}</body></message>")
    sender.send(f"<iq type='get' id='after-{body}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
    condition = None
    while (element := sender.next()).get("id") != f"after-{body}":
        if element.tag == "{jabber:client}message" and element.get("type") == "error":
            condition = element.find("{jabber:client}error")[0].tag.split("}")[1]
    return condition


class CutLinkCacheTests(ClusterTestCase):
    """t1 reaches t2 only through a proxy the test cuts and heals (t1 dials: its name sorts first)."""

    def make(self) -> ClusterFixture:
        # A long failure timeout: the cut is a blip, sessions stay in the directories meanwhile.
        cluster, self.proxy = cuttable_cluster(self, 2, (T1, T2), failure_timeout=30.0)
        return cluster

    def client(self, node: str, user: str, resource: str, *, priority: int | None = 0) -> RawClient:
        client = super().client(node, user, resource, priority=priority)
        client.raw.settimeout(15)
        return client

    async def cut(self) -> None:
        await self.proxy.cut()
        await deferToThread(wait_until, lambda: f"link to {T2} down" in self.cluster.log(T1)
                            and f"link to {T1} down" in self.cluster.log(T2), 15)

    async def heal(self) -> None:
        self.proxy.heal()
        await deferToThread(wait_until, lambda: self.cluster.log(T1).count(f"link to {T2} up") >= 2
                            and self.cluster.log(T2).count(f"link to {T1} up") >= 2, 20)

    def test_block_made_during_a_cut_is_enforced_after_the_heal(self) -> None:
        async def scenario():
            here = await deferToThread(self.client, T1, "alice", "here")
            there = await deferToThread(self.client, T2, "alice", "there")
            bob = await deferToThread(self.client, T2, "bob", "b")
            await deferToThread(ask_blocklist, there)  # t2 has alice's blocklist cached now
            self.assertIsNone(await deferToThread(message_answer, bob, f"{ALICE}/there", "before"))
            await self.cut()
            await deferToThread(block, here, BOB, "b1")
            await self.heal()
            await deferToThread(push_of, there, BOB)
            # t2 enforces the new blocklist: XEP-0191 §3.3, a message from a blocked JID is refused.
            self.assertEqual(await deferToThread(message_answer, bob, f"{ALICE}/there", "after"),
                             "service-unavailable")

        return ensure(scenario())

    def test_subscription_cancelled_during_a_cut_is_honoured_after_the_heal(self) -> None:
        async def scenario():
            here = await deferToThread(self.client, T1, "alice", "here")
            there = await deferToThread(self.client, T2, "alice", "there")
            bob = await deferToThread(self.client, T2, "bob", "b")
            await deferToThread(subscribe_both, here, ALICE, bob, BOB)
            for client in (here, there):
                await deferToThread(ask_blocklist, client)
            self.assertEqual((await deferToThread(roster_of, here))[BOB], "both")
            # t2 has processed every change of the handshake (they come before this one on the link)...
            await deferToThread(block, here, f"dave@{DOMAIN}", "b0")
            await deferToThread(push_of, there, f"dave@{DOMAIN}")
            # ...and caches alice's roster again for this broadcast: bob is a subscriber in it.
            there.send("<presence><status>before the cut</status></presence>")
            await deferToThread(own_presence, there, "before the cut")
            await self.cut()
            here.send(f"<presence to='{BOB}' type='unsubscribed'/>")  # bob may no longer see alice
            self.assertEqual((await deferToThread(roster_of, here))[BOB], "to")  # done on t1
            await self.heal()
            # Barrier: a later change on t1 comes after the replay of the earlier one on the same link.
            await deferToThread(block, here, f"carol@{DOMAIN}", "b2")
            await deferToThread(push_of, there, f"carol@{DOMAIN}")
            there.send("<presence><status>after the heal</status></presence>")
            await deferToThread(own_presence, there, "after the heal")
            seen = await deferToThread(presences_before_ping, bob)
            leaked = [p for p in seen if p.get("from") == f"{ALICE}/there" and p.get("type") is None
                      and p.findtext("{jabber:client}status") == "after the heal"]
            self.assertEqual(leaked, [], "t2 broadcast alice's presence with the roster it had before the cut")

        return ensure(scenario())


def own_presence(client: RawClient, status: str) -> None:
    """Wait for the client's own presence with ``status`` (the server has broadcast it by then)."""
    while True:
        element = client.until("{jabber:client}presence")
        text = element.find("{jabber:client}status")
        if text is not None and text.text == status:
            return


def presences_before_ping(client: RawClient) -> list:
    """Every presence the client receives before the answer to a ping sent now."""
    client.send(f"<iq type='get' id='barrier' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
    found = list(e for e in client.pending if e.tag == "{jabber:client}presence")
    client.pending = [e for e in client.pending if e.tag != "{jabber:client}presence"]
    while (element := client.next()).get("id") != "barrier":
        if element.tag == "{jabber:client}presence":
            found.append(element)
    return found


class RelayedCacheEventTests(ClusterTestCase):
    """t1 reaches t3 only through a proxy; t2 reaches both. While t1-t3 is cut, events go through t2."""

    nodes = 3

    def make(self) -> ClusterFixture:
        cluster, self.proxy = cuttable_cluster(self, 3, (T1, T3))
        return cluster

    def test_block_during_a_cut_reaches_the_node_behind_it(self) -> None:
        async def scenario():
            here = await deferToThread(self.client, T1, "alice", "here")
            there = await deferToThread(self.client, T3, "alice", "there")
            there.raw.settimeout(15)
            bob = await deferToThread(self.client, T3, "bob", "b")
            await deferToThread(ask_blocklist, there)
            await self.proxy.cut()
            await deferToThread(wait_until, lambda: f"link to {T3} down" in self.cluster.log(T1), 15)
            await deferToThread(block, here, BOB, "b1")
            await deferToThread(push_of, there, BOB)  # through t2, while the cut lasts
            self.assertEqual(await deferToThread(message_answer, bob, f"{ALICE}/there", "blocked"),
                             "service-unavailable")

        return ensure(scenario())
