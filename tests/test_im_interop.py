"""slixmpp (a client nobody here wrote) against a real server: subscription handshake, presence, roster pushes."""

from __future__ import annotations

import json
import os
import sys

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.support.server import start_server
from tests.support.slix import ROOT, ca_file

PASSWORD = "s3cret pässword"
ALICE, BOB = "alice@localhost", "bob@localhost"


async def run_scenario(running, scenario: str, timeout: float = 15) -> dict:
    spec = {"host": "127.0.0.1", "port": running.ports["c2s"]["plain"], "ca": ca_file(running),
            "timeout": timeout, "scenario": scenario,
            "alice": {"jid": ALICE, "password": PASSWORD}, "bob": {"jid": BOB, "password": PASSWORD}}
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-m", "tests.clients.slix_im", json.dumps(spec)], env=dict(os.environ), path=ROOT)
    if code != 0:
        raise AssertionError(f"slixmpp scenario {scenario} failed ({code}): {err.decode(errors='replace')[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


class SlixmppIMTests(TestCase):
    timeout = 90

    async def test_subscription_handshake_presence_and_pushes(self) -> None:
        running = await start_server(self)
        await running.add_user(ALICE, PASSWORD)
        await running.add_user(BOB, PASSWORD)
        result = await run_scenario(running, "handshake")
        self.assertIsNone(result["error"], result)
        self.assertEqual(result["alice"]["roster"][BOB]["subscription"], "both")
        self.assertEqual(result["bob"]["roster"][ALICE]["subscription"], "both")
        self.assertIn(BOB + "/b1", result["alice"]["seen"])
        self.assertIn(ALICE + "/a1", result["bob"]["seen"])
        self.assertEqual(result["bob"]["requests"], [ALICE])
        self.assertEqual(result["alice"]["requests"], [BOB])
        # the second resource got the push for the rename done by the first, and sees its contact and sibling
        self.assertIn({"jid": BOB, "name": "Bobby", "subscription": "both", "groups": ["Friends"]},
                      result["second_pushes"])
        self.assertIn(BOB + "/b1", result["second_seen"])
        self.assertIn(ALICE + "/a1", result["second_seen"])
        # a new login reads the same state back from storage
        fresh = await run_scenario(running, "fetch")
        self.assertEqual(fresh["alice"][BOB], {"subscription": "both", "name": "Bobby", "groups": ["Friends"]})
        self.assertEqual(fresh["bob"][ALICE]["subscription"], "both")
