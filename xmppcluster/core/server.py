"""The running server's shared state: config, storage, certificates, sessions, router, hooks, modules.

Built by ``service.py`` (the only place that wires objects together) and handed to streams and modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from xmppcluster.auth.throttle import AuthThrottle
from xmppcluster.core.events import Events
from xmppcluster.core.router import Router
from xmppcluster.core.sessions import SessionRegistry
from xmppcluster.core.traffic import Traffic

if TYPE_CHECKING:
    from xmppcluster.config import Config
    from xmppcluster.core.tls import CertificateStore
    from xmppcluster.modules.base import Module
    from xmppcluster.storage import Storage
    from xmppcluster.streams.bosh import BoshSessions
    from xmppcluster.streams.core import ClientStream

log = Logger()


class XMPPServer:
    """Everything a stream or a module needs to reach, on this node."""

    def __init__(self, config: Config, storage: Storage, certs: CertificateStore | None,
                 clock: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.config = config
        self.storage = storage
        self.certs = certs
        self.clock = clock
        self.limits = config.limits
        self.domains = frozenset(d.lower() for d in config.virt_hosts)
        self.node_name = config.node_name
        self.sessions = SessionRegistry()
        #: Stanzas in and out of this node's client sessions, per kind (read by ops/metrics.py).
        self.traffic = Traffic()
        #: The server's events (xmppcluster/core/events.py): modules and the cluster add handlers here.
        self.hooks = Events()
        self.router = Router(self)
        self.streams: set[ClientStream] = set()
        #: The BOSH sessions of every BOSH port (streams.bosh.bosh_sessions makes them on first use).
        self.bosh: BoshSessions | None = None
        self.throttle = AuthThrottle(
            base_delay=config.auth.failure_delay,
            max_delay=config.auth.failure_max_delay,
            clock=clock,
        )
        self.modules: dict[str, Module] = {}
        #: Keys the fake salts of unknown accounts: one value cluster-wide (from the shared database).
        self.sasl_secret: bytes | None = None
        #: The node's cluster membership (xmppcluster.cluster.node.Cluster) in cluster mode, else None.
        self.cluster: Any = None
        #: Federation (xmppcluster.s2s.federation.Federation): outgoing links and incoming server streams.
        self.federation: Any = None

    # -- domains ---------------------------------------------------------------------------------

    def is_local_domain(self, domain: str) -> bool:
        return domain in self.domains

    # -- modules ---------------------------------------------------------------------------------

    def add_module(self, module: Module) -> None:
        """Wire one module's IQ handlers and hooks (``modules.load_modules`` instantiates them)."""
        self.modules[module.name] = module
        for kind, spec, fn in module.handlers():
            if kind == "iq":
                iq_type, namespace, targets = spec
                for target in targets:
                    self.router.iq_handlers[(iq_type, namespace, target)] = fn
            else:
                event, priority = spec
                self.hooks.on(event, fn, priority)

    def features(self) -> list[str]:
        """Disco features of the server, from the enabled modules."""
        found: list[str] = []
        for module in self.modules.values():
            found.extend(f for f in module.features if f not in found)
        return found

    def account_features(self) -> list[str]:
        found: list[str] = []
        for module in self.modules.values():
            found.extend(f for f in module.account_features if f not in found)
        return found

    def stream_features(self, stream: ClientStream, stage: str) -> list:
        elements = []
        for module in self.modules.values():
            elements.extend(module.stream_features(stream, stage))
        return elements

    def start(self) -> None:
        for module in self.modules.values():
            module.start()

    async def stop(self) -> None:
        """Stop every module, waiting for those that return a Deferred (e.g. pending offline stores)."""
        for module in self.modules.values():
            result = module.stop()
            if result is not None:
                await result
