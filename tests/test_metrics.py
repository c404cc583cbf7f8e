"""The operators' listener (``--metrics-port``): ``/metrics`` parsed by prometheus_client, counters moved by
real traffic, ``/status``, the loopback default, and hostile clients of the listener; on one node and on a
two-node cluster of real ``twistd`` processes."""

from __future__ import annotations

import base64
import hashlib
import json
import pathlib
import re
import socket
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from typing import Any

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import ensureDeferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.clients.raw import RawClient
from tests.clients.ws import WSClient
from tests.support.attack import MAX_RTT, under_attack
from tests.support.cluster import DOMAIN, make_cluster, migrate
from tests.support.server import free_port, start_server
from tests.support.slix import ca_file
from tests.support.waiting import wait_until
from tests.test_message_rules import eventually
from xmppcluster.ops import monitor

PASSWORD = "metrics-pass"
DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
_METRIC = re.compile(r"\b((?:xmpp|process|python)_[a-z0-9_]+)")


def base(name: str) -> str:
    """A metric's family name: without the ``_total``, ``_bucket``, ``_count``, ``_sum`` and ``_created`` suffixes."""
    return re.sub(r"_(total|bucket|count|sum|created)$", "", name)


def documented() -> set[str]:
    """The metrics docs/metrics.rst names (in double back-quotes)."""
    text = (DOCS / "metrics.rst").read_text(encoding="utf-8")
    return {base(name) for name in re.findall(r"``((?:xmpp|process|python)_[a-z0-9_]+)", text)}


def exposed(text: str) -> set[str]:
    return {base(family.name) for family in text_string_to_metric_families(text)}


def fetch(port: int, path: str = "/metrics", *, host: str = "127.0.0.1", accept: str | None = None,
          timeout: float = 10) -> tuple[int, dict[str, str], str]:
    """GET over HTTP (from a thread): status, headers (lower-case names), body."""
    request = urllib.request.Request(f"http://{host}:{port}{path}", headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(table: dict, name: str, **labels: str) -> float:
    return table.get((name, tuple(sorted(labels.items()))), 0.0)


class NodeMetricsTests(TestCase):
    timeout = 60

    async def start(self, extra: str = "", **options: Any):
        self.patch(monitor, "MIN_RENDER_INTERVAL", 0)  # each fetch renders anew (the cache has its own test)
        self.port = free_port()
        running = await start_server(self, f"--metrics-port={self.port}\n--metrics-sample-interval=1\n" + extra,
                                     **options)
        for user in ("alice", "bob", "carol"):
            await running.add_user(f"{user}@localhost", PASSWORD)
        return running

    def client(self, running, user: str, resource: str = "r") -> RawClient:
        client = RawClient(running.ports["c2s"]["plain"], ca_file=ca_file(running))
        self.addCleanup(client.close)
        client.login(user, PASSWORD, resource)
        return client

    async def test_metrics_parse_and_counters_move_with_traffic(self) -> None:
        running = await self.start()
        status, headers, before_text = await deferToThread(fetch, self.port)
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain; version=0.0.4"), headers)
        before = samples(before_text)

        def traffic() -> tuple[str, str]:
            alice = self.client(running, "alice", "a")
            bob = self.client(running, "bob", "b")
            for n in range(5):
                alice.send(f"<message to='bob@localhost/b' type='chat' id='m{n}'><body>{n}</body></message>")
            for _ in range(5):
                bob.until("{jabber:client}message")
            wrong = RawClient(running.ports["c2s"]["plain"], ca_file=ca_file(running))
            self.addCleanup(wrong.close)
            wrong.open()
            wrong.starttls()
            return wrong.scram("carol", "not her password").tag, fetch(self.port)[2]

        failure, during_text = await deferToThread(traffic)
        self.assertTrue(failure.endswith("failure"), failure)
        during = samples(during_text)
        self.assertEqual(value(during, "xmpp_logins_total", vhost="localhost")
                         - value(before, "xmpp_logins_total", vhost="localhost"), 2)
        self.assertEqual(value(during, "xmpp_auth_failures_total", vhost="localhost", condition="not-authorized")
                         - value(before, "xmpp_auth_failures_total", vhost="localhost", condition="not-authorized"), 1)
        for name in ("xmpp_stanzas_received_total", "xmpp_stanzas_sent_total"):
            self.assertEqual(value(during, name, kind="message") - value(before, name, kind="message"), 5, name)
        self.assertEqual(value(during, "xmpp_sessions", transport="tcp", vhost="localhost"), 2)
        self.assertEqual(value(during, "xmpp_sessions", transport="websocket", vhost="localhost"), 0)
        self.assertGreater(value(during, "xmpp_db_query_seconds_count", kind="read"),
                           value(before, "xmpp_db_query_seconds_count", kind="read"))
        self.assertGreater(value(during, "process_resident_memory_bytes"), 1_000_000)
        self.assertEqual(value(during, "xmpp_node_info", node="node1.test"), 1)

    async def test_offline_queue_and_reactor_lag_are_sampled(self) -> None:
        running = await self.start()
        metrics = running.service.metrics

        def send_to_offline_carol() -> None:
            alice = self.client(running, "alice", "a")
            alice.send("<message to='carol@localhost' type='chat' id='o1'><body>later</body></message>")
            alice.send("<message to='carol@localhost' type='chat' id='o2'><body>later</body></message>")
            alice.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
            alice.until("{jabber:client}iq")

        await deferToThread(send_to_offline_carol)
        await eventually(lambda: metrics.offline == (2, 1, 2), timeout=20)
        await eventually(lambda: metrics.lag_measurements >= 1, timeout=20)
        table = samples((await deferToThread(fetch, self.port))[2])
        self.assertEqual(value(table, "xmpp_offline_messages"), 2)
        self.assertEqual(value(table, "xmpp_offline_accounts"), 1)
        self.assertGreaterEqual(value(table, "xmpp_reactor_lag_seconds_count"), 1)

    async def test_websocket_sessions_are_counted_as_such(self) -> None:
        running = await self.start(components=("c2s", "ws2s"))

        def login() -> WSClient:
            client = WSClient(running.ports["ws2s"]["plain"], path="/")
            self.addCleanup(client.close)
            client.login("localhost", "alice", PASSWORD, "ws")
            return client

        await deferToThread(login)
        table = samples((await deferToThread(fetch, self.port))[2])
        self.assertEqual(value(table, "xmpp_sessions", transport="websocket", vhost="localhost"), 1)
        self.assertEqual(value(table, "xmpp_sessions", transport="tcp", vhost="localhost"), 0)
        self.assertEqual(value(table, "xmpp_logins_total", vhost="localhost"), 1)

    async def test_bosh_sessions_and_held_requests(self) -> None:
        running = await self.start(components=("c2s", "bosh"))
        url = f"http://127.0.0.1:{running.ports['bosh']['plain']}/http-bind"
        ns = "xmlns='http://jabber.org/protocol/httpbind' xmlns:xmpp='urn:xmpp:xbosh'"

        def post(body: str) -> ET.Element:
            request = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "text/xml"})
            with urllib.request.urlopen(request, timeout=30) as response:
                return ET.fromstring(response.read())

        def login() -> tuple[str, int]:
            created = post(f"<body {ns} rid='100' to='localhost' wait='20' hold='1' xmpp:version='1.0'/>")
            sid = created.get("sid")
            token = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
            reply = post(f"<body {ns} rid='101' sid='{sid}'><auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' "
                         f"mechanism='PLAIN'>{token}</auth></body>")
            assert reply.find("{urn:ietf:params:xml:ns:xmpp-sasl}success") is not None, ET.tostring(reply)
            post(f"<body {ns} rid='102' sid='{sid}' to='localhost' xmpp:restart='true'/>")
            bound = post(f"<body {ns} rid='103' sid='{sid}'><iq xmlns='jabber:client' type='set' id='b'>"
                         "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>web</resource></bind></iq></body>")
            assert bound.find("{jabber:client}iq") is not None, ET.tostring(bound)
            return sid, 104

        sid, rid = await deferToThread(login)
        held = deferToThread(post, f"<body {ns} rid='{rid}' sid='{sid}'/>")  # nothing to send: the node holds it

        async def scraped() -> dict:
            table = samples((await deferToThread(fetch, self.port))[2])
            return table if value(table, "xmpp_bosh_held_requests") == 1 else None

        table = await eventually(scraped, timeout=20)
        self.assertEqual(value(table, "xmpp_bosh_sessions"), 1)
        self.assertEqual(value(table, "xmpp_sessions", transport="bosh", vhost="localhost"), 1)
        self.assertEqual(value(table, "xmpp_sessions", transport="tcp", vhost="localhost"), 0)
        await deferToThread(post, f"<body {ns} rid='{rid + 1}' sid='{sid}' type='terminate'/>")
        await held

    async def test_openmetrics_when_asked(self) -> None:
        await self.start()
        status, headers, text = await deferToThread(
            fetch, self.port, accept="application/openmetrics-text; version=1.0.0")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("application/openmetrics-text"), headers)
        self.assertTrue(text.endswith("# EOF\n"))
        names = {family.name for family in openmetrics_families(text)}
        self.assertTrue({"xmpp_logins", "xmpp_stanzas_received", "xmpp_sessions"} <= names, names)

    async def test_listener_is_on_loopback_by_default(self) -> None:
        running = await self.start()
        hosts = [port.getHost().host for port in running.service.ports if port.getHost().port == self.port]
        self.assertEqual(hosts, ["127.0.0.1"])

        def other_address() -> None:
            with socket.socket() as probe:
                probe.settimeout(5)
                probe.connect(("127.0.0.2", self.port))

        with self.assertRaises(ConnectionRefusedError):
            await deferToThread(other_address)

    async def test_every_metric_is_documented_and_the_dashboard_uses_them(self) -> None:
        await self.start()
        names = exposed((await deferToThread(fetch, self.port))[2])
        self.assertEqual(names - documented(), set(), "docs/metrics.rst does not describe these")
        self.assertIn("xmpp_sessions", names)
        dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text(encoding="utf-8"))
        queried = {base(name) for panel in dashboard["panels"] for target in panel.get("targets", ())
                   for name in _METRIC.findall(target["expr"])}
        self.assertGreater(len(queried), 15)
        self.assertEqual(queried - documented(), set(), "the dashboard queries metrics nobody documents")
        cluster_only = {name for name in documented() if name.startswith("xmpp_cluster_")}
        self.assertEqual(queried - names - cluster_only, set(), "the dashboard queries metrics a node lacks")

    async def test_off_without_a_port(self) -> None:
        running = await start_server(self)
        self.assertIsNone(running.service.metrics)

    async def test_status_page(self) -> None:
        running = await self.start()
        await deferToThread(self.client, running, "alice", "a")
        await eventually(lambda: len(running.service.metrics.samples) >= 2, timeout=20)
        status, headers, page = await deferToThread(fetch, self.port, "/status")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/html; charset=utf-8")
        csp = headers["content-security-policy"]
        self.assertIn("default-src 'none'", csp)
        self.assertNotIn("unsafe-inline", csp)
        style = re.search(r"<style>(.*?)</style>", page, re.S).group(1)  # the one style block, allowed by its hash
        digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
        self.assertIn(f"style-src 'sha256-{digest}'", csp)
        self.assertIn("s ago</text>", page)
        self.assertNotIn("<script", page)
        self.assertIn("node1.test", page)
        self.assertIn("<svg", page)
        self.assertNotIn("http://", page.replace("http://www.w3.org/2000/svg", ""))  # no external asset
        self.assertIn("<tr><td>localhost</td><td>1</td><td>0</td><td>0</td><td>1</td></tr>", page)
        self.assertIn("<td class='text up'>this node</td>", page)
        self.assertEqual((await deferToThread(fetch, self.port, "/"))[2], page)
        self.assertEqual((await deferToThread(fetch, self.port, "/nothing"))[0], 404)


def raw_request(port: int, data: bytes, *, read: bool = True, timeout: float = 10) -> bytes:
    """Send bytes to the listener and read until it closes (or the timeout); what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass
        answer = b""
        while read:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
        return answer


class MonitorAttackTests(TestCase):
    """Hostile clients of the metrics listener: the node keeps answering its clients."""

    timeout = 90

    async def start(self, idle_timeout: float = 3):
        self.patch(monitor, "IDLE_TIMEOUT", idle_timeout)
        self.port = free_port()
        return await start_server(self, f"--metrics-port={self.port}\n")

    def site(self, running) -> monitor.MonitorSite:
        return next(port.factory for port in running.service.ports if port.getHost().port == self.port)

    async def test_many_connections_are_bounded(self) -> None:
        running = await self.start()
        site = self.site(running)

        def attack() -> list[bytes]:
            sockets = []
            try:
                for _ in range(200):
                    sockets.append(socket.create_connection(("127.0.0.1", self.port), timeout=30))
                answers = []
                for sock in sockets:  # a 503 then the close, or (taken) the close of the idle timeout
                    answer = b""
                    while chunk := sock.recv(4096):
                        answer += chunk
                    answers.append(answer)
                return answers
            finally:
                for sock in sockets:
                    sock.close()

        answers, rtts = await under_attack(running, attack)
        refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
        self.assertEqual(len(refused) + answers.count(b""), 200, {a[:40] for a in answers})
        self.assertEqual(site.peak, monitor.MAX_CONNECTIONS)
        self.assertEqual(site.refused, len(refused))
        self.assertGreaterEqual(len(refused), 100)
        self.assertLess(max(rtts), MAX_RTT * 4, rtts)
        await eventually(lambda: site.open == 0, timeout=20)
        status, _, text = await deferToThread(fetch, self.port)
        self.assertEqual(status, 200)
        self.assertIn("xmpp_sessions", text)

    async def test_huge_body_is_not_stored(self) -> None:
        running = await self.start()

        def attack() -> tuple[bytes, float]:
            started = time.monotonic()
            head = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000\r\n\r\n"
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(head)
                sent = 0
                try:
                    while sent < 200_000_000:
                        sent += sock.send(b"x" * 65536)
                except OSError:
                    pass  # the listener hung up
                return sent, time.monotonic() - started

        (sent, elapsed), rtts = await under_attack(running, attack)
        self.assertLess(sent, 50_000_000, "the listener kept reading a 200 MB body")
        self.assertLess(max(rtts), MAX_RTT * 4, rtts)
        self.assertEqual((await deferToThread(fetch, self.port))[0], 200)

    async def test_huge_headers_are_refused(self) -> None:
        running = await self.start()
        headers = b"".join(b"X-Padding-%d: %s\r\n" % (n, b"y" * 200) for n in range(2000))

        def attack() -> bytes:
            return raw_request(self.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")

        answer, rtts = await under_attack(running, attack)
        self.assertTrue(answer.startswith(b"HTTP/1.1 400"), answer[:100])
        self.assertLess(max(rtts), MAX_RTT * 4, rtts)

    async def test_idle_connections_are_closed(self) -> None:
        await self.start(idle_timeout=1)

        def idle() -> tuple[bytes, float]:
            started = time.monotonic()
            return raw_request(self.port, b"GET /metr", timeout=20), time.monotonic() - started

        answer, elapsed = await deferToThread(idle)
        self.assertLess(elapsed, 15, "an idle, half-sent request was kept open")

    async def test_a_flood_of_scrapes_renders_rarely(self) -> None:
        running = await self.start()
        renders = []
        from xmppcluster.ops import status_page

        real = status_page.render
        self.patch(status_page, "render", lambda metrics: renders.append(1) or real(metrics))

        def flood() -> tuple[int, float]:
            started = time.monotonic()
            ok = sum(fetch(self.port, "/status")[0] == 200 for _ in range(100))
            return ok, time.monotonic() - started

        (ok, elapsed), rtts = await under_attack(running, flood)
        self.assertEqual(ok, 100)
        self.assertLessEqual(len(renders), elapsed / monitor.MIN_RENDER_INTERVAL + 2)
        self.assertLess(max(rtts), MAX_RTT * 4, rtts)


class ClusterStatusTests(TestCase):
    """Two real ``twistd`` nodes: /status of each shows both; routed stanzas are counted on both sides."""

    timeout = 120

    async def test_two_nodes(self) -> None:
        cluster = make_cluster(self, 2)
        await migrate(cluster)
        await cluster.add_users(f"alice@{DOMAIN}", f"bob@{DOMAIN}", password=PASSWORD)
        metrics_ports = {}
        for name, node in cluster.nodes.items():
            metrics_ports[name] = free_port()
            with open(node.config, "a") as out:
                out.write(f"\n--metrics-port={metrics_ports[name]}\n--metrics-sample-interval=1\n")
            cluster.start(name, wait=False)
        t1, t2 = sorted(cluster.nodes)

        def scenario() -> dict:
            for name in (t1, t2):
                node = cluster.nodes[name]
                from tests.support.process import wait_for_port

                wait_for_port(node.ports["c2s"], process=node.process)
                wait_for_port(metrics_ports[name], process=node.process)
            wait_until(lambda: all(f"link to {o} up" in cluster.log(n) for n, o in ((t1, t2), (t2, t1))), 30)

            def client(name: str, user: str, resource: str) -> RawClient:
                c = RawClient(cluster.nodes[name].ports["c2s"], domain=DOMAIN, ca_file=cluster.ca_file)
                self.addCleanup(c.close)
                c.login(user, PASSWORD, resource)
                return c

            alice, bob = client(t1, "alice", "a"), client(t2, "bob", "b")
            cluster.wait_replicated(1, 1)
            before = {name: samples(fetch(metrics_ports[name])[2]) for name in (t1, t2)}
            for n in range(3):
                alice.send(f"<message to='bob@{DOMAIN}/b' type='chat' id='x{n}'><body>{n}</body></message>")
            for _ in range(3):
                bob.until("{jabber:client}message")
            # /status renders the membership rows sampled every second: wait until t1's shows t2's session.
            row = re.compile(f"<tr><td>{re.escape(t2)}</td><td class='text up'>link up</td><td>[^<]*</td><td>1</td>")
            page = wait_until(lambda: (p := fetch(metrics_ports[t1], "/status")[2]) and row.search(p) and p, 20)
            # A node renders /metrics at most twice a second: wait for a rendering after the traffic.
            wait_until(lambda: value(samples(fetch(metrics_ports[t2])[2]), "xmpp_stanzas_sent_total", kind="message")
                       > value(before[t2], "xmpp_stanzas_sent_total", kind="message"), 10)
            wait_until(lambda: value(samples(fetch(metrics_ports[t1])[2]), "xmpp_stanzas_received_total",
                                     kind="message")
                       > value(before[t1], "xmpp_stanzas_received_total", kind="message"), 10)
            after = {name: samples(fetch(metrics_ports[name])[2]) for name in (t1, t2)}
            return {"page": page, "before": before, "after": after, "page2": fetch(metrics_ports[t2], "/status")[2]}

        result = await deferToThread(scenario)
        page, before, after = result["page"], result["before"], result["after"]
        with open("status-t1.html", "w", encoding="utf-8") as out:  # kept in the trial temp directory
            out.write(page)
        self.assertIn(f"<tr><td>{t2}</td><td class='text up'>up</td>", page)  # t1's link to t2
        self.assertIn(f"<tr><td>{t1}</td><td class='text up'>this node</td>", page)
        self.assertIn(f"<tr><td>{t2}</td><td class='text up'>link up</td>", page)
        self.assertIn(f"<tr><td>{t1}</td><td class='text up'>link up</td>", result["page2"])
        self.assertEqual(value(after[t1], "xmpp_cluster_routed_sent_total")
                         - value(before[t1], "xmpp_cluster_routed_sent_total"), 3)
        self.assertEqual(value(after[t2], "xmpp_cluster_routed_received_total")
                         - value(before[t2], "xmpp_cluster_routed_received_total"), 3)
        self.assertEqual(exposed_names := {base(name) for name, _ in after[t1]}, exposed_names & documented())
        self.assertIn("xmpp_cluster_ack_lag_frames", exposed_names)
        self.assertEqual(value(after[t1], "xmpp_cluster_link_up", peer=t2), 1)
        self.assertEqual(value(after[t1], "xmpp_cluster_sessions", node=t2), 1)
        self.assertEqual(value(after[t2], "xmpp_stanzas_sent_total", kind="message")
                         - value(before[t2], "xmpp_stanzas_sent_total", kind="message"), 3)


class DatabaseObserveTests(TestCase):
    """Query timing (``Database.observe``) may be switched off while a query waits: that query still ends
    normally and is reported to the observer it started with."""

    async def test_observer_removed_during_queries(self) -> None:
        from tests.support.databases import make_storage

        storage = await make_storage(self, "sqlite")
        db = storage.db
        seen: list[str] = []
        db.observe = lambda kind, seconds: seen.append(kind)
        write = ensureDeferred(db.interaction(lambda cursor: cursor.execute("SELECT 1")))
        read = ensureDeferred(db.query("SELECT 1"))
        db.observe = None  # the metrics stop (node shutdown) before either answered
        await write
        await read
        self.assertEqual(sorted(seen), ["read", "write"])
