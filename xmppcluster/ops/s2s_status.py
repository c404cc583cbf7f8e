"""``xmppcluster s2s-status``: every node's server-to-server streams (remote domain, direction, authentication,
TLS version), read from the shared database where each node reports them every few seconds."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from twisted.internet import defer, task
from twisted.logger import Logger

from xmppcluster.storage.s2s_status import S2SStatusStore

log = Logger()

#: Seconds between two reports of a node's streams.
REPORT_INTERVAL = 5.0
COLUMNS = ("node", "remote", "local", "direction", "state", "auth", "tls", "queued", "age")


class S2SReporter:
    """Writes the node's federation status to ``s2s_status`` every :data:`REPORT_INTERVAL` seconds."""

    def __init__(self, server: Any, reactor: Any) -> None:
        self.server = server
        self.store = S2SStatusStore(server.storage.db)
        self.loop = task.LoopingCall(self.report)
        self.loop.clock = reactor

    def start(self) -> None:
        self.loop.start(REPORT_INTERVAL, now=True).addErrback(lambda f: log.failure("s2s status reports stopped", f))

    async def stop(self) -> None:
        """Stop reporting; the node's row then lists no stream (it has none once stopped)."""
        if self.loop.running:
            self.loop.stop()
        await self.report([])

    def report(self, streams: list[dict[str, Any]] | None = None) -> defer.Deferred:
        node = self.server.config.node_name
        d = defer.ensureDeferred(self.store.report(node, self.server.federation.status() if streams is None
                                                   else streams))
        d.addErrback(lambda f: log.warn("s2s status not written: {why}", why=f.getErrorMessage()))
        return d


def render(rows: list[tuple[str, float, list[dict[str, Any]]]], now: float) -> list[str]:
    """A table: one line per stream or link, with its node; nodes silent for a minute are marked."""
    lines = ["{:<22} {:<22} {:<18} {:<4} {:<12} {:<14} {:<8} {:>6} {:>7}".format(*COLUMNS)]
    for node, updated, streams in rows:
        silent = now - updated > 60
        label = f"{node}{' (silent)' if silent else ''}"
        if not streams:
            lines.append(f"{label:<22} -")
        for s in sorted(streams, key=lambda s: (s.get("remote") or "", s.get("direction") or "")):
            lines.append("{:<22} {:<22} {:<18} {:<4} {:<12} {:<14} {:<8} {:>6} {:>6.0f}s".format(
                label, s.get("remote") or "?", s.get("local") or "?", s.get("direction") or "?",
                s.get("state") or "?", s.get("auth") or "-", s.get("tls") or "-", s.get("queued", 0),
                float(s.get("age") or 0)))
    return lines


async def status(config: Any, out: TextIO) -> int:
    from xmppcluster.storage import open_storage

    storage = await open_storage(config.user_db_uri)
    try:
        rows = await S2SStatusStore(storage.db).rows()
    finally:
        await storage.close()
    if not rows:
        out.write("no node has reported server-to-server streams to this database (is a node running?)\n")
        return 1
    out.write("\n".join(render(rows, time.time())) + "\n")
    return 0


def s2s_status_main(config_path: str, out: TextIO = sys.stdout) -> int:
    from xmppcluster.cluster.status import run_status

    return run_status(config_path, status, out)
