"""Storage layer and account store, on SQLite and PostgreSQL (see tests/support/databases.py)."""

from __future__ import annotations

import os
import time

from twisted.enterprise import adbapi
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.databases import (
    TEST_ITERATIONS,
    PostgresBackend,
    SQLiteBackend,
    make_storage,
    new_pg_schema,
    pg_connect,
    storage_uri,
)
from xmppcluster.auth.credentials import verify_password
from xmppcluster.storage import AccountExists, NoSuchAccount, Storage, StorageError, open_storage
from xmppcluster.storage.accounts import AccountStore
from xmppcluster.storage.database import Database, parse_uri, redact, to_pyformat
from xmppcluster.storage.migrations import adapt, load_migrations, migrate, split_statements

PASSWORD = "Plain-Text-Sentinel-7391"


class SQLTranslationTests(SynchronousTestCase):
    def test_placeholders(self) -> None:
        self.assertEqual(
            to_pyformat("SELECT a FROM t WHERE b = ? AND c = ?"), "SELECT a FROM t WHERE b = %s AND c = %s"
        )

    def test_quotes_and_percent(self) -> None:
        self.assertEqual(to_pyformat("SELECT '?', '5%' WHERE x LIKE ?"), "SELECT '?', '5%%' WHERE x LIKE %s")
        self.assertEqual(to_pyformat('SELECT "a?b" FROM t WHERE x % 2 = ?'), 'SELECT "a?b" FROM t WHERE x %% 2 = %s')

    def test_parse_uri(self) -> None:
        self.assertEqual(parse_uri("sqlite:///data/x.sqlite"), ("sqlite", "data/x.sqlite"))
        self.assertEqual(parse_uri("sqlite:////var/lib/x.sqlite"), ("sqlite", "/var/lib/x.sqlite"))
        self.assertEqual(
            parse_uri("postgresql://u@h:5433/db?options=-csearch_path%3Ds"),
            ("postgresql", "postgresql://u@h:5433/db?options=-csearch_path%3Ds"),
        )
        self.assertEqual(
            parse_uri("jdbc:postgresql://h/db?user=u&autoCreateUser=true"), ("postgresql", "postgresql://h/db?user=u")
        )
        for bad in ("mysql://h/db", "data/x.sqlite", "sqlite://", "sqlite://relative"):
            self.assertRaises(StorageError, parse_uri, bad)

    def test_redact(self) -> None:
        self.assertEqual(redact("postgresql://u:pw@h/db"), "postgresql://u:***@h/db")
        self.assertEqual(redact("postgresql://h/db?user=u&password=pw"), "postgresql://h/db?user=u&password=%2A%2A%2A")
        self.assertNotIn("pw", redact("postgresql://h/db?password=pw"))

    def test_migration_text(self) -> None:
        script = "-- comment; here\nCREATE TABLE a (x BLOB);\n\nCREATE TABLE b (y TEXT)  ;\n"
        self.assertEqual(split_statements(script), ["CREATE TABLE a (x BLOB)", "CREATE TABLE b (y TEXT)"])
        self.assertEqual(adapt("x BLOB, blobby TEXT", "postgresql"), "x BYTEA, blobby TEXT")
        self.assertEqual(adapt("x BLOB", "sqlite"), "x BLOB")

    def test_shipped_migrations(self) -> None:
        for dialect in ("sqlite", "postgresql"):
            migrations = load_migrations(dialect)
            self.assertEqual([m.version for m in migrations], list(range(1, len(migrations) + 1)))
            self.assertEqual(migrations[0].name, "accounts")
        self.assertIn("BYTEA", " ".join(load_migrations("postgresql")[0].statements))


class AccountTestsMixin:
    """Run on each backend by the concrete classes below."""

    backend: str

    async def storage(self, **kwargs):
        return await make_storage(self, self.backend, **kwargs)

    async def test_create_exists_list_count(self) -> None:
        s = await self.storage()
        self.assertFalse(await s.accounts.exists("alice", "example.com"))
        await s.accounts.create("alice", "example.com", PASSWORD)
        await s.accounts.create("bob", "example.com", "other")
        await s.accounts.create("carol", "example.org", "third")
        self.assertTrue(await s.accounts.exists("alice", "example.com"))
        self.assertFalse(await s.accounts.exists("alice", "example.org"))
        self.assertEqual(await s.accounts.list("example.com"), ["alice@example.com", "bob@example.com"])
        self.assertEqual(await s.accounts.list(), ["alice@example.com", "bob@example.com", "carol@example.org"])
        self.assertEqual(await s.accounts.list("nowhere.test"), [])
        self.assertEqual(await s.accounts.count("example.com"), 2)
        self.assertEqual(await s.accounts.count("nowhere.test"), 0)

    async def test_duplicate(self) -> None:
        s = await self.storage()
        await s.accounts.create("alice", "example.com", PASSWORD)
        with self.assertRaises(AccountExists) as caught:
            await s.accounts.create("alice", "example.com", "again")
        self.assertEqual(str(caught.exception), "alice@example.com already exists")
        creds = await s.accounts.get_credentials("alice", "example.com", "SCRAM-SHA-1")
        self.assertTrue(verify_password(creds, PASSWORD))  # the first password survived
        self.assertEqual(await s.accounts.count("example.com"), 1)

    async def test_credentials(self) -> None:
        s = await self.storage()
        await s.accounts.create("alice", "example.com", PASSWORD)
        for mechanism in ("SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"):
            creds = await s.accounts.get_credentials("alice", "example.com", mechanism)
            self.assertEqual(creds.mechanism, mechanism.removesuffix("-PLUS"))
            self.assertEqual(creds.iterations, TEST_ITERATIONS)
            self.assertEqual(len(creds.salt), 16)
            self.assertIsInstance(creds.stored_key, bytes)
            self.assertTrue(verify_password(creds, PASSWORD))
            self.assertFalse(verify_password(creds, PASSWORD + "x"))
        sha1 = await s.accounts.get_credentials("alice", "example.com", "SCRAM-SHA-1")
        sha256 = await s.accounts.get_credentials("alice", "example.com", "SCRAM-SHA-256")
        self.assertEqual((len(sha1.stored_key), len(sha256.stored_key)), (20, 32))
        self.assertNotEqual(sha1.salt, sha256.salt)
        self.assertIsNone(await s.accounts.get_credentials("alice", "example.com", "DIGEST-MD5"))
        self.assertIsNone(await s.accounts.get_credentials("nobody", "example.com", "SCRAM-SHA-1"))

    async def test_iterations_configurable(self) -> None:
        s = await self.storage(scram_iterations=100)
        await s.accounts.create("alice", "example.com", PASSWORD)
        creds = await s.accounts.get_credentials("alice", "example.com", "SCRAM-SHA-256")
        self.assertEqual(creds.iterations, 100)
        self.assertTrue(verify_password(creds, PASSWORD))

    async def test_no_plaintext_stored(self) -> None:
        s = await self.storage()
        await s.accounts.create("alice", "example.com", PASSWORD)
        await s.accounts.set_password("alice", "example.com", PASSWORD + "2")
        rows = await s.db.query("SELECT * FROM account_credentials")
        rows += await s.db.query("SELECT * FROM accounts")
        self.assertEqual(len(rows), 3)
        for row in rows:
            for value in row:
                if isinstance(value, (bytes, memoryview)):
                    self.assertNotIn(PASSWORD.encode(), bytes(value))
                else:
                    self.assertNotIn(PASSWORD, str(value))

    async def test_set_password(self) -> None:
        s = await self.storage()
        await s.accounts.create("alice", "example.com", PASSWORD)
        await s.accounts.set_password("alice", "example.com", "new secret")
        for mechanism in ("SCRAM-SHA-1", "SCRAM-SHA-256"):
            creds = await s.accounts.get_credentials("alice", "example.com", mechanism)
            self.assertTrue(verify_password(creds, "new secret"))
            self.assertFalse(verify_password(creds, PASSWORD))
        rows = await s.db.query("SELECT COUNT(*) FROM account_credentials")
        self.assertEqual(rows[0][0], 2)
        with self.assertRaises(NoSuchAccount):
            await s.accounts.set_password("bob", "example.com", "x")
        self.assertFalse(await s.accounts.exists("bob", "example.com"))

    async def test_delete(self) -> None:
        s = await self.storage()
        await s.accounts.create("alice", "example.com", PASSWORD)
        await s.accounts.create("bob", "example.com", "other")
        await s.accounts.delete("alice", "example.com")
        self.assertFalse(await s.accounts.exists("alice", "example.com"))
        self.assertIsNone(await s.accounts.get_credentials("alice", "example.com", "SCRAM-SHA-1"))
        rows = await s.db.query("SELECT username FROM account_credentials")
        self.assertEqual(rows, [("bob",), ("bob",)])  # cascaded
        with self.assertRaises(NoSuchAccount) as caught:
            await s.accounts.delete("alice", "example.com")
        self.assertEqual(str(caught.exception), "no such user alice@example.com")
        await s.accounts.create("alice", "example.com", "reborn")  # the name is free again
        self.assertEqual(await s.accounts.list("example.com"), ["alice@example.com", "bob@example.com"])

    async def test_later_tables_cascade(self) -> None:
        """A later feature's table referencing accounts loses its rows with the account."""
        s = await self.storage()
        await s.db.execute(
            "CREATE TABLE notes (domain TEXT NOT NULL, username TEXT NOT NULL, body BLOB NOT NULL,"
            " FOREIGN KEY (domain, username) REFERENCES accounts (domain, username) ON DELETE CASCADE)"
            .replace("BLOB", "BYTEA" if s.db.dialect == "postgresql" else "BLOB")
        )
        await s.accounts.create("alice", "example.com", PASSWORD)
        await s.db.execute("INSERT INTO notes VALUES (?, ?, ?)", ("example.com", "alice", s.db.blob(b"\x00\xff")))
        self.assertEqual(await s.db.query("SELECT body FROM notes"), [(b"\x00\xff",)])
        with self.assertRaises(s.db.IntegrityError):  # foreign keys are enforced
            await s.db.execute("INSERT INTO notes VALUES (?, ?, ?)", ("example.com", "ghost", s.db.blob(b"")))
        await s.accounts.delete("alice", "example.com")
        self.assertEqual(await s.db.query("SELECT COUNT(*) FROM notes"), [(0,)])

    async def test_database_layer(self) -> None:
        s = await self.storage()
        self.assertEqual(s.db.dialect, self.backend)
        await s.db.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)")
        self.assertEqual(await s.db.execute("INSERT INTO kv VALUES (?, ?)", ("a?", "100%")), 1)
        rows = await s.db.query("SELECT k, v, '?', '5%' FROM kv WHERE v LIKE ?", ("100%",))
        self.assertEqual(rows, [("a?", "100%", "?", "5%")])

        def txn(cursor, key):
            cursor.execute("INSERT INTO kv VALUES (?, ?)", (key, "x"))
            raise ValueError("abort")

        with self.assertRaises(ValueError):
            await s.db.interaction(txn, "b")
        self.assertEqual(await s.db.query("SELECT k FROM kv ORDER BY k"), [("a?",)])  # rolled back

        def count(cursor, prefix):
            cursor.execute("INSERT INTO kv VALUES (?, ?)", (prefix + "1", "y"))
            return cursor.execute("SELECT COUNT(*) FROM kv").fetchone()[0]

        self.assertEqual(await s.db.interaction(count, "c"), 2)
        self.assertEqual(await s.db.execute("UPDATE kv SET v = ?", ("z",), idempotent=True), 2)

    async def test_migrations_idempotent(self) -> None:
        uri = storage_uri(self, self.backend)
        first = await make_storage(self, self.backend, uri=uri)
        await first.accounts.create("alice", "example.com", PASSWORD)
        await first.close()
        second = await make_storage(self, self.backend, uri=uri)
        self.assertTrue(await second.accounts.exists("alice", "example.com"))
        versions = await second.db.query("SELECT version, name FROM schema_version ORDER BY version")
        expected = [(m.version, m.name) for m in load_migrations(self.backend)]
        self.assertEqual(versions, expected)

    async def test_newer_schema_refused(self) -> None:
        uri = storage_uri(self, self.backend)
        s = await make_storage(self, self.backend, uri=uri)
        await s.db.execute("INSERT INTO schema_version VALUES (?, ?, ?)", (999, "future", int(time.time())))
        await s.close()
        with self.assertRaises(StorageError) as caught:
            await open_storage(uri)
        self.assertIn("newer", str(caught.exception))

    async def test_closed(self) -> None:
        s = await self.storage()
        await s.close()
        with self.assertRaises(StorageError):
            await s.accounts.exists("alice", "example.com")


class SQLiteAccountTests(AccountTestsMixin, SQLiteBackend, TestCase):
    async def test_creates_parent_directory_and_wal(self) -> None:
        base = os.path.abspath(self.mktemp())
        s = await make_storage(self, "sqlite", uri=f"sqlite:///{base}/data/sub/db.sqlite")
        self.assertTrue(os.path.isfile(f"{base}/data/sub/db.sqlite"))
        self.assertEqual(await s.db.query("PRAGMA journal_mode"), [("wal",)])
        self.assertEqual(await s.db.query("PRAGMA foreign_keys"), [(1,)])

    async def test_relative_uri(self) -> None:
        base = os.path.relpath(os.path.abspath(self.mktemp()))
        await make_storage(self, "sqlite", uri=f"sqlite:///{base}/rel.sqlite")
        self.assertTrue(os.path.isfile(os.path.join(base, "rel.sqlite")))

    async def test_unusable_path(self) -> None:
        blocker = os.path.abspath(self.mktemp())
        open(blocker, "w").close()
        with self.assertRaises(StorageError):
            await open_storage(f"sqlite:///{blocker}/db.sqlite")


class PostgresAccountTests(AccountTestsMixin, PostgresBackend, TestCase):
    def terminate(self, application_name: str) -> int:
        """Kill this test's server backends from another connection; wait until they are gone."""
        with pg_connect() as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                (application_name,),
            ).fetchall()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                left = conn.execute(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = %s", (application_name,)
                ).fetchone()[0]
                if not left:
                    break
                time.sleep(0.01)
        return len(rows)

    async def test_retry_after_terminated_connection(self) -> None:
        schema, uri = new_pg_schema(self)
        # One pool thread, so each call surely meets the connection that was killed.
        pool = adbapi.ConnectionPool("psycopg", parse_uri(uri)[1], cp_min=1, cp_max=1, cp_reconnect=True)
        db = Database(pool, "postgresql")
        self.addCleanup(lambda: ensureDeferred(db.close()))
        await migrate(db)
        s = Storage(db=db, accounts=AccountStore(db, TEST_ITERATIONS))
        await s.accounts.create("alice", "example.com", PASSWORD)
        self.assertGreaterEqual(self.terminate(schema), 1)
        # A read is retried once on a fresh connection, invisibly.
        self.assertTrue(await s.accounts.exists("alice", "example.com"))
        self.assertGreaterEqual(self.terminate(schema), 1)
        self.assertEqual(await s.accounts.list(), ["alice@example.com"])
        # A write not marked idempotent is not retried: the caller sees the loss.
        self.assertGreaterEqual(self.terminate(schema), 1)
        with self.assertRaises(adbapi.ConnectionLost):
            await s.db.execute("INSERT INTO accounts VALUES (?, ?, ?)", ("example.com", "bob", 0))
        self.assertEqual(await s.accounts.list(), ["alice@example.com"])  # and the pool recovered

    async def test_retry_with_several_dead_connections(self) -> None:
        """Every pooled connection dies at once (a server restart): each read still succeeds."""
        schema, uri = new_pg_schema(self)
        s = await make_storage(self, "postgresql", uri=uri)
        await s.accounts.create("alice", "example.com", PASSWORD)
        await gatherResults([ensureDeferred(s.db.query("SELECT pg_sleep(0.05)")) for _ in range(6)])
        self.assertGreaterEqual(self.terminate(schema), 3)
        for _ in range(8):
            self.assertTrue(await s.accounts.exists("alice", "example.com"))

    async def test_unreachable(self) -> None:
        with self.assertRaises(StorageError) as caught:
            await open_storage("postgresql://nobody:sekrit@127.0.0.1:1/none?connect_timeout=2")
        self.assertIn("cannot open database postgresql://nobody:***@127.0.0.1:1/none", str(caught.exception))
        self.assertNotIn("sekrit", str(caught.exception))


class SharedSecretTests(TestCase):
    """The SASL fake-salt key is one value per database, so every cluster node derives the same fake salts."""

    async def check(self, backend: str) -> None:
        from tests.support.databases import make_storage, storage_uri
        from xmppcluster.storage.secrets import shared_secret

        uri = storage_uri(self, backend)
        first = await make_storage(self, backend, uri=uri)
        second = await make_storage(self, backend, uri=uri)
        # Two nodes starting at the same moment: both ask before either has created the secret.
        a, b = await gatherResults([ensureDeferred(shared_secret(first.db, "sasl-fake-salt")),
                                    ensureDeferred(shared_secret(second.db, "sasl-fake-salt"))])
        self.assertEqual(a, b)
        for _ in range(5):
            name = f"race-{_}"
            values = await gatherResults([ensureDeferred(shared_secret(s.db, name)) for s in (first, second)])
            self.assertEqual(values[0], values[1])
        self.assertEqual(len(a), 32)
        self.assertNotEqual(a, await shared_secret(first.db, "another"))

    def test_sqlite(self):
        return ensureDeferred(self.check("sqlite"))

    def test_postgresql(self):
        return ensureDeferred(self.check("postgresql"))
