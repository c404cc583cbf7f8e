"""Run a storage test case on SQLite and on PostgreSQL.

Pattern (any later store reuses it)::

    class RosterTestsMixin:
        backend: str
        async def test_x(self):
            storage = await make_storage(self, self.backend)
            ...

    class SQLiteRosterTests(RosterTestsMixin, SQLiteBackend, TestCase): pass
    class PostgresRosterTests(RosterTestsMixin, PostgresBackend, TestCase): pass

PostgreSQL is ``postgresql://postgres@127.0.0.1:5432/test`` (trust auth) unless ``XMPPCLUSTER_TEST_PG``
gives another URI.  Each test gets a fresh schema (created, put on ``search_path`` through the URI's
``options``, dropped at cleanup), so parallel trial workers never collide.  When the server cannot be
reached, the PostgreSQL classes are skipped with a reason naming the address, never silently passed.
"""

from __future__ import annotations

import functools
import os
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from xmppcluster.storage import Storage, open_storage
from xmppcluster.storage.database import redact

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
BACKENDS = ("sqlite", "postgresql")

#: Iterations for test accounts: fast, still real PBKDF2.
TEST_ITERATIONS = 64


def postgres_base_uri() -> str:
    return os.environ.get("XMPPCLUSTER_TEST_PG") or DEFAULT_PG


def pg_connect(uri: str | None = None, **kwargs: Any) -> Any:
    """A blocking autocommit psycopg connection (for schema setup and raw checks in tests)."""
    import psycopg

    return psycopg.connect(uri or postgres_base_uri(), autocommit=True, connect_timeout=3, **kwargs)


@functools.lru_cache(maxsize=1)
def postgres_skip_reason() -> str | None:
    """None when PostgreSQL is usable, else why not (used as the trial ``skip`` reason)."""
    address = redact(postgres_base_uri())
    try:
        import psycopg
    except ImportError:
        return f"psycopg is not installed: cannot test PostgreSQL at {address}"
    try:
        with pg_connect() as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return f"PostgreSQL not reachable at {address}: {first}"
    return None


def with_params(uri: str, **params: str) -> str:
    """``uri`` with query parameters added (or replaced)."""
    parts = urlsplit(uri)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


def new_pg_schema(test: TestCase) -> tuple[str, str]:
    """Create a fresh schema dropped at cleanup; returns ``(schema, uri)`` with search_path set to it.

    The URI also sets ``application_name`` to the schema name, so a test can find its own backends.
    """
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with pg_connect() as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')

    def drop() -> None:
        with pg_connect() as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    test.addCleanup(drop)
    uri = with_params(postgres_base_uri(), options=f"-csearch_path={schema}", application_name=schema)
    return schema, uri


def storage_uri(test: TestCase, backend: str) -> str:
    """A fresh, empty database URI for ``backend`` owned by ``test`` (cleaned up after it)."""
    if backend == "sqlite":
        return f"sqlite:///{os.path.abspath(test.mktemp())}/db.sqlite"
    if backend == "postgresql":
        reason = postgres_skip_reason()
        if reason:
            from twisted.trial.unittest import SkipTest

            raise SkipTest(reason)
        return new_pg_schema(test)[1]
    raise ValueError(f"unknown backend {backend!r}")


def storage_uris(test: TestCase) -> dict[str, str]:
    """One fresh URI per reachable backend (PostgreSQL left out when unreachable)."""
    uris = {"sqlite": storage_uri(test, "sqlite")}
    if postgres_skip_reason() is None:
        uris["postgresql"] = storage_uri(test, "postgresql")
    return uris


async def make_storage(test: TestCase, backend: str, *, uri: str | None = None, **kwargs: Any) -> Storage:
    """Open (and migrate) a fresh storage on ``backend``; closed at the end of the test."""
    kwargs.setdefault("scram_iterations", TEST_ITERATIONS)
    storage = await open_storage(uri or storage_uri(test, backend), **kwargs)
    test.addCleanup(lambda: ensureDeferred(storage.close()))
    return storage


class SQLiteBackend:
    """Mixin: run the test case on SQLite (a file under the test's temp directory)."""

    backend = "sqlite"


class PostgresBackend:
    """Mixin: run the test case on PostgreSQL; skipped (with the address) when unreachable."""

    backend = "postgresql"
    skip = postgres_skip_reason()
