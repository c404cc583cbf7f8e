"""Real twistd nodes t1, t2 (t3) serving example.com over a shared database."""

from __future__ import annotations

import time

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.clients.raw import RawClient
from tests.support.cluster import DOMAIN, ClusterFixture, cuttable_cluster, make_cluster, migrate
from tests.support.waiting import wait_until

PASSWORD = "cluster pass"
BODY = "{jabber:client}body"




class ClusterTestCase(TestCase):
    timeout = 90
    nodes = 2

    def make(self) -> ClusterFixture:
        """The cluster under test (subclasses change its shape)."""
        return make_cluster(self, self.nodes)

    async def setUp(self) -> None:
        self.cluster: ClusterFixture = self.make()
        await migrate(self.cluster)
        await self.cluster.add_users(*(f"{u}@{DOMAIN}" for u in ("alice", "bob", "carol")), password=PASSWORD)
        for name in self.cluster.nodes:
            self.cluster.start(name, wait=False)
        for name in self.cluster.nodes:
            await deferToThread(self.wait_linked, name)

    def wait_linked(self, name: str) -> None:
        from tests.support.process import wait_for_port

        node = self.cluster.nodes[name]
        wait_for_port(node.ports["c2s"], process=node.process)
        others = [n for n in self.cluster.nodes if n != name]
        try:
            wait_until(lambda: all(f"link to {o} up" in self.cluster.log(name) for o in others), timeout=30)
        except AssertionError:
            logs = "\n".join(f"--- {n}\n{self.cluster.log(n)[-2500:]}" for n in self.cluster.nodes)
            raise AssertionError(f"{name} did not link to {others} in 30 s\n{logs}") from None

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
            self.cluster.wait_replicated(1, 1)  # barrier: each directory lists the other node's session
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
            self.cluster.wait_replicated(3, 1)
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
            self.cluster.wait_replicated(1, 0)  # t2 knows the first session: the second one is newer
            self.client("t2.example.com", "carol", "same")
            return first.error_condition()

        return deferToThread(scenario).addCallback(self.assertEqual, "conflict")


def roster_of(client: RawClient) -> dict[str, str]:
    client.send("<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>")
    while True:
        reply = client.until("{jabber:client}iq")
        if reply.get("id") == "roster":
            return {item.get("jid"): item.get("subscription")
                    for item in reply.iter("{jabber:iq:roster}item")}


class SharedRosterTests(ClusterTestCase):
    def test_handshake_across_nodes_reads_both_through_either_node(self) -> None:
        def scenario():
            alice = self.client("t1.example.com", "alice", "a")
            bob = self.client("t2.example.com", "bob", "b")
            subscribe_both(alice, f"alice@{DOMAIN}", bob, f"bob@{DOMAIN}")
            seen_by_alice = [p for p in alice.__dict__.get("seen", [])
                             if p.get("type") is None and p.get("from") == f"bob@{DOMAIN}/b"]
            seen_by_alice = seen_by_alice or [wait_presence(alice, f"bob@{DOMAIN}/b", lambda p: p.get("type") is None)]
            views = {}
            for node in ("t1.example.com", "t2.example.com"):
                for user, contact in (("alice", "bob"), ("bob", "alice")):
                    fresh = self.client(node, user, f"check-{node[:2]}", priority=None)
                    views[(node, user)] = roster_of(fresh).get(f"{contact}@{DOMAIN}")
                    fresh.close()
            bob.send("<presence><status>away for lunch</status></presence>")
            update = [wait_presence(alice, f"bob@{DOMAIN}/b",
                                    lambda p: p.findtext("{jabber:client}status") == "away for lunch")]
            ping(bob)  # barrier: t2 has handled the presence and routed what it caused
            update += [p for p in presences_until_pong(alice, f"bob@{DOMAIN}/b") if p.get("type") is None]
            return seen_by_alice, views, update

        def check(result):
            seen_by_alice, views, update = result
            self.assertTrue(seen_by_alice, "alice sees bob available after the handshake")
            self.assertEqual(set(views.values()), {"both"}, views)
            self.assertEqual([p.find("{jabber:client}status").text for p in update], ["away for lunch"])

        return deferToThread(scenario).addCallback(check)


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


def subscribe_both(a: RawClient, a_jid: str, b: RawClient, b_jid: str) -> None:
    """The RFC 6121 handshake both ways, answered by each side."""
    presence = "{jabber:client}presence"

    def wait_type(client: RawClient, kind: str, frm: str):
        while True:
            element = client.until(presence)
            if element.get("type") == kind and element.get("from", "").split("/")[0] == frm:
                return element
            client.__dict__.setdefault("seen", []).append(element)  # kept for the test to inspect

    a.send(f"<presence to='{b_jid}' type='subscribe'/>")
    wait_type(b, "subscribe", a_jid)
    b.send(f"<presence to='{a_jid}' type='subscribed'/>")
    b.send(f"<presence to='{a_jid}' type='subscribe'/>")
    wait_type(a, "subscribe", b_jid)
    a.send(f"<presence to='{b_jid}' type='subscribed'/>")


_barriers = iter(range(1, 1_000_000))


def ping(client: RawClient) -> None:
    """Barrier: a ping round trip to the client's node (what it sent before is handled)."""
    presences_until_pong(client, "")


def presences_until_pong(client: RawClient, frm: str) -> list:
    """Barrier: a ping round trip to the client's node; every presence from ``frm`` that arrived before the
    answer (anything the node wrote to the client before answering)."""
    ident = f"barrier-{next(_barriers)}"
    client.send(f"<iq type='get' id='{ident}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
    found = []
    while True:
        element = client.next()
        if element.tag == "{jabber:client}iq" and element.get("id") == ident:
            return found
        if element.tag == "{jabber:client}presence" and element.get("from") == frm:
            found.append(element)


def wait_presence(client: RawClient, frm: str, matches) -> object:
    """The next presence from ``frm`` that ``matches`` (others from anyone are skipped)."""
    while True:
        element = client.until("{jabber:client}presence")
        if element.get("from") == frm and matches(element):
            return element


class NodeFailureTests(ClusterTestCase):
    def test_sigkill_unavailable_once_offline_then_rejoin(self) -> None:
        cluster = self.cluster

        def before_kill():
            alice = self.client("t1.example.com", "alice", "a")
            bob = self.client("t2.example.com", "bob", "b")
            subscribe_both(alice, f"alice@{DOMAIN}", bob, f"bob@{DOMAIN}")
            ping(bob)  # barrier: t2 handled the handshake's last presence
            return alice

        def after_kill(alice):
            started = time.monotonic()
            unavailable = [wait_presence(alice, f"bob@{DOMAIN}/b", lambda p: p.get("type") == "unavailable")]
            unavailable += [p for p in presences_until_pong(alice, f"bob@{DOMAIN}/b") if p.get("type") == "unavailable"]
            alice.send(f"<message to='bob@{DOMAIN}' type='chat'><body>while t2 was down</body></message>")
            return unavailable, time.monotonic() - started

        def rejoin():
            cluster.start("t2.example.com")
            self.wait_linked("t2.example.com")
            self.wait_linked("t1.example.com")
            bob = self.client("t2.example.com", "bob", "again")
            message = bob.until("{jabber:client}message")
            return message

        async def scenario():
            alice = await deferToThread(before_kill)
            cluster.kill("t2.example.com")
            unavailable, _ = await deferToThread(after_kill, alice)
            self.assertEqual(len(unavailable), 1, "unavailable presence exactly once")
            message = await deferToThread(rejoin)
            self.assertEqual(message.find(BODY).text, "while t2 was down")
            self.assertIsNotNone(message.find("{urn:xmpp:delay}delay"))

        return ensure(scenario())


class DirectedPresenceFailureTests(ClusterTestCase):
    def test_directed_presence_of_a_dead_node_is_ended(self) -> None:
        """RFC 6121 §4.6.3 across nodes: carol (t2, no subscription) sent alice directed presence; t2 dies;
        t1 announces carol unavailable to alice."""
        cluster = self.cluster

        def before_kill():
            alice = self.client("t1.example.com", "alice", "a")
            carol = self.client("t2.example.com", "carol", "c")
            carol.send(f"<presence to='alice@{DOMAIN}/a'><status>here</status></presence>")
            seen = [wait_presence(alice, f"carol@{DOMAIN}/c", lambda p: True)]
            ping(carol)
            return alice, seen + presences_until_pong(alice, f"carol@{DOMAIN}/c")

        async def scenario():
            alice, seen = await deferToThread(before_kill)
            self.assertEqual([p.get("type") for p in seen], [None])
            cluster.kill("t2.example.com")
            after = [await deferToThread(wait_presence, alice, f"carol@{DOMAIN}/c", lambda p: True)]
            after += await deferToThread(presences_until_pong, alice, f"carol@{DOMAIN}/c")
            self.assertEqual([p.get("type") for p in after], ["unavailable"])

        return ensure(scenario())


class DrainTests(ClusterTestCase):
    def test_sigterm_moves_tcp_and_websocket_clients_to_the_other_node(self) -> None:
        from tests.clients.ws import FRAMING, WSClient

        def connect():
            web = WSClient(self.cluster.nodes["t1.example.com"].ports["ws2s"])
            self.addCleanup(web.close)
            web.login(DOMAIN, "bob", PASSWORD, "web")
            return self.client("t1.example.com", "alice", "a"), web

        def websocket_close(web):
            return web.until(f"{{{FRAMING}}}close")

        async def scenario():
            alice, web = await deferToThread(connect)
            waiting = deferToThread(alice.wait_closed)
            web_waiting = deferToThread(websocket_close, web)
            await deferToThread(self.cluster.terminate, "t1.example.com")
            error = await waiting
            self.assertIsNotNone(error)
            target = error.find("{urn:ietf:params:xml:ns:xmpp-streams}see-other-host")
            self.assertIsNotNone(target)
            self.assertEqual(target.text.split(":")[0], "t2.example.com")
            close = await web_waiting
            port = self.cluster.nodes["t1.example.com"].ports["ws2s"]
            self.assertEqual(close.get("see-other-uri"), f"ws://t2.example.com:{port}/xmpp-websocket")
            self.assertIn("draining 2 client streams to t2.example.com", self.cluster.log("t1.example.com"))

        return ensure(scenario())


def ensure(coro):
    from twisted.internet.defer import ensureDeferred

    return ensureDeferred(coro)


class DiscoveryTests(ClusterTestCase):
    """No --cluster-nodes: the nodes find each other through the cluster_nodes table."""

    def make(self) -> ClusterFixture:
        return make_cluster(self, 2, discovery=True)

    def test_nodes_discover_each_other_and_route(self) -> None:
        def scenario():
            alice = self.client("t1.example.com", "alice", "a")
            bob = self.client("t2.example.com", "bob", "b")
            self.cluster.wait_replicated(1, 1)
            alice.send(f"<message to='bob@{DOMAIN}/b' type='chat'><body>found you</body></message>")
            return bob.until("{jabber:client}message").find(BODY).text

        return deferToThread(scenario).addCallback(self.assertEqual, "found you")

    def test_cluster_status_lists_both_nodes(self) -> None:
        import io

        from xmppcluster.cluster.status import status
        from xmppcluster.config import load

        def listed(lines: list[str]) -> bool:
            return (any(line.startswith("t1.example.com") and " up " in line and "t2.example.com:0" in line
                        for line in lines)
                    and any(line.startswith("t2.example.com") and "t1.example.com:0" in line for line in lines))

        async def scenario():
            config = load(self.cluster.nodes["t1.example.com"].config, {"--cluster-mode": "false"})
            await deferToThread(self.cluster.wait_replicated, 0, 0)  # both rows list the other node's link
            out = io.StringIO()
            self.assertEqual(await status(config, out), 0)
            lines = out.getvalue().splitlines()
            self.assertTrue(listed(lines), lines)

        return ensure(scenario())


class PartitionTests(ClusterTestCase):
    """t1 reaches t3 only through a proxy we can cut; t2 sees both all along."""

    nodes = 3

    def make(self) -> ClusterFixture:
        cluster, self.proxy = cuttable_cluster(self, 3, ("t1.example.com", "t3.example.com"))
        return cluster

    def test_cut_and_heal_converges_and_routes_around(self) -> None:
        async def scenario():
            alice = await deferToThread(self.client, "t1.example.com", "alice", "a")
            carol = await deferToThread(self.client, "t3.example.com", "carol", "c")
            await deferToThread(self.cluster.wait_replicated, 1, 0, 1)
            await self.proxy.cut()
            await deferToThread(wait_until, lambda: "link to t3.example.com down" in
                                self.cluster.log("t1.example.com"), 10)
            # While cut, t1 still knows t3 is alive (t2 reports it) and relays through t2. Barrier: t1 judged
            # its suspects after the failure timeout (1.5 s) and a heartbeat had passed since the cut.
            await deferToThread(self.cluster.wait_swept, "t1.example.com", time.time() + 1.5 + 0.2)
            self.assertNotIn("node t3.example.com is down", self.cluster.log("t1.example.com"))
            alice.send(f"<message to='carol@{DOMAIN}/c' type='chat'><body>around the cut</body></message>")
            relayed = await deferToThread(carol.until, "{jabber:client}message")
            self.assertEqual(relayed.find(BODY).text, "around the cut")
            # A session bound during the cut reaches t1 after the heal.
            await deferToThread(self.client, "t3.example.com", "bob", "during-cut")
            self.proxy.heal()
            await deferToThread(wait_until, lambda: self.cluster.log("t1.example.com").count(
                "link to t3.example.com up") >= 2, 15)
            rows = await deferToThread(self.cluster.wait_replicated, 1, 0, 2)
            self.assertEqual(rows["t1.example.com"].links["t3.example.com"], 2)

        return ensure(scenario())


class QuickRestartTests(ClusterTestCase):
    """t2 dies and is back before the failure timeout: its old sessions must not linger as ghosts."""

    def make(self) -> ClusterFixture:
        return make_cluster(self, 2, failure_timeout=30.0)

    def test_sessions_of_a_quickly_restarted_node_go_unavailable_once(self) -> None:
        cluster = self.cluster

        def before():
            alice = self.client("t1.example.com", "alice", "a")
            bob = self.client("t2.example.com", "bob", "b")
            subscribe_both(alice, f"alice@{DOMAIN}", bob, f"bob@{DOMAIN}")
            ping(bob)
            return alice

        def restart_and_watch(alice):
            cluster.kill("t2.example.com")
            cluster.start("t2.example.com")
            wait_until(lambda: cluster.log("t1.example.com").count("link to t2.example.com up") >= 2, 20)
            unavailable = [wait_presence(alice, f"bob@{DOMAIN}/b", lambda p: p.get("type") == "unavailable")]
            cluster.wait_swept("t1.example.com", time.time())  # t1 judged its suspects since
            return unavailable + [p for p in presences_until_pong(alice, f"bob@{DOMAIN}/b")
                                  if p.get("type") == "unavailable"]

        async def scenario():
            alice = await deferToThread(before)
            unavailable = await deferToThread(restart_and_watch, alice)
            self.assertEqual(len(unavailable), 1)
            self.assertNotIn("node t2.example.com is down", cluster.log("t1.example.com"))

        return ensure(scenario())


class CrossNodeIqAndProbeTests(ClusterTestCase):
    def test_iq_request_and_response_cross_nodes(self) -> None:
        def scenario():
            alice = self.client("t1.example.com", "alice", "a")
            bob = self.client("t2.example.com", "bob", "b")
            self.cluster.wait_replicated(1, 1)
            alice.send(f"<iq type='get' id='q1' to='bob@{DOMAIN}/b'><query xmlns='jabber:iq:version'/></iq>")
            request = bob.until("{jabber:client}iq")
            bob.send(f"<iq type='result' id='{request.get('id')}' to='{request.get('from')}'>"
                     "<query xmlns='jabber:iq:version'><name>bob's client</name></query></iq>")
            return request, alice.until("{jabber:client}iq")

        def check(result):
            request, answer = result
            self.assertEqual((request.get("from"), request.get("type")), (f"alice@{DOMAIN}/a", "get"))
            self.assertEqual((answer.get("id"), answer.get("type"), answer.get("from")),
                             ("q1", "result", f"bob@{DOMAIN}/b"))
            self.assertEqual(answer.find(".//{jabber:iq:version}name").text, "bob's client")

        return deferToThread(scenario).addCallback(check)

    def test_blocklist_push_reaches_resources_on_every_node(self) -> None:
        """XEP-0191 §3.3/3.4: a change made on t1 is pushed to the account's resource on t2 too."""
        def scenario():
            here = self.client("t1.example.com", "alice", "here")
            there = self.client("t2.example.com", "alice", "there")
            for client in (here, there):
                client.send("<iq type='get' id='bl'><blocklist xmlns='urn:xmpp:blocking'/></iq>")
                client.until("{jabber:client}iq")
            here.send(f"<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'><item jid='bob@{DOMAIN}'/>"
                      "</block></iq>")
            pushed = there.until("{jabber:client}iq")
            here.send(f"<iq type='set' id='u1'><unblock xmlns='urn:xmpp:blocking'><item jid='bob@{DOMAIN}'/>"
                      "</unblock></iq>")
            unpushed = there.until("{jabber:client}iq")
            return pushed, unpushed

        def check(result):
            for iq, action in zip(result, ("block", "unblock"), strict=True):
                self.assertEqual(iq.get("type"), "set")
                items = iq.findall(f"{{urn:xmpp:blocking}}{action}/{{urn:xmpp:blocking}}item")
                self.assertEqual([item.get("jid") for item in items], [f"bob@{DOMAIN}"], action)

        return deferToThread(scenario).addCallback(check)

    def test_probe_answered_with_presence_of_a_contact_on_the_other_node(self) -> None:
        def scenario():
            alice = self.client("t1.example.com", "alice", "a")
            bob = self.client("t2.example.com", "bob", "b")
            subscribe_both(alice, f"alice@{DOMAIN}", bob, f"bob@{DOMAIN}")
            bob.send("<presence><show>dnd</show></presence>")
            # Barrier: alice sees the change; t2 sent its <state/> before that broadcast, on the same link.
            wait_presence(alice, f"bob@{DOMAIN}/b", lambda p: p.findtext("{jabber:client}show") == "dnd")
            # A new resource of alice on t1: its initial presence probes bob, whose session lives on t2.
            late = self.client("t1.example.com", "alice", "late")
            seen = [wait_presence(late, f"bob@{DOMAIN}/b", lambda p: p.get("type") is None)]
            return seen + [p for p in presences_until_pong(late, f"bob@{DOMAIN}/b") if p.get("type") is None]

        def check(seen):
            self.assertTrue(seen, "the new resource learns bob's presence")
            self.assertEqual(seen[-1].find("{jabber:client}show").text, "dnd")

        return deferToThread(scenario).addCallback(check)

    def test_message_from_another_node_reaches_a_websocket_client(self) -> None:
        from tests.clients.ws import WSClient

        def scenario():
            web = WSClient(self.cluster.nodes["t1.example.com"].ports["ws2s"])
            self.addCleanup(web.close)
            jid = web.login(DOMAIN, "alice", PASSWORD, "web")
            web.send("<presence xmlns='jabber:client'/>")
            bob = self.client("t2.example.com", "bob", "b")
            self.cluster.wait_replicated(1, 1)
            bob.send(f"<message to='{jid}' type='chat'><body>to the browser</body></message>")
            return web.until("{jabber:client}message")

        def check(message):
            self.assertEqual(message.get("from"), f"bob@{DOMAIN}/b")
            self.assertEqual(message.find(BODY).text, "to the browser")

        return deferToThread(scenario).addCallback(check)
