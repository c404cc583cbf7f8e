"""Message archives (XEP-0313): per account, ordered by (time, stanza-id), paged like XEP-0059.

Rows are written in batches (:meth:`ArchiveStore.add`: one transaction for many messages of many accounts);
a row for an account that does not exist (any more) is skipped, not an error. Queries (:meth:`ArchiveStore.query`)
filter by the other party, a time range, ids before/after and a list of ids, then take one page forwards
(after an id) or backwards (before an id, or the last page), in one read snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from xmppcluster.storage.database import Cursor, Database
from xmppcluster.storage.errors import StorageError

IN, OUT = "in", "out"


class UnknownArchiveId(StorageError):
    """A query referred to an id (RSM before/after, before-id/after-id) that is not in the archive."""


@dataclass(frozen=True)
class ArchivedMessage:
    user: str
    domain: str
    id: str
    ts: int  # microseconds since the epoch
    with_jid: str  # bare JID of the other party
    with_resource: str
    direction: str  # IN or OUT
    stanza: bytes
    #: archive only if the other party is in the owner's roster (XEP-0441 default 'roster', decided at write)
    if_in_roster: bool = False


@dataclass
class ArchiveQuery:
    """What a MAM query asks for; times in microseconds, both ends included."""

    with_jid: str | None = None
    with_resource: str | None = None
    start: int | None = None
    end: int | None = None
    after_id: str | None = None
    before_id: str | None = None
    ids: list[str] | None = None
    #: RSM: a page after this id (forwards), or before this id ('' = the last page; backwards)
    after: str | None = None
    before: str | None = None
    max: int = 50


@dataclass
class ArchivePage:
    items: list[ArchivedMessage] = field(default_factory=list)
    #: matching messages in the whole query (without the paging)
    count: int = 0
    #: the page reaches the end of the results in its direction (the last one forwards, the first backwards)
    complete: bool = True


#: Rows per INSERT statement: one statement (one step of the database, one release of the GIL by the driver)
#: for many rows; 9 parameters a row stays far below SQLite's 32,766 and PostgreSQL's 65,535.
ROWS_PER_STATEMENT = 500


def _insert(n: int) -> str:
    """One INSERT of ``n`` rows of (domain, username, id, ts, with_jid, with_resource, direction, stanza,
    roster flag), each kept only if its account exists and, when flagged, its other party is in the roster."""
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * n)
    return (
        "INSERT INTO archive (domain, username, id, ts, with_jid, with_resource, direction, stanza)"
        " SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, v.column8"
        f" FROM (VALUES {values}) AS v"
        " WHERE EXISTS (SELECT 1 FROM accounts a WHERE a.domain = v.column1 AND a.username = v.column2)"
        " AND (v.column9 = 0 OR EXISTS (SELECT 1 FROM roster_items r WHERE r.domain = v.column1"
        " AND r.username = v.column2 AND r.contact = v.column5))")


_COLUMNS = "id, ts, with_jid, with_resource, direction, stanza"


class ArchiveStore:
    """The archive table of every hosted account."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, rows: Sequence[ArchivedMessage]) -> int:
        """Insert ``rows`` in one transaction; returns how many were stored (rows of unknown accounts are not)."""
        if not rows:
            return 0
        params = [(r.domain, r.user, r.id, r.ts, r.with_jid, r.with_resource, r.direction, self.db.blob(r.stanza),
                   1 if r.if_in_roster else 0) for r in rows]

        def txn(cursor: Cursor) -> int:
            stored = 0
            for start in range(0, len(params), ROWS_PER_STATEMENT):
                chunk = params[start:start + ROWS_PER_STATEMENT]
                cursor.execute(_insert(len(chunk)), [value for row in chunk for value in row])
                stored += max(cursor.rowcount, 0)
            return stored

        return await self.db.interaction(txn)

    async def query(self, user: str, domain: str, q: ArchiveQuery) -> ArchivePage:
        """One page of the archive of ``user@domain``; :class:`UnknownArchiveId` for an id not in it."""
        return await self.db.read(_query, user, domain, q)

    async def count(self, user: str, domain: str) -> int:
        rows = await self.db.query("SELECT COUNT(*) FROM archive WHERE domain = ? AND username = ?", (domain, user))
        return int(rows[0][0])

    async def purge(self, user: str, domain: str, before: int | None = None) -> int:
        """Delete the archive of ``user@domain`` (only what is older than ``before`` microseconds if given)."""
        if before is None:
            return await self.db.execute("DELETE FROM archive WHERE domain = ? AND username = ?", (domain, user),
                                         idempotent=True)
        return await self.db.execute("DELETE FROM archive WHERE domain = ? AND username = ? AND ts < ?",
                                     (domain, user, before), idempotent=True)


@dataclass(frozen=True)
class ArchivePrefs:
    """XEP-0441 preferences of one account."""

    default: str = "always"  # always | never | roster
    always: frozenset[str] = frozenset()
    never: frozenset[str] = frozenset()


class ArchivePrefsStore:
    """The archive_prefs table: set per account, read back per account or as everything changed since a time."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def set(self, user: str, domain: str, prefs: ArchivePrefs, now: float) -> None:
        always, never = json.dumps(sorted(prefs.always)), json.dumps(sorted(prefs.never))
        await self.db.execute(
            "INSERT INTO archive_prefs (domain, username, default_mode, always_jids, never_jids, updated)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (domain, username) DO UPDATE SET"
            " default_mode = excluded.default_mode, always_jids = excluded.always_jids,"
            " never_jids = excluded.never_jids, updated = excluded.updated",
            (domain, user, prefs.default, always, never, now), idempotent=True)

    async def get(self, user: str, domain: str) -> ArchivePrefs | None:
        rows = await self.db.query("SELECT default_mode, always_jids, never_jids FROM archive_prefs"
                                   " WHERE domain = ? AND username = ?", (domain, user))
        return _prefs(*rows[0]) if rows else None

    async def changed_since(self, since: float) -> list[tuple[str, ArchivePrefs, float]]:
        """(bare JID, preferences, updated) of every row written at or after ``since``."""
        rows = await self.db.query("SELECT domain, username, default_mode, always_jids, never_jids, updated"
                                   " FROM archive_prefs WHERE updated >= ?", (since,))
        return [(f"{user}@{domain}", _prefs(mode, always, never), float(updated))
                for domain, user, mode, always, never, updated in rows]


def _prefs(mode: str, always: str, never: str) -> ArchivePrefs:
    return ArchivePrefs(mode, frozenset(json.loads(always)), frozenset(json.loads(never)))


def _position(cursor: Cursor, user: str, domain: str, id: str) -> tuple[int, str]:
    row = cursor.execute("SELECT ts FROM archive WHERE domain = ? AND username = ? AND id = ?",
                         (domain, user, id)).fetchone()
    if row is None:
        raise UnknownArchiveId(id)
    return int(row[0]), id


def _after(position: tuple[int, str]) -> tuple[str, list[Any]]:
    ts, id = position
    return "(ts > ? OR (ts = ? AND id > ?))", [ts, ts, id]


def _before(position: tuple[int, str]) -> tuple[str, list[Any]]:
    ts, id = position
    return "(ts < ? OR (ts = ? AND id < ?))", [ts, ts, id]


def _query(cursor: Cursor, user: str, domain: str, q: ArchiveQuery) -> ArchivePage:
    where = ["domain = ?", "username = ?"]
    args: list[Any] = [domain, user]

    def add(clause: tuple[str, list[Any]]) -> None:
        where.append(clause[0])
        args.extend(clause[1])

    if q.with_jid is not None:
        add(("with_jid = ?", [q.with_jid]))
        if q.with_resource:
            add(("with_resource = ?", [q.with_resource]))
    if q.start is not None:
        add(("ts >= ?", [q.start]))
    if q.end is not None:
        add(("ts <= ?", [q.end]))
    if q.after_id is not None:
        add(_after(_position(cursor, user, domain, q.after_id)))
    if q.before_id is not None:
        add(_before(_position(cursor, user, domain, q.before_id)))
    if q.ids is not None:
        if not q.ids:
            return ArchivePage()
        add((f"id IN ({', '.join('?' * len(q.ids))})", list(q.ids)))
    # The reference positions of RSM are looked up before counting: an unknown id is an error, not an empty page.
    page_clause = None
    if q.after is not None:
        page_clause = _after(_position(cursor, user, domain, q.after))
    elif q.before:
        page_clause = _before(_position(cursor, user, domain, q.before))
    count = int(cursor.execute(f"SELECT COUNT(*) FROM archive WHERE {' AND '.join(where)}", args).fetchone()[0])
    if q.max <= 0 or count == 0:
        return ArchivePage([], count, True)
    if page_clause is not None:
        add(page_clause)
    backwards = q.before is not None
    order = "ts DESC, id DESC" if backwards else "ts, id"
    rows = cursor.execute(
        f"SELECT {_COLUMNS} FROM archive WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?",
        [*args, q.max + 1]).fetchall()
    complete = len(rows) <= q.max
    rows = rows[:q.max]
    if backwards:
        rows.reverse()
    items = [ArchivedMessage(user, domain, id, int(ts), w, r, d, bytes(s)) for id, ts, w, r, d, s in rows]
    return ArchivePage(items, count, complete)
