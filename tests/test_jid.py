"""Tests for xmppcluster.core.jid: preparation, strict checks, the bounded cache."""

from __future__ import annotations

from twisted.trial import unittest
from twisted.words.protocols.jabber import xmpp_stringprep
from twisted.words.protocols.jabber.jid import JID

from xmppcluster.core import jid as jidmod
from xmppcluster.core.jid import InvalidJID, JIDCache, bare_jid, nameprep, nodeprep, parse_jid, resourceprep


class ParseTests(unittest.TestCase):
    def test_parts(self) -> None:
        j = parse_jid("Juliet@Example.COM/Balcony")
        self.assertIsInstance(j, JID)
        self.assertEqual((j.user, j.host, j.resource), ("juliet", "example.com", "Balcony"))
        self.assertEqual(parse_jid("example.com").full(), "example.com")
        self.assertEqual(parse_jid("example.com/a@b/c").resource, "a@b/c")
        self.assertEqual(parse_jid("example.com/with space").resource, "with space")

    def test_unicode(self) -> None:
        j = parse_jid("\u041f\u0430\u0412\u0435\u043b@\u041f\u0420\u0418\u041c\u0415\u0420.\u0440\u0444/x")
        self.assertEqual(
            j.userhost(), "\u043f\u0430\u0432\u0435\u043b@\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444"
        )
        self.assertEqual(parse_jid("user\u200b@example.com").user, "user")

    def test_equal_to_twisted(self) -> None:
        for text in ("Romeo@Example.net/Orchard", "\u00c9lise@caf\u00e9.example/\u2160", "example.com/R"):
            self.assertEqual(parse_jid(text), JID(text))

    def test_domain_forms(self) -> None:
        self.assertEqual(parse_jid("a@example.com.").host, "example.com")
        self.assertEqual(parse_jid("a@192.0.2.1").host, "192.0.2.1")
        self.assertEqual(parse_jid("a@[2001:DB8:0::1]/r").host, "[2001:db8::1]")

    def test_invalid(self) -> None:
        for text in (
            "",
            "@example.com",
            "user@",
            "user@/res",
            "example.com/",
            "user@example.com/",
            "/res",
            "a@b@example.com",
            "a b@example.com",
            "a\x00@example.com",
            "example..com",
            ".example.com",
            "example.com..",
            "exa_mple.com",
            "-example.com",
            "example-.com",
            "[::1",
            "[zz::1]",
            "[fe80::1%eth0]",
            "a@example.com/\x07",
            "\u0627a@example.com",  # RTL and LTR characters mixed (bidi rule)
        ):
            self.assertRaises(InvalidJID, parse_jid, text)

    def test_not_text(self) -> None:
        self.assertRaises(InvalidJID, parse_jid, b"a@example.com")
        self.assertRaises(InvalidJID, parse_jid, ["a@example.com"])
        self.assertRaises(InvalidJID, parse_jid, None)

    def test_length_limits(self) -> None:
        ok = "a" * 1023
        self.assertEqual(parse_jid(f"{ok}@example.com").user, ok)
        self.assertEqual(parse_jid(f"example.com/{ok}").resource, ok)
        self.assertRaises(InvalidJID, parse_jid, "a" * 1024 + "@example.com")
        self.assertRaises(InvalidJID, parse_jid, "example.com/" + "r" * 1024)
        # bytes, not characters: 512 two-byte characters are 1024 bytes
        self.assertEqual(len(parse_jid("\u00e9" * 511 + "@example.com").user), 511)
        self.assertRaises(InvalidJID, parse_jid, "\u00e9" * 512 + "@example.com")
        self.assertRaises(InvalidJID, parse_jid, "example.com/" + "\u00e9" * 512)
        # domain: labels up to 63 bytes, the whole domain up to 1023 bytes
        self.assertEqual(parse_jid("a" * 63 + ".example").host, "a" * 63 + ".example")
        self.assertRaises(InvalidJID, parse_jid, "a" * 64 + ".example")
        self.assertRaises(InvalidJID, parse_jid, "\u00e9" * 60 + ".example")  # too long once punycoded
        domain = ".".join(["a" * 63] * 16)[:1023]
        self.assertEqual(parse_jid(domain).host, domain)
        self.assertRaises(InvalidJID, parse_jid, ".".join(["a" * 63] * 16) + ".b")
        self.assertRaises(InvalidJID, parse_jid, "x" * 10_000)

    def test_prep_functions(self) -> None:
        self.assertEqual(nodeprep("Juliet"), "juliet")
        self.assertEqual(resourceprep("Balcony "), "Balcony ")
        self.assertEqual(nameprep("EXAMPLE.com."), "example.com")
        for f in (nodeprep, resourceprep, nameprep):
            self.assertRaises(InvalidJID, f, "")
            self.assertRaises(InvalidJID, f, "x" * 1024)
        self.assertRaises(InvalidJID, nodeprep, "a:b")
        self.assertRaises(InvalidJID, resourceprep, "a\u2028")
        self.assertRaises(InvalidJID, nameprep, "a/b")

    def test_ascii_fast_path_matches_stringprep(self) -> None:
        """Every ASCII character gets the same treatment as Twisted's stringprep profiles."""
        profiles = [
            (nodeprep, xmpp_stringprep.nodeprep.prepare),
            (resourceprep, xmpp_stringprep.resourceprep.prepare),
            (nameprep, xmpp_stringprep.nameprep.prepare),
        ]
        for ours, theirs in profiles:
            for code in range(128):
                text = f"a{chr(code)}b"
                try:
                    expected = theirs(text)
                except UnicodeError:
                    expected = None
                if ours is nameprep and code == ord("."):
                    expected = "a.b"
                try:
                    got = ours(text)
                except InvalidJID:
                    got = None
                self.assertEqual(got, expected, f"{ours.__name__}({text!r})")

    def test_bare_jid(self) -> None:
        full = parse_jid("a@example.com/r")
        bare = bare_jid(full)
        self.assertEqual(bare.full(), "a@example.com")
        self.assertIs(bare_jid(bare), bare)
        self.assertIs(bare, parse_jid("a@example.com"))


class CacheTests(unittest.TestCase):
    def setUp(self) -> None:
        jidmod.cache.clear()
        self.addCleanup(jidmod.cache.clear)

    def test_hit_returns_same_object(self) -> None:
        self.assertIs(parse_jid("a@example.com/r"), parse_jid("a@example.com/r"))

    def test_invalid_not_cached(self) -> None:
        self.assertRaises(InvalidJID, parse_jid, "@example.com")
        self.assertEqual(len(jidmod.cache), 0)

    def test_bounded(self) -> None:
        bound = jidmod.cache.maxsize
        self.assertEqual(bound, 65536)
        for i in range(100_000):
            parse_jid(f"user{i}@example.com/r")
        self.assertEqual(len(jidmod.cache), bound)

    def test_least_recently_used_evicted(self) -> None:
        cache = JIDCache(maxsize=3)
        first = cache.parse("a@x")
        cache.parse("b@x")
        cache.parse("c@x")
        cache.parse("a@x")  # now the most recent
        cache.parse("d@x")  # evicts b
        self.assertEqual(len(cache), 3)
        self.assertIs(cache.parse("a@x"), first)
        self.assertEqual(list(cache._entries), ["c@x", "d@x", "a@x"])

    def test_bounded_in_characters(self) -> None:
        cache = JIDCache(maxsize=1000, max_chars=10_000)
        for i in range(100):
            cache.parse(f"{i:03d}{'u' * 997}@example.com")
        self.assertLessEqual(sum(map(len, cache._entries)), 10_000)
        self.assertGreater(len(cache), 0)
