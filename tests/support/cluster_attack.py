"""Attack tests against real cluster nodes: well-behaved clients ping their nodes while an attack runs.

``under_attack(cluster, attack, pingers)`` logs one client in on each node named in ``pingers`` (as the
given account), runs ``attack()`` in a thread, pings every 50 ms meanwhile, and returns the attack's result
with every node's round trips.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import gatherResults
from twisted.internet.threads import deferToThread

from tests.support.attack import MAX_RTT, Pinger
from tests.support.cluster import DOMAIN, ClusterFixture

__all__ = ["MAX_RTT", "under_attack"]

async def under_attack(cluster: ClusterFixture, attack: Callable[[], Any], pingers: dict[str, str],
                       password: str) -> tuple[Any, dict[str, list[float]]]:
    """Run ``attack()`` in a thread while ``pingers[node]`` (an account) pings ``node``; (its result, the
    round trips per node)."""
    clients = {}
    for node, user in pingers.items():
        clients[node] = await deferToThread(Pinger, cluster.nodes[node].ports["c2s"], cluster.ca_file,
                                            user, password, domain=DOMAIN)

    def attacking() -> Any:
        try:
            return attack()
        finally:
            for pinger in clients.values():
                pinger.stop.set()

    results = await gatherResults([deferToThread(attacking)] + [deferToThread(p.run) for p in clients.values()])
    return results[0], dict(zip(clients, results[1:], strict=True))
