"""Membership: the ``cluster_nodes`` table (node heartbeats for discovery and ``xmppcluster cluster-status``)
and :class:`Membership`, who this node's peers are."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xmppcluster.cluster import protocol as wire
from xmppcluster.config import ClusterNode
from xmppcluster.storage.database import Database

if TYPE_CHECKING:
    from xmppcluster.config import Config


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


class Membership:
    """Who this node's peers are, and this node's own row.

    Static (``--cluster-nodes``): the list, with its secrets. Discovery (no list): the live rows of the
    ``cluster_nodes`` table (each with a per-start secret), refreshed every heartbeat. ``report()`` gives
    what this node's row says: its local session count and, per linked peer, how many of that peer's sessions
    this node knows."""

    def __init__(self, name: str, config: Config, *, failure_timeout: float,
                 report: Callable[[], tuple[int, dict[str, int]]]) -> None:
        self.name = name
        self.config = config
        self.failure_timeout = failure_timeout
        self._report = report
        self.static = bool(config.cluster_nodes)
        self.members: dict[str, ClusterNode] = {n.name: n for n in config.cluster_nodes}
        me = self.members.get(name)
        self.secret = me.secret if me is not None and me.secret else None
        self.started_at = time.time()
        self.store: MembershipStore | None = None

    async def join(self, db: Database) -> None:
        """Write this node's row (a fresh secret in discovery mode) and, in discovery mode, read the others."""
        self.store = MembershipStore(db)
        if self.secret is None and not self.static:
            self.secret = secrets.token_hex(32)
        await self.refresh()

    async def refresh(self) -> None:
        """Heartbeat this node's row; in discovery mode, learn the nodes whose rows are live."""
        await self.publish()
        if not self.static:
            rows = await self.store.live(max_age=max(3 * self.failure_timeout, 15.0))
            for row in rows:
                if row.name != self.name:
                    self.members[row.name] = ClusterNode(row.name, row.secret, row.port or 5277, row.address)

    async def publish(self) -> None:
        """Heartbeat this node's row in the cluster_nodes table (discovery and cluster-status)."""
        me = self.members.get(self.name)
        sessions, links = self._report()
        address = me.address if me is not None else self._listen_address()
        await self.store.heartbeat(self.name, address=address, port=self._cluster_port(),
                                   secret=None if self.static else self.secret, started_at=self.started_at,
                                   sessions=sessions, links=links)

    async def leave(self) -> None:
        if self.store is not None:
            await self.store.leave(self.name)

    def peers(self) -> list[str]:
        return [name for name in self.members if name != self.name]

    def knows(self, name: str) -> bool:
        return name in self.members and name != self.name

    def should_accept(self, peer: str) -> bool:
        """The node whose name sorts first dials; the other accepts (a pair never has two links)."""
        return peer < self.name

    def key_for(self, peer: str) -> bytes:
        return wire.link_key((self.name, self.secret), (peer, self.members[peer].secret))

    def _listen_address(self) -> str | None:
        """The cl-comp interface peers should dial when it is a specific address (discovery mode)."""
        for listener in self.config.listeners("cl-comp"):
            for interface in listener.ifc:
                if interface != "*":
                    return interface
        return None

    def _cluster_port(self) -> int:
        ports = [listener.port for listener in self.config.listeners("cl-comp")]
        return ports[0] if ports else 5277
