"""One way to write XML by hand (core.serializer: quote, start_tag, tag), to copy a stanza (core.stanza.copy) and
to parse bytes the server wrote itself (core.xml.reparse)."""

from __future__ import annotations

import pathlib
import re

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from xmppcluster.core import stanza as stanzas
from xmppcluster.core.serializer import quote, serialize, start_tag, tag
from xmppcluster.core.xml import REPARSE_MAX_DEPTH, StreamFault, parse_element, reparse

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "xmppcluster"

#: Attribute values XML can carry (no C0 control but TAB, LF, CR; no surrogates).
values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="".join(
    chr(c) for c in range(32) if c not in (9, 10, 13))))


class TagTests(TestCase):
    @given(values, values)
    def test_values_read_back_as_written(self, jid: str, condition: str) -> None:
        element = parse_element(tag("kick", {"jid": jid, "condition": condition}))
        self.assertEqual((element.name, element["jid"], element["condition"]), ("kick", jid, condition))

    def test_content_and_start_tag(self) -> None:
        inner = tag("directed", {"to": "a'b\"c<d>&e"})
        self.assertEqual(tag("bound", {"jid": "u@h/r", "stamp": None, "prio": -1}, inner),
                         "<bound jid='u@h/r' prio='-1'><directed to='a&apos;b&quot;c&lt;d&gt;&amp;e'/></bound>")
        self.assertEqual(tag("event", {"seq": 3}, ""), "<event seq='3'></event>")
        self.assertEqual(start_tag("stream:stream", {"xmlns": "jabber:client", "xml:lang": "en"}),
                         "<stream:stream xmlns='jabber:client' xml:lang='en'>")
        self.assertEqual(quote("\t\n\r"), "'&#9;&#10;&#13;'")

    def test_what_cannot_be_written_is_refused(self) -> None:
        for bad in ("a b", "<x", "x'", "", "a:b:c", "1x"):
            self.assertRaises(ValueError, tag, bad)
            self.assertRaises(ValueError, tag, "x", {bad: "v"})
        self.assertRaises(ValueError, tag, "x", {"a": "\x00"})

    def test_nothing_writes_xml_with_quoteattr(self) -> None:
        """Hand-written XML goes through core.serializer."""
        users = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                       if "quoteattr" in path.read_text() and path.name != "serializer.py")
        self.assertEqual(users, [])


class CopyTests(TestCase):
    def test_readdressed_copy_leaves_the_original(self) -> None:
        original = parse_element("<presence xmlns='jabber:client' from='a@h/r' to='b@h' id='1'><show>away</show>"
                                 "</presence>")
        before = serialize(original)
        copied = stanzas.copy(original, frm="a@h/r2", to=None, type="unavailable")
        self.assertEqual(serialize(original), before)
        self.assertEqual(dict(copied.attributes), {"from": "a@h/r2", "id": "1", "type": "unavailable"})
        self.assertEqual([c.name for c in copied.elements()], ["show"])


class ReparseTests(TestCase):
    def test_what_the_server_wrote_parses_whatever_its_element_count(self) -> None:
        many = b"<message xmlns='jabber:client'>" + b"<x/>" * 300_000 + b"</message>"
        self.assertEqual(len(list(reparse(many).elements())), 300_000)
        self.assertEqual(reparse("<iq xmlns='jabber:client' type='get'/>").name, "iq")

    def test_limits(self) -> None:
        deep = b"<a>" * (REPARSE_MAX_DEPTH + 1) + b"</a>" * (REPARSE_MAX_DEPTH + 1)
        self.assertRaises(StreamFault, reparse, deep)
        self.assertRaises(StreamFault, reparse, b"<a><b/><c/></a>", max_elements=2)
        self.assertRaises(StreamFault, reparse, b"<!DOCTYPE a><a/>")
        self.assertRaises(StreamFault, reparse, b"<a/><b/>")

    def test_one_reparse(self) -> None:
        """Trusted bytes are parsed by reparse only: no parse_element sized by its own input elsewhere."""
        ad_hoc = re.compile(r"parse_element\([^)]*max_bytes=len\(")
        users = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                       if path.name != "xml.py" and ad_hoc.search(path.read_text()))
        self.assertEqual(users, [])
