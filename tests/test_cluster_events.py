"""Cache events between nodes in process (xmppcluster.cluster.events): relayed, logged while unreachable,
replayed exactly at link-up, reset when too old or when a node restarted, never applied twice."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from xmppcluster.cluster.events import Events
from xmppcluster.core.xml import parse_element


class Net:
    """Nodes joined by links that deliver at once, or lose what is sent while cut; ``relay`` reaches through."""

    def __init__(self, *names: str, **limits: int) -> None:
        self.nodes = {name: Node(self, name, **limits) for name in names}
        self.cut: set[frozenset[str]] = set()
        self.relay: dict[frozenset[str], str] = {}
        self.lost: list[bytes] = []

    def reachable(self, a: str, b: str) -> bool:
        return frozenset((a, b)) not in self.cut

    def deliver(self, sender: str, target: str, data: bytes) -> None:
        element = parse_element(data)
        if element.name == "relay":
            inner = next(element.elements())
            via = sender
            sender, target = via, element["node"]
            data = inner.toXml().encode()
            element = inner
        self.nodes[target].receive(sender, element)

    def up(self, a: str, b: str) -> None:
        """The link a-b comes (back) up: both send <resync/>, and each handles the other's."""
        self.cut.discard(frozenset((a, b)))
        first, second = self.nodes[a], self.nodes[b]
        from_a, from_b = first.events.resync_frame(b), second.events.resync_frame(a)
        second.receive(a, parse_element(from_a))
        first.receive(b, parse_element(from_b))

    def down(self, a: str, b: str) -> None:
        self.cut.add(frozenset((a, b)))
        self.nodes[a].events.link_lost(b, 6.0)
        self.nodes[b].events.link_lost(a, 6.0)


class Node:
    """What :class:`Events` needs of a cluster, and what it made this node do."""

    def __init__(self, net: Net, name: str, **limits: int) -> None:
        self.net = net
        self.name = name
        self.clock = Clock()
        self.applied: list[str] = []  # "owner:seq" of every event acted on
        self.resets: list[str] = []
        self.events = Events(self, **limits)
        self.events.on_reset = self.resets.append

    def peers(self) -> list[str]:
        return [name for name in self.net.nodes if name != self.name]

    def event_path(self, peer: str):
        if self.net.reachable(self.name, peer):
            return lambda data: self.net.deliver(self.name, peer, data)
        via = self.net.relay.get(frozenset((self.name, peer)))
        if via is not None and self.net.reachable(self.name, via) and self.net.reachable(via, peer):
            return lambda data: self.net.deliver(self.name, via, b"<relay node='%s'>%s</relay>" % (peer.encode(), data))
        return None

    def receive(self, sender: str, element) -> None:
        if element.name == "event":
            if self.events.accept(element):
                self.applied.append(f"{element['owner']}:{element['seq']}")
        elif element.name == "resync":
            self.events.resync(sender, element)
        elif element.name == "reset":
            self.events.reset(element)

    def change(self, owner: str) -> None:
        self.events.publish("blocking/changed", {"owner": owner}, "<block jid='bob@example.com'/>")


def linked(*names: str, **limits: int) -> Net:
    net = Net(*names, **limits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            net.up(a, b)
    return net


class CacheEventTests(TestCase):
    def test_events_of_a_cut_link_are_replayed_at_link_up(self) -> None:
        net = linked("t1", "t2")
        t1, t2 = net.nodes["t1"], net.nodes["t2"]
        t1.change("alice")
        net.down("t1", "t2")
        t1.change("alice")
        t1.change("carol")
        self.assertEqual(t2.applied, ["alice:1"])
        net.up("t1", "t2")
        self.assertEqual(t2.applied, ["alice:1", "alice:2", "carol:3"])
        self.assertEqual(t2.resets, [])  # nothing was lost for good: no cache dropped

    def test_relayed_around_a_cut_and_not_applied_twice(self) -> None:
        net = linked("t1", "t2", "t3")
        t1, t3 = net.nodes["t1"], net.nodes["t3"]
        net.relay[frozenset(("t1", "t3"))] = "t2"
        net.down("t1", "t3")
        t1.change("alice")
        self.assertEqual(t3.applied, ["alice:1"])  # through t2
        net.up("t1", "t3")
        t1.change("bob")
        self.assertEqual(t3.applied, ["alice:1", "bob:2"])

    def test_what_was_in_flight_when_the_link_died_goes_again_through_a_relay(self) -> None:
        net = linked("t1", "t2", "t3")
        t1, t3 = net.nodes["t1"], net.nodes["t3"]
        net.relay[frozenset(("t1", "t3"))] = "t2"
        real = t3.receive
        t3.receive = lambda sender, element: None  # the link is dying: what t1 writes now is lost
        t1.change("alice")
        t3.receive = real
        net.down("t1", "t3")
        self.assertEqual(t3.applied, ["alice:1"])

    def test_an_event_sent_twice_is_applied_once(self) -> None:
        net = linked("t1", "t2", "t3")
        t1, t3 = net.nodes["t1"], net.nodes["t3"]
        net.relay[frozenset(("t1", "t3"))] = "t2"
        t1.change("alice")  # arrives directly...
        net.down("t1", "t3")  # ...and again through t2, since it may have been lost
        net.up("t1", "t3")
        t1.change("bob")
        self.assertEqual(t3.applied, ["alice:1", "bob:2"])

    def test_a_peer_that_missed_more_than_the_log_holds_drops_its_caches(self) -> None:
        net = linked("t1", "t2", max_events=3)
        t1, t2 = net.nodes["t1"], net.nodes["t2"]
        net.down("t1", "t2")
        for owner in "abcde":
            t1.change(owner)
        net.up("t1", "t2")
        self.assertEqual(t2.applied, [])
        self.assertEqual(len(t2.resets), 1)
        t1.change("f")
        self.assertEqual(t2.applied, ["f:6"])

    def test_a_restarted_node_makes_the_others_drop_their_caches(self) -> None:
        net = linked("t1", "t2")
        t2 = net.nodes["t2"]
        net.down("t1", "t2")
        net.nodes["t1"] = Node(net, "t1")  # t1 restarted: a new incarnation, its old log is gone
        net.up("t1", "t2")
        self.assertEqual(len(t2.resets), 1)
        net.nodes["t1"].change("alice")
        self.assertEqual(t2.applied, ["alice:1"])

    def test_a_node_first_heard_of_is_replayed_from_its_start(self) -> None:
        net = Net("t1", "t2")
        t1, t2 = net.nodes["t1"], net.nodes["t2"]
        net.cut.add(frozenset(("t1", "t2")))
        t1.change("alice")  # before the first link-up
        net.up("t1", "t2")
        self.assertEqual((t2.applied, t2.resets), (["alice:1"], []))

    def test_events_wait_for_the_handshake_of_a_new_link(self) -> None:
        net = linked("t1", "t2")
        t1, t2 = net.nodes["t1"], net.nodes["t2"]
        net.down("t1", "t2")
        net.cut.discard(frozenset(("t1", "t2")))
        t1.events.resync_frame("t2")  # the link is up, t2's <resync/> not yet here
        t1.change("alice")
        self.assertEqual(t2.applied, [])
        t1.receive("t2", parse_element(t2.events.resync_frame("t1")))
        self.assertEqual(t2.applied, ["alice:1"])


class ResyncFrameTests(TestCase):
    def test_an_incarnation_heard_from_a_peer_is_quoted_in_the_resync_frame(self) -> None:
        """The peer's incarnation goes back in our <resync/>: written as an attribute value, whatever it holds."""
        net = Net("t1", "t2")
        t1 = net.nodes["t1"]
        t1.events.resync("t2", parse_element(b"<resync inc='a&apos;b&lt;c' seq='3'/>"))
        frame = parse_element(t1.events.resync_frame("t2"))
        self.assertEqual((frame.name, frame["peer-inc"], frame["seen"], frame["inc"]),
                         ("resync", "a'b<c", "0", t1.events.incarnation))
