"""Rosters: items (RFC 6121 §2), subscription state (§3) and pending requests, with a version per account.

Every change runs in one transaction that first takes the account's row in ``roster_versions`` (row lock on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so read-modify-write is safe across cluster nodes too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from xmppcluster.storage.database import POSTGRESQL, Cursor, Database

SUBSCRIPTIONS = ("none", "to", "from", "both")


@dataclass(frozen=True)
class RosterItem:
    """One contact as the user sees it."""

    jid: str
    name: str | None = None
    subscription: str = "none"
    #: "Pending Out": the user asked for the contact's presence, no answer yet (``ask='subscribe'``).
    ask: bool = False
    #: Subscription pre-approval (RFC 6121 §3.4).
    approved: bool = False
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Roster:
    version: int
    items: dict[str, RosterItem] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    """The outcome of :meth:`RosterStore.modify`."""

    contact: str
    before: RosterItem | None
    after: RosterItem | None
    pending_before: str | None
    pending_after: str | None
    #: The roster version after the change (unchanged when the item did not change).
    version: int

    @property
    def item_changed(self) -> bool:
        return self.before != self.after


class RosterFull(Exception):
    """The change would add an item (or a pending request) beyond the configured maximum."""


class PendingTooLarge(RosterFull):
    """The pending request would take the account's pending requests past their byte quota."""


#: fn(item, pending stanza) -> (new item or None, new pending stanza or None); runs in a database thread.
Modifier = Callable[[RosterItem | None, str | None], tuple[RosterItem | None, str | None]]

_ITEM_COLUMNS = "contact, name, subscription, ask, approved, group_names"


def _item(row: tuple) -> RosterItem:
    contact, name, subscription, ask, approved, groups = row
    return RosterItem(contact, name, subscription, bool(ask), bool(approved), tuple(json.loads(groups or "[]")))


def _item_params(item: RosterItem) -> tuple:
    return (item.name, item.subscription, int(item.ask), int(item.approved), json.dumps(list(item.groups)))


class RosterStore:
    """Roster storage of every hosted account; ``user`` and ``domain`` arrive normalised."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, user: str, domain: str) -> Roster:
        """The whole roster and its version (0 for an account that never had one)."""
        return await self.db.read(self._get, user, domain)

    @staticmethod
    def _get(cursor: Cursor, user: str, domain: str) -> Roster:
        row = cursor.execute("SELECT version FROM roster_versions WHERE domain = ? AND username = ?",
                             (domain, user)).fetchone()
        rows = cursor.execute(f"SELECT {_ITEM_COLUMNS} FROM roster_items WHERE domain = ? AND username = ?"
                              " ORDER BY contact", (domain, user)).fetchall()
        return Roster(row[0] if row else 0, {r[0]: _item(r) for r in rows})

    async def version(self, user: str, domain: str) -> int:
        rows = await self.db.query("SELECT version FROM roster_versions WHERE domain = ? AND username = ?",
                                   (domain, user))
        return rows[0][0] if rows else 0

    async def get_item(self, user: str, domain: str, contact: str) -> RosterItem | None:
        rows = await self.db.query(f"SELECT {_ITEM_COLUMNS} FROM roster_items"
                                   " WHERE domain = ? AND username = ? AND contact = ?", (domain, user, contact))
        return _item(rows[0]) if rows else None

    async def pending(self, user: str, domain: str) -> dict[str, str]:
        """Unanswered subscription requests: contact -> the request stanza as XML text, oldest first."""
        rows = await self.db.query("SELECT contact, stanza FROM roster_pending WHERE domain = ? AND username = ?"
                                   " ORDER BY created_at, contact", (domain, user))
        return dict(rows)

    async def modify(self, user: str, domain: str, contact: str, fn: Modifier, *,
                     max_items: int | None = None, max_pending_bytes: int = 0) -> Change:
        """Apply ``fn`` to one contact's item and pending request in one transaction; bump the version if the
        item changed. :class:`RosterFull` when an item or pending request would be added beyond ``max_items``;
        :class:`PendingTooLarge` when a new or changed pending request would take the account's pending
        requests past ``max_pending_bytes`` UTF-8 bytes (0: no limit)."""
        return await self.db.interaction(self._modify, user, domain, contact, fn, max_items, max_pending_bytes)

    @staticmethod
    def _modify(cursor: Cursor, user: str, domain: str, contact: str, fn: Modifier,
                max_items: int | None, max_pending_bytes: int = 0) -> Change:
        key = (domain, user)
        if cursor.dialect == POSTGRESQL:
            cursor.execute("INSERT INTO roster_versions (domain, username, version) VALUES (?, ?, 0)"
                           " ON CONFLICT DO NOTHING", key)
            version = cursor.execute("SELECT version FROM roster_versions WHERE domain = ? AND username = ?"
                                     " FOR UPDATE", key).fetchone()[0]
        else:
            cursor.execute("INSERT OR IGNORE INTO roster_versions (domain, username, version) VALUES (?, ?, 0)", key)
            version = cursor.execute("SELECT version FROM roster_versions WHERE domain = ? AND username = ?",
                                     key).fetchone()[0]
        row = cursor.execute(f"SELECT {_ITEM_COLUMNS} FROM roster_items"
                             " WHERE domain = ? AND username = ? AND contact = ?", (*key, contact)).fetchone()
        before = _item(row) if row else None
        row = cursor.execute("SELECT stanza FROM roster_pending WHERE domain = ? AND username = ? AND contact = ?",
                             (*key, contact)).fetchone()
        pending_before = row[0] if row else None
        after, pending_after = fn(before, pending_before)
        if after is not None and after.jid != contact:
            raise ValueError("a modifier must not change the contact")
        if after != before:
            if after is None:
                cursor.execute("DELETE FROM roster_items WHERE domain = ? AND username = ? AND contact = ?",
                               (*key, contact))
            elif before is None:
                _check_room(cursor, "roster_items", key, max_items)
                cursor.execute(f"INSERT INTO roster_items (domain, username, {_ITEM_COLUMNS})"
                               " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (*key, contact, *_item_params(after)))
            else:
                cursor.execute("UPDATE roster_items SET name = ?, subscription = ?, ask = ?, approved = ?,"
                               " group_names = ? WHERE domain = ? AND username = ? AND contact = ?",
                               (*_item_params(after), *key, contact))
            version += 1
            cursor.execute("UPDATE roster_versions SET version = ? WHERE domain = ? AND username = ?",
                           (version, *key))
        if pending_after != pending_before:
            if pending_after is not None and max_pending_bytes:
                _check_pending_bytes(cursor, key, contact, pending_after, max_pending_bytes)
            if pending_after is None:
                cursor.execute("DELETE FROM roster_pending WHERE domain = ? AND username = ? AND contact = ?",
                               (*key, contact))
            elif pending_before is None:
                _check_room(cursor, "roster_pending", key, max_items)
                cursor.execute("INSERT INTO roster_pending (domain, username, contact, stanza, created_at)"
                               " VALUES (?, ?, ?, ?, ?)", (*key, contact, pending_after, int(time.time())))
            else:
                cursor.execute("UPDATE roster_pending SET stanza = ? WHERE domain = ? AND username = ? AND contact = ?",
                               (pending_after, *key, contact))
        return Change(contact, before, after, pending_before, pending_after, version)


def _check_pending_bytes(cursor: Cursor, key: tuple[str, str], contact: str, stanza: str, limit: int) -> None:
    """Raise :class:`PendingTooLarge` when ``stanza`` and the account's other pending requests pass ``limit``."""
    size = "OCTET_LENGTH(stanza)" if cursor.dialect == POSTGRESQL else "LENGTH(CAST(stanza AS BLOB))"
    used = cursor.execute(f"SELECT COALESCE(SUM({size}), 0) FROM roster_pending"
                          " WHERE domain = ? AND username = ? AND contact <> ?", (*key, contact)).fetchone()[0]
    if int(used) + len(stanza.encode("utf-8")) > limit:
        raise PendingTooLarge(f"pending requests would hold more than {limit} bytes")


def _check_room(cursor: Cursor, table: str, key: tuple[str, str], max_items: int | None) -> None:
    if max_items is None:
        return
    count = cursor.execute(f"SELECT COUNT(*) FROM {table} WHERE domain = ? AND username = ?", key).fetchone()[0]
    if count >= max_items:
        raise RosterFull(f"{table} holds {count} of at most {max_items}")
