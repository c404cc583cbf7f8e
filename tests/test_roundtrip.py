"""Round trips on generated hostile trees: what we write, our parser reads back as the same tree.

For every client transport (TCP, WebSocket, BOSH), for stored stanzas, and for every cluster frame.
Trees carry hostile strings in every element name, attribute name and value, namespace and text
(tests/support/xmltrees.py); a tree XML cannot express at all must be refused, never written.
"""

from __future__ import annotations

from hypothesis import given
from twisted.trial.unittest import TestCase

from tests.support.xmltrees import CONTEXTS, PROPERTY, round_trip, spoiled_trees, trees
from xmppcluster.serializer import serialize


class ClientSerializerRoundTrips(TestCase):
    @PROPERTY
    @given(trees())
    def test_every_transport(self, tree) -> None:
        """TCP (inside the stream header), WebSocket (self-contained), BOSH (inside ``<body/>``), stored."""
        for context in CONTEXTS:
            expected, read, data = round_trip(tree, context)
            self.assertEqual(read, expected, f"{context}: {data!r}")

    @PROPERTY
    @given(spoiled_trees())
    def test_inexpressible_trees_refused(self, tree) -> None:
        for context in CONTEXTS:
            with self.assertRaises(ValueError, msg=context):
                round_trip(tree, context)
        with self.assertRaises(ValueError):
            serialize(tree)
