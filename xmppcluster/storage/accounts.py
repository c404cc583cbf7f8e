"""Accounts: existence plus salted SCRAM-SHA-1 and SCRAM-SHA-256 credentials, never the password."""

from __future__ import annotations

import time

from twisted.internet.threads import deferToThread

from xmppcluster.auth.credentials import (
    DEFAULT_ITERATIONS,
    SCRAM_HASHES,
    ScramCredentials,
    derive,
)
from xmppcluster.auth.mechanisms import AccountDisabled
from xmppcluster.storage.database import Cursor, Database
from xmppcluster.storage.errors import AccountExists, NoSuchAccount

#: Every account stores credentials for each of these, so any SCRAM variant (and PLAIN) can log in.
MECHANISMS = tuple(SCRAM_HASHES)


def _derive_all(password: str, iterations: int) -> list[ScramCredentials]:
    return [derive(mechanism, password, iterations=iterations) for mechanism in MECHANISMS]


class AccountStore:
    """Accounts of every hosted domain; ``user`` and ``domain`` arrive already normalised."""

    def __init__(self, db: Database, scram_iterations: int = DEFAULT_ITERATIONS) -> None:
        self.db = db
        self.scram_iterations = scram_iterations

    async def _credentials(self, password: str, min_iterations: int = 0) -> list[ScramCredentials]:
        # PBKDF2 is deliberately slow: keep it off the reactor thread.
        return await deferToThread(_derive_all, password, max(self.scram_iterations, min_iterations))

    def _write_credentials(self, cursor: Cursor, user: str, domain: str, creds: list[ScramCredentials]) -> None:
        cursor.execute("DELETE FROM account_credentials WHERE domain = ? AND username = ?", (domain, user))
        cursor.executemany(
            "INSERT INTO account_credentials (domain, username, mechanism, salt, iterations, stored_key, server_key)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (domain, user, c.mechanism, self.db.blob(c.salt), c.iterations,
                 self.db.blob(c.stored_key), self.db.blob(c.server_key))
                for c in creds
            ],
        )

    async def create(self, user: str, domain: str, password: str) -> None:
        """Create ``user@domain``; :class:`AccountExists` if it is already there."""
        creds = await self._credentials(password)

        def txn(cursor: Cursor) -> None:
            if _exists(cursor, user, domain):
                raise AccountExists(f"{user}@{domain} already exists")
            cursor.execute(
                "INSERT INTO accounts (domain, username, created_at) VALUES (?, ?, ?)", (domain, user, int(time.time()))
            )
            self._write_credentials(cursor, user, domain, creds)

        try:
            await self.db.interaction(txn)
        except self.db.IntegrityError:  # lost a race with another creator
            raise AccountExists(f"{user}@{domain} already exists") from None

    async def set_password(self, user: str, domain: str, password: str, *, min_iterations: int = 0) -> None:
        """Replace the credentials of ``user@domain`` (PBKDF2 with ``--scram-iterations``, or ``min_iterations``
        if that is more); :class:`NoSuchAccount` if absent."""
        creds = await self._credentials(password, min_iterations)

        def txn(cursor: Cursor) -> None:
            if not _exists(cursor, user, domain):
                raise NoSuchAccount(f"no such user {user}@{domain}")
            self._write_credentials(cursor, user, domain, creds)

        await self.db.interaction(txn, idempotent=True)

    async def delete(self, user: str, domain: str) -> None:
        """Delete ``user@domain`` and, by cascade, every row that references it."""
        count = await self.db.execute(
            "DELETE FROM accounts WHERE domain = ? AND username = ?", (domain, user), idempotent=False
        )
        if not count:
            raise NoSuchAccount(f"no such user {user}@{domain}")

    async def exists(self, user: str, domain: str) -> bool:
        rows = await self.db.query("SELECT 1 FROM accounts WHERE domain = ? AND username = ?", (domain, user))
        return bool(rows)

    async def list(self, domain: str | None = None) -> list[str]:
        """Bare JIDs, sorted; of one domain or of all."""
        if domain is None:
            rows = await self.db.query("SELECT username, domain FROM accounts")
        else:
            rows = await self.db.query("SELECT username, domain FROM accounts WHERE domain = ?", (domain,))
        return sorted(f"{user}@{host}" for user, host in rows)

    async def count(self, domain: str) -> int:
        rows = await self.db.query("SELECT COUNT(*) FROM accounts WHERE domain = ?", (domain,))
        return int(rows[0][0])

    async def get_credentials(self, user: str, domain: str, mechanism: str) -> ScramCredentials | None:
        """Stored credentials for ``mechanism`` (``-PLUS`` variants share them), or None."""
        mechanism = mechanism.upper().removesuffix("-PLUS")
        if mechanism not in SCRAM_HASHES:
            return None
        rows = await self.db.query(
            "SELECT c.salt, c.iterations, c.stored_key, c.server_key, d.disabled_at FROM account_credentials c"
            " LEFT JOIN accounts_disabled d ON d.domain = c.domain AND d.username = c.username"
            " WHERE c.domain = ? AND c.username = ? AND c.mechanism = ?",
            (domain, user, mechanism),
        )
        if not rows:
            return None
        salt, iterations, stored_key, server_key, disabled = rows[0]
        found = ScramCredentials(mechanism, bytes(salt), int(iterations), bytes(stored_key), bytes(server_key))
        if disabled is not None:  # refused with account-disabled once the password is proven
            raise AccountDisabled(found)
        return found

    async def set_disabled(self, user: str, domain: str, disabled: bool) -> None:
        """Disable (no login) or re-enable ``user@domain``; :class:`NoSuchAccount` if absent."""

        def txn(cursor: Cursor) -> None:
            if not _exists(cursor, user, domain):
                raise NoSuchAccount(f"no such user {user}@{domain}")
            cursor.execute("DELETE FROM accounts_disabled WHERE domain = ? AND username = ?", (domain, user))
            if disabled:
                cursor.execute("INSERT INTO accounts_disabled (domain, username, disabled_at) VALUES (?, ?, ?)",
                               (domain, user, int(time.time())))

        await self.db.interaction(txn, idempotent=True)

    async def is_disabled(self, user: str, domain: str) -> bool:
        rows = await self.db.query("SELECT 1 FROM accounts_disabled WHERE domain = ? AND username = ?",
                                   (domain, user))
        return bool(rows)

    async def disabled(self, domain: str) -> list[str]:
        """The disabled accounts of ``domain``, as sorted bare JIDs."""
        rows = await self.db.query("SELECT username FROM accounts_disabled WHERE domain = ?", (domain,))
        return sorted(f"{user}@{domain}" for (user,) in rows)


def _exists(cursor: Cursor, user: str, domain: str) -> bool:
    cursor.execute("SELECT 1 FROM accounts WHERE domain = ? AND username = ?", (domain, user))
    return cursor.fetchone() is not None
