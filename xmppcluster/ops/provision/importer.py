"""Importing accounts: batches of :class:`~xmppcluster.ops.provision.model.Account` rows written while the
next batch is parsed, plaintext passwords derived on a thread pool (see docs/provisioning.rst, "Speed")."""

from __future__ import annotations

import gc
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.words.xish.domish import Element

from xmppcluster.auth.credentials import DEFAULT_ITERATIONS, SCRAM_HASHES
from xmppcluster.core.jid import nameprep
from xmppcluster.ops.provision.model import Account, ProvisionError, _derive_password, account_from_element
from xmppcluster.ops.provision.reader import iter_users
from xmppcluster.storage.database import POSTGRESQL, Cursor, Database

__all__ = ["BATCH_SIZE", "WARNINGS_SHOWN", "ImportReport", "import_files"]

BATCH_SIZE = 500


@dataclass
class ImportReport:
    imported: int = 0
    replaced: int = 0
    skipped: int = 0
    derived: int = 0  # accounts whose credentials were derived from a plaintext password
    seconds: float = 0.0
    warnings: Counter = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.imported / self.seconds if self.seconds > 0 else 0.0


def _chunks(items: list, size: int = 500) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _existing(cursor: Cursor, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
    by_domain: dict[str, list[str]] = {}
    for domain, user in keys:
        by_domain.setdefault(domain, []).append(user)
    found = set()
    for domain, users in by_domain.items():
        for chunk in _chunks(users):
            marks = ", ".join("?" * len(chunk))
            rows = cursor.execute(f"SELECT username FROM accounts WHERE domain = ? AND username IN ({marks})",
                                  (domain, *chunk)).fetchall()
            found.update((domain, row[0]) for row in rows)
    return found


def _write_batch(cursor: Cursor, accounts: list[Account], replace: bool, now: int) -> tuple[int, int, list[str]]:
    """Insert ``accounts`` in this transaction; returns ``(written, replaced, skipped JIDs)``."""
    existing = _existing(cursor, [(a.domain, a.user) for a in accounts])
    skipped: list[str] = []
    replaced = 0
    if existing:
        if replace:
            for domain, user in sorted(existing):
                cursor.execute("DELETE FROM accounts WHERE domain = ? AND username = ?", (domain, user))
            replaced = len(existing)
        else:
            skipped = [f"{a.user}@{a.domain}" for a in accounts if (a.domain, a.user) in existing]
            accounts = [a for a in accounts if (a.domain, a.user) not in existing]
    blob = bytes
    rows: dict[str, list[tuple]] = {name: [] for name in _INSERTS}
    for a in accounts:
        key = (a.domain, a.user)
        rows["accounts"].append((*key, now))
        for c in a.credentials.values():
            rows["account_credentials"].append((*key, c.mechanism, blob(c.salt), c.iterations,
                                                blob(c.stored_key), blob(c.server_key)))
        if a.roster:
            rows["roster_versions"].append((*key, now))
            rows["roster_items"].extend((*key, *item) for item in a.roster)
        rows["roster_pending"].extend((*key, contact, xml, now) for contact, xml in a.pending)
        if a.vcard is not None:
            rows["vcards"].append((*key, a.vcard, now))
        rows["private_storage"].extend((*key, ns, data) for ns, data in a.private.items())
        rows["offline_messages"].extend((*key, seq, at, sender, blob(stanza))
                                        for seq, (at, sender, stanza) in enumerate(a.offline, 1))
        rows["blocklist"].extend((*key, jid) for jid in a.blocklist)
    for table, sql in _INSERTS.items():
        if rows[table]:
            _insert(cursor, table, sql, rows[table])
    return len(accounts), replaced, skipped


def _insert(cursor: Cursor, table: str, sql: str, rows: list[tuple]) -> None:
    """``executemany`` on SQLite; on PostgreSQL one ``INSERT ... SELECT FROM unnest(arrays)`` per table."""
    if cursor.dialect != POSTGRESQL:
        cursor.executemany(sql, rows)
        return
    head = sql.partition(" VALUES ")[0]
    arrays = ", ".join(f"?::{kind}[]" for kind in _PG_TYPES[table])
    cursor.execute(f"{head} SELECT * FROM unnest({arrays})", [list(column) for column in zip(*rows, strict=True)])


#: Column types of each table, for the PostgreSQL array parameters.
_PG_TYPES = {
    "accounts": ("text", "text", "bigint"),
    "account_credentials": ("text", "text", "text", "bytea", "integer", "bytea", "bytea"),
    "roster_versions": ("text", "text", "bigint"),
    "roster_items": ("text", "text", "text", "text", "text", "integer", "integer", "text"),
    "roster_pending": ("text", "text", "text", "text", "bigint"),
    "vcards": ("text", "text", "text", "bigint"),
    "private_storage": ("text", "text", "text", "text"),
    "offline_messages": ("text", "text", "bigint", "bigint", "text", "bytea"),
    "blocklist": ("text", "text", "text"),
}


_INSERTS = {
    "accounts": "INSERT INTO accounts (domain, username, created_at) VALUES (?, ?, ?)",
    "account_credentials": "INSERT INTO account_credentials (domain, username, mechanism, salt, iterations,"
                           " stored_key, server_key) VALUES (?, ?, ?, ?, ?, ?, ?)",
    "roster_versions": "INSERT INTO roster_versions (domain, username, version) VALUES (?, ?, ?)",
    "roster_items": "INSERT INTO roster_items (domain, username, contact, name, subscription, ask, approved,"
                    " group_names) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "roster_pending": "INSERT INTO roster_pending (domain, username, contact, stanza, created_at)"
                      " VALUES (?, ?, ?, ?, ?)",
    "vcards": "INSERT INTO vcards (domain, username, vcard, updated_at) VALUES (?, ?, ?, ?)",
    "private_storage": "INSERT INTO private_storage (domain, username, namespace, data) VALUES (?, ?, ?, ?)",
    "offline_messages": "INSERT INTO offline_messages (domain, username, seq, stored_at, sender, stanza)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
    "blocklist": "INSERT INTO blocklist (domain, username, jid) VALUES (?, ?, ?)",
}


def _deferred(future: Future) -> Deferred:
    """A Deferred fired in the reactor thread with ``future``'s outcome."""
    from twisted.internet import reactor

    d: Deferred = Deferred()

    def done(f: Future) -> None:
        error = f.exception()
        if error is not None:
            reactor.callFromThread(d.errback, error)
        else:
            reactor.callFromThread(d.callback, f.result())

    future.add_done_callback(done)
    return d


async def import_files(
    db: Database,
    paths: Iterable[str | os.PathLike],
    *,
    iterations: int = DEFAULT_ITERATIONS,
    replace: bool = False,
    hosts: Iterable[str] | None = None,
    batch_size: int = BATCH_SIZE,
    workers: int | None = None,
    warn: Callable[[str], None] | None = None,
    progress: Callable[[int, float | None], None] | None = None,
) -> ImportReport:
    """Import every user of the XEP-0227 ``paths`` (files, or directories of ``*.xml`` files such as
    Prosody's per-user files) into ``db``.

    Existing accounts are skipped with a warning, or deleted and imported again with ``replace``. Users of
    domains not in ``hosts`` (when given) are skipped. ``progress(accounts, fraction)`` is called as the
    import goes. Each batch is one transaction; a :class:`ProvisionError` (refused or broken XML) stops the
    import, leaving the batches already written in place (importing again skips them).
    """
    importer = _Importer(db, iterations, replace, hosts, workers, warn)
    files = _expand(paths)
    sizes = [max(f.stat().st_size, 1) for f in files]
    total, done_before = sum(sizes), 0
    started = time.monotonic()
    # Parsing allocates millions of short-lived objects: collect the young generation less often (the
    # trees are acyclic and freed by reference counting); restored below.
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], 50_000), *thresholds[1:])
    try:
        for path, size in zip(files, sizes, strict=True):
            read = [0]

            def seen_bytes(n: int, read: list[int] = read) -> None:
                read[0] = n

            for host, user_el in iter_users(path, warn=importer.note, progress=seen_bytes):
                if importer.add(host, user_el) >= batch_size:
                    await importer.flush()
                    if progress is not None:
                        progress(importer.report.imported + importer.report.skipped,
                                 (done_before + min(read[0], size)) / total)
            done_before += size
        await importer.flush()
        await importer.wait()
    finally:
        gc.set_threshold(*thresholds)
        await importer.close()
    report = importer.report
    report.seconds = time.monotonic() - started
    if progress is not None:
        progress(report.imported + report.skipped, 1.0)
    return report


class _Importer:
    """Batches accounts; derives passwords on a thread pool; keeps one write in flight while parsing."""

    def __init__(self, db: Database, iterations: int, replace: bool, hosts: Iterable[str] | None,
                 workers: int | None, warn: Callable[[str], None] | None) -> None:
        self.db = db
        self.iterations = iterations
        self.replace = replace
        self.allowed = {nameprep(h) for h in hosts} if hosts is not None else None
        self.report = ImportReport()
        self.now = int(time.time())
        self._say = warn or (lambda message: None)
        self._batch: list[Account] = []
        self._seen: set[tuple[str, str]] = set()
        self._writing: Deferred | None = None
        self._executor = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2, thread_name_prefix="pbkdf2")

    def note(self, message: str) -> None:
        """Count a warning; print the first few of each kind."""
        kind = _kind(message)
        self.report.warnings[kind] += 1
        if self.report.warnings[kind] <= WARNINGS_SHOWN:
            self._say(message)

    def add(self, host: str, user_el: Element) -> int:
        """Convert and queue one user; returns the batch length."""
        account = account_from_element(host, user_el, self.note, self.now)
        if account is None:
            self.report.skipped += 1
            return len(self._batch)
        jid, key = f"{account.user}@{account.domain}", (account.domain, account.user)
        if self.allowed is not None and account.domain not in self.allowed:
            self.report.skipped += 1
            self.note(f"skipped {jid}: {account.domain} is not a hosted domain")
        elif key in self._seen:
            self.report.skipped += 1
            self.note(f"skipped {jid}: it appears twice in the input")
        else:
            self._seen.add(key)
            if not account.credentials and not account.password:
                self.note(f"{jid}: no credentials: set a password (xmppcluster passwd) before it can log in")
            self._batch.append(account)
        return len(self._batch)

    async def flush(self) -> None:
        """Derive the batch's missing credentials, wait for the previous write, start this one."""
        batch, self._batch = self._batch, []
        if not batch:
            return
        needing = [a for a in batch if a.password]
        self.report.derived += sum(1 for a in needing if len(a.credentials) < len(SCRAM_HASHES))
        for d in [_deferred(self._executor.submit(_derive_password, a, self.iterations)) for a in needing]:
            await d
        await self.wait()
        self._writing = Deferred.fromCoroutine(
            self.db.interaction(_write_batch, batch, self.replace, self.now))

    async def wait(self) -> None:
        """Wait for the write in flight and account for it."""
        writing, self._writing = self._writing, None
        if writing is None:
            return
        written, replaced, skipped = await writing
        self.report.imported += written
        self.report.replaced += replaced
        self.report.skipped += len(skipped)
        for jid in skipped:
            self.note(f"skipped {jid}: the account exists (use --replace to overwrite it)")

    async def close(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            try:
                await writing
            except Exception:  # the error that got us here is the one reported
                pass
        self._executor.shutdown(wait=True, cancel_futures=True)


#: How many warnings of one kind are printed (the rest are counted in the summary).
WARNINGS_SHOWN = 5


def _kind(message: str) -> str:
    """A warning's category for the summary: the account named at its start dropped."""
    head, sep, rest = message.partition(": ")
    if not sep or head == "not imported":
        return message
    if head.startswith("skipped "):
        return f"skipped: {rest}"
    return rest


def _expand(paths: Iterable[str | os.PathLike]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(x for x in p.iterdir() if x.suffix == ".xml" and x.is_file())
            if not found:
                raise ProvisionError(f"{p}: no *.xml files in this directory")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise ProvisionError(f"{p}: no such file or directory")
    return files
