"""XEP-0054 vCard, XEP-0049 private XML and the XEP-0012 logout store, on SQLite and PostgreSQL."""

from __future__ import annotations

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from tests.support.databases import PostgresBackend, SQLiteBackend, make_storage
from tests.test_base_modules import Harness, child, error_condition
from xmppcluster.modules import private
from xmppcluster.storage.account_data import LastActivityStore
from xmppcluster.storage.errors import NoSuchAccount

VCARD = "<vCard xmlns='vcard-temp'><FN>Alice A.</FN><NICKNAME>al &amp; co</NICKNAME><PHOTO><TYPE>image/png</TYPE>" \
        "<BINVAL>iVBORw0KGgo=</BINVAL></PHOTO></vCard>"
PRIVATE = "jabber:iq:private"


class VCardMixin:
    backend: str
    timeout = 30

    async def setUp(self) -> None:
        self.h = await Harness.create(self, ["vcard-temp"], "--vcard-max-size=2048\n", backend=self.backend)
        self.alice = self.h.login("alice@localhost")
        self.bob = self.h.login("bob@localhost")

    async def test_own_empty_vcard(self) -> None:
        reply = await self.h.iq(self.alice, "<vCard xmlns='vcard-temp'/>")
        vcard = child(reply, "vCard")
        self.assertEqual((vcard.uri, list(vcard.elements())), ("vcard-temp", []))

    async def test_set_then_get_own_and_others(self) -> None:
        reply = await self.h.iq(self.alice, VCARD, type="set")
        self.assertIsNone(error_condition(reply))
        for who, to in ((self.alice, None), (self.alice, "alice@localhost"), (self.bob, "alice@localhost")):
            reply = await self.h.iq(who, "<vCard xmlns='vcard-temp'/>", to=to)
            vcard = child(reply, "vCard")
            self.assertEqual(str(child(vcard, "FN")), "Alice A.")
            self.assertEqual(str(child(vcard, "NICKNAME")), "al & co")
            self.assertEqual(str(child(child(vcard, "PHOTO"), "BINVAL")), "iVBORw0KGgo=")
            self.assertEqual(vcard.uri, "vcard-temp")

    async def test_missing_vcard_and_missing_account_look_the_same(self) -> None:
        for to in ("alice@localhost", "nobody@localhost"):
            reply = await self.h.iq(self.bob, "<vCard xmlns='vcard-temp'/>", to=to)
            self.assertEqual(error_condition(reply), "service-unavailable")

    async def test_only_owner_sets(self) -> None:
        reply = await self.h.iq(self.bob, VCARD, type="set", to="alice@localhost")
        self.assertEqual(error_condition(reply), "forbidden")
        reply = await self.h.iq(self.alice, "<vCard xmlns='vcard-temp'/>")
        self.assertEqual(list(child(reply, "vCard").elements()), [])

    async def test_size_limit(self) -> None:
        big = "<vCard xmlns='vcard-temp'><DESC>" + "x" * 2100 + "</DESC></vCard>"
        reply = await self.h.iq(self.alice, big, type="set")
        self.assertEqual(error_condition(reply), "policy-violation")
        reply = await self.h.iq(self.alice, "<vCard xmlns='vcard-temp'/>")
        self.assertEqual(list(child(reply, "vCard").elements()), [])

    async def test_empty_set_deletes(self) -> None:
        await self.h.iq(self.alice, VCARD, type="set")
        reply = await self.h.iq(self.alice, "<vCard xmlns='vcard-temp'/>", type="set")
        self.assertIsNone(error_condition(reply))
        reply = await self.h.iq(self.bob, "<vCard xmlns='vcard-temp'/>", to="alice@localhost")
        self.assertEqual(error_condition(reply), "service-unavailable")

    async def test_replace_and_cascade(self) -> None:
        await self.h.iq(self.alice, VCARD, type="set")
        await self.h.iq(self.alice, "<vCard xmlns='vcard-temp'><FN>New</FN></vCard>", type="set")
        reply = await self.h.iq(self.bob, "<vCard xmlns='vcard-temp'/>", to="alice@localhost")
        self.assertEqual(str(child(child(reply, "vCard"), "FN")), "New")
        await self.h.server.storage.accounts.delete("alice", "localhost")
        rows = await self.h.server.storage.db.query("SELECT COUNT(*) FROM vcards")
        self.assertEqual(rows[0][0], 0)

    async def test_anonymous_cannot_store(self) -> None:
        ghost = self.h.login("ghost@localhost", anonymous=True)
        reply = await self.h.iq(ghost, VCARD, type="set")
        self.assertEqual(error_condition(reply), "not-allowed")

    async def test_wrong_element(self) -> None:
        reply = await self.h.iq(self.alice, "<x xmlns='vcard-temp'/>", type="set")
        self.assertEqual(error_condition(reply), "bad-request")


class PrivateMixin:
    backend: str
    timeout = 30

    async def setUp(self) -> None:
        self.h = await Harness.create(self, ["jabber:iq:private"], backend=self.backend)
        self.alice = self.h.login("alice@localhost")
        self.bob = self.h.login("bob@localhost")

    def q(self, inner: str) -> str:
        return f"<query xmlns='{PRIVATE}'>{inner}</query>"

    async def test_round_trip(self) -> None:
        data = "<exodus xmlns='exodus:prefs' xmlns:p='urn:p'><defaultnick>Hamlet</defaultnick><p:x p:a='1'/></exodus>"
        reply = await self.h.iq(self.alice, self.q(data), type="set")
        self.assertIsNone(error_condition(reply))
        reply = await self.h.iq(self.alice, self.q("<exodus xmlns='exodus:prefs'/>"))
        stored = child(child(reply, "query"), "exodus")
        self.assertEqual(stored.uri, "exodus:prefs")
        self.assertEqual(str(child(stored, "defaultnick")), "Hamlet")
        x = child(stored, "x")
        self.assertEqual((x.uri, x.attributes), ("urn:p", {("urn:p", "a"): "1"}))

    async def test_nothing_stored_echoes_the_empty_element(self) -> None:
        reply = await self.h.iq(self.alice, self.q("<storage xmlns='storage:bookmarks'/>"))
        query = child(reply, "query")
        (only,) = list(query.elements())
        self.assertEqual((only.uri, only.name, list(only.elements())), ("storage:bookmarks", "storage", []))

    async def test_namespaces_are_separate_and_replaced(self) -> None:
        await self.h.iq(self.alice, self.q("<a xmlns='urn:a'>1</a><b xmlns='urn:b'>2</b>"), type="set")
        await self.h.iq(self.alice, self.q("<a xmlns='urn:a'>3</a><a xmlns='urn:a'>4</a>"), type="set")
        reply = await self.h.iq(self.alice, self.q("<a xmlns='urn:a'/>"))
        self.assertEqual([str(e) for e in child(reply, "query").elements()], ["3", "4"])
        reply = await self.h.iq(self.alice, self.q("<b xmlns='urn:b'/>"))
        self.assertEqual([str(e) for e in child(reply, "query").elements()], ["2"])

    async def test_other_users_data_is_forbidden(self) -> None:
        await self.h.iq(self.alice, self.q("<a xmlns='urn:a'>secret</a>"), type="set")
        for kind, payload in (("get", "<a xmlns='urn:a'/>"), ("set", "<a xmlns='urn:a'>x</a>")):
            reply = await self.h.iq(self.bob, self.q(payload), type=kind, to="alice@localhost")
            self.assertEqual(error_condition(reply), "forbidden")
        reply = await self.h.iq(self.alice, self.q("<a xmlns='urn:a'/>"))
        self.assertEqual(str(child(child(reply, "query"), "a")), "secret")

    async def test_reserved_and_missing_namespaces(self) -> None:
        for payload in ("<vCard xmlns='vcard-temp'/>", "<query xmlns='jabber:iq:roster'/>",
                        "<x xmlns='http://jabber.org/protocol/muc'/>", "<bare/>", ""):
            for kind in ("get", "set"):
                reply = await self.h.iq(self.alice, self.q(payload), type=kind)
                self.assertEqual(error_condition(reply), "not-acceptable", (payload, kind))

    async def test_one_namespace_per_get(self) -> None:
        reply = await self.h.iq(self.alice, self.q("<a xmlns='urn:a'/><b xmlns='urn:b'/>"))
        self.assertEqual(error_condition(reply), "bad-request")

    async def test_quota(self) -> None:
        self.patch(private, "MAX_BYTES", 1000)
        chunk = "y" * 400
        for ns in ("urn:a", "urn:b"):
            reply = await self.h.iq(self.alice, self.q(f"<d xmlns='{ns}'>{chunk}</d>"), type="set")
            self.assertIsNone(error_condition(reply))
        reply = await self.h.iq(self.alice, self.q(f"<d xmlns='urn:c'>{chunk}</d>"), type="set")
        self.assertEqual(error_condition(reply), "policy-violation")
        # replacing a namespace counts its new size, not the old one twice
        reply = await self.h.iq(self.alice, self.q(f"<d xmlns='urn:a'>{chunk}z</d>"), type="set")
        self.assertIsNone(error_condition(reply))
        reply = await self.h.iq(self.alice, self.q("<d xmlns='urn:c'/>"))
        self.assertEqual(list(child(child(reply, "query"), "d").elements()), [])
        self.assertEqual(str(child(child(reply, "query"), "d")), "")


class LastActivityStoreMixin:
    """Logouts are written behind, in one transaction per batch."""

    backend: str
    timeout = 30

    async def setUp(self) -> None:
        self.storage = await make_storage(self, self.backend)
        for user in ("alice", "bob", "carol"):
            await self.storage.accounts.create(user, "localhost", "secret")
        self.clock = Clock()
        self.store = LastActivityStore(self.storage.db, self.clock)

    async def stored(self) -> list[tuple]:
        return await self.storage.db.query("SELECT username, seconds, status FROM last_activity ORDER BY username")

    async def test_batch_written_after_the_delay_and_visible_before(self) -> None:
        writes = [ensureDeferred(self.store.set(user, "localhost", 100 + i, f"s{i}"))
                  for i, user in enumerate(("alice", "bob", "alice"))]
        self.assertEqual(await self.store.get("alice", "localhost"), (102, "s2"))  # pending, latest wins
        self.assertEqual(await self.stored(), [])
        self.clock.advance(LastActivityStore.delay)
        for write in writes:
            await write
        self.assertEqual(await self.stored(), [("alice", 102, "s2"), ("bob", 101, "s1")])
        self.assertEqual(await LastActivityStore(self.storage.db, Clock()).get("bob", "localhost"), (101, "s1"))

    async def test_deleted_account_fails_only_its_own_write(self) -> None:
        alice = ensureDeferred(self.store.set("alice", "localhost", 5))
        gone = ensureDeferred(self.store.set("carol", "localhost", 6))
        await self.storage.accounts.delete("carol", "localhost")
        await self.store.flush()
        await alice
        with self.assertRaises(NoSuchAccount):
            await gone
        self.assertEqual(await self.stored(), [("alice", 5, "")])

    async def test_flush_writes_at_once(self) -> None:
        write = ensureDeferred(self.store.set("bob", "localhost", 7, "bye"))
        await self.store.flush()
        await write
        self.assertEqual(await self.stored(), [("bob", 7, "bye")])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SQLiteLastActivityStoreTests(LastActivityStoreMixin, SQLiteBackend, TestCase):
    pass


class PostgresLastActivityStoreTests(LastActivityStoreMixin, PostgresBackend, TestCase):
    pass


class SQLiteVCardTests(VCardMixin, SQLiteBackend, TestCase):
    pass


class PostgresVCardTests(VCardMixin, PostgresBackend, TestCase):
    pass


class SQLitePrivateTests(PrivateMixin, SQLiteBackend, TestCase):
    pass


class PostgresPrivateTests(PrivateMixin, PostgresBackend, TestCase):
    pass
