"""``/status``: the operators' page of one node, rendered here as HTML with inline SVG charts.

Nodes and their links (the ``cluster_nodes`` rows every node writes, and this node's own view of its links),
sessions per node and per transport, and charts of the last samples (:attr:`NodeMetrics.samples`). No script
and no external asset: the page is allowed nothing but its own style block (:data:`CSP`), and refreshes
itself every sample interval.
"""

from __future__ import annotations

import base64
import hashlib
import time
from html import escape
from typing import TYPE_CHECKING, Any

from xmppcluster.ops.metrics import TRANSPORTS, local_sessions

if TYPE_CHECKING:
    from xmppcluster.ops.metrics import NodeMetrics, Sample

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child,td.text,th.text{text-align:left}.up{color:#176b24}.down{color:#b00020}.stale{color:#a15c00}
svg{background:#fff;border:1px solid #ccc}.note{color:#666}
"""
#: The page may use its own style block and nothing else: no script, image, font, frame or form target.
CSP = ("default-src 'none'; style-src 'sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
       + "'; img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
COLOURS = {"tcp": "#1f77b4", "websocket": "#2ca02c", "bosh": "#d62728", "other": "#7f7f7f",
           "received": "#9467bd", "sent": "#ff7f0e"}
WIDTH, HEIGHT, MARGIN = 640, 170, 36


def render(metrics: NodeMetrics, now: float | None = None) -> bytes:
    """The whole page, UTF-8."""
    now = time.time() if now is None else now
    server = metrics.server
    interval = metrics.settings.sample_interval
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<meta http-equiv='refresh' content='{max(2, int(interval))}'>",
             f"<title>{escape(server.node_name)}: xmppcluster status</title><style>{STYLE}</style></head><body>",
             f"<h1>{escape(server.node_name)}</h1>",
             f"<p class='note'>{escape(', '.join(sorted(server.domains)))} &middot; "
             f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(now))}</p>"]
    parts += _nodes(metrics, now)
    parts += _sessions(server)
    parts += _charts(list(metrics.samples), interval)
    parts.append("</body></html>")
    return "".join(parts).encode("utf-8")


def _nodes(metrics: NodeMetrics, now: float) -> list[str]:
    server = metrics.server
    cluster = server.cluster
    local = sum(1 for s in server.sessions if s.node is None)
    out = ["<h2>Nodes</h2><table><tr><th>node</th><th class='text'>state</th><th>last report</th><th>sessions</th>"
           "<th class='text'>links (peer: its sessions seen there)</th></tr>"]
    if cluster is None:
        out.append(f"<tr><td>{escape(server.node_name)}</td><td class='text up'>this node</td><td>-</td>"
                   f"<td>{local}</td><td class='text'>not clustered</td></tr></table>")
        return out
    rows = {row.name: row for row in metrics.nodes}
    stale_after = max(3 * cluster.failure_timeout, 5.0)
    names = sorted(set(rows) | set(cluster.peers()) | set(cluster.links) | {cluster.name})
    for name in names:
        row = rows.get(name)
        if name == cluster.name:
            state, css = "this node", "up"
        elif name in cluster.links and cluster.links[name].up:
            state, css = "link up", "up"
        elif cluster.failure.is_suspect(name):
            state, css = "unreachable", "stale"
        else:
            state, css = "no link", "down"
        if row is not None and now - row.last_seen > stale_after:
            state, css = state + ", report stale", "stale"
        seen = f"{now - row.last_seen:.0f} s ago" if row is not None else "never"
        sessions = local if name == cluster.name else (row.sessions if row is not None else "-")
        links = ", ".join(f"{escape(peer)}: {count}" for peer, count in sorted(row.links.items())) if row else "-"
        out.append(f"<tr><td>{escape(name)}</td><td class='text {css}'>{escape(state)}</td><td>{seen}</td>"
                   f"<td>{sessions}</td><td class='text'>{links or '-'}</td></tr>")
    out.append("</table>")
    out += _links(cluster)
    return out


def _links(cluster: Any) -> list[str]:
    delivery = cluster.delivery
    now = cluster.clock.seconds()
    out = ["<h2>Links of this node</h2><table><tr><th>peer</th><th class='text'>state</th><th>silent for</th>"
           "<th>unacknowledged</th><th>outbox</th><th>its sessions here</th></tr>"]
    for peer in sorted(set(cluster.peers()) | set(cluster.links)):
        link = cluster.links.get(peer)
        if link is not None and link.up:
            state, css = "up", "up"
        else:
            state, css = ("unreachable", "stale") if cluster.failure.is_suspect(peer) else ("down", "down")
        silent = f"{max(0.0, now - link.last_heard):.1f} s" if link is not None else "-"
        lag = delivery.sent.get(peer, 0) - delivery.acked.get(peer, 0) if link is not None else "-"
        outbox = len(delivery.outbox.get(peer, ())) if link is not None else "-"
        out.append(f"<tr><td>{escape(peer)}</td><td class='text {css}'>{state}</td><td>{silent}</td><td>{lag}</td>"
                   f"<td>{outbox}</td><td>{cluster.directory.count(peer)}</td></tr>")
    out.append("</table>")
    return out


def _sessions(server: Any) -> list[str]:
    counts = local_sessions(server)
    transports = list(TRANSPORTS) + sorted({t for t, _ in counts} - set(TRANSPORTS))
    out = ["<h2>Sessions on this node</h2><table><tr><th>vhost</th>"
           + "".join(f"<th>{escape(t)}</th>" for t in transports) + "<th>total</th></tr>"]
    for domain in sorted(server.domains | {d for _, d in counts}):
        cells = [counts.get((t, domain), 0) for t in transports]
        out.append(f"<tr><td>{escape(domain)}</td>" + "".join(f"<td>{c}</td>" for c in cells)
                   + f"<td>{sum(cells)}</td></tr>")
    total = [sum(c for (t, _), c in counts.items() if t == transport) for transport in transports]
    out.append("<tr><th>all</th>" + "".join(f"<th>{c}</th>" for c in total) + f"<th>{sum(total)}</th></tr></table>")
    return out


def _charts(samples: list[Sample], interval: float) -> list[str]:
    span = f"the last {len(samples)} samples, one every {interval:g} s"
    if len(samples) < 2:
        return [f"<h2>History</h2><p class='note'>Charts appear after two samples ({interval:g} s apart).</p>"]
    transports = list(TRANSPORTS) + sorted({t for s in samples for t in s.sessions} - set(TRANSPORTS))
    sessions = {t: [s.sessions.get(t, 0) for s in samples] for t in transports}
    rates = {"received": [], "sent": []}
    for before, after in zip(samples, samples[1:], strict=False):
        elapsed = max(after.at - before.at, 1e-6)
        rates["received"].append(max(0, after.received - before.received) / elapsed)
        rates["sent"].append(max(0, after.sent - before.sent) / elapsed)
    seconds = samples[-1].at - samples[0].at
    return [f"<h2>Sessions on this node ({span})</h2>", chart(sessions, "sessions", seconds),
            f"<h2>Stanzas per second on this node ({span})</h2>", chart(rates, "stanzas/s", seconds)]


def chart(series: dict[str, list[float]], unit: str, seconds: float = 0) -> str:
    """An inline SVG line chart of equally spaced points, one polyline per series, with a legend; the time
    axis runs from ``seconds`` ago to now."""
    longest = max((len(v) for v in series.values()), default=0)
    top = max((max(v) for v in series.values() if v), default=0) or 1
    inner_w, inner_h = WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN
    step = inner_w / max(longest - 1, 1)
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' "
           f"viewBox='0 0 {WIDTH} {HEIGHT}' role='img' aria-label='{escape(unit)}'>",
           f"<line x1='{MARGIN}' y1='{HEIGHT - MARGIN}' x2='{WIDTH - MARGIN}' y2='{HEIGHT - MARGIN}' stroke='#999'/>",
           f"<line x1='{MARGIN}' y1='{MARGIN}' x2='{MARGIN}' y2='{HEIGHT - MARGIN}' stroke='#999'/>",
           f"<text x='4' y='{MARGIN + 4}' font-size='11'>{_number(top)}</text>",
           f"<text x='4' y='{HEIGHT - MARGIN + 4}' font-size='11'>0</text>",
           f"<text x='{WIDTH - MARGIN}' y='{HEIGHT - 8}' font-size='11' text-anchor='end'>now</text>",
           f"<text x='{MARGIN}' y='{HEIGHT - 8}' font-size='11'>{_ago(seconds)}</text>"]
    legend_x = MARGIN
    for name, values in series.items():
        colour = COLOURS.get(name, "#444")
        xy = [(WIDTH - MARGIN - (len(values) - 1 - i) * step, HEIGHT - MARGIN - inner_h * v / top)
              for i, v in enumerate(values)]  # the last value at "now"
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        out.append(f"<polyline fill='none' stroke='{colour}' stroke-width='2' points='{points}'/>")
        if xy:  # the latest value, visible even as a single point
            out.append(f"<circle cx='{xy[-1][0]:.1f}' cy='{xy[-1][1]:.1f}' r='3' fill='{colour}'/>")
        last = _number(values[-1]) if values else "0"
        out.append(f"<text x='{legend_x}' y='{MARGIN - 12}' font-size='12' fill='{colour}'>"
                   f"{escape(name)} {last}</text>")
        legend_x += 16 + 8 * (len(name) + len(last))
    out.append("</svg>")
    return "".join(out)


def _ago(seconds: float) -> str:
    return f"{seconds / 60:.0f} min ago" if seconds >= 120 else f"{seconds:.0f} s ago"


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or float(value).is_integer() else f"{value:.1f}"
