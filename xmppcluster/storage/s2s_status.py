"""The ``s2s_status`` table: each node's federation streams, as ``xmppcluster s2s-status`` shows them."""

from __future__ import annotations

import json
import time
from typing import Any

from xmppcluster.storage.database import Database


class S2SStatusStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def report(self, node: str, streams: list[dict[str, Any]]) -> None:
        """Replace ``node``'s row with ``streams`` (JSON-serialisable dicts), stamped now."""
        now = time.time()
        encoded = json.dumps(streams, sort_keys=True)

        def upsert(cursor) -> None:
            cursor.execute("UPDATE s2s_status SET updated = ?, streams = ? WHERE node = ?", (now, encoded, node))
            if cursor.rowcount == 0:
                cursor.execute("INSERT INTO s2s_status (node, updated, streams) VALUES (?, ?, ?)",
                               (node, now, encoded))

        await self.db.interaction(upsert, idempotent=True)

    async def rows(self) -> list[tuple[str, float, list[dict[str, Any]]]]:
        """(node, when it reported, its streams) for every node that ever reported, by name."""
        found = await self.db.query("SELECT node, updated, streams FROM s2s_status ORDER BY node")
        return [(row[0], float(row[1]), json.loads(row[2] or "[]")) for row in found]
