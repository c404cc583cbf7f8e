"""Two (or more) xmppcluster servers of different domains that federate on loopback.

Each server gets s2s listeners (STARTTLS and direct TLS) on ports chosen before any starts, so that every
server's static address map (``s2s/hosts``) can name the others; certificates come from the test CA, which
every server trusts for its peers (``s2s/ca-file``) unless told otherwise.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from twisted.trial.unittest import TestCase

from tests.support.server import RunningServer, free_port, start_server, test_ca

PASSWORD = "pencil"


@dataclass
class Domain:
    """One federating test server."""

    name: str
    s2s_port: int
    s2s_tls_port: int
    running: RunningServer | None = None

    @property
    def c2s_port(self) -> int:
        return self.running.ports["c2s"]["plain"]

    @property
    def federation(self):
        return self.running.server.federation


def ca_path(test: TestCase) -> str:
    """The test CA's root as a PEM file (what servers and clients trust)."""
    path = os.path.join(tempfile.mkdtemp(prefix="federation-", dir=os.getcwd()), "ca.pem")
    with open(path, "wb") as out:
        out.write(test_ca().root_pem())
    return path


def s2s_lines(domain: Domain, peers: dict[str, tuple[int, bool]], ca: str | None, extra: str = "") -> str:
    """The init.properties lines of ``domain``'s federation; ``peers``: domain -> (port, direct TLS)."""
    hosts = ",".join(f"{name}=127.0.0.1:{port}{':tls' if tls else ''}" for name, (port, tls) in peers.items())
    lines = [
        f"s2s/connections/ports[i]={domain.s2s_port},{domain.s2s_tls_port}",
        f"s2s/connections/{domain.s2s_port}/ifc[s]=127.0.0.1",
        f"s2s/connections/{domain.s2s_tls_port}/ifc[s]=127.0.0.1",
        f"s2s/connections/{domain.s2s_tls_port}/socket=ssl",
        f"s2s/hosts[s]={hosts}",
    ]
    if ca is not None:
        lines.append(f"s2s/ca-file={ca}")
    return "\n".join(lines) + "\n" + extra


async def start_domains(test: TestCase, names: tuple[str, ...] = ("a.test", "b.test"), *,
                        direct_tls: bool = False, trusted: bool = True, extra: dict[str, str] | None = None,
                        unmapped: tuple[tuple[str, str], ...] = (),
                        users: tuple[str, ...] = ("alice", "bob", "carol")) -> dict[str, Domain]:
    """Start one server per domain, each reaching the others (over direct TLS when ``direct_tls``) by its static
    map, except the (from, to) pairs of ``unmapped`` (DNS decides there)."""
    domains = {name: Domain(name, free_port(), free_port()) for name in names}
    ca = ca_path(test) if trusted else None
    for domain in domains.values():
        peers = {other.name: ((other.s2s_tls_port, True) if direct_tls else (other.s2s_port, False))
                 for other in domains.values() if other is not domain and (domain.name, other.name) not in unmapped}
        config = s2s_lines(domain, peers, ca, (extra or {}).get(domain.name, ""))
        domain.running = await start_server(test, config, domains=(domain.name,))
        for user in users:
            await domain.running.add_user(f"{user}@{domain.name}", PASSWORD)
    return domains


async def federated_pair(ours: dict, theirs: dict, timeout: float = 40) -> tuple[dict, dict]:
    """Run two slixmpp users on two servers at once (tests/clients/slix_federation.py): ``ours`` subscribes
    to ``theirs``; each spec names host, port, ca, jid, password. Their results."""
    import json
    import sys

    from twisted.internet.defer import gatherResults
    from twisted.internet.utils import getProcessOutputAndValue

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def run(spec: dict, contact: str, subscribe: bool, body: str):
        full = {**spec, "contact": contact, "subscribe": subscribe, "body": body, "timeout": timeout}
        return getProcessOutputAndValue(sys.executable, ["-m", "tests.clients.slix_federation", json.dumps(full)],
                                        env=dict(os.environ), path=root)

    results = await gatherResults([run(ours, theirs["jid"], True, "hello from ours"),
                                   run(theirs, ours["jid"], False, "hello from theirs")])
    parsed = []
    for out, err, code in results:
        if code != 0 or not out.strip():
            raise AssertionError(f"slixmpp federation client failed ({code}): {err.decode()[-2000:]}")
        parsed.append(json.loads(out.decode().strip().splitlines()[-1]))
    return parsed[0], parsed[1]
