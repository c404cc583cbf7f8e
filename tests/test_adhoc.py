"""XEP-0050 ad-hoc commands and XEP-0133 administration: slixmpp (xep_0050, xep_0133) as the administrator
against a real node; logins by slixmpp and by the raw client show the effects; sessions of the framework on
a task.Clock."""

from __future__ import annotations

import json
import os
import sys

from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.clients.raw import SASL, RawClient, q
from tests.support.server import start_server
from tests.support.slix import ROOT, ca_file
from tests.test_message_rules import Client, error_condition, make_server
from xmppcluster.modules.adhoc import COMMANDS, MAX_SESSIONS_PER_USER, SESSION_TIMEOUT
from xmppcluster.modules.admin_commands import ADMIN, CLUSTER_STATUS

ADMIN_JID, ADMIN_PASSWORD = "admin@localhost", "admin pass"
MESSAGE = "{jabber:client}message"
ALL_COMMANDS = sorted([f"{ADMIN}#{name}" for name in (
    "add-user", "delete-user", "disable-user", "reenable-user", "end-user-session", "change-user-password",
    "get-registered-users-num", "get-online-users-num", "get-online-users-list", "announce", "set-motd",
    "edit-motd", "delete-motd")] + [CLUSTER_STATUS])


async def slix_admin(port: int, ca: str, jid: str, password: str, steps: list[dict], *,
                     domain_host: str = "127.0.0.1") -> dict:
    """Run tests/clients/slix_admin.py (slixmpp in a subprocess) as ``jid``; its JSON result."""
    spec = {"host": domain_host, "port": port, "ca": ca, "timeout": 40, "jid": jid, "password": password,
            "steps": steps}
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-m", "tests.clients.slix_admin", json.dumps(spec)], env=dict(os.environ), path=ROOT)
    if code != 0:
        raise AssertionError(f"slixmpp client failed ({code}): {err.decode(errors='replace')[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


def login_result(port: int, ca: str, user: str, password: str) -> str:
    """The SASL outcome of a raw SCRAM login: ``success`` or the failure condition."""
    client = RawClient(port, ca_file=ca)
    try:
        features = client.open()
        if features.find(q("urn:ietf:params:xml:ns:xmpp-tls", "starttls")) is not None:
            client.starttls()
        result = client.scram(user, password)
        if result.tag == q(SASL, "success"):
            return "success"
        return next(child.tag.split("}")[1] for child in result if not child.tag.endswith("}text"))
    finally:
        client.close()


def specific_condition(reply) -> str | None:
    """The XEP-0050 condition of an error reply."""
    for error in (child for child in reply.elements() if child.name == "error"):
        for child in error.elements():
            if child.uri == COMMANDS:
                return child.name
    return None


class AdminTestCase(TestCase):
    timeout = 120

    async def start(self, extra: str = ""):
        self.running = await start_server(self, f"--admins={ADMIN_JID}\n" + extra)
        await self.running.add_user(ADMIN_JID, ADMIN_PASSWORD)
        self.port = self.running.ports["c2s"]["plain"]
        self.ca = ca_file(self.running)
        return self.running

    async def admin(self, *steps: dict, jid: str = ADMIN_JID, password: str = ADMIN_PASSWORD) -> list[dict]:
        result = await slix_admin(self.port, self.ca, jid, password, list(steps))
        self.assertIsNone(result["error"], result)
        self.assertTrue(result["authenticated"], result)
        return result["steps"]

    async def can_login(self, jid: str, password: str) -> str:
        return await deferToThread(login_result, self.port, self.ca, jid.partition("@")[0], password)

    def raw(self, user: str, password: str, resource: str = "raw") -> RawClient:
        client = RawClient(self.port, ca_file=self.ca)
        self.addCleanup(client.close)
        client.login(user, password, resource)
        client.send("<presence/>")
        return client


class SlixmppAdminTests(AdminTestCase):
    async def test_add_change_password_and_delete_a_user(self) -> None:
        await self.start()
        info, listed, added, again, changed = await self.admin(
            {"info": True}, {"list": True},
            {"command": "add-user", "values": {"accountjid": "newbie@localhost", "password": "first pass",
                                               "password-verify": "first pass"}},
            {"command": "add-user", "values": {"accountjid": "newbie@localhost", "password": "x",
                                               "password-verify": "x"}},
            {"command": "change-user-password", "values": {"accountjid": "newbie@localhost",
                                                           "password": "second pass"}})
        self.assertIn(COMMANDS, info["features"])
        self.assertEqual(listed["items"], ALL_COMMANDS)
        self.assertEqual((added["status"], added["notes"]), ("completed", [["info", "Added newbie@localhost"]]))
        self.assertEqual(again["error"], "conflict")
        self.assertEqual(changed["status"], "completed")
        self.assertEqual(await self.can_login("newbie@localhost", "first pass"), "not-authorized")
        newbie = await slix_admin(self.port, self.ca, "newbie@localhost", "second pass", [])
        self.assertTrue(newbie["authenticated"], newbie)

        (deleted,) = await self.admin({"command": "delete-user",
                                       "values": {"accountjids": ["newbie@localhost", "ghost@localhost"]}})
        self.assertEqual(deleted["status"], "completed")
        self.assertEqual(deleted["notes"][0][0], "warn")
        self.assertIn("Deleted: newbie@localhost", deleted["notes"][0][1])
        self.assertIn("ghost@localhost", deleted["notes"][0][1])
        self.assertFalse(await self.running.server.storage.accounts.exists("newbie", "localhost"))
        gone = await slix_admin(self.port, self.ca, "newbie@localhost", "second pass", [])
        self.assertFalse(gone["authenticated"])
        self.assertEqual(gone["error"], "failed_auth")

    async def test_bad_forms_are_refused(self) -> None:
        await self.start()
        differ, foreign, bad_jid, weak = await self.admin(
            {"command": "add-user", "values": {"accountjid": "x@localhost", "password": "a", "password-verify": "b"}},
            {"command": "add-user", "values": {"accountjid": "x@elsewhere.example", "password": "a",
                                               "password-verify": "a"}},
            {"command": "add-user", "values": {"accountjid": "x@@localhost", "password": "a",
                                               "password-verify": "a"}},
            {"command": "change-user-password", "values": {"accountjid": ADMIN_JID, "password": ""}})
        self.assertEqual(differ["error"], "not-acceptable")
        self.assertEqual(foreign["error"], "not-acceptable")
        self.assertEqual(bad_jid["error"], "jid-malformed")
        self.assertEqual(weak["error"], "bad-request")
        self.assertEqual(await self.running.server.storage.accounts.list("localhost"), [ADMIN_JID])

    async def test_a_non_admin_is_refused(self) -> None:
        await self.start()
        await self.running.add_user("mallory@localhost", "mallory pass")
        info, listed, add, num = await self.admin(
            {"info": True}, {"list": True},
            {"command": "add-user", "values": {"accountjid": "evil@localhost", "password": "p",
                                               "password-verify": "p"}},
            {"command": "get-online-users-num"}, jid="mallory@localhost", password="mallory pass")
        self.assertIn(COMMANDS, info["features"])
        self.assertEqual(listed["items"], [])
        self.assertEqual(add["error"], "forbidden")
        self.assertEqual(num["error"], "forbidden")
        self.assertFalse(await self.running.server.storage.accounts.exists("evil", "localhost"))

    async def test_online_users_announce_and_motd(self) -> None:
        await self.start()
        for user in ("carol", "dave"):
            await self.running.add_user(f"{user}@localhost", "pw")
        carol = await deferToThread(self.raw, "carol", "pw")
        count, online, announced, motd = await self.admin(
            {"command": "get-online-users-num"},
            {"command": "get-online-users-list", "values": {"max_items": "25"}},
            {"command": "announce", "values": {"announcement": ["Maintenance at noon", "(one hour)"]}},
            {"command": "set-motd", "values": {"motd": ["Welcome to localhost"]}})
        self.assertEqual(count["fields"]["onlineusersnum"], ["2"])  # carol and the admin
        self.assertEqual(online["fields"]["onlineuserjids"], [ADMIN_JID, "carol@localhost"])
        self.assertEqual(announced["notes"], [["info", "Sent to 2 sessions"]])
        headline = await deferToThread(carol.until, MESSAGE)
        self.assertEqual((headline.get("type"), headline.get("from")), ("headline", "localhost"))
        self.assertEqual(headline.find("{jabber:client}body").text, "Maintenance at noon\n(one hour)")
        self.assertEqual(motd["status"], "completed")
        self.assertEqual(await self.running.server.storage.db.query("SELECT text FROM motd"),
                         [("Welcome to localhost",)])

        dave = await deferToThread(self.raw, "dave", "pw")
        greeting = await deferToThread(dave.until, MESSAGE)
        self.assertEqual(greeting.find("{jabber:client}body").text, "Welcome to localhost")
        edit_form, deleted = await self.admin({"command": "edit-motd", "values": {"motd": "New text"}},
                                              {"command": "delete-motd"})
        self.assertEqual(edit_form["status"], "completed")
        self.assertEqual(deleted["notes"], [["info", "Message of the day deleted"]])
        self.assertEqual(await self.running.server.storage.db.query("SELECT text FROM motd"), [])

    async def test_disable_and_reenable(self) -> None:
        await self.start()
        await self.running.add_user("carol@localhost", "pw")
        carol = await deferToThread(self.raw, "carol", "pw")
        (disabled,) = await self.admin({"command": "disable-user", "values": {"accountjids": ["carol@localhost"]}})
        self.assertEqual(disabled["notes"], [["info", "Disabled: carol@localhost"]])
        self.assertEqual(await deferToThread(carol.error_condition), "not-authorized")  # the session is ended
        self.assertEqual(await self.can_login("carol@localhost", "pw"), "account-disabled")
        self.assertEqual(await self.can_login("carol@localhost", "wrong"), "not-authorized")  # reveals nothing
        (enabled,) = await self.admin({"command": "reenable-user", "values": {"accountjids": ["carol@localhost"]}})
        self.assertEqual(enabled["notes"], [["info", "Re-enabled: carol@localhost"]])
        self.assertEqual(await self.can_login("carol@localhost", "pw"), "success")

    async def test_cluster_status_on_a_single_node(self) -> None:
        await self.start()
        (status,) = await self.admin({"command": CLUSTER_STATUS})
        self.assertEqual(status["fields"]["status"],
                         ["node1.test: a single node (not in cluster mode), 1 sessions"])


class SessionTests(SynchronousTestCase):
    """The framework's sessions: bound to the requester's full JID, capped per account, expiring."""

    def setUp(self) -> None:
        self.server = make_server(modules=("disco", COMMANDS, ADMIN), config="--admins=alice@localhost\n")
        self.alice = Client(self.server, "alice", "pc")
        self.module = self.server.modules[COMMANDS]

    def execute(self, client: Client, node: str = f"{ADMIN}#add-user", **attrs: str):
        extra = "".join(f" {k}='{v}'" for k, v in attrs.items())
        client.send(f"<iq type='set' id='c' to='localhost'><command xmlns='{COMMANDS}' node='{node}'{extra}/></iq>")
        (reply,) = client.take("iq")
        return reply

    def test_cap_per_account_and_expiry(self) -> None:
        sids = []
        for _ in range(MAX_SESSIONS_PER_USER):
            reply = self.execute(self.alice)
            command = next(reply.elements(COMMANDS, "command"))
            self.assertEqual(command["status"], "executing")
            sids.append(command["sessionid"])
        refused = self.execute(self.alice)
        self.assertEqual(error_condition(refused), "resource-constraint")
        self.execute(self.alice, sessionid=sids[0], action="cancel")
        self.assertEqual(self.execute(self.alice).getAttribute("type"), "result")  # room again after a cancel
        self.server.clock.advance(SESSION_TIMEOUT)
        self.assertEqual((self.module.sessions, self.module.per_user), ({}, {}))
        expired = self.execute(self.alice, sessionid=sids[1], action="complete")
        self.assertEqual(error_condition(expired), "bad-request")
        self.assertEqual(specific_condition(expired), "bad-sessionid")

    def test_session_belongs_to_one_full_jid(self) -> None:
        command = next(self.execute(self.alice).elements(COMMANDS, "command"))
        other = Client(self.server, "alice", "phone")
        stolen = self.execute(other, sessionid=command["sessionid"], action="complete")
        self.assertEqual(error_condition(stolen), "bad-request")
        bob = Client(self.server, "bob", "pc")
        self.assertEqual(error_condition(self.execute(bob, sessionid=command["sessionid"], action="complete")),
                         "forbidden")
        self.assertIn(command["sessionid"], self.module.sessions)

    def test_disco_lists_only_what_the_requester_may_run(self) -> None:
        bob = Client(self.server, "bob", "pc")
        for client, expected in ((self.alice, len(ALL_COMMANDS)), (bob, 0)):
            client.send(f"<iq type='get' id='d' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'"
                        f" node='{COMMANDS}'/></iq>")
            (reply,) = client.take("iq")
            self.assertEqual(len(list(next(reply.elements()).elements())), expected, reply.toXml())
        bob.send(f"<iq type='get' id='i' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'"
                 f" node='{ADMIN}#add-user'/></iq>")
        self.assertEqual(error_condition(bob.take("iq")[0]), "item-not-found")
        self.alice.send(f"<iq type='get' id='i' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'"
                        f" node='{ADMIN}#add-user'/></iq>")
        (info,) = self.alice.take("iq")
        identity = next(next(info.elements()).elements("http://jabber.org/protocol/disco#info", "identity"))
        self.assertEqual((identity["category"], identity["type"]), ("automation", "command-node"))

    def test_execute_completes_and_cancel_cancels(self) -> None:
        bob = Client(self.server, "bob", "pc")
        announce = f"{ADMIN}#announce"
        sid = next(self.execute(self.alice, announce).elements(COMMANDS, "command"))["sessionid"]
        form = ("<x xmlns='jabber:x:data' type='submit'><field var='announcement'><value>hi</value></field></x>")
        self.alice.send(f"<iq type='set' id='c' to='localhost'><command xmlns='{COMMANDS}' node='{announce}'"
                        f" sessionid='{sid}' action='execute'>{form}</command></iq>")  # execute = the default action
        replies = self.alice.take()
        done = next(r for r in replies if r.name == "iq")
        command = next(done.elements(COMMANDS, "command"))
        self.assertEqual((command["status"], command["sessionid"]), ("completed", sid))
        self.assertEqual(str(next(command.elements(COMMANDS, "note"))), "Sent to 2 sessions")
        (headline,) = bob.take("message")
        self.assertEqual((headline["type"], headline["from"], str(next(headline.elements("jabber:client", "body")))),
                         ("headline", "localhost", "hi"))
        sid = next(self.execute(self.alice, announce).elements(COMMANDS, "command"))["sessionid"]
        canceled = next(self.execute(self.alice, announce, sessionid=sid, action="cancel").elements(COMMANDS,
                                                                                                   "command"))
        self.assertEqual(canceled["status"], "canceled")
        self.assertEqual(self.module.sessions, {})
