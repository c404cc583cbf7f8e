"""XEP-0357 push notifications against real nodes: the app server is an XEP-0114 component."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.clients.raw import RawClient
from tests.clients.raw_component import RawComponent, c
from tests.support.attack import MAX_RTT, PINGER, PINGER_PASSWORD, Pinger, pinged_attack
from tests.support.databases import PostgresBackend, SQLiteBackend, make_storage
from tests.support.server import free_port, start_server
from tests.support.slix import ca_file
from tests.test_message_rules import eventually
from xmppcluster.storage.errors import NoSuchAccount
from xmppcluster.storage.push import PushStore, TooManyRegistrations

CLIENT = "{jabber:client}"
STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"
PUSH = "urn:xmpp:push:0"
PUBSUB = "http://jabber.org/protocol/pubsub"
DATA = "jabber:x:data"
COMPONENT = "push.localhost"
SECRET = "s3cret-push"
OPTIONS = (f"<x xmlns='{DATA}' type='submit'><field var='FORM_TYPE'>"
           "<value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
           "<field var='secret'><value>eruio234vzxc2kla-91</value></field></x>")


def condition(stanza: ET.Element) -> str | None:
    error = stanza.find(f"{CLIENT}error")
    if error is None:
        return None
    return next((child.tag.split("}")[1] for child in error if child.tag.startswith(f"{{{STANZA_ERRORS}}}")
                 and not child.tag.endswith("}text")), None)


def enable(client: RawClient, ident: str, node: str, *, jid: str = COMPONENT, options: str = OPTIONS,
           to: str = "") -> ET.Element:
    """Send an enable IQ and return its answer."""
    address = f" to='{to}'" if to else ""
    client.send(f"<iq type='set' id='{ident}'{address}><enable xmlns='{PUSH}' jid='{jid}' node='{node}'>"
                f"{options}</enable></iq>")
    return answer(client, ident)


def answer(client: RawClient, ident: str) -> ET.Element:
    while True:
        reply = client.until(f"{CLIENT}iq")
        if reply.get("id") == ident:
            return reply


def summary(notification: ET.Element) -> dict[str, str]:
    """The summary form's fields of a notification IQ (as the component got it)."""
    form = notification.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish/{{{PUBSUB}}}item/{{{PUSH}}}notification/"
                             f"{{{DATA}}}x")
    assert form is not None, ET.tostring(notification)
    return {f.get("var"): f.findtext(f"{{{DATA}}}value") for f in form.findall(f"{{{DATA}}}field")}


def publish_options(notification: ET.Element) -> dict[str, str]:
    form = notification.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish-options/{{{DATA}}}x")
    if form is None:
        return {}
    return {f.get("var"): f.findtext(f"{{{DATA}}}value") for f in form.findall(f"{{{DATA}}}field")}


def node_of(notification: ET.Element) -> str | None:
    publish = notification.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish")
    return None if publish is None else publish.get("node")


class PushStoreTestsMixin:
    """The registrations table on both backends: cap, replace, disable, token, cascade."""

    backend: str

    async def test_registrations(self) -> None:
        storage = await make_storage(self, self.backend)
        await storage.accounts.create("alice", "localhost", "pw")
        store = PushStore(storage.db)
        for n in range(3):
            await store.enable("alice", "localhost", "push.example.com", f"n{n}", "", f"t{n}", limit=3, now=n)
        with self.assertRaises(TooManyRegistrations):
            await store.enable("alice", "localhost", "push.example.com", "n3", "", "t3", limit=3, now=5)
        await store.enable("alice", "localhost", "push.example.com", "n0", "<x/>", "t9", limit=3, now=6)
        with self.assertRaises(NoSuchAccount):
            await store.enable("nobody", "localhost", "push.example.com", "n", "", "t", limit=3, now=1)
        regs = await store.list("alice", "localhost")
        self.assertEqual([(r.node, r.options, r.token) for r in regs], [("n1", "", "t1"), ("n2", "", "t2"),
                                                                         ("n0", "<x/>", "t9")])
        self.assertEqual(await store.disable_token("alice", "localhost", "other.example.com", "t1"), 0)
        self.assertEqual(await store.disable_token("alice", "localhost", "push.example.com", "t1"), 1)
        self.assertEqual(await store.disable("alice", "localhost", "push.example.com", "n2"), 1)
        await storage.accounts.delete("alice", "localhost")
        self.assertEqual(await store.list("alice", "localhost"), [])


class SQLitePushStoreTests(PushStoreTestsMixin, SQLiteBackend, TestCase):
    pass


class PostgresPushStoreTests(PushStoreTestsMixin, PostgresBackend, TestCase):
    pass


class PushTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.ext = free_port()
        self.running = await start_server(self, f"ext/connections/ports[i]={self.ext}\n"
                                                f"ext/connections/{self.ext}/ifc[s]=127.0.0.1\n"
                                                f"ext/components[s]={COMPONENT}:{SECRET}\n")
        for user in ("alice", "bob"):
            await self.running.add_user(f"{user}@localhost", f"{user}-pass")
        self.ca = ca_file(self.running)
        self.push = self.running.server.modules["push"]
        self.push.min_interval = 1.0

    def component(self) -> RawComponent:
        comp = RawComponent(self.ext, COMPONENT)
        self.addCleanup(comp.close)
        assert comp.handshake(SECRET).tag == c("handshake")
        return comp

    def client(self, user: str, resource: str = "r") -> RawClient:
        client = RawClient(self.running.ports["c2s"]["plain"], ca_file=self.ca)
        self.addCleanup(client.close)
        client.login(user, f"{user}-pass", resource)
        return client

    async def registrations(self, user: str = "alice") -> list:
        return await self.push.store.list(user, "localhost")

    async def test_disco_advertises_push(self):
        def run():
            alice = self.client("alice")
            alice.send("<iq type='get' id='d1' to='alice@localhost'>"
                       "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
            reply = answer(alice, "d1")
            return [f.get("var") for f in reply.iter("{http://jabber.org/protocol/disco#info}feature")]

        self.assertIn(PUSH, await deferToThread(run))

    async def test_offline_message_notifies_then_disable_stops_it(self):
        def run():
            comp = self.component()
            alice = self.client("alice")
            enabled = enable(alice, "e1", "n1").get("type")
            alice.close()
            bob = self.client("bob", "b")
            bob.send("<message to='alice@localhost' type='chat'><body>the secret body</body></message>")
            first = comp.until(c("iq"))
            comp.send(f"<iq type='result' id='{first.get('id')}' from='{COMPONENT}' to='{first.get('from')}'/>")
            # disable n1, enable n2: the next notification goes to n2 only
            alice = self.client("alice", "again")
            alice.send(f"<iq type='set' id='x1'><disable xmlns='{PUSH}' jid='{COMPONENT}' node='n1'/></iq>")
            disabled = answer(alice, "x1").get("type")
            second_enable = enable(alice, "e2", "n2", options="").get("type")
            alice.close()
            bob.send("<message to='alice@localhost' type='chat'><body>again</body></message>")
            second = comp.until(c("iq"))
            return enabled, first, disabled, second_enable, second

        enabled, first, disabled, second_enable, second = await deferToThread(run)
        self.assertEqual((enabled, disabled, second_enable), ("result", "result", "result"))
        self.assertEqual((first.get("type"), first.get("from"), first.get("to"), node_of(first)),
                         ("set", "alice@localhost", COMPONENT, "n1"))
        self.assertEqual(summary(first), {"FORM_TYPE": "urn:xmpp:push:summary", "message-count": "1",
                                          "last-message-sender": "bob@localhost/b"})
        self.assertEqual(publish_options(first)["secret"], "eruio234vzxc2kla-91")
        self.assertNotIn(b"secret body", ET.tostring(first))
        self.assertEqual(node_of(second), "n2")
        self.assertEqual(publish_options(second), {})
        # alice never sent presence: both messages are still stored
        self.assertEqual(summary(second)["message-count"], "2")

    async def test_error_reply_disables(self):
        def run():
            comp = self.component()
            alice = self.client("alice")
            assert enable(alice, "e1", "gone").get("type") == "result"
            alice.close()
            bob = self.client("bob", "b")
            bob.send("<message to='alice@localhost' type='chat'><body>hi</body></message>")
            got = comp.until(c("iq"))
            comp.send(f"<iq type='error' id='{got.get('id')}' from='{COMPONENT}' to='{got.get('from')}'>"
                      f"<error type='cancel'><item-not-found xmlns='{STANZA_ERRORS}'/></error></iq>")
            return node_of(got)

        self.assertEqual(await deferToThread(run), "gone")
        await eventually(lambda: _empty(self.registrations()))

    async def test_spoofed_error_does_not_disable(self):
        """An error reply from someone else than the app server (another component would need its secret;
        a local user) does not disable the registration."""
        alice = await deferToThread(self.client, "alice")
        self.assertEqual((await deferToThread(enable, alice, "e1", "keep")).get("type"), "result")
        token = (await self.registrations())[0].token

        def run():
            bob = self.client("bob", "b")
            bob.send(f"<iq type='error' id='push-{token}-1' to='alice@localhost'>"
                     f"<error type='cancel'><item-not-found xmlns='{STANZA_ERRORS}'/></error></iq>")
            bob.send("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
            return answer(bob, "sync").get("type")

        self.assertEqual(await deferToThread(run), "result")
        await self.push.stop()
        self.assertEqual([r.node for r in await self.registrations()], ["keep"])

    async def test_hostile_enables_while_a_client_pings(self):
        await self.running.add_user(PINGER, PINGER_PASSWORD)
        pinger = await deferToThread(Pinger, self.running.ports["c2s"]["plain"], self.ca)
        huge = (f"<x xmlns='{DATA}' type='submit'><field var='FORM_TYPE'><value>"
                "http://jabber.org/protocol/pubsub#publish-options</value></field>"
                + "".join(f"<field var='f{i}'><value>{'v' * 2000}</value></field>" for i in range(20)) + "</x>")

        def attack():
            alice = self.client("alice")
            outcomes = {}
            outcomes["huge"] = condition(enable(alice, "h", "huge", options=huge))
            outcomes["local-user"] = condition(enable(alice, "l", "n", jid="bob@localhost"))
            outcomes["local-domain"] = condition(enable(alice, "d", "n", jid="localhost"))
            outcomes["no-node"] = condition(enable(alice, "nn", ""))
            outcomes["not-owner"] = condition(enable(alice, "o", "n", to="bob@localhost"))
            results = [enable(alice, f"f{i}", f"node{i}").get("type") for i in range(40)]
            outcomes["flood"] = (results.count("result"), results.count("error"))
            return outcomes

        outcomes, rtts, _ = await pinged_attack(pinger, attack, self.id())
        self.assertEqual(outcomes, {"huge": "not-acceptable", "local-user": "not-acceptable",
                                    "local-domain": "not-acceptable", "no-node": "bad-request",
                                    "not-owner": "forbidden", "flood": (10, 30)})
        self.assertLess(max(rtts), MAX_RTT, f"ping round trips under attack: {sorted(rtts)[-5:]}")
        self.assertEqual(len(await self.registrations()), 10)
        self.assertEqual(await self.registrations("bob"), [])


async def _empty(registrations) -> bool:
    return not await registrations


class PushClusterTests(TestCase):
    """The app server is a component connected to t2; alice's messages are stored offline by t1."""

    timeout = 90

    async def setUp(self) -> None:
        from tests.support.cluster import DOMAIN, make_cluster, migrate

        self.domain = DOMAIN
        self.component_domain = f"push.{DOMAIN}"
        self.ext = {name: free_port() for name in ("t1.example.com", "t2.example.com")}
        node_extra = {name: f"ext/connections/ports[i]={port}\next/connections/{port}/ifc[s]=127.0.0.1\n"
                      for name, port in self.ext.items()}
        self.cluster = make_cluster(self, 2, f"ext/components[s]={self.component_domain}:{SECRET}\n",
                                    node_extra=node_extra)
        await migrate(self.cluster)
        await self.cluster.add_users(f"alice@{DOMAIN}", f"bob@{DOMAIN}", password="pass")
        for name in self.cluster.nodes:
            self.cluster.start(name, wait=False)
        for name in self.cluster.nodes:
            await deferToThread(self.wait_linked, name)

    def wait_linked(self, name: str) -> None:
        from tests.support.process import wait_for_port
        from tests.support.waiting import wait_until

        node = self.cluster.nodes[name]
        wait_for_port(node.ports["c2s"], process=node.process)
        others = [n for n in self.cluster.nodes if n != name]
        wait_until(lambda: all(f"link to {o} up" in self.cluster.log(name) for o in others), timeout=30)

    def client(self, user: str, resource: str) -> RawClient:
        client = RawClient(self.cluster.nodes["t1.example.com"].ports["c2s"], domain=self.domain,
                           ca_file=self.cluster.ca_file)
        self.addCleanup(client.close)
        client.login(user, "pass", resource)
        return client

    def test_component_on_the_other_node_gets_the_notification(self):
        from tests.support.waiting import wait_until

        def scenario():
            comp = RawComponent(self.ext["t2.example.com"], self.component_domain)
            self.addCleanup(comp.close)
            assert comp.handshake(SECRET).tag == c("handshake")
            alice = self.client("alice", "a")
            assert enable(alice, "e1", "n1", jid=self.component_domain).get("type") == "result"
            alice.close()
            bob = self.client("bob", "b")
            bob.send(f"<message to='alice@{self.domain}' type='chat'><body>hi</body></message>")
            got = comp.until(c("iq"))
            comp.send(f"<iq type='error' id='{got.get('id')}' from='{self.component_domain}' "
                      f"to='{got.get('from')}'><error type='auth'><not-authorized xmlns='{STANZA_ERRORS}'/>"
                      "</error></iq>")
            # t2 received the error and disabled the registration in the shared database
            wait_until(lambda: "push registration of alice@" in self.cluster.log("t2.example.com"), timeout=20)
            return got

        def check(got):
            self.assertEqual((got.get("from"), node_of(got)), (f"alice@{self.domain}", "n1"))
            self.assertEqual(summary(got)["message-count"], "1")
            self.assertEqual(summary(got)["last-message-sender"], f"bob@{self.domain}/b")
            self.assertEqual(publish_options(got)["secret"], "eruio234vzxc2kla-91")

        return deferToThread(scenario).addCallback(check)
