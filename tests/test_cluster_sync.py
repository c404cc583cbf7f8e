"""The replicated directory: chunked ``<sync>``, directed-presence deltas, the Lamport order of binds.

In process, two :class:`~xmppcluster.cluster.directory.Directory` objects stand for two nodes; what one sends
is parsed with the cluster link's limits and handed to the other, as the link would. Then a real two-node
cluster whose directory is past the 16 MiB frame limit.
"""

from __future__ import annotations

import re
import time
from types import SimpleNamespace
from unittest import mock

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.clients.raw import RawClient
from tests.support.cluster import DOMAIN, make_cluster, migrate
from tests.support.cluster_attack import MAX_RTT, under_attack
from tests.support.waiting import wait_until
from tests.test_cluster import PASSWORD, ClusterTestCase
from xmppcluster.cluster import protocol as wire
from xmppcluster.cluster.directory import (
    SYNC_BATCH_BYTES,
    Directory,
    describe,
    directed_delta,
    sync_frames,
)
from xmppcluster.core.sessions import Session, SessionRegistry
from xmppcluster.core.xml import parse_element

T1, T2 = "t1.example.com", "t2.example.com"
PRESENCE = ("<presence xmlns='jabber:client'><show>away</show><status>in a meeting until three, then at the "
            "station</status><priority>5</priority><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' "
            "node='https://conversations.im' ver='Nt0lhHWZDwKCqJ6CFMxNPOqvALc='/></presence>")


class Stream:
    """What a local session's stream records: the stream error it was closed with."""

    def __init__(self) -> None:
        self.failed: str | None = None

    def fail(self, condition: str, text: str | None = None) -> None:
        self.failed = condition

    def session_replaced(self) -> None:
        pass


class Node:
    """One node's directory, with what it sends to the other node (kicks) recorded."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server = SimpleNamespace(sessions=SessionRegistry())
        self.kicks: list[tuple[str, str]] = []
        self.directory = Directory(self)

    def send_event(self, node: str, xml: str) -> None:
        self.kicks.append((node, xml))

    def local(self, jid: str, *, presence: str | None = PRESENCE, directed: int = 0) -> Session:
        """Bind a local session as the stream core and the cluster do."""
        bare, _, resource = jid.partition("/")
        user, _, domain = bare.partition("@")
        session = Session(user, domain, resource, Stream())
        if presence is not None:
            session.presence = parse_element(presence)
        session.directed = {f"room{i}@conference.example.org/{user}" for i in range(directed)}
        previous = self.server.sessions.bind(session)
        if previous is not None:
            previous.close("conflict")
        self.directory.stamp(session)
        return session


def frame(data: bytes):
    """A control frame as the receiving link parses it."""
    return parse_element(data, max_bytes=wire.MAX_ELEMENT_BYTES, max_elements=wire.MAX_ELEMENTS,
                         max_depth=wire.MAX_DEPTH)


class ChunkedSyncTests(TestCase):
    def test_forty_thousand_sessions_in_bounded_frames(self) -> None:
        """H3: a node with 42,000 sessions: one <sync> of all of them is past the 16 MiB frame limit (the peer
        dropped the link, and every reconnect sent it again); in batches every frame stays near 64 KiB."""
        sender, receiver = Node("t1.example.com"), Node("t2.example.com")
        sessions = [sender.local(f"user{i}@example.com/phone-{i:08x}", directed=i % 3) for i in range(42_000)]
        frames = list(sync_frames(sessions, lambda s: True))
        whole = sum(len(describe(s)) for s in sessions)
        self.assertGreater(whole, wire.MAX_ELEMENT_BYTES)  # what the single <sync> used to be
        entry = max(len(describe(s)) for s in sessions)
        self.assertLessEqual(max(len(f) for f in frames), SYNC_BATCH_BYTES + entry + 32)
        self.assertGreater(len(frames), whole // (SYNC_BATCH_BYTES + entry))
        self.assertTrue(frames[-1].startswith(b"<sync end='1'>"))
        self.assertFalse(any(f.startswith(b"<sync end=") for f in frames[:-1]))
        receiver.directory.begin_sync(sender.name)
        vanished = [receiver.directory.sync(sender.name, frame(f)) for f in frames]
        self.assertEqual(vanished, [[]] * len(frames))
        self.assertEqual(receiver.directory.count(sender.name), 42_000)
        last = receiver.server.sessions.get("user41999@example.com", f"phone-{41_999:08x}")
        self.assertEqual((last.node, last.priority, len(last.directed)), (sender.name, 0, 41_999 % 3))
        self.assertEqual(last.presence.getAttribute("xmlns") or last.presence.uri, "jabber:client")

    def test_an_entry_larger_than_a_batch_goes_alone(self) -> None:
        sender = Node("t1.example.com")
        big = "<presence xmlns='jabber:client'><status>" + "x" * (2 * SYNC_BATCH_BYTES) + "</status></presence>"
        sessions = [sender.local("a@example.com/1"), sender.local("b@example.com/1", presence=big),
                    sender.local("c@example.com/1")]
        frames = list(sync_frames(sessions, lambda s: True))
        self.assertEqual([f.count(b"<bound ") for f in frames], [1, 1, 1])

    def test_no_session_still_ends_the_sync(self) -> None:
        self.assertEqual(list(sync_frames([], lambda s: True)), [b"<sync end='1'></sync>"])

    def test_events_between_frames_and_sessions_gone_before_their_frame(self) -> None:
        """Frames go one per reactor turn: binds and unbinds of the sender interleave with them."""
        sender, receiver = Node("t1.example.com"), Node("t2.example.com")
        # What the receiver knew of the sender before the link went down.
        for jid in ("old@example.com/gone", "kept@example.com/r"):
            receiver.directory.bound(sender.name, frame(describe(sender.local(jid))))
        sender.server.sessions.unbind(sender.server.sessions.get("old@example.com", "gone"))
        sessions = [s for s in sender.server.sessions if s.node is None]
        sessions += [sender.local(f"u{i}@example.com/r", presence=("<presence xmlns='jabber:client'><status>"
                                                                  + "y" * 40_000 + "</status></presence>"))
                     for i in range(4)]
        frames = sync_frames(sessions, lambda s: sender.server.sessions.get(s.bare, s.resource) is s)
        receiver.directory.begin_sync(sender.name)
        receiver.directory.sync(sender.name, frame(next(frames)))
        late = sender.local("late@example.com/r")  # bound after the snapshot: announced by its own <bound/>
        receiver.directory.bound(sender.name, frame(describe(late)))
        gone = sender.server.sessions.get("u3@example.com", "r")  # ends before its frame is built
        sender.server.sessions.unbind(gone)
        receiver.directory.unbound(sender.name, gone.jid)
        vanished = []
        for data in frames:
            vanished += receiver.directory.sync(sender.name, frame(data))
        self.assertEqual([r.jid for r in vanished], ["old@example.com/gone"])
        self.assertEqual(sorted(receiver.directory.by_node[sender.name]),
                         ["kept@example.com/r", "late@example.com/r", "u0@example.com/r", "u1@example.com/r",
                          "u2@example.com/r"])


class DirectedDeltaTests(TestCase):
    def test_a_change_costs_the_same_whatever_the_list(self) -> None:
        """H3: each directed presence used to re-send the session's whole list (quadratic): now the change."""
        node = Node("t1.example.com")
        session = node.local("alice@example.com/pc", directed=1000)
        self.assertNotIn(b"<directed", describe(session, "state"))
        delta = directed_delta(session, "room1000@conference.example.org/alice", True)
        self.assertLess(len(delta), 120)
        self.assertEqual(delta, b"<directed jid='alice@example.com/pc' to='room1000@conference.example.org/alice'/>")

    def test_the_replica_follows_the_deltas(self) -> None:
        owner, mirror = Node("t1.example.com"), Node("t2.example.com")
        session = owner.local("alice@example.com/pc", directed=2)
        mirror.directory.bound(owner.name, frame(describe(session)))
        remote = mirror.server.sessions.get("alice@example.com", "pc")
        self.assertEqual(remote.directed, session.directed)
        for target, added in (("bob@example.com/x", True), ("room0@conference.example.org/alice", False)):
            mirror.directory.directed(owner.name, frame(directed_delta(session, target, added)), added)
        self.assertEqual(remote.directed, {"room1@conference.example.org/alice", "bob@example.com/x"})
        mirror.directory.state(owner.name, frame(describe(session, "state")))  # a presence change keeps them
        self.assertEqual(len(remote.directed), 2)
        mirror.directory.directed(owner.name, frame(directed_delta(session, None, False)), False)
        self.assertEqual(remote.directed, set())


class LogicalOrderTests(TestCase):
    def test_a_bind_after_hearing_of_the_other_wins_whatever_the_clocks(self) -> None:
        """Low: alice/same bound on t1; t2 hears of it, then alice binds alice/same on t2, whose wall clock is an
        hour behind. The session on t2 is the newer one (it knew of t1's), on both nodes."""
        t1, t2 = Node("t1.example.com"), Node("t2.example.com")
        first = t1.local("alice@example.com/same")
        t2.directory.bound(t1.name, frame(describe(first)))
        now = time.time()
        with mock.patch("xmppcluster.core.sessions.time.time", return_value=now - 3600):
            second = t2.local("alice@example.com/same")  # replaces t1's entry here (core's bind)
        t1.directory.bound(t2.name, frame(describe(second)))
        self.assertEqual(first.stream.failed, "conflict")
        self.assertIsNone(second.stream.failed)
        self.assertEqual(t1.kicks, [])  # t1 does not kick the newer session
        self.assertIs(t1.server.sessions.get("alice@example.com", "same").node, t2.name)

    def test_concurrent_binds_are_ordered_alike_on_both_nodes(self) -> None:
        t1, t2 = Node("t1.example.com"), Node("t2.example.com")
        one, two = t1.local("alice@example.com/same"), t2.local("alice@example.com/same")
        t1.directory.bound(t2.name, frame(describe(two)))
        t2.directory.bound(t1.name, frame(describe(one)))
        # Same stamp (neither knew of the other): the node name decides, t2's session wins on both sides.
        self.assertEqual((one.stream.failed, two.stream.failed), ("conflict", None))
        self.assertEqual([node for node, _ in t2.kicks], [t1.name])

    def test_a_sync_after_a_cut_decides_a_conflict_made_during_it(self) -> None:
        """During a cut t2 bound alice/same over t1's (the kick could not reach t1); the <sync> at link-up
        lists t1's session again: t2 must not keep both."""
        t1, t2 = Node("t1.example.com"), Node("t2.example.com")
        first = t1.local("alice@example.com/same")
        t2.directory.bound(t1.name, frame(describe(first)))
        second = t2.local("alice@example.com/same")
        t2.kicks.clear()  # the kick of that bind was lost in the cut
        t2.directory.begin_sync(t1.name)
        for data in sync_frames([first], lambda s: True):
            t2.directory.sync(t1.name, frame(data))
        self.assertIs(t2.server.sessions.get("alice@example.com", "same"), second)
        self.assertEqual([node for node, xml in t2.kicks if "kick" in xml], [t1.name])
        self.assertEqual(t2.directory.count(t1.name), 0)


class LargeDirectoryTests(ClusterTestCase):
    """H3 against real nodes: t1 holds more than 16 MiB of sessions when t2 starts. One <sync> of them was
    past the frame limit, so the link to t2 never carried t1's directory; now it goes in bounded frames while
    a client on t1 keeps pinging it."""

    timeout = 180
    sessions = 70
    status = 250_000  # a presence near --max-stanza-size (262144 bytes): 70 of them are 17.5 MB

    async def setUp(self) -> None:
        self.cluster = make_cluster(self, 2)
        await migrate(self.cluster)
        users = [f"user{i}@{DOMAIN}" for i in range(self.sessions)]
        await self.cluster.add_users(*users, f"pinger@{DOMAIN}", password=PASSWORD)
        self.cluster.start(T1)
        self.clients = await deferToThread(self.log_in_heavy, self.sessions)

    def log_in_heavy(self, count: int) -> list[RawClient]:
        clients = []
        for i in range(count):
            client = self.client(T1, f"user{i}", "big", priority=None)
            client.raw.settimeout(30)
            client.send(f"<presence><status>{'x' * self.status}</status></presence>")
            client.until("{jabber:client}presence")  # its own, back: t1 holds it
            clients.append(client)
        return clients

    async def test_a_node_with_more_than_16_mib_of_sessions_forms_its_link(self) -> None:
        expected = self.sessions + 1  # and the pinger

        def start_t2() -> None:
            self.cluster.start(T2)
            self.wait_linked(T2)

        def known_on_t2() -> int:
            rows = self.cluster.rows_from_thread()
            return rows[T2].links.get(T1, 0) if T2 in rows else 0

        def attack_in_thread() -> int:
            start_t2()
            try:
                wait_until(lambda: known_on_t2() >= expected, 40, 0.1)  # rows are refreshed every heartbeat (0.2 s)
            except AssertionError:
                pass  # the assertion below says how many
            return known_on_t2()

        known, rtts = await under_attack(self.cluster, attack_in_thread, {T1: "pinger"}, PASSWORD)
        self.assertEqual(known, expected, f"t2 knows {known} of t1's sessions\n{self.cluster.log(T2)[-2000:]}")
        sent = re.findall(r"directory sent to t2\.example\.com in (\d+) frames \(largest (\d+) bytes\)",
                          self.cluster.log(T1))
        frames, largest = map(int, sent[-1])
        self.assertGreaterEqual(frames, self.sessions // 4)
        self.assertLess(largest, SYNC_BATCH_BYTES + self.status + 1024)
        self.assertLess(max(rtts[T1]), MAX_RTT, f"t1's ping round trips meanwhile {sorted(rtts[T1])[-5:]}")
