"""xmppcluster.serializer: the fast path writes exactly what domish's ``toXml`` writes, for every tree."""

from __future__ import annotations

import random

from twisted.trial.unittest import TestCase
from twisted.words.xish import domish

from xmppcluster import namespaces as ns
from xmppcluster import serializer
from xmppcluster.serializer import serialize
from xmppcluster.xml import parse_element

#: (default namespace, prefixes, prefixes in scope) as the transports call it.
CONTEXTS = [
    ("", None, None),
    (ns.CLIENT, {ns.STREAMS: "stream"}, ["stream"]),  # TCP
    ("", {ns.STREAMS: "stream"}, None),  # WebSocket
    ("http://jabber.org/protocol/httpbind", {ns.STREAMS: "stream"}, ["stream"]),  # BOSH
]

STANZAS = [
    "<message xmlns='jabber:client' to='a@b/c' type='chat' id='1'><body>hi</body></message>",
    "<message xmlns='jabber:client' xml:lang='de'><body xml:lang='en'>a &amp; b &lt; c &gt; d ' \"</body>"
    "<thread>t</thread></message>",
    "<presence xmlns='jabber:client' from='x@y' to='&quot;odd&apos;&amp;&lt;&gt;'/>",
    "<iq xmlns='jabber:client' type='result' id='r'><query xmlns='jabber:iq:roster' ver='3'>"
    "<item jid='b@c' name='B &amp; co' subscription='both'><group>G1</group><group/></item></query></iq>",
    "<message xmlns='jabber:client'><x xmlns='jabber:x:data' type='form'><field var='a'><value>1</value>"
    "</field></x><body>back in jabber:client</body><delay xmlns='urn:xmpp:delay' stamp='2024'/></message>",
    "<iq xmlns='jabber:client' type='set'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource>"
    "</bind></iq>",
    "<message xmlns='jabber:client'><body>mixed <b xmlns='urn:x'>bold</b> tail &#x1F600; é</body></message>",
    # prefixed: domish writes these (the fast path declines)
    "<stream:error xmlns:stream='http://etherx.jabber.org/streams'><conflict "
    "xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
    "<message xmlns='jabber:client' xmlns:e='urn:ext'><e:thing e:attr='v'>x</e:thing></message>",
    "<message xmlns='jabber:client'><x xmlns='urn:y' xmlns:z='urn:z' z:q='1'/></message>",
]


class SerializerTests(TestCase):
    def assertSame(self, element: domish.Element) -> None:
        for default, prefixes, in_scope in CONTEXTS:
            expected = element.toXml(prefixes=dict(prefixes) if prefixes else None,
                                     prefixesInScope=list(in_scope) if in_scope else None, defaultUri=default)
            self.assertEqual(serialize(element, default, prefixes, in_scope), expected)

    def test_parsed_stanzas(self) -> None:
        for text in STANZAS:
            self.assertSame(parse_element(text.encode()))

    def test_stream_features(self) -> None:
        features = domish.Element((ns.STREAMS, "features"))
        features.addElement(("urn:ietf:params:xml:ns:xmpp-tls", "starttls")).addElement("required")
        mechanisms = features.addElement(("urn:ietf:params:xml:ns:xmpp-sasl", "mechanisms"))
        mechanisms.addElement("mechanism", content="SCRAM-SHA-1")
        features.addElement((ns.STREAMS, "extra"))
        self.assertSame(features)
        self.assertEqual(serialize(features, ns.CLIENT, {ns.STREAMS: "stream"}, ["stream"]),
                         "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
                         "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-1</mechanism>"
                         "</mechanisms><stream:extra/></stream:features>")

    def test_built_with_domish(self) -> None:
        message = domish.Element((ns.CLIENT, "message"))
        message["to"] = "a@b"
        message.addElement("body", content="x < y")
        event = message.addElement(("http://jabber.org/protocol/pubsub#event", "event"))
        event.addElement("items")["node"] = "n"
        message.addChild(domish.SerializedXML("<raw xmlns='urn:raw'/>"))
        message.addElement((ns.STREAMS, "features"))  # prefixed: falls back
        self.assertSame(message)
        self.assertSame(message.children[0])

    def test_fast_path_is_taken_for_plain_stanzas(self) -> None:
        """Plain stanzas never reach domish (which would make the fast path pointless)."""
        calls = []
        original = domish.Element.toXml
        self.patch(domish.Element, "toXml", lambda *a, **k: calls.append(1) or original(*a, **k))
        for text in STANZAS[:7]:
            serialize(parse_element(text.encode()), ns.CLIENT, {ns.STREAMS: "stream"}, ["stream"])
        self.assertEqual(calls, [])
        error = domish.Element((ns.STREAMS, "error"))
        error.addElement(("urn:ietf:params:xml:ns:xmpp-streams", "conflict"))
        serialize(error, ns.CLIENT, {ns.STREAMS: "stream"}, ["stream"])
        self.assertEqual(calls, [])  # stream:error on a client stream: the prefix is in scope
        serialize(error, "", {ns.STREAMS: "stream"})
        self.assertEqual(calls, [1])  # WebSocket: the prefix must be declared, domish does it
        serialize(parse_element(STANZAS[7].encode()), ns.CLIENT, {ns.STREAMS: "stream"}, ["stream"])
        self.assertEqual(calls, [1, 1])  # declares its own prefix

    def test_random_trees(self) -> None:
        """Random trees of namespaces, attributes (plain and xml:lang), text with every special character."""
        rng = random.Random(7227)
        uris = [ns.CLIENT, "urn:a", "urn:b", ns.STREAMS, None]
        texts = ["", "plain", "a&b", "<tag>", "q'\"", "]]>", "é€😀"]

        def build(depth: int, parent_uri: str) -> domish.Element:
            uri = rng.choice(uris) or parent_uri
            element = domish.Element((uri, rng.choice(["a", "b", "message", "x"])),
                                     defaultUri=rng.choice([uri, uri, uri, None, rng.choice(uris[:4])]))
            for i in range(rng.randrange(3)):
                element[f"k{i}"] = rng.choice(texts)
            if rng.random() < 0.3:
                element[(serializer.XML_NS, "lang")] = rng.choice(["en", "d'e"])
            for _ in range(rng.randrange(4) if depth < 4 else 0):
                if rng.random() < 0.4:
                    element.addContent(rng.choice(texts))
                else:
                    element.addChild(build(depth + 1, uri))
            return element

        for _ in range(500):
            self.assertSame(build(0, ns.CLIENT))
