"""Byte quotas in storage, on SQLite and PostgreSQL: offline queues and pending subscription requests."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.support.databases import PostgresBackend, SQLiteBackend, make_storage
from xmppcluster.storage.offline import OfflineQueueFull, OfflineStore
from xmppcluster.storage.roster import PendingTooLarge, RosterStore


class QuotaTestsMixin:
    backend: str

    async def setup(self):
        storage = await make_storage(self, self.backend)
        await storage.accounts.create("bob", "localhost", "pw")
        return storage

    async def test_offline_bytes(self) -> None:
        store = OfflineStore((await self.setup()).db)
        for n in range(3):
            await store.store("bob", "localhost", "a@b", b"<m>" + b"\xc3\xa9" * 100 + b"</m>", limit=10, now=n,
                              max_bytes=700)
        with self.assertRaises(OfflineQueueFull):  # 3 x 207 bytes stored: 207 more do not fit in 700
            await store.store("bob", "localhost", "a@b", b"<m>" + b"\xc3\xa9" * 100 + b"</m>", limit=10, now=3,
                              max_bytes=700)
        await store.store("bob", "localhost", "a@b", b"<m/>", limit=10, now=3, max_bytes=700)  # 4 bytes do
        await store.store("bob", "localhost", "a@b", b"x" * 5000, limit=10, now=4)  # 0: no byte limit
        self.assertEqual(await store.count("bob", "localhost"), 5)

    async def test_pending_bytes(self) -> None:
        store = RosterStore((await self.setup()).db)

        def pending(xml):
            return lambda item, before: (item, xml)

        big = "<presence type='subscribe'><status>" + "\u00e9" * 100 + "</status></presence>"  # 254 bytes
        await store.modify("bob", "localhost", "a@x", pending(big), max_pending_bytes=600)
        await store.modify("bob", "localhost", "b@x", pending(big), max_pending_bytes=600)
        with self.assertRaises(PendingTooLarge):
            await store.modify("bob", "localhost", "c@x", pending(big), max_pending_bytes=600)
        # Replacing a's own request is measured without its old text; a small one still fits.
        await store.modify("bob", "localhost", "a@x", pending(big + " "), max_pending_bytes=600)
        await store.modify("bob", "localhost", "c@x", pending("<presence type='subscribe'/>"), max_pending_bytes=600)
        self.assertEqual(sorted(await store.pending("bob", "localhost")), ["a@x", "b@x", "c@x"])


class SQLiteQuotaTests(QuotaTestsMixin, SQLiteBackend, TestCase):
    pass


class PostgresQuotaTests(QuotaTestsMixin, PostgresBackend, TestCase):
    pass
