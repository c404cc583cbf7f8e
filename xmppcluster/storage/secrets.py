"""Secrets every node of a cluster must share, kept in the shared database and created on first use."""

from __future__ import annotations

import os

from xmppcluster.storage.database import Database


async def shared_secret(db: Database, name: str, size: int = 32) -> bytes:
    """The secret called ``name``; the first node to ask creates it, every other node reads the same."""

    def get_or_create(cursor) -> bytes:
        cursor.execute("SELECT value FROM server_secrets WHERE name = ?", (name,))
        row = cursor.fetchone()
        if row is None:
            candidate = os.urandom(size)
            # Several nodes may start at once: whoever inserts first wins, the others read its value.
            cursor.execute("INSERT INTO server_secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                           (name, db.blob(candidate)))
            cursor.execute("SELECT value FROM server_secrets WHERE name = ?", (name,))
            row = cursor.fetchone()
        return bytes(row[0])

    return await db.interaction(get_or_create, idempotent=True)
