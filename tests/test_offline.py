"""XEP-0160 offline messages with XEP-0203 delay stamps, on SQLite and PostgreSQL."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.databases import PostgresBackend, SQLiteBackend, make_storage
from tests.test_message_rules import Client, error_condition, eventually, make_server, parse
from xmppcluster.modules.offline import DROP, REFUSE, STORE, offline_decision, serialize_with_delay, utc_stamp
from xmppcluster.storage.errors import NoSuchAccount
from xmppcluster.storage.offline import OfflineQueueFull, OfflineStore

DELAY = "urn:xmpp:delay"


class DecisionTests(SynchronousTestCase):
    """XEP-0160 §3 per-type rules and XEP-0334 hints."""

    CASES = [
        ("<message type='chat'><body>x</body></message>", STORE),
        ("<message><body>x</body></message>", STORE),
        ("<message type='normal'><subject>s</subject></message>", STORE),
        ("<message type='chat'><received xmlns='urn:xmpp:receipts' id='1'/></message>", STORE),
        ("<message type='error'><body>x</body></message>", DROP),
        ("<message type='headline'><body>x</body></message>", DROP),
        ("<message type='groupchat'><body>x</body></message>", REFUSE),
        ("<message type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>", DROP),
        ("<message type='chat'><thread>t</thread><active xmlns='http://jabber.org/protocol/chatstates'/>"
         "</message>", DROP),
        ("<message type='chat'/>", DROP),
        ("<message type='chat'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>", REFUSE),
        ("<message type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/>"
         "<store xmlns='urn:xmpp:hints'/></message>", STORE),
        ("<message type='headline'><body>x</body><store xmlns='urn:xmpp:hints'/></message>", STORE),
        ("<message type='error'><body>x</body><store xmlns='urn:xmpp:hints'/></message>", DROP),
        ("<message type='headline'><body>x</body><store xmlns='urn:example:other'/></message>", DROP),
        ("<message type='chat'><body>x</body><no-store xmlns='urn:example:other'/></message>", STORE),
    ]

    def test_decisions(self) -> None:
        for xml, expected in self.CASES:
            self.assertEqual(offline_decision(parse(xml)), expected, xml)

    def test_delay_is_added_to_the_copy_only(self) -> None:
        stanza = parse("<message to='bob@localhost' from='alice@localhost/pc'><body>x</body></message>")
        before = stanza.toXml()
        data = serialize_with_delay(stanza, "localhost", "2024-01-02T03:04:05.678Z")
        self.assertEqual(stanza.toXml(), before)
        delay = next(parse(data.decode()).elements(DELAY, "delay"))
        self.assertEqual((delay["from"], delay["stamp"]), ("localhost", "2024-01-02T03:04:05.678Z"))

    def test_stamp_is_utc(self) -> None:
        self.assertEqual(utc_stamp(0), "1970-01-01T00:00:00.000Z")
        self.assertEqual(utc_stamp(1700000000.25), "2023-11-14T22:13:20.250Z")


class OfflineStoreTestsMixin:
    backend: str

    async def setup(self):
        storage = await make_storage(self, self.backend)
        for user in ("alice", "bob"):
            await storage.accounts.create(user, "localhost", "pw")
        return storage, OfflineStore(storage.db)

    async def test_order_limit_and_unknown_account(self) -> None:
        storage, store = await self.setup()
        for n in range(3):
            self.assertEqual(await store.store("bob", "localhost", "alice@localhost/pc", b"<m%d/>" % n,
                                               limit=3, now=100 + n), n + 1)
        with self.assertRaises(OfflineQueueFull):
            await store.store("bob", "localhost", "a@b", b"<x/>", limit=3, now=1)
        with self.assertRaises(NoSuchAccount):
            await store.store("nobody", "localhost", "a@b", b"<x/>", limit=3, now=1)
        self.assertEqual([m.stanza for m in await store.list("bob", "localhost")], [b"<m0/>", b"<m1/>", b"<m2/>"])
        self.assertEqual(await store.count("alice", "localhost"), 0)

    async def test_claim_is_exclusive_until_stale(self) -> None:
        storage, store = await self.setup()
        for n in range(3):
            await store.store("bob", "localhost", "a@b", b"<m%d/>" % n, limit=10, now=1)
        first = await store.claim("bob", "localhost", "t1", now=1000, batch=2)
        self.assertEqual([m.seq for m in first], [1, 2])
        second = await store.claim("bob", "localhost", "t2", now=1001)
        self.assertEqual([m.seq for m in second], [3])
        self.assertEqual(await store.claim("bob", "localhost", "t3", now=1002), [])
        # delete only touches rows still claimed with the given token
        self.assertEqual(await store.delete("bob", "localhost", "t2", [1, 2, 3]), 1)
        self.assertEqual(await store.release("bob", "localhost", "t1"), 2)
        again = await store.claim("bob", "localhost", "t4", now=1003)
        self.assertEqual([m.seq for m in again], [1, 2])
        # a claim older than stale_after is taken over (its holder died)
        taken = await store.claim("bob", "localhost", "t5", now=1003 + 301, stale_after=300)
        self.assertEqual([m.seq for m in taken], [1, 2])
        self.assertEqual(await store.delete("bob", "localhost", "t4", [1, 2]), 0)

    async def test_deleted_with_the_account(self) -> None:
        storage, store = await self.setup()
        await store.store("bob", "localhost", "a@b", b"<x/>", limit=10, now=1)
        await storage.accounts.delete("bob", "localhost")
        rows = await storage.db.query("SELECT COUNT(*) FROM offline_messages")
        self.assertEqual(int(rows[0][0]), 0)


class OfflineModuleTestsMixin:
    backend: str

    async def start(self, config: str = "", modules: tuple[str, ...] = ("msgoffline",), now: float = 0):
        if not hasattr(self, "storage"):
            self.storage = await make_storage(self, self.backend)
            for user in ("alice", "bob"):
                await self.storage.accounts.create(user, "localhost", "pw")
        self.server = make_server(modules=modules, db=self.storage.db, config=config)
        self.server.clock.advance(now)
        self.module = self.server.modules["msgoffline"]
        self.store = self.module.store
        alice = Client(self.server, "alice", "pc")
        alice.presence()
        alice.take()
        return alice

    def chat(self, sender: Client, body: str, to: str = "bob@localhost", extra: str = "", type: str = "chat") -> None:
        sender.send(f"<message xmlns='jabber:client' to='{to}' type='{type}' id='{body}'><body>{body}</body>"
                    f"{extra}</message>")

    async def settle(self) -> None:
        await self.module.drain()

    async def test_stored_then_delivered_in_order_with_delay(self) -> None:
        alice = await self.start(now=1_700_000_000)
        for n in range(3):
            self.chat(alice, f"m{n}")
        await self.settle()
        self.assertEqual(await self.store.count("bob", "localhost"), 3)
        self.assertEqual(alice.take(), [])  # no error: the messages were accepted
        bob = Client(self.server, "bob", "phone")
        self.assertEqual(bob.take("message"), [])  # bound, but no presence yet
        bob.presence(1)
        await self.settle()
        messages = bob.take("message")
        self.assertEqual([str(m.body) for m in messages], ["m0", "m1", "m2"])
        for message in messages:
            self.assertEqual(message["from"], "alice@localhost/pc")
            delay = next(message.elements(DELAY, "delay"))
            self.assertEqual(delay["from"], "localhost")
            self.assertRegex(delay["stamp"], r"^2023-11-14T22:13:20\.000Z$")
        self.assertEqual(await self.store.count("bob", "localhost"), 0)

    async def test_negative_priority_waits_for_non_negative(self) -> None:
        alice = await self.start()
        self.chat(alice, "later")
        await self.settle()
        bob = Client(self.server, "bob", "phone")
        bob.presence(-1)
        await self.settle()
        self.assertEqual(bob.take("message"), [])
        self.assertEqual(await self.store.count("bob", "localhost"), 1)
        bob.presence(0)
        await self.settle()
        self.assertEqual([str(m.body) for m in bob.take("message")], ["later"])
        self.assertEqual(await self.store.count("bob", "localhost"), 0)

    async def test_two_resources_at_once_get_each_message_once(self) -> None:
        alice = await self.start()
        for n in range(5):
            self.chat(alice, f"m{n}")
        await self.settle()
        phone, laptop = Client(self.server, "bob", "phone"), Client(self.server, "bob", "laptop")
        phone.presence(1)
        laptop.presence(1)  # both before any delivery finished
        await self.settle()
        bodies = [str(m.body) for m in phone.take("message") + laptop.take("message")]
        self.assertEqual(sorted(bodies), ["m0", "m1", "m2", "m3", "m4"])
        self.assertEqual(await self.store.count("bob", "localhost"), 0)

    async def test_message_stored_while_resource_comes_online_is_delivered(self) -> None:
        alice = await self.start()
        self.chat(alice, "racing")  # the store is still in flight...
        bob = Client(self.server, "bob", "phone")
        bob.presence()  # ...when bob becomes available
        await self.settle()
        self.assertEqual([str(m.body) for m in bob.take("message")], ["racing"])
        self.assertEqual(await self.store.count("bob", "localhost"), 0)

    async def test_resource_gone_before_delivery_keeps_messages(self) -> None:
        alice = await self.start()
        self.chat(alice, "keep")
        await self.settle()
        bob = Client(self.server, "bob", "phone")
        bob.presence()
        bob.close()  # gone before the claim came back from the database
        await self.settle()
        self.assertEqual(await self.store.count("bob", "localhost"), 1)
        again = Client(self.server, "bob", "tablet")
        again.presence()
        await self.settle()
        self.assertEqual([str(m.body) for m in again.take("message")], ["keep"])

    async def test_storing_fires_once_the_row_is_written(self) -> None:
        """What a cluster link waits for before acknowledging a routed message that went offline."""
        await self.start()
        stanza = parse("<message xmlns='jabber:client' from='alice@localhost/pc' to='bob@localhost' "
                       "type='chat'><body>safe</body></message>")
        self.assertTrue(self.module.message_offline(stanza, "bob@localhost"))
        stored = self.module.storing(stanza)
        self.assertIsNotNone(stored)
        self.assertFalse(stored.called)
        await stored
        self.assertEqual(await self.store.count("bob", "localhost"), 1)
        self.assertIsNone(self.module.storing(stanza))  # over
        self.assertIsNone(self.module.storing(parse("<message xmlns='jabber:client'/>")))

    async def test_rows_are_never_handed_to_another_node(self) -> None:
        """A resource on another node became available while the message was being stored: that node is
        told to deliver it; this node neither writes it to the cluster link nor deletes the row."""
        alice = await self.start()
        remote = RemoteResource("bob@localhost/elsewhere", "t2.example.com")
        announced = []
        self.server.hooks.on("offline/waiting", lambda bare, node: announced.append((bare, node)) or True)
        self.chat(alice, "stays")  # the store is in flight...
        self.server.sessions.bind(remote)  # ...when bob comes online on t2
        await self.settle()
        self.assertEqual(remote.delivered, [])
        self.assertEqual(await self.store.count("bob", "localhost"), 1)
        self.assertEqual(announced, [("bob@localhost", "t2.example.com")])

    async def test_queue_full_is_service_unavailable(self) -> None:
        alice = await self.start("--offline-max-messages=2\n")
        for n in range(3):
            self.chat(alice, f"m{n}")
        await self.settle()
        errors = alice.take("message")
        self.assertEqual([(e["id"], e["type"], error_condition(e)) for e in errors],
                         [("m2", "error", "service-unavailable")])
        self.assertEqual(await self.store.count("bob", "localhost"), 2)

    async def test_zero_disables_storage(self) -> None:
        alice = await self.start("--offline-max-messages=0\n")
        self.chat(alice, "m")
        self.assertEqual([error_condition(e) for e in alice.take("message")], ["service-unavailable"])
        await self.settle()
        self.assertEqual(await self.store.count("bob", "localhost"), 0)

    async def test_unknown_account_is_service_unavailable(self) -> None:
        alice = await self.start()
        self.chat(alice, "m", to="nobody@localhost")
        await self.settle()
        self.assertEqual([error_condition(e) for e in alice.take("message")], ["service-unavailable"])

    async def test_not_stored_types_and_hints(self) -> None:
        alice = await self.start()
        self.chat(alice, "h", type="headline")
        self.chat(alice, "s", extra="<no-store xmlns='urn:xmpp:hints'/>")
        alice.send("<message xmlns='jabber:client' to='bob@localhost' type='chat' id='cs'>"
                   "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
        await self.settle()
        self.assertEqual([(e["id"], error_condition(e)) for e in alice.take("message")],
                         [("s", "service-unavailable")])
        self.assertEqual(await self.store.count("bob", "localhost"), 0)

    async def test_storage_failure_bounces_internal_server_error(self) -> None:
        alice = await self.start()

        async def broken(*args, **kwargs):
            raise RuntimeError("disk on fire")

        self.store.store = broken
        self.chat(alice, "m")
        await self.settle()
        self.assertEqual([error_condition(e) for e in alice.take("message")], ["internal-server-error"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_messages_from_a_blocked_sender_are_not_delivered(self) -> None:
        alice = await self.start(modules=("msgoffline", "urn:xmpp:blocking"))
        self.chat(alice, "before-block")
        await self.settle()
        bob = Client(self.server, "bob", "phone")
        bob.send("<iq xmlns='jabber:client' type='set' id='b'><block xmlns='urn:xmpp:blocking'>"
                 "<item jid='alice@localhost'/></block></iq>")
        await eventually(lambda: bob.take("iq"))
        bob.presence()
        await self.settle()
        self.assertEqual(bob.take("message"), [])
        self.assertEqual(await self.store.count("bob", "localhost"), 0)

    async def test_survives_restart(self) -> None:
        alice = await self.start()
        self.chat(alice, "persisted")
        await self.settle()
        await self.start()  # a new server on the same database
        bob = Client(self.server, "bob", "phone")
        bob.presence()
        await self.settle()
        self.assertEqual([str(m.body) for m in bob.take("message")], ["persisted"])


class RemoteResource:
    """A resource on another cluster node, as the directory puts it in the registry."""

    stream = None

    def __init__(self, jid: str, node: str) -> None:
        self.jid, self.node = jid, node
        self.bare, _, self.resource = jid.partition("/")
        self.priority = 5
        self.presence = parse("<presence xmlns='jabber:client'/>")
        self.delivered: list = []

    @property
    def available(self) -> bool:
        return True

    def deliver(self, stanza) -> None:
        self.delivered.append(stanza)


class SQLiteOfflineStoreTests(OfflineStoreTestsMixin, SQLiteBackend, TestCase):
    pass


class PostgresOfflineStoreTests(OfflineStoreTestsMixin, PostgresBackend, TestCase):
    pass


class SQLiteOfflineModuleTests(OfflineModuleTestsMixin, SQLiteBackend, TestCase):
    pass


class PostgresOfflineModuleTests(OfflineModuleTestsMixin, PostgresBackend, TestCase):
    pass

