"""RFC 6121 §8.5 delivery of messages to local bare and full JIDs, table-driven, on a real XMPPServer.

Clients are real :class:`ClientStream` instances on fake transports (PLAIN login, resource binding,
presence with a priority), so the stream core, the router and the hooks all run as in production. Rows
whose RFC rule the router does not follow yet are marked ``todo`` with the reason.

The helpers here (``make_server``, ``Client``) are reused by tests/test_offline.py and tests/test_blocking.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase
from twisted.words.xish import domish

from tests.test_stream_core import PASSWORD, FakeAccounts, FakeCerts, FakeTransport, el, header, plain_auth
from xmppcluster.config import parse_text
from xmppcluster.core import namespaces as ns
from xmppcluster.core.server import XMPPServer
from xmppcluster.modules import load_modules
from xmppcluster.streams.core import ClientStream

USERS = ("alice", "bob", "carol", "dave")
_ACCOUNTS: FakeAccounts | None = None


def fake_accounts() -> FakeAccounts:
    """Synchronous credentials for USERS (one PBKDF2 run per process, not per test)."""
    global _ACCOUNTS
    if _ACCOUNTS is None:
        _ACCOUNTS = FakeAccounts({user: PASSWORD for user in USERS})
    return _ACCOUNTS


@dataclass
class TestStorage:
    """What XMPPServer needs of storage: fake (synchronous) credentials, a real database when given."""

    db: Any = None

    @property
    def accounts(self) -> FakeAccounts:
        return fake_accounts()


def make_server(*, modules: tuple[str, ...] = (), db: Any = None, config: str = "") -> XMPPServer:
    """A server with exactly ``modules`` loaded and started (no listeners, a task.Clock)."""
    base = "--auth-failure-delay=1.0\n--unauthenticated-timeout=60\n--idle-timeout=600\n"
    server = XMPPServer(parse_text(base + config), TestStorage(db), FakeCerts(), clock=Clock())
    load_modules(server, list(modules))
    server.start()
    return server


class Client:
    """A logged-in, bound client on a fake transport."""

    def __init__(self, server: XMPPServer, user: str, resource: str) -> None:
        self.server = server
        self.transport = FakeTransport(secure=True, can_starttls=False)
        self.stream = ClientStream(server, self.transport)
        self.stream.stream_started(header())
        self.stream.element_received(plain_auth(user, PASSWORD))
        assert self.transport.last().name == "success", self.transport.last().toXml()
        self.stream.stream_started(header())
        self.send(f"<iq type='set' id='bind'><bind xmlns='{ns.BIND}'><resource>{resource}</resource></bind></iq>")
        assert self.stream.session is not None
        self.session = self.stream.session
        self.jid = self.session.jid
        self._seen = len(self.transport.sent)

    def send(self, xml: str | domish.Element) -> None:
        self.stream.element_received(parse(xml) if isinstance(xml, str) else xml)

    def presence(self, priority: int | None = None, **attrs: str) -> None:
        body = "" if priority is None else f"<priority>{priority}</priority>"
        extra = "".join(f" {k}='{v}'" for k, v in attrs.items())
        self.send(f"<presence xmlns='jabber:client'{extra}>{body}</presence>")

    def take(self, name: str | None = None) -> list[domish.Element]:
        """Stanzas delivered since the last call (only ``name`` ones when given)."""
        new = self.transport.sent[self._seen:]
        self._seen = len(self.transport.sent)
        return [s for s in new if name is None or s.name == name]

    def close(self) -> None:
        self.stream.connection_lost("test")


def parse(xml: str) -> domish.Element:
    """Parse stanza text; ``jabber:client`` is the default namespace when none is given."""
    if "xmlns=" not in xml.split(">", 1)[0]:
        name_end = xml.index(" ") if " " in xml.split(">", 1)[0] else xml.index(">")
        xml = xml[:name_end] + " xmlns='jabber:client'" + xml[name_end:]
    return el(xml)


async def eventually(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Wait (on the real reactor) until ``predicate()`` (or the coroutine it returns) is true.

    For work done in database threads or other processes, where a task.Clock cannot help.
    """
    from twisted.internet import reactor

    waited = 0.0
    while True:
        value = predicate()
        if hasattr(value, "__await__"):
            value = await value
        if value:
            return value
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await deferLater(reactor, 0.005, lambda: None)
        waited += 0.005


def error_condition(stanza: domish.Element) -> str | None:
    for error in stanza.elements(ns.CLIENT, "error"):
        for child in error.elements():
            if child.uri == ns.STANZA_ERRORS and child.name != "text":
                return child.name
    return None


# -- the table ---------------------------------------------------------------------------------------------

EITHER = "ignore-or-service-unavailable"  # RFC 6121 lets the server choose (a) silently ignore, (b) error


@dataclass(frozen=True)
class Row:
    name: str
    #: bob's resources: name -> priority, or None for a connected resource that sent no presence
    resources: dict[str, int | None]
    #: "bare", or a resource of bob (one not in ``resources`` is a full JID with no session)
    to: str
    type: str | None
    #: resources of bob that receive the message
    delivered: frozenset[str]
    #: error condition alice gets back (None: none; EITHER: none or service-unavailable)
    error: str | None = None
    #: True when the message goes to offline handling ("message/offline")
    offline: bool = False
    todo: str | None = None


def row(name, resources, to, type, delivered=(), error=None, offline=False, todo=None) -> Row:
    return Row(name, resources, to, type, frozenset(delivered), error, offline, todo)



ROWS = [
    # §8.5.2.1.1: bare JID, at least one available resource
    row("normal_one_resource", {"a": 0}, "bare", "normal", {"a"}),
    row("no_type_is_normal", {"a": 0}, "bare", None, {"a"}),
    row("unknown_type_is_normal", {"a": 0}, "bare", "x-unknown", {"a"}),
    row("normal_highest_priority_only", {"a": 5, "b": 1}, "bare", "normal", {"a"}),
    row("normal_priority_tie_all_top", {"a": 5, "b": 5, "c": 2}, "bare", "normal", {"a", "b"}),
    row("chat_highest_priority_only", {"a": 1, "b": 7}, "bare", "chat", {"b"}),
    row("chat_skips_negative", {"a": -1, "b": 0}, "bare", "chat", {"b"}),
    row("normal_skips_negative_even_if_only_other_is_zero", {"a": -128, "b": 0}, "bare", "normal", {"b"}),
    row("normal_all_negative_goes_offline", {"a": -1}, "bare", "normal", (), offline=True),
    row("chat_all_negative_goes_offline", {"a": -5, "b": -1}, "bare", "chat", (), offline=True),
    row("chat_connected_not_available_goes_offline", {"a": None}, "bare", "chat", (), offline=True),
    row("headline_all_non_negative", {"a": 3, "b": 0, "c": -1}, "bare", "headline", {"a", "b"}),
    row("headline_negative_only_ignored", {"a": -1}, "bare", "headline", ()),
    row("groupchat_to_bare_is_refused", {"a": 0}, "bare", "groupchat", (), "service-unavailable"),
    row("error_to_bare_ignored", {"a": 0}, "bare", "error", ()),
    # §8.5.2.2.1: bare JID, no available or connected resource
    row("normal_nobody_offline", {}, "bare", "normal", (), offline=True),
    row("chat_nobody_offline", {}, "bare", "chat", (), offline=True),
    row("headline_nobody_ignored", {}, "bare", "headline", ()),
    row("groupchat_nobody_refused", {}, "bare", "groupchat", (), "service-unavailable"),
    row("error_nobody_ignored", {}, "bare", "error", ()),
    # §8.5.3.1: full JID, resource matches: delivered whatever the type and priority
    row("chat_to_full_lower_priority", {"a": 5, "b": 1}, "b", "chat", {"b"}),
    row("normal_to_full_negative_priority", {"a": 5, "b": -1}, "b", "normal", {"b"}),
    row("headline_to_full", {"a": 5, "b": 1}, "b", "headline", {"b"}),
    row("groupchat_to_full", {"a": 0}, "a", "groupchat", {"a"}),
    row("error_to_full", {"a": 0}, "a", "error", {"a"}),
    row("chat_to_full_connected_not_available", {"a": None}, "a", "chat", {"a"}),
    # §8.5.3.2.1: full JID, no such resource
    row("chat_to_gone_resource_as_bare", {"a": 5, "b": 1}, "gone", "chat", {"a"}),
    row("chat_to_gone_resource_offline", {"a": -1}, "gone", "chat", (), offline=True),
    row("chat_to_gone_resource_nobody_offline", {}, "gone", "chat", (), offline=True),
    row("normal_to_gone_resource_not_redirected", {"a": 5}, "gone", "normal", (), EITHER),
    row("no_type_to_gone_resource_not_redirected", {"a": 5}, "gone", None, (), EITHER),
    row("normal_to_gone_resource_not_stored", {}, "gone", "normal", (), EITHER),
    row("headline_to_gone_resource_not_redirected", {"a": 5}, "gone", "headline", (), EITHER),
    row("groupchat_to_gone_resource_refused", {"a": 0}, "gone", "groupchat", (), "service-unavailable"),
    row("error_to_gone_resource_ignored", {"a": 0}, "gone", "error", ()),
]


class MessageRuleTests(SynchronousTestCase):
    """One test per row of ROWS (generated below)."""

    def check(self, r: Row) -> None:
        server = make_server()
        offline: list[domish.Element] = []
        server.hooks.on("message/offline", lambda stanza, bare: offline.append(stanza) or True)
        alice = Client(server, "alice", "pc")
        alice.presence(0)
        bob = {name: Client(server, "bob", name) for name in r.resources}
        for name, priority in r.resources.items():
            if priority is not None:
                bob[name].presence(priority)
        for client in (alice, *bob.values()):
            client.take()
        to = "bob@localhost" if r.to == "bare" else f"bob@localhost/{r.to}"
        kind = f" type='{r.type}'" if r.type else ""
        alice.send(f"<message xmlns='jabber:client' to='{to}' id='m1'{kind}><body>hi</body></message>")

        got = {name for name, client in bob.items() if any(s.getAttribute("id") == "m1"
                                                           for s in client.take("message"))}
        self.assertEqual(got, set(r.delivered), "resources that received the message")
        self.assertEqual(len(offline), int(r.offline), "went to offline handling")
        errors = [error_condition(s) for s in alice.take("message") if s.getAttribute("type") == "error"]
        if r.error == EITHER:
            self.assertIn(errors, ([], ["service-unavailable"]))
        else:
            self.assertEqual(errors, [r.error] if r.error else [])


def _make_test(r: Row):
    def test(self: MessageRuleTests) -> None:
        self.check(r)

    test.__name__ = f"test_{r.name}"
    test.__doc__ = f"{r.name}: {r.type or 'no type'} to {r.to}, resources {r.resources}"
    if r.todo:
        test.todo = r.todo
    return test


for _row in ROWS:
    setattr(MessageRuleTests, f"test_{_row.name}", _make_test(_row))


class PriorityChangeTests(SynchronousTestCase):
    def test_resource_lowering_priority_stops_getting_bare_messages(self) -> None:
        server = make_server()
        offline: list[domish.Element] = []
        server.hooks.on("message/offline", lambda stanza, bare: offline.append(stanza) or True)
        alice, bob = Client(server, "alice", "pc"), Client(server, "bob", "phone")
        alice.presence()
        bob.presence(1)
        alice.send("<message xmlns='jabber:client' to='bob@localhost' type='chat'><body>1</body></message>")
        self.assertEqual([str(s.body) for s in bob.take("message")], ["1"])
        bob.presence(-1)
        alice.send("<message xmlns='jabber:client' to='bob@localhost' type='chat'><body>2</body></message>")
        self.assertEqual(bob.take("message"), [])
        self.assertEqual([str(s.body) for s in offline], ["2"])

    def test_unavailable_resource_gets_no_bare_messages(self) -> None:
        server = make_server()
        server.hooks.on("message/offline", lambda stanza, bare: True)
        alice, bob = Client(server, "alice", "pc"), Client(server, "bob", "phone")
        alice.presence()
        bob.presence(3)
        bob.send("<presence xmlns='jabber:client' type='unavailable'/>")
        bob.take()
        alice.send("<message xmlns='jabber:client' to='bob@localhost'><body>x</body></message>")
        self.assertEqual(bob.take("message"), [])
