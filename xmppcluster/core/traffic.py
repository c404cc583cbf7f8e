"""Stanzas this node's client sessions sent and received, per kind: plain integers, read at scrape time.

Counting is one dictionary increment on the path of each stanza (no lock, no label look-up); the metrics
listener (``xmppcluster/ops/metrics.py``) turns these totals into counters when it is scraped.
"""

from __future__ import annotations

from collections import Counter

#: The first byte after ``<`` of a stanza our serializer wrote, to its kind (``<message``, ``<presence``, ``<iq``).
_KIND_OF_INITIAL = {ord("m"): "message", ord("p"): "presence", ord("i"): "iq"}


class Traffic:
    """Totals since start: ``received[kind]`` from clients, ``sent[kind]`` delivered to clients."""

    __slots__ = ("received", "sent")

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()

    def sent_serialized(self, xml: bytes) -> None:
        """Count a stanza delivered as bytes by its start tag's first letter (``other`` if not a stanza)."""
        self.sent[_KIND_OF_INITIAL.get(xml[1] if len(xml) > 1 else 0, "other")] += 1
