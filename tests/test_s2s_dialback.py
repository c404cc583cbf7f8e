"""XEP-0185 dialback keys: the XEP's own worked example, and what a verification accepts."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from xmppcluster.s2s.dialback import dialback_key, key_matches

SECRET = b"s3cr3tf0rd14lb4ck"
KEY = "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643"  # XEP-0185 section 3, step 3


class KeyTests(SynchronousTestCase):
    def test_the_xep_example(self) -> None:
        self.assertEqual(dialback_key(SECRET, "xmpp.example.com", "example.org", "D60000229F"), KEY)

    def test_every_input_changes_the_key(self) -> None:
        others = {dialback_key(b"other", "xmpp.example.com", "example.org", "D60000229F"),
                  dialback_key(SECRET, "example.org", "xmpp.example.com", "D60000229F"),
                  dialback_key(SECRET, "xmpp.example.com", "example.org", "D60000229G"),
                  dialback_key(SECRET, "xmpp.example.co", "mexample.org", "D60000229F")}
        self.assertNotIn(KEY, others)
        self.assertEqual(len(others), 4)

    def test_matches(self) -> None:
        self.assertTrue(key_matches(SECRET, "xmpp.example.com", "example.org", "D60000229F", f"\n  {KEY}\n"))
        self.assertFalse(key_matches(SECRET, "xmpp.example.com", "example.org", "D60000229F", KEY[:-1] + "4"))
        self.assertFalse(key_matches(SECRET, "xmpp.example.com", "example.org", "D60000229F", ""))
        self.assertFalse(key_matches(SECRET, "xmpp.example.com", "example.org", "D60000229F", "ключ"))
