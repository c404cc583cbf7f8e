"""The benchmark in smoke mode (tiny sizes, xmppcluster only): every scenario still runs end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = ("login", "tcp", "starttls", "latency", "memory", "presence", "websocket", "bosh", "cluster")


def _run() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "bench", "run.py"), "--smoke", "--no-prosody"],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)


class BenchSmokeTests(TestCase):
    timeout = 300

    async def test_every_scenario_reports(self) -> None:
        done = await deferToThread(_run)
        self.assertEqual(done.returncode, 0, done.stdout[-3000:] + done.stderr[-3000:])
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        self.assertIn("meta", lines[0])
        results = {line["scenario"]: line for line in lines[1:]}
        self.assertEqual(sorted(results), sorted(SCENARIOS))
        for name, line in results.items():
            ours = line["xmppcluster"]
            self.assertNotIn("error", ours, name)
            self.assertIsNone(line["prosody"], name)
            self.assertTrue(any(isinstance(v, (int, float)) and v > 0 for v in ours.values()), (name, ours))
        self.assertGreater(results["tcp"]["xmppcluster"]["messages_per_s"], 0)
        self.assertGreater(results["login"]["xmppcluster"]["concurrent_per_s"], 0)
        self.assertGreater(results["latency"]["xmppcluster"]["samples"], 0)
        self.assertGreater(results["cluster"]["xmppcluster"]["cross_messages_per_s"], 0)
        human = [line for line in done.stdout.splitlines() if not line.startswith("{")]
        self.assertEqual(len(human), len(SCENARIOS), human)
