"""makeService(config): the service tree. The only place that wires objects together."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.logger import Logger

from xmppcluster.config import Config, Listener
from xmppcluster.core.tls import CertificateStore

log = Logger()

#: Seconds closing client connections get at shutdown to flush their last bytes before they are dropped.
SHUTDOWN_FLUSH = 1.0


class ServerService(service.MultiService):
    """Opens storage, builds the server, then starts the listeners; stops them in reverse."""

    def __init__(self, config: Config, certs: CertificateStore, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.certs = certs
        self.reactor = reactor
        self.server = None
        self.ports: list = []
        self.ready: defer.Deferred = defer.Deferred()
        self.sighup: Any = None
        self.s2s_reporter: Any = None
        self.metrics: Any = None  # ops.metrics.NodeMetrics with --metrics-port

    def startService(self) -> None:
        super().startService()
        for warning in self.config.notices():  # once, at start (check-config prints the same lines)
            # Not a "warning" field: trial and twisted.logger treat that name as a Python warning.
            log.warn("configuration: {problem}", problem=warning)
        from xmppcluster.ops.reload import SighupReloader

        self.sighup = SighupReloader(self.certs, self.reactor)  # SIGHUP re-reads certs/*.pem
        self.sighup.install()
        defer.ensureDeferred(self._start()).addCallbacks(self.ready.callback, self._start_failed)

    async def _start(self) -> Any:
        from xmppcluster.core.server import XMPPServer
        from xmppcluster.modules import load_modules
        from xmppcluster.storage import open_storage
        from xmppcluster.storage.secrets import shared_secret

        storage = await open_storage(self.config.user_db_uri,
                                     scram_iterations=self.config.auth.scram_iterations)
        self.server = XMPPServer(self.config, storage, self.certs, clock=self.reactor)
        self.server.sasl_secret = await shared_secret(storage.db, "sasl-fake-salt")
        load_modules(self.server)
        self.server.start()
        from xmppcluster.s2s.federation import Federation

        self.server.federation = Federation(self.server, await shared_secret(storage.db, "s2s-dialback"),
                                            self.reactor)
        self.server.federation.start()
        from xmppcluster.s2s.component import Components

        self.server.components = Components(self.server, self.reactor)  # XEP-0114 (docs/components.rst)
        self.server.components.start()
        from xmppcluster.ops.s2s_status import S2SReporter

        self.s2s_reporter = S2SReporter(self.server, self.reactor)
        self.s2s_reporter.start()
        if self.config.cluster_mode:
            from xmppcluster.cluster.node import Cluster

            self.server.cluster = Cluster(self.server, reactor=self.reactor)
            await self.server.cluster.start()
            from xmppcluster.cluster.bosh_forward import wire_bosh

            wire_bosh(self.server.cluster)
        for listener in self.config.all_listeners():
            factory = self._factory(listener)
            if factory is None or listener.type != "accept":
                continue
            for interface in listener.ifc:
                port = await self._endpoint(listener, interface).listen(factory)
                self.ports.append(port)
                log.info("listening: {component} {port} {socket} on {ifc}", component=listener.component,
                         port=listener.port, socket=listener.socket, ifc=interface)
        from xmppcluster.ops.monitor import start_monitor

        self.metrics, ports = await start_monitor(self.server, self.reactor)
        self.ports += ports
        log.info("xmppcluster node {node} serving {domains}", node=self.config.node_name,
                 domains=", ".join(self.config.virt_hosts))
        return self.server

    def _factory(self, listener: Listener) -> Any:
        if listener.component == "c2s":
            from xmppcluster.streams.tcp import ClientFactory

            return ClientFactory(self.server, listener)
        if listener.component == "cl-comp":
            return self.server.cluster.factory() if self.server.cluster is not None else None
        if listener.component == "s2s":
            from xmppcluster.s2s.federation import IncomingFactory

            return IncomingFactory(self.server.federation, listener)
        if listener.component == "ext":
            return self.server.components.factory()
        if listener.component in ("bosh", "ws2s"):
            from xmppcluster.ops.http import build_site

            return build_site(self.server, listener)
        return None

    def _endpoint(self, listener: Listener, interface: str) -> Any:
        host = "" if interface == "*" else interface
        if listener.tls and listener.component == "s2s":  # asks for the peer's certificate (XEP-0178)
            return SSL4ServerEndpoint(self.reactor, listener.port, self.server.federation.tls.server_creator(None),
                                      interface=host)
        if listener.tls or listener.component == "cl-comp":  # cluster links are always TLS
            return SSL4ServerEndpoint(self.reactor, listener.port, self.certs.server_creator(), interface=host)
        if ":" in host:
            return TCP6ServerEndpoint(self.reactor, listener.port, interface=host)
        return TCP4ServerEndpoint(self.reactor, listener.port, interface=host)

    def _start_failed(self, failure: Any) -> None:
        log.failure("xmppcluster failed to start", failure)
        self.ready.errback(failure)
        if self.reactor.running:
            self.reactor.stop()

    async def _stop(self) -> None:
        for port in self.ports:
            await port.stopListening()
        self.ports.clear()
        server = self.server
        if server is None:
            return
        if self.metrics is not None:
            self.metrics.stop()
        if server.cluster is not None:
            await self._drain(server)
        from xmppcluster.streams.bosh import bosh_sessions

        bosh_sessions(server).shutdown()
        for stream in list(server.streams):
            stream.fail("system-shutdown")
        if getattr(server, "components", None) is not None:
            server.components.stop()
        if server.federation is not None:  # after the clients: their unavailable presences go out first
            await server.federation.stop()
            await self.s2s_reporter.stop()
        await self._close_connections(server)
        if server.cluster is not None:
            await server.cluster.stop()
        await server.stop()
        await server.storage.close()

    async def _close_connections(self, server: Any) -> None:
        """Give closing connections a moment to flush their stream error, then drop those that remain (a
        client that never answers our close does not hold the shutdown)."""
        from xmppcluster.streams.tcp import abort_closing, closing_count

        deadline = self.reactor.seconds() + SHUTDOWN_FLUSH
        while closing_count(server) and self.reactor.seconds() < deadline:
            await task.deferLater(self.reactor, 0.02, lambda: None)
        abort_closing(server)

    async def _drain(self, server: Any) -> None:
        """Send every client to a live node (see-other-host / see-other-uri), then wait for them to go."""
        peer = server.cluster.live_peer()
        if peer is None or not server.streams:
            return
        log.info("draining {n} client streams to {peer}", n=len(server.streams), peer=peer)
        for stream in list(server.streams):
            stream.redirect(peer)
        deadline = self.reactor.seconds() + self.config.cluster.drain_timeout
        while server.streams and self.reactor.seconds() < deadline:
            await task.deferLater(self.reactor, 0.05, lambda: None)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self.sighup is not None:
            self.sighup.uninstall()
        return defer.ensureDeferred(self._stop())


def makeService(config: Config, reactor: Any = None) -> ServerService:
    """The whole server for ``config``. Certificate problems are raised here, before anything listens."""
    names = sorted(set(config.virt_hosts) | {config.node_name})
    certs = CertificateStore(config.ssl_certs_location, config.ssl_def_cert_domain, generate_names=names)
    return ServerService(config, certs, reactor)
