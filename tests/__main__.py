"""``python -m tests``: run the suite with trial -j2 and end with ``N passed, M failed``.

Exits non-zero when a test failed or when no test ran.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

SUMMARY = re.compile(r"^(PASSED|FAILED) \((.*)\)\s*$")


def summarize(output: str) -> tuple[int, int, int]:
    """(passed, failed, skipped) from trial's closing line."""
    for line in reversed(output.splitlines()):
        match = SUMMARY.match(line.strip())
        if match:
            counts = dict((k.strip(), int(v)) for k, v in (p.split("=") for p in match.group(2).split(",")))
            passed = counts.get("successes", 0) + counts.get("expectedFailures", 0)
            failed = counts.get("failures", 0) + counts.get("errors", 0) + counts.get("unexpectedSuccesses", 0)
            return passed, failed, counts.get("skips", 0)
    return 0, 0, 0


def main(argv: list[str]) -> int:
    jobs = os.environ.get("XMPPCLUSTER_TEST_JOBS", "2")
    command = [sys.executable, "-m", "twisted.trial", f"-j{jobs}", *(argv or ["tests"])]
    print("+", " ".join(command), flush=True)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    captured = []
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(line)
        captured.append(line)
    code = process.wait()
    passed, failed, skipped = summarize("".join(captured))
    if code != 0 and failed == 0:
        failed = 1  # trial failed before or outside the tests (import error, crash)
    print(f"{passed} passed, {failed} failed" + (f" ({skipped} skipped)" if skipped else ""), flush=True)
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
