"""Round trips on generated hostile trees: what we write, our parser reads back as the same tree.

For every client transport (TCP, WebSocket, BOSH), for stored stanzas, and for every cluster frame.
Trees carry hostile strings in every element name, attribute name and value, namespace and text
(tests/support/xmltrees.py); a tree XML cannot express at all must be refused, never written.
"""

from __future__ import annotations

import base64
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from twisted.words.xish import domish

from tests.support.xmltrees import CONTEXTS, HTTPBIND, PROPERTY, canonical, round_trip, spoiled_trees, texts, trees
from xmppcluster.cluster import protocol as wire
from xmppcluster.cluster.bosh_forward import BoshForwarder, ForwardedExchange, node_tag
from xmppcluster.cluster.directory import (
    STAMP,
    RemoteSession,
    describe,
    directed_delta,
    parse_directed,
    parse_stamp,
    parse_state,
    sync_frames,
)
from xmppcluster.cluster.events import Events
from xmppcluster.cluster.link import Link
from xmppcluster.cluster.node import Cluster
from xmppcluster.core import namespaces as ns
from xmppcluster.core.serializer import serialize
from xmppcluster.core.xml import parse_element


class ClientSerializerRoundTrips(TestCase):
    @settings(PROPERTY, max_examples=150)
    @given(trees())
    def test_every_transport(self, tree) -> None:
        """TCP (inside the stream header), WebSocket (self-contained), BOSH (inside ``<body/>``), stored."""
        for context in CONTEXTS:
            expected, read, data = round_trip(tree, context)
            self.assertEqual(read, expected, f"{context}: {data!r}")

    @settings(PROPERTY, max_examples=100)
    @given(spoiled_trees())
    def test_inexpressible_trees_refused(self, tree) -> None:
        for context in CONTEXTS:
            with self.assertRaises(ValueError, msg=context):
                round_trip(tree, context)
        with self.assertRaises(ValueError):
            serialize(tree)


# -- cluster frames ------------------------------------------------------------------------------------

#: JIDs as a node may hold them: a resource may contain any of < > & ' " and spaces (never a control).
JID_PARTS = ["<", ">", "&", "'", '"', "]]>", " ", "/", "@", "</bound>", "'/><bound jid='x@y/z'", "\u00e9",
             "\U0001f600", "&amp;", "</sync><sync>"]
_printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=3)
jid_texts = st.lists(st.one_of(st.sampled_from(JID_PARTS), _printable), min_size=1, max_size=4).map("".join)
jids = st.builds(lambda user, resource: f"{user}@example.com/{resource}",
                 st.text("abcxyz019._-", min_size=1, max_size=6), jid_texts)
node_names = st.one_of(st.sampled_from(["t1.example.com", "t2.example.com"]), jid_texts)


def presences(children: st.SearchStrategy = st.lists(st.one_of(texts, trees()), max_size=3)) -> st.SearchStrategy:
    """A stored presence: jabber:client, hostile attributes and children (``from`` is the session's)."""

    def build(attributes: dict, content: list) -> domish.Element:
        presence = domish.Element((ns.CLIENT, "presence"))
        presence.attributes.update(attributes)
        presence.children.extend(content)
        return presence

    return st.builds(build, st.dictionaries(st.sampled_from(["from", "id", "type", "x"]), texts, max_size=2), children)


@st.composite
def local_sessions(draw: st.DrawFn) -> SimpleNamespace:
    """What describe() reads of a local session."""
    return SimpleNamespace(jid=draw(jids), node=None, presence=draw(st.one_of(st.none(), presences())),
                           priority=draw(st.integers(-128, 127)), interested=draw(st.booleans()),
                           directed=draw(st.sets(jids, max_size=3)), data={STAMP: draw(st.integers(0, 2**40))})


def control_frame(xml: bytes | str) -> domish.Element:
    """``xml`` through an X frame, decoded and parsed as the receiving link does."""
    data = wire.control(xml.encode() if isinstance(xml, str) else xml)
    decoder = wire.FrameDecoder()
    (kind, payload), = [frame for cut in (data[:7], data[7:]) for frame in decoder.feed(cut)]
    assert kind == wire.CONTROL
    return parse_element(payload, max_bytes=wire.MAX_ELEMENT_BYTES, max_elements=10**6, max_depth=256)


def attributes(element: domish.Element) -> dict:
    return {key: value for key, value in element.attributes.items()}


class Capture:
    """Stands for a Cluster (or a link) wherever frames are sent: keeps them."""

    def __init__(self, **fields: object) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.__dict__.update(fields)

    def send(self, xml: bytes) -> None:
        self.sent.append(("", xml))

    def send_event(self, node: str, xml: str) -> bool:
        self.sent.append((node, xml.encode()))
        return True

    def broadcast(self, data: bytes) -> None:
        self.sent.append(("*", data))


class ClusterFrameRoundTrips(TestCase):
    """Every frame a node sends, built by the code that sends it, read back as the receiving node does:
    the same fields, and no entry, attribute or child more."""

    def assertEntry(self, element: domish.Element, session: SimpleNamespace, tag: str) -> None:
        self.assertEqual(element.name, tag)
        self.assertEqual(element.getAttribute("jid"), session.jid)
        priority, interested, presence = parse_state(element)
        self.assertEqual((priority, interested), (session.priority, session.interested))
        if session.presence is None:
            self.assertIsNone(presence)
        else:
            self.assertEqual(canonical(presence), canonical(session.presence))
        children = [child.name for child in element.elements()]
        if tag == "bound":
            self.assertEqual(parse_directed(element), session.directed)
            self.assertEqual(parse_stamp(element), session.data[STAMP])
            self.assertEqual(children.count("directed"), len(session.directed))
        self.assertEqual(children.count("presence"), int(session.presence is not None))
        self.assertEqual(len(children), children.count("presence") + children.count("directed"))

    @settings(PROPERTY, max_examples=60)
    @given(local_sessions(), st.sampled_from(["bound", "state"]))
    def test_bound_and_state(self, session: SimpleNamespace, tag: str) -> None:
        self.assertEntry(control_frame(describe(session, tag)), session, tag)

    @settings(PROPERTY, max_examples=40)
    @given(st.lists(local_sessions(), max_size=4, unique_by=lambda s: s.jid), st.integers(1, 2000))
    def test_sync(self, sessions: list[SimpleNamespace], limit: int) -> None:
        """However the entries are batched, each <sync> holds exactly the sessions listed, in order."""
        frames = [control_frame(frame) for frame in sync_frames(sessions, lambda s: True, limit)]
        self.assertEqual([frame.name for frame in frames], ["sync"] * len(frames))
        self.assertEqual([frame.getAttribute("end") for frame in frames], [None] * (len(frames) - 1) + ["1"])
        entries = [entry for frame in frames for entry in frame.children]
        self.assertEqual(len(entries), len(sessions))
        for entry, session in zip(entries, sessions, strict=True):
            self.assertEntry(entry, session, "bound")

    @settings(PROPERTY, max_examples=60)
    @given(jids, st.one_of(st.none(), jids), st.booleans())
    def test_directed_delta(self, jid: str, target: str | None, added: bool) -> None:
        if target is None and added:
            return
        session = SimpleNamespace(jid=jid)
        element = control_frame(directed_delta(session, target, added))
        expected = {"jid": session.jid, **({"to": target} if target is not None else {})}
        self.assertEqual((element.name, attributes(element), element.children),
                         ("directed" if added else "undirected", expected, []))

    @settings(PROPERTY, max_examples=60)
    @given(node_names, jids, trees())
    def test_routed(self, node: str, jid: str, tree: domish.Element) -> None:
        """R frames: the stanza stays bytes, the node and session survive, the stanza parses back whole."""
        body = serialize(tree).encode()
        data = wire.routed(node, jid, body)
        decoder = wire.FrameDecoder()
        (kind, payload), = [frame for byte in range(0, len(data), 5) for frame in decoder.feed(data[byte:byte + 5])]
        self.assertEqual(kind, wire.ROUTED)
        self.assertEqual(wire.split_routed(payload), (node, jid, body))
        self.assertEqual(canonical(parse_element(body)), canonical(tree))
        for field in (0, 1):
            fields = [node, jid]
            fields[field] += "\n"
            self.assertRaises(ValueError, wire.routed, *fields, body)

    @settings(PROPERTY, max_examples=60)
    @given(jids, node_names, st.sampled_from(["conflict", "x'/><kick jid='a@b/c'"]), texts)
    def test_unbound_kick_offline_waiting(self, jid: str, node: str, condition: str, reason: str) -> None:
        cluster = Capture()
        Cluster._local_unbound(cluster, SimpleNamespace(jid=jid, node=None), reason)
        RemoteSession(cluster, node, jid, 1).close(condition)
        Cluster._offline_waiting(cluster, jid.partition("/")[0], node)
        (_, unbound), (kick_to, kick), (waiting_to, waiting) = cluster.sent
        self.assertEqual((kick_to, waiting_to), (node, node))
        for data, name, expected in ((unbound, "unbound", {"jid": jid}),
                                     (kick, "kick", {"jid": jid, "condition": condition}),
                                     (waiting, "offline-waiting", {"owner": jid.partition("/")[0]})):
            element = control_frame(data)
            self.assertEqual((element.name, attributes(element), element.children), (name, expected, []))

    @settings(PROPERTY, max_examples=60)
    @given(jids, jids, st.lists(jids, max_size=3), st.lists(jids, max_size=3))
    def test_cache_events(self, owner: str, contact: str, added: list[str], removed: list[str]) -> None:
        cluster = Capture(name="t1.example.com", clock=Clock(), peers=lambda: [], event_path=lambda node: None)
        cluster.events = Events(cluster)
        Cluster._roster_changed(cluster, owner, contact)
        Cluster._blocking_changed(cluster, owner, added, removed)
        roster, blocking = [control_frame(frame) for _, _, frame in cluster.events._log]
        self.assertEqual((roster.getAttribute("name"), roster.getAttribute("owner"), roster.getAttribute("contact"),
                          roster.children), ("roster/changed", owner, contact, []))
        self.assertEqual((blocking.getAttribute("name"), blocking.getAttribute("owner")), ("blocking/changed", owner))
        self.assertEqual([(child.name, attributes(child), child.children) for child in blocking.children],
                         [("block", {"jid": jid}, []) for jid in added]
                         + [("unblock", {"jid": jid}, []) for jid in removed])

    @settings(PROPERTY, max_examples=40)
    @given(node_names, st.sampled_from([b"<kick jid='a@b/c' condition='conflict'/>", None]), local_sessions())
    def test_relay(self, node: str, event: bytes | None, session: SimpleNamespace) -> None:
        """An event for a node reached through a peer goes inside <relay/>; the peer writes it out again."""
        event = event or describe(session)
        relay = Capture(peer_links={node})
        cluster = Capture(links={"relay.example.com": relay})
        cluster._relay_for = lambda target: Cluster._relay_for(cluster, target)
        self.assertTrue(Cluster.send_event(cluster, node, event.decode()))
        ((_, frame),) = relay.sent
        element = control_frame(frame)
        self.assertEqual((element.name, element.getAttribute("node"), len(element.children)), ("relay", node, 1))
        target = Capture()
        relaying = Capture(links={node: target})
        Cluster.event(relaying, SimpleNamespace(peer="t1.example.com"), element)
        ((_, written),) = target.sent
        self.assertEqual(canonical(control_frame(written)), canonical(control_frame(event)))

    @settings(PROPERTY, max_examples=60)
    @given(node_names, node_names, jid_texts)
    def test_hello_and_heartbeat(self, name: str, peer: str, other: str) -> None:
        cluster = Capture(name=name, clock=Clock(), heartbeat_interval=1.0, failure_timeout=5.0,
                          links={peer: None, other: None}, max_frame_bytes=wire.MAX_ELEMENT_BYTES)
        link = Link(cluster, peer)
        link.transport = StringTransport()
        link._send_header()
        link.up = True
        link._beat()
        link._heartbeat.cancel()
        decoder = wire.FrameDecoder()
        hello, beat = [parse_element(payload) for _, payload in decoder.feed(link.transport.value())]
        self.assertEqual((hello.uri, hello.name, attributes(hello)),
                         (wire.NS, "hello", {"from": name, "version": wire.VERSION, **({"to": peer} if peer else {})}))
        self.assertEqual((beat.name, beat.getAttribute("links")), ("hb", ",".join(sorted({peer, other}))))

    @settings(PROPERTY, max_examples=40)
    @given(st.lists(presences(), max_size=2), texts, jid_texts, st.binary(max_size=64),
           st.integers(100, 599))
    def test_bosh_request_and_response(self, stanzas: list, peer: str, number: str, data: bytes, status: int) -> None:
        """<bosh-req/> carries the client's <body/> (hostile stanzas in it); <bosh-resp/> the answer."""
        from tests.test_bosh_forward import OWNER, FakeCluster, FakeExchange

        cluster = FakeCluster()
        cluster.up = True
        body = domish.Element((HTTPBIND, "body"))
        body["sid"], body["rid"] = "s" + node_tag(OWNER), "42"
        body.children.extend(stanzas)
        forwarder = BoshForwarder(cluster)
        self.assertTrue(forwarder.forward(body["sid"], FakeExchange(), body, True, peer))
        ForwardedExchange(forwarder, OWNER, number).reply(data, "text/xml; charset=utf-8", status)
        request, response = [control_frame(xml) for xml in cluster.sent]
        self.assertEqual((request.name, request.getAttribute("secure"), request.getAttribute("peer")),
                         ("bosh-req", "1", peer))
        (forwarded,) = request.elements()
        self.assertEqual(canonical(forwarded), canonical(body))
        self.assertEqual((response.name, response.getAttribute("id"), response.getAttribute("status"),
                          response.getAttribute("type"), base64.b64decode(str(response))),
                         ("bosh-resp", number, str(status), "text/xml; charset=utf-8", data))
        for call in cluster.clock.getDelayedCalls():
            call.cancel()
