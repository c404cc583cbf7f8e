"""Virtual hosts: accounts and rosters apart per domain, and per-domain registration, anonymous login, user limits."""

from __future__ import annotations

import argparse
import io
import os
import xml.etree.ElementTree as ET

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from tests.clients.raw import SASL, RawClient, mechanisms, q
from tests.support.server import RunningServer, start_server, test_ca
from xmppcluster.config import parse_text
from xmppcluster.ops import admin

A, B = "a.example", "b.example"
REGISTER = "jabber:iq:register"
ROSTER = "jabber:iq:roster"
VHOSTS = f"--virt-hosts={A}:register:anon:max-users=2,{B}:-register:-anon\n"


def stanza_error(reply: ET.Element) -> str | None:
    error = reply.find("{jabber:client}error")
    if error is None:
        return None
    return next((child.tag.split("}")[1] for child in error if "xmpp-stanzas" in child.tag and
                 not child.tag.endswith("}text")), None)


class VhostTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.running: RunningServer = await start_server(self, VHOSTS, domains=(A, B))
        self.ca_file = os.path.join(self.running.directory, "ca.pem")
        with open(self.ca_file, "wb") as f:
            f.write(test_ca().root_pem())
        await self.running.add_user(f"alice@{A}", "password of a")
        await self.running.add_user(f"alice@{B}", "password of b")

    def client(self, domain: str) -> RawClient:
        client = RawClient(self.running.ports["c2s"]["plain"], domain=domain, ca_file=self.ca_file)
        self.addCleanup(client.close)
        return client

    def secure_features(self, domain: str) -> tuple[RawClient, ET.Element]:
        client = self.client(domain)
        client.open()
        return client, client.starttls()

    def login(self, domain: str, password: str) -> str | None:
        client, _ = self.secure_features(domain)
        result = client.scram("alice", password)
        if result.tag != q(SASL, "success"):
            return None
        return client.bind("r")

    async def test_same_user_name_is_two_accounts(self) -> None:
        results = await deferToThread(lambda: [self.login(d, p) for d in (A, B)
                                               for p in ("password of a", "password of b")])
        a_with_a, a_with_b, b_with_a, b_with_b = results
        self.assertTrue(a_with_a.startswith(f"alice@{A}/"))
        self.assertIsNone(a_with_b)
        self.assertIsNone(b_with_a)
        self.assertTrue(b_with_b.startswith(f"alice@{B}/"))
        accounts = self.running.server.storage.accounts
        self.assertEqual(await accounts.list(A), [f"alice@{A}"])
        self.assertEqual(await accounts.list(B), [f"alice@{B}"])

    async def test_anonymous_per_domain(self) -> None:
        def scenario():
            found = {}
            for domain in (A, B):
                client, features = self.secure_features(domain)
                client.send(f"<auth xmlns='{SASL}' mechanism='ANONYMOUS'/>")
                found[domain] = (mechanisms(features), client.next().tag)
                if found[domain][1] == q(SASL, "success"):
                    found[domain] += (client.bind("anon"),)
            return found

        found = await deferToThread(scenario)
        self.assertIn("ANONYMOUS", found[A][0])
        self.assertEqual(found[A][1], q(SASL, "success"))
        self.assertIn(f"@{A}/anon", found[A][2])
        self.assertNotIn("ANONYMOUS", found[B][0])
        self.assertEqual(found[B][1], q(SASL, "failure"))

    async def test_registration_per_domain_and_max_users(self) -> None:
        def register(domain: str, user: str) -> tuple[bool, str | None]:
            client, features = self.secure_features(domain)
            offered = features.find("{http://jabber.org/features/iq-register}register") is not None
            client.send(f"<iq type='set' id='reg'><query xmlns='{REGISTER}'><username>{user}</username>"
                        "<password>a long enough password</password></query></iq>")
            reply = client.until("{jabber:client}iq")
            return offered, None if reply.get("type") == "result" else stanza_error(reply)

        def scenario():
            return [register(A, "bob"), register(A, "carol"), register(B, "bob")]

        (offered_a, bob_a), (_, carol_a), (offered_b, bob_b) = await deferToThread(scenario)
        self.assertTrue(offered_a)
        self.assertIsNone(bob_a)  # alice + bob = 2 = max-users
        self.assertEqual(carol_a, "not-allowed")
        self.assertFalse(offered_b)
        self.assertEqual(bob_b, "service-unavailable")
        accounts = self.running.server.storage.accounts
        self.assertEqual(sorted(await accounts.list(A)), [f"alice@{A}", f"bob@{A}"])
        self.assertEqual(await accounts.list(B), [f"alice@{B}"])

    async def test_rosters_apart(self) -> None:
        if ROSTER not in self.running.server.modules:
            raise SkipTest("the roster module is not loaded")

        def roster(domain: str, password: str, add: str | None) -> list[str]:
            client, _ = self.secure_features(domain)
            assert client.scram("alice", password).tag == q(SASL, "success")
            client.bind("roster")
            if add is not None:
                client.send(f"<iq type='set' id='set'><query xmlns='{ROSTER}'><item jid='{add}'/></query></iq>")
                while True:
                    reply = client.until("{jabber:client}iq")
                    if reply.get("id") == "set":
                        break
                assert reply.get("type") == "result", ET.tostring(reply)
            client.send(f"<iq type='get' id='get'><query xmlns='{ROSTER}'/></iq>")
            while True:
                reply = client.until("{jabber:client}iq")
                if reply.get("id") == "get":
                    return sorted(item.get("jid") for item in reply.iter(f"{{{ROSTER}}}item"))

        a_items = await deferToThread(roster, A, "password of a", f"friend@{A}")
        b_items = await deferToThread(roster, B, "password of b", None)
        self.assertEqual(a_items, [f"friend@{A}"])
        self.assertEqual(b_items, [])


class AdminMaxUsersTests(TestCase):
    async def test_adduser_respects_max_users(self) -> None:
        db = os.path.abspath(self.mktemp())
        config = parse_text(f"--virt-hosts={A}:max-users=1,{B}\n--user-db-uri=sqlite:///{db}\n"
                            "--scram-iterations=4096\n")

        async def adduser(jid: str) -> tuple[int, str]:
            args = argparse.Namespace(command="adduser", jid=jid, password_stdin=True, password_file=None)
            err = io.StringIO()
            code = await admin.run(args, config, stdin=io.StringIO("some password\n"), stdout=io.StringIO(),
                                   stderr=err)
            return code, err.getvalue()

        self.assertEqual((await adduser(f"alice@{A}"))[0], 0)
        code, err = await adduser(f"bob@{A}")
        self.assertEqual(code, 1)
        self.assertIn("max-users", err)
        self.assertEqual((await adduser(f"bob@{B}"))[0], 0)  # B is unlimited


class PerVhostModuleTests(TestCase):
    """``vhost-man/<domain>/sm-plugins``: a module on for one vhost and off for another."""

    async def test_module_off_for_one_vhost_only(self) -> None:
        from twisted.internet.threads import deferToThread

        from tests.clients.raw import RawClient
        from tests.support.server import start_server
        from tests.support.slix import ca_file

        running = await start_server(self, "vhost-man/b.example/sm-plugins[s]=-vcard-temp,-urn:xmpp:ping\n",
                                     domains=("a.example", "b.example"))
        for domain in ("a.example", "b.example"):
            await running.add_user(f"user@{domain}", "pw")

        def ask(domain: str) -> dict:
            client = RawClient(running.ports["c2s"]["plain"], domain=domain, ca_file=ca_file(running))
            try:
                client.login("user", "pw")
                answers = {}
                for ident, payload in (("v", "<vCard xmlns='vcard-temp'/>"), ("p", "<ping xmlns='urn:xmpp:ping'/>"),
                                       ("d", "<query xmlns='http://jabber.org/protocol/disco#info'/>")):
                    to = f"user@{domain}" if ident == "v" else domain
                    client.send(f"<iq type='get' id='{ident}' to='{to}'>{payload}</iq>")
                    while True:
                        reply = client.until("{jabber:client}iq")
                        if reply.get("id") == ident:
                            answers[ident] = reply
                            break
                return answers
            finally:
                client.close()

        a = await deferToThread(ask, "a.example")
        b = await deferToThread(ask, "b.example")
        self.assertEqual((a["v"].get("type"), a["p"].get("type")), ("result", "result"))
        self.assertEqual((b["v"].get("type"), b["p"].get("type")), ("error", "error"))
        stanzas = "{urn:ietf:params:xml:ns:xmpp-stanzas}service-unavailable"
        self.assertIsNotNone(b["v"].find(f".//{stanzas}"))

        def features(reply) -> set:
            return {f.get("var") for f in reply.iter("{http://jabber.org/protocol/disco#info}feature")}

        self.assertIn("urn:xmpp:ping", features(a["d"]))
        self.assertIn("vcard-temp", features(a["d"]))
        self.assertNotIn("urn:xmpp:ping", features(b["d"]))
        self.assertNotIn("vcard-temp", features(b["d"]))

    def test_unknown_domain_refused(self) -> None:
        from xmppcluster.config import ConfigError, parse_text

        error = self.assertRaises(ConfigError, parse_text, "vhost-man/nowhere.example/sm-plugins[s]=-disco\n", "x")
        self.assertIn("x:1:", str(error))
        self.assertIn("--virt-hosts", str(error))
