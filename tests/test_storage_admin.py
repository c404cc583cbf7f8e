"""The administration tables (migration 0007) on SQLite and PostgreSQL: disabled accounts refused where SASL
reads credentials, re-enabled, gone with the account; the message of the day per domain."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.support.databases import PostgresBackend, SQLiteBackend, make_storage
from xmppcluster.auth.mechanisms import AccountDisabled
from xmppcluster.storage.errors import NoSuchAccount
from xmppcluster.storage.motd import MotdStore


class AdminStorageMixin:
    backend: str

    async def test_disable_reenable_and_delete(self) -> None:
        storage = await make_storage(self, self.backend)
        accounts = storage.accounts
        await accounts.create("carol", "localhost", "pw")
        await accounts.create("dave", "localhost", "pw")
        await accounts.set_disabled("carol", "localhost", True)
        await accounts.set_disabled("carol", "localhost", True)  # twice is once
        self.assertTrue(await accounts.is_disabled("carol", "localhost"))
        self.assertEqual(await accounts.disabled("localhost"), ["carol@localhost"])
        for mechanism in ("SCRAM-SHA-1", "SCRAM-SHA-256-PLUS"):
            with self.assertRaises(AccountDisabled) as raised:
                await accounts.get_credentials("carol", "localhost", mechanism)
            self.assertIsNotNone(raised.exception.credentials)  # refused only once the password is proven
        self.assertIsNotNone(await accounts.get_credentials("dave", "localhost", "SCRAM-SHA-256"))
        await accounts.set_disabled("carol", "localhost", False)
        self.assertIsNotNone(await accounts.get_credentials("carol", "localhost", "SCRAM-SHA-256"))
        with self.assertRaises(NoSuchAccount):
            await accounts.set_disabled("nobody", "localhost", True)
        await accounts.set_disabled("dave", "localhost", True)
        await accounts.delete("dave", "localhost")
        self.assertEqual(await storage.db.query("SELECT COUNT(*) FROM accounts_disabled"), [(0,)])

    async def test_message_of_the_day(self) -> None:
        storage = await make_storage(self, self.backend)
        motd = MotdStore(storage.db)
        self.assertIsNone(await motd.get("localhost"))
        await motd.set("localhost", "first")
        await motd.set("localhost", "second\nline")
        await motd.set("example.com", "other domain")
        self.assertEqual(await motd.get("localhost"), "second\nline")
        await motd.set("localhost", None)
        self.assertIsNone(await motd.get("localhost"))
        self.assertEqual(await motd.get("example.com"), "other domain")


class SQLiteAdminStorageTests(AdminStorageMixin, SQLiteBackend, TestCase):
    pass


class PostgresAdminStorageTests(AdminStorageMixin, PostgresBackend, TestCase):
    pass
