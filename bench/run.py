"""xmppcluster against Prosody, measured in the same run.

    .venv/bin/python bench/run.py                 # every scenario, full size (minutes)
    .venv/bin/python bench/run.py --smoke         # every scenario, tiny (seconds; what CI runs)
    .venv/bin/python bench/run.py login tcp       # only these scenarios

Servers run pinned to CPU 0 (``taskset -c 0``), this process (the load generator) to CPU 1. Each scenario
prints one JSON line and one human line: the xmppcluster figure, the Prosody figure and their ratio against
the target. Prosody comes from the Debian package (installed when absent, as root, unless --no-install);
without it the ratios are null. Exit status 0 unless a scenario could not run.

``s2s`` federates two domains, a.bench and b.bench: first two xmppcluster servers, then two Prosody, each
pair on the server CPU and stopped before the next starts. Certificates come from one bench CA that all four
trust (xmppcluster ``s2s/ca-file``, Prosody ``ssl.cafile``); streams are STARTTLS on loopback, authenticated
with SASL EXTERNAL (Prosody: ``s2s_secure_auth``, mod_dialback off), one per direction (xmppcluster
``s2s/bidi=false``, see servers.S2S_BIDI), reads not rate-limited. Addresses come from static maps, no DNS:
xmppcluster's ``s2s/hosts``, and for Prosody the test suite's Prosody module
``tests/support/prosody_plugins/mod_test_s2s_routes.lua`` (``plugin_paths`` points at that directory;
without it only xmppcluster is measured, with the reason on stderr). alice_i@a.bench sends to bob_i@b.bench
and bob_i back, ``window`` messages in flight each way; one message per pair is delivered first, so stream
setup is not measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import loadgen  # noqa: E402
import servers  # noqa: E402
from loadgen import percentile  # noqa: E402

SERVER_CPU, CLIENT_CPU = 0, 1
FULL = dict(pairs=50, window=10, seconds=5.0, warmup=1.0, rate=2000, logins=200, concurrency=20,
            login_seconds=8.0, memory=(1000, 10000), fanout=(100, 1000), rounds=5, web_pairs=100,
            web_rate=1000, bosh_pairs=100)
SMOKE = dict(pairs=2, window=4, seconds=0.4, warmup=0.2, rate=200, logins=3, concurrency=2,
             login_seconds=0.5, memory=(5,), fanout=(3,), rounds=2, web_pairs=2, web_rate=100, bosh_pairs=2)
# memory runs late: closing 10,000 sessions leaves the server busy (storage writes) for a while.
SCENARIOS = ("login", "tcp", "starttls", "latency", "presence", "websocket", "bosh", "memory", "cluster", "s2s")
#: The s2s scenario's two domains: alice_i@a.bench chats with bob_i@b.bench.
S2S_DOMAINS = ("a.bench", "b.bench")


class Target:
    """One server under test as the generator sees it."""

    def __init__(self, server: servers.Server, users: list[str], domain: str = servers.DOMAIN) -> None:
        self.server = server
        self.users = users
        self.domain = domain
        self.resources = 0

    async def client(self, user: str, *, starttls: bool = False, websocket: bool = False, port: str = "c2s",
                     presence: str | None = "<presence/>", roster: bool = True) -> loadgen.Client:
        self.resources += 1
        ws = self.server.ws_path if websocket else None
        client = await loadgen.connect("127.0.0.1", self.server.ports["ws" if websocket else port], self.domain,
                                       websocket=ws)
        try:
            await client.login(user, servers.PASSWORD, f"r{self.resources}", starttls=starttls, presence=presence,
                               roster=roster)
        except BaseException:
            client.close()
            raise
        return client

    async def many(self, users: list[str], concurrency: int = 50, **kw) -> list[loadgen.Client]:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(user: str) -> loadgen.Client:
            async with semaphore:
                return await self.client(user, **kw)

        return list(await asyncio.gather(*(one(u) for u in users)))


def close_all(clients) -> None:
    for client in clients:
        client.close()


# -- scenarios: each returns {metric: value} for one target ---------------------------------------------


async def login(target: Target, p: dict) -> dict:
    pool = target.users[: max(p["concurrency"] * 2, 10)]
    timings: list[float] = []

    async def once(user: str) -> None:
        start = time.perf_counter()
        client = await target.client(user, starttls=True)
        timings.append(time.perf_counter() - start)
        client.send("</stream:stream>")
        client.close()

    for user in pool[: p["concurrency"]]:  # warm the client's PBKDF2 cache
        await once(user)
    timings.clear()
    start = time.perf_counter()
    for i in range(p["logins"]):
        await once(pool[i % len(pool)])
    sequential = p["logins"] / (time.perf_counter() - start)
    seq_p50, seq_p99 = percentile(timings, 50), percentile(timings, 99)
    timings.clear()
    deadline = time.perf_counter() + p["login_seconds"]
    count = 0

    async def worker(index: int) -> None:
        nonlocal count
        n = 0
        while time.perf_counter() < deadline:
            await once(pool[(index + n * p["concurrency"]) % len(pool)])
            n += 1
            count += 1

    start, cpu = time.perf_counter(), target.server.cpu_seconds()
    await asyncio.gather(*(worker(i) for i in range(p["concurrency"])))
    concurrent = count / (time.perf_counter() - start)
    cpu_ms = (target.server.cpu_seconds() - cpu) * 1e3 / max(count, 1)
    return {"sequential_per_s": round(sequential, 1), "sequential_p50_ms": round(seq_p50 * 1e3, 2),
            "sequential_p99_ms": round(seq_p99 * 1e3, 2), "concurrent_per_s": round(concurrent, 1),
            "concurrent_p50_ms": round(percentile(timings, 50) * 1e3, 2),
            "concurrent_p99_ms": round(percentile(timings, 99) * 1e3, 2), "concurrency": p["concurrency"],
            "server_cpu_ms_per_login": round(cpu_ms, 2)}


async def _pairs(target: Target, n: int, **kw) -> list[tuple[loadgen.Client, loadgen.Client]]:
    clients = await target.many(target.users[: 2 * n], **kw)
    return [(clients[2 * i], clients[2 * i + 1]) for i in range(n)]


async def _throughput(target: Target, p: dict, **kw) -> dict:
    pairs = await _pairs(target, p["pairs"], **kw)
    try:
        runs = [await loadgen.saturate(pairs, p["window"], p["warmup"], p["seconds"]) for _ in range(3)]
    finally:
        close_all(c for pair in pairs for c in pair)
    return {"messages_per_s": round(statistics.median(runs)), "runs": [round(r) for r in runs],
            "pairs": p["pairs"], "window": p["window"]}


async def tcp(target: Target, p: dict) -> dict:
    return await _throughput(target, p)


async def starttls(target: Target, p: dict) -> dict:
    return await _throughput(target, p, starttls=True)


async def _latency(target_pairs, p: dict, rate: float) -> dict:
    latencies = await loadgen.fixed_rate(target_pairs, rate, p["warmup"], p["seconds"] * 2)
    return {"rate": rate, "samples": len(latencies), "p50_ms": round(percentile(latencies, 50) / 1e6, 3),
            "p99_ms": round(percentile(latencies, 99) / 1e6, 3), "max_ms": round(max(latencies or [0]) / 1e6, 3)}


async def latency(target: Target, p: dict) -> dict:
    pairs = await _pairs(target, p["pairs"])
    try:
        return await _latency(pairs, p, p["rate"])
    finally:
        close_all(c for pair in pairs for c in pair)


async def memory(target: Target, p: dict) -> dict:
    result = {}
    for n in p["memory"]:
        warm = await target.many(target.users[:2], starttls=True)
        close_all(warm)
        await asyncio.sleep(1.0)
        before = target.server.rss_kib()
        clients = await target.many(target.users[:n], starttls=True)
        await asyncio.sleep(2.0)
        after = target.server.rss_kib()
        close_all(clients)
        result[f"kib_per_session_{n}"] = round((after - before) / n, 1)
        result[f"rss_before_kib_{n}"], result[f"rss_after_kib_{n}"] = before, after
        await asyncio.sleep(2.0)
    return result


async def presence(target: Target, p: dict) -> dict:
    result = {}
    for n in p["fanout"]:
        contacts = await target.many(target.users[:n])
        fan = await target.client(f"fan{n}")
        await asyncio.sleep(1.0 if n > 10 else 0.2)
        rounds_p50, rounds_all = [], []
        try:
            for k in range(p["rounds"]):
                marker = f"upd{k}x".encode()
                arrivals: list[float] = []
                done = asyncio.get_running_loop().create_future()

                def sink(data: bytes, client: loadgen.Client, marker: bytes = marker, arrivals=arrivals,
                         done=done, n: int = n) -> None:
                    if marker in data:
                        arrivals.append(time.perf_counter())
                        client.sink = _ignore
                        if len(arrivals) == n and not done.done():
                            done.set_result(None)

                for c in contacts:
                    c.sink = (lambda data, c=c, sink=sink: sink(data, c))
                start = time.perf_counter()
                fan.send(f"<presence><status>{marker.decode()}</status></presence>")
                try:
                    await asyncio.wait_for(done, 30)
                except TimeoutError:
                    pass
                times = [a - start for a in arrivals]
                rounds_p50.append(percentile(times, 50))
                rounds_all.append(max(times) if len(times) == n else float("inf"))
                await asyncio.sleep(0.3)
        finally:
            close_all([*contacts, fan])
        result[f"p50_ms_{n}"] = round(statistics.median(rounds_p50) * 1e3, 2)
        result[f"all_ms_{n}"] = round(statistics.median(rounds_all) * 1e3, 2)
        await asyncio.sleep(1.0)
    return result


def _ignore(data: bytes) -> None:
    pass


async def websocket(target: Target, p: dict) -> dict:
    pairs = await _pairs(target, p["web_pairs"], websocket=True)
    try:
        rate = await loadgen.saturate(pairs, p["window"], p["warmup"], p["seconds"])
        lat = await _latency(pairs, p, p["web_rate"])
    finally:
        close_all(c for pair in pairs for c in pair)
    return {"messages_per_s": round(rate), "sessions": 2 * p["web_pairs"], **{f"lat_{k}": v for k, v in lat.items()}}


async def bosh(target: Target, p: dict) -> dict:
    import boshgen

    return await boshgen.bosh_scenario(target.server, target.users[: 2 * p["bosh_pairs"]], p)


async def _first_delivery(pairs: list[tuple[loadgen.Client, loadgen.Client]], timeout: float = 30.0) -> None:
    """One message on every pair, waited for: the s2s streams are up (TLS, EXTERNAL) before anything is measured.
    A bounce or a timeout is an error."""
    received = {id(receiver): bytearray() for _, receiver in pairs}
    for sender, receiver in pairs:
        receiver.sink = received[id(receiver)].extend
        sender.write(loadgen.message(receiver.jid, "warm-up", "w"))
    deadline = time.perf_counter() + timeout
    try:
        while not all(b"</message>" in data for data in received.values()):
            if time.perf_counter() > deadline:
                missing = sum(b"</message>" not in data for data in received.values())
                raise TimeoutError(f"{missing} of {len(pairs)} warm-up messages not delivered in {timeout:.0f} s")
            await asyncio.sleep(0.01)
        for sender, receiver in pairs:
            data = bytes(received[id(receiver)])
            if b"<error" in data or sender.jid.encode() not in data:
                raise RuntimeError(f"warm-up {sender.jid} -> {receiver.jid}: the receiver got {data[:300]!r}")
    finally:
        for _, receiver in pairs:
            receiver.sink = None
            receiver.buf = b""


async def _s2s_throughput(a: Target, b: Target, p: dict, cpu) -> dict:
    """alice_i on A sends to bob_i on B and bob_i to alice_i, each keeping ``window`` messages in flight."""
    n = p["pairs"]
    clients: list[loadgen.Client] = []
    try:
        alices = await a.many(a.users[:n])
        clients += alices
        bobs = await b.many(b.users[:n])
        clients += bobs
        pairs = [*zip(alices, bobs, strict=True), *zip(bobs, alices, strict=True)]
        start = time.perf_counter()
        await _first_delivery(pairs)
        first = time.perf_counter() - start
        runs, cpu_runs, errors = [], [], 0
        for _ in range(3):
            stats: dict = {}
            runs.append(await loadgen.saturate(pairs, p["window"], p["warmup"], p["seconds"], cpu=cpu, stats=stats))
            cpu_runs.append(stats["cpu_us_per_message"])
            errors += stats["errors"]
        if errors:
            raise RuntimeError(f"{errors} of the messages counted were bounces (error stanzas)")
    finally:
        close_all(clients)
    return {"messages_per_s": round(statistics.median(runs)), "runs": [round(r) for r in runs], "pairs": n,
            "window": p["window"], "cpu_us_per_message": round(statistics.median(cpu_runs), 1),
            "first_delivery_ms": round(first * 1e3, 1)}


def _s2s_auth(started: list[servers.Server]) -> str:
    """How the servers' s2s streams authenticated, from their logs (e.g. ``EXTERNAL``)."""
    methods: set[str] = set()
    for server in started:
        try:
            with open(server.extra["log"], errors="replace") as log:
                text = log.read()
        except (KeyError, OSError):
            continue
        methods.update(m.strip() for m in re.findall(r"s2s (?:out|in) .*?(?:established|authenticated) \(([^,)]+)",
                                                      text))  # xmppcluster
        methods.update(m.upper() for m in re.findall(r"(?i)accepting sasl (external)|authenticated using (\w+)", text)
                       for m in m if m)  # Prosody
    return ",".join(sorted(methods)) or "?"


async def run_s2s(base: str, p: dict, prosody_missing: str | None) -> dict[str, dict | None]:
    """Two xmppcluster servers (a.bench, b.bench), then two Prosody, federating on loopback with certificates
    from one bench CA; ``{"xmppcluster": figures, "prosody": figures or None}`` (``{"error": ...}`` on failure)."""
    base = os.path.join(base, "s2s")
    os.makedirs(base, exist_ok=True)
    ca = servers.make_ca(os.path.join(base, "ca.pem"))
    users = {domain: [f"{name}_{i}" for i in range(p["pairs"])] for domain, name in zip(S2S_DOMAINS, ("alice", "bob"),
                                                                                        strict=True)}
    results: dict[str, dict | None] = {"xmppcluster": None, "prosody": None}
    for label, start in (("xmppcluster", servers.start_xmppcluster_s2s), ("prosody", servers.start_prosody_s2s)):
        if label == "prosody" and prosody_missing:
            continue
        started: list[servers.Server] = []
        try:
            started = start(os.path.join(base, label), SERVER_CPU, ca, users)
            a, b = (Target(server, users[d], d) for server, d in zip(started, S2S_DOMAINS, strict=True))
            results[label] = await _s2s_throughput(a, b, p, cpu=lambda started=started: sum(s.cpu_seconds()
                                                                                            for s in started))
            results[label]["auth"] = _s2s_auth(started)
        except Exception as e:  # report and go on, like the other scenarios
            results[label] = {"error": f"{type(e).__name__}: {e}"[:300]}
            for server in started:
                if not server.alive():
                    print(f"# {server.name} died:\n{server.log_tail()}", file=sys.stderr)
        finally:
            for server in started:
                server.stop()
        await asyncio.sleep(0.5)
    return results


# -- the run ---------------------------------------------------------------------------------------------

TARGETS = {
    # scenario: (metric, higher is better, required ratio xmppcluster/prosody, description)
    "login": ("concurrent_per_s", True, 1.5, "logins/s (STARTTLS+SCRAM-SHA-1+bind+roster+presence)"),
    "tcp": ("messages_per_s", True, 1.5, "1:1 messages/s, plain TCP"),
    "starttls": ("messages_per_s", True, 1.5, "1:1 messages/s, STARTTLS"),
    "latency": ("p99_ms", False, None, "latency at a fixed rate"),
    "memory": (None, False, 1.0, "KiB per idle authenticated session"),
    "presence": (None, False, 0.5, "presence update to N online contacts"),
    "websocket": ("messages_per_s", True, 1.2, "WebSocket messages/s"),
    "bosh": ("messages_per_s", True, 1.5, "BOSH messages/s"),
    # s2s: the same kind of figure as starttls (messages between TLS streams), so the same target.
    "s2s": ("messages_per_s", True, 1.5, "messages/s between two domains over s2s (TLS, SASL EXTERNAL)"),
}


def compare(name: str, ours: dict, theirs: dict | None, p: dict) -> dict:
    metric, higher, need, _ = TARGETS[name]
    line = {"scenario": name, "xmppcluster": ours, "prosody": theirs}
    if name == "memory":
        metric = f"kib_per_session_{p['memory'][-1]}"
    if name == "presence":
        metric = f"p50_ms_{p['fanout'][-1]}"
    line["metric"] = metric
    if name == "latency":
        line["target"] = "p99 <= 2 ms"
        line["met"] = ours["p99_ms"] <= 2.0
    if theirs is not None and theirs.get(metric):
        line["ratio"] = round(ours[metric] / theirs[metric], 3)
        if need is not None:
            line["target"] = f"ratio {'>=' if higher else '<='} {need}"
            line["met"] = line["ratio"] >= need if higher else line["ratio"] <= need
    else:
        line["ratio"] = None
    return line


def human(line: dict) -> str:
    metric = line["metric"]
    ours = line["xmppcluster"].get(metric)
    theirs = (line["prosody"] or {}).get(metric)
    verdict = "" if "met" not in line else (" OK" if line["met"] else " MISSED")
    return (f"{line['scenario']:>10}: {metric} xmppcluster={ours} prosody={theirs} ratio={line['ratio']}"
            f" ({line.get('target', 'no target')}){verdict}")


def _rows(line: dict, p: dict) -> list[tuple[str, str]]:
    """(label, key) of each table row a scenario contributes."""
    name = line["scenario"]
    if name == "login":
        return [(f"logins/s, {line['xmppcluster'].get('concurrency', 0)} concurrent", "concurrent_per_s"),
                ("  server CPU ms per login", "server_cpu_ms_per_login"),
                ("logins/s, sequential", "sequential_per_s")]
    if name == "latency":
        return [(f"p50 ms at {p['rate']} msg/s", "p50_ms"), (f"p99 ms at {p['rate']} msg/s", "p99_ms")]
    if name == "memory":
        return [(f"KiB per idle session, {n}", f"kib_per_session_{n}") for n in p["memory"]]
    if name == "presence":
        return [(f"presence to {n} contacts, p50 ms", f"p50_ms_{n}") for n in p["fanout"]]
    if name == "cluster":
        return [("cluster: local msg/s (t1 -> t1)", "local_messages_per_s"),
                ("cluster: cross msg/s (t1 -> t2)", "cross_messages_per_s"),
                ("  cross / local throughput", "cross_vs_local_throughput"),
                ("cluster: local / cross p99 ms", "local_p99_ms"), ("", "cross_p99_ms"),
                ("  cross / local p99", "cross_vs_local_p99")]
    if name == "s2s":
        return [(f"s2s msg/s, {' <-> '.join(S2S_DOMAINS)}", "messages_per_s"),
                ("  s2s: CPU us per message, 2 servers", "cpu_us_per_message")]
    label = {"tcp": "1:1 msg/s, plain TCP", "starttls": "1:1 msg/s, STARTTLS", "websocket": "WebSocket msg/s",
             "bosh": "BOSH msg/s"}.get(name, name)
    return [(label, "messages_per_s")]


def table(lines: list[dict], p: dict) -> str:
    """The side-by-side table of every scenario that ran."""
    out = [f"{'scenario':<36} {'xmppcluster':>12} {'prosody':>10} {'ratio':>7}  target"]
    for line in lines:
        ours, theirs = line.get("xmppcluster") or {}, line.get("prosody") or {}
        if "error" in ours:
            out.append(f"{line['scenario']:<36} ERROR {ours['error'][:60]}")
            continue
        for label, key in _rows(line, p):
            mine, other = ours.get(key), theirs.get(key)
            ratio = round(mine / other, 2) if isinstance(mine, (int, float)) and other else None
            verdict = ""
            if key == line.get("metric") or (line["scenario"] == "cluster" and key.startswith("cross_vs")):
                verdict = line.get("target", "")
                if "met" in line:
                    verdict += " met" if line["met"] else " MISSED"
            out.append(f"{label:<36} {_fmt(mine):>12} {_fmt(other):>10} {_fmt(ratio):>7}  {verdict}".rstrip())
    return "\n".join(out)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value >= 1000:
        return f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


async def run_cluster(base: str, p: dict, users: list[str], single_rate: float | None) -> dict:
    """Two xmppcluster nodes (both on the server CPU) sharing one database: t1 -> t2 against t1 -> t1."""
    directory, db_uri = servers.xmppcluster_directory(os.path.join(base, "cluster"))
    names = [f"t1.{servers.DOMAIN}", f"t2.{servers.DOMAIN}"]
    ports = {n: {k: servers.free_port() for k in ("c2s", "bosh", "ws", "cluster")} for n in names}
    members = ",".join(f"{n}:secret-{i}:{ports[n]['cluster']}:127.0.0.1" for i, n in enumerate(names))
    servers.provision_xmppcluster(db_uri, users[: 2 * p["pairs"]], {})
    nodes = []
    try:
        for n in names:
            config = servers.xmppcluster_config(directory, ports[n], db_uri, n, cluster=members)
            nodes.append(servers.start_xmppcluster(directory, config, n, ports[n], SERVER_CPU, name=n))
        await asyncio.sleep(2.0)  # links up
        t1, t2 = Target(nodes[0], users), Target(nodes[1], users)
        out: dict = {}
        for label, receiver_target in (("local", t1), ("cross", t2)):
            senders = await t1.many(users[: p["pairs"]])
            receivers = await receiver_target.many(users[p["pairs"]: 2 * p["pairs"]])
            pairs = list(zip(senders, receivers, strict=True))
            await asyncio.sleep(0.5)
            cpu_runs: list[float] = []
            try:
                runs = []
                for _ in range(3):
                    stats: dict = {}
                    runs.append(await loadgen.saturate(pairs, p["window"], p["warmup"], p["seconds"],
                                                       cpu=lambda: sum(n.cpu_seconds() for n in nodes), stats=stats))
                    cpu_runs.append(stats["cpu_us_per_message"])
                lat = await _latency(pairs, p, p["rate"])
            finally:
                close_all([*senders, *receivers])
            out[f"{label}_messages_per_s"] = round(statistics.median(runs))
            out[f"{label}_cpu_us_per_message"] = round(statistics.median(cpu_runs), 1)
            out[f"{label}_p50_ms"], out[f"{label}_p99_ms"] = lat["p50_ms"], lat["p99_ms"]
            await asyncio.sleep(1.0)
        out["cross_vs_local_throughput"] = round(out["cross_messages_per_s"] / out["local_messages_per_s"], 3)
        out["cross_vs_local_p99"] = round(out["cross_p99_ms"] / out["local_p99_ms"], 3)
        if single_rate:
            out["cross_vs_single_node_throughput"] = round(out["cross_messages_per_s"] / single_rate, 3)
        return out
    finally:
        for node in nodes:
            node.stop()


async def main_async(args: argparse.Namespace) -> int:
    p = dict(SMOKE if args.smoke else FULL)
    wanted = args.scenarios or list(SCENARIOS)
    base = tempfile.mkdtemp(prefix="xmppbench-")
    n_users = max(2 * p["pairs"], max(p["memory"]), max(p["fanout"]), 2 * p["web_pairs"], 2 * p["bosh_pairs"], 40)
    users = [f"u{i}" for i in range(n_users)]
    fans = [f"fan{n}" for n in p["fanout"]]
    rosters = {f"fan{n}": users[:n] for n in p["fanout"]}
    for i, user in enumerate(users[: max(p["fanout"])]):
        rosters[user] = [f"fan{n}@{servers.DOMAIN}" for n in p["fanout"] if i < n]
    rosters = {u: [c if "@" in c else f"{c}@{servers.DOMAIN}" for c in cs] for u, cs in rosters.items()}
    started = []
    meta = {"machine": os.uname().machine, "cpus": os.cpu_count(), "python": sys.version.split()[0],
            "smoke": args.smoke}
    try:
        directory, db_uri = servers.xmppcluster_directory(base)
        t0 = time.perf_counter()
        servers.provision_xmppcluster(db_uri, users + fans, rosters if "presence" in wanted else {})
        config = servers.xmppcluster_config(directory, {"c2s": servers.free_port(), "bosh": servers.free_port(),
                                                        "ws": servers.free_port()}, db_uri, f"t1.{servers.DOMAIN}")
        ports = {}
        for line in open(config):
            for key, prefix in (("c2s", "c2s/connections/ports[i]="), ("bosh", "bosh/connections/ports[i]="),
                                ("ws", "ws2s/connections/ports[i]=")):
                if line.startswith(prefix):
                    ports[key] = int(line.strip().split("=")[1])
        ours = servers.start_xmppcluster(directory, config, f"t1.{servers.DOMAIN}", ports, SERVER_CPU)
        started.append(ours)
        targets = {"xmppcluster": Target(ours, users)}
        prosody_bin = None if args.no_prosody else servers.prosody_available(install=not args.no_install)
        if prosody_bin is not None:
            prosody = servers.start_prosody(base, SERVER_CPU, users + fans,
                                            rosters if "presence" in wanted else {})
            started.append(prosody)
            targets["prosody"] = Target(prosody, users)
            meta["prosody"] = servers.prosody_version()
        meta["setup_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({"meta": meta}), flush=True)
        failed = 0
        single_rate = None
        lines: list[dict] = []
        for name in wanted:
            if name in ("cluster", "s2s"):
                continue
            results: dict[str, dict | None] = {"prosody": None}
            for label, target in targets.items():
                try:
                    results[label] = await globals()[name](target, p)
                except Exception as e:  # report and go on: one broken scenario must not hide the others
                    results[label] = {"error": f"{type(e).__name__}: {e}"[:300]}
                    if label == "xmppcluster":
                        failed += 1
                await asyncio.sleep(0.5)
            if "error" in results["xmppcluster"] or (results["prosody"] and "error" in results["prosody"]):
                line = {"scenario": name, "xmppcluster": results["xmppcluster"], "prosody": results["prosody"]}
                print(json.dumps(line), flush=True)
                print(f"{name:>10}: ERROR {line}", flush=True)
                lines.append(line)
                continue
            if name == "tcp":
                single_rate = results["xmppcluster"]["messages_per_s"]
            line = compare(name, results["xmppcluster"], results["prosody"], p)
            lines.append(line)
            print(json.dumps(line), flush=True)
            print(human(line), flush=True)
        if "cluster" in wanted:
            try:
                out = await run_cluster(base, p, users, single_rate)
                line = {"scenario": "cluster", "xmppcluster": out, "prosody": None,
                        "target": "cross >= 0.7 x local throughput, cross p99 <= 2 x local p99",
                        "met": out["cross_vs_local_throughput"] >= 0.7 and out["cross_vs_local_p99"] <= 2.0}
                lines.append(line)
                print(json.dumps(line), flush=True)
                print(f"{'cluster':>10}: local {out['local_messages_per_s']}/s p99 {out['local_p99_ms']} ms, "
                      f"t1->t2 {out['cross_messages_per_s']}/s p99 {out['cross_p99_ms']} ms, ratio "
                      f"{out['cross_vs_local_throughput']} ({line['target']}) {'OK' if line['met'] else 'MISSED'}",
                      flush=True)
            except Exception as e:
                failed += 1
                print(json.dumps({"scenario": "cluster", "xmppcluster": {"error": f"{type(e).__name__}: {e}"}}))
        if "s2s" in wanted:
            missing = (("--no-prosody" if args.no_prosody else "Prosody is not installed") if prosody_bin is None
                       else servers.prosody_s2s_missing())
            if missing:
                print(f"# s2s: measuring xmppcluster only: {missing}", file=sys.stderr, flush=True)
            try:
                results = await run_s2s(base, p, missing)
            except Exception as e:
                results = {"xmppcluster": {"error": f"{type(e).__name__}: {e}"[:300]}, "prosody": None}
            theirs = results["prosody"]
            if "error" in results["xmppcluster"] or (theirs and "error" in theirs):
                failed += "error" in results["xmppcluster"]
                line = {"scenario": "s2s", **results}
                print(json.dumps(line), flush=True)
                print(f"{'s2s':>10}: ERROR {line}", flush=True)
            else:
                line = compare("s2s", results["xmppcluster"], theirs, p)
                print(json.dumps(line), flush=True)
                print(human(line), flush=True)
            lines.append(line)
        print("\n" + table(lines, p), flush=True)
        return 1 if failed else 0
    finally:
        for server in started:
            if not server.alive():
                print(f"# {server.name} died:\n{server.log_tail()}", file=sys.stderr)
            server.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"any of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that everything runs")
    parser.add_argument("--no-prosody", action="store_true", help="measure xmppcluster only")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install prosody")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if args.smoke:
        args.no_install = True
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {CLIENT_CPU})
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
