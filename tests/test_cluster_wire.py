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
