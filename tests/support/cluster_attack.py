"""Attack tests against real cluster nodes: well-behaved clients ping their nodes while an attack runs.

``under_attack(cluster, attack, pingers)`` logs one client in on each node named in ``pingers`` (as the
given account), runs ``attack()`` in a thread, pings every 50 ms meanwhile, and returns the attack's result
with every node's round trips.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import gatherResults
from twisted.internet.threads import deferToThread

from tests.clients.raw import RawClient
from tests.support.cluster import DOMAIN, ClusterFixture

#: The well-behaved client's ping round trip while an attack runs (the "hostile users" issue's target).
MAX_RTT = 0.25


class ClusterPinger:
    """A logged-in client that pings its node until told to stop, keeping every round trip."""

    def __init__(self, port: int, ca: str, user: str, password: str) -> None:
        self.client = RawClient(port, domain=DOMAIN, ca_file=ca, timeout=30)
        self.client.login(user, password, "pinger")
        self.rtts: list[float] = []
        self.stop = threading.Event()

    def ping(self) -> None:
        started = time.monotonic()
        ident = f"ping{len(self.rtts)}"
        self.client.send(f"<iq type='get' id='{ident}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
        while self.client.until("{jabber:client}iq").get("id") != ident:
            pass
        self.rtts.append(time.monotonic() - started)

    def run(self) -> list[float]:
        """Ping until ``stop`` is set, at least three times; the round trips."""
        try:
            while not self.stop.is_set() or len(self.rtts) < 3:
                self.ping()
                self.stop.wait(0.05)  # pacing, not synchronisation
            return self.rtts
        finally:
            self.client.close()


async def under_attack(cluster: ClusterFixture, attack: Callable[[], Any], pingers: dict[str, str],
                       password: str) -> tuple[Any, dict[str, list[float]]]:
    """Run ``attack()`` in a thread while ``pingers[node]`` (an account) pings ``node``; (its result, the
    round trips per node)."""
    clients = {}
    for node, user in pingers.items():
        clients[node] = await deferToThread(ClusterPinger, cluster.nodes[node].ports["c2s"], cluster.ca_file,
                                            user, password)

    def attacking() -> Any:
        try:
            return attack()
        finally:
            for pinger in clients.values():
                pinger.stop.set()

    results = await gatherResults([deferToThread(attacking)] + [deferToThread(p.run) for p in clients.values()])
    return results[0], dict(zip(clients, results[1:], strict=True))
