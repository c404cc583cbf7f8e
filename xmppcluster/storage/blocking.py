"""Blocklists (XEP-0191): the prepared JIDs each account blocks."""

from __future__ import annotations

from collections.abc import Iterable

from xmppcluster.storage.database import Cursor, Database
from xmppcluster.storage.errors import NoSuchAccount, StorageError
from xmppcluster.storage.offline import lock_account


class BlocklistFull(StorageError):
    """Blocking these JIDs would exceed the per-account limit."""


class BlockingStore:
    """Blocklists of every hosted account; JIDs arrive already prepared (see :mod:`xmppcluster.core.jid`)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, user: str, domain: str) -> list[str]:
        """The blocked JIDs of ``user@domain``, sorted."""
        rows = await self.db.query("SELECT jid FROM blocklist WHERE domain = ? AND username = ?", (domain, user))
        return sorted(row[0] for row in rows)

    async def block(self, user: str, domain: str, jids: Iterable[str], *, limit: int) -> list[str]:
        """Add ``jids``; returns those that were not blocked yet (in the given order).

        Raises :class:`BlocklistFull` (nothing added) beyond ``limit`` entries, :class:`NoSuchAccount`.
        """
        wanted = list(dict.fromkeys(jids))

        def txn(cursor: Cursor) -> list[str]:
            if not lock_account(cursor, user, domain):
                raise NoSuchAccount(f"no such user {user}@{domain}")
            present = {row[0] for row in cursor.execute(
                "SELECT jid FROM blocklist WHERE domain = ? AND username = ?", (domain, user)).fetchall()}
            added = [jid for jid in wanted if jid not in present]
            if len(present) + len(added) > limit:
                raise BlocklistFull(f"blocklist of {user}@{domain} would exceed {limit} items")
            cursor.executemany(
                "INSERT INTO blocklist (domain, username, jid) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [(domain, user, jid) for jid in added])
            return added

        return await self.db.interaction(txn, idempotent=True)

    async def unblock(self, user: str, domain: str, jids: Iterable[str]) -> list[str]:
        """Remove ``jids``; returns those that were blocked."""
        wanted = list(dict.fromkeys(jids))

        def txn(cursor: Cursor) -> list[str]:
            removed = []
            for jid in wanted:
                cursor.execute("DELETE FROM blocklist WHERE domain = ? AND username = ? AND jid = ?",
                               (domain, user, jid))
                if cursor.rowcount > 0:
                    removed.append(jid)
            return removed

        return await self.db.interaction(txn, idempotent=True)

    async def unblock_all(self, user: str, domain: str) -> list[str]:
        """Empty the blocklist; returns what it held, sorted."""

        def txn(cursor: Cursor) -> list[str]:
            rows = cursor.execute("SELECT jid FROM blocklist WHERE domain = ? AND username = ?",
                                  (domain, user)).fetchall()
            cursor.execute("DELETE FROM blocklist WHERE domain = ? AND username = ?", (domain, user))
            return sorted(row[0] for row in rows)

        return await self.db.interaction(txn, idempotent=True)
