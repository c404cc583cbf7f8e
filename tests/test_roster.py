"""Roster get/set/remove, pushes, versioning, limits and storage (RFC 6121 §2), on SQLite and PostgreSQL.

:class:`IMHarness` (used by tests/test_presence.py too) runs a real :class:`XMPPServer` with the roster and
presence modules on real storage; clients are real :class:`ClientStream`\\ s on a recording transport,
bound without SASL (covered elsewhere).
"""

from __future__ import annotations

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.words.xish import domish

from tests.support.databases import PostgresBackend, SQLiteBackend, make_storage
from xmppcluster.auth.sasl import ChannelInfo
from xmppcluster.config import parse_text
from xmppcluster.core import namespaces as ns
from xmppcluster.core.server import XMPPServer
from xmppcluster.core.xml import parse_element
from xmppcluster.modules import load_modules
from xmppcluster.storage.roster import RosterFull, RosterItem, RosterStore
from xmppcluster.streams.core import ClientStream, StreamHeader

ROSTER = "jabber:iq:roster"


class Transport:
    """The stream core's sink, recording what reaches the client."""

    peer = "192.0.2.1"
    secure = True
    can_starttls = False
    listener = None
    pause_reading = resume_reading = redirect_to = None  # optional capabilities (StreamTransport)

    def __init__(self) -> None:
        self.sent: list[domish.Element] = []
        self.closed = False

    def open_stream(self, attrs):
        pass

    def send(self, element):
        self.sent.append(element)

    def send_serialized(self, xml: bytes) -> None:
        self.send(parse_element(xml))

    def close_stream(self, error=None):
        self.closed = True

    def restart_stream(self):
        pass

    def start_tls(self, creator):
        raise AssertionError("no TLS here")

    def channel_info(self):
        return ChannelInfo(secure=True, bindings={})


class Client:
    """One bound resource driven through the real stream core."""

    def __init__(self, harness: IMHarness, stream: ClientStream, transport: Transport) -> None:
        self.harness = harness
        self.stream = stream
        self.transport = transport
        self.session = stream.session
        self.jid = stream.session.jid
        self.bare = stream.session.bare
        self._ids = 0
        transport.sent.clear()

    async def send(self, xml: str) -> None:
        """Send a stanza as the client would, then wait until the server has done all the work it caused."""
        self.stream.element_received(parse_element(xml))
        await self.harness.settle()

    async def iq(self, type: str, payload: str, to: str | None = None) -> domish.Element:
        """Send an IQ and return the server's reply to it."""
        self._ids += 1
        id = f"q{self._ids}"
        addr = f" to='{to}'" if to else ""
        await self.send(f"<iq xmlns='jabber:client' type='{type}' id='{id}'{addr}>{payload}</iq>")
        replies = [e for e in self.transport.sent if e.name == "iq" and e.getAttribute("id") == id]
        assert len(replies) == 1, [e.toXml() for e in self.transport.sent]
        self.transport.sent.remove(replies[0])
        return replies[0]

    async def get_roster(self, ver: str | None = None) -> domish.Element:
        attr = "" if ver is None else f" ver='{ver}'"
        return await self.iq("get", f"<query xmlns='{ROSTER}'{attr}/>")

    async def set_item(self, jid: str, name: str | None = None, groups: tuple[str, ...] = (),
                       extra: str = "") -> domish.Element:
        attrs = f" jid='{jid}'" + (f" name='{name}'" if name is not None else "") + extra
        body = "".join(f"<group>{g}</group>" for g in groups)
        return await self.iq("set", f"<query xmlns='{ROSTER}'><item{attrs}>{body}</item></query>")

    async def remove_item(self, jid: str) -> domish.Element:
        return await self.iq("set", f"<query xmlns='{ROSTER}'><item jid='{jid}' subscription='remove'/></query>")

    async def presence(self, to: str | None = None, type: str | None = None, payload: str = "") -> None:
        attrs = (f" to='{to}'" if to else "") + (f" type='{type}'" if type else "")
        await self.send(f"<presence xmlns='jabber:client'{attrs}>{payload}</presence>")

    def take(self) -> list[domish.Element]:
        """Everything received since the last take."""
        sent = list(self.transport.sent)
        self.transport.sent.clear()
        return sent

    def pushes(self) -> list[domish.Element]:
        """Roster pushes received since the last take (other stanzas are kept)."""
        found = [e for e in self.transport.sent if e.name == "iq" and e.getAttribute("type") == "set"
                 and e.firstChildElement() is not None and e.firstChildElement().uri == ROSTER]
        for e in found:
            self.transport.sent.remove(e)
        return found

    def presences(self, type: str | None = "*") -> list[domish.Element]:
        """Presence received since the last take (of ``type``; ``"*"`` for any); removed from the record."""
        found = [e for e in self.transport.sent if e.name == "presence"
                 and (type == "*" or e.getAttribute("type") == type)]
        for e in found:
            self.transport.sent.remove(e)
        return found

    async def close(self) -> None:
        self.stream.connection_lost()
        await self.harness.settle()


def items_of(reply: domish.Element) -> dict[str, domish.Element]:
    query = reply.firstChildElement()
    return {item["jid"]: item for item in query.elements(ROSTER, "item")}


def groups_of(item: domish.Element) -> list[str]:
    return [str(g) for g in item.elements(ROSTER, "group")]


def error_of(reply: domish.Element) -> str | None:
    if reply.getAttribute("type") != "error":
        return None
    error = next(reply.elements(ns.CLIENT, "error"))
    return next(c.name for c in error.elements() if c.uri == ns.STANZA_ERRORS)


def push_item(push: domish.Element) -> domish.Element:
    return next(push.firstChildElement().elements(ROSTER, "item"))


class IMHarness:
    """A server with the roster and presence modules on ``self.backend``, and helpers to log clients in."""

    backend: str
    users = ("alice", "bob", "carol")

    async def start(self, config: str = "") -> XMPPServer:
        self.storage = await make_storage(self, self.backend)
        text = "--virt-hosts=localhost,example.net\n--unauthenticated-timeout=60\n--idle-timeout=600\n" + config
        self.server = XMPPServer(parse_text(text), self.storage, None, clock=Clock())
        load_modules(self.server, ["jabber:iq:roster", "presence"])
        self.server.start()
        self.roster = self.server.modules["jabber:iq:roster"]
        self.addCleanup(lambda: ensureDeferred(self.settle()))
        for user in self.users:
            await self.storage.accounts.create(user, "localhost", "pw")
        await self.storage.accounts.create("dave", "example.net", "pw")
        return self.server

    async def settle(self) -> None:
        await self.roster.settle()

    async def login(self, bare: str, resource: str = "r1", *, roster: bool = True,
                    available: bool = False) -> Client:
        user, _, domain = bare.partition("@")
        transport = Transport()
        stream = ClientStream(self.server, transport, tls_required=False)
        stream.stream_started(StreamHeader(to=domain, version="1.0", lang="en"))
        stream.user, stream.state = user, "authenticated"
        stream.stream_started(StreamHeader(to=domain, version="1.0", lang="en"))
        stream.element_received(parse_element(
            f"<iq xmlns='jabber:client' type='set' id='bind'><bind xmlns='{ns.BIND}'>"
            f"<resource>{resource}</resource></bind></iq>"))
        assert stream.state == "established", [e.toXml() for e in transport.sent]
        client = Client(self, stream, transport)
        if roster:
            await client.get_roster()
        if available:
            await client.presence()
        client.take()
        return client


class RosterTestsMixin(IMHarness):
    async def test_empty_roster_makes_the_resource_interested(self) -> None:
        await self.start()
        alice = await self.login("alice@localhost", roster=False)
        self.assertFalse(alice.session.interested)
        reply = await alice.get_roster()
        self.assertEqual(reply["type"], "result")
        self.assertEqual(items_of(reply), {})
        self.assertIsNone(reply.firstChildElement().getAttribute("ver"))
        self.assertTrue(alice.session.interested)

    async def test_add_update_and_push_to_interested_resources(self) -> None:
        await self.start()
        a1 = await self.login("alice@localhost", "a1")
        a2 = await self.login("alice@localhost", "a2")
        a3 = await self.login("alice@localhost", "a3", roster=False)
        reply = await a1.set_item("bob@localhost", "Bob", ("Friends", "Work"))
        self.assertEqual(reply["type"], "result")
        self.assertIsNone(reply.firstChildElement())
        for client in (a1, a2):
            [push] = client.pushes()
            self.assertEqual(push["to"], client.jid)
            self.assertEqual(push["from"], "alice@localhost")
            item = push_item(push)
            self.assertEqual((item["jid"], item["name"], item["subscription"]), ("bob@localhost", "Bob", "none"))
            self.assertFalse(item.hasAttribute("ask"))
            self.assertEqual(groups_of(item), ["Friends", "Work"])
        self.assertEqual(a3.pushes(), [])
        # subscription values other than "remove" are ignored (RFC 6121 §2.1.2.5)
        await a1.set_item("bob@localhost", "Robert", ("Work",), extra=" subscription='both' ask='subscribe'")
        item = items_of(await a2.get_roster())["bob@localhost"]
        self.assertEqual((item["name"], item["subscription"]), ("Robert", "none"))
        self.assertFalse(item.hasAttribute("ask"))
        self.assertEqual(groups_of(item), ["Work"])
        # a fresh login (no cache) reads the same from storage
        await a1.close(), await a2.close(), await a3.close()
        fresh = await self.login("alice@localhost", "a4", roster=False)
        self.assertEqual(list(items_of(await fresh.get_roster())), ["bob@localhost"])

    async def test_remove(self) -> None:
        await self.start()
        alice = await self.login("alice@localhost")
        await alice.set_item("bob@localhost", "Bob")
        alice.pushes()
        reply = await alice.remove_item("bob@localhost")
        self.assertEqual(reply["type"], "result")
        [push] = alice.pushes()
        self.assertEqual(push_item(push)["subscription"], "remove")
        self.assertEqual(items_of(await alice.get_roster()), {})
        self.assertEqual(error_of(await alice.remove_item("bob@localhost")), "item-not-found")

    async def test_set_errors(self) -> None:
        await self.start()
        alice = await self.login("alice@localhost")
        cases = [
            (f"<query xmlns='{ROSTER}'><item jid='a@localhost'/><item jid='b@localhost'/></query>", "bad-request"),
            (f"<query xmlns='{ROSTER}'/>", "bad-request"),
            (f"<query xmlns='{ROSTER}'><item name='x'/></query>", "bad-request"),
            (f"<query xmlns='{ROSTER}'><item jid='b@localhost'><group>G</group><group>G</group></item></query>",
             "bad-request"),
            (f"<query xmlns='{ROSTER}'><item jid='b@localhost'><group/></item></query>", "not-acceptable"),
            (f"<query xmlns='{ROSTER}'><item jid='b@localhost' name='{'n' * 1024}'/></query>", "not-acceptable"),
            (f"<query xmlns='{ROSTER}'><item jid='b@localhost'><group>{'g' * 1024}</group></item></query>",
             "not-acceptable"),
            (f"<query xmlns='{ROSTER}'><item jid='a b@localhost'/></query>", "jid-malformed"),
            (f"<query xmlns='{ROSTER}'><item jid='bob@localhost/phone'/></query>", "bad-request"),
            (f"<query xmlns='{ROSTER}'><item jid='alice@localhost'/></query>", "not-allowed"),
        ]
        for payload, condition in cases:
            reply = await alice.iq("set", payload)
            self.assertEqual(error_of(reply), condition, payload[:120])
        many = "".join(f"<group>g{i}</group>" for i in range(101))
        reply = await alice.iq("set", f"<query xmlns='{ROSTER}'><item jid='b@localhost'>{many}</item></query>")
        self.assertEqual(error_of(reply), "not-acceptable")
        self.assertEqual(alice.pushes(), [])
        self.assertEqual(items_of(await alice.get_roster()), {})

    async def test_other_accounts_roster_is_forbidden(self) -> None:
        await self.start()
        alice = await self.login("alice@localhost")
        self.assertEqual(error_of(await alice.iq("get", f"<query xmlns='{ROSTER}'/>", to="bob@localhost")),
                         "forbidden")
        reply = await alice.iq("set", f"<query xmlns='{ROSTER}'><item jid='carol@localhost'/></query>",
                               to="bob@localhost")
        self.assertEqual(error_of(reply), "forbidden")
        # addressed to the own bare JID is the same as no 'to'
        self.assertEqual((await alice.iq("get", f"<query xmlns='{ROSTER}'/>", to="alice@localhost"))["type"],
                         "result")

    async def test_versioning(self) -> None:
        await self.start()
        alice = await self.login("alice@localhost", roster=False)
        features = [(e.uri, e.name) for e in self.server.stream_features(alice.stream, "bound")]
        self.assertIn(("urn:xmpp:features:rosterver", "ver"), features)
        self.assertEqual(self.server.stream_features(alice.stream, "pre-auth"), [])
        first = await alice.get_roster(ver="")
        ver0 = first.firstChildElement()["ver"]
        current = await alice.get_roster(ver=ver0)
        self.assertEqual(current["type"], "result")
        self.assertIsNone(current.firstChildElement())  # RFC 6121 §2.6.3: nothing new
        await alice.set_item("bob@localhost")
        [push] = alice.pushes()
        ver1 = push.firstChildElement()["ver"]
        self.assertNotEqual(ver1, ver0)
        full = await alice.get_roster(ver=ver0)
        self.assertEqual(full.firstChildElement()["ver"], ver1)
        self.assertEqual(list(items_of(full)), ["bob@localhost"])
        self.assertIsNone((await alice.get_roster(ver=ver1)).firstChildElement())
        # a client that never used versioning gets pushes without 'ver'
        other = await self.login("alice@localhost", "plain")
        await alice.set_item("carol@localhost")
        self.assertIsNone(push_item(other.pushes()[0]).parent.getAttribute("ver"))

    async def test_size_limit(self) -> None:
        await self.start("--roster-max-size=2\n")
        alice = await self.login("alice@localhost")
        await alice.set_item("a@localhost")
        await alice.set_item("b@localhost")
        reply = await alice.set_item("c@localhost")
        self.assertEqual(error_of(reply), "not-allowed")
        self.assertEqual(next(reply.elements(ns.CLIENT, "error"))["type"], "cancel")
        self.assertEqual((await alice.set_item("b@localhost", "B"))["type"], "result")
        # an outbound subscription request that would add an item is refused too
        alice.take()
        await alice.presence("c@localhost", "subscribe")
        [error] = alice.presences("error")
        self.assertEqual(error["from"], "c@localhost")
        self.assertEqual(sorted(items_of(await alice.get_roster())), ["a@localhost", "b@localhost"])

    async def test_roster_changed_event(self) -> None:
        await self.start()
        events = []
        self.server.hooks.on("roster/changed", lambda owner, contact: events.append((owner, contact)))
        alice = await self.login("alice@localhost")
        await alice.set_item("bob@localhost", "Bob")
        await alice.set_item("bob@localhost", "Bob")  # no change, no event
        await alice.remove_item("bob@localhost")
        self.assertEqual(events, [("alice@localhost", "bob@localhost")] * 2)

    async def test_cache_invalidate(self) -> None:
        await self.start()
        alice = await self.login("alice@localhost")
        # another node writes to the shared database behind this node's back
        store = RosterStore(self.storage.db)
        await store.modify("alice", "localhost", "zed@localhost", lambda item, pending: (RosterItem("zed@localhost"),
                                                                                         pending))
        self.assertEqual(items_of(await alice.get_roster()), {})
        self.roster.invalidate("alice@localhost")
        self.assertEqual(list(items_of(await alice.get_roster())), ["zed@localhost"])

    async def test_presence_authorization_for_other_modules(self) -> None:
        await self.start()
        alice = await self.login("alice@localhost", available=True)
        store = RosterStore(self.storage.db)
        for contact, subscription in (("bob@localhost", "from"), ("carol@localhost", "to")):
            await store.modify("alice", "localhost", contact,
                               lambda item, pending, c=contact, s=subscription: (RosterItem(c, subscription=s), None))
        self.roster.invalidate("alice@localhost")
        self.assertTrue(await self.roster.may_see_presence("alice@localhost", "bob@localhost"))
        self.assertFalse(await self.roster.may_see_presence("alice@localhost", "carol@localhost"))
        self.assertFalse(await self.roster.may_see_presence("alice@localhost", "dave@example.net"))
        # the synchronous hook answers from the cache of an online account
        self.assertTrue(self.server.hooks.dispatch("roster/subscribed-from", "alice@localhost", "bob@localhost"))
        self.assertFalse(self.server.hooks.dispatch("roster/subscribed-from", "alice@localhost", "carol@localhost"))
        await alice.close()
        self.assertFalse(self.server.hooks.dispatch("roster/subscribed-from", "alice@localhost", "bob@localhost"))

    async def test_store(self) -> None:
        await self.start()
        store = RosterStore(self.storage.db)
        self.assertEqual((await store.get("alice", "localhost")).version, 0)
        change = await store.modify("alice", "localhost", "bob@localhost",
                                    lambda item, pending: (RosterItem("bob@localhost", "Bob", "to", False, True,
                                                                      ("G1", "G2")), "<presence/>"))
        self.assertTrue(change.item_changed)
        self.assertEqual(change.version, 1)
        roster = await store.get("alice", "localhost")
        self.assertEqual(roster.items["bob@localhost"],
                         RosterItem("bob@localhost", "Bob", "to", False, True, ("G1", "G2")))
        self.assertEqual(await store.pending("alice", "localhost"), {"bob@localhost": "<presence/>"})
        same = await store.modify("alice", "localhost", "bob@localhost", lambda item, pending: (item, None))
        self.assertFalse(same.item_changed)
        self.assertEqual(same.version, 1)
        self.assertEqual(await store.pending("alice", "localhost"), {})
        with self.assertRaises(RosterFull):
            await store.modify("alice", "localhost", "c@localhost",
                               lambda item, pending: (RosterItem("c@localhost"), None), max_items=1)
        await self.storage.accounts.delete("alice", "localhost")
        self.assertEqual(await store.get("alice", "localhost"), type(roster)(0, {}))


class SQLiteRosterTests(RosterTestsMixin, SQLiteBackend, TestCase):
    pass


class PostgresRosterTests(RosterTestsMixin, PostgresBackend, TestCase):
    pass
