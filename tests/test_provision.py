"""XEP-0227 import/export (xmppcluster.ops.provision): round trip, Prosody-shaped input, safety, rate."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from tests.support.databases import PostgresBackend, SQLiteBackend, make_storage, storage_uri
from tests.test_sasl import ScramClient, auth, response, text
from xmppcluster.auth.credentials import verify_password
from xmppcluster.auth.sasl import AuthThrottle, ChannelInfo, SASLServer
from xmppcluster.ops import provision
from xmppcluster.storage.account_data import PrivateStore, VCardStore
from xmppcluster.storage.blocking import BlockingStore
from xmppcluster.storage.offline import OfflineStore
from xmppcluster.storage.roster import RosterItem, RosterStore

FIXTURE = Path(__file__).parent / "fixtures" / "prosody-export.xml"
BENCH = Path(__file__).resolve().parent.parent / "bench"


def write_synthetic(*args, **kw) -> None:
    """bench/xep0227.py's generator (bench/ is a directory of scripts, not a package)."""
    sys.path.insert(0, str(BENCH))
    try:
        import xep0227
    finally:
        sys.path.remove(str(BENCH))
    xep0227.write_synthetic(*args, **kw)
ITERATIONS = 64


def write(test: TestCase, name: str, data: str | bytes) -> Path:
    path = Path(test.mktemp()).with_suffix("") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def users_of(path: Path) -> list[tuple[str, str]]:
    return [(host, el["name"]) for host, el in provision.iter_users(path)]


class ProvisionTestsMixin:
    backend: str

    async def storage(self):
        return await make_storage(self, self.backend)

    async def import_(self, storage, *paths, **kw):
        warnings: list[str] = []
        kw.setdefault("iterations", ITERATIONS)
        report = await provision.import_files(storage.db, paths, warn=warnings.append, **kw)
        return report, warnings

    async def export(self, storage) -> bytes:
        out = io.BytesIO()
        await provision.export_database(storage.db, out)
        return out.getvalue()

    async def test_round_trip_is_byte_identical(self) -> None:
        first = await self.storage()
        report, warnings = await self.import_(first, FIXTURE)
        self.assertEqual((report.imported, report.skipped, report.derived), (4, 0, 2))
        self.assertIn("not imported: <pubsub xmlns='http://jabber.org/protocol/pubsub'/>", warnings)
        # Data written by the server itself, not only by an import.
        await OfflineStore(first.db).store("nurse", "example.com", "juliet@example.com/b",
                                           b"<message xmlns='jabber:client' to='nurse@example.com'><body>x</body>"
                                           b"<delay xmlns='urn:xmpp:delay' stamp='2024-01-01T00:00:00Z'/></message>",
                                           limit=10, now=1704067200)
        await first.accounts.create("zed", "other.example", "pw")
        exported = await self.export(first)
        second = await self.storage()
        report, _ = await self.import_(second, write(self, "a.xml", exported))
        self.assertEqual((report.imported, report.derived), (5, 0))
        self.assertEqual(await self.export(second), exported)
        doc = exported.decode()
        self.assertLess(doc.index("<host jid='example.com'>"), doc.index("<host jid='other.example'>"))
        self.assertLess(doc.index("<user name='juliet'>"), doc.index("<user name='nurse'>"))
        self.assertNotIn("password=", doc)  # never plaintext: we do not have it

    async def test_prosody_export_imports_and_authenticates(self) -> None:
        storage = await self.storage()
        await self.import_(storage, FIXTURE)
        # Plaintext password: both SCRAM credentials derived (PLAIN verification against either works).
        for mechanism in ("SCRAM-SHA-1", "SCRAM-SHA-256"):
            creds = await storage.accounts.get_credentials("romeo", "example.com", mechanism)
            self.assertEqual(creds.iterations, ITERATIONS)
            self.assertTrue(verify_password(creds, "wherefore-art-thou"))
            self.assertFalse(verify_password(creds, "wrong"))
        # SCRAM-SHA-1 only (as Prosody stores): kept as it is, SCRAM-SHA-256 absent.
        creds = await storage.accounts.get_credentials("juliet", "example.com", "SCRAM-SHA-1")
        self.assertEqual(creds.iterations, 10000)
        self.assertIsNone(await storage.accounts.get_credentials("juliet", "example.com", "SCRAM-SHA-256"))
        self.assertEqual(await self.sasl(storage, "SCRAM-SHA-1", "juliet", "r0m30!"), "success")
        self.assertEqual(await self.sasl(storage, "SCRAM-SHA-1", "juliet", "r0m3o"), "failure")
        # No SCRAM-SHA-256 keys until the password is known: the first PLAIN login derives them.
        self.assertEqual(await self.sasl(storage, "SCRAM-SHA-256", "juliet", "r0m30!"), "failure")
        self.assertEqual(await self.sasl(storage, "PLAIN", "juliet", "r0m30!"), "success")
        for mechanism in ("SCRAM-SHA-1", "SCRAM-SHA-256"):  # never fewer iterations than Prosody's keys had
            self.assertEqual((await storage.accounts.get_credentials("juliet", "example.com", mechanism)).iterations,
                             10000)
        self.assertEqual(await self.sasl(storage, "SCRAM-SHA-256", "juliet", "r0m30!"), "success")
        self.assertEqual(await self.sasl(storage, "SCRAM-SHA-1", "juliet", "r0m30!"), "success")
        self.assertEqual(await self.sasl(storage, "SCRAM-SHA-1", "nurse", "cr3am"), "success")
        # The account name is prepared (Tybalt -> tybalt); the default list's jid/deny items are the blocklist.
        self.assertEqual(await storage.accounts.list("example.com"),
                         ["juliet@example.com", "nurse@example.com", "romeo@example.com", "tybalt@example.com"])
        self.assertEqual(await BlockingStore(storage.db).get("tybalt", "example.com"),
                         ["montague.lit", "romeo@example.com"])
        roster = await RosterStore(storage.db).get("juliet", "example.com")
        self.assertGreater(roster.version, 0)
        self.assertEqual(roster.items["romeo@example.com"],
                         RosterItem("romeo@example.com", "Romeo", "both", groups=("Montagues", "Friends")))
        self.assertEqual(roster.items["mercutio@montague.lit"],
                         RosterItem("mercutio@montague.lit", None, "none", ask=True))
        pending = await RosterStore(storage.db).pending("juliet", "example.com")
        self.assertEqual(pending, {"tybalt@capulet.lit": "<presence xmlns='jabber:client' type='subscribe'"
                                                         " from='tybalt@capulet.lit' to='juliet@example.com'/>"})
        vcard = await VCardStore(storage.db).get("juliet", "example.com")
        self.assertTrue(vcard.startswith("<vCard xmlns='vcard-temp'><FN>Juliet Capulet</FN>"), vcard)
        private = PrivateStore(storage.db)
        self.assertIn("balcony@conference.example.com", await private.get("juliet", "example.com", "storage:bookmarks"))
        self.assertEqual(await private.get("juliet", "example.com", "exodus:prefs"),
                         "<exodus xmlns='exodus:prefs'><defaultnick>Juliet</defaultnick></exodus>")
        offline = await OfflineStore(storage.db).list("juliet", "example.com")
        self.assertEqual([(m.seq, m.stored_at, m.sender) for m in offline],
                         [(1, 1707946205, "romeo@example.com/orchard"), (2, 1707946300, "nurse@example.com/kitchen")])
        self.assertIn(b"<body>Madam! &amp; your mother calls.</body>", offline[1].stanza)

    async def sasl(self, storage, mechanism: str, user: str, password: str) -> str:
        """One SASL exchange against the imported credentials; the name of the final element."""
        from twisted.internet import reactor

        clock = task.Clock()  # failure delays (throttling) run on this clock, database lookups on the reactor
        server = SASLServer(domain="example.com", credentials=storage.accounts, channel=ChannelInfo(True),
                            peer="192.0.2.1", throttle=AuthThrottle(clock=clock), clock=clock,
                            log=Logger(observer=lambda event: None), iterations=ITERATIONS)

        async def send(element):
            d = Deferred.fromCoroutine(server.handle(element))
            while not d.called:
                await task.deferLater(reactor, 0.001)
                clock.advance(31)
            return await d

        if mechanism == "PLAIN":
            return (await send(auth("PLAIN", f"\0{user}\0{password}".encode()))).reply.name
        client = ScramClient(mechanism, user, password)
        challenge = await send(auth(mechanism, client.first()))
        if challenge.reply.name != "challenge":
            return challenge.reply.name
        return (await send(response(client.final(text(challenge.reply))))).reply.name

    async def test_existing_accounts_skipped_or_replaced(self) -> None:
        storage = await self.storage()
        await storage.accounts.create("romeo", "example.com", "old")
        report, warnings = await self.import_(storage, FIXTURE)
        self.assertEqual((report.imported, report.skipped), (3, 1))
        self.assertIn("skipped romeo@example.com: the account exists (use --replace to overwrite it)", warnings)
        creds = await storage.accounts.get_credentials("romeo", "example.com", "SCRAM-SHA-256")
        self.assertTrue(verify_password(creds, "old"))
        report, _ = await self.import_(storage, FIXTURE, replace=True)
        self.assertEqual((report.imported, report.replaced, report.skipped), (4, 4, 0))
        creds = await storage.accounts.get_credentials("romeo", "example.com", "SCRAM-SHA-256")
        self.assertTrue(verify_password(creds, "wherefore-art-thou"))
        self.assertEqual(len(await OfflineStore(storage.db).list("juliet", "example.com")), 2)  # not doubled

    async def test_directory_of_prosody_files_and_unhosted_domains(self) -> None:
        storage = await self.storage()
        one = write(self, "a@example.com.xml", "<server-data xmlns='urn:xmpp:pie:0'><host jid='example.com'>"
                                               "<user name='a' password='pa'/></host></server-data>")
        (one.parent / "b@example.net.xml").write_text("<server-data xmlns='urn:xmpp:pie:0'><host jid='example.net'>"
                                                      "<user name='b' password='pb'/></host></server-data>")
        (one.parent / "notes.txt").write_text("not XML")
        report, warnings = await self.import_(storage, one.parent, hosts=["example.com"])
        self.assertEqual((report.imported, report.skipped), (1, 1))
        self.assertIn("skipped b@example.net: example.net is not a hosted domain", warnings)
        self.assertEqual(await storage.accounts.list(), ["a@example.com"])

    async def test_measured_rate(self) -> None:
        """5,000 accounts with rosters of 20 (SCRAM credentials in the file): the rate is printed, not asserted."""
        storage = await self.storage()
        path = Path(self.mktemp())
        with path.open("wb") as f:
            write_synthetic(f, "example.com", 5000, roster_size=20, password="secret", iterations=ITERATIONS)
        report, _ = await self.import_(storage, path)
        self.assertEqual(report.imported, 5000)
        roster = await RosterStore(storage.db).get("user5000", "example.com")
        self.assertEqual(sorted(roster.items)[:2], ["user10@example.com", "user11@example.com"])
        started = time.monotonic()
        exported = await self.export(storage)
        seconds = time.monotonic() - started
        self.assertEqual(exported.count(b"<user "), 5000)
        print(f"\n[{self.backend}] import 5000 accounts x 20 roster items: {report.seconds:.2f} s = "
              f"{report.rate:,.0f} accounts/s; export {seconds:.2f} s = {5000 / seconds:,.0f} accounts/s",
              file=sys.stderr)


class SQLiteProvisionTests(ProvisionTestsMixin, SQLiteBackend, TestCase):
    pass


class PostgresProvisionTests(ProvisionTestsMixin, PostgresBackend, TestCase):
    pass


class ParserTests(TestCase):
    """The import parser: refused input, XInclude, streaming."""

    def refused(self, data: str, expected: str) -> None:
        path = write(self, "bad.xml", data)
        with self.assertRaises(provision.ProvisionError) as caught:
            list(provision.iter_users(path))
        self.assertIn(expected, str(caught.exception))

    def test_doctype_and_entities_refused(self) -> None:
        laughs = ("<?xml version='1.0'?><!DOCTYPE server-data [<!ENTITY a 'aaaaaaaaaa'>"
                  "<!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'>]>"
                  "<server-data xmlns='urn:xmpp:pie:0'><host jid='x'><user name='&b;'/></host></server-data>")
        self.refused(laughs, "refused: a DOCTYPE not allowed")
        external = ("<!DOCTYPE server-data SYSTEM 'file:///etc/passwd'>"
                    "<server-data xmlns='urn:xmpp:pie:0'/>")
        self.refused(external, "refused: a DOCTYPE not allowed")
        self.refused("<server-data xmlns='urn:xmpp:pie:0'><host jid='x'><user name='&xxe;'/></host></server-data>",
                     "refused: entity references are not allowed")

    def test_broken_input(self) -> None:
        self.refused("<server-data xmlns='urn:xmpp:pie:0'><host jid='x'><user name='a'></host>", "not well-formed")
        self.refused("<server-data xmlns='urn:xmpp:pie:0'><host jid='x'><user name='a'/>", "not well-formed")
        self.refused("<data xmlns='urn:xmpp:pie:0'/>", "expected <server-data|host|user/>")
        self.refused("<?xml version='1.0' encoding='ISO-8859-1'?><server-data xmlns='urn:xmpp:pie:0'/>", "UTF-8")

    def test_user_size_cap(self) -> None:
        self.patch(provision.reader, "MAX_USER_BYTES", 1000)
        self.refused("<server-data xmlns='urn:xmpp:pie:0'><host jid='x'><user name='a'>"
                     f"<vCard xmlns='vcard-temp'><FN>{'x' * 5000}</FN></vCard></user></host></server-data>",
                     "exceeds 1000 bytes")

    def test_users_stream_one_at_a_time(self) -> None:
        """A <host/> is a container, never built: users arrive while the file is still being read, and a host
        far larger than the per-user cap imports (each user is under it)."""
        self.patch(provision.reader, "MAX_USER_BYTES", 4096)
        users = "".join(f"<user name='u{n}' password='{'p' * 100}'/>" for n in range(3000))
        path = write(self, "big.xml", f"<server-data xmlns='urn:xmpp:pie:0'><host jid='x'>{users}</host>"
                                      "</server-data>")
        read: list[int] = []
        stream = provision.iter_users(path, progress=read.append)
        self.assertEqual(next(stream)[1]["name"], "u0")
        self.assertLess(read[-1], path.stat().st_size)  # the first user came before the end of the file
        self.assertEqual(sum(1 for _ in stream), 2999)

    def test_comments_and_processing_instructions_skipped(self) -> None:
        path = write(self, "c.xml", "<?xml version='1.0'?><!-- exported --><server-data xmlns='urn:xmpp:pie:0'>"
                                    "<?pi x?><host jid='x'><user name='a'><!-- note --><?pi y?>"
                                    "<vCard xmlns='vcard-temp'><FN>A</FN></vCard></user></host></server-data>")
        [(host, user)] = list(provision.iter_users(path))
        self.assertEqual((host, user["name"], [c.name for c in user.elements()]), ("x", "a", ["vCard"]))

    def test_xinclude_layout(self) -> None:
        main = write(self, "main.xml", "<server-data xmlns='urn:xmpp:pie:0' xmlns:xi='http://www.w3.org/2001/XInclude'>"
                                       "<xi:include href='capulet.com.xml'/></server-data>")
        (main.parent / "capulet.com.xml").write_text(
            "<host xmlns='urn:xmpp:pie:0' xmlns:xi='http://www.w3.org/2001/XInclude' jid='capulet.com'>"
            "<user name='juliet'/><xi:include href='capulet.com/nurse.xml'/></host>")
        (main.parent / "capulet.com").mkdir()
        (main.parent / "capulet.com" / "nurse.xml").write_text("<user xmlns='urn:xmpp:pie:0' name='nurse'/>")
        self.assertEqual(users_of(main), [("capulet.com", "juliet"), ("capulet.com", "nurse")])

    def test_xinclude_outside_the_directory_refused(self) -> None:
        for href in ("../secret.xml", "/etc/passwd", "file:///etc/passwd", "http://example.com/x.xml"):
            self.refused("<server-data xmlns='urn:xmpp:pie:0' xmlns:xi='http://www.w3.org/2001/XInclude'>"
                         f"<xi:include href='{href}'/></server-data>", "refused XInclude href")

    def test_unknown_elements_skipped(self) -> None:
        path = write(self, "x.xml", "<server-data xmlns='urn:xmpp:pie:0'><extra xmlns='urn:other'><user name='no'/>"
                                    "</extra><host jid='x'><user name='a'/><!-- comment --></host></server-data>")
        warnings: list[str] = []
        self.assertEqual([(h, u["name"]) for h, u in provision.iter_users(path, warn=warnings.append)], [("x", "a")])
        self.assertEqual(warnings, ["ignored <extra xmlns='urn:other'/> inside <server-data/>"])


class CommandLineTests(SQLiteBackend, TestCase):
    """``xmppcluster import`` / ``export`` as the console script."""

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        command = [os.path.join(os.path.dirname(sys.executable), "xmppcluster"), "-c", self.config, *argv]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        return done.returncode, done.stdout, done.stderr

    def setUp(self) -> None:
        self.config = os.path.abspath(self.mktemp())
        with open(self.config, "w") as f:
            f.write(f"--virt-hosts = example.com\n--user-db-uri = {storage_uri(self, self.backend)}\n")

    def test_import_then_export(self) -> None:
        code, out, err = self.run_cli("import", str(FIXTURE), "--progress")
        self.assertEqual(code, 0, err)
        self.assertIn("] 100.0% 4 accounts read", err)  # the progress bar, forced on (stderr is no terminal)
        self.assertIn("imported 4 accounts (0 replaced, 0 skipped, 2 from plaintext passwords)", err)
        self.assertNotIn("wherefore-art-thou", err)
        code, out, err = self.run_cli("import", str(FIXTURE))
        self.assertEqual(code, 0, err)
        self.assertNotIn("100.0%", err)
        self.assertIn("imported 0 accounts (0 replaced, 4 skipped", err)
        target = os.path.abspath(self.mktemp())
        code, out, err = self.run_cli("export", target)
        self.assertEqual((code, out, err), (0, "", f"exported 4 accounts to {target}\n"))
        self.assertEqual(os.stat(target).st_mode & 0o777, 0o600)
        self.assertEqual(self.run_cli("export", target)[0], 1)  # exists: --force needed
        code, out, err = self.run_cli("export", "--domain", "example.com")
        self.assertEqual(out, Path(target).read_text())
        bad = write(self, "bad.xml", "<!DOCTYPE x><server-data xmlns='urn:xmpp:pie:0'/>")
        code, out, err = self.run_cli("import", str(bad))
        self.assertEqual(code, 1)
        self.assertIn("refused: a DOCTYPE not allowed", err)
