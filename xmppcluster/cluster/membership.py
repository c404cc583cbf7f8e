"""The ``cluster_nodes`` table: node heartbeats for discovery and ``xmppcluster cluster-status``."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from xmppcluster.storage.database import Database


@dataclass(frozen=True)
class NodeRow:
    name: str
    address: str | None
    port: int | None
    secret: str | None
    started_at: float
    last_seen: float
    sessions: int
    links: dict[str, int]


class MembershipStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def heartbeat(self, name: str, *, address: str | None, port: int, secret: str | None,
                        started_at: float, sessions: int, links: dict[str, int]) -> None:
        now = time.time()
        encoded = json.dumps(links, sort_keys=True)

        def upsert(cursor) -> None:
            cursor.execute("UPDATE cluster_nodes SET address = ?, port = ?, secret = ?, started_at = ?, "
                           "last_seen = ?, sessions = ?, links = ? WHERE name = ?",
                           (address, port, secret, started_at, now, sessions, encoded, name))
            if cursor.rowcount == 0:
                cursor.execute("INSERT INTO cluster_nodes (name, address, port, secret, started_at, last_seen, "
                               "sessions, links) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               (name, address, port, secret, started_at, now, sessions, encoded))

        await self.db.interaction(upsert, idempotent=True)

    async def rows(self) -> list[NodeRow]:
        found = await self.db.query("SELECT name, address, port, secret, started_at, last_seen, sessions, links "
                                    "FROM cluster_nodes ORDER BY name")
        return [NodeRow(r[0], r[1], r[2], r[3], float(r[4]), float(r[5]), int(r[6]), json.loads(r[7] or "{}"))
                for r in found]

    async def live(self, max_age: float) -> list[NodeRow]:
        horizon = time.time() - max_age
        return [row for row in await self.rows() if row.last_seen >= horizon]

    async def leave(self, name: str) -> None:
        await self.db.execute("DELETE FROM cluster_nodes WHERE name = ?", (name,), idempotent=True)
