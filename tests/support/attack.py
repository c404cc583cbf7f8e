"""Attack tests against a real node: run an attack in a thread while a well-behaved client pings the server.

``await under_attack(running, attack)`` logs ``pinger@localhost`` in over STARTTLS, runs ``attack()`` in a
thread, pings the server every 50 ms meanwhile, and returns the attack's result with every round trip.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import gatherResults
from twisted.internet.threads import deferToThread

from tests.clients.raw import RawClient
from tests.support.server import RunningServer
from tests.support.slix import ca_file

#: The well-behaved client's ping round trip while an attack runs (the "hostile users" issue's target).
MAX_RTT = 0.25
MiB = 1024 * 1024
#: Growth of the node's peak RSS an attack may cause (docs/security.rst, "Client flow control").
MAX_RSS_GROWTH = 64 * MiB
PINGER = "pinger@localhost"
PINGER_PASSWORD = "pinger-pass"


class Pinger:
    """A logged-in client that pings its server until told to stop, keeping every round trip.

    The one well-behaved client of every attack test (single node and cluster)."""

    def __init__(self, port: int, ca: str, user: str = PINGER.partition("@")[0], password: str = PINGER_PASSWORD,
                 *, domain: str = "localhost") -> None:
        self.domain = domain
        self.client = RawClient(port, domain=domain, ca_file=ca, timeout=30)
        self.client.login(user, password, "pinger")
        self.rtts: list[float] = []
        self.stop = threading.Event()

    def ping(self) -> float:
        """One XEP-0199 round trip, in seconds (also kept in ``rtts``)."""
        started = time.monotonic()
        ident = f"ping{len(self.rtts)}"
        self.client.send(f"<iq type='get' id='{ident}' to='{self.domain}'><ping xmlns='urn:xmpp:ping'/></iq>")
        while self.client.until("{jabber:client}iq").get("id") != ident:
            pass
        rtt = time.monotonic() - started
        self.rtts.append(rtt)
        return rtt

    def run(self) -> list[float]:
        """Ping until ``stop`` is set, at least three times; the round trips."""
        try:
            while not self.stop.is_set() or len(self.rtts) < 3:
                self.ping()
                self.stop.wait(0.05)  # pacing, not synchronisation
            return self.rtts
        finally:
            self.client.close()


async def under_attack(running: RunningServer, attack: Callable[[], Any]) -> tuple[Any, list[float]]:
    """Run ``attack()`` in a thread while a logged-in client pings; (its result, the round trips)."""
    if not await running.server.storage.accounts.exists(*PINGER.split("@")):
        await running.add_user(PINGER, PINGER_PASSWORD)
    pinger = await deferToThread(Pinger, running.ports["c2s"]["plain"], ca_file(running))

    def attacking() -> Any:
        try:
            return attack()
        finally:
            pinger.stop.set()

    result, rtts = await gatherResults([deferToThread(attacking), deferToThread(pinger.run)])
    return result, rtts


def peak_rss(field: str = "VmHWM") -> int:
    """Peak (or, with ``VmRSS``, current) resident memory of this process (the node runs in it), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> int:
    """Start a new peak measurement (Linux: the peak becomes the current RSS); the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:  # pragma: no cover - then the growth is measured from the earlier peak
        return peak_rss()
    return peak_rss("VmRSS")


async def pinged_attack(pinger: Pinger, attack: Callable[[], Any], label: str = "") -> tuple[Any, list[float], int]:
    """Run ``attack()`` in a thread while ``pinger`` pings; (its result, the round trips, peak RSS growth).
    With ``ATTACK_FIGURES`` set, print the figures of docs/security.rst under ``label``."""
    before = reset_peak_rss()

    def attacking() -> Any:
        try:
            return attack()
        finally:
            pinger.stop.set()

    try:
        result, rtts = await gatherResults([deferToThread(attacking), deferToThread(pinger.run)])
    finally:
        if os.environ.get("ATTACK_FIGURES"):
            rtts = sorted(pinger.rtts) or [0.0]
            print(f"\n{label}: peak RSS +{(peak_rss() - before) / MiB:.1f} MiB, ping max "
                  f"{rtts[-1] * 1000:.0f} ms, median {rtts[len(rtts) // 2] * 1000:.0f} ms ({len(rtts)} pings)",
                  file=sys.stderr)
    return result, rtts, peak_rss() - before
