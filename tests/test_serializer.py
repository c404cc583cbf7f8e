"""xmppcluster.core.serializer: what it writes for the usual stanzas, its escaping, what it refuses, and its
namespace bookkeeping. Correctness is judged by our parser reading the output back (tests/test_roundtrip.py
generates the trees), never by another serializer.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase
from twisted.words.xish import domish

from tests.support.xmltrees import CONTEXTS, canonical, round_trip
from xmppcluster.core import namespaces as ns
from xmppcluster.core import serializer, xml
from xmppcluster.core.serializer import serialize
from xmppcluster.core.xml import XML_NS, parse_element

TCP = (ns.CLIENT, {ns.STREAMS: "stream"}, ["stream"])

#: Stanzas as a client stream carries them: the fast pass writes them exactly so.
PLAIN = [
    "<message to='a@b/c' type='chat' id='1'><body>hi</body></message>",
    "<message xml:lang='de'><body xml:lang='en'>a &amp; b &lt; c &gt; d ' \"</body><thread>t</thread></message>",
    "<presence from='x@y' to='&quot;odd&apos;&amp;&lt;&gt;'/>",
    "<iq type='result' id='r'><query xmlns='jabber:iq:roster' ver='3'><item jid='b@c' name='B &amp; co' "
    "subscription='both'><group>G1</group><group/></item></query></iq>",
    "<message><x xmlns='jabber:x:data' type='form'><field var='a'><value>1</value></field></x>"
    "<body>back in jabber:client</body><delay xmlns='urn:xmpp:delay' stamp='2024'/></message>",
    "<message><body>mixed <b xmlns='urn:x'>bold</b> tail \U0001f600 \u00e9</body></message>",
]
#: Trees needing prefixes: the general pass.
PREFIXED = [
    "<stream:error xmlns:stream='http://etherx.jabber.org/streams'><conflict "
    "xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
    "<message xmlns='jabber:client' xmlns:e='urn:ext'><e:thing e:attr='v'>x</e:thing></message>",
    "<message xmlns='jabber:client'><x xmlns='urn:y' xmlns:z='urn:z' z:q='1'/></message>",
    "<xml:a xmlns:p='urn:p'><p:b p:c='1' xml:lang='en'/></xml:a>",
    "<m xmlns='jabber:client'><a xmlns:p='U1'/><b xmlns:p='U2'><c xmlns='U1' x='&#9;&#10;&#13;'>&#13;</c></b></m>",
]


def in_client_stream(text: str) -> domish.Element:
    """A stanza parsed as it arrives on a client stream (jabber:client is the default namespace)."""
    return parse_element(f"<message xmlns='{ns.CLIENT}'>{text}</message>".encode()).children[0]


class FastPassTests(TestCase):
    def test_plain_stanzas_written_as_they_came(self) -> None:
        for text in PLAIN:
            with self.subTest(text=text):
                self.assertEqual(serialize(in_client_stream(text), *TCP), text)

    def test_stream_features(self) -> None:
        features = domish.Element((ns.STREAMS, "features"))
        features.addElement(("urn:ietf:params:xml:ns:xmpp-tls", "starttls")).addElement("required")
        mechanisms = features.addElement(("urn:ietf:params:xml:ns:xmpp-sasl", "mechanisms"))
        mechanisms.addElement("mechanism", content="SCRAM-SHA-1")
        features.addElement((ns.STREAMS, "extra"))
        self.assertEqual(serialize(features, *TCP),
                         "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
                         "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-1</mechanism>"
                         "</mechanisms><stream:extra/></stream:features>")

    def test_general_pass_only_when_needed(self) -> None:
        calls = []
        original = serializer._General.__init__
        self.patch(serializer._General, "__init__", lambda *a: calls.append(1) or original(*a))
        for text in PLAIN:
            serialize(in_client_stream(text), *TCP)
        error = domish.Element((ns.STREAMS, "error"))
        error.addElement(("urn:ietf:params:xml:ns:xmpp-streams", "conflict"))
        serialize(error, *TCP)
        self.assertEqual(calls, [])  # stream:error on a client stream: the prefix is in scope
        self.assertEqual(serialize(error, "", {ns.STREAMS: "stream"}),  # WebSocket: declared on the element
                         "<stream:error xmlns:stream='http://etherx.jabber.org/streams'>"
                         "<conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>")
        self.assertEqual(len(calls), 1)


class EscapingTests(TestCase):
    def test_text(self) -> None:
        message = domish.Element((ns.CLIENT, "message"))
        message.addElement("body", content="<b>&amp;</b> ]]> 'q' \"q\" \r\n\ttab")
        self.assertEqual(serialize(message, *TCP),
                         "<message><body>&lt;b&gt;&amp;amp;&lt;/b&gt; ]]&gt; 'q' \"q\" &#13;\n\ttab</body></message>")

    def test_attribute_values(self) -> None:
        message = domish.Element((ns.CLIENT, "message"))
        message["id"] = "'/><message from='boss@example.com'>\t\n\r\"&"
        self.assertEqual(serialize(message, *TCP),
                         "<message id='&apos;/&gt;&lt;message from=&apos;boss@example.com&apos;&gt;&#9;&#10;&#13;"
                         "&quot;&amp;'/>")
        self.assertEqual(parse_element(serialize(message)).getAttribute("id"), message["id"])

    def test_every_example_reads_back_the_same_everywhere(self) -> None:
        for text in PLAIN + PREFIXED:
            element = parse_element(text.encode())
            for context in CONTEXTS:
                with self.subTest(text=text, context=context):
                    expected, read, data = round_trip(element, context)
                    self.assertEqual(read, expected, data)


class RefusalTests(TestCase):
    """Trees no XML can express: ValueError, never output."""

    def test_the_issue_namespace(self) -> None:
        message = domish.Element((ns.CLIENT, "message"))
        message.addElement(("urn:a'/><message\tfrom='boss@example.com'><body>forged</body></message><x\txmlns='z", "x"))
        for context in CONTEXTS:
            with self.subTest(context=context), self.assertRaises(ValueError):
                round_trip(message, context)

    def test_names(self) -> None:
        for name in ("", "a b", "a>b", "a:b", "1a", "message from='x'", "\U00010000"):
            with self.subTest(name=name):
                self.assertRaises(ValueError, serialize, domish.Element((ns.CLIENT, name)), *TCP)
                element = domish.Element((ns.CLIENT, "x"))
                element[name] = "v"
                self.assertRaises(ValueError, serialize, element, *TCP)
                element = domish.Element(("urn:a", "x"), localPrefixes={name: "urn:p"})
                self.assertRaises(ValueError, serialize, element)

    def test_xmlns_is_no_attribute(self) -> None:
        element = domish.Element((ns.CLIENT, "x"))
        element["xmlns"] = "urn:evil"
        self.assertRaises(ValueError, serialize, element, *TCP)
        element = domish.Element((ns.CLIENT, "x"))
        element[("http://www.w3.org/2000/xmlns/", "p")] = "urn:evil"
        self.assertRaises(ValueError, serialize, element, *TCP)

    def test_reserved_bindings(self) -> None:
        for declarations in ({"xml": "urn:x"}, {"p": XML_NS}, {"p": "http://www.w3.org/2000/xmlns/"}, {"p": ""},
                             {"xmlns": "urn:x"}):
            with self.subTest(declarations=declarations):
                element = domish.Element(("urn:a", "x"), localPrefixes=declarations)
                self.assertRaises(ValueError, serialize, element)

    def test_control_characters_in_values(self) -> None:
        element = domish.Element((ns.CLIENT, "x"))
        element["a"] = "bell\x07"
        self.assertRaises(ValueError, serialize, element, *TCP)


class NamespaceTests(TestCase):
    def test_sibling_declarations_stay_apart(self) -> None:
        """domish's toXml put <c xmlns='U1'/> in U2 here: a prefix one sibling bound leaked to the next."""
        element = parse_element(b"<m xmlns='jabber:client'><a xmlns:p='U1'/><b xmlns:p='U2'><c xmlns='U1'/></b></m>")
        for context in CONTEXTS:
            with self.subTest(context=context):
                expected, read, data = round_trip(element, context)
                self.assertEqual(read, expected, data)
        self.assertEqual(canonical(parse_element(serialize(element)))[3][1][3][0][0], "U1")

    def test_xml_namespace_only_with_its_prefix(self) -> None:
        element = domish.Element((XML_NS, "a"))
        element.addElement("b")
        self.assertEqual(serialize(element), "<xml:a><xml:b/></xml:a>")

    def test_caller_prefix_never_used_for_attributes(self) -> None:
        """BOSH declares xmlns:stream on <body/> only when it sees '<stream:' in a child."""
        element = domish.Element((ns.CLIENT, "message"))
        element[(ns.STREAMS, "a")] = "1"
        written = serialize(element, "http://jabber.org/protocol/httpbind", {ns.STREAMS: "stream"}, ["stream"])
        self.assertEqual(written, "<message xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
                                  "stream:a='1'/>")

    def test_name_caches_are_bounded(self) -> None:
        self.patch(serializer, "_NAMES", set())
        self.patch(serializer, "_ATTRIBUTE_NAMES", set())
        self.patch(serializer, "_DEFAULTS", {""})
        self.patch(xml, "_NAMESPACES", set())
        for n in range(serializer._MAX_CACHED * 2 + 3):
            element = domish.Element((f"urn:n{n}", f"e{n}"))
            element[f"a{n}"] = "v"
            serialize(element)
            for cache in (serializer._NAMES, serializer._ATTRIBUTE_NAMES, serializer._DEFAULTS, xml._NAMESPACES):
                self.assertLessEqual(len(cache), serializer._MAX_CACHED)
