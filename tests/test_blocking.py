"""XEP-0191 blocking command: protocol, pushes, enforcement, JID matching; on SQLite and PostgreSQL."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.words.xish import domish

from tests.support.databases import PostgresBackend, SQLiteBackend, make_storage
from tests.test_message_rules import Client, error_condition, eventually, make_server
from xmppcluster.modules.blocking import ERRORS, NS, blocked_by
from xmppcluster.storage.blocking import BlockingStore, BlocklistFull


class MatchingTests(SynchronousTestCase):
    """XEP-0191 §5 (the XEP-0016 order): full, bare, domain/resource, domain."""

    def test_rules(self) -> None:
        owner = "bob@example.org"
        cases = [
            ({"romeo@montague.net/orchard"}, "romeo@montague.net/orchard", True),
            ({"romeo@montague.net/orchard"}, "romeo@montague.net/garden", False),
            ({"romeo@montague.net/orchard"}, "romeo@montague.net", False),
            ({"romeo@montague.net"}, "romeo@montague.net", True),
            ({"romeo@montague.net"}, "romeo@montague.net/any", True),
            ({"romeo@montague.net"}, "montague.net", False),
            ({"montague.net/gate"}, "montague.net/gate", True),
            ({"montague.net/gate"}, "romeo@montague.net/gate", False),
            ({"montague.net/gate"}, "montague.net", False),
            ({"montague.net"}, "montague.net", True),
            ({"montague.net"}, "romeo@montague.net/orchard", True),
            ({"montague.net"}, "montague.net/gate", True),
            ({"montague.net"}, "capulet.com", False),
            ({"ROMEO@Montague.net"}, "romeo@montague.net", False),  # entries are stored prepared
            ({"romeo@montague.net"}, "ROMEO@Montague.NET/x", True),  # stanzas are prepared on lookup
            # never the owner's own account or server
            ({"example.org"}, "bob@example.org/phone", False),
            ({"example.org"}, "example.org", False),
            ({"example.org"}, "alice@example.org", True),
            ({"bob@example.org"}, "bob@example.org/phone", False),
            ({"romeo@montague.net"}, None, False),
            ({"romeo@montague.net"}, "not a jid@@", False),
        ]
        for items, jid, expected in cases:
            self.assertEqual(blocked_by(frozenset(items), owner, jid), expected, (items, jid))


def get_iq(id: str = "g") -> str:
    return f"<iq xmlns='jabber:client' type='get' id='{id}'><blocklist xmlns='{NS}'/></iq>"


def block_iq(action: str, *jids: str, id: str = "b1") -> str:
    items = "".join(f"<item jid='{jid}'/>" for jid in jids)
    return f"<iq xmlns='jabber:client' type='set' id='{id}'><{action} xmlns='{NS}'>{items}</{action}></iq>"


def items_of(element: domish.Element) -> list[str]:
    return [item["jid"] for item in element.elements(NS, "item")]


class BlockingStoreTestsMixin:
    backend: str

    async def test_block_unblock_all_and_cascade(self) -> None:
        storage = await make_storage(self, self.backend)
        await storage.accounts.create("bob", "localhost", "pw")
        store = BlockingStore(storage.db)
        self.assertEqual(await store.block("bob", "localhost", ["a@x", "x.org", "a@x"], limit=3), ["a@x", "x.org"])
        self.assertEqual(await store.block("bob", "localhost", ["a@x", "b@x"], limit=3), ["b@x"])
        with self.assertRaises(BlocklistFull):
            await store.block("bob", "localhost", ["c@x"], limit=3)
        self.assertEqual(await store.get("bob", "localhost"), ["a@x", "b@x", "x.org"])
        self.assertEqual(await store.unblock("bob", "localhost", ["a@x", "zzz@x"]), ["a@x"])
        self.assertEqual(await store.unblock_all("bob", "localhost"), ["b@x", "x.org"])
        self.assertEqual(await store.get("bob", "localhost"), [])
        await store.block("bob", "localhost", ["a@x"], limit=3)
        await storage.accounts.delete("bob", "localhost")
        rows = await storage.db.query("SELECT COUNT(*) FROM blocklist")
        self.assertEqual(int(rows[0][0]), 0)


class BlockingModuleTestsMixin:
    backend: str

    async def start(self, modules: tuple[str, ...] = ("urn:xmpp:blocking",)) -> None:
        if not hasattr(self, "storage"):
            self.storage = await make_storage(self, self.backend)
            for user in ("alice", "bob", "carol"):
                await self.storage.accounts.create(user, "localhost", "pw")
        self.server = make_server(modules=modules, db=self.storage.db)
        self.module = self.server.modules["urn:xmpp:blocking"]

    async def online(self, user: str, resource: str, priority: int | None = 0) -> Client:
        client = Client(self.server, user, resource)
        await self.module.blocklist(client.session.bare)
        if priority is not None:
            client.presence(priority)
        client.take()
        return client

    async def request(self, client: Client, xml: str) -> domish.Element:
        """Send an IQ and wait for its reply; whatever else arrived meanwhile is left in ``self.pending``."""
        client.send(xml)
        reply_id = xml.split("id='", 1)[1].split("'", 1)[0]
        found: list[domish.Element] = []

        def is_reply(s: domish.Element) -> bool:
            return s.name == "iq" and s.getAttribute("id") == reply_id and s["type"] in ("result", "error")

        def answered() -> bool:
            found.extend(client.take())
            return any(is_reply(s) for s in found)

        await eventually(answered)
        self.pending = [s for s in found if not is_reply(s)]
        return next(s for s in found if is_reply(s))

    async def test_get_block_push_unblock(self) -> None:
        await self.start()
        phone = await self.online("bob", "phone")
        laptop = await self.online("bob", "laptop")
        quiet = await self.online("bob", "quiet")
        for client in (phone, laptop):
            reply = await self.request(client, get_iq())
            self.assertEqual(reply["type"], "result")
            self.assertEqual(items_of(next(reply.elements(NS, "blocklist"))), [])
        reply = await self.request(phone, block_iq("block", "alice@localhost", "Evil.Example/Gate"))
        self.assertEqual(reply["type"], "result")
        pushes = [s for s in self.pending if s.name == "iq" and s["type"] == "set"]
        self.assertEqual([items_of(next(p.elements(NS, "block"))) for p in pushes],
                         [["alice@localhost", "evil.example/Gate"]])
        laptop_push = [s for s in laptop.take("iq") if s["type"] == "set"]
        self.assertEqual(len(laptop_push), 1)
        self.assertEqual(laptop_push[0]["to"], "bob@localhost/laptop")
        self.assertEqual(quiet.take("iq"), [])  # never asked for the blocklist: no pushes
        reply = await self.request(laptop, get_iq("g2"))
        self.assertEqual(items_of(next(reply.elements(NS, "blocklist"))), ["alice@localhost", "evil.example/Gate"])

        reply = await self.request(phone, block_iq("unblock", "alice@localhost", id="u1"))
        self.assertEqual(reply["type"], "result")
        self.assertEqual([items_of(next(s.elements(NS, "unblock"))) for s in laptop.take("iq") if s["type"] == "set"],
                         [["alice@localhost"]])
        reply = await self.request(phone, block_iq("unblock", id="u2"))
        unblock_all = [s for s in laptop.take("iq") if s["type"] == "set"]
        self.assertEqual([list(next(s.elements(NS, "unblock")).elements()) for s in unblock_all], [[]])
        self.assertEqual(await BlockingStore(self.storage.db).get("bob", "localhost"), [])

    async def test_bad_requests(self) -> None:
        await self.start()
        bob = await self.online("bob", "phone")
        for xml, condition in [
            (block_iq("block", id="e1"), "bad-request"),
            (block_iq("block", "a@@b", id="e2"), "jid-malformed"),
            (f"<iq xmlns='jabber:client' type='set' id='e3'><block xmlns='{NS}'><item/></block></iq>", "bad-request"),
            (f"<iq xmlns='jabber:client' type='set' id='e4'><blocklist xmlns='{NS}'/></iq>", "bad-request"),
            (f"<iq xmlns='jabber:client' type='get' id='e5' to='alice@localhost'><blocklist xmlns='{NS}'/></iq>",
             "service-unavailable"),
        ]:
            reply = await self.request(bob, xml)
            self.assertEqual((reply["type"], error_condition(reply)), ("error", condition), xml)

    async def test_limit(self) -> None:
        await self.start()
        self.module.max_items = 2
        bob = await self.online("bob", "phone")
        reply = await self.request(bob, block_iq("block", "a@x", "b@x", "c@x"))
        self.assertEqual(error_condition(reply), "policy-violation")
        reply = await self.request(bob, block_iq("block", "a@x", "b@x", id="ok"))
        self.assertEqual(reply["type"], "result")
        reply = await self.request(bob, block_iq("block", "c@x", id="full"))
        self.assertEqual(error_condition(reply), "policy-violation")

    async def test_inbound_from_blocked_jid(self) -> None:
        await self.start()
        bob = await self.online("bob", "phone")
        alice = await self.online("alice", "pc")
        carol = await self.online("carol", "pc")
        await self.request(bob, block_iq("block", "alice@localhost"))
        bob.take()
        for to in ("bob@localhost", "bob@localhost/phone"):
            alice.send(f"<message xmlns='jabber:client' to='{to}' type='chat' id='m'><body>x</body></message>")
            alice.send(f"<message xmlns='jabber:client' to='{to}' type='headline' id='h'><body>x</body></message>")
            alice.send(f"<presence xmlns='jabber:client' to='{to}'/>")
            alice.send(f"<presence xmlns='jabber:client' to='{to}' type='subscribe'/>")
            alice.send(f"<iq xmlns='jabber:client' to='{to}' type='get' id='q'><query xmlns='jabber:iq:version'/></iq>")
            alice.send(f"<iq xmlns='jabber:client' to='{to}' type='result' id='r'/>")
        self.assertEqual(bob.take(), [])
        answers = [(s.name, s["id"], error_condition(s)) for s in alice.take()]
        self.assertEqual(answers, [("message", "m", "service-unavailable"), ("iq", "q", "service-unavailable")] * 2)
        # others are not affected
        carol.send("<message xmlns='jabber:client' to='bob@localhost' type='chat' id='c'><body>hi</body></message>")
        self.assertEqual([m["id"] for m in bob.take("message")], ["c"])

    async def test_outbound_to_blocked_jid(self) -> None:
        await self.start()
        bob = await self.online("bob", "phone")
        alice = await self.online("alice", "pc")
        await self.request(bob, block_iq("block", "localhost/gate", "alice@localhost"))
        bob.take()
        bob.send("<message xmlns='jabber:client' to='alice@localhost/pc' type='chat' id='o1'><body>x</body></message>")
        bob.send("<presence xmlns='jabber:client' to='alice@localhost'/>")
        bob.send("<iq xmlns='jabber:client' to='localhost/gate' type='get' id='o2'><ping xmlns='urn:xmpp:ping'/></iq>")
        bob.send("<message xmlns='jabber:client' to='alice@localhost' type='error' id='o3'/>")
        self.assertEqual(alice.take(), [])
        replies = bob.take()
        self.assertEqual([(s.name, s.getAttribute("id"), s["type"], error_condition(s)) for s in replies],
                         [("message", "o1", "error", "not-acceptable"), ("presence", None, "error", "not-acceptable"),
                          ("iq", "o2", "error", "not-acceptable")])
        for reply in replies:
            error = next(reply.elements("jabber:client", "error"))
            self.assertEqual(error["type"], "cancel")
            self.assertEqual([c.name for c in error.elements() if c.uri == ERRORS], ["blocked"])
        # own resources are never blocked, whatever the list says
        await self.request(bob, block_iq("block", "bob@localhost", id="self"))
        laptop = await self.online("bob", "laptop")
        bob.send("<message xmlns='jabber:client' to='bob@localhost/laptop' type='chat' id='own'><body/></message>")
        self.assertEqual([m["id"] for m in laptop.take("message")], ["own"])

    async def test_unblock_restores_delivery(self) -> None:
        await self.start()
        bob = await self.online("bob", "phone")
        alice = await self.online("alice", "pc")
        await self.request(bob, block_iq("block", "localhost"))  # the whole domain (but never bob himself)
        alice.send("<message xmlns='jabber:client' to='bob@localhost' type='chat' id='m1'><body>x</body></message>")
        self.assertEqual(bob.take("message"), [])
        await self.request(bob, block_iq("unblock", "localhost", id="u"))
        alice.send("<message xmlns='jabber:client' to='bob@localhost' type='chat' id='m2'><body>x</body></message>")
        self.assertEqual([m["id"] for m in bob.take("message")], ["m2"])

    async def test_presence_on_block_and_unblock(self) -> None:
        await self.start()
        subscribed = {("bob@localhost", "carol@localhost")}
        self.server.hooks.on("roster/subscribed-from", lambda owner, contact: (owner, contact) in subscribed)
        bob = await self.online("bob", "phone", priority=4)
        alice = await self.online("alice", "pc")
        carol = await self.online("carol", "pc")
        bob.session.directed.add("alice@localhost/pc")  # bob sent directed presence to alice's resource
        await self.request(bob, block_iq("block", "alice@localhost", "carol@localhost", "dave@localhost"))
        for client in (alice, carol):
            [presence] = client.take("presence")
            self.assertEqual((presence["from"], presence["type"]), ("bob@localhost/phone", "unavailable"))
        await self.request(bob, block_iq("unblock", id="u"))
        for client in (alice, carol):
            [presence] = client.take("presence")
            self.assertEqual(presence["from"], "bob@localhost/phone")
            self.assertIsNone(presence.getAttribute("type"))
            self.assertEqual(str(next(presence.elements("jabber:client", "priority"))), "4")

    async def test_server_generated_stanzas_to_blocked_jid_are_dropped(self) -> None:
        await self.start()
        bob = await self.online("bob", "phone")
        alice = await self.online("alice", "pc")
        await self.request(bob, block_iq("block", "alice@localhost"))
        # e.g. a presence broadcast the presence module routes on bob's behalf
        broadcast = domish.Element(("jabber:client", "presence"))
        broadcast["from"], broadcast["to"] = "bob@localhost/phone", "alice@localhost"
        self.server.router.route(broadcast)
        self.assertEqual(alice.take(), [])
        self.assertIs(self.module.is_blocked("bob@localhost", "alice@localhost/pc"), True)
        self.assertIs(self.module.is_blocked("bob@localhost", "carol@localhost"), False)
        self.assertIsNone(self.module.is_blocked("nobody@localhost", "carol@localhost"))

    async def test_blocklist_of_offline_user_is_loaded_before_deciding(self) -> None:
        await self.start(modules=("urn:xmpp:blocking", "msgoffline"))
        await BlockingStore(self.storage.db).block("bob", "localhost", ["alice@localhost"], limit=10)
        alice = await self.online("alice", "pc")
        self.storage.db.inline_reads = False  # the load completes later, as on PostgreSQL
        alice.send("<message xmlns='jabber:client' to='bob@localhost' type='chat' id='m1'><body>x</body></message>")
        alice.send("<message xmlns='jabber:client' to='bob@localhost' type='chat' id='m2'><body>x</body></message>")
        self.assertEqual(alice.take(), [])  # held until bob's blocklist is loaded
        errors = await eventually(lambda: alice.take("message"))
        if len(errors) < 2:
            errors += await eventually(lambda: alice.take("message"))
        self.assertEqual([(e["id"], error_condition(e)) for e in errors],
                         [("m1", "service-unavailable"), ("m2", "service-unavailable")])
        await self.server.modules["msgoffline"].drain()
        rows = await self.storage.db.query("SELECT COUNT(*) FROM offline_messages")
        self.assertEqual(int(rows[0][0]), 0)

    async def test_unblocked_sender_waits_for_load_then_is_stored(self) -> None:
        await self.start(modules=("urn:xmpp:blocking", "msgoffline"))
        alice = await self.online("alice", "pc")
        self.storage.db.inline_reads = False  # the load completes later, as on PostgreSQL
        alice.send("<message xmlns='jabber:client' to='bob@localhost' type='chat' id='m1'><body>x</body></message>")
        offline = self.server.modules["msgoffline"]
        self.assertIsNone(self.module.cached("bob@localhost"))
        await eventually(lambda: self.module.cached("bob@localhost") is not None)  # resumed in the same turn
        await offline.drain()
        rows = await self.storage.db.query("SELECT COUNT(*) FROM offline_messages")
        self.assertEqual(int(rows[0][0]), 1)
        self.assertEqual(alice.take(), [])

    async def test_outbound_waits_for_own_list(self) -> None:
        await self.start()
        await BlockingStore(self.storage.db).block("bob", "localhost", ["alice@localhost"], limit=10)
        alice = await self.online("alice", "pc")
        bob = Client(self.server, "bob", "phone")
        self.module.invalidate("bob@localhost")  # as if the load started at bind had not finished
        bob.send("<message xmlns='jabber:client' to='alice@localhost' type='chat' id='o'><body>x</body></message>")
        [reply] = await eventually(lambda: bob.take("message"))
        self.assertEqual(error_condition(reply), "not-acceptable")
        self.assertEqual(alice.take(), [])

    async def test_survives_restart(self) -> None:
        await self.start()
        bob = await self.online("bob", "phone")
        await self.request(bob, block_iq("block", "alice@localhost"))
        await self.start()
        bob = await self.online("bob", "phone")
        reply = await self.request(bob, get_iq())
        self.assertEqual(items_of(next(reply.elements(NS, "blocklist"))), ["alice@localhost"])


class SQLiteBlockingStoreTests(BlockingStoreTestsMixin, SQLiteBackend, TestCase):
    pass


class PostgresBlockingStoreTests(BlockingStoreTestsMixin, PostgresBackend, TestCase):
    pass


class SQLiteBlockingModuleTests(BlockingModuleTestsMixin, SQLiteBackend, TestCase):
    pass


class PostgresBlockingModuleTests(BlockingModuleTestsMixin, PostgresBackend, TestCase):
    pass
