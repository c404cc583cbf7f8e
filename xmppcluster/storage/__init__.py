"""Persistent storage: SQLite (single node, default) or PostgreSQL (shared by all nodes).

``open_storage(uri)`` connects, applies pending migrations and returns a :class:`Storage` holding one
store per concern (accounts now; roster, offline, vCard... later) on one shared :class:`Database`.
"""

from __future__ import annotations

from dataclasses import dataclass

from xmppcluster.auth.credentials import DEFAULT_ITERATIONS
from xmppcluster.storage.accounts import AccountStore
from xmppcluster.storage.database import Database, redact
from xmppcluster.storage.errors import AccountExists, NoSuchAccount, StorageError
from xmppcluster.storage.migrations import migrate

__all__ = ["AccountExists", "Database", "NoSuchAccount", "Storage", "StorageError", "open_storage"]


@dataclass
class Storage:
    """Every store, sharing one database pool."""

    db: Database
    accounts: AccountStore

    async def close(self) -> None:
        await self.db.close()


async def open_storage(uri: str, *, scram_iterations: int = DEFAULT_ITERATIONS) -> Storage:
    """Connect to ``uri``, bring the schema up to date, and return the stores.

    Raises :class:`StorageError` (one-line message, password redacted) when the database cannot be used.
    """
    try:
        db = Database.open(uri)
    except OSError as e:
        raise StorageError(f"cannot open database {redact(uri)}: {e}") from e
    try:
        await migrate(db)
    except StorageError:
        await db.close()
        raise
    except Exception as e:
        await db.close()
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StorageError(f"cannot open database {redact(uri)}: {first_line}") from e
    return Storage(db=db, accounts=AccountStore(db, scram_iterations))
