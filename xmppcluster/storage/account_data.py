"""Small per-account stores of the base modules: vCard, private XML and last logout.

XML arrives and leaves as serialized text (the modules parse it with the hardened parser). Every row
references ``accounts``, so writing for an account that does not exist raises :class:`NoSuchAccount`
and deleting an account deletes its data.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred

from xmppcluster.storage.database import Cursor, Database
from xmppcluster.storage.errors import NoSuchAccount, StorageError


class QuotaExceeded(StorageError):
    """The write would take the account over its storage quota."""


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


class VCardStore:
    """One vcard-temp document per account."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, user: str, domain: str) -> str | None:
        rows = await self.db.query("SELECT vcard FROM vcards WHERE domain = ? AND username = ?", (domain, user))
        return rows[0][0] if rows else None

    async def set(self, user: str, domain: str, vcard: str | None) -> None:
        """Store ``vcard`` (serialized ``<vCard/>``), or delete it when None."""

        def txn(cursor: Cursor) -> None:
            if vcard is None:
                cursor.execute("DELETE FROM vcards WHERE domain = ? AND username = ?", (domain, user))
            else:
                cursor.execute("INSERT INTO vcards (domain, username, vcard, updated_at) VALUES (?, ?, ?, ?)"
                               " ON CONFLICT (domain, username)"
                               " DO UPDATE SET vcard = excluded.vcard, updated_at = excluded.updated_at",
                               (domain, user, vcard, int(time.time())))

        try:
            await self.db.interaction(txn, idempotent=True)
        except self.db.IntegrityError:
            raise NoSuchAccount(f"no such user {user}@{domain}") from None


class PrivateStore:
    """XEP-0049 private XML: per account, one text per namespace, under a total-size quota."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, user: str, domain: str, namespace: str) -> str | None:
        rows = await self.db.query(
            "SELECT data FROM private_storage WHERE domain = ? AND username = ? AND namespace = ?",
            (domain, user, namespace))
        return rows[0][0] if rows else None

    async def set(self, user: str, domain: str, items: dict[str, str], max_bytes: int) -> None:
        """Replace the data of each namespace in ``items``; :class:`QuotaExceeded` past ``max_bytes`` in all."""

        def txn(cursor: Cursor) -> None:
            rows = cursor.execute("SELECT namespace, data FROM private_storage WHERE domain = ? AND username = ?",
                                  (domain, user)).fetchall()
            total = sum(_size(data) for namespace, data in rows if namespace not in items)
            total += sum(_size(data) for data in items.values())
            if total > max_bytes:
                raise QuotaExceeded(f"private storage of {user}@{domain} would exceed {max_bytes} bytes")
            for namespace, data in items.items():
                cursor.execute("INSERT INTO private_storage (domain, username, namespace, data) VALUES (?, ?, ?, ?)"
                               " ON CONFLICT (domain, username, namespace) DO UPDATE SET data = excluded.data",
                               (domain, user, namespace, data))

        try:
            await self.db.interaction(txn, idempotent=True)
        except self.db.IntegrityError:
            raise NoSuchAccount(f"no such user {user}@{domain}") from None


class LastActivityStore:
    """XEP-0012: when each account last logged out, and its last unavailable status.

    Logouts are written behind: those of the next :attr:`delay` seconds share one transaction (a storm of
    logins is also a storm of logouts, and one write transaction each cost 5% of a login's CPU). Reads see
    the pending ones; :meth:`flush` writes them at once (the module calls it when the server stops).
    """

    delay = 0.05

    def __init__(self, db: Database, clock: Any) -> None:
        self.db = db
        self._clock = clock
        self._pending: dict[tuple[str, str], tuple[int, str, list[Deferred]]] = {}
        self._timer: Any = None

    async def get(self, user: str, domain: str) -> tuple[int, str] | None:
        """``(unix time of the last logout, status text)``, or None if never recorded."""
        pending = self._pending.get((domain, user))
        if pending is not None:
            return pending[0], pending[1]
        rows = await self.db.query("SELECT seconds, status FROM last_activity WHERE domain = ? AND username = ?",
                                   (domain, user))
        return (int(rows[0][0]), rows[0][1]) if rows else None

    async def set(self, user: str, domain: str, when: int, status: str = "") -> None:
        """Record a logout; returns once it is written (:class:`NoSuchAccount` if the account is gone)."""
        done: Deferred = Deferred()
        waiters = self._pending.get((domain, user), (0, "", []))[2]
        waiters.append(done)
        self._pending[(domain, user)] = (int(when), status, waiters)
        if self._timer is None:
            self._timer = self._clock.callLater(self.delay, self._flush_later)
        await done

    def _flush_later(self) -> None:
        self._timer = None
        ensureDeferred(self.flush())

    async def flush(self) -> None:
        """Write every pending logout now."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        batch, self._pending = self._pending, {}
        if not batch:
            return
        rows = [(domain, user, when, status) for (domain, user), (when, status, _) in batch.items()]
        try:
            await self.db.interaction(_upsert_last, rows, idempotent=True)
            failed: set[tuple[str, str]] = set()
        except self.db.IntegrityError:  # an account in the batch was just deleted: each row on its own
            failed = set()
            for row in rows:
                try:
                    await self.db.interaction(_upsert_last, [row], idempotent=True)
                except self.db.IntegrityError:
                    failed.add(row[:2])
        except Exception as e:
            for _, _, waiters in batch.values():
                for waiter in waiters:
                    waiter.errback(e)
            return
        for key, (_, _, waiters) in batch.items():
            for waiter in waiters:
                if key in failed:
                    waiter.errback(NoSuchAccount(f"no such user {key[1]}@{key[0]}"))
                else:
                    waiter.callback(None)


def _upsert_last(cursor: Cursor, rows: list[tuple[str, str, int, str]]) -> None:
    cursor.executemany("INSERT INTO last_activity (domain, username, seconds, status) VALUES (?, ?, ?, ?)"
                       " ON CONFLICT (domain, username)"
                       " DO UPDATE SET seconds = excluded.seconds, status = excluded.status", rows)
