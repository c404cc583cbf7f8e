"""BOSH on any node (xmppcluster.cluster.bosh_forward): every forwarded request is answered, none leaks."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.words.xish import domish

from xmppcluster.cluster.bosh_forward import BoshForwarder, node_tag
from xmppcluster.config import Config
from xmppcluster.core.events import Events
from xmppcluster.streams.bosh_session import HTTPBIND

OWNER = "t2.example.com"


class FakeServer:
    def __init__(self) -> None:
        self.config = Config()
        self.hooks = Events()
        self.clock = Clock()
        self.node_name = "t1.example.com"
        self.bosh = None


class FakeCluster:
    """Reaches OWNER only while ``up``; records what it sends."""

    failure_timeout = 6.0

    def __init__(self) -> None:
        self.server = FakeServer()
        self.clock = self.server.clock
        self.up = False
        self.sent: list[str] = []

    def peers(self) -> list[str]:
        return [OWNER]

    @property
    def links(self) -> dict[str, object]:
        return {OWNER: object()} if self.up else {}

    def send_event(self, node: str, xml: str) -> bool:
        if node == OWNER and self.up:
            self.sent.append(xml)
            return True
        return False


class FakeExchange:
    def __init__(self) -> None:
        self.answers: list[tuple[bytes, int]] = []

    def reply(self, data: bytes, content_type: str = "", status: int = 200) -> None:
        self.answers.append((data, status))


def request(sid: str) -> domish.Element:
    body = domish.Element((HTTPBIND, "body"))
    body["sid"], body["rid"] = sid, "42"
    return body


def number_of(xml: str) -> str:
    return xml.split("id='", 1)[1].split("'", 1)[0]


def response(number: str, payload: bytes = b"<body xmlns='http://jabber.org/protocol/httpbind'/>") -> domish.Element:
    import base64

    element = domish.Element((None, "bosh-resp"))
    element["id"], element["status"], element["type"] = number, "200", "text/xml"
    element.addContent(base64.b64encode(payload).decode())
    return element


class ForwardingTests(TestCase):
    def setUp(self) -> None:
        self.cluster = FakeCluster()
        self.forwarder = BoshForwarder(self.cluster)
        self.sid = "ab" * 16 + node_tag(OWNER)
        self.exchange = FakeExchange()

    def test_unknown_owner_is_not_forwarded(self) -> None:
        self.assertFalse(self.forwarder.forward("ab" * 16 + node_tag("t9.example.com"), self.exchange,
                                                request(self.sid), False, "10.0.0.1"))

    def test_request_waits_while_the_owner_is_unreachable_then_is_sent(self) -> None:
        self.assertTrue(self.forwarder.forward(self.sid, self.exchange, request(self.sid), False, "10.0.0.1"))
        self.assertEqual(self.cluster.sent, [])
        self.assertEqual(self.exchange.answers, [])
        self.cluster.up = True
        self.cluster.server.hooks.notify("cluster/node-up", OWNER)
        self.assertEqual(len(self.cluster.sent), 1)
        self.assertIn("rid='42'", self.cluster.sent[0])
        self.cluster.server.hooks.notify("cluster/bosh-resp", OWNER, response(number_of(self.cluster.sent[0])))
        self.assertEqual(len(self.exchange.answers), 1)
        self.assertEqual(self.forwarder.waiting, {})

    def test_request_in_flight_is_sent_again_on_a_new_link(self) -> None:
        self.cluster.up = True
        self.forwarder.forward(self.sid, self.exchange, request(self.sid), False, "10.0.0.1")
        self.cluster.server.hooks.notify("cluster/node-up", OWNER)  # the link was replaced: the answer may be lost
        first, again = self.cluster.sent
        self.assertEqual(first.partition(">")[2], again.partition(">")[2])  # same rid: the owner answers it once
        # The owner answers the replaced sending with a recoverable error: not this request's answer.
        error = response(number_of(first), b"<body type='error'/>")
        self.cluster.server.hooks.notify("cluster/bosh-resp", OWNER, error)
        self.assertEqual(self.exchange.answers, [])
        self.cluster.server.hooks.notify("cluster/bosh-resp", OWNER, response(number_of(again)))
        self.assertEqual(len(self.exchange.answers), 1)

    def test_unanswered_request_times_out_with_a_recoverable_error(self) -> None:
        self.cluster.up = True
        self.forwarder.forward(self.sid, self.exchange, request(self.sid), False, "10.0.0.1")
        self.cluster.clock.advance(self.forwarder.timeout - 0.1)
        self.assertEqual(self.exchange.answers, [])
        self.cluster.clock.advance(0.2)
        (data, status), = self.exchange.answers
        self.assertEqual(status, 200)
        self.assertIn(b"type='error'", data)
        self.assertEqual(self.forwarder.waiting, {})
        self.assertEqual(self.cluster.clock.getDelayedCalls(), [])
        self.cluster.server.hooks.notify("cluster/bosh-resp", OWNER, response("1"))  # too late: ignored
        self.assertEqual(len(self.exchange.answers), 1)

    def test_dead_owner_terminates_waiting_requests(self) -> None:
        self.forwarder.forward(self.sid, self.exchange, request(self.sid), False, "10.0.0.1")
        self.cluster.server.hooks.notify("cluster/node-down", OWNER)
        (data, _), = self.exchange.answers
        self.assertIn(b"remote-connection-failed", data)
        self.assertEqual(self.forwarder.waiting, {})
        self.assertEqual(self.cluster.clock.getDelayedCalls(), [])

    def test_answer_from_another_node_or_unreadable_is_not_passed_on(self) -> None:
        self.cluster.up = True
        self.forwarder.forward(self.sid, self.exchange, request(self.sid), False, "10.0.0.1")
        self.cluster.server.hooks.notify("cluster/bosh-resp", "t3.example.com", response("1"))
        self.assertEqual(self.exchange.answers, [])
        bad = response("1")
        bad.children = ["not base64 !"]
        self.cluster.server.hooks.notify("cluster/bosh-resp", OWNER, bad)
        (data, _), = self.exchange.answers
        self.assertIn(b"type='error'", data)
