"""The message of the day of each virtual host (XEP-0133), in the database so every node agrees."""

from __future__ import annotations

import time

from xmppcluster.storage.database import Cursor, Database


class MotdStore:
    """One text per domain; None when the domain has no message of the day."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, domain: str) -> str | None:
        rows = await self.db.query("SELECT text FROM motd WHERE domain = ?", (domain,))
        return rows[0][0] if rows else None

    async def set(self, domain: str, text: str | None) -> None:
        """Set the message of ``domain``, or delete it when ``text`` is None."""

        def txn(cursor: Cursor) -> None:
            if text is None:
                cursor.execute("DELETE FROM motd WHERE domain = ?", (domain,))
            else:
                cursor.execute("INSERT INTO motd (domain, text, updated_at) VALUES (?, ?, ?)"
                               " ON CONFLICT (domain) DO UPDATE SET text = excluded.text,"
                               " updated_at = excluded.updated_at", (domain, text, int(time.time())))

        await self.db.interaction(txn, idempotent=True)
