"""XEP-0030: the server's features are exactly the loaded modules'; accounts answer only to the authorized."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.test_base_modules import FakeRoster, Harness, child, error_condition
from xmppcluster.config import parse_text
from xmppcluster.modules import available_modules, enabled_modules

INFO = "http://jabber.org/protocol/disco#info"
ITEMS = "http://jabber.org/protocol/disco#items"
BASE = {
    "disco": {INFO, ITEMS},
    "urn:xmpp:ping": {"urn:xmpp:ping"},
    "jabber:iq:version": {"jabber:iq:version"},
    "vcard-temp": {"vcard-temp"},
    "jabber:iq:private": {"jabber:iq:private"},
    "jabber:iq:last": {"jabber:iq:last"},
    "urn:xmpp:time": {"urn:xmpp:time"},
    "jabber:iq:register": {"jabber:iq:register"},
}


def features(reply) -> list[str]:
    return [f["var"] for f in child(reply, "query").elements() if f.name == "feature"]


def identities(reply) -> list[tuple[str, str]]:
    return [(i["category"], i["type"]) for i in child(reply, "query").elements() if i.name == "identity"]


class ServerDiscoTests(TestCase):
    timeout = 15

    async def info(self, config: str = "", to: str = "localhost") -> list[str]:
        h = await Harness.create(self, None, config)
        alice = h.login("alice@localhost")
        reply = await h.iq(alice, f"<query xmlns='{INFO}'/>", to=to)
        self.assertEqual(identities(reply), [("server", "im")])
        found = features(reply)
        self.assertEqual(len(found), len(set(found)), "duplicate features")
        return found

    async def test_lists_exactly_the_enabled_modules_features(self) -> None:
        config = parse_text("--virt-hosts=localhost\n")
        expected = set()
        for cls in enabled_modules(config):
            if cls.name != "jabber:iq:register":  # registration is off for this vhost
                expected |= set(cls.features)
        found = await self.info()
        self.assertEqual(set(found), expected)
        for name in ("disco", "urn:xmpp:ping", "jabber:iq:version", "vcard-temp", "jabber:iq:private",
                     "jabber:iq:last", "urn:xmpp:time"):
            self.assertTrue(BASE[name] <= set(found), name)
        self.assertNotIn("jabber:iq:register", found)

    async def test_disabled_module_feature_disappears(self) -> None:
        found = await self.info("--sm-plugins=-vcard-temp,-urn:xmpp:time\n")
        self.assertNotIn("vcard-temp", found)
        self.assertNotIn("urn:xmpp:time", found)
        self.assertIn("jabber:iq:version", found)

    async def test_register_feature_follows_the_vhost_option(self) -> None:
        self.assertIn("jabber:iq:register", await self.info("--virt-hosts=localhost:register,example.org\n"))
        self.assertNotIn("jabber:iq:register",
                         await self.info("--virt-hosts=localhost:register,example.org\n", to="example.org"))

    async def test_only_named_modules(self) -> None:
        h = await Harness.create(self, ["disco", "urn:xmpp:ping"])
        alice = h.login("alice@localhost")
        reply = await h.iq(alice, f"<query xmlns='{INFO}'/>", to="localhost")
        self.assertEqual(set(features(reply)), {INFO, ITEMS, "urn:xmpp:ping"})

    async def test_every_module_and_its_features(self) -> None:
        modules = available_modules()
        for name, feats in BASE.items():
            self.assertIn(name, modules)
            self.assertTrue(feats <= set(modules[name].features), name)

    async def test_unknown_node(self) -> None:
        h = await Harness.create(self, ["disco"])
        alice = h.login("alice@localhost")
        for ns in (INFO, ITEMS):
            reply = await h.iq(alice, f"<query xmlns='{ns}' node='nope'/>", to="localhost")
            self.assertEqual(error_condition(reply), "item-not-found")

    async def test_server_items_empty(self) -> None:
        h = await Harness.create(self, ["disco"])
        alice = h.login("alice@localhost")
        reply = await h.iq(alice, f"<query xmlns='{ITEMS}'/>", to="localhost")
        self.assertIsNone(error_condition(reply))
        self.assertEqual(list(child(reply, "query").elements()), [])

    async def test_without_disco_module_service_unavailable(self) -> None:
        h = await Harness.create(self, None, "--sm-plugins=-disco\n")
        alice = h.login("alice@localhost")
        reply = await h.iq(alice, f"<query xmlns='{INFO}'/>", to="localhost")
        self.assertEqual(error_condition(reply), "service-unavailable")


class AccountDiscoTests(TestCase):
    timeout = 15

    async def setUp(self) -> None:
        self.h = await Harness.create(self, ["disco", "vcard-temp", "jabber:iq:last", "urn:xmpp:ping"])

    async def test_owner_gets_account_info(self) -> None:
        alice = self.h.login("alice@localhost")
        for to in ("alice@localhost", None):
            reply = await self.h.iq(alice, f"<query xmlns='{INFO}'/>", to=to)
            self.assertEqual(identities(reply), [("account", "registered")])
            self.assertEqual(set(features(reply)), {INFO, ITEMS, "vcard-temp", "jabber:iq:last"})

    async def test_stranger_and_unknown_account_look_the_same(self) -> None:
        bob = self.h.login("bob@localhost")
        for to in ("alice@localhost", "nobody@localhost"):
            reply = await self.h.iq(bob, f"<query xmlns='{INFO}'/>", to=to)
            self.assertEqual(error_condition(reply), "service-unavailable")
            reply = await self.h.iq(bob, f"<query xmlns='{ITEMS}'/>", to=to)
            self.assertIsNone(error_condition(reply))
            self.assertEqual(list(child(reply, "query").elements()), [])

    async def test_subscribed_contact_sees_info_and_resources(self) -> None:
        self.h.server.add_module(FakeRoster(self.h.server, {("alice@localhost", "bob@localhost"),
                                                            ("nobody@localhost", "bob@localhost")}))
        self.h.login("alice@localhost", "phone", available=True)
        self.h.login("alice@localhost", "hidden")  # bound, never available: not listed
        bob = self.h.login("bob@localhost")
        reply = await self.h.iq(bob, f"<query xmlns='{INFO}'/>", to="alice@localhost")
        self.assertEqual(identities(reply), [("account", "registered")])
        reply = await self.h.iq(bob, f"<query xmlns='{ITEMS}'/>", to="alice@localhost")
        self.assertEqual([i["jid"] for i in child(reply, "query").elements()], ["alice@localhost/phone"])
        # authorized but the account does not exist (anymore): still service-unavailable
        reply = await self.h.iq(bob, f"<query xmlns='{INFO}'/>", to="nobody@localhost")
        self.assertEqual(error_condition(reply), "service-unavailable")

    async def test_anonymous_owner(self) -> None:
        ghost = self.h.login("ghost@localhost", anonymous=True)
        reply = await self.h.iq(ghost, f"<query xmlns='{INFO}'/>")
        self.assertEqual(identities(reply), [("account", "anonymous")])

    async def test_account_unknown_node(self) -> None:
        alice = self.h.login("alice@localhost")
        reply = await self.h.iq(alice, f"<query xmlns='{INFO}' node='x'/>")
        self.assertEqual(error_condition(reply), "item-not-found")

    async def test_full_jid_goes_to_the_client(self) -> None:
        alice = self.h.login("alice@localhost", "phone", available=True)
        bob = self.h.login("bob@localhost")
        self.h.send(bob, f"<iq type='get' id='d1' to='alice@localhost/phone'><query xmlns='{INFO}'/></iq>")
        delivered = await alice.stream.reply("d1")
        self.assertEqual(delivered["from"], bob.jid)
