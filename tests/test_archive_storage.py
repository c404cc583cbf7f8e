"""The message archive table (migration 0009) on SQLite and PostgreSQL: batched inserts, paging forwards and
backwards through 1,000 rows, every filter, unknown ids refused, rows gone with the account."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.support.databases import PostgresBackend, SQLiteBackend, make_storage
from xmppcluster.storage.archive import (
    IN,
    OUT,
    ArchivedMessage,
    ArchivePrefs,
    ArchivePrefsStore,
    ArchiveQuery,
    ArchiveStore,
    UnknownArchiveId,
)


def row(n: int, *, user: str = "alice", with_jid: str = "bob@localhost", resource: str = "") -> ArchivedMessage:
    return ArchivedMessage(user, "localhost", f"id{n:05d}", 1_000_000 + n, with_jid, resource, IN if n % 2 else OUT,
                           f"<message xmlns='jabber:client'><body>{n}</body></message>".encode())


class ArchiveStorageMixin:
    backend: str

    async def store(self) -> ArchiveStore:
        storage = await make_storage(self, self.backend)
        await storage.accounts.create("alice", "localhost", "pw")
        await storage.accounts.create("bob", "localhost", "pw")
        self.storage = storage
        return ArchiveStore(storage.db)

    async def test_batches_skip_unknown_accounts(self) -> None:
        archive = await self.store()
        stored = await archive.add([row(1), row(2, user="nobody"), row(3, user="bob")])
        self.assertEqual(stored, 2)
        self.assertEqual(await archive.count("alice", "localhost"), 1)
        self.assertEqual(await archive.count("nobody", "localhost"), 0)

    async def test_pages_forwards_and_backwards_through_1000(self) -> None:
        archive = await self.store()
        await archive.add([row(n) for n in range(1000)])
        seen, after = [], None
        while True:
            page = await archive.query("alice", "localhost", ArchiveQuery(after=after, max=250))
            self.assertEqual(page.count, 1000)
            seen += [item.id for item in page.items]
            if page.complete:
                break
            after = page.items[-1].id
        self.assertEqual(seen, [f"id{n:05d}" for n in range(1000)])
        back, before = [], ""
        while True:
            page = await archive.query("alice", "localhost", ArchiveQuery(before=before, max=300))
            back = [item.id for item in page.items] + back
            if page.complete:
                break
            before = page.items[0].id
        self.assertEqual(back, seen)
        self.assertEqual(len(page.items), 100)  # the first page, reached backwards
        self.assertEqual(page.items[0].stanza, b"<message xmlns='jabber:client'><body>0</body></message>")

    async def test_filters(self) -> None:
        archive = await self.store()
        await archive.add([row(n, with_jid="bob@localhost" if n < 10 else "carol@example.com",
                               resource="phone" if n % 3 == 0 else "") for n in range(20)])

        async def ids(**kw) -> list[int]:
            page = await archive.query("alice", "localhost", ArchiveQuery(**kw))
            return [int(item.id[2:]) for item in page.items]

        self.assertEqual(await ids(with_jid="carol@example.com"), list(range(10, 20)))
        self.assertEqual(await ids(with_jid="bob@localhost", with_resource="phone"), [0, 3, 6, 9])
        self.assertEqual(await ids(start=1_000_005, end=1_000_007), [5, 6, 7])
        self.assertEqual(await ids(after_id="id00015"), [16, 17, 18, 19])
        self.assertEqual(await ids(before_id="id00002"), [0, 1])
        self.assertEqual(await ids(after_id="id00002", before_id="id00005"), [3, 4])
        self.assertEqual(await ids(ids=["id00004", "id00001", "missing"]), [1, 4])
        self.assertEqual(await ids(ids=[]), [])
        self.assertEqual(await ids(with_jid="carol@example.com", before="", max=3), [17, 18, 19])
        page = await archive.query("alice", "localhost", ArchiveQuery(max=0))
        self.assertEqual((page.items, page.count), ([], 20))
        self.assertEqual(await ids(with_jid="nobody@localhost"), [])
        for bad in (dict(after="nope"), dict(before="nope"), dict(after_id="nope"), dict(before_id="nope")):
            with self.assertRaises(UnknownArchiveId):
                await archive.query("alice", "localhost", ArchiveQuery(**bad))
        # another account's ids are unknown here
        await archive.add([row(99, user="bob")])
        with self.assertRaises(UnknownArchiveId):
            await archive.query("alice", "localhost", ArchiveQuery(after="id00099"))

    async def test_rows_go_with_the_account_and_purge(self) -> None:
        archive = await self.store()
        await archive.add([row(n) for n in range(5)] + [row(n, user="bob") for n in range(5)])
        self.assertEqual(await archive.purge("bob", "localhost", before=1_000_002), 2)
        self.assertEqual(await archive.count("bob", "localhost"), 3)
        await self.storage.accounts.delete("alice", "localhost")
        self.assertEqual(await archive.count("alice", "localhost"), 0)
        self.assertEqual(await archive.purge("bob", "localhost"), 3)


    async def test_roster_condition_decided_at_write(self) -> None:
        archive = await self.store()
        await self.storage.db.execute(
            "INSERT INTO roster_items (domain, username, contact, subscription) VALUES (?, ?, ?, ?)",
            ("localhost", "alice", "bob@localhost", "both"))
        rows = [row(1), row(2, with_jid="stranger@example.com")]
        stored = await archive.add([ArchivedMessage(**{**r.__dict__, "if_in_roster": True}) for r in rows])
        self.assertEqual(stored, 1)
        page = await archive.query("alice", "localhost", ArchiveQuery())
        self.assertEqual([item.with_jid for item in page.items], ["bob@localhost"])

    async def test_preferences(self) -> None:
        await self.store()
        prefs = ArchivePrefsStore(self.storage.db)
        self.assertIsNone(await prefs.get("alice", "localhost"))
        await prefs.set("alice", "localhost", ArchivePrefs("roster", frozenset({"a@x"}), frozenset()), 10.0)
        await prefs.set("alice", "localhost", ArchivePrefs("never", frozenset({"b@x"}), frozenset({"c@x/r"})), 20.0)
        await prefs.set("bob", "localhost", ArchivePrefs(), 15.0)
        self.assertEqual(await prefs.get("alice", "localhost"),
                         ArchivePrefs("never", frozenset({"b@x"}), frozenset({"c@x/r"})))
        self.assertEqual([(jid, at) for jid, _, at in await prefs.changed_since(16.0)], [("alice@localhost", 20.0)])
        await self.storage.accounts.delete("alice", "localhost")
        self.assertIsNone(await prefs.get("alice", "localhost"))


class SQLiteArchiveStorageTests(ArchiveStorageMixin, SQLiteBackend, TestCase):
    pass


class PostgresArchiveStorageTests(ArchiveStorageMixin, PostgresBackend, TestCase):
    pass
