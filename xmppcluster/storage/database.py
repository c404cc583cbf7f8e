"""The thin SQL layer every store uses: one pool, one SQL text for SQLite and PostgreSQL.

SQL is written once with ``?`` placeholders and translated for psycopg (``%s``).  Work runs in the
``adbapi`` pool's threads; transactions are managed here (not by ``runInteraction``) so a dropped
PostgreSQL connection is discarded quietly and idempotent work is retried once on a fresh one.

On SQLite, reads run on the calling (reactor) thread on a read-only connection of their own: in WAL mode a
reader never waits for the writer, and a small indexed read takes microseconds where the hand-off to the
pool thread and back costs ~100 us of the reactor's CPU (a third of the storage cost of a login).  A read
that finds the database busy anyway (a WAL recovery) goes to the pool thread instead.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from twisted.enterprise import adbapi
from twisted.internet import reactor as _global_reactor
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from xmppcluster.storage.errors import StorageError

log = Logger()

SQLITE = "sqlite"
POSTGRESQL = "postgresql"

#: Query parameters of Tigase-style JDBC URIs that libpq does not know; dropped.
_JDBC_ONLY_PARAMS = frozenset({"autoCreateUser", "useSSL", "useUnicode", "characterEncoding", "useLegacyDatetimeCode"})


@functools.lru_cache(maxsize=1024)
def to_pyformat(sql: str) -> str:
    """Translate qmark SQL to psycopg's pyformat: ``?`` -> ``%s`` and ``%`` -> ``%%`` (not inside quotes)."""
    out = []
    quote = None
    for ch in sql:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "?":
            out.append("%s")
            continue
        if ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    return "".join(out)


def redact(uri: str) -> str:
    """The URI with any password replaced, safe to log or print."""
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
    query = urlencode([(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)])
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def parse_uri(uri: str) -> tuple[str, str]:
    """``(dialect, target)``: a filesystem path for SQLite, a libpq URI for PostgreSQL.

    ``sqlite:///rel/path`` is relative to the working directory, ``sqlite:////abs/path`` absolute;
    ``postgresql://user@host:port/db?options=...`` is passed to psycopg (a ``jdbc:`` prefix is accepted).
    """
    uri = uri.removeprefix("jdbc:")
    scheme, sep, rest = uri.partition("://")
    if not sep:
        raise StorageError(f"unsupported database URI {redact(uri)!r}: expected sqlite:/// or postgresql://")
    scheme = scheme.lower()
    if scheme in ("sqlite", "sqlite3"):
        if not rest.startswith("/") or rest == "/":
            raise StorageError(f"bad SQLite URI {uri!r}: expected sqlite:///relative/path or sqlite:////abs/path")
        return SQLITE, rest[1:]
    if scheme in ("postgresql", "postgres"):
        parts = urlsplit("postgresql://" + rest)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in _JDBC_ONLY_PARAMS]
        return POSTGRESQL, urlunsplit(parts._replace(query=urlencode(query)))
    raise StorageError(f"unsupported database URI scheme {scheme!r}: expected sqlite or postgresql")


class Cursor:
    """A DB-API cursor that takes ``?`` SQL on both backends (what ``interaction`` functions receive)."""

    def __init__(self, cursor: Any, dialect: str) -> None:
        self._cursor = cursor
        self.dialect = dialect

    def _sql(self, sql: str) -> str:
        return to_pyformat(sql) if self.dialect == POSTGRESQL else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        self._cursor.execute(self._sql(sql), tuple(params))
        return self

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> Cursor:
        self._cursor.executemany(self._sql(sql), [tuple(p) for p in seq])
        return self

    def fetchone(self) -> tuple | None:
        return self._cursor.fetchone()

    def fetchall(self) -> list[tuple]:
        return list(self._cursor.fetchall())

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount


def _sqlite_open(conn: sqlite3.Connection) -> None:
    conn.isolation_level = None  # we issue BEGIN ourselves
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk (the WAL fsynced) before it is reported, so a message stored offline, or
    # acknowledged to a cluster peer because it was, survives a power loss; NORMAL could lose the last
    # commits. Measured: docs/storage.rst.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")


def _sqlite_reader(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA query_only=ON")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=50")  # never hold the reactor long: fall back to the pool thread
    return conn


class Database:
    """An ``adbapi`` pool on SQLite (one writer thread, WAL) or PostgreSQL (psycopg 3)."""

    def __init__(self, pool: adbapi.ConnectionPool, dialect: str, reactor: Any = None,
                 sqlite_path: str | None = None) -> None:
        self._pool = pool
        self.dialect = dialect
        self._reactor = reactor or _global_reactor
        self._closed = False
        self._sqlite_path = sqlite_path
        self._reader: sqlite3.Connection | None = None
        #: reads on the calling thread (SQLite); tests turn it off to see reads complete later, as on PostgreSQL
        self.inline_reads = sqlite_path is not None
        #: the DB-API module's IntegrityError (unique / foreign-key violations)
        self.IntegrityError = pool.dbapi.IntegrityError
        #: ``observe(kind, seconds)`` after each query, kind ``read`` or ``write`` (the metrics set it), or None
        self.observe: Callable[[str, float], None] | None = None

    @classmethod
    def open(cls, uri: str, reactor: Any = None) -> Database:
        """Create the pool for ``uri`` (no connection is made until the first query)."""
        dialect, target = parse_uri(uri)
        if dialect == SQLITE:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            pool = adbapi.ConnectionPool(
                "sqlite3", target, check_same_thread=False, cp_min=1, cp_max=1, cp_openfun=_sqlite_open,
                cp_reactor=reactor,
            )
        else:
            import psycopg.conninfo

            try:
                params = psycopg.conninfo.conninfo_to_dict(target)
            except psycopg.ProgrammingError as e:
                raise StorageError(f"bad PostgreSQL URI {redact(uri)!r}: {e}") from None
            params.setdefault("connect_timeout", 10)
            pool = adbapi.ConnectionPool(
                "psycopg", cp_min=1, cp_max=8, cp_reconnect=True, cp_noisy=False, cp_reactor=reactor, **params
            )
        return cls(pool, dialect, reactor, sqlite_path=target if dialect == SQLITE else None)

    def blob(self, data: bytes) -> bytes:
        """Wrap bytes for a BLOB (SQLite) / BYTEA (PostgreSQL) column; both drivers take ``bytes``."""
        return bytes(data)

    async def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run a read; retried once if the PostgreSQL connection was lost."""
        return await self._read(_fetchall, (sql, params), snapshot=False)  # one statement is its own snapshot

    async def execute(self, sql: str, params: tuple = (), *, idempotent: bool = False) -> int:
        """Run one write statement in its own transaction; returns the rowcount."""
        return await self._run(_rowcount, (sql, params), retry=idempotent, write=True)

    async def read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(cursor, *args)`` (reads only) in one read transaction: several SELECTs, one snapshot, and
        on SQLite no write lock (``interaction`` takes it: BEGIN IMMEDIATE). Retried once like :meth:`query`."""
        return await self._read(fn, args, snapshot=True)

    async def _read(self, fn: Callable[..., Any], args: tuple, snapshot: bool) -> Any:
        observe = self.observe  # taken now: the metrics may stop observing while this read waits
        if observe is None:
            return await self._read_now(fn, args, snapshot)
        started = time.perf_counter()
        try:
            return await self._read_now(fn, args, snapshot)
        finally:
            observe("read", time.perf_counter() - started)

    async def _read_now(self, fn: Callable[..., Any], args: tuple, snapshot: bool) -> Any:
        if self.inline_reads and not self._closed:
            try:
                return self._read_here(fn, args, snapshot)
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
        return await self._run(fn, args, retry=True, observed=False)

    def _read_here(self, fn: Callable[..., Any], args: tuple, snapshot: bool) -> Any:
        """An SQLite read on this thread; with ``snapshot``, in one read transaction."""
        if self._reader is None:
            self._reader = _sqlite_reader(self._sqlite_path)
        conn = self._reader
        if snapshot:
            conn.execute("BEGIN")
        raw = conn.cursor()
        try:
            return fn(Cursor(raw, SQLITE), *args)
        finally:
            raw.close()
            if snapshot:
                conn.execute("COMMIT")

    async def interaction(self, fn: Callable[..., Any], *args: Any, idempotent: bool = False) -> Any:
        """Run ``fn(cursor, *args)`` in a pool thread inside one transaction (rolled back if it raises)."""
        return await self._run(fn, args, retry=idempotent, write=True)

    async def close(self) -> None:
        """Stop the pool threads and close every connection."""
        if not self._closed:
            self._closed = True
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            self._pool.close()

    async def _run(self, fn: Callable[..., Any], args: tuple, *, retry: bool, write: bool = False,
                   observed: bool = True) -> Any:
        observe = self.observe if observed else None  # taken now: the metrics may stop while this waits
        if observe is not None:
            started = time.perf_counter()
            try:
                return await self._run(fn, args, retry=retry, write=write, observed=False)
            finally:
                observe("write" if write else "read", time.perf_counter() - started)
        try:
            return await self._defer(fn, args, write)
        except adbapi.ConnectionLost:
            if not retry:
                raise
            log.info("database connection lost; retrying once on a new connection")
            return await self._defer(fn, args, write, check=True)

    def _defer(self, fn: Callable[..., Any], args: tuple, write: bool, check: bool = False) -> Any:
        if self._closed:
            raise StorageError("the database is closed")
        return deferToThreadPool(self._reactor, self._pool.threadpool, self._in_thread, fn, args, write, check)

    def _connection(self, check: bool) -> Any:
        """This thread's connection; with ``check``, proven alive first (other pooled ones may be dead too)."""
        conn = self._pool.connect()
        if check and self.dialect == POSTGRESQL:
            try:
                conn.execute("SELECT 1")
                conn.rollback()
            except self._pool.dbapi.Error:
                self._pool.disconnect(conn)
                conn = self._pool.connect()
        return conn

    def _in_thread(self, fn: Callable[..., Any], args: tuple, write: bool, check: bool) -> Any:
        """In a pool thread: one transaction around ``fn``; a broken connection is dropped, not reused."""
        conn = self._connection(check)
        try:
            if self.dialect == SQLITE:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            raw = conn.cursor()
            try:
                result = fn(Cursor(raw, self.dialect), *args)
            finally:
                raw.close()
            conn.commit()
            return result
        except BaseException as failure:
            lost = getattr(conn, "broken", False) or getattr(conn, "closed", False)
            if not lost:
                try:
                    conn.rollback()
                except self._pool.dbapi.Error:
                    lost = True
            if lost and self.dialect == POSTGRESQL:
                self._pool.disconnect(conn)
                raise adbapi.ConnectionLost(str(failure)) from failure
            raise


def _fetchall(cursor: Cursor, sql: str, params: tuple) -> list[tuple]:
    return cursor.execute(sql, params).fetchall()


def _rowcount(cursor: Cursor, sql: str, params: tuple) -> int:
    return cursor.execute(sql, params).rowcount
