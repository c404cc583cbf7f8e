"""XEP-0227 import of files written by a real Prosody 0.12 (prosody-migrator to mod_storage_xep0227).

``tests/fixtures/prosody-0.12/`` was produced by ``tests/fixtures/make-prosody-export`` (see the README
there); the live tests run that script again against the installed Prosody and import its fresh output.
Salts, keys and the order of attributes and roster items differ between runs, so XML is compared in
canonical form (C14N 2.0) and roster groups as sets.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from tests.support.databases import PostgresBackend, SQLiteBackend, make_storage
from tests.test_provision import ProvisionTestsMixin
from xmppcluster.auth.credentials import verify_password
from xmppcluster.ops import provision
from xmppcluster.storage.account_data import PrivateStore, VCardStore
from xmppcluster.storage.blocking import BlockingStore
from xmppcluster.storage.offline import OfflineStore
from xmppcluster.storage.roster import RosterItem, RosterStore

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = FIXTURES / "prosody-0.12"
SCRIPT = FIXTURES / "make-prosody-export"
XEP0227_MODULE = Path("/usr/lib/prosody/modules/mod_storage_xep0227.lua")
DOMAIN = "example.com"
ITERATIONS = 64
LIVE_TIMEOUT = 60

#: The passwords make-prosody-export registers with prosodyctl.
PASSWORDS = {
    "alice": "Wonderland-1865",
    "bob": "b0b & <builder>",
    "carol": "crème brûlée",
    "dave": "dave-pass-4",
    "erin": "erin-offline-5",
}
#: Every roster as the clients made it on Prosody (groups sorted).
ROSTERS = {
    "alice": {
        "bob@example.com": RosterItem("bob@example.com", "Bob", "both", groups=("Friends", "Work")),
        "carol@example.com": RosterItem("carol@example.com", "Carol", "to", groups=("Work",)),
        "dave@example.com": RosterItem("dave@example.com", "Dave", "from", groups=("Café",)),
        "erin@example.com": RosterItem("erin@example.com", "Erin 'E' & Co", "none", ask=True),
        "frank@elsewhere.example": RosterItem("frank@elsewhere.example", "Frank", "none"),
    },
    "bob": {"alice@example.com": RosterItem("alice@example.com", "Alice <3", "both")},
    "carol": {"alice@example.com": RosterItem("alice@example.com", None, "from", ask=True)},
    "dave": {"alice@example.com": RosterItem("alice@example.com", None, "to")},
    "erin": {},
}
#: Unanswered subscription requests (Pending In): user -> the contacts who asked.
PENDING = {"alice": ["carol@example.com"], "erin": ["alice@example.com"]}
VCARD = ("<vCard xmlns='vcard-temp'><FN>Alice Liddell</FN><N><FAMILY>Liddell</FAMILY><GIVEN>Alice</GIVEN></N>"
         "<NICKNAME>alice</NICKNAME><EMAIL><INTERNET/><USERID>alice@example.com</USERID></EMAIL>"
         "<DESC>Curiouser &amp; curiouser &lt;3</DESC></vCard>")
PRIVATE = {
    "storage:bookmarks": "<storage xmlns='storage:bookmarks'><conference jid='tea@conference.example.com'"
                         " name='Mad Tea &amp; Party' autojoin='true'><nick>alice</nick></conference></storage>",
    "urn:example:prefs": "<prefs xmlns='urn:example:prefs'><theme>dark</theme></prefs>",
}


def canonical(xml: str | bytes) -> str:
    """C14N 2.0 of ``xml``: attribute order and quoting no longer matter."""
    return ET.canonicalize(xml.decode() if isinstance(xml, bytes) else xml)


def sorted_groups(item: RosterItem) -> RosterItem:
    return dataclasses.replace(item, groups=tuple(sorted(item.groups)))


def accounts_in(path: Path) -> dict[str, provision.Account]:
    """``{jid: Account}`` read from a XEP-0227 file or a directory of them, with the importer's parser."""
    found = {}
    for file in sorted(path.glob("*.xml")) if path.is_dir() else [path]:
        for host, user in provision.iter_users(file):
            account = provision.account_from_element(host, user, lambda message: None, now=0)
            found[f"{account.user}@{account.domain}"] = account
    return found


def users_and_rosters(path: Path) -> dict[str, dict[str, RosterItem]]:
    """``{jid: {contact: item}}`` of every user in ``path`` (groups sorted)."""
    return {jid: {contact: RosterItem(contact, name, subscription, bool(ask), bool(approved),
                                      tuple(sorted(json.loads(groups))))
                  for contact, name, subscription, ask, approved, groups in account.roster}
            for jid, account in accounts_in(path).items()}


def live_skip_reason() -> str | None:
    """Why the live Prosody test cannot run here, or None."""
    missing = [tool for tool in ("prosody", "prosodyctl", "prosody-migrator") if shutil.which(tool) is None]
    if not XEP0227_MODULE.exists():
        missing.append(str(XEP0227_MODULE))
    if missing:
        return f"Prosody is not installed here (missing: {', '.join(missing)}); apt-get install prosody"
    return None


def run_export_script(output: Path) -> str:
    """Run make-prosody-export into ``output`` (blocking); its output. No prosody is left running."""
    process = subprocess.Popen([sys.executable, str(SCRIPT), str(output)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    timed_out = False
    try:
        out, _ = process.communicate(timeout=LIVE_TIMEOUT)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(process.pid, signal.SIGTERM)  # the script stops its prosody on SIGTERM
        try:
            out, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # prosody is in the same process group
            out, _ = process.communicate()
    left = stop_leftover_prosody(out)
    if timed_out:
        raise AssertionError(f"make-prosody-export took over {LIVE_TIMEOUT} s:\n{out}")
    if left:
        raise AssertionError(f"make-prosody-export left prosody running (pid {left}; killed):\n{out}")
    if process.returncode == 3:
        raise SkipTest(f"make-prosody-export cannot run: {out.strip()}")
    if process.returncode != 0:
        raise AssertionError(f"make-prosody-export failed ({process.returncode}):\n{out}")
    return out


def stop_leftover_prosody(out: str) -> list[int]:
    """Kill any prosody the script reported starting that still runs (it never should); their pids."""
    killed = []
    for pid in map(int, re.findall(r"prosody started \(pid (\d+)\)", out)):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"prosody" in cmdline and b"prosody-export-" in cmdline:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


class ProsodyImportTestsMixin:
    backend: str
    sasl = ProvisionTestsMixin.sasl

    async def imported(self, path: Path):
        storage = await make_storage(self, self.backend)
        warnings: list[str] = []
        report = await provision.import_files(storage.db, [path], iterations=ITERATIONS, warn=warnings.append)
        self.assertEqual(warnings, [])
        self.assertEqual((report.imported, report.skipped, report.derived), (5, 0, 0))
        return storage

    async def check_imported(self, storage) -> None:
        """Everything make-prosody-export put into Prosody, as xmppcluster now has it."""
        self.assertEqual(await storage.accounts.list(DOMAIN), [f"{user}@{DOMAIN}" for user in sorted(PASSWORDS)])
        for user, password in PASSWORDS.items():
            # Prosody's internal_hashed: SCRAM-SHA-1, 10000 iterations, kept as they are; nothing else.
            creds = await storage.accounts.get_credentials(user, DOMAIN, "SCRAM-SHA-1")
            self.assertEqual(creds.iterations, 10000)
            self.assertTrue(verify_password(creds, password), user)
            self.assertIsNone(await storage.accounts.get_credentials(user, DOMAIN, "SCRAM-SHA-256"))
            self.assertEqual(await self.sasl(storage, "SCRAM-SHA-1", user, password), "success", user)
            self.assertEqual(await self.sasl(storage, "SCRAM-SHA-1", user, password + "x"), "failure", user)
        rosters = RosterStore(storage.db)
        for user, expected in ROSTERS.items():
            roster = await rosters.get(user, DOMAIN)
            self.assertEqual({jid: sorted_groups(item) for jid, item in roster.items.items()}, expected, user)
            pending = await rosters.pending(user, DOMAIN)
            self.assertEqual(sorted(pending), PENDING.get(user, []), user)
            for contact, stanza in pending.items():
                self.assertEqual(canonical(stanza), canonical(
                    f"<presence xmlns='jabber:client' type='subscribe' from='{contact}' to='{user}@{DOMAIN}'/>"))
        vcards, private = VCardStore(storage.db), PrivateStore(storage.db)
        self.assertEqual(canonical(await vcards.get("alice", DOMAIN)), canonical(VCARD))
        for namespace, xml in PRIVATE.items():
            self.assertEqual(canonical(await private.get("alice", DOMAIN, namespace)), canonical(xml))
        for user in ("bob", "carol", "dave", "erin"):
            self.assertIsNone(await vcards.get(user, DOMAIN))
            self.assertIsNone(await private.get(user, DOMAIN, "storage:bookmarks"))
        # Prosody 0.12's mod_storage_xep0227 cannot write these stores (see the fixture's README).
        self.assertEqual(await OfflineStore(storage.db).list("erin", DOMAIN), [])
        self.assertEqual(await BlockingStore(storage.db).get("alice", DOMAIN), [])

    async def check_plain_logins(self, storage) -> None:
        """PLAIN works with Prosody's keys, and the first PLAIN login makes SCRAM-SHA-256 work too."""
        for user, password in PASSWORDS.items():
            self.assertEqual(await self.sasl(storage, "SCRAM-SHA-256", user, password), "failure", user)
            self.assertEqual(await self.sasl(storage, "PLAIN", user, password + "x"), "failure", user)
            self.assertEqual(await self.sasl(storage, "PLAIN", user, password), "success", user)
            self.assertEqual(await self.sasl(storage, "SCRAM-SHA-256", user, password), "success", user)
            self.assertEqual(await self.sasl(storage, "SCRAM-SHA-1", user, password), "success", user)

    async def check_export(self, storage, source: Path) -> None:
        """Our export holds the same users, credentials and rosters; export -> import -> export is stable."""
        out = io.BytesIO()
        await provision.export_database(storage.db, out)
        exported = Path(self.mktemp())
        exported.write_bytes(out.getvalue())
        self.assertEqual(users_and_rosters(exported), users_and_rosters(source))
        self.assertEqual(users_and_rosters(exported), {f"{user}@{DOMAIN}": roster for user, roster in ROSTERS.items()})
        prosody = accounts_in(source)
        for jid, account in accounts_in(exported).items():
            # Prosody's SCRAM-SHA-1 salt, iteration count and keys go out as they came in.
            self.assertEqual(account.credentials, prosody[jid].credentials)
            self.assertEqual(list(account.credentials), ["SCRAM-SHA-1"])
            self.assertEqual(sorted(contact for contact, _ in account.pending), PENDING.get(account.user, []))
        again = await make_storage(self, self.backend)
        report = await provision.import_files(again.db, [exported], iterations=ITERATIONS)
        self.assertEqual(report.imported, 5)
        second = io.BytesIO()
        await provision.export_database(again.db, second)
        self.assertEqual(second.getvalue(), out.getvalue())

    async def test_fixture_imports(self) -> None:
        storage = await self.imported(FIXTURE)
        await self.check_imported(storage)
        await self.check_plain_logins(storage)

    async def test_fixture_export_after_import(self) -> None:
        storage = await self.imported(FIXTURE)
        await self.check_export(storage, FIXTURE)

    async def test_live_prosody_export_imports(self) -> None:
        """make-prosody-export against the installed Prosody, then import its fresh output."""
        reason = live_skip_reason()
        if reason:
            print(f"\nSKIPPED live Prosody test: {reason}", file=sys.stderr)
            raise SkipTest(reason)
        output = Path(self.mktemp())
        started = time.monotonic()
        out = await deferToThread(run_export_script, output)
        seconds = time.monotonic() - started
        self.assertEqual(sorted(p.name for p in output.iterdir()),
                         [f"{user}@{DOMAIN}.xml" for user in sorted(PASSWORDS)])
        self.assertIn("prosody stopped (exit status 0)", out)
        self.assertIn("internal storage: offline ['erin.list'], blocklist ['alice.dat']", out)
        self.assertIn("internal -> xep0227 copied: accounts, roster, vcard, private\n", out)
        if "Prosody 0.12." in out:
            for store in ("blocklist", "offline-archive"):
                self.assertRegex(out, rf"could not write store {store} to xep0227: .*unsupported-datastore")
        storage = await self.imported(output)
        await self.check_imported(storage)
        await self.check_export(storage, output)
        await self.check_plain_logins(storage)
        print(f"\n[{self.backend}] make-prosody-export ran in {seconds:.1f} s", file=sys.stderr)


class SQLiteProsodyImportTests(ProsodyImportTestsMixin, SQLiteBackend, TestCase):
    pass


class PostgresProsodyImportTests(ProsodyImportTestsMixin, PostgresBackend, TestCase):
    pass


class FixtureTests(TestCase):
    """The committed files are what mod_storage_xep0227 writes: one complete document per user."""

    def test_layout(self) -> None:
        files = sorted(FIXTURE.glob("*.xml"))
        self.assertEqual([f.name for f in files], [f"{user}@{DOMAIN}.xml" for user in sorted(PASSWORDS)])
        for path in files:
            root = ET.parse(path).getroot()
            self.assertEqual(root.tag, "{urn:xmpp:pie:0}server-data")
            (host,) = root
            self.assertEqual((host.tag, host.get("jid")), ("{urn:xmpp:pie:0}host", DOMAIN))
            (user,) = host
            self.assertEqual((user.tag, f"{user.get('name')}@{DOMAIN}.xml"), ("{urn:xmpp:pie:0}user", path.name))
            tags = {child.tag for child in user}
            self.assertIn("{urn:xmpp:pie:0#scram}scram-credentials", tags)
            # What Prosody 0.12 does not export: offline messages, blocklist (privacy lists), plaintext passwords.
            self.assertNotIn("{urn:xmpp:pie:0}offline-messages", tags)
            self.assertNotIn("{jabber:iq:privacy}query", tags)
            self.assertIsNone(user.get("password"))
        alice = ET.parse(FIXTURE / f"alice@{DOMAIN}.xml").getroot()
        # Pending In as Prosody writes it: a <presence/> without a namespace of its own.
        self.assertIsNotNone(alice.find("*/*/{urn:xmpp:pie:0}presence[@type='subscribe']"))
