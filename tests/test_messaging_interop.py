"""slixmpp against a real server: offline delivery with a delay stamp, priorities, blocking (XEP-0191)."""

from __future__ import annotations

import json
import os
import sys

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.support.server import start_server
from tests.support.slix import ROOT, ca_file
from tests.test_message_rules import eventually

PASSWORD = "s3cret pässword"


async def run_scenario(running, clients: list[dict], timeout: float = 20) -> list[dict]:
    spec = {"host": "127.0.0.1", "port": running.ports["c2s"]["plain"], "ca": ca_file(running),
            "timeout": timeout, "clients": clients}
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-m", "tests.clients.slix_msg", json.dumps(spec)], env=dict(os.environ), path=ROOT)
    if code != 0:
        raise AssertionError(f"slixmpp client failed ({code}): {err.decode(errors='replace')[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


def client(jid: str, **spec) -> dict:
    return {"jid": jid, "password": PASSWORD, **spec}


class SlixmppMessagingTests(TestCase):
    timeout = 90

    async def start(self):
        running = await start_server(self)
        for user in ("alice", "bob"):
            await running.add_user(f"{user}@localhost", PASSWORD)
        return running

    async def test_offline_message_arrives_at_next_login_with_delay(self) -> None:
        running = await self.start()
        [alice] = await run_scenario(running, [
            client("alice@localhost/a", send=[{"to": "bob@localhost", "body": "while you were out"}])])
        self.assertIsNone(alice["error"], alice)
        offline = running.server.modules["msgoffline"]
        await eventually(lambda: offline.store.count("bob", "localhost"))
        await offline.drain()
        self.assertEqual(await offline.store.count("bob", "localhost"), 1)

        [bob] = await run_scenario(running, [client("bob@localhost/b", priority=1, expect=1)])
        self.assertIsNone(bob["error"], bob)
        [message] = bob["received"]
        self.assertEqual((message["from"], message["body"]), ("alice@localhost/a", "while you were out"))
        self.assertEqual(message["delay_from"], "localhost")
        self.assertIsNotNone(message["delay_stamp"])
        await offline.drain()
        self.assertEqual(await offline.store.count("bob", "localhost"), 0)

    async def test_bare_message_goes_to_highest_priority_never_negative(self) -> None:
        running = await self.start()
        alice, high, mid, low = await run_scenario(running, [
            client("alice@localhost/a", send=[
                {"to": "bob@localhost", "body": "to the bare JID"},
                {"to": "bob@localhost/mid", "body": "end"},
                {"to": "bob@localhost/low", "body": "end"},
            ]),
            client("bob@localhost/high", priority=5, expect=1),
            client("bob@localhost/mid", priority=1, expect=1),
            client("bob@localhost/low", priority=-1, expect=1),
        ])
        for result in (alice, high, mid, low):
            self.assertIsNone(result["error"], result)
        self.assertEqual([m["body"] for m in high["received"]], ["to the bare JID"])
        # "end" was sent after the bare-JID message on the same stream: had it gone there, it came first
        self.assertEqual([m["body"] for m in mid["received"]], ["end"])
        self.assertEqual([m["body"] for m in low["received"]], ["end"])

    async def test_blocking_stops_delivery_both_ways(self) -> None:
        running = await self.start()
        alice, bob = await run_scenario(running, [
            client("alice@localhost/a", send=[{"to": "bob@localhost", "body": "can you hear me?"}],
                   expect_errors=1),
            client("bob@localhost/b", block=["alice@localhost"],
                   send=[{"to": "alice@localhost", "body": "nor this"}], expect_errors=1),
        ])
        self.assertIsNone(alice["error"], alice)
        self.assertIsNone(bob["error"], bob)
        self.assertEqual(alice["received"], [])
        self.assertEqual(bob["received"], [])
        self.assertEqual([(e["condition"], e["blocked"]) for e in alice["errors"]], [("service-unavailable", False)])
        self.assertEqual([(e["condition"], e["type"], e["blocked"]) for e in bob["errors"]],
                         [("not-acceptable", "cancel", True)])
        self.assertEqual(await running.server.modules["urn:xmpp:blocking"].store.get("bob", "localhost"),
                         ["alice@localhost"])
