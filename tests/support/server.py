"""A real server in the test process: real listeners on loopback, real TLS, real SQLite.

``await start_server(self)`` returns a :class:`RunningServer`; it is stopped in the test's cleanup.
"""

from __future__ import annotations

import os
import random
import socket
import tempfile
from dataclasses import dataclass, field
from typing import Any

from twisted.trial.unittest import TestCase

from tests.support.certs import TestCA, make_ca, make_cert
from xmppcluster.config import parse_text
from xmppcluster.ops.service import ServerService, makeService

_CA: TestCA | None = None


def test_ca() -> TestCA:
    """One test CA per process (key generation is not free)."""
    global _CA
    if _CA is None:
        _CA = make_ca()
    return _CA


#: Test listeners take ports below Linux's ephemeral range (32768-60999): a port the kernel might hand
#: to an outgoing client socket in the meantime would make the server's bind fail at random.  Each trial
#: worker (``-jN`` runs worker i in ``_trial_temp/i``) draws from its own slice, so two workers never hand
#: out the same port to servers that have not bound it yet.
_WORKER = os.path.basename(os.getcwd())
_SLICE = 1500
_PORTS = (range(20000 + int(_WORKER) * _SLICE, 20000 + (int(_WORKER) + 1) * _SLICE)
          if _WORKER.isdigit() and int(_WORKER) < 8 else range(20000, 32000))
_handed_out: set[int] = set()


def free_port(addresses: tuple[str, ...] = ("127.0.0.1", "127.0.0.2")) -> int:
    """A port free on every one of ``addresses``, outside the ephemeral range, not handed out before here."""
    for _ in range(1000):
        port = random.choice(_PORTS)
        if port in _handed_out:
            continue
        try:
            for host in addresses:
                with socket.socket() as probe:
                    probe.bind((host, port))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free test port below the ephemeral range")


@dataclass
class RunningServer:
    service: ServerService
    ca: TestCA
    directory: str
    domain: str
    #: component -> {"plain": port, "ssl": port}
    ports: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def server(self) -> Any:
        return self.service.server

    async def add_user(self, jid: str, password: str) -> None:
        user, _, domain = jid.partition("@")
        await self.server.storage.accounts.create(user, domain, password)

    async def stop(self) -> None:
        if self.service.running:
            await self.service.stopService()


async def start_server(test: TestCase, extra_config: str = "", *, components: tuple[str, ...] = ("c2s",),
                       domains: tuple[str, ...] = ("localhost",), db_uri: str | None = None,
                       cert_names: tuple[str, ...] | None = None) -> RunningServer:
    """Start a server with a plain and a TLS listener for each of ``components`` on free loopback ports."""
    directory = tempfile.mkdtemp(prefix="xmppcluster-test-", dir=os.getcwd())
    ca = test_ca()
    certs = os.path.join(directory, "certs")
    os.mkdir(certs)
    make_cert(ca, list(cert_names or domains), os.path.join(certs, "default.pem"))
    ports: dict[str, dict[str, int]] = {}
    lines = [
        f"--virt-hosts={','.join(domains)}",
        "--node-name=node1.test",
        f"--user-db-uri={db_uri or 'sqlite:///' + os.path.join(directory, 'db.sqlite')}",
        f"--ssl-certs-location={certs}",
        "--scram-iterations=4096",
        "--auth-failure-delay=0.05",
        "--auth-failure-max-delay=0.2",
    ]
    for component in ("c2s", "bosh", "ws2s"):
        if component not in components:
            lines.append(f"{component}/connections/ports[i]=")
            continue
        plain, ssl = free_port(), free_port()
        ports[component] = {"plain": plain, "ssl": ssl}
        lines += [
            f"{component}/connections/ports[i]={plain},{ssl}",
            f"{component}/connections/{ssl}/socket=ssl",
            f"{component}/connections/{plain}/ifc[s]=127.0.0.1",
            f"{component}/connections/{ssl}/ifc[s]=127.0.0.1",
        ]
    config = parse_text("\n".join(lines) + "\n" + extra_config, os.path.join(directory, "init.properties"))
    service = makeService(config)
    running = RunningServer(service, ca, directory, domains[0], ports)
    service.startService()
    test.addCleanup(running.stop)
    await service.ready
    return running
