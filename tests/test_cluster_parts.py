"""The cluster's parts in process, with a task.Clock: failure judgement, dialing and backoff, the outbox and
its acknowledgements, relays, resync of cache events and the logical order of binds.

Whole :class:`~xmppcluster.cluster.node.Cluster` objects (each on its own in-memory server, sharing one
Clock) are joined by :mod:`twisted.test.iosim` links: real :class:`~xmppcluster.cluster.link.Link`
protocols, frames and heartbeats, only TLS is left out (the proof's channel binding is a fixed value
here; the TLS handshake and the proof are tested with real nodes in test_cluster).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial.unittest import TestCase

from tests.test_message_rules import Client, make_server
from xmppcluster.cluster.dialer import MAX_BACKOFF, MIN_BACKOFF, Dialer
from xmppcluster.cluster.failure import FailureDetector
from xmppcluster.cluster.link import Link
from xmppcluster.cluster.membership import Membership, NodeRow
from xmppcluster.cluster.node import Cluster
from xmppcluster.core import events as ev

T1, T2, T3 = "t1.example.com", "t2.example.com", "t3.example.com"
HEARTBEAT, FAILURE = 1.0, 6.0


def chat(to: str, text: str, sender: str = "alice@localhost/pc") -> str:
    return (f"<message xmlns='jabber:client' from='{sender}' to='{to}' type='chat' id='{text}'>"
            f"<body>{text}</body></message>")


def bodies(client: Client) -> list[str]:
    """The bodies of the messages the client got since the last call (the whole stanza when it has none)."""
    return [next((str(c) for c in m.elements() if c.name == "body"), m.toXml()) for m in client.take("message")]


class NoStore:
    """The cluster_nodes table, not needed here (static members)."""

    async def heartbeat(self, name: str, **row: object) -> None:
        pass


class Net:
    """Nodes sharing one Clock, joined by iosim links the test opens and cuts."""

    def __init__(self, test: TestCase, *names: str) -> None:
        test.patch(Link, "_binding", lambda link: b"\x01" * 32)  # the TLS exporter value, absent without TLS
        self.clock = Clock()
        self.nodes: dict[str, Cluster] = {}
        self.pumps: dict[frozenset[str], iosim.IOPump] = {}
        self.down: list[tuple[str, str]] = []  # (node, peer) per CLUSTER_NODE_DOWN
        members = ",".join(f"{name}:secret-{name}:5277" for name in names)
        for name in names:
            server = make_server(config=f"--node-name={name}\n--cluster-nodes={members}\n")
            server.clock = self.clock
            cluster = Cluster(server, reactor=self.clock)
            server.cluster = cluster
            cluster.subscribe()
            cluster.membership.store = NoStore()
            cluster.dialer._connect = lambda peer, name=name: self._dialed(name, peer)
            server.hooks.on(ev.CLUSTER_NODE_DOWN, lambda peer, name=name: self.down.append((name, peer)))
            self.nodes[name] = cluster

    def _dialed(self, name: str, peer: str) -> defer.Deferred:
        self.link(name, peer)
        return defer.succeed(None)

    def link(self, a: str, b: str) -> None:
        """A link a-b (the first by name dials), up once the frames are pumped."""
        first, second = sorted((a, b))
        acceptor, initiator = Link(self.nodes[second]), Link(self.nodes[first], second)
        pump = iosim.connect(acceptor, iosim.FakeTransport(acceptor, True),
                             initiator, iosim.FakeTransport(initiator, False), greet=False, clock=self.clock)
        self.pumps[frozenset((a, b))] = pump
        self.flush()

    def cut(self, a: str, b: str) -> None:
        """The link a-b closes (both ends see it at once)."""
        pump = self.pumps.pop(frozenset((a, b)))
        pump.clientIO.loseConnection()
        pump.flush()

    def flush(self) -> None:
        """Deliver everything written and everything due now (the <sync/> batches are one per turn)."""
        moved = True
        while moved:
            self.clock.advance(0)
            moved = any([pump.pump() for pump in list(self.pumps.values())])

    def advance(self, seconds: float, *, deliver: bool = True) -> None:
        """Let time pass in half-heartbeat steps; ``deliver=False``: what is written is lost, but a link that
        aborts still closes (both ends see it)."""
        for _ in range(round(seconds / 0.5)):
            self.clock.advance(0.5)
            if deliver:
                self.flush()
                continue
            for key, pump in list(self.pumps.items()):
                pump.clientIO.getOutBuffer(), pump.serverIO.getOutBuffer()
                if pump.clientIO.disconnecting or pump.serverIO.disconnecting:
                    del self.pumps[key]
                    pump.flush()

    def client(self, node: str, user: str, resource: str) -> Client:
        client = Client(self.nodes[node].server, user, resource)
        client.presence()
        self.flush()
        client.take()
        return client


class FailureDetectorTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.linked: set[str] = set()
        self.reached: set[str] = set()
        self.dead: list[str] = []
        self.detector = FailureDetector(self.clock, FAILURE, linked=self.linked.__contains__,
                                        reached=self.reached.__contains__, dead=self.dead.append)

    def test_a_suspect_is_dead_after_the_failure_timeout_not_before(self) -> None:
        self.detector.suspect(T2)
        self.clock.advance(FAILURE - 0.1)
        self.assertEqual(self.detector.judge(), [])
        self.assertTrue(self.detector.is_suspect(T2))
        self.clock.advance(0.1)
        self.assertEqual(self.detector.judge(), [T2])
        self.assertEqual(self.dead, [T2])
        self.assertFalse(self.detector.is_suspect(T2))
        self.clock.advance(FAILURE)
        self.assertEqual(self.detector.judge(), [])  # declared once

    def test_a_suspect_that_links_again_recovers(self) -> None:
        self.detector.suspect(T2)
        self.clock.advance(1)
        self.linked.add(T2)
        self.detector.judge()
        self.clock.advance(FAILURE)
        self.assertEqual((self.detector.judge(), self.detector.is_suspect(T2)), ([], False))

    def test_a_suspect_reached_through_a_peer_stays_alive_then_dies_a_timeout_after_the_peer_lost_it(self) -> None:
        self.detector.suspect(T3)
        self.reached.add(T3)
        self.clock.advance(FAILURE * 3)
        self.assertEqual(self.detector.judge(), [])
        self.reached.clear()
        self.clock.advance(FAILURE - 0.5)
        self.assertEqual(self.detector.judge(), [])
        self.clock.advance(0.5)
        self.assertEqual(self.detector.judge(), [T3])


class DialerTests(TestCase):
    def test_failed_attempts_back_off_to_three_seconds_and_a_link_resets_it(self) -> None:
        clock, attempts = Clock(), []

        def connect(peer: str) -> defer.Deferred:
            attempts.append(clock.seconds())
            return defer.fail(ConnectionRefusedError(peer))

        dialer = Dialer(clock, connect)
        delays = []
        for _ in range(6):
            dialer.dial(T2)
            self.assertTrue(dialer.busy(T2))
            scheduled, = clock.getDelayedCalls()
            delays.append(scheduled.getTime() - clock.seconds())
            clock.advance(delays[-1])
            self.assertFalse(dialer.busy(T2))  # the attempt failed
        self.assertEqual(delays, [0.0, MIN_BACKOFF, 0.5, 1.0, 2.0, MAX_BACKOFF])
        self.assertEqual(len(attempts), 6)
        dialer.connected(T2)
        dialer.dial(T2)
        scheduled, = clock.getDelayedCalls()
        self.assertEqual(scheduled.getTime(), clock.seconds())  # at once again


class LinkFailureTests(TestCase):
    def setUp(self) -> None:
        self.net = Net(self, T1, T2)
        self.t1, self.t2 = self.net.nodes[T1], self.net.nodes[T2]
        self.bob = self.net.client(T2, "bob", "phone")
        self.net.link(T1, T2)

    def test_link_up_syncs_the_directory(self) -> None:
        remote = self.t1.server.sessions.get("bob@localhost", "phone")
        self.assertEqual((remote.node, remote.available), (T2, True))

    def test_a_silent_link_is_dropped_then_its_node_judged_dead_a_failure_timeout_later(self) -> None:
        self.t1._sweep()  # the periodic sweep: dialing, judgement
        self.t1.dialer._connect = lambda peer: defer.fail(ConnectionRefusedError(peer))  # the cut stays
        self.net.advance(FAILURE, deliver=False)  # heartbeats written, none arrives
        self.assertIn(T2, self.t1.links)  # silent for failure-timeout exactly: not yet
        self.net.advance(HEARTBEAT, deliver=False)
        self.assertNotIn(T2, self.t1.links)
        self.assertTrue(self.t1.failure.is_suspect(T2))
        self.assertIsNotNone(self.t1.server.sessions.get("bob@localhost", "phone"))  # a blip keeps them
        self.net.advance(FAILURE - 1, deliver=False)
        self.assertEqual(self.net.down, [])
        self.net.advance(1.5, deliver=False)
        self.assertIn((T1, T2), self.net.down)
        self.assertIsNone(self.t1.server.sessions.get("bob@localhost", "phone"))

    def test_a_node_back_within_the_failure_timeout_is_not_dead(self) -> None:
        self.t1._sweep()
        self.net.cut(T1, T2)
        self.assertTrue(self.t1.failure.is_suspect(T2))
        self.net.advance(FAILURE * 3)  # the sweep redials at once: the link is up again
        self.assertIn(T2, self.t1.links)
        self.assertFalse(self.t1.failure.is_suspect(T2))
        self.assertEqual(self.net.down, [])
        self.assertIsNotNone(self.t1.server.sessions.get("bob@localhost", "phone"))

    def test_heartbeats_keep_a_quiet_link_up(self) -> None:
        self.net.advance(FAILURE * 3)
        self.assertIn(T2, self.t1.links)
        self.assertIn(T1, self.t2.links)


class OutboxTests(TestCase):
    def setUp(self) -> None:
        self.net = Net(self, T1, T2)
        self.t1 = self.net.nodes[T1]
        self.bob = self.net.client(T2, "bob", "phone")
        self.net.link(T1, T2)
        self.alice = self.net.client(T1, "alice", "pc")
        self.bob.take()

    def outbox(self) -> list[bytes]:
        return [body for _, body, _, _ in self.t1.delivery.outbox.get(T2, ())]

    def test_a_routed_chat_stays_until_the_heartbeat_acknowledges_it(self) -> None:
        self.alice.send(chat("bob@localhost/phone", "one"))
        self.net.flush()
        self.assertEqual(bodies(self.bob), ["one"])
        self.assertEqual(len(self.outbox()), 1)
        self.net.advance(HEARTBEAT)
        self.assertEqual(self.outbox(), [])

    def test_unacknowledged_messages_are_replayed_after_the_reconnect_acknowledged_ones_are_not(self) -> None:
        self.alice.send(chat("bob@localhost/phone", "acked"))
        self.net.advance(HEARTBEAT)
        self.alice.send(chat("bob@localhost/phone", "unacked"))
        self.net.flush()
        self.assertEqual(bodies(self.bob), ["acked", "unacked"])
        self.net.cut(T1, T2)  # before the heartbeat that would have acknowledged "unacked"
        self.alice.send(chat("bob@localhost/phone", "while-cut"))
        self.assertEqual(self.outbox(), [])
        self.assertEqual(len(self.t1.delivery.waiting[T2]), 2)  # waits for the node, not yet rerouted
        self.net.link(T1, T2)
        self.assertEqual(bodies(self.bob), ["unacked", "while-cut"])  # at least once: "unacked" twice
        self.net.advance(HEARTBEAT)
        self.assertEqual((self.outbox(), self.t1.delivery.waiting.get(T2)), ([], None))

    def test_presence_is_not_kept(self) -> None:
        self.alice.send("<presence xmlns='jabber:client' to='bob@localhost/phone' type='probe'/>")
        self.net.flush()
        self.assertEqual(self.outbox(), [])

    def test_messages_for_a_node_declared_dead_go_to_offline_handling_here(self) -> None:
        self.t1._sweep()
        self.net.cut(T1, T2)
        self.net.pumps.clear()
        self.t1.dialer._connect = lambda peer: defer.fail(ConnectionRefusedError(peer))
        self.alice.send(chat("bob@localhost/phone", "late"))
        self.assertEqual(len(self.t1.delivery.waiting[T2]), 1)
        taken: list[str] = []
        self.t1.server.hooks.on(ev.MESSAGE_OFFLINE, lambda stanza, bare: taken.append(bare) or True, 100)
        self.net.advance(FAILURE + 1)
        self.assertEqual(taken, ["bob@localhost"])
        self.assertNotIn(T2, self.t1.delivery.waiting)


class RelayTests(TestCase):
    def test_a_message_goes_through_the_peer_that_still_reaches_the_node_and_is_acknowledged_per_hop(self) -> None:
        net = Net(self, T1, T2, T3)
        t1, t2 = net.nodes[T1], net.nodes[T2]
        carol = net.client(T3, "bob", "phone")
        for a, b in ((T1, T2), (T1, T3), (T2, T3)):
            net.link(a, b)
        net.advance(HEARTBEAT)  # heartbeats tell each node its peers' links
        t1._sweep()
        net.cut(T1, T3)
        net.pumps.pop(frozenset((T1, T3)), None)
        t1.dialer._connect = lambda peer: defer.fail(ConnectionRefusedError(peer))
        alice = net.client(T1, "alice", "pc")
        alice.send(chat("bob@localhost/phone", "via-t2"))
        net.flush()
        self.assertEqual(bodies(carol), ["via-t2"])
        self.assertEqual(len(t1.delivery.outbox[T2]), 1)  # kept on the relay's link
        net.advance(FAILURE * 2)
        self.assertEqual(len(t1.delivery.outbox[T2]), 0)  # acknowledged by t2, which kept it for t3
        self.assertEqual(len(t2.delivery.outbox[T3]), 0)
        self.assertEqual(net.down, [])  # reached through t2: never judged dead
        self.assertIsNotNone(t1.server.sessions.get("bob@localhost", "phone"))


class ResyncTests(TestCase):
    def setUp(self) -> None:
        self.net = Net(self, T1, T2)
        self.t1, self.t2 = self.net.nodes[T1], self.net.nodes[T2]
        self.changed: list[str] = []
        self.stale: list[str] = []
        self.t2.server.hooks.on(ev.ROSTER_CHANGED_ELSEWHERE, self.changed.append)
        self.t2.server.hooks.on(ev.CACHES_STALE, lambda: self.stale.append("stale"))

    def test_an_event_made_while_cut_is_replayed_at_link_up(self) -> None:
        self.net.link(T1, T2)
        self.t1.server.hooks.notify(ev.ROSTER_CHANGED, "alice@localhost", "bob@localhost")
        self.net.flush()
        self.t1.server.hooks.notify(ev.ROSTER_CHANGED, "alice@localhost", "carol@localhost")  # not flushed
        self.net.cut(T1, T2)
        self.t1.server.hooks.notify(ev.ROSTER_CHANGED, "dave@localhost", "bob@localhost")
        self.net.link(T1, T2)
        self.assertEqual(self.changed, ["alice@localhost", "alice@localhost", "dave@localhost"])
        self.assertEqual(self.stale, [])

    def test_a_restarted_node_makes_its_peer_drop_every_cache(self) -> None:
        self.net.link(T1, T2)
        self.net.cut(T1, T2)
        self.t1.events.incarnation = "restarted"
        self.t1.events.seq = 0
        self.net.link(T1, T2)
        self.assertEqual(self.stale, ["stale"])

    def test_a_blocklist_change_reaches_the_peer_with_its_items(self) -> None:
        pushed = []
        self.t2.server.hooks.on(ev.BLOCKLIST_CHANGED_ELSEWHERE, lambda *args: pushed.append(args))
        self.net.link(T1, T2)
        self.t1.server.hooks.notify(ev.BLOCKING_CHANGED, "alice@localhost", ["eve@evil.example"], ["bob@localhost"])
        self.net.flush()
        self.assertEqual(pushed, [("alice@localhost", ["eve@evil.example"], ["bob@localhost"])])


class ConflictTests(TestCase):
    def test_binds_made_during_a_cut_resolve_alike_on_both_nodes_at_link_up(self) -> None:
        net = Net(self, T1, T2)
        net.link(T1, T2)
        net.cut(T1, T2)
        first = net.client(T1, "bob", "phone")
        second = net.client(T2, "bob", "phone")  # same stamp: ordered by node name, t2 wins
        net.link(T1, T2)
        self.assertEqual(first.stream.state, "closed")
        self.assertNotEqual(second.stream.state, "closed")
        for node in (T1, T2):
            self.assertEqual(net.nodes[node].server.sessions.get("bob@localhost", "phone").jid, "bob@localhost/phone")
        self.assertEqual(net.nodes[T1].server.sessions.get("bob@localhost", "phone").node, T2)

    def test_a_bind_after_hearing_of_the_other_wins(self) -> None:
        net = Net(self, T1, T2)
        net.link(T1, T2)
        older = net.client(T2, "bob", "phone")
        newer = net.client(T1, "bob", "phone")  # t1 knew of t2's session: a higher stamp
        net.flush()
        self.assertEqual(older.stream.state, "closed")
        self.assertNotEqual(newer.stream.state, "closed")
        self.assertIsNone(net.nodes[T1].server.sessions.get("bob@localhost", "phone").node)


class FakeStore:
    """The cluster_nodes table in memory: rows written by heartbeat, read by live."""

    def __init__(self, *rows: NodeRow) -> None:
        self.rows = {row.name: row for row in rows}

    async def heartbeat(self, name: str, *, address, port, secret, started_at, sessions, links) -> None:
        self.rows[name] = NodeRow(name, address, port, secret, started_at, 0.0, sessions, links)

    async def live(self, max_age: float) -> list[NodeRow]:
        return list(self.rows.values())


class MembershipTests(TestCase):
    def membership(self, config: str, report=lambda: (2, {T2: 3})) -> Membership:
        server = make_server(config=f"--node-name={T1}\n{config}")
        return Membership(T1, server.config, failure_timeout=FAILURE, report=report)

    async def test_static_members_their_keys_and_who_dials(self) -> None:
        members = f"--cluster-nodes={T1}:s1:5277,{T2}:s2:5277:10.0.0.2,{T3}:s3:5277\n"
        t1 = self.membership(members)
        self.assertEqual((t1.peers(), t1.knows(T2), t1.knows(T1), t1.knows("t9.example.com")),
                         ([T2, T3], True, False, False))
        self.assertTrue(t1.should_accept("t0.example.com"))
        self.assertFalse(t1.should_accept(T2))  # t1 sorts first: it dials
        t2 = Membership(T2, make_server(config=f"--node-name={T2}\n{members}").config, failure_timeout=FAILURE,
                        report=lambda: (0, {}))
        self.assertEqual(t1.key_for(T2), t2.key_for(T1))  # one key per pair, whoever computes it
        self.assertNotEqual(t1.key_for(T2), t1.key_for(T3))
        t1.store = FakeStore()
        await t1.refresh()
        row = t1.store.rows[T1]
        self.assertEqual((row.secret, row.sessions, row.links, row.port), (None, 2, {T2: 3}, 5277))

    async def test_discovery_learns_live_rows_and_publishes_a_fresh_secret(self) -> None:
        t1 = self.membership("")
        self.assertEqual((t1.static, t1.peers()), (False, []))
        store = FakeStore(NodeRow(T2, "10.0.0.2", 5300, "their-secret", 0.0, 0.0, 1, {}))
        t1.store = store
        t1.secret = "fresh"  # join() draws one when the list gives none
        await t1.refresh()
        self.assertEqual(t1.peers(), [T2])
        self.assertEqual((t1.members[T2].address, t1.members[T2].port, t1.members[T2].secret),
                         ("10.0.0.2", 5300, "their-secret"))
        self.assertEqual(store.rows[T1].secret, "fresh")  # discovery: peers read it from the table
