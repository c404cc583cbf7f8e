"""What a node does with a routed frame (xmppcluster.cluster.node): deliver, reroute, bounce, never raise;
acknowledgements counted per link, relayed frames kept with their destination."""

from __future__ import annotations

from collections import deque

from twisted.trial.unittest import TestCase

from tests.support.databases import SQLiteBackend, make_storage
from tests.test_message_rules import Client, make_server
from xmppcluster.cluster.delivery import envelope as _envelope
from xmppcluster.cluster.delivery import kept as _kept
from xmppcluster.cluster.node import Cluster

STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"


class FakeLink:
    def __init__(self, peer: str, reaches: tuple[str, ...] = ()) -> None:
        self.peer = peer
        self.peer_links = set(reaches)
        self.routed: list[tuple[str, str, bytes]] = []

    def send_routed(self, node: str, session: str, body: bytes) -> None:
        self.routed.append((node, session, body))

    def send(self, xml: bytes) -> None:
        pass


def error_condition(stanza) -> str | None:
    for error in stanza.elements():
        if error.name == "error":
            for child in error.elements():
                if child.uri == STANZA_ERRORS:
                    return child.name
    return None


class RoutedFrameTests(TestCase):
    def setUp(self) -> None:
        self.server = make_server(config="--node-name=t1.example.com\n")
        self.cluster = Cluster(self.server, reactor=self.server.clock)
        self.alice = Client(self.server, "alice", "pc")
        self.bob = Client(self.server, "bob", "phone")

    def test_a_delivery_that_raises_is_bounced_not_raised(self) -> None:
        def broken(xml: bytes) -> None:
            raise RuntimeError("transport bug")

        self.bob.stream.send_serialized = broken
        body = b"<message xmlns='jabber:client' from='alice@localhost/pc' to='bob@localhost/phone' id='m1' " \
               b"type='chat'><body>hi</body></message>"
        self.assertIsNone(self.cluster.routed(FakeLink("t2.example.com"), "", "bob@localhost/phone", body))
        error, = self.alice.take("message")
        self.assertEqual((error["type"], error["id"], error_condition(error)), ("error", "m1", "internal-server-error"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_an_unreadable_stanza_for_a_vanished_session_is_bounced_from_its_start_tag(self) -> None:
        body = b"<message xmlns='jabber:client' from='alice@localhost/pc' to='bob@localhost/gone' id='m2' " \
               b"type='chat'><body>never closed"
        self.assertIsNone(self.cluster.routed(FakeLink("t2.example.com"), "", "bob@localhost/gone", body))
        error, = self.alice.take("message")
        self.assertEqual((error["id"], error_condition(error)), ("m2", "internal-server-error"))

    def test_relayed_frames_count_on_the_relay_link_and_keep_their_destination(self) -> None:
        relay = FakeLink("t3.example.com", reaches=("t2.example.com",))
        self.cluster.links["t3.example.com"] = relay
        self.cluster.delivery.sent["t3.example.com"] = 0
        self.cluster.delivery.outbox["t3.example.com"] = deque()
        chat = b"<message xmlns='jabber:client' from='alice@localhost/pc' to='bob@localhost/b' type='chat'/>"
        presence = b"<presence xmlns='jabber:client' from='alice@localhost/pc' to='bob@localhost/b'/>"
        self.cluster.delivery.route("t2.example.com", chat, "bob@localhost/b", keep=True)
        self.cluster.delivery.route("t2.example.com", presence, "bob@localhost/b", keep=False)
        self.assertEqual([node for node, _, _ in relay.routed], ["t2.example.com", "t2.example.com"])
        self.assertEqual(self.cluster.delivery.sent["t3.example.com"], 2)  # the relay's acknowledgements count both
        self.assertEqual(list(self.cluster.delivery.outbox["t3.example.com"]),
                         [(1, chat, "bob@localhost/b", "t2.example.com")])

    def test_a_stanza_too_large_for_a_frame_is_bounced_by_the_sender(self) -> None:
        link = FakeLink("t2.example.com")
        self.cluster.links["t2.example.com"] = link
        self.cluster.delivery.sent["t2.example.com"] = 0
        self.cluster.delivery.outbox["t2.example.com"] = deque()
        self.cluster.max_frame_bytes = 10_000
        body = (b"<message xmlns='jabber:client' from='alice@localhost/pc' to='bob@localhost/b' id='big' "
                b"type='chat'><body>" + b"x" * 10_000 + b"</body></message>")
        self.cluster.delivery.route("t2.example.com", body, "bob@localhost/b", keep=True)
        self.assertEqual(link.routed, [])
        error, = self.alice.take("message")
        self.assertEqual((error["id"], error_condition(error)), ("big", "policy-violation"))


class StartTagTests(TestCase):
    def test_kept_and_envelope(self) -> None:
        self.assertTrue(_kept(b"<message xmlns='jabber:client' to='a@b'><body/></message>"))
        self.assertTrue(_kept(b"<message xmlns='jabber:client' type='chat' to='a@b'/>"))
        self.assertFalse(_kept(b"<message xmlns='jabber:client' type='headline' to='a@b'/>"))
        self.assertFalse(_kept(b"<presence xmlns='jabber:client' to='a@b'/>"))
        envelope = _envelope(b"<iq xmlns='jabber:client' from='a@b/&apos;r&amp;' id='x&quot;' type='get'><q")
        self.assertEqual((envelope.name, envelope["from"], envelope["id"], envelope["type"]),
                         ("iq", "a@b/'r&", 'x"', "get"))
        self.assertIsNone(_envelope(b"<stream:features/>"))


class AcknowledgementTests(SQLiteBackend, TestCase):
    async def test_a_routed_message_stored_offline_is_done_when_the_row_is_committed(self) -> None:
        storage = await make_storage(self, self.backend)
        for user in ("alice", "bob"):
            await storage.accounts.create(user, "localhost", "pw")
        server = make_server(modules=("msgoffline",), db=storage.db, config="--node-name=t1.example.com\n")
        cluster = Cluster(server, reactor=server.clock)
        body = b"<message xmlns='jabber:client' from='alice@t2.example.com/pc' to='bob@localhost/gone' " \
               b"type='chat'><body>keep me</body></message>"
        done = cluster.routed(FakeLink("t2.example.com"), "", "bob@localhost/gone", body)
        self.assertIsNotNone(done)
        self.assertFalse(done.called)  # not acknowledged while the database writes it
        await done
        offline = server.modules["msgoffline"]
        self.assertEqual(await offline.store.count("bob", "localhost"), 1)
