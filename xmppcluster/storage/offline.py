"""Offline messages (XEP-0160): a per-account, ordered, bounded queue of serialized stanzas.

Delivery is claim → hand over → delete: :meth:`OfflineStore.claim` marks the oldest rows with a token so
no other delivery (another resource, another cluster node) takes them; :meth:`OfflineStore.delete` removes
what was handed to the transport and :meth:`OfflineStore.release` gives back the rest. A claim older than
``stale_after`` seconds (a node died mid-delivery) is taken over: a message may then arrive twice, never
zero times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from xmppcluster.storage.database import POSTGRESQL, Cursor, Database
from xmppcluster.storage.errors import NoSuchAccount, StorageError


class OfflineQueueFull(StorageError):
    """The account already holds the maximum number (or bytes) of offline messages."""


@dataclass(frozen=True)
class OfflineMessage:
    seq: int
    stored_at: int
    sender: str
    stanza: bytes


def lock_account(cursor: Cursor, user: str, domain: str) -> bool:
    """Lock the account row until the transaction ends (serialises writers per account); False if absent."""
    sql = "SELECT 1 FROM accounts WHERE domain = ? AND username = ?"
    if cursor.dialect == POSTGRESQL:
        sql += " FOR NO KEY UPDATE"
    return cursor.execute(sql, (domain, user)).fetchone() is not None


class OfflineStore:
    """Offline message queues of every hosted account."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def store(self, user: str, domain: str, sender: str, stanza: bytes, *, limit: int, now: int,
                    max_bytes: int = 0) -> int:
        """Append ``stanza`` to the queue of ``user@domain``; returns its sequence number.

        Raises :class:`NoSuchAccount` for an unknown account and :class:`OfflineQueueFull` when the queue
        already holds ``limit`` messages, or when ``stanza`` would take it past ``max_bytes`` (0: no limit).
        """
        blob = self.db.blob(stanza)

        def txn(cursor: Cursor) -> int:
            if not lock_account(cursor, user, domain):
                raise NoSuchAccount(f"no such user {user}@{domain}")
            count, top, size = cursor.execute(
                "SELECT COUNT(*), COALESCE(MAX(seq), 0), COALESCE(SUM(LENGTH(stanza)), 0) FROM offline_messages"
                " WHERE domain = ? AND username = ?", (domain, user)).fetchone()
            if int(count) >= limit:
                raise OfflineQueueFull(f"offline queue of {user}@{domain} is full ({limit})")
            if max_bytes and int(size) + len(stanza) > max_bytes:
                raise OfflineQueueFull(f"offline queue of {user}@{domain} is full ({max_bytes} bytes)")
            seq = int(top) + 1
            cursor.execute(
                "INSERT INTO offline_messages (domain, username, seq, stored_at, sender, stanza)"
                " VALUES (?, ?, ?, ?, ?, ?)", (domain, user, seq, now, sender, blob))
            return seq

        return await self.db.interaction(txn)

    async def claim(self, user: str, domain: str, token: str, *, now: int, stale_after: int = 300,
                    batch: int = 100) -> list[OfflineMessage]:
        """Claim (and return, oldest first) up to ``batch`` unclaimed messages of ``user@domain``."""
        # Most logins have nothing waiting: a read says so without taking the (SQLite: single) write lock.
        if not await self.db.query(
                "SELECT 1 FROM offline_messages WHERE domain = ? AND username = ?"
                " AND (claim IS NULL OR claimed_at < ?) LIMIT 1", (domain, user, now - stale_after)):
            return []

        def txn(cursor: Cursor) -> list[OfflineMessage]:
            lock_account(cursor, user, domain)
            rows = cursor.execute(
                "SELECT seq, stored_at, sender, stanza FROM offline_messages"
                " WHERE domain = ? AND username = ? AND (claim IS NULL OR claimed_at < ?)"
                " ORDER BY seq LIMIT ?", (domain, user, now - stale_after, batch)).fetchall()
            if rows:
                cursor.executemany(
                    "UPDATE offline_messages SET claim = ?, claimed_at = ?"
                    " WHERE domain = ? AND username = ? AND seq = ?",
                    [(token, now, domain, user, row[0]) for row in rows])
            return [OfflineMessage(int(seq), int(at), sender, bytes(data)) for seq, at, sender, data in rows]

        return await self.db.interaction(txn)

    async def delete(self, user: str, domain: str, token: str, seqs: Sequence[int]) -> int:
        """Delete the messages ``seqs`` still claimed with ``token``; returns how many were deleted."""
        if not seqs:
            return 0

        def txn(cursor: Cursor) -> int:
            deleted = 0
            for start in range(0, len(seqs), 500):
                chunk = list(seqs[start:start + 500])
                marks = ", ".join("?" * len(chunk))
                cursor.execute(
                    "DELETE FROM offline_messages WHERE domain = ? AND username = ? AND claim = ?"
                    f" AND seq IN ({marks})",
                    (domain, user, token, *chunk))
                deleted += max(cursor.rowcount, 0)
            return deleted

        return await self.db.interaction(txn, idempotent=True)

    async def release(self, user: str, domain: str, token: str) -> int:
        """Give back every message still claimed with ``token``."""
        return await self.db.execute(
            "UPDATE offline_messages SET claim = NULL, claimed_at = NULL"
            " WHERE domain = ? AND username = ? AND claim = ?",
            (domain, user, token), idempotent=True)

    async def count(self, user: str, domain: str) -> int:
        rows = await self.db.query(
            "SELECT COUNT(*) FROM offline_messages WHERE domain = ? AND username = ?", (domain, user))
        return int(rows[0][0])

    async def totals(self) -> tuple[int, int, int]:
        """(messages stored, accounts with messages, the most stored for one account), all domains (metrics)."""
        rows = await self.db.query(
            "SELECT COALESCE(SUM(n), 0), COUNT(*), COALESCE(MAX(n), 0) FROM"
            " (SELECT COUNT(*) AS n FROM offline_messages GROUP BY domain, username) AS queues")
        return int(rows[0][0]), int(rows[0][1]), int(rows[0][2])

    async def list(self, user: str, domain: str) -> list[OfflineMessage]:
        """Every stored message of ``user@domain``, oldest first, claimed or not (administration, tests)."""
        rows = await self.db.query(
            "SELECT seq, stored_at, sender, stanza FROM offline_messages WHERE domain = ? AND username = ?"
            " ORDER BY seq", (domain, user))
        return [OfflineMessage(int(seq), int(at), sender, bytes(data)) for seq, at, sender, data in rows]

    async def purge(self, user: str, domain: str) -> int:
        """Delete every offline message of ``user@domain``."""
        return await self.db.execute(
            "DELETE FROM offline_messages WHERE domain = ? AND username = ?", (domain, user), idempotent=True)
