"""Hostile use of the ad-hoc commands (XEP-0050/0133) against a real node, while a well-behaved client pings.

A non-admin is refused every command and learns no session (a forged ``from`` ends the stream first); malformed
commands and forms, oversized forms and floods of open sessions get errors without echoing the payload;
the administrator's sessions are capped; and nobody else's ping suffers (tests/support/attack.py).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from twisted.trial.unittest import TestCase

from tests.clients.raw import RawClient, q
from tests.support.attack import MAX_RTT, under_attack
from tests.support.server import start_server
from tests.support.slix import ca_file
from xmppcluster.modules.adhoc import COMMANDS, MAX_SESSIONS_PER_USER
from xmppcluster.modules.admin_commands import ADMIN, CLUSTER_STATUS
from xmppcluster.modules.forms import MAX_FIELDS, MAX_VALUE_CHARS, MAX_VALUES

IQ = "{jabber:client}iq"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NODES = [f"{ADMIN}#{name}" for name in (
    "add-user", "delete-user", "disable-user", "reenable-user", "end-user-session", "change-user-password",
    "get-registered-users-num", "get-online-users-num", "get-online-users-list", "announce", "set-motd",
    "edit-motd", "delete-motd")] + [CLUSTER_STATUS]


def command(node: str, ident: str, *, action: str | None = None, sessionid: str | None = None, body: str = "",
            frm: str | None = None) -> str:
    attrs = f" node='{node}'" if node is not None else ""
    attrs += f" action='{action}'" if action else ""
    attrs += f" sessionid='{sessionid}'" if sessionid else ""
    forged = f" from='{frm}'" if frm else ""
    return (f"<iq type='set' id='{ident}' to='localhost'{forged}><command xmlns='{COMMANDS}'{attrs}>{body}"
            f"</command></iq>")


def submit(fields: str) -> str:
    return f"<x xmlns='jabber:x:data' type='submit'>{fields}</x>"


def field(var: str, *values: str) -> str:
    return f"<field var='{var}'>" + "".join(f"<value>{v}</value>" for v in values) + "</field>"


def ask(client: RawClient, xml: str, ident: str) -> ET.Element:
    client.send(xml)
    while True:
        reply = client.until(IQ)
        if reply.get("id") == ident:
            return reply


def conditions(reply: ET.Element) -> tuple[str | None, str | None]:
    """(stanza error condition, XEP-0050 condition) of a reply; (None, None) for a result."""
    error = reply.find("{jabber:client}error")
    if error is None:
        return None, None
    general = next((c.tag.split("}")[1] for c in error if c.tag.startswith(f"{{{STANZAS}}}")
                    and not c.tag.endswith("}text")), None)
    specific = next((c.tag.split("}")[1] for c in error if c.tag.startswith(f"{{{COMMANDS}}}")), None)
    return general, specific


def session_of(reply: ET.Element) -> str:
    return reply.find(q(COMMANDS, "command")).get("sessionid")


class AdHocAttackTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.running = await start_server(self, "--admins=admin@localhost\n")
        for user in ("admin", "mallory"):
            await self.running.add_user(f"{user}@localhost", "pw")
        self.port, self.ca = self.running.ports["c2s"]["plain"], ca_file(self.running)

    def login(self, user: str, resource: str = "r") -> RawClient:
        client = RawClient(self.port, ca_file=self.ca, timeout=30)
        self.addCleanup(client.close)
        client.login(user, "pw", resource)
        return client

    def check_rtts(self, rtts: list[float]) -> None:
        self.assertLess(max(rtts), MAX_RTT * 4, rtts)  # generous under a loaded CI; the point is "not stalled"

    async def test_a_non_admin_gets_forbidden_for_everything_even_with_a_forged_from(self) -> None:
        def attack():
            mallory = self.login("mallory")
            admin = self.login("admin")
            sid = session_of(ask(admin, command(f"{ADMIN}#add-user", "open"), "open"))  # a real session exists
            found = []
            for n, node in enumerate(NODES):
                found.append(conditions(ask(mallory, command(node, f"x{n}"), f"x{n}")))
            body = submit(field("accountjid", "evil@localhost") + field("password", "p")
                          + field("password-verify", "p"))
            found.append(conditions(ask(mallory, command(f"{ADMIN}#add-user", "steal", action="complete",
                                                         sessionid=sid, body=body), "steal")))
            disco = ask(mallory, f"<iq type='get' id='d' to='localhost'><query "
                                 f"xmlns='http://jabber.org/protocol/disco#items' node='{COMMANDS}'/></iq>", "d")
            forger = self.login("mallory", "forger")
            forger.send(command(f"{ADMIN}#delete-user", "f", action="complete", sessionid=sid, frm="admin@localhost/r",
                                body=submit(field("accountjids", "admin@localhost"))))
            return found, len(list(disco.iter("{http://jabber.org/protocol/disco#items}item"))), \
                forger.error_condition()

        (found, listed, forged), rtts = await under_attack(self.running, attack)
        self.assertEqual(set(found), {("forbidden", None)})
        self.assertEqual(listed, 0)
        self.assertEqual(forged, "invalid-from")  # the stream core refuses a forged from before any command runs
        self.assertTrue(await self.running.server.storage.accounts.exists("admin", "localhost"))
        self.assertFalse(await self.running.server.storage.accounts.exists("evil", "localhost"))
        self.check_rtts(rtts)

    async def test_malformed_commands_and_forms(self) -> None:
        add = f"{ADMIN}#add-user"
        huge_value = "v" * (MAX_VALUE_CHARS + 1)
        cases = [
            ("no node", dict(node=None), ("item-not-found", None)),
            ("unknown node", dict(node="urn:nope"), ("item-not-found", None)),
            ("unknown action", dict(node=add, action="explode"), ("bad-request", "malformed-action")),
            ("complete first", dict(node=add, action="complete"), ("bad-request", "bad-action")),
            ("made-up session", dict(node=add, action="complete", sessionid="f" * 32), ("bad-request",
                                                                                       "bad-sessionid")),
        ]
        forms = [
            ("no form", "", ("bad-request", "bad-payload")),
            ("form of type form", "<x xmlns='jabber:x:data' type='form'/>", ("bad-request", None)),
            ("duplicate var", submit(field("accountjid", "a@localhost") * 2), ("bad-request", None)),
            ("field without var", submit("<field><value>x</value></field>"), ("bad-request", None)),
            ("too many fields", submit("".join(field(f"f{i}", "x") for i in range(MAX_FIELDS + 1))),
             ("bad-request", None)),
            ("too many values", submit(field("accountjids", *(["a@localhost"] * (MAX_VALUES + 1)))),
             ("bad-request", None)),
            ("huge value", submit(field("accountjid", huge_value)), ("bad-request", None)),
            ("garbage jid", submit(field("accountjid", "@@@") + field("password", "p")), ("jid-malformed", None)),
            ("two jids", submit(field("accountjid", "a@localhost", "b@localhost")), ("bad-request", None)),
            ("next on one step", "next", ("bad-request", "bad-action")),
        ]

        def attack():
            admin = self.login("admin")
            found = {}
            for name, kwargs, _ in cases:
                found[name] = conditions(ask(admin, command(ident="c", **kwargs), "c"))
            sizes = {}
            for name, body, _ in forms:
                sid = session_of(ask(admin, command(add, "open"), "open"))
                xml = (command(add, "n", action="next", sessionid=sid) if body == "next"
                       else command(add, "n", action="complete", sessionid=sid, body=body))
                reply = ask(admin, xml, "n")
                found[name] = conditions(reply)
                sizes[name] = len(ET.tostring(reply))
                ask(admin, command(add, "cancel", action="cancel", sessionid=sid), "cancel")
            return found, sizes

        (found, sizes), rtts = await under_attack(self.running, attack)
        self.assertEqual(found, {name: expected for name, _, expected in cases + forms})
        self.assertLess(sizes["huge value"], 2000, "the error echoes the form")
        self.assertEqual(await self.running.server.storage.accounts.list("localhost"),
                         ["admin@localhost", "mallory@localhost", "pinger@localhost"])
        self.check_rtts(rtts)

    async def test_open_sessions_are_capped_per_account(self) -> None:
        module = self.running.server.modules[COMMANDS]

        def attack():
            admin, other = self.login("admin", "one"), self.login("admin", "two")
            found = []
            for n in range(3 * MAX_SESSIONS_PER_USER):
                client = admin if n % 2 else other
                found.append(conditions(ask(client, command(f"{ADMIN}#announce", f"s{n}"), f"s{n}"))[0])
            return found

        found, rtts = await under_attack(self.running, attack)
        self.assertEqual(found.count(None), MAX_SESSIONS_PER_USER)
        self.assertEqual(found.count("resource-constraint"), 2 * MAX_SESSIONS_PER_USER)
        self.assertEqual(module.per_user, {"admin@localhost": MAX_SESSIONS_PER_USER})
        self.assertTrue(all(session.timer.active() for session in module.sessions.values()))
        self.check_rtts(rtts)
