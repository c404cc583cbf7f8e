"""Subscriptions (RFC 6121 §3) and presence (§4) through a real server, on SQLite and PostgreSQL."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.support.databases import PostgresBackend, SQLiteBackend
from tests.test_roster import IMHarness, items_of, push_item

A, B, C = "alice@localhost", "bob@localhost", "carol@localhost"


def attrs(items) -> list[tuple]:
    return [(e.getAttribute("from"), e.getAttribute("to"), e.getAttribute("type")) for e in items]


class PresenceTestsMixin(IMHarness):
    async def subscribe_both(self, alice, bob) -> None:
        """Alice and Bob end in "both" through the protocol."""
        await alice.presence(bob.bare, "subscribe")
        await bob.presence(alice.bare, "subscribed")
        await bob.presence(alice.bare, "subscribe")
        await alice.presence(bob.bare, "subscribed")
        alice.take(), bob.take()

    async def item(self, client, contact: str):
        return items_of(await client.get_roster()).get(contact)

    # -- subscriptions ------------------------------------------------------------------------------

    async def test_handshake(self) -> None:
        await self.start()
        alice = await self.login(A, available=True)
        bob = await self.login(B, available=True)
        await alice.presence(B, "subscribe", "<status>hi</status>")
        [push] = alice.pushes()
        self.assertEqual((push_item(push)["subscription"], push_item(push)["ask"]), ("none", "subscribe"))
        [request] = bob.presences("subscribe")
        self.assertEqual((request["from"], request["to"]), (A, B))  # stamped with bare JIDs (§3.1.2)
        self.assertEqual(str(request.status), "hi")
        self.assertEqual(bob.pushes(), [])  # a request creates no item for the contact
        await bob.presence(A + "/r1", "subscribed")  # a full JID is treated as the bare one
        [push] = bob.pushes()
        self.assertEqual(push_item(push)["subscription"], "from")
        [push] = alice.pushes()
        self.assertEqual(push_item(push)["subscription"], "to")
        self.assertFalse(push_item(push).hasAttribute("ask"))
        self.assertEqual(attrs(alice.presences("subscribed")), [(B, A, "subscribed")])
        # Bob's current presence goes to his new subscriber (§3.1.5)
        self.assertEqual(attrs(alice.presences(None)), [(B + "/r1", A, None)])
        await bob.presence(A, "subscribe")
        await alice.presence(B, "subscribed")
        self.assertEqual(attrs(bob.presences(None)), [(A + "/r1", B, None)])
        self.assertEqual((await self.item(alice, B))["subscription"], "both")
        self.assertEqual((await self.item(bob, A))["subscription"], "both")

    async def test_request_waits_for_the_next_available_presence(self) -> None:
        await self.start()
        alice = await self.login(A, available=True)
        await alice.presence(B, "subscribe")
        bob = await self.login(B)
        self.assertEqual(bob.presences(), [])  # not available yet
        await bob.presence()
        self.assertEqual(attrs(bob.presences("subscribe")), [(A, B, "subscribe")])
        await bob.close()
        bob = await self.login(B, "r2")
        await bob.presence()
        self.assertEqual(attrs(bob.presences("subscribe")), [(A, B, "subscribe")])  # again, until answered
        await bob.presence(A, "unsubscribed")
        self.assertEqual(attrs(alice.presences("unsubscribed")), [(B, A, "unsubscribed")])
        self.assertEqual((await self.item(alice, B))["subscription"], "none")
        self.assertFalse((await self.item(alice, B)).hasAttribute("ask"))
        bob3 = await self.login(B, "r3")
        await bob3.presence()
        self.assertEqual(bob3.presences("subscribe"), [])
        self.assertIsNone(await self.item(bob3, A))  # a denied stranger leaves no item

    async def test_unreadable_stored_request_is_skipped_and_logged_once(self) -> None:
        """A damaged pending row: the others are still delivered, one error line names it, no traceback."""
        await self.start()
        alice = await self.login(A)
        carol = await self.login(C)
        await alice.presence(B, "subscribe")
        await carol.presence(B, "subscribe")
        await self.storage.db.execute("UPDATE roster_pending SET stanza = ? WHERE contact = ?", ("<presence", A))
        errors: list[dict] = []
        self.server.modules["presence"].log.observer = errors.append
        bob = await self.login(B)
        await bob.presence()
        self.assertEqual(attrs(bob.presences("subscribe")), [(C, B, "subscribe")])
        self.assertEqual([e["contact"] for e in errors if e.get("log_level").name == "error"], [A])
        self.assertFalse(any(e.get("log_failure") for e in errors))

    async def test_duplicate_request_not_delivered_twice(self) -> None:
        await self.start()
        alice = await self.login(A)
        bob = await self.login(B, available=True)
        await alice.presence(B, "subscribe")
        await alice.presence(B, "subscribe")
        self.assertEqual(len(bob.presences("subscribe")), 1)

    async def test_subscribe_when_already_subscribed_is_answered_by_the_server(self) -> None:
        await self.start()
        alice = await self.login(A, available=True)
        bob = await self.login(B, available=True)
        await self.subscribe_both(alice, bob)
        # Alice's side lost its state (e.g. restored from an old backup): she asks again
        await self.desync(A, B, "none")
        await alice.presence(B, "subscribe")
        self.assertEqual(bob.presences("subscribe"), [])
        self.assertEqual(attrs(alice.presences("subscribed")), [(B, A, "subscribed")])
        self.assertEqual(attrs(alice.presences(None)), [(B + "/r1", A, None)])
        self.assertEqual((await self.item(alice, B))["subscription"], "to")

    async def desync(self, owner: str, contact: str, subscription: str) -> None:
        """Write an item behind the server's back, as another node or a restore would."""
        from dataclasses import replace

        from xmppcluster.storage.roster import RosterItem

        user, _, domain = owner.partition("@")
        await self.roster.store.modify(user, domain, contact, lambda item, pending: (
            replace(item or RosterItem(contact), subscription=subscription, ask=False), None))
        self.roster.invalidate(owner)

    async def test_pre_approval(self) -> None:
        await self.start()
        alice = await self.login(A, available=True)
        bob = await self.login(B, available=True)
        features = [(e.uri, e.name) for e in self.server.stream_features(bob.stream, "bound")]
        self.assertIn(("urn:xmpp:features:pre-approval", "sub"), features)
        await bob.presence(A, "subscribed")
        self.assertEqual(alice.presences(), [])  # not routed
        [push] = bob.pushes()
        self.assertEqual((push_item(push)["subscription"], push_item(push)["approved"]), ("none", "true"))
        await alice.presence(B, "subscribe")
        self.assertEqual(bob.presences("subscribe"), [])  # approved by the server
        self.assertEqual(attrs(alice.presences("subscribed")), [(B, A, "subscribed")])
        self.assertEqual(attrs(alice.presences(None)), [(B + "/r1", A, None)])
        item = await self.item(bob, A)
        self.assertEqual(item["subscription"], "from")
        self.assertFalse(item.hasAttribute("approved"))
        self.assertEqual((await self.item(alice, B))["subscription"], "to")

    async def test_unsubscribed_cancels_pre_approval(self) -> None:
        await self.start()
        alice = await self.login(A)
        bob = await self.login(B, available=True)
        await bob.presence(A, "subscribed")
        await bob.presence(A, "unsubscribed")
        self.assertFalse((await self.item(bob, A)).hasAttribute("approved"))
        await alice.presence(B, "subscribe")
        self.assertEqual(len(bob.presences("subscribe")), 1)

    async def test_unsubscribe(self) -> None:
        await self.start()
        alice = await self.login(A, available=True)
        bob = await self.login(B, available=True)
        await self.subscribe_both(alice, bob)
        await alice.presence(B, "unsubscribe")
        self.assertEqual(push_item(alice.pushes()[0])["subscription"], "from")
        self.assertEqual(push_item(bob.pushes()[0])["subscription"], "to")
        self.assertEqual(attrs(bob.presences("unsubscribe")), [(A, B, "unsubscribe")])
        # Bob's server ends Alice's view of Bob's presence (§3.3.3)
        self.assertEqual(attrs(alice.presences("unavailable")), [(B + "/r1", A, "unavailable")])

    async def test_unsubscribed_cancels_a_granted_subscription(self) -> None:
        await self.start()
        alice = await self.login(A, available=True)
        bob = await self.login(B, available=True)
        await self.subscribe_both(alice, bob)
        await bob.presence(A, "unsubscribed")
        self.assertEqual(push_item(bob.pushes()[0])["subscription"], "to")
        self.assertEqual(push_item(alice.pushes()[0])["subscription"], "from")
        self.assertEqual(attrs(alice.presences("unavailable")), [(B + "/r1", A, "unavailable")])
        self.assertEqual(attrs(alice.presences("unsubscribed")), [(B, A, "unsubscribed")])

    async def test_roster_remove_cancels_both_ways(self) -> None:
        await self.start()
        alice = await self.login(A, available=True)
        bob = await self.login(B, available=True)
        await self.subscribe_both(alice, bob)
        await alice.remove_item(B)
        self.assertEqual(push_item(alice.pushes()[0])["subscription"], "remove")
        self.assertEqual(sorted(e["type"] for e in bob.presences() if e["type"] != "unavailable"),
                         ["unsubscribe", "unsubscribed"])
        self.assertEqual((await self.item(bob, A))["subscription"], "none")
        self.assertIsNone(await self.item(alice, B))

    async def test_subscribe_to_missing_local_account(self) -> None:
        await self.start()
        alice = await self.login(A, available=True)
        await alice.presence("nobody@localhost", "subscribe")
        self.assertEqual(attrs(alice.presences("unsubscribed")), [("nobody@localhost", A, "unsubscribed")])
        item = await self.item(alice, "nobody@localhost")
        self.assertEqual(item["subscription"], "none")
        self.assertFalse(item.hasAttribute("ask"))

    async def test_other_vhost_and_remote_domain(self) -> None:
        await self.start()
        alice = await self.login(A, available=True)
        dave = await self.login("dave@example.net", available=True)
        await alice.presence("dave@example.net", "subscribe")
        await dave.presence(A, "subscribed")
        self.assertEqual((await self.item(alice, "dave@example.net"))["subscription"], "to")
        await alice.presence("someone@remote.example", "subscribe")  # no s2s: bounced, never an error here
        item = await self.item(alice, "someone@remote.example")
        self.assertEqual((item["subscription"], item["ask"]), ("none", "subscribe"))

    async def test_subscription_to_self_is_ignored(self) -> None:
        await self.start()
        alice = await self.login(A, available=True)
        await alice.presence(A, "subscribe")
        self.assertEqual(alice.take(), [])

    # -- presence ---------------------------------------------------------------------------------------

    async def test_initial_presence_broadcast_and_probe(self) -> None:
        await self.start()
        alice = await self.login(A, available=True)
        bob = await self.login(B, available=True)
        carol = await self.login(C, available=True)
        await self.subscribe_both(alice, bob)
        await alice.close()
        bob.take()
        alice = await self.login(A, "phone")
        await alice.presence(payload="<show>away</show>")
        [seen] = bob.presences(None)
        self.assertEqual((seen["from"], seen["to"], str(seen.show)), (A + "/phone", B, "away"))
        self.assertEqual(carol.presences(), [])  # not a subscriber
        received = alice.presences(None)
        self.assertEqual(sorted(attrs(received)), [(A + "/phone", A + "/phone", None), (B + "/r1", A + "/phone", None)])
        # a later update goes to the same places
        await alice.presence(payload="<status>lunch</status>")
        self.assertEqual(str(bob.presences(None)[0].status), "lunch")
        self.assertEqual(carol.presences(), [])

    async def test_probe_of_offline_contact_answers_unavailable(self) -> None:
        await self.start()
        alice = await self.login(A, available=True)
        bob = await self.login(B, available=True)
        await self.subscribe_both(alice, bob)
        await bob.close()
        roster = self.server.modules["jabber:iq:roster"]
        loaded = []
        whole = roster.store.get
        self.patch(roster.store, "get", lambda user, domain: loaded.append(user) or whole(user, domain))
        alice2 = await self.login(A, "r2", available=False)
        await alice2.presence()
        self.assertIn((B, A + "/r2", "unavailable"), attrs(alice2.presences("unavailable")))
        self.assertNotIn("bob", loaded)  # one item of the offline contact's roster, not all of it

    async def test_probes_answered_only_to_subscribers(self) -> None:
        await self.start()
        alice = await self.login(A, available=True)
        bob = await self.login(B, available=True)
        carol = await self.login(C, available=True)
        await alice.presence(B, "subscribe")
        await bob.presence(A, "subscribed")
        alice.take()
        await alice.presence(B, "probe")
        self.assertEqual(attrs(alice.presences()), [(B + "/r1", A + "/r1", None)])
        await carol.presence(B, "probe")
        await carol.presence(B + "/r1", "probe")
        await carol.presence("nobody@localhost", "probe")
        self.assertEqual(carol.presences(), [])  # no presence for a non-subscriber
        self.assertEqual(bob.presences("probe"), [])  # probes are answered by the server
        # the "unsubscribed" answer repairs a subscription the contact does not know about (§4.3.2)
        await self.desync(C, B, "to")
        carol2 = await self.login(C, "r2")
        await carol2.presence()
        self.assertEqual([t for t in attrs(carol2.presences()) if t[0].startswith(B)], [(B, C, "unsubscribed")])
        self.assertEqual((await self.item(carol2, B))["subscription"], "none")

    async def test_unavailable_on_disconnect_and_on_broadcast(self) -> None:
        await self.start()
        alice = await self.login(A, available=True)
        bob = await self.login(B, available=True)
        await self.subscribe_both(alice, bob)
        a2 = await self.login(A, "r2", available=True)
        bob.take(), alice.take()
        await a2.close()
        self.assertEqual(attrs(bob.presences()), [(A + "/r2", B, "unavailable")])
        self.assertEqual(attrs(alice.presences()), [(A + "/r2", A + "/r1", "unavailable")])
        await alice.presence(type="unavailable")
        self.assertEqual(attrs(bob.presences()), [(A + "/r1", B, "unavailable")])
        await alice.close()
        self.assertEqual(bob.presences(), [])  # nothing more: it was no longer available

    async def test_own_resources_see_each_other(self) -> None:
        await self.start()
        a1 = await self.login(A, "a1", available=True)
        a2 = await self.login(A, "a2")
        await a2.presence()
        self.assertEqual(attrs(a1.presences()), [(A + "/a2", A + "/a1", None)])
        self.assertEqual(sorted(attrs(a2.presences())), [(A + "/a1", A + "/a2", None), (A + "/a2", A + "/a2", None)])

    async def test_directed_presence(self) -> None:
        await self.start()
        alice = await self.login(A, available=True)
        carol = await self.login(C, available=True)
        bob = await self.login(B, available=True)
        await alice.presence(C)  # carol is no contact: directed presence (§4.6)
        self.assertEqual(attrs(carol.presences()), [(A + "/r1", C, None)])
        await alice.presence(B + "/r1")
        await alice.presence(B + "/r1", "unavailable")  # ends that one now
        self.assertEqual(attrs(bob.presences()), [(A + "/r1", B + "/r1", None), (A + "/r1", B + "/r1", "unavailable")])
        await alice.close()
        self.assertEqual(attrs(carol.presences()), [(A + "/r1", C, "unavailable")])
        self.assertEqual(bob.presences(), [])
        # broadcast unavailable ends directed presence too, and a contact gets one unavailable only
        dave = await self.login("dave@example.net", available=True)
        alice = await self.login(A, available=True)
        await self.subscribe_both(alice, bob)
        await alice.presence("dave@example.net")
        await alice.presence(B)
        dave.take(), bob.take()
        await alice.presence(type="unavailable")
        self.assertEqual(attrs(dave.presences()), [(A + "/r1", "dave@example.net", "unavailable")])
        self.assertEqual(attrs(bob.presences()), [(A + "/r1", B, "unavailable")])
        self.assertEqual(alice.session.directed, set())

    async def test_presence_error_is_delivered_and_changes_nothing(self) -> None:
        await self.start()
        alice = await self.login(A, available=True)
        bob = await self.login(B, available=True)
        await self.subscribe_both(alice, bob)
        await bob.send(f"<presence xmlns='jabber:client' to='{A}' type='error'>"
                       "<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
                       "</presence>")
        self.assertEqual(attrs(alice.presences("error")), [(B + "/r1", A, "error")])
        self.assertEqual(alice.pushes(), [])
        self.assertEqual((await self.item(alice, B))["subscription"], "both")

    async def test_pushes_only_to_interested_resources(self) -> None:
        await self.start()
        alice = await self.login(A, available=True)
        quiet = await self.login(A, "quiet", roster=False)
        await alice.presence(B, "subscribe")
        self.assertEqual(len(alice.pushes()), 1)
        self.assertEqual(quiet.pushes(), [])


class SQLitePresenceTests(PresenceTestsMixin, SQLiteBackend, TestCase):
    pass


class PostgresPresenceTests(PresenceTestsMixin, PostgresBackend, TestCase):
    pass
