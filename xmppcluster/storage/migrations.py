"""Versioned schema migrations, applied at open, each in its own transaction, on both backends.

Files live in ``migrations/`` as ``NNNN_name.sql`` (one text for both backends; ``BLOB`` becomes
``BYTEA`` on PostgreSQL) or as a ``NNNN_name.sqlite.sql`` + ``NNNN_name.postgresql.sql`` pair when the
dialects must differ.  Statements end with ``;`` at the end of a line.  Applied versions are recorded in
``schema_version``; concurrent openers (several cluster nodes, or the admin command beside a running
server) serialise on a lock (``BEGIN IMMEDIATE`` / ``pg_advisory_xact_lock``) and re-check the version.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from importlib import resources

from twisted.logger import Logger

from xmppcluster.storage.database import POSTGRESQL, Cursor, Database
from xmppcluster.storage.errors import StorageError

log = Logger()

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)(?:\.(sqlite|postgresql))?\.sql$")

_CREATE_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
)
_PG_LOCK = "SELECT pg_advisory_xact_lock(hashtext('xmppcluster-migrate:' || coalesce(current_schema(), '')))"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def split_statements(text: str) -> list[str]:
    """Split a migration script on ``;`` at line ends, dropping ``--`` comment lines."""
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in re.split(r";[ \t]*$", "\n".join(lines), flags=re.MULTILINE) if s.strip()]


def adapt(statement: str, dialect: str) -> str:
    """Dialect spelling of portable DDL: ``BLOB`` is ``BYTEA`` on PostgreSQL."""
    return re.sub(r"\bBLOB\b", "BYTEA", statement) if dialect == POSTGRESQL else statement


def load_migrations(dialect: str, package: str = "xmppcluster.storage") -> list[Migration]:
    """The migrations for ``dialect``, ordered by version, numbered 1..N without gaps."""
    generic: dict[int, tuple[str, str]] = {}
    specific: dict[int, tuple[str, str]] = {}
    versions_seen: set[int] = set()
    for entry in resources.files(package).joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if not match:
            continue
        version, name, only = int(match[1]), match[2], match[3]
        versions_seen.add(version)
        if only is None:
            generic[version] = (name, entry.read_text("utf-8"))
        elif only == dialect:
            specific[version] = (name, entry.read_text("utf-8"))
    versions = sorted(versions_seen)
    if versions != list(range(1, len(versions) + 1)):
        raise StorageError(f"migration versions must be 1..N without gaps, found {versions}")
    result = []
    for version in versions:
        if version not in generic and version not in specific:
            raise StorageError(f"migration {version} has no file for {dialect}")
        name, text = specific.get(version) or generic[version]
        statements = tuple(adapt(s, dialect) for s in split_statements(text))
        result.append(Migration(version, name, statements))
    return result


def _lock_and_read(cursor: Cursor) -> set[int]:
    if cursor.dialect == POSTGRESQL:
        cursor.execute(_PG_LOCK)
    cursor.execute(_CREATE_VERSION_TABLE)
    return {row[0] for row in cursor.execute("SELECT version FROM schema_version").fetchall()}


def _apply(cursor: Cursor, migration: Migration) -> bool:
    if migration.version in _lock_and_read(cursor):
        return False  # another opener got there first
    for statement in migration.statements:
        cursor.execute(statement)
    cursor.execute(
        "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
        (migration.version, migration.name, int(time.time())),
    )
    return True


async def migrate(db: Database, migrations: list[Migration] | None = None) -> int:
    """Apply every pending migration; returns the schema version now in the database."""
    migrations = load_migrations(db.dialect) if migrations is None else migrations
    applied = await db.interaction(_lock_and_read)
    newest = len(migrations)
    if applied and max(applied) > newest:
        raise StorageError(f"database schema version {max(applied)} is newer than this xmppcluster ({newest})")
    for migration in migrations:
        if migration.version in applied:
            continue
        if await db.interaction(_apply, migration):
            log.info("applied schema migration {version} ({name})", version=migration.version, name=migration.name)
    return newest
