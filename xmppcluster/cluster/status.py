"""``xmppcluster cluster-status``: the nodes, their links and sessions, from the shared database."""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from twisted.internet import defer, task

from xmppcluster.cluster.membership import MembershipStore, NodeRow


def render(rows: list[NodeRow], now: float, stale_after: float) -> list[str]:
    """One line per node: name, state, age of its last heartbeat, local sessions, links."""
    lines = [f"{'node':<28} {'state':<6} {'seen':>6} {'sessions':>8}  links (peer:its sessions seen here)"]
    for row in rows:
        age = now - row.last_seen
        state = "up" if age <= stale_after else "stale"
        links = " ".join(f"{peer}:{count}" for peer, count in sorted(row.links.items())) or "-"
        lines.append(f"{row.name:<28} {state:<6} {age:>5.1f}s {row.sessions:>8}  {links}")
    return lines


async def status(config, out: TextIO) -> int:
    from xmppcluster.storage import open_storage

    storage = await open_storage(config.user_db_uri)
    try:
        rows = await MembershipStore(storage.db).rows()
    finally:
        await storage.close()
    if not rows:
        out.write("no cluster node has reported to this database (is --cluster-mode on?)\n")
        return 1
    stale_after = max(3 * config.cluster.failure_timeout, 5.0)
    out.write("\n".join(render(rows, time.time(), stale_after)) + "\n")
    return 0


def cluster_status_main(config_path: str, out: TextIO = sys.stdout) -> int:
    return run_status(config_path, status, out)


def run_status(config_path: str, show: Callable[[Any, TextIO], Awaitable[int]], out: TextIO) -> int:
    """Load the configuration (as a non-node), run ``show(config, out)`` in a reactor; its exit code."""
    from xmppcluster.config import ConfigError, load
    from xmppcluster.storage import StorageError

    try:
        # Only the database and the timeouts matter here; this host need not be a node itself.
        config = load(config_path, {"--cluster-mode": "false"})
    except ConfigError as err:
        sys.stderr.write(f"xmppcluster: {err}\n")
        return 2
    result: list[int] = []

    async def run(_reactor) -> None:
        try:
            result.append(await show(config, out))
        except StorageError as err:
            sys.stderr.write(f"xmppcluster: {err}\n")
            result.append(1)

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit:
        pass
    return result[0] if result else 1
