"""Ping, version, time and last activity, through the real router with fake client streams.

The :class:`Harness` here (a server with chosen modules, real storage, fake sessions) is reused by
test_disco, test_vcard_private and test_register.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.words.xish import domish

import xmppcluster
from tests.support.databases import make_storage
from xmppcluster.auth.sasl import ChannelInfo
from xmppcluster.config import parse_text
from xmppcluster.core.server import XMPPServer
from xmppcluster.core.sessions import Session
from xmppcluster.core.xml import parse_element
from xmppcluster.modules import load_modules
from xmppcluster.modules.base import Module

NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


class FakeTransport:
    def __init__(self, secure: bool = True) -> None:
        self.secure = secure
        self.peer = "192.0.2.7"

    def channel_info(self) -> ChannelInfo:
        return ChannelInfo(secure=self.secure, bindings={})


class FakeStream:
    """Collects what a session is sent; ``reply(id)`` waits for the answer to a request."""

    def __init__(self, *, secure: bool = True, anonymous: bool = False) -> None:
        self.transport = FakeTransport(secure)
        self.anonymous = anonymous
        self.state = "established"
        self.server = None
        self.sent: list[domish.Element] = []
        self.failed: list[tuple[str, str | None]] = []
        self._waiting: dict[str, Deferred] = {}

    def send(self, element: domish.Element) -> None:
        self.sent.append(element)
        waiter = self._waiting.pop(element.getAttribute("id") or "", None)
        if waiter is not None:
            waiter.callback(element)

    def fail(self, condition: str, text: str | None = None) -> None:
        self.failed.append((condition, text))

    def request_started(self) -> None:
        pass

    def request_finished(self) -> None:
        pass

    def reply(self, id: str) -> Deferred:
        for element in self.sent:
            if element.getAttribute("id") == id:
                return succeed(element)
        waiter = self._waiting[id] = Deferred()
        return waiter


def error_condition(reply: domish.Element) -> str | None:
    """The stanza error condition of ``reply``, or None for a result."""
    if reply.getAttribute("type") != "error":
        return None
    err = child(reply, "error")
    for condition in err.elements() if err is not None else ():
        if condition.uri == NS_STANZAS and condition.name != "text":
            return condition.name
    return "?"


def child(element: domish.Element, name: str) -> domish.Element | None:
    for c in element.elements():
        if c.name == name:
            return c
    return None


class FakeRoster(Module):
    """Stands in for the roster module: ``pairs`` of (owner, contact) allowed to see presence."""

    name = "fake-roster"

    def __init__(self, server: XMPPServer, pairs: set[tuple[str, str]]) -> None:
        super().__init__(server)
        self.pairs = pairs

    async def may_see_presence(self, owner: str, who: str) -> bool:
        return (owner, who) in self.pairs


class Harness:
    """A server with real storage and the given modules; sessions are fake streams."""

    def __init__(self, server: XMPPServer) -> None:
        self.server = server
        self._ids = 0

    @classmethod
    async def create(cls, test: TestCase, modules: list[str] | None, config: str = "", backend: str = "sqlite",
                     users: tuple[str, ...] = ("alice", "bob")) -> Harness:
        storage = await make_storage(test, backend)
        for user in users:
            await storage.accounts.create(user, "localhost", "secret")
        server = XMPPServer(parse_text("--virt-hosts=localhost,example.org\n" + config), storage, None,
                            clock=Clock())
        server.clock.advance(1_700_000_000)
        load_modules(server, modules)
        server.start()
        test.addCleanup(server.stop)
        return cls(server)

    def login(self, bare: str, resource: str = "res", *, available: bool = False, **stream: Any) -> Session:
        user, _, domain = bare.partition("@")
        session = Session(user, domain, resource, FakeStream(**stream))
        self.server.sessions.bind(session)
        self.server.hooks.notify("session/bound", session)
        if available:
            self.send(session, "<presence/>")
        return session

    def logout(self, session: Session, reason: str = "gone") -> None:
        if self.server.sessions.unbind(session):
            self.server.hooks.notify("session/unbound", session, reason)

    def send(self, session: Session, xml: str) -> domish.Element:
        stanza = parse_element(xml.replace("<iq ", "<iq xmlns='jabber:client' ", 1)
                               .replace("<presence", "<presence xmlns='jabber:client'", 1)
                               .replace("<message ", "<message xmlns='jabber:client' ", 1))
        stanza["from"] = session.jid
        self.server.router.route(stanza, session)
        return stanza

    async def iq(self, session: Session, payload: str, *, type: str = "get", to: str | None = None) -> domish.Element:
        """Send ``<iq>payload</iq>`` from ``session``; the reply it gets."""
        self._ids += 1
        id = f"q{self._ids}"
        to_attr = f" to='{to}'" if to else ""
        self.send(session, f"<iq type='{type}' id='{id}'{to_attr}>{payload}</iq>")
        return await session.stream.reply(id)


class BaseModulesTests(TestCase):
    timeout = 15

    async def test_ping_server_and_account(self) -> None:
        h = await Harness.create(self, ["urn:xmpp:ping"])
        alice = h.login("alice@localhost")
        for to in ("localhost", "alice@localhost", None):
            reply = await h.iq(alice, "<ping xmlns='urn:xmpp:ping'/>", to=to)
            self.assertEqual(reply.getAttribute("type"), "result")

    async def test_version(self) -> None:
        h = await Harness.create(self, ["jabber:iq:version"])
        alice = h.login("alice@localhost")
        reply = await h.iq(alice, "<query xmlns='jabber:iq:version'/>", to="localhost")
        query = child(reply, "query")
        self.assertEqual(str(child(query, "name")), "xmppcluster")
        self.assertEqual(str(child(query, "version")), xmppcluster.__version__)
        self.assertIsNone(child(query, "os"))
        self.assertEqual(reply["from"], "localhost")
        self.assertEqual(reply["to"], alice.jid)

    async def test_version_is_not_answered_for_accounts(self) -> None:
        h = await Harness.create(self, ["jabber:iq:version"])
        alice = h.login("alice@localhost")
        reply = await h.iq(alice, "<query xmlns='jabber:iq:version'/>", to="bob@localhost")
        self.assertEqual(error_condition(reply), "service-unavailable")

    async def test_time(self) -> None:
        h = await Harness.create(self, ["urn:xmpp:time"])
        h.server.clock.advance(0.25)
        alice = h.login("alice@localhost")
        reply = await h.iq(alice, "<time xmlns='urn:xmpp:time'/>", to="localhost")
        element = child(reply, "time")
        self.assertEqual(element.uri, "urn:xmpp:time")
        self.assertEqual(str(child(element, "tzo")), "+00:00")
        expected = datetime.fromtimestamp(1_700_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + ".250Z"
        self.assertEqual(str(child(element, "utc")), expected)

    async def test_disabled_module_gives_service_unavailable(self) -> None:
        h = await Harness.create(self, None, "--sm-plugins=-urn:xmpp:time,-jabber:iq:version\n")
        self.assertNotIn("urn:xmpp:time", h.server.modules)
        alice = h.login("alice@localhost")
        for payload in ("<time xmlns='urn:xmpp:time'/>", "<query xmlns='jabber:iq:version'/>"):
            reply = await h.iq(alice, payload, to="localhost")
            self.assertEqual(error_condition(reply), "service-unavailable")


class LastActivityTests(TestCase):
    timeout = 15

    async def setUp(self) -> None:
        self.h = await Harness.create(self, ["jabber:iq:last"])
        self.clock = self.h.server.clock

    async def test_uptime(self) -> None:
        self.clock.advance(123.6)
        alice = self.h.login("alice@localhost")
        reply = await self.h.iq(alice, "<query xmlns='jabber:iq:last'/>", to="localhost")
        query = child(reply, "query")
        self.assertEqual(query["seconds"], "123")
        self.assertEqual(str(query), "")

    async def test_online_account_answers_zero(self) -> None:
        alice = self.h.login("alice@localhost", available=True)
        self.clock.advance(50)
        reply = await self.h.iq(alice, "<query xmlns='jabber:iq:last'/>", to="alice@localhost")
        self.assertEqual(child(reply, "query")["seconds"], "0")
        reply = await self.h.iq(alice, "<query xmlns='jabber:iq:last'/>")  # no 'to': own account
        self.assertEqual(child(reply, "query")["seconds"], "0")

    async def test_logout_recorded_only_when_last_session_ends(self) -> None:
        phone = self.h.login("alice@localhost", "phone")
        laptop = self.h.login("alice@localhost", "laptop")
        self.h.logout(phone)
        self.clock.advance(10)
        self.h.logout(laptop)
        await self._recorded("alice", 1_700_000_010)
        self.assertEqual(await self.h.server.modules["jabber:iq:last"].store.get("alice", "localhost"),
                         (1_700_000_010, ""))

    async def test_status_of_last_unavailable_presence(self) -> None:
        self.h.server.add_module(FakeRoster(self.h.server, {("alice@localhost", "bob@localhost")}))
        alice = self.h.login("alice@localhost", available=True)
        self.h.send(alice, "<presence type='unavailable'><status>Heading Home</status></presence>")
        self.h.logout(alice)
        await self._recorded("alice")
        self.clock.advance(903)
        bob = self.h.login("bob@localhost")
        reply = await self.h.iq(bob, "<query xmlns='jabber:iq:last'/>", to="alice@localhost")
        query = child(reply, "query")
        self.assertEqual(query["seconds"], "903")
        self.assertEqual(str(query), "Heading Home")

    async def test_others_are_forbidden(self) -> None:
        alice = self.h.login("alice@localhost")
        self.h.logout(alice)
        await self._recorded("alice")
        bob = self.h.login("bob@localhost")
        reply = await self.h.iq(bob, "<query xmlns='jabber:iq:last'/>", to="alice@localhost")
        self.assertEqual(error_condition(reply), "forbidden")
        # also for unknown accounts: no harvesting
        reply = await self.h.iq(bob, "<query xmlns='jabber:iq:last'/>", to="nobody@localhost")
        self.assertEqual(error_condition(reply), "forbidden")

    async def test_full_jid_query_not_delivered_to_unauthorized(self) -> None:
        alice = self.h.login("alice@localhost", "phone", available=True)
        bob = self.h.login("bob@localhost")
        reply = await self.h.iq(bob, "<query xmlns='jabber:iq:last'/>", to="alice@localhost/phone")
        self.assertEqual(error_condition(reply), "forbidden")
        self.assertFalse([s for s in alice.stream.sent if s.name == "iq"])

    async def test_full_jid_query_delivered_when_roster_authorizes(self) -> None:
        self.h.server.add_module(FakeRoster(self.h.server, {("alice@localhost", "bob@localhost")}))
        alice = self.h.login("alice@localhost", "phone", available=True)
        bob = self.h.login("bob@localhost")
        self.h.send(bob, "<iq type='get' id='l1' to='alice@localhost/phone'><query xmlns='jabber:iq:last'/></iq>")
        delivered = await alice.stream.reply("l1")
        self.assertEqual(delivered["from"], bob.jid)
        reply = await self.h.iq(bob, "<query xmlns='jabber:iq:last'/>", to="alice@localhost")
        self.assertEqual(child(reply, "query")["seconds"], "0")

    async def test_never_logged_out(self) -> None:
        self.h.server.add_module(FakeRoster(self.h.server, {("bob@localhost", "alice@localhost")}))
        alice = self.h.login("alice@localhost")
        reply = await self.h.iq(alice, "<query xmlns='jabber:iq:last'/>", to="bob@localhost")
        self.assertEqual(error_condition(reply), "item-not-found")

    async def test_anonymous_logout_not_recorded(self) -> None:
        ghost = self.h.login("ghost@localhost", anonymous=True)
        self.h.logout(ghost)  # no account row: must not even try
        alice = self.h.login("alice@localhost")
        self.h.logout(alice)
        await self._recorded("alice")
        rows = await self.h.server.storage.db.query("SELECT username FROM last_activity")
        self.assertEqual(rows, [("alice",)])

    async def _recorded(self, user: str, when: int | None = None) -> None:
        """The logout of ``user`` is in the database once the pending batch is written."""
        await self.h.server.modules["jabber:iq:last"].store.flush()
        rows = await self.h.server.storage.db.query(
            "SELECT seconds FROM last_activity WHERE domain = 'localhost' AND username = ?", (user,))
        self.assertEqual(len(rows), 1, f"logout of {user} not recorded")
        if when is not None:
            self.assertEqual(rows[0][0], when)
