"""Attack tests against a real node: run an attack in a thread while a well-behaved client pings the server.

``await under_attack(running, attack)`` logs ``pinger@localhost`` in over STARTTLS, runs ``attack()`` in a
thread, pings the server every 50 ms meanwhile, and returns the attack's result with every round trip.
"""

from __future__ import annotations

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
