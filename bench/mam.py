"""1:1 chat throughput with the message archive (XEP-0313, module ``mam``) on and off.

    .venv/bin/python bench/mam.py            # full size (about a minute)
    .venv/bin/python bench/mam.py --smoke    # tiny (seconds)

Two runs of the same xmppcluster server (SQLite, pinned to CPU 0; this generator on CPU 1): first with
``--sm-plugins=-mam``, then with the archive on, where every message (chat, with a body) is archived twice
(sender and recipient). Each run is the ``tcp`` scenario of bench/run.py: ``pairs`` pairs of clients,
``window`` messages in flight each way, the median of three runs. Prints one JSON line per run and the
ratio (issue #17 asks for >= 0.7), the ratio of server CPU per message (off/on: steadier than messages/s
when the machine runs other work), and the archive's row count as a check that it was on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402
import servers  # noqa: E402


async def measure(base: str, users: list[str], p: dict, archive: bool) -> tuple[dict, int]:
    directory, db_uri = servers.xmppcluster_directory(os.path.join(base, "on" if archive else "off"))
    servers.provision_xmppcluster(db_uri, users, {})
    ports = {"c2s": servers.free_port(), "bosh": servers.free_port(), "ws": servers.free_port()}
    extra = ["--sm-plugins=+mam" if archive else "--sm-plugins=-mam"]
    config = servers.xmppcluster_config(directory, ports, db_uri, f"t1.{servers.DOMAIN}", extra=extra)
    server = servers.start_xmppcluster(directory, config, f"t1.{servers.DOMAIN}", ports, run.SERVER_CPU)
    try:
        cpu = server.cpu_seconds()
        result = await run.tcp(run.Target(server, users), p)
        # Server CPU per message (both threads): steadier than messages/s on a machine shared with other work.
        messages = sum(result["runs"]) * (p["seconds"] + p["warmup"])
        result["server_cpu_us_per_message"] = round((server.cpu_seconds() - cpu) * 1e6 / max(messages, 1), 1)
        result["server_rss_kib"] = server.rss_kib()
    finally:
        server.stop()
    path = db_uri.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT COUNT(*) FROM archive").fetchone()[0]
    return result, rows


async def main_async(args: argparse.Namespace) -> int:
    p = dict(run.SMOKE if args.smoke else run.FULL)
    users = [f"u{i}" for i in range(2 * p["pairs"])]
    with tempfile.TemporaryDirectory(prefix="bench-mam-") as base:
        off, off_rows = await measure(base, users, p, archive=False)
        print(json.dumps({"archive": "off", **off, "archived_rows": off_rows}), flush=True)
        on, on_rows = await measure(base, users, p, archive=True)
        print(json.dumps({"archive": "on", **on, "archived_rows": on_rows}), flush=True)
    ratio = on["messages_per_s"] / off["messages_per_s"] if off["messages_per_s"] else None
    cpu_ratio = off["server_cpu_us_per_message"] / on["server_cpu_us_per_message"]
    print(json.dumps({"ratio_on_off": round(ratio, 3) if ratio else None, "cpu_ratio_off_on": round(cpu_ratio, 3),
                      "target": 0.7}), flush=True)
    return 0 if off_rows == 0 and on_rows > 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
