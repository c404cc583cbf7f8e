"""XEP-0357 push registrations: which app servers (JID and node) to notify for an account."""

from __future__ import annotations

from dataclasses import dataclass

from xmppcluster.storage.database import Cursor, Database
from xmppcluster.storage.errors import NoSuchAccount, StorageError
from xmppcluster.storage.offline import lock_account


class TooManyRegistrations(StorageError):
    """Enabling one more app server would exceed the per-account limit."""


@dataclass(frozen=True)
class Registration:
    """One enabled (jid, node) of an account; ``options`` is the serialized publish-options form or ''."""

    jid: str
    node: str
    options: str
    token: str


class PushStore:
    """Push registrations of every hosted account (table ``push_registrations``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def list(self, user: str, domain: str) -> list[Registration]:
        """The registrations of ``user@domain``, oldest first."""
        rows = await self.db.query(
            "SELECT jid, node, options, token FROM push_registrations WHERE domain = ? AND username = ? "
            "ORDER BY created, jid, node", (domain, user))
        return [Registration(*row) for row in rows]

    async def enable(self, user: str, domain: str, jid: str, node: str, options: str, token: str, *,
                     limit: int, now: int) -> None:
        """Add or replace the registration (jid, node). Raises :class:`TooManyRegistrations` (nothing
        changed) when it is new and ``limit`` registrations exist, :class:`NoSuchAccount`."""

        def txn(cursor: Cursor) -> None:
            if not lock_account(cursor, user, domain):
                raise NoSuchAccount(f"no such user {user}@{domain}")
            cursor.execute("DELETE FROM push_registrations WHERE domain = ? AND username = ? AND jid = ? "
                           "AND node = ?", (domain, user, jid, node))
            if cursor.rowcount <= 0:
                count = cursor.execute("SELECT COUNT(*) FROM push_registrations WHERE domain = ? AND username = ?",
                                       (domain, user)).fetchone()
                if count is not None and count[0] >= limit:
                    raise TooManyRegistrations(f"{user}@{domain} has {limit} push registrations")
            cursor.execute("INSERT INTO push_registrations (domain, username, jid, node, options, token, created) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", (domain, user, jid, node, options, token, now))

        await self.db.interaction(txn)

    async def disable(self, user: str, domain: str, jid: str, node: str | None = None) -> int:
        """Remove the registrations of ``jid`` (only ``node`` when given); how many there were."""
        if node is None:
            return await self.db.execute("DELETE FROM push_registrations WHERE domain = ? AND username = ? "
                                         "AND jid = ?", (domain, user, jid), idempotent=True)
        return await self.db.execute("DELETE FROM push_registrations WHERE domain = ? AND username = ? AND jid = ? "
                                     "AND node = ?", (domain, user, jid, node), idempotent=True)

    async def disable_token(self, user: str, domain: str, jid: str, token: str) -> int:
        """Remove the registration named ``token`` if it belongs to app server ``jid``; how many were removed."""
        return await self.db.execute("DELETE FROM push_registrations WHERE domain = ? AND username = ? AND jid = ? "
                                     "AND token = ?", (domain, user, jid, token), idempotent=True)
