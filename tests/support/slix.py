"""Run slixmpp (a third-party client) in a subprocess against a test server."""

from __future__ import annotations

import json
import os
import sys

from twisted.internet.utils import getProcessOutputAndValue

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ca_file(running) -> str:
    path = os.path.join(running.directory, "ca.pem")
    if not os.path.exists(path):
        with open(path, "wb") as out:
            out.write(running.ca.root_pem())
    return path


async def run_slixmpp(running, clients: list[dict], *, direct_tls: bool = False, timeout: float = 20) -> list[dict]:
    """Log ``clients`` in with slixmpp over c2s (STARTTLS on the plain port, or direct TLS); their results."""
    spec = {
        "host": "127.0.0.1",
        "port": running.ports["c2s"]["ssl" if direct_tls else "plain"],
        "direct_tls": direct_tls,
        "ca": ca_file(running),
        "timeout": timeout,
        "clients": clients,
    }
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-m", "tests.clients.slix", json.dumps(spec)], env=dict(os.environ), path=ROOT)
    if code != 0:
        raise AssertionError(f"slixmpp client failed ({code}): {err.decode(errors='replace')[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])
