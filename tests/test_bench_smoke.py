"""The benchmark in smoke mode (tiny sizes): every scenario still runs end to end, beside Prosody when it is
installed (``./dev test`` installs it; without it the Prosody half is skipped and the test says so). The s2s
scenario federates two xmppcluster servers, then two Prosody (a.bench <-> b.bench)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = ("login", "tcp", "starttls", "latency", "memory", "presence", "websocket", "bosh", "cluster", "s2s")


PROSODY = shutil.which("prosody") is not None and shutil.which("prosodyctl") is not None


def _run() -> subprocess.CompletedProcess:
    extra = [] if PROSODY else ["--no-prosody"]
    return subprocess.run([sys.executable, os.path.join(ROOT, "bench", "run.py"), "--smoke", *extra],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)


class BenchSmokeTests(TestCase):
    timeout = 300

    async def test_every_scenario_reports(self) -> None:
        if not PROSODY:
            print("\n[bench smoke] prosody is not installed: measuring xmppcluster only", file=sys.stderr)
        done = await deferToThread(_run)
        self.assertEqual(done.returncode, 0, done.stdout[-3000:] + done.stderr[-3000:])
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        self.assertIn("meta", lines[0])
        results = {line["scenario"]: line for line in lines[1:]}
        self.assertEqual(sorted(results), sorted(SCENARIOS))
        for name, line in results.items():
            ours = line["xmppcluster"]
            self.assertNotIn("error", ours, name)
            if name == "cluster" or not PROSODY:
                self.assertIsNone(line["prosody"], name)
            else:
                self.assertNotIn("error", line["prosody"], name)
                self.assertTrue(any(isinstance(v, (int, float)) and v > 0 for v in line["prosody"].values()), name)
            self.assertTrue(any(isinstance(v, (int, float)) and v > 0 for v in ours.values()), (name, ours))
        self.assertGreater(results["tcp"]["xmppcluster"]["messages_per_s"], 0)
        self.assertGreater(results["login"]["xmppcluster"]["concurrent_per_s"], 0)
        self.assertGreater(results["latency"]["xmppcluster"]["samples"], 0)
        self.assertGreater(results["cluster"]["xmppcluster"]["cross_messages_per_s"], 0)
        self.assertGreater(results["s2s"]["xmppcluster"]["messages_per_s"], 0)
        # the s2s figures are for streams authenticated with certificates from the bench CA, on both servers
        self.assertEqual(results["s2s"]["xmppcluster"]["auth"], "EXTERNAL")
        if PROSODY:
            self.assertEqual(results["s2s"]["prosody"]["auth"], "EXTERNAL")
        report, _, summary = done.stdout.partition("\n\nscenario ")
        human = [line for line in report.splitlines() if not line.startswith("{")]
        self.assertEqual(len(human), len(SCENARIOS), human)
        rows = summary.splitlines()[1:]  # the side-by-side table
        for label in ("1:1 msg/s, plain TCP", "logins/s, 2 concurrent", "KiB per idle session, 5",
                      "presence to 3 contacts", "WebSocket msg/s", "BOSH msg/s", "cluster: cross msg/s", "s2s msg/s"):
            self.assertTrue(any(row.startswith(label) for row in rows), (label, summary))
