"""The cluster link's framing (xmppcluster.cluster.protocol): split reads, many frames per read, bad input."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from xmppcluster.cluster import protocol as wire

STANZA = "<message xmlns='jabber:client' to='b@x/r'><body>line 1\nline 2 é &amp; ]]&gt;</body></message>"


class FramingTests(TestCase):
    def test_round_trip_in_every_split(self) -> None:
        stream = (wire.control(b"<hb h='3' links='t2'/>") + wire.routed("", "b@x/r", STANZA.encode())
                  + wire.routed("t3.example", "c@x/é", b"<presence xmlns='jabber:client'/>"))
        expected = [(wire.CONTROL, b"<hb h='3' links='t2'/>"),
                    (wire.ROUTED, f"\nb@x/r\n{STANZA}".encode()),
                    (wire.ROUTED, "t3.example\nc@x/é\n<presence xmlns='jabber:client'/>".encode())]
        for cut in range(len(stream) + 1):
            decoder = wire.FrameDecoder()
            frames = list(decoder.feed(stream[:cut])) + list(decoder.feed(stream[cut:]))
            self.assertEqual(frames, expected, f"cut at {cut}")
        decoder = wire.FrameDecoder()
        self.assertEqual([f for byte in range(len(stream)) for f in decoder.feed(stream[byte:byte + 1])], expected)

    def test_routed_payload(self) -> None:
        (_, payload), = wire.FrameDecoder().feed(wire.routed("", "b@x/r", STANZA.encode()))
        self.assertEqual(wire.split_routed(payload), ("", "b@x/r", STANZA.encode()))  # newlines survive
        with self.assertRaises(wire.FrameError):
            wire.split_routed(b"no newline")
        with self.assertRaises(wire.FrameError):
            wire.split_routed(b"\n\xffb@x\n<body/>")  # the JID must be UTF-8 (the stanza is passed on)

    def test_bad_headers(self) -> None:
        for data in (b"<stream:stream xmlns='urn:xmppcluster:cluster:1'>",  # version 1 peer
                     b"Z3\nabc", b"X\nabc", b"X-1\nabc", b"X1x\nabc", b"X123456789\n",
                     b"R" + b"9" * 20):
            with self.assertRaises(wire.FrameError, msg=data):
                list(wire.FrameDecoder().feed(data))

    def test_size_limit_refused_before_the_payload_arrives(self) -> None:
        decoder = wire.FrameDecoder(max_payload=100)
        self.assertEqual(list(decoder.feed(wire.control(b"x" * 100))), [(wire.CONTROL, b"x" * 100)])
        with self.assertRaises(wire.FrameError):
            list(decoder.feed(b"X101\n"))

    def test_incomplete_header_waits(self) -> None:
        decoder = wire.FrameDecoder()
        self.assertEqual(list(decoder.feed(b"X12")), [])
        self.assertEqual(list(decoder.feed(b"\n<a x='1'/>  ")), [(wire.CONTROL, b"<a x='1'/>  ")])


class LinearBufferingTests(TestCase):
    def test_a_frame_in_many_small_reads_costs_linear_time(self) -> None:
        """8 MiB in 1 KiB reads: copying the backlog on every read copied 32 GiB (2.3 s of CPU); now 25 ms."""
        import time

        payload = b"<a>" + b"x" * (8 * 1024 * 1024 - 7) + b"</a>"
        stream = wire.control(payload)
        decoder = wire.FrameDecoder()
        started = time.process_time()
        frames = []
        for offset in range(0, len(stream), 1024):
            frames.extend(decoder.feed(stream[offset:offset + 1024]))
        elapsed = time.process_time() - started
        self.assertEqual(frames, [(wire.CONTROL, payload)])
        self.assertLess(elapsed, 0.5)

    def test_limit_applies_per_read_phase(self) -> None:
        decoder = wire.FrameDecoder(wire.PREAUTH_MAX_BYTES)
        with self.assertRaises(wire.FrameError):
            list(decoder.feed(b"X%d\n" % (wire.PREAUTH_MAX_BYTES + 1)))
        decoder = wire.FrameDecoder(wire.PREAUTH_MAX_BYTES)
        list(decoder.feed(wire.control(b"<hello/>")))
        decoder.max_payload = wire.MAX_ELEMENT_BYTES
        self.assertEqual(list(decoder.feed(wire.control(b"<a>" + b"y" * 5000 + b"</a>")))[0][1][:4], b"<a>y")


class FakeCluster:
    """What a Link needs of the node, with routed frames handled by a test function."""

    def __init__(self, routed=None) -> None:
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.name = "t1.example.com"
        self.heartbeat_interval = 1.0
        self.failure_timeout = 6.0
        self.handshake_timeout = 5.0
        self.max_frame_bytes = wire.MAX_ELEMENT_BYTES
        self.links: dict = {}
        self.lost: list[str] = []
        self.events: list[str] = []
        self._routed = routed or (lambda link, node, session, body: None)

    def routed(self, link, node, session, body):
        return self._routed(link, node, session, body)

    def event(self, link, element) -> None:
        self.events.append(element.name)

    def acknowledged(self, link, count: int) -> None:
        pass

    def knows(self, name: str) -> bool:
        return name == "t2.example.com"

    def should_accept(self, name: str) -> bool:
        return True

    def link_lost(self, link, why: str) -> None:
        self.lost.append(why)


def accepting_link(cluster: FakeCluster):
    from twisted.internet.testing import StringTransport

    from xmppcluster.cluster.link import Link

    link = Link(cluster)
    transport = StringTransport()
    link.makeConnection(transport)
    return link, transport


def authenticated_link(cluster: FakeCluster):
    """A link past hello and auth (the proof needs TLS: tested with real nodes in test_cluster)."""
    link, transport = accepting_link(cluster)
    link.peer, link.hello, link.up = "t2.example.com", True, True
    if getattr(link, "_deadline", None) is not None:
        link._deadline.cancel()
    link.decoder.max_payload = cluster.max_frame_bytes
    return link, transport


HELLO = (b"<hello xmlns='urn:xmppcluster:cluster:2' from='t2.example.com' to='t1.example.com' version='%s'/>"
         % wire.VERSION.encode())


class HandshakeLimitTests(TestCase):
    def test_large_frame_before_authentication_is_refused_at_its_header(self) -> None:
        link, transport = accepting_link(FakeCluster())
        link.dataReceived(b"X16000000\n")
        self.assertTrue(transport.disconnected)

    def test_hello_with_children_is_refused(self) -> None:
        link, transport = accepting_link(FakeCluster())
        link.dataReceived(wire.control(HELLO[:-2] + b"><x/></hello>"))
        self.assertTrue(transport.disconnected)

    def test_no_authentication_within_the_deadline(self) -> None:
        cluster = FakeCluster()
        link, transport = accepting_link(cluster)
        link.dataReceived(wire.control(HELLO))
        self.assertFalse(transport.disconnected)
        self.assertIn(b"<hello", transport.value())
        link.dataReceived(b"X100\n")
        for _ in range(49):  # a frame trickling in keeps the heartbeat check quiet, not the deadline
            cluster.clock.advance(0.1)
            link.dataReceived(b"a")
        self.assertFalse(transport.disconnected)
        cluster.clock.advance(0.2)
        self.assertTrue(transport.disconnected)

    def test_deadline_cancelled_once_up(self) -> None:
        cluster = FakeCluster()
        link, transport = authenticated_link(cluster)
        for _ in range(10):
            cluster.clock.advance(1)
            link.dataReceived(wire.control(b"<hb h='0' links=''/>"))
        self.assertFalse(transport.disconnected)


class PerFrameFailureTests(TestCase):
    def test_a_routed_frame_whose_handler_raises_does_not_drop_the_link(self) -> None:
        seen = []

        def routed(link, node, session, body):
            seen.append(body)
            if body == b"<boom/>":
                raise RuntimeError("handler bug")

        cluster = FakeCluster(routed)
        link, transport = authenticated_link(cluster)
        link.dataReceived(wire.routed("", "b@x/r", b"<boom/>") + wire.routed("", "b@x/r", b"<ok/>"))
        self.assertFalse(transport.disconnected)
        self.assertEqual(seen, [b"<boom/>", b"<ok/>"])
        self.assertEqual(link.acknowledgeable(), 2)  # acknowledged: never sent again
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_malformed_routed_and_control_frames_are_skipped(self) -> None:
        seen = []
        cluster = FakeCluster(lambda link, node, session, body: seen.append(body))
        link, transport = authenticated_link(cluster)
        link.dataReceived(b"R10\nno-newline" + wire.control(b"<unclosed>") + wire.control(b"<event name='x'/>")
                          + wire.routed("", "b@x/r", b"<ok/>"))
        self.assertFalse(transport.disconnected)
        self.assertEqual(seen, [b"<ok/>"])
        self.assertEqual(cluster.events, ["event"])
        self.assertEqual(link.acknowledgeable(), 2)

    def test_acknowledgement_waits_for_a_store(self) -> None:
        from twisted.internet.defer import Deferred

        pending = Deferred()
        results = iter([None, pending, None])
        cluster = FakeCluster(lambda link, node, session, body: next(results))
        link, _ = authenticated_link(cluster)
        link.dataReceived(b"".join(wire.routed("", "b@x/r", b"<m/>") for _ in range(3)))
        self.assertEqual(link.acknowledgeable(), 1)  # frame 3 is delivered, but frame 2 is still being stored
        pending.callback(None)
        self.assertEqual(link.acknowledgeable(), 3)
