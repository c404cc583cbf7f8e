"""slixmpp, a client nobody here wrote, against a real server: STARTTLS, direct TLS, SASL, messages."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.support.server import start_server
from tests.support.slix import run_slixmpp

PASSWORD = "s3cret pässword"


class SlixmppLoginTests(TestCase):
    timeout = 60

    async def start(self):
        running = await start_server(self)
        await running.add_user("alice@localhost", PASSWORD)
        await running.add_user("bob@localhost", PASSWORD)
        return running

    async def login(self, mech: str, *, direct_tls: bool = False) -> dict:
        running = await self.start()
        [result] = await run_slixmpp(running, [{"jid": "alice@localhost/slix", "password": PASSWORD, "mech": mech,
                                                "roster": True}], direct_tls=direct_tls)
        return result

    async def test_starttls_scram_sha_256(self) -> None:
        result = await self.login("SCRAM-SHA-256")
        self.assertTrue(result["authenticated"], result)
        self.assertEqual(result["bound"], "alice@localhost/slix")

    async def test_starttls_scram_sha_1(self) -> None:
        result = await self.login("SCRAM-SHA-1")
        self.assertTrue(result["authenticated"], result)

    async def test_starttls_plain(self) -> None:
        result = await self.login("PLAIN")
        self.assertTrue(result["authenticated"], result)

    async def test_direct_tls(self) -> None:
        result = await self.login("SCRAM-SHA-256", direct_tls=True)
        self.assertTrue(result["authenticated"], result)

    async def test_wrong_password(self) -> None:
        running = await self.start()
        [result] = await run_slixmpp(running, [{"jid": "alice@localhost/slix", "password": "nope",
                                                "mech": "SCRAM-SHA-256"}], timeout=10)
        self.assertFalse(result["authenticated"])
        self.assertEqual(result["error"], "failed_auth")

    async def test_message_between_full_jids(self) -> None:
        running = await self.start()
        results = await run_slixmpp(running, [
            {"jid": "alice@localhost/a", "password": PASSWORD, "mech": "SCRAM-SHA-256",
             "send": [{"to": "bob@localhost/b", "body": "hello bob"}], "expect": 1},
            {"jid": "bob@localhost/b", "password": PASSWORD, "mech": "SCRAM-SHA-1",
             "send": [{"to": "alice@localhost/a", "body": "hello alice"}], "expect": 1},
        ])
        alice, bob = results
        self.assertEqual(bob["received"], [{"from": "alice@localhost/a", "body": "hello bob",
                                            "to": "bob@localhost/b"}])
        self.assertEqual(alice["received"], [{"from": "bob@localhost/b", "body": "hello alice",
                                              "to": "alice@localhost/a"}])
