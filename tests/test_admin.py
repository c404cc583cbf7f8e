"""``xmppcluster adduser | passwd | deluser | users`` on SQLite and PostgreSQL, and each error exit."""

from __future__ import annotations

import getpass
import io
import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

from tests.support.databases import PostgresBackend, SQLiteBackend, storage_uri
from xmppcluster.auth.credentials import verify_password
from xmppcluster.config import parse_text
from xmppcluster.ops import admin
from xmppcluster.ops.cli import build_parser
from xmppcluster.storage import open_storage

PASSWORD = "correct horse battery staple"


class _Stdin(io.StringIO):
    def __init__(self, text: str = "", tty: bool = False) -> None:
        super().__init__(text)
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class AdminTestsMixin:
    """In-process: ``admin.run`` with a real parsed Config and replaced standard streams."""

    backend: str

    def setUp(self) -> None:
        self.uri = storage_uri(self, self.backend)
        self.config = self.make_config()

    def make_config(self, extra: str = ""):
        return parse_text(f"--virt-hosts = localhost, example.com\n--user-db-uri = {self.uri}\n{extra}")

    async def cli(self, *argv: str, stdin: str = "", tty: bool = False, config=None) -> tuple[int, str, str]:
        args = build_parser().parse_args(list(argv))
        out, err = io.StringIO(), io.StringIO()
        code = await admin.run(args, config or self.config, stdin=_Stdin(stdin, tty), stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    async def credentials(self, user: str, domain: str = "localhost", mechanism: str = "SCRAM-SHA-256"):
        storage = await open_storage(self.uri)
        try:
            return await storage.accounts.get_credentials(user, domain, mechanism)
        finally:
            await storage.close()

    async def test_adduser(self) -> None:
        code, out, err = await self.cli("adduser", "Alice@LocalHost", "--password-stdin", stdin=PASSWORD + "\nrest\n")
        self.assertEqual((code, out, err), (0, "created alice@localhost\n", ""))
        for mechanism in ("SCRAM-SHA-1", "SCRAM-SHA-256"):
            creds = await self.credentials("alice", mechanism=mechanism)
            self.assertTrue(verify_password(creds, PASSWORD))
            self.assertEqual(creds.iterations, 10000)  # the default of --scram-iterations

    async def test_adduser_exists(self) -> None:
        await self.cli("adduser", "alice@localhost", "--password-stdin", stdin=PASSWORD)
        code, out, err = await self.cli("adduser", "alice@localhost", "--password-stdin", stdin="other")
        self.assertEqual((code, out, err), (1, "", "xmppcluster: alice@localhost already exists\n"))
        self.assertTrue(verify_password(await self.credentials("alice"), PASSWORD))

    async def test_users(self) -> None:
        for jid in ("bob@localhost", "alice@localhost", "carol@example.com"):
            self.assertEqual((await self.cli("adduser", jid, "--password-stdin", stdin=PASSWORD))[0], 0)
        code, out, err = await self.cli("users")
        self.assertEqual((code, out, err), (0, "alice@localhost\nbob@localhost\ncarol@example.com\n", ""))
        self.assertEqual(await self.cli("users", "LOCALHOST"), (0, "alice@localhost\nbob@localhost\n", ""))
        code, out, err = await self.cli("users", "example.net")
        self.assertEqual((code, out, err), (1, "", "xmppcluster: unknown domain example.net (not in --virt-hosts)\n"))

    async def test_passwd(self) -> None:
        await self.cli("adduser", "alice@localhost", "--password-stdin", stdin=PASSWORD)
        code, out, err = await self.cli("passwd", "alice@localhost", "--password-stdin", stdin="new one\n")
        self.assertEqual((code, out, err), (0, "password changed for alice@localhost\n", ""))
        creds = await self.credentials("alice")
        self.assertTrue(verify_password(creds, "new one"))
        self.assertFalse(verify_password(creds, PASSWORD))

    async def test_passwd_no_such_user(self) -> None:
        code, out, err = await self.cli("passwd", "bob@localhost", "--password-stdin", stdin="x")
        self.assertEqual((code, out, err), (1, "", "xmppcluster: no such user bob@localhost\n"))

    async def test_deluser(self) -> None:
        await self.cli("adduser", "alice@localhost", "--password-stdin", stdin=PASSWORD)
        self.assertEqual(await self.cli("deluser", "alice@localhost"), (0, "deleted alice@localhost\n", ""))
        self.assertEqual(await self.cli("users"), (0, "", ""))
        self.assertIsNone(await self.credentials("alice"))
        code, out, err = await self.cli("deluser", "alice@localhost")
        self.assertEqual((code, out, err), (1, "", "xmppcluster: no such user alice@localhost\n"))

    async def test_unknown_domain(self) -> None:
        for command in (("adduser", "--password-stdin"), ("passwd", "--password-stdin"), ("deluser",)):
            code, out, err = await self.cli(command[0], "alice@example.net", *command[1:], stdin=PASSWORD)
            self.assertEqual((code, err), (1, "xmppcluster: unknown domain example.net (not in --virt-hosts)\n"))
        self.assertEqual(await self.cli("users"), (0, "", ""))

    async def test_scram_iterations_from_config(self) -> None:
        config = self.make_config("--scram-iterations = 5000\n")
        await self.cli("adduser", "alice@localhost", "--password-stdin", stdin=PASSWORD, config=config)
        self.assertEqual((await self.credentials("alice")).iterations, 5000)


class SQLiteAdminTests(AdminTestsMixin, SQLiteBackend, TestCase):
    async def test_bad_jid(self) -> None:
        too_long = "x" * 1100 + "@localhost"
        for jid in ("alice", "@localhost", "alice@localhost/res", "a b@localhost", "a@b@c", "", too_long):
            code, out, err = await self.cli("adduser", jid, "--password-stdin", stdin=PASSWORD)
            self.assertEqual(code, 1, jid)
            self.assertTrue(err.startswith("xmppcluster: bad JID "), err)
            self.assertEqual(err.count("\n"), 1)
        code, out, err = await self.cli("users", "a@localhost")
        self.assertEqual((code, err), (1, "xmppcluster: bad domain 'a@localhost'\n"))
        self.assertEqual(await self.cli("users"), (0, "", ""))

    async def test_password_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(PASSWORD + "\r\nsecond line\n")
        self.assertEqual((await self.cli("adduser", "alice@localhost", "--password-file", path))[0], 0)
        self.assertTrue(verify_password(await self.credentials("alice"), PASSWORD))
        code, out, err = await self.cli("passwd", "alice@localhost", "--password-file", path + ".missing")
        self.assertEqual(code, 1)
        self.assertIn("cannot read password file", err)

    async def test_empty_password_refused(self) -> None:
        for stdin in ("", "\n", "\u00ad\n"):  # SASLprep maps a soft hyphen to nothing
            code, out, err = await self.cli("adduser", "alice@localhost", "--password-stdin", stdin=stdin)
            self.assertEqual((code, out, err), (1, "", "xmppcluster: empty password refused\n"))
        code, out, err = await self.cli("adduser", "alice@localhost", "--password-stdin", stdin="bad\u0007")
        self.assertEqual((code, err), (1, "xmppcluster: password contains a character SASLprep prohibits\n"))
        self.assertEqual(await self.cli("users"), (0, "", ""))

    async def test_no_password_source(self) -> None:
        code, out, err = await self.cli("adduser", "alice@localhost", stdin=PASSWORD)
        self.assertEqual(code, 1)
        self.assertIn("use --password-stdin or --password-file", err)
        self.assertEqual(await self.cli("users"), (0, "", ""))

    async def test_prompt(self) -> None:
        answers = [PASSWORD, PASSWORD, "one", "two"]
        prompts = []

        def fake_getpass(prompt: str = "Password: ") -> str:
            prompts.append(prompt)
            return answers.pop(0)

        self.patch(getpass, "getpass", fake_getpass)
        self.assertEqual((await self.cli("adduser", "alice@localhost", tty=True))[0], 0)
        self.assertEqual(prompts, ["Password: ", "Password (again): "])
        self.assertTrue(verify_password(await self.credentials("alice"), PASSWORD))
        code, out, err = await self.cli("passwd", "alice@localhost", tty=True)
        self.assertEqual((code, err), (1, "xmppcluster: passwords do not match\n"))
        self.assertTrue(verify_password(await self.credentials("alice"), PASSWORD))


class PostgresAdminTests(AdminTestsMixin, PostgresBackend, TestCase):
    async def test_database_unreachable(self) -> None:
        self.uri = "postgresql://u:sekrit@127.0.0.1:1/db?connect_timeout=2"
        code, out, err = await self.cli("users", config=self.make_config())
        self.assertEqual(code, 1)
        self.assertTrue(err.startswith("xmppcluster: cannot open database postgresql://u:***@127.0.0.1:1/db"), err)
        self.assertEqual(err.count("\n"), 1)
        self.assertNotIn("sekrit", err)


class ProcessTestsMixin:
    """The real console script (``main`` under ``task.react``), as a subprocess."""

    backend: str

    def xmppcluster(self, *argv: str, stdin: str = "", config: str | None = None) -> tuple[int, str, str]:
        command = [os.path.join(os.path.dirname(sys.executable), "xmppcluster"), "-c", config or self.config, *argv]
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60)
        return done.returncode, done.stdout, done.stderr

    def setUp(self) -> None:
        self.config = os.path.abspath(self.mktemp())
        with open(self.config, "w") as f:
            f.write(f"--virt-hosts = localhost\n--user-db-uri = {storage_uri(self, self.backend)}\n")
        os.chmod(self.config, 0o600)

    def test_commands(self) -> None:
        self.assertEqual(self.xmppcluster("adduser", "alice@localhost", "--password-stdin", stdin=PASSWORD),
                         (0, "created alice@localhost\n", ""))
        self.assertEqual(self.xmppcluster("adduser", "alice@localhost", "--password-stdin", stdin=PASSWORD),
                         (1, "", "xmppcluster: alice@localhost already exists\n"))
        self.assertEqual(self.xmppcluster("passwd", "alice@localhost", "--password-stdin", stdin="x"),
                         (0, "password changed for alice@localhost\n", ""))
        self.assertEqual(self.xmppcluster("users", "localhost"), (0, "alice@localhost\n", ""))
        self.assertEqual(self.xmppcluster("deluser", "alice@localhost"), (0, "deleted alice@localhost\n", ""))
        self.assertEqual(self.xmppcluster("deluser", "alice@localhost"),
                         (1, "", "xmppcluster: no such user alice@localhost\n"))
        self.assertEqual(self.xmppcluster("users"), (0, "", ""))


class SQLiteProcessTests(ProcessTestsMixin, SQLiteBackend, TestCase):
    def test_exit_codes(self) -> None:
        self.assertEqual(self.xmppcluster("adduser", "alice", "--password-stdin", stdin="x")[0], 1)
        self.assertEqual(self.xmppcluster("adduser", "a@example.net", "--password-stdin", stdin="x"),
                         (1, "", "xmppcluster: unknown domain example.net (not in --virt-hosts)\n"))
        bad = self.mktemp()
        with open(bad, "w") as f:
            f.write("--virt-hosts = localhost\n--user-db-uri = mysql://nope\n")
        code, out, err = self.xmppcluster("users", config=bad)
        self.assertEqual((code, out, err.count("\n")), (2, "", 1))
        self.assertTrue(err.startswith("xmppcluster: "), err)

    def test_config_warnings_shown(self) -> None:
        with open(self.config, "a") as f:
            f.write("--user-db = pgsql\n")
        code, out, err = self.xmppcluster("users")
        self.assertEqual((code, out), (0, ""))
        self.assertTrue(err.startswith("xmppcluster: warning: "), err)


class PostgresProcessTests(ProcessTestsMixin, PostgresBackend, TestCase):
    pass
