"""XEP-0280 Message Carbons: the copying rules on real client streams (fake transports), forged carbons against
a real server, slixmpp's xep_0280 plugin, and a carbon reaching a device on the other node of a cluster."""

from __future__ import annotations

import json
import os
import sys

from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.words.xish import domish

from tests.clients.raw import RawClient
from tests.support.cluster import DOMAIN, make_cluster, migrate
from tests.support.process import wait_for_port
from tests.support.server import start_server
from tests.support.slix import ROOT, ca_file
from tests.support.waiting import wait_until
from tests.test_message_rules import Client, error_condition, make_server
from xmppcluster.core.serializer import serialize
from xmppcluster.core.xml import reparse

NS = "urn:xmpp:carbons:2"
FORWARD = "urn:xmpp:forward:0"
PASSWORD = "carbon pässword"
MODULES = ("urn:xmpp:carbons:2", "urn:xmpp:blocking")


def wire(stanza: domish.Element) -> domish.Element:
    """The stanza as a client reads it: serialized by our serializer, parsed again."""
    return reparse(serialize(stanza).encode())


def forwarded(carbon: domish.Element, direction: str) -> domish.Element:
    """The original message inside a carbon (checked on the wire form)."""
    carbon = wire(carbon)
    [wrapper] = [c for c in carbon.elements() if c.uri == NS]
    assert wrapper.name == direction, wrapper.toXml()
    [fwd] = list(wrapper.elements(FORWARD, "forwarded"))
    [inner] = list(fwd.elements("jabber:client", "message"))
    return inner


def body(stanza: domish.Element) -> str | None:
    for child in stanza.elements("jabber:client", "body"):
        return str(child)
    return None


class Rules(SynchronousTestCase):
    """The stream core, router and module as in production; clients on fake transports."""

    def setUp(self) -> None:
        self.server = make_server(modules=MODULES)
        self.clients: list[Client] = []

    def client(self, user: str, resource: str, *, priority: int | None = 0, carbons: bool = False) -> Client:
        client = Client(self.server, user, resource)
        if priority is not None:
            client.presence(priority)
        if carbons:
            self.assertEqual(self.toggle(client, "enable").getAttribute("type"), "result")
        client.take()
        self.clients.append(client)
        return client

    def toggle(self, client: Client, action: str, to: str | None = None) -> domish.Element:
        address = f" to='{to}'" if to else ""
        client.send(f"<iq type='set' id='{action}'{address}><{action} xmlns='{NS}'/></iq>")
        [reply] = [s for s in client.take("iq") if s.getAttribute("id") == action]
        return reply

    def carbons(self, client: Client, direction: str | None = None) -> list[domish.Element]:
        found = []
        for stanza in client.take("message"):
            for child in stanza.elements():
                if child.uri == NS and (direction is None or child.name == direction):
                    found.append(stanza)
        return found

    def test_received_copy_goes_to_enabled_resources_that_did_not_get_the_message(self) -> None:
        top = self.client("bob", "top", priority=5, carbons=True)
        phone = self.client("bob", "phone", priority=1, carbons=True)
        plain = self.client("bob", "plain", priority=1)
        lurker = self.client("bob", "lurker", priority=None, carbons=True)  # no presence: still copied
        alice = self.client("alice", "a")
        alice.send("<message to='bob@localhost' type='chat' id='m1'><body>hello bob</body></message>")
        [original] = top.take("message")
        self.assertEqual(body(original), "hello bob")
        self.assertEqual(plain.take(), [])
        for client in (phone, lurker):
            [carbon] = self.carbons(client, "received")
            on_wire = wire(carbon)
            self.assertEqual((on_wire["from"], on_wire["to"], on_wire["type"]),
                             ("bob@localhost", client.jid, "chat"))
            inner = forwarded(carbon, "received")
            self.assertEqual((inner["from"], inner["to"], inner["id"], body(inner)),
                             ("alice@localhost/a", "bob@localhost", "m1", "hello bob"))

    def test_message_to_a_full_jid_is_copied_to_the_other_enabled_resources(self) -> None:
        desk = self.client("bob", "desk", carbons=True)
        phone = self.client("bob", "phone", carbons=True)
        alice = self.client("alice", "a")
        alice.send("<message to='bob@localhost/desk' type='chat'><body>to the desk</body></message>")
        self.assertEqual([body(m) for m in desk.take("message")], ["to the desk"])
        [carbon] = self.carbons(phone, "received")
        self.assertEqual(forwarded(carbon, "received")["to"], "bob@localhost/desk")

    def test_sent_copy_goes_to_the_senders_other_enabled_resources_only(self) -> None:
        laptop = self.client("alice", "laptop")  # carbons off: sent copies go out all the same
        phone = self.client("alice", "phone", carbons=True)
        plain = self.client("alice", "plain")
        bob = self.client("bob", "b")
        laptop.send("<message to='bob@localhost/b' type='chat' id='s1'><body>from my laptop</body></message>")
        self.assertEqual([body(m) for m in bob.take("message")], ["from my laptop"])
        [carbon] = self.carbons(phone, "sent")
        on_wire = wire(carbon)
        self.assertEqual((on_wire["from"], on_wire["to"]), ("alice@localhost", phone.jid))
        inner = forwarded(carbon, "sent")
        self.assertEqual((inner["from"], inner["to"], body(inner)),
                         ("alice@localhost/laptop", "bob@localhost/b", "from my laptop"))
        self.assertEqual(laptop.take(), [])
        self.assertEqual(plain.take(), [])
        # The sender itself never gets a copy, carbons on or not.
        phone.send("<message to='bob@localhost/b' type='chat'><body>from my phone</body></message>")
        self.assertEqual(self.carbons(phone), [])

    def test_private_and_no_copy_are_never_copied_and_private_is_kept(self) -> None:
        bob_desk = self.client("bob", "desk", priority=5)
        bob_phone = self.client("bob", "phone", carbons=True)
        alice = self.client("alice", "a")
        alice_phone = self.client("alice", "phone", carbons=True)
        alice.send(f"<message to='bob@localhost' type='chat'><body>secret</body><private xmlns='{NS}'/>"
                   "<no-copy xmlns='urn:xmpp:hints'/></message>")
        alice.send("<message to='bob@localhost' type='chat'><body>hint</body><no-copy xmlns='urn:xmpp:hints'/>"
                   "</message>")
        delivered = bob_desk.take("message")
        self.assertEqual([body(m) for m in delivered], ["secret", "hint"])
        # XEP-0280 1.0 no longer has the server remove <private/>: the recipient sees what was sent.
        self.assertEqual([c.name for c in wire(delivered[0]).elements() if c.uri == NS], ["private"])
        self.assertEqual(self.carbons(bob_phone) + self.carbons(alice_phone), [])

    def test_which_messages_are_copied(self) -> None:
        self.client("bob", "desk", priority=5)
        phone = self.client("bob", "phone", carbons=True)
        alice = self.client("alice", "a")
        copied = {
            "chat without body (a chat state)": "<message to='bob@localhost' type='chat'>"
                                               "<active xmlns='http://jabber.org/protocol/chatstates'/></message>",
            "normal with body": "<message to='bob@localhost'><body>b</body></message>",
            "type normal with body": "<message to='bob@localhost' type='normal'><body>b</body></message>",
            "normal receipt": "<message to='bob@localhost'><received xmlns='urn:xmpp:receipts' id='x'/></message>",
            "normal marker": "<message to='bob@localhost'><displayed xmlns='urn:xmpp:chat-markers:0' id='x'/>"
                             "</message>",
            "direct MUC invitation": "<message to='bob@localhost'><x xmlns='jabber:x:conference' "
                                     "jid='room@muc.localhost'/></message>",
            "mediated MUC invitation": "<message to='bob@localhost'><x xmlns='http://jabber.org/protocol/muc#user'>"
                                       "<invite from='carol@localhost'/></x></message>",
        }
        not_copied = {
            "normal without body": "<message to='bob@localhost'><subject>s</subject></message>",
            "headline": "<message to='bob@localhost' type='headline'><body>news</body></message>",
            "groupchat": "<message to='bob@localhost/desk' type='groupchat'><body>room</body></message>",
            "error": "<message to='bob@localhost/desk' type='error'><body>e</body></message>",
            "private message from a MUC occupant": "<message to='bob@localhost/desk' type='chat'><body>pm</body>"
                                                   "<x xmlns='http://jabber.org/protocol/muc#user'/></message>",
        }
        for name, xml in copied.items():
            alice.send(xml)
            self.assertEqual(len(self.carbons(phone, "received")), 1, name)
        for name, xml in not_copied.items():
            alice.send(xml)
            self.assertEqual(self.carbons(phone), [], name)

    def test_disable_stops_copies_and_repeating_either_is_no_error(self) -> None:
        self.client("bob", "desk", priority=5)
        phone = self.client("bob", "phone", carbons=True)
        self.assertEqual(self.toggle(phone, "enable").getAttribute("type"), "result")
        alice = self.client("alice", "a")
        alice.send("<message to='bob@localhost' type='chat'><body>one</body></message>")
        self.assertEqual(len(self.carbons(phone, "received")), 1)
        for _ in range(2):
            reply = self.toggle(phone, "disable")
            self.assertEqual(reply.getAttribute("type"), "result")
            self.assertIsNone(reply.getAttribute("from"))  # from the account itself
        alice.send("<message to='bob@localhost' type='chat'><body>two</body></message>")
        self.assertEqual(self.carbons(phone), [])
        self.assertEqual(self.server.modules[NS].accounts, set(), "an account without carbons is forgotten")

    def test_carbons_of_another_account_cannot_be_switched(self) -> None:
        bob = self.client("bob", "b")
        alice = self.client("alice", "a")
        self.assertEqual(error_condition(self.toggle(alice, "enable", to="bob@localhost")), "not-allowed")
        self.assertEqual(error_condition(self.toggle(alice, "enable", to="localhost")), "service-unavailable")
        alice.send(f"<iq type='set' id='odd'><carbons xmlns='{NS}'/></iq>")
        [reply] = alice.take("iq")
        self.assertEqual(error_condition(reply), "bad-request")
        self.assertFalse(bob.session.data.get(NS) or alice.session.data.get(NS))

    def test_message_to_own_account_gets_received_copies_but_not_sent_ones(self) -> None:
        desk = self.client("alice", "desk", priority=5)
        phone = self.client("alice", "phone", carbons=True)
        tablet = self.client("alice", "tablet", carbons=True)
        phone.send("<message to='alice@localhost' type='chat'><body>note to self</body></message>")
        self.assertEqual([body(m) for m in desk.take("message")], ["note to self"])
        self.assertEqual(self.carbons(phone), [])
        self.assertEqual(len(self.carbons(tablet, "received")), 1)

    def test_accounts_without_carbons_cost_a_set_lookup(self) -> None:
        """Hot path: nothing looks inside a message unless its account has carbons enabled somewhere."""
        from unittest import mock

        from xmppcluster.modules import carbons

        bob = self.client("bob", "b")
        alice = self.client("alice", "a")
        self.client("carol", "c", carbons=True)  # someone else's carbons change nothing for them
        looked: list[str] = []
        with mock.patch.object(carbons, "eligible", lambda *a: looked.append("eligible")), \
                mock.patch.object(carbons, "forged", lambda *a: looked.append("forged")):
            alice.send("<message to='bob@localhost' type='chat'><body>1</body></message>")
            alice.send("<message to='bob@localhost/b' type='chat'><body>2</body></message>")
        self.assertEqual([body(m) for m in bob.take("message")], ["1", "2"])
        self.assertEqual(looked, [])

    def test_forged_carbon_is_refused_for_an_account_with_carbons(self) -> None:
        bob = self.client("bob", "b", carbons=True)
        bob_other = self.client("bob", "other", carbons=True)
        mallory = self.client("carol", "m")
        forged = (f"<message to='bob@localhost' type='chat'><received xmlns='{NS}'><forwarded xmlns='{FORWARD}'>"
                  "<message xmlns='jabber:client' from='alice@localhost/a' to='bob@localhost/b' type='chat'>"
                  "<body>meet me at the hall</body></message></forwarded></received></message>")
        mallory.send(forged)
        mallory.send(forged.replace("bob@localhost'", "bob@localhost/b'", 1).replace("received", "sent"))
        self.assertEqual(bob.take() + bob_other.take(), [])
        errors = mallory.take("message")
        self.assertEqual([error_condition(e) for e in errors], ["not-acceptable", "not-acceptable"])
        # Nor from one of the account's own resources: a carbon comes from the bare JID, made by the server.
        bob_other.send(forged.replace("bob@localhost'", "bob@localhost/b'", 1))
        self.assertEqual(bob.take(), [])
        self.assertEqual([error_condition(e) for e in bob_other.take("message")], ["not-acceptable"])


class Replication(SynchronousTestCase):
    """The flag in the directory: one attribute on the session's entry, only while on."""

    def test_the_flag_follows_bound_state_and_sync(self) -> None:
        from tests.test_cluster_sync import Node, frame  # here: at module level trial would run its tests too
        from xmppcluster.cluster.directory import describe, sync_frames
        from xmppcluster.core.events import SESSION_CARBONS, Events

        owner, mirror = Node("t1.example.com"), Node("t2.example.com")
        mirror.server.hooks = Events()
        heard: list[tuple[str, bool]] = []
        mirror.server.hooks.on(SESSION_CARBONS, lambda s: heard.append((s.jid, bool(s.data.get(NS)))))
        session = owner.local("alice@example.com/phone")
        self.assertNotIn(b"carbons", describe(session))  # nothing more on the wire for a session without
        session.data[NS] = True
        self.assertIn(b" carbons='1'", describe(session))
        mirror.directory.bound(owner.name, frame(describe(session)))
        remote = mirror.server.sessions.get("alice@example.com", "phone")
        self.assertTrue(remote.data.get(NS))
        del session.data[NS]
        for _ in range(2):  # told once per change
            mirror.directory.state(owner.name, frame(describe(session, "state")))
        self.assertIsNone(remote.data.get(NS))
        session.data[NS] = True
        mirror.directory.begin_sync(owner.name)
        for data in sync_frames([session], lambda s: True):
            mirror.directory.sync(owner.name, frame(data))
        self.assertTrue(remote.data.get(NS))
        self.assertEqual(heard, [("alice@example.com/phone", True), ("alice@example.com/phone", False),
                                 ("alice@example.com/phone", True)])


class RealServer(TestCase):
    """A real server with its listeners; raw clients (our own, independent of the server) and slixmpp."""

    timeout = 60

    async def start(self):
        running = await start_server(self)
        for user in ("alice", "bob", "mallory"):
            await running.add_user(f"{user}@localhost", PASSWORD)
        return running

    def raw(self, running, user: str, resource: str, *, carbons: bool = False, priority: int = 0) -> RawClient:
        client = RawClient(running.ports["c2s"]["plain"], ca_file=ca_file(running))
        self.addCleanup(client.close)
        client.login(user, PASSWORD, resource)
        if carbons:
            client.send(f"<iq type='set' id='on'><enable xmlns='{NS}'/></iq>")
            reply = client.until("{jabber:client}iq")
            assert reply.get("type") == "result", reply.attrib
        client.send(f"<presence><priority>{priority}</priority></presence>")
        ping(client)
        return client

    async def test_forged_received_carbon_never_reaches_the_victim(self) -> None:
        """Attack: mallory wraps a message 'from alice' in a <received/> carbon and sends it to bob."""
        running = await self.start()

        def scenario():
            bob = self.raw(running, "bob", "b", carbons=True)
            mallory = self.raw(running, "mallory", "m")
            for to in ("bob@localhost", "bob@localhost/b"):
                mallory.send(f"<message to='{to}' type='chat' id='forged'><received xmlns='{NS}'>"
                             f"<forwarded xmlns='{FORWARD}'><message xmlns='jabber:client' from='alice@localhost/a'"
                             " to='bob@localhost/b' type='chat'><body>it is me, alice</body></message></forwarded>"
                             "</received></message>")
                error = mallory.until("{jabber:client}message")
                assert error.get("type") == "error", error.attrib
            # bob's next stanza is the answer to his ping: nothing forged came before it
            bob.send("<iq type='get' id='after' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
            return error, bob.next()

        error, next_for_bob = await deferToThread(scenario)
        self.assertIsNotNone(error.find("{jabber:client}error/{urn:ietf:params:xml:ns:xmpp-stanzas}not-acceptable"))
        self.assertEqual((next_for_bob.tag, next_for_bob.get("id")), ("{jabber:client}iq", "after"))

    async def test_received_and_sent_carbons_on_the_wire(self) -> None:
        running = await self.start()

        def scenario():
            alice_desk = self.raw(running, "alice", "desk", priority=5)
            alice_phone = self.raw(running, "alice", "phone", carbons=True)
            bob = self.raw(running, "bob", "b", carbons=True)
            alice_desk.send("<message to='bob@localhost/b' type='chat'><body>hi bob</body></message>")
            got = bob.until("{jabber:client}message")
            sent = alice_phone.until("{jabber:client}message")
            bob.send("<message to='alice@localhost' type='chat'><body>hi alice</body></message>")
            answer = alice_desk.until("{jabber:client}message")
            received = alice_phone.until("{jabber:client}message")
            return got, sent, answer, received

        got, sent, answer, received = await deferToThread(scenario)
        self.assertEqual(got.findtext("{jabber:client}body"), "hi bob")
        self.assertEqual(answer.findtext("{jabber:client}body"), "hi alice")
        for carbon, direction, text in ((sent, "sent", "hi bob"), (received, "received", "hi alice")):
            self.assertEqual((carbon.get("from"), carbon.get("to")), ("alice@localhost", "alice@localhost/phone"))
            inner = carbon.find(f"{{{NS}}}{direction}/{{{FORWARD}}}forwarded/{{jabber:client}}message")
            self.assertIsNotNone(inner, direction)
            self.assertEqual(inner.findtext("{jabber:client}body"), text)

    async def test_slixmpp_xep_0280(self) -> None:
        running = await self.start()
        alice_desk, alice_phone, bob = await run_slixmpp(running.ports["c2s"]["plain"], ca_file(running), [
            {"jid": "alice@localhost/desk", "priority": 5,
             "send": [{"to": "bob@localhost", "body": "sent from the desk"}], "expect": 2},
            {"jid": "alice@localhost/phone", "carbons": True, "expect_sent": 1, "expect_received": 1},
            {"jid": "bob@localhost/b", "carbons": True, "expect": 1,
             "send": [{"to": "alice@localhost", "body": "answer"},
                      {"to": "alice@localhost", "body": "private answer", "private": True}]},
        ])
        for result in (alice_desk, alice_phone, bob):
            self.assertIsNone(result["error"], result)
        self.assertIn(NS, alice_phone["features"])
        self.assertEqual([m["body"] for m in bob["received"]], ["sent from the desk"])
        self.assertEqual(alice_phone["carbons_sent"], [
            {"from": "alice@localhost", "to": "alice@localhost/phone", "inner_from": "alice@localhost/desk",
             "inner_to": "bob@localhost", "body": "sent from the desk"}])
        self.assertEqual([c["body"] for c in alice_phone["carbons_received"]], ["answer"])
        self.assertEqual(alice_phone["received"], [])


def ping(client: RawClient) -> None:
    """Barrier: the server processed everything this client sent before."""
    client.send("<iq type='get' id='barrier' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    while client.until("{jabber:client}iq").get("id") != "barrier":
        pass


async def run_slixmpp(port: int, ca: str, clients: list[dict], timeout: float = 30) -> list[dict]:
    spec = {"host": "127.0.0.1", "port": port, "ca": ca, "timeout": timeout,
            "clients": [{"password": PASSWORD, **c} for c in clients]}
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-m", "tests.clients.slix_carbons", json.dumps(spec)], env=dict(os.environ), path=ROOT)
    if code != 0:
        raise AssertionError(f"slixmpp client failed ({code}): {err.decode(errors='replace')[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


class AcrossTheCluster(TestCase):
    """Two real twistd nodes: a device on t2 gets the carbons of what its account does on t1."""

    timeout = 120

    async def setUp(self) -> None:
        self.cluster = make_cluster(self, 2)
        await migrate(self.cluster)
        await self.cluster.add_users(*(f"{u}@{DOMAIN}" for u in ("alice", "bob")), password=PASSWORD)
        for name in self.cluster.nodes:
            self.cluster.start(name, wait=False)
        for name in self.cluster.nodes:
            await deferToThread(self.wait_linked, name)

    def wait_linked(self, name: str) -> None:
        node = self.cluster.nodes[name]
        wait_for_port(node.ports["c2s"], process=node.process)
        other = next(n for n in self.cluster.nodes if n != name)
        try:
            wait_until(lambda: f"link to {other} up" in self.cluster.log(name), timeout=30)
        except AssertionError:
            logs = "\n".join(f"--- {n}\n{self.cluster.log(n)[-2500:]}" for n in self.cluster.nodes)
            raise AssertionError(f"{name} did not link to {other} in 30 s\n{logs}") from None

    def raw(self, node: str, user: str, resource: str, *, carbons: bool = False, priority: int = 0) -> RawClient:
        client = RawClient(self.cluster.nodes[node].ports["c2s"], domain=DOMAIN, ca_file=self.cluster.ca_file)
        self.addCleanup(client.close)
        client.login(user, PASSWORD, resource)
        if carbons:
            client.send(f"<iq type='set' id='on'><enable xmlns='{NS}'/></iq>")
            assert client.until("{jabber:client}iq").get("type") == "result"
        client.send(f"<presence><priority>{priority}</priority></presence>")
        return client

    def test_raw_carbons_cross_nodes_and_disable_is_replicated(self) -> None:
        def scenario():
            desk = self.raw("t1.example.com", "alice", "desk", priority=5)
            phone = self.raw("t2.example.com", "alice", "phone", carbons=True)
            bob = self.raw("t1.example.com", "bob", "b")
            self.cluster.wait_replicated(2, 1)
            # Barrier for the carbons flag: t2 sent it before anything the phone sends next, on the same link.
            phone.send(f"<message to='alice@{DOMAIN}/desk' type='chat'><body>ready</body></message>")
            desk.until("{jabber:client}message")
            desk.send(f"<message to='bob@{DOMAIN}/b' type='chat'><body>from the desk on t1</body></message>")
            bob.until("{jabber:client}message")
            sent = phone.until("{jabber:client}message")
            bob.send(f"<message to='alice@{DOMAIN}' type='chat'><body>answer on t1</body></message>")
            desk.until("{jabber:client}message")
            received = phone.until("{jabber:client}message")
            # Disabled on t2: t1 stops copying (barrier as above, then a message that would be copied).
            phone.send(f"<iq type='set' id='off'><disable xmlns='{NS}'/></iq>")
            assert phone.until("{jabber:client}iq").get("type") == "result"
            phone.send(f"<message to='alice@{DOMAIN}/desk' type='chat'><body>ready again</body></message>")
            desk.until("{jabber:client}message")
            bob.send(f"<message to='alice@{DOMAIN}' type='chat'><body>not copied</body></message>")
            desk.until("{jabber:client}message")
            # A copy t1 made of it went on the t1 -> t2 link before this fence: the phone's next message.
            desk.send(f"<message to='alice@{DOMAIN}/phone' type='chat'><body>fence</body></message>")
            after = phone.until("{jabber:client}message")
            return sent, received, after

        return deferToThread(scenario).addCallback(self._check_raw)

    def _check_raw(self, result) -> None:
        sent, received, after = result
        for carbon, direction, text in ((sent, "sent", "from the desk on t1"), (received, "received", "answer on t1")):
            self.assertEqual((carbon.get("from"), carbon.get("to")), (f"alice@{DOMAIN}", f"alice@{DOMAIN}/phone"))
            inner = carbon.find(f"{{{NS}}}{direction}/{{{FORWARD}}}forwarded/{{jabber:client}}message")
            self.assertIsNotNone(inner, direction)
            self.assertEqual(inner.findtext("{jabber:client}body"), text)
        self.assertEqual((after.get("from"), after.findtext("{jabber:client}body")), (f"alice@{DOMAIN}/desk", "fence"))

    async def test_slixmpp_carbon_reaches_the_senders_device_on_the_other_node(self) -> None:
        t1, t2 = (self.cluster.nodes[n].ports["c2s"] for n in ("t1.example.com", "t2.example.com"))
        desk, phone, bob = await run_slixmpp(t1, self.cluster.ca_file, [
            {"jid": f"alice@{DOMAIN}/desk", "priority": 5, "ping": [f"alice@{DOMAIN}/phone", f"bob@{DOMAIN}/b"],
             "send": [{"to": f"bob@{DOMAIN}/b", "body": "desk on t1 to bob on t2"}]},
            {"jid": f"alice@{DOMAIN}/phone", "port": t2, "carbons": True, "expect_sent": 1},
            {"jid": f"bob@{DOMAIN}/b", "port": t2, "expect": 1},
        ])
        for result in (desk, phone, bob):
            self.assertIsNone(result["error"], result)
        self.assertEqual([m["body"] for m in bob["received"]], ["desk on t1 to bob on t2"])
        self.assertEqual(phone["carbons_sent"], [
            {"from": f"alice@{DOMAIN}", "to": f"alice@{DOMAIN}/phone", "inner_from": f"alice@{DOMAIN}/desk",
             "inner_to": f"bob@{DOMAIN}/b", "body": "desk on t1 to bob on t2"}])
