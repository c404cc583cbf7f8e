"""The code is ruff clean (the style the project keeps), so CI catches what a reviewer would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from twisted.trial.unittest import SkipTest, TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RuffTests(TestCase):
    def test_ruff_clean(self) -> None:
        ruff = os.path.join(os.path.dirname(sys.executable), "ruff")
        if not os.path.exists(ruff):
            ruff = shutil.which("ruff")
        if ruff is None:
            raise SkipTest("ruff is not installed (it comes with the [test] extra: ./dev test installs it)")
        done = subprocess.run([ruff, "check", "xmppcluster", "tests", "twisted", "bench"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(done.returncode, 0, done.stdout[-4000:] + done.stderr[-2000:])
