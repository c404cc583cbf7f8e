"""Tests for xmppcluster.core.xml: restricted XML, stanza limits, linear text, namespaces, reset."""

from __future__ import annotations

import gc
import time
import weakref

from twisted.trial import unittest

from xmppcluster.core import xml
from xmppcluster.core.xml import XML_NS, StreamFault, StreamParser, parse_element

STREAMS_NS = "http://etherx.jabber.org/streams"
HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
    b" to='example.com' version='1.0' xml:lang='en'>"
)
MESSAGE = b"<message to='juliet@example.com' type='chat' id='m1'><body>Wherefore art thou?</body></message>"


class Recorder:
    """A StreamParser handler that records everything it is given."""

    def __init__(self) -> None:
        self.root = None
        self.elements: list = []
        self.ended = False

    def stream_started(self, root) -> None:
        self.root = root

    def element_received(self, element) -> None:
        self.elements.append(element)

    def stream_ended(self) -> None:
        self.ended = True


class Base(unittest.TestCase):
    def open(self, **limits) -> tuple[StreamParser, Recorder]:
        handler = Recorder()
        parser = StreamParser(handler, **limits)
        parser.feed(HEADER)
        return parser, handler

    def assertFault(self, condition: str, f, *args, **kwargs) -> StreamFault:
        fault = self.assertRaises(StreamFault, f, *args, **kwargs)
        self.assertEqual(fault.condition, condition)
        return fault


class RestrictedXMLTests(Base):
    """RFC 6120 section 11.1: each construct ends the stream with restricted-xml."""

    def feed_document(self, prolog: bytes, body: bytes = b"") -> StreamFault:
        parser = StreamParser(Recorder())
        return self.assertFault("restricted-xml", parser.feed, prolog + HEADER.split(b"?>", 1)[1] + body)

    def test_doctype(self) -> None:
        self.feed_document(b"<?xml version='1.0'?><!DOCTYPE stream:stream>")

    def test_internal_subset_entity(self) -> None:
        self.feed_document(b"<!DOCTYPE s [<!ENTITY e 'EXPANDED'>]>", b"<message><body>&e;</body></message>")

    def test_billion_laughs(self) -> None:
        entities = b"".join(
            b"<!ENTITY l%d '%s'>" % (i, b"".join(b"&l%d;" % (i - 1) for _ in range(10))) for i in range(1, 10)
        )
        document = b"<!DOCTYPE lolz [<!ENTITY l0 'lol'>" + entities + b"]><lolz>&l9;</lolz>"
        start = time.process_time()
        self.assertFault("restricted-xml", parse_element, document)
        self.assertLess(time.process_time() - start, 0.5)

    def test_external_entity(self) -> None:
        self.feed_document(
            b"<!DOCTYPE s [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]>", b"<message><body>&xxe;</body></message>"
        )

    def test_external_dtd(self) -> None:
        self.feed_document(b"<!DOCTYPE s SYSTEM 'http://attacker.example/x.dtd'>")

    def test_comment_between_stanzas(self) -> None:
        parser, _ = self.open()
        self.assertFault("restricted-xml", parser.feed, b"<!-- hello -->")

    def test_comment_inside_stanza(self) -> None:
        parser, _ = self.open()
        self.assertFault("restricted-xml", parser.feed, b"<message><!-- x --></message>")

    def test_comment_before_header(self) -> None:
        self.feed_document(b"<!-- x -->")

    def test_processing_instruction_in_stream(self) -> None:
        parser, _ = self.open()
        self.assertFault("restricted-xml", parser.feed, b"<?foo bar?>")

    def test_processing_instruction_in_stanza(self) -> None:
        parser, _ = self.open()
        self.assertFault("restricted-xml", parser.feed, b"<message><?php echo 1?></message>")

    def test_undefined_entity_in_text(self) -> None:
        parser, _ = self.open()
        self.assertFault("restricted-xml", parser.feed, b"<message><body>&nbsp;</body></message>")

    def test_undefined_entity_in_attribute(self) -> None:
        parser, _ = self.open()
        self.assertFault("restricted-xml", parser.feed, b"<message to='&foo;'/>")

    def test_predefined_entities_and_char_refs(self) -> None:
        parser, handler = self.open()
        parser.feed(b"<message to='a&apos;b'><body>&lt;&gt;&amp;&quot;&apos;&#65;&#x263A;</body></message>")
        stanza = handler.elements[0]
        self.assertEqual(stanza["to"], "a'b")
        self.assertEqual(str(stanza.body), "<>&\"'A\u263a")

    def test_cdata_section_allowed(self) -> None:
        parser, handler = self.open()
        parser.feed(b"<message><body><![CDATA[<b>&x;</b>]]></body></message>")
        self.assertEqual(str(handler.elements[0].body), "<b>&x;</b>")

    def test_xml_declaration_at_start(self) -> None:
        parser = StreamParser(Recorder())
        parser.feed(b"<?xml version='1.0' encoding='UTF-8'?>")
        parser.feed(HEADER.split(b"?>", 1)[1])
        self.assertEqual(parser.handler.root.name, "stream")

    def test_xml_declaration_elsewhere(self) -> None:
        parser, _ = self.open()
        self.assertFault("not-well-formed", parser.feed, b"<?xml version='1.0'?>")

    def test_other_encoding(self) -> None:
        parser = StreamParser(Recorder())
        self.assertFault("unsupported-encoding", parser.feed, b"<?xml version='1.0' encoding='ISO-8859-1'?>")

    def test_restricted_in_parse_element(self) -> None:
        for bad in (b"<open><!-- c --></open>", b"<?pi x?><open/>", b"<!DOCTYPE open><open/>", b"<a>&e;</a>"):
            self.assertFault("restricted-xml", parse_element, bad)


class WellFormednessTests(Base):
    def test_mismatched_tags(self) -> None:
        parser, _ = self.open()
        self.assertFault("not-well-formed", parser.feed, b"<message><body></message>")

    def test_bad_utf8(self) -> None:
        parser, _ = self.open()
        self.assertFault("not-well-formed", parser.feed, b"<message><body>\xff\xfe</body></message>")

    def test_overlong_utf8(self) -> None:
        parser, _ = self.open()
        self.assertFault("not-well-formed", parser.feed, b"<message><body>\xc0\xbc</body></message>")

    def test_control_character(self) -> None:
        parser, _ = self.open()
        self.assertFault("not-well-formed", parser.feed, b"<message><body>\x01</body></message>")

    def test_dead_after_fault(self) -> None:
        parser, handler = self.open()
        self.assertFault("not-well-formed", parser.feed, b"<a></b>")
        self.assertFault("not-well-formed", parser.feed, MESSAGE)
        self.assertEqual(handler.elements, [])

    def test_handler_exception_kills_parser(self) -> None:
        parser, handler = self.open()

        def boom(element):
            raise RuntimeError("handler bug")

        handler.element_received = boom
        self.assertRaises(RuntimeError, parser.feed, MESSAGE)
        self.assertFault("internal-server-error", parser.feed, MESSAGE)

    def test_handler_stream_fault_propagates(self) -> None:
        handler = Recorder()

        def refuse(root):
            raise StreamFault("invalid-namespace")

        handler.stream_started = refuse
        parser = StreamParser(handler)
        self.assertFault("invalid-namespace", parser.feed, HEADER)
        self.assertFault("invalid-namespace", parser.feed, MESSAGE)

    def test_text_outside_stanza(self) -> None:
        parser, _ = self.open()
        self.assertFault("bad-format", parser.feed, b"hello")

    def test_whitespace_keepalives(self) -> None:
        parser, handler = self.open(max_stanza_bytes=10000)
        for _ in range(100):
            parser.feed(b" " * 65536)
        parser.feed(MESSAGE + b"\n" + MESSAGE)
        self.assertEqual(len(handler.elements), 2)


class LimitTests(Base):
    def test_huge_stanza_refused_early(self) -> None:
        """A 10 MiB stanza fed in 64 KiB reads is refused right after the limit, not at its end."""
        parser, _ = self.open()
        chunk = b"x" * 65536
        stream = [b"<message><body>" + chunk[15:]] + [chunk] * 159
        fed = 0
        with self.assertRaises(StreamFault) as caught:
            for data in stream:
                fed += len(data)
                parser.feed(data)
        self.assertEqual(caught.exception.condition, "policy-violation")
        self.assertIn("262144-byte limit", caught.exception.text)
        self.assertGreater(fed, 262144)
        self.assertLessEqual(fed, 262144 + 65536)

    def test_huge_stanza_in_one_read(self) -> None:
        """One 10 MiB read is not handed to expat whole: parsing stops one slice past the limit."""
        parser, _ = self.open()
        self.assertFault("policy-violation", parser.feed, b"<message><body>" + b"x" * (10 * 1024 * 1024))
        self.assertLessEqual(parser._builder.fed - len(HEADER), 262144 + xml._SLICE)

    def test_huge_start_tag(self) -> None:
        """An unfinished start tag (no element event yet) is counted too."""
        parser, _ = self.open(max_stanza_bytes=10000)
        parser.feed(b"<message to='")
        with self.assertRaises(StreamFault) as caught:
            for _ in range(100):
                parser.feed(b"a" * 4096)
        self.assertEqual(caught.exception.condition, "policy-violation")

    def test_huge_stream_header(self) -> None:
        parser = StreamParser(Recorder(), max_stanza_bytes=10000)
        parser.feed(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' to='")
        self.assertFault("policy-violation", parser.feed, b"a" * 20000)

    def test_complete_stanza_over_limit_in_one_read(self) -> None:
        parser, handler = self.open(max_stanza_bytes=10000)
        self.assertFault("policy-violation", parser.feed, b"<message><body>" + b"x" * 12000 + b"</body></message>")
        self.assertEqual(handler.elements, [])

    def test_stanza_at_limit_accepted(self) -> None:
        parser, handler = self.open(max_stanza_bytes=10000)
        stanza = b"<message><body>" + b"x" * (10000 - 32) + b"</body></message>"
        self.assertEqual(len(stanza), 10000)
        parser.feed(stanza)
        self.assertEqual(len(handler.elements), 1)

    def test_root_does_not_accumulate(self) -> None:
        parser, handler = self.open(max_stanza_bytes=10000)
        stanza = b"<message><body>" + b"x" * 5000 + b"</body></message>"
        for _ in range(300):
            parser.feed(stanza)
        self.assertEqual(len(handler.elements), 300)

    def test_depth(self) -> None:
        parser, _ = self.open()
        fault = self.assertFault("policy-violation", parser.feed, b"<a>" * 100000)
        self.assertIn("64", fault.text)

    def test_depth_at_limit_accepted(self) -> None:
        parser, handler = self.open(max_depth=64)
        parser.feed(b"<a>" * 64 + b"</a>" * 64)
        self.assertEqual(len(handler.elements), 1)
        self.assertFault("policy-violation", parser.feed, b"<a>" * 65)

    def test_element_count(self) -> None:
        parser, _ = self.open()
        fault = self.assertFault("policy-violation", parser.feed, b"<message>" + b"<x/>" * 2000 + b"</message>")
        self.assertIn("1000-element", fault.text)

    def test_element_count_at_limit_accepted(self) -> None:
        parser, handler = self.open()
        parser.feed(b"<message>" + b"<x/>" * 999 + b"</message>")
        self.assertEqual(len(handler.elements[0].children), 999)

    def test_count_resets_per_stanza(self) -> None:
        parser, handler = self.open(max_elements=10)
        for _ in range(5):
            parser.feed(b"<message>" + b"<x/>" * 9 + b"</message>")
        self.assertEqual(len(handler.elements), 5)

    def test_linear_text(self) -> None:
        """400k entity-split text pieces in one stanza: linear, both in one read and in many small reads."""
        body = b"a&amp;" * 400000
        stanza = b"<message><body>" + body + b"</body></message>"
        for size in (len(stanza), 512):
            parser, handler = self.open(max_stanza_bytes=4 * 1024 * 1024)
            start = time.process_time()
            for i in range(0, len(stanza), size):
                parser.feed(stanza[i : i + size])
            self.assertLess(time.process_time() - start, 1.0)
            self.assertEqual(str(handler.elements[0].body), "a&" * 400000)

    def test_interned_names_bounded(self) -> None:
        parser, handler = self.open()
        for i in range(3 * xml._MAX_INTERNED):
            parser.feed(b"<message><x%d a%d='1'/></message>" % (i, i))
        self.assertLessEqual(len(parser._builder.parser.intern), xml._MAX_INTERNED + 4)
        self.assertEqual(handler.elements[-1].firstChildElement().name, f"x{3 * xml._MAX_INTERNED - 1}")

    def test_parse_element_limits(self) -> None:
        fault = self.assertFault("policy-violation", parse_element, b"<body>" + b"x" * 300 + b"</body>", max_bytes=200)
        self.assertIn("200-byte limit", fault.text)
        self.assertFault("policy-violation", parse_element, b"<a>" * 70 + b"</a>" * 70)
        self.assertFault("policy-violation", parse_element, b"<body>" + b"<x/>" * 1000 + b"</body>")


class StreamTests(Base):
    def test_header(self) -> None:
        _, handler = self.open()
        root = handler.root
        self.assertEqual((root.uri, root.name), (STREAMS_NS, "stream"))
        self.assertEqual(root.defaultUri, "jabber:client")
        self.assertEqual(root.localPrefixes, {"stream": STREAMS_NS})
        self.assertEqual(root["to"], "example.com")
        self.assertEqual(root.attributes[(XML_NS, "lang")], "en")

    def test_header_without_default_namespace(self) -> None:
        parser = StreamParser(Recorder())
        parser.feed(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>")
        self.assertIsNone(parser.handler.root.defaultUri)

    def test_stanzas_and_end(self) -> None:
        parser, handler = self.open()
        parser.feed(MESSAGE + b"\n<presence/>")
        parser.feed(b"</stream:stream>")
        self.assertEqual([e.name for e in handler.elements], ["message", "presence"])
        for element in handler.elements:
            self.assertIsNone(element.parent)
            self.assertEqual(element.uri, "jabber:client")
        self.assertIsNone(handler.elements[0].body.parent)
        self.assertTrue(handler.ended)

    def test_stanzas_are_freed_without_the_cycle_collector(self) -> None:
        """No parent links, no cycles: a dropped stanza is gone at once, with the collector off."""
        parser, handler = self.open()
        parser.feed(b"<message to='a@b'><body>x</body><x xmlns='urn:y'><z/></x></message>")
        stanza = weakref.ref(handler.elements[0])
        body = weakref.ref(handler.elements[0].body)
        enabled = gc.isenabled()
        gc.disable()
        try:
            handler.elements.clear()
            self.assertIsNone(stanza())
            self.assertIsNone(body())
        finally:
            if enabled:
                gc.enable()

    def test_namespaces_round_trip(self) -> None:
        parser, handler = self.open()
        stanza = (
            "<message to='a@example.com' xml:lang='fr'><body>salut</body>"
            "<active xmlns='http://jabber.org/protocol/chatstates'/>"
            "<p:x xmlns:p='urn:example:p' p:attr='v'><p:y/><z/></p:x></message>"
        )
        parser.feed(stanza.encode())
        parser.feed(b"<stream:error><bad-format xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>")
        message, error = handler.elements
        self.assertEqual(message.attributes[(XML_NS, "lang")], "fr")
        self.assertEqual(message.active.uri, "http://jabber.org/protocol/chatstates")
        x = message.x
        self.assertEqual((x.uri, x.children[1].uri), ("urn:example:p", "jabber:client"))
        self.assertEqual(x.attributes[("urn:example:p", "attr")], "v")
        # What XmlStream.send does: the stream's default namespace and prefixes are in scope.
        prefixes = {STREAMS_NS: "stream"}
        self.assertEqual(message.toXml(prefixes=prefixes, defaultUri="jabber:client"), stanza)
        self.assertNotIn("xmlns='jabber:client'", message.toXml(defaultUri="jabber:client"))
        self.assertIn("xmlns='jabber:client'", message.toXml())
        self.assertEqual((error.uri, error.name), (STREAMS_NS, "error"))
        self.assertTrue(error.toXml(prefixes=prefixes, defaultUri="jabber:client").startswith("<stream:error"))

    def test_split_multibyte_utf8(self) -> None:
        parser, handler = self.open()
        data = "<message><body>h\u00e9 \u263a \U0001d11e</body></message>".encode()
        for i in range(len(data)):
            parser.feed(data[i : i + 1])
        self.assertEqual(str(handler.elements[0].body), "h\u00e9 \u263a \U0001d11e")

    def test_reset(self) -> None:
        parser, handler = self.open()
        parser.feed(b"<message><body>half")
        parser.reset()
        parser.feed(HEADER + MESSAGE)
        self.assertEqual(len(handler.elements), 1)
        self.assertEqual(str(handler.elements[0].body), "Wherefore art thou?")

    def test_reset_clears_fault(self) -> None:
        parser, handler = self.open()
        self.assertFault("restricted-xml", parser.feed, b"<!-- x -->")
        parser.reset()
        parser.feed(HEADER + MESSAGE)
        self.assertEqual(len(handler.elements), 1)

    def test_reset_from_handler_drops_rest(self) -> None:
        """Bytes after <starttls/> in the same read must not reach the restarted stream."""
        parser, handler = self.open()
        received = handler.elements.append

        def on_element(element):
            received(element)
            if element.name == "starttls":
                parser.reset()

        handler.element_received = on_element
        parser.feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><iq type='set'/><presence/>")
        self.assertEqual([e.name for e in handler.elements], ["starttls"])
        parser.feed(HEADER + MESSAGE)
        self.assertEqual([e.name for e in handler.elements], ["starttls", "message"])


class ParseElementTests(Base):
    def test_open(self) -> None:
        element = parse_element(
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.com' version='1.0' xml:lang='en'/>"
        )
        self.assertEqual((element.uri, element.name), ("urn:ietf:params:xml:ns:xmpp-framing", "open"))
        self.assertEqual(element["to"], "example.com")
        self.assertEqual(element.attributes[(XML_NS, "lang")], "en")
        self.assertIsNone(element.parent)

    def test_body_with_children(self) -> None:
        body = parse_element(
            b"<body xmlns='http://jabber.org/protocol/httpbind' rid='1' sid='s'>"
            b"<message xmlns='jabber:client' to='a@example.com'><body>hi</body></message>"
            b"<presence xmlns='jabber:client'/></body>"
        )
        self.assertEqual(body.uri, "http://jabber.org/protocol/httpbind")
        children = list(body.elements())
        self.assertEqual(
            [(c.uri, c.name) for c in children], [("jabber:client", "message"), ("jabber:client", "presence")]
        )
        self.assertIsNone(children[0].parent)  # no back references: no cycles
        self.assertEqual(str(children[0].body), "hi")
        self.assertEqual(
            children[0].toXml(defaultUri="jabber:client"), "<message to='a@example.com'><body>hi</body></message>"
        )

    def test_xml_declaration(self) -> None:
        self.assertEqual(parse_element(b"<?xml version='1.0'?><close/>").name, "close")

    def test_two_roots(self) -> None:
        self.assertFault("not-well-formed", parse_element, b"<open/><close/>")

    def test_trailing_junk(self) -> None:
        self.assertFault("not-well-formed", parse_element, b"<open/>junk")

    def test_unclosed(self) -> None:
        self.assertFault("not-well-formed", parse_element, b"<body><message>")

    def test_empty(self) -> None:
        self.assertFault("not-well-formed", parse_element, b"")

    def test_bad_utf8(self) -> None:
        self.assertFault("not-well-formed", parse_element, b"<body>\xed\xa0\x80</body>")

    def test_lone_surrogate_in_str(self) -> None:
        self.assertFault("not-well-formed", parse_element, "<body>\ud800</body>")


#: issue C1: the stanza whose namespace name, written back unescaped, made a second <message/>.
INJECTION = (b"<message to='v@example.com'><x xmlns=\"urn:a'/&gt;&lt;message&#9;from='boss@example.com'&gt;"
             b"&lt;body&gt;forged&lt;/body&gt;&lt;/message&gt;&lt;x&#9;xmlns='z\"/></message>")
#: One of each character a namespace name may not contain, as a character reference where expat would
#: refuse or normalise the literal one. (A space is expat's namespace separator: it refuses it itself.)
FORBIDDEN = ["&#9;", "&#10;", "&#13;", "&#x7F;", "&#x85;", "&#x9F;", "&apos;", "&quot;", "&lt;", "&gt;",
             "&amp;", "\\", "^", "`", "{", "|", "}"]


class NamespaceNameTests(Base):
    """Namespace names that could close their quotes (or hold no URI at all) end the stream."""

    def test_injection_stanza(self) -> None:
        parser, handler = self.open()
        fault = self.assertFault("invalid-namespace", parser.feed, INJECTION)
        self.assertIn("namespace name", fault.text)
        self.assertEqual(handler.elements, [])
        self.assertFault("invalid-namespace", parse_element, INJECTION)

    def test_each_forbidden_character(self) -> None:
        for char in FORBIDDEN:
            for template in ("<x xmlns='urn:a{}b'/>", "<x xmlns:p='urn:a{}b' p:y='1'/>", "<p:x xmlns:p='{}'/>"):
                with self.subTest(char=char, template=template):
                    text = template.format(char).replace("'", '"')
                    self.assertFault("invalid-namespace", parse_element, text.encode())
        self.assertFault("not-well-formed", parse_element, b"<x xmlns='urn:a&#32;b'/>")

    def test_in_the_stream_header(self) -> None:
        parser = StreamParser(Recorder())
        header = HEADER.replace(b"xmlns='jabber:client'", b"xmlns='jabber:client&#9;x'")
        self.assertFault("invalid-namespace", parser.feed, header)

    def test_prefix_declared_deep_inside(self) -> None:
        parser, handler = self.open()
        self.assertFault("invalid-namespace", parser.feed,
                         b"<message><a><b><c xmlns:q='urn:&lt;q'/></b></a></message>")
        self.assertEqual(handler.elements, [])

    def test_usual_names_accepted(self) -> None:
        for uri in ("jabber:client", "urn:xmpp:ping", "http://jabber.org/protocol/muc#user",
                    "https://example.com/a%20b?x=1;y=2#f", "urn:ex:\u00e9\u4e2d", "[v6]:x", ""):
            with self.subTest(uri=uri):
                element = parse_element(f"<x xmlns='{uri}'/>".encode())
                self.assertEqual(element.uri, uri)
                self.assertTrue(xml.namespace_allowed(uri))

    def test_checked_names_remembered_within_bounds(self) -> None:
        self.patch(xml, "_NAMESPACES", set())
        for n in range(xml._MAX_NAMESPACES * 2 + 5):
            parse_element(f"<x xmlns='urn:n:{n}'/>".encode())
            self.assertLessEqual(len(xml._NAMESPACES), xml._MAX_NAMESPACES)
        self.assertIn(f"urn:n:{xml._MAX_NAMESPACES * 2 + 4}", xml._NAMESPACES)

    def test_reserved_names_refused_by_expat(self) -> None:
        """What expat already refuses stays refused (not-well-formed): the serializer relies on it."""
        for text in ("<x xmlns:p=''/>", f"<x xmlns='{XML_NS}'/>", "<x xmlns:xml='urn:x'/>",
                     "<x xmlns:xmlns='urn:x'/>", "<x xmlns:p='http://www.w3.org/2000/xmlns/'/>",
                     "<p:x/>", "<x p:y='1'/>", "<x xmlns:p='u' xmlns:q='u' p:a='1' q:a='2'/>"):
            with self.subTest(text=text):
                self.assertFault("not-well-formed", parse_element, text.encode())
