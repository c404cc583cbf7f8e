"""slixmpp (a client nobody here wrote) against a real server: registration, vCard, disco and friends."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

import xmppcluster
from tests.support.server import start_server
from tests.support.slix import ROOT, ca_file


async def run_client(running, spec: dict) -> dict:
    spec = {"host": "127.0.0.1", "port": running.ports["c2s"]["plain"], "ca": ca_file(running), "timeout": 20,
            **spec}
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-m", "tests.clients.slix_features", json.dumps(spec)], env=dict(os.environ), path=ROOT)
    if code != 0:
        raise AssertionError(f"slixmpp client failed ({code}): {err.decode(errors='replace')[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


class FeaturesInteropTests(TestCase):
    timeout = 90

    async def test_register_then_use_the_base_modules(self) -> None:
        running = await start_server(self, "--virt-hosts=localhost:register\n")
        await running.add_user("bob@localhost", "bobpass")
        bob = await run_client(running, {"jid": "bob@localhost", "password": "bobpass"})
        self.assertIsNone(bob["error"], bob)
        result = await run_client(running, {"jid": "newbie@localhost", "password": "s3cret pass", "register": True,
                                            "peer": "bob@localhost"})
        self.assertIsNone(result["error"], result)
        self.assertEqual(result["register_fields"], ["password", "username"])
        self.assertTrue(result["registered"])
        self.assertTrue(result["authenticated"])
        self.assertTrue(await running.server.storage.accounts.exists("newbie", "localhost"))
        self.assertEqual((result["vcard_fn"], result["vcard_nick"]), ("Interop Tester", ["slix"]))  # a list in slixmpp
        self.assertEqual(result["peer_vcard_fn"], "Interop Tester")
        self.assertEqual(result["server_identities"], [["server", "im"]])
        self.assertEqual(set(result["server_features"]), set(running.server.features()))
        for feature in ("vcard-temp", "jabber:iq:register", "jabber:iq:version", "urn:xmpp:time",
                        "jabber:iq:last", "jabber:iq:private", "urn:xmpp:ping"):
            self.assertIn(feature, result["server_features"])
        self.assertEqual(result["account_identities"], [["account", "registered"]])
        self.assertEqual(result["version"], {"name": "xmppcluster", "version": xmppcluster.__version__})
        self.assertEqual(result["time_tzo"], "+00:00")
        self.assertTrue(result["time_utc"].endswith("Z"))
        self.assertLess(abs(datetime.fromisoformat(result["time_utc"]).timestamp() - time.time()), 60)
        self.assertGreaterEqual(result["uptime"], 0)

    async def test_registration_refused_when_off_and_disabled_module_hidden(self) -> None:
        running = await start_server(self, "--sm-plugins=-vcard-temp\n")
        result = await run_client(running, {"jid": "nobody@localhost", "password": "x", "register": True})
        self.assertNotIn("register_fields", result)  # no <register/> stream feature offered
        self.assertEqual(result["error"], "failed_auth")
        await running.add_user("carol@localhost", "carolpass")
        result = await run_client(running, {"jid": "carol@localhost", "password": "carolpass"})
        self.assertEqual(result["error"], "IqError: service-unavailable")  # publishing the vCard
