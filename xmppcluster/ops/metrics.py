"""What a node is doing, for Prometheus: one registry per server, read at scrape time.

Nothing here runs per stanza but one integer increment: the stanza counters live in ``server.traffic``
(core/traffic.py; this module's hook counts what clients send, the session counts what they receive).
Sessions, cluster links, BOSH sessions and the like are read from the server's own state when
``/metrics`` is scraped (:class:`NodeCollector`); a timer measures the reactor's lag and, every
``--metrics-sample-interval`` seconds, samples what the status page charts and the offline queues (one
query). docs/metrics.rst lists every metric.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from xmppcluster.core import events as ev

if TYPE_CHECKING:
    from xmppcluster.config import Config
    from xmppcluster.core.server import XMPPServer

log = Logger()

KINDS = ("message", "presence", "iq")
TRANSPORTS = ("tcp", "websocket", "bosh")
#: Reactor lag: how late a 1 s timer fires. Buckets from 1 ms to 10 s.
LAG_INTERVAL = 1.0
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Samples the status page keeps (its chart): 60 x ``--metrics-sample-interval``.
HISTORY = 60


@dataclass(frozen=True)
class MetricsSettings:
    """``--metrics-port`` (0 = off), ``--metrics-ifc``, ``--metrics-sample-interval``."""

    port: int = 0
    interfaces: tuple[str, ...] = ("127.0.0.1",)
    sample_interval: float = 10.0

    @classmethod
    def from_config(cls, config: Config) -> MetricsSettings:
        return cls(port=config.get("--", "metrics-port"),
                   interfaces=tuple(config.get("--", "metrics-ifc")) or ("127.0.0.1",),
                   sample_interval=float(config.get("--", "metrics-sample-interval")))


@dataclass(frozen=True)
class Sample:
    """One point of the status page's chart."""

    at: float  # wall-clock seconds
    sessions: dict[str, int]  # local sessions per transport
    received: int  # stanzas from clients so far
    sent: int  # stanzas to clients so far


def transport_of(session: Any, cache: dict[type, str] = {}) -> str:  # noqa: B006 (a per-process type cache)
    """``tcp``, ``websocket`` or ``bosh``: the kind of a local session's transport."""
    kind = type(session.stream.transport)
    name = cache.get(kind)
    if name is None:
        from xmppcluster.streams.bosh_session import BoshSession
        from xmppcluster.streams.tcp import ClientConnection
        from xmppcluster.streams.websocket import XMPPWebSocketProtocol

        name = ("tcp" if issubclass(kind, ClientConnection) else "websocket"
                if issubclass(kind, XMPPWebSocketProtocol) else "bosh" if issubclass(kind, BoshSession) else "other")
        cache[kind] = name
    return name


def local_sessions(server: XMPPServer) -> Counter[tuple[str, str]]:
    """This node's bound sessions per (transport, vhost)."""
    found: Counter[tuple[str, str]] = Counter()
    for session in server.sessions:
        if session.node is None:
            found[(transport_of(session), session.domain)] += 1
    return found


class NodeMetrics:
    """The metrics of one server: its registry, the hooks that count, the timers that sample."""

    def __init__(self, server: XMPPServer, settings: MetricsSettings | None = None) -> None:
        self.server = server
        self.settings = settings or MetricsSettings.from_config(server.config)
        self.clock = server.clock
        self.registry = CollectorRegistry()
        self.logins: Counter[str] = Counter()  # per vhost
        self.auth_failures: Counter[tuple[str, str]] = Counter()  # per (vhost, condition)
        self.reactor_lag = 0.0
        self.lag_measurements = 0
        self.lag_histogram = Histogram("xmpp_reactor_lag_seconds", "How late a 1 s timer of the reactor fired",
                                       buckets=LAG_BUCKETS, registry=self.registry)
        db = Histogram("xmpp_db_query_seconds", "Database queries and transactions, by kind (read, write)",
                       ["kind"], buckets=DB_BUCKETS, registry=self.registry)
        self._db_read, self._db_write = db.labels("read"), db.labels("write")
        self.offline: tuple[int, int, int] | None = None  # (messages, accounts, largest queue), sampled
        self.nodes: list[Any] = []  # the cluster_nodes rows, sampled (cluster mode)
        self.samples: deque[Sample] = deque(maxlen=HISTORY)
        self._lag_timer: Any = None
        self._sample_timer: Any = None
        self._sampling = False
        self.registry.register(NodeCollector(self))
        from prometheus_client import PlatformCollector, ProcessCollector

        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU, open files
        PlatformCollector(registry=self.registry)

    # -- wiring ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Count through the server's events and start the timers."""
        on = self.server.hooks.on
        received = self.server.traffic.received

        def count_received(stanza: Any, _session: Any) -> None:
            received[stanza.name] += 1  # the stream core lets only message, presence and iq through

        for event in ev.OUTGOING.values():  # before any other handler (one that takes the stanza stops the rest)
            on(event, count_received, 1_000_000)
        on(ev.STREAM_AUTHENTICATED, self._authenticated)
        db = getattr(self.server.storage, "db", None)
        if db is not None and hasattr(db, "observe"):
            db.observe = self._db_observe
        self._lag_expected = self.clock.seconds() + LAG_INTERVAL
        self._lag_timer = self.clock.callLater(LAG_INTERVAL, self._measure_lag)
        self._sample_timer = self.clock.callLater(0, self._sample)

    def stop(self) -> None:
        for timer in (self._lag_timer, self._sample_timer):
            if timer is not None and timer.active():
                timer.cancel()
        db = getattr(self.server.storage, "db", None)
        if db is not None and getattr(db, "observe", None) == self._db_observe:
            db.observe = None

    def _authenticated(self, stream: Any, user: str | None, condition: str | None) -> None:
        domain = stream.domain or "-"
        if user is not None:
            self.logins[domain] += 1
        else:
            self.auth_failures[(domain, condition or "other")] += 1

    def _db_observe(self, kind: str, seconds: float) -> None:
        (self._db_read if kind == "read" else self._db_write).observe(seconds)

    # -- timers ---------------------------------------------------------------------------------------

    def _measure_lag(self) -> None:
        now = self.clock.seconds()
        self.reactor_lag = max(0.0, now - self._lag_expected)
        self.lag_histogram.observe(self.reactor_lag)
        self.lag_measurements += 1
        self._lag_expected = now + LAG_INTERVAL
        self._lag_timer = self.clock.callLater(LAG_INTERVAL, self._measure_lag)

    def _sample(self) -> None:
        self._sample_timer = self.clock.callLater(self.settings.sample_interval, self._sample)
        traffic = self.server.traffic
        by_transport: Counter[str] = Counter()
        for (transport, _), count in local_sessions(self.server).items():
            by_transport[transport] += count
        self.samples.append(Sample(time.time(), dict(by_transport), sum(traffic.received.values()),
                                   sum(traffic.sent.values())))
        if not self._sampling:  # one query at a time, however slow the database
            self._sampling = True
            defer.ensureDeferred(self._query()).addBoth(self._queried)

    async def _query(self) -> None:
        from xmppcluster.storage.offline import OfflineStore

        db = self.server.storage.db
        self.offline = await OfflineStore(db).totals()
        if self.server.cluster is not None:
            from xmppcluster.cluster.membership import MembershipStore

            self.nodes = await MembershipStore(db).rows()

    def _queried(self, result: Any) -> None:
        self._sampling = False
        if isinstance(result, Failure):
            log.warn("metrics: sampling the database failed: {error}", error=result.getErrorMessage())


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class NodeCollector(Collector):
    """Everything read from the server's state at scrape time."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        server = metrics.server
        info = GaugeMetricFamily("xmpp_node_info", "This node (value 1)", labels=["node"])
        info.add_metric([server.node_name], 1)
        yield info
        yield from self._sessions(server)
        yield from self._auth(metrics)
        yield from self._stanzas(server)
        yield from self._bosh(server)
        if server.federation is not None:
            yield from self._federation(server.federation)
        yield from self._offline(metrics)
        yield _gauge("xmpp_reactor_last_lag_seconds", "How late the last 1 s timer of the reactor fired",
                     metrics.reactor_lag)
        if server.cluster is not None:
            yield from self._cluster(server.cluster)

    def _sessions(self, server: XMPPServer) -> Iterator[Metric]:
        counts = local_sessions(server)
        sessions = GaugeMetricFamily("xmpp_sessions", "Bound client sessions on this node, by transport and vhost",
                                     labels=["transport", "vhost"])
        for domain in sorted(server.domains):
            for transport in TRANSPORTS:
                sessions.add_metric([transport, domain], counts.pop((transport, domain), 0))
        for (transport, domain), count in sorted(counts.items()):  # "other" transports
            sessions.add_metric([transport, domain], count)
        yield sessions
        yield _gauge("xmpp_client_streams", "Open client streams on this node, authenticated or not",
                     len(server.streams))

    def _auth(self, metrics: NodeMetrics) -> Iterator[Metric]:
        logins = CounterMetricFamily("xmpp_logins", "Successful SASL authentications, by vhost", labels=["vhost"])
        for domain in sorted(set(metrics.server.domains) | set(metrics.logins)):
            logins.add_metric([domain], metrics.logins.get(domain, 0))
        yield logins
        failures = CounterMetricFamily("xmpp_auth_failures", "Failed SASL authentications, by vhost and condition",
                                       labels=["vhost", "condition"])
        for domain in sorted(metrics.server.domains):
            failures.add_metric([domain, "not-authorized"], metrics.auth_failures.get((domain, "not-authorized"), 0))
        for (domain, condition), count in sorted(metrics.auth_failures.items()):
            if condition != "not-authorized":
                failures.add_metric([domain, condition], count)
        yield failures

    def _stanzas(self, server: XMPPServer) -> Iterator[Metric]:
        traffic = server.traffic
        for name, table, doc in (("xmpp_stanzas_received", traffic.received, "Stanzas received from clients"),
                                 ("xmpp_stanzas_sent", traffic.sent, "Stanzas delivered to clients")):
            family = CounterMetricFamily(name, doc + ", by kind", labels=["kind"])
            for kind in KINDS:
                family.add_metric([kind], table.get(kind, 0))
            yield family

    def _bosh(self, server: XMPPServer) -> Iterator[Metric]:
        bosh = server.bosh
        sessions = list(bosh.sessions.values()) if bosh is not None else []
        yield _gauge("xmpp_bosh_sessions", "BOSH sessions owned by this node", len(sessions))
        yield _gauge("xmpp_bosh_held_requests", "HTTP requests BOSH sessions hold (long polls)",
                     sum(len(session.held) for session in sessions))

    def _federation(self, federation: Any) -> Iterator[Metric]:
        streams = GaugeMetricFamily("xmpp_s2s_streams", "Server-to-server streams of this node, by direction and state",
                                    labels=["direction", "state"])
        counts: dict[tuple[str, str], int] = {}
        for stream in federation.incoming:
            key = ("in", "established" if stream.pairs else "negotiating")
            counts[key] = counts.get(key, 0) + 1
        for link in federation.links.values():
            stream = link.stream or link.pending
            if stream is not None and stream.direction == "out" and stream.link is link:
                key = ("out", "established" if link.stream is stream else "negotiating")
                counts[key] = counts.get(key, 0) + 1
        for (direction, state), count in sorted(counts.items()):
            streams.add_metric([direction, state], count)
        yield streams
        yield _gauge("xmpp_s2s_queued", "Stanzas waiting for a remote domain (not yet written)",
                     sum(len(link.queue) for link in federation.links.values()))
        yield _gauge("xmpp_s2s_unconfirmed", "Stanzas written to remote servers and not yet confirmed by a ping",
                     sum(len(link.unconfirmed) for link in federation.links.values()))

    def _offline(self, metrics: NodeMetrics) -> Iterator[Metric]:
        if metrics.offline is None:
            return
        messages, accounts, largest = metrics.offline
        yield _gauge("xmpp_offline_messages", "Offline messages stored (whole database)", messages)
        yield _gauge("xmpp_offline_accounts", "Accounts with offline messages waiting (whole database)", accounts)
        yield _gauge("xmpp_offline_largest_queue", "Offline messages of the account with the most", largest)

    def _cluster(self, cluster: Any) -> Iterator[Metric]:
        delivery = cluster.delivery
        yield CounterMetricFamily("xmpp_cluster_routed_sent", "Stanzas routed to other nodes over cluster links",
                                  value=delivery.routed_out)
        yield CounterMetricFamily("xmpp_cluster_routed_received", "Routed stanzas received from other nodes",
                                  value=delivery.routed_in)
        now = cluster.clock.seconds()
        up = GaugeMetricFamily("xmpp_cluster_link_up", "1 when the link to the peer is up", labels=["peer"])
        suspect = GaugeMetricFamily("xmpp_cluster_peer_suspect",
                                    "1 while the peer is unreachable but not yet declared dead", labels=["peer"])
        silence = GaugeMetricFamily("xmpp_cluster_link_silence_seconds",
                                    "Seconds since anything was heard on the link", labels=["peer"])
        lag = GaugeMetricFamily("xmpp_cluster_ack_lag_frames",
                                "Routed stanzas sent on the link the peer has not acknowledged yet", labels=["peer"])
        unacked = GaugeMetricFamily("xmpp_cluster_unacked_messages",
                                    "Messages kept until the peer acknowledges them (the outbox)", labels=["peer"])
        remote = GaugeMetricFamily("xmpp_cluster_sessions", "Sessions in this node's directory, by node",
                                   labels=["node"])
        remote.add_metric([cluster.name], sum(1 for s in cluster.server.sessions if s.node is None))
        for peer in sorted(set(cluster.peers()) | set(cluster.links)):
            link = cluster.links.get(peer)
            linked = link is not None and link.up
            up.add_metric([peer], 1 if linked else 0)
            suspect.add_metric([peer], 1 if cluster.failure.is_suspect(peer) else 0)
            remote.add_metric([peer], cluster.directory.count(peer))
            if link is not None:
                silence.add_metric([peer], max(0.0, now - link.last_heard))
                lag.add_metric([peer], max(0, delivery.sent.get(peer, 0) - delivery.acked.get(peer, 0)))
                unacked.add_metric([peer], len(delivery.outbox.get(peer, ())))
        yield from (up, suspect, silence, lag, unacked, remote)
        yield _gauge("xmpp_cluster_members", "Nodes this node knows as members, itself included",
                     len(set(cluster.peers()) | {cluster.name}))
