"""Typed sections of the configuration: frozen values built once, taken by the code that needs them.

A consumer takes the section it needs (``server.config.limits``, ``config.bosh``...) instead of looking keys up
by name; a setting's name appears here and in the registry (:mod:`xmppcluster.config.schema`), nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AuthSettings", "BoshSettings", "ClusterSettings", "Limits", "PeerSettings", "Quotas",
           "S2SSettings", "VhostSettings", "WebChatSettings", "WebSocketSettings"]

#: ``get(component, key)``: the typed value of a registered setting (the default when unset).
Getter = Callable[[str, str], Any]


@dataclass(frozen=True)
class Limits:
    """Per-stream limits (``--max-stanza-size``, ``--idle-timeout``, ``--client-output-limit``...)."""

    max_stanza_bytes: int = 262144
    max_elements: int = 1000
    max_depth: int = 64
    unauthenticated_timeout: float = 60.0
    idle_timeout: float = 600.0
    whitespace_keepalive: float = 90.0
    client_rate: int = 262144
    client_burst: int = 1048576
    client_output_limit: int = 1048576

    @classmethod
    def from_values(cls, get: Getter) -> Limits:
        return cls(
            max_stanza_bytes=get("--", "max-stanza-size"),
            max_elements=get("--", "elements-number-limit"),
            max_depth=get("--", "max-xml-depth"),
            unauthenticated_timeout=float(get("--", "unauthenticated-timeout")),
            idle_timeout=float(get("--", "idle-timeout")),
            whitespace_keepalive=float(get("--", "whitespace-keepalive")),
            client_rate=get("--", "client-rate-limit"),
            client_burst=get("--", "client-rate-burst"),
            client_output_limit=get("--", "client-output-limit"),
        )


@dataclass(frozen=True)
class AuthSettings:
    """Authentication: SCRAM iterations for new credentials, the failed-authentication delay."""

    scram_iterations: int = 10000
    failure_delay: float = 1.0
    failure_max_delay: float = 30.0

    @classmethod
    def from_values(cls, get: Getter) -> AuthSettings:
        return cls(scram_iterations=get("--", "scram-iterations"),
                   failure_delay=float(get("--", "auth-failure-delay")),
                   failure_max_delay=float(get("--", "auth-failure-max-delay")))


@dataclass(frozen=True)
class Quotas:
    """Per-user bounds: roster, pending subscriptions, offline messages, vCard, directed presence."""

    roster_max_items: int = 1000
    roster_pending_max_bytes: int = 1048576
    offline_max_messages: int = 1000
    offline_max_bytes: int = 10485760
    vcard_max_bytes: int = 65536
    directed_presence_max: int = 1000
    csi_max_held: int = 256

    @classmethod
    def from_values(cls, get: Getter) -> Quotas:
        return cls(roster_max_items=get("--", "roster-max-size"),
                   roster_pending_max_bytes=get("--", "roster-pending-max-bytes"),
                   offline_max_messages=get("--", "offline-max-messages"),
                   offline_max_bytes=get("--", "offline-max-bytes"),
                   vcard_max_bytes=get("--", "vcard-max-size"),
                   directed_presence_max=get("--", "directed-presence-max"),
                   csi_max_held=get("--", "csi-max-held"))


@dataclass(frozen=True)
class PeerSettings:
    """Who the clients are: trusted proxies and their header, what counts as encrypted, per-address limit."""

    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    trusted_proxy_header: str = "x-forwarded"
    secure_loopback: bool = True
    secure_components: tuple[str, ...] = ()  # among "bosh", "ws2s" (``<component>/consider-secure``)
    max_connections_per_ip: int = 100

    @classmethod
    def from_values(cls, get: Getter) -> PeerSettings:
        return cls(trusted_proxies=tuple(get("--", "trusted-proxies")),
                   trusted_proxy_header=get("--", "trusted-proxy-header"),
                   secure_loopback=bool(get("--", "secure-loopback")),
                   secure_components=tuple(c for c in ("bosh", "ws2s") if get(c, "consider-secure")),
                   max_connections_per_ip=get("--", "max-connections-per-ip"))


@dataclass(frozen=True)
class BoshSettings:
    """The ``bosh/*`` settings."""

    send_host: bool = True
    max_wait: int = 30
    min_polling: int = 2
    max_inactivity: int = 60
    concurrent_requests: int = 2
    hold_requests: int = 1
    max_pause: int = 120
    max_waiting: int = 100
    max_body: int = 524288
    max_per_ip: int = 100
    cors_origins: tuple[str, ...] = ("*",)

    @classmethod
    def from_values(cls, get: Getter) -> BoshSettings:
        return cls(
            send_host=bool(get("bosh", "send-node-hostname")),
            max_wait=get("bosh", "max-wait"),
            min_polling=get("bosh", "min-polling"),
            max_inactivity=get("bosh", "max-inactivity"),
            concurrent_requests=get("bosh", "concurrent-requests"),
            hold_requests=get("bosh", "hold-requests"),
            max_pause=get("bosh", "max-pause"),
            max_waiting=get("bosh", "max-session-waiting-packets"),
            max_body=get("bosh", "max-body-size"),
            max_per_ip=get("bosh", "max-sessions-per-ip"),
            cors_origins=tuple(get("bosh", "cors-allow-origins")),
        )


@dataclass(frozen=True)
class WebSocketSettings:
    """The ``ws2s/*`` settings (origins as written; the WebSocket transport normalizes them)."""

    allowed_origins: tuple[str, ...] = ("*",)
    ping_interval: float = 30.0
    idle_timeout: float = 600.0

    @classmethod
    def from_values(cls, get: Getter) -> WebSocketSettings:
        return cls(allowed_origins=tuple(get("ws2s", "allowed-origins")),
                   ping_interval=float(get("ws2s", "ping-interval")),
                   idle_timeout=float(get("ws2s", "idle-timeout")))


@dataclass(frozen=True)
class ClusterSettings:
    """The ``cl-comp/*`` timings (membership, mode and node list stay on :class:`Config`)."""

    heartbeat_interval: float = 1.0
    failure_timeout: float = 6.0
    drain_timeout: float = 5.0
    handshake_timeout: float = 5.0

    @classmethod
    def from_values(cls, get: Getter) -> ClusterSettings:
        return cls(heartbeat_interval=float(get("cl-comp", "heartbeat-interval")),
                   failure_timeout=float(get("cl-comp", "failure-timeout")),
                   drain_timeout=float(get("cl-comp", "drain-timeout")),
                   handshake_timeout=float(get("cl-comp", "handshake-timeout")))


@dataclass(frozen=True)
class S2SSettings:
    """Federation (``s2s/*``): policy, static addresses and limits."""

    require_encryption: bool = True
    secure_auth: bool = True
    bidi: bool = True
    insecure_domains: frozenset[str] = frozenset()
    allowed_domains: frozenset[str] = frozenset()
    denied_domains: frozenset[str] = frozenset()
    #: remote domain -> [(host, port, direct TLS)]
    hosts: dict[str, list[tuple[str, int, bool]]] = field(default_factory=dict)
    dns_servers: tuple[tuple[str, int], ...] = ()
    ca_file: str | None = None
    connect_timeout: float = 15.0
    idle_timeout: float = 600.0
    ping_interval: float = 60.0
    queue_max_stanzas: int = 5000
    max_connections_per_domain: int = 8
    max_incoming_unauthenticated: int = 200
    rate_limit: int = 1048576

    @classmethod
    def from_values(cls, get: Getter) -> S2SSettings:
        hosts: dict[str, list[tuple[str, int, bool]]] = {}
        for entry in get("s2s", "hosts"):
            domain, _, address = entry.partition("=")
            hosts.setdefault(domain.strip().lower(), []).append(parse_host_port(address, 5269))
        return cls(require_encryption=get("s2s", "require-encryption"), secure_auth=get("s2s", "secure-auth"),
                   bidi=get("s2s", "bidi"),
                   insecure_domains=frozenset(d.lower() for d in get("s2s", "insecure-domains")),
                   allowed_domains=frozenset(d.lower() for d in get("s2s", "allowed-domains")),
                   denied_domains=frozenset(d.lower() for d in get("s2s", "denied-domains")),
                   hosts=hosts,
                   dns_servers=tuple(parse_host_port(s, 53)[:2] for s in get("s2s", "dns-servers")),
                   ca_file=get("s2s", "ca-file"), connect_timeout=float(get("s2s", "connect-timeout")),
                   idle_timeout=float(get("s2s", "idle-timeout")), ping_interval=float(get("s2s", "ping-interval")),
                   queue_max_stanzas=get("s2s", "queue-max-stanzas"),
                   max_connections_per_domain=get("s2s", "max-connections-per-domain"),
                   max_incoming_unauthenticated=get("s2s", "max-incoming-unauthenticated"),
                   rate_limit=get("s2s", "rate-limit"))

    def allows(self, domain: str) -> bool:
        """Whether we federate with ``domain`` at all (deny list, then the allow list when it is set)."""
        if domain in self.denied_domains:
            return False
        return not self.allowed_domains or domain in self.allowed_domains


def parse_host_port(text: str, default_port: int) -> tuple[str, int, bool]:
    """``host``, ``host:port``, ``[v6]:port``, with an optional ``:tls`` suffix -> (host, port, direct TLS).

    Raises ValueError with what is expected."""
    text = text.strip()
    tls = text.endswith(":tls")
    if tls:
        text = text[:-4]
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"host[:port][:tls] (bad element {text!r})")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ValueError(f"host[:port][:tls] with a numeric port (bad element {text!r})") from None
    if not 0 < port < 65536:
        raise ValueError(f"a port from 1 to 65535 (bad element {text!r})")
    return host, port, tls


@dataclass(frozen=True)
class VhostSettings:
    """One virtual host's options (``--virt-hosts=example.com:register:max-users=1000``), globals as defaults."""

    anonymous: bool = False
    register: bool = False
    max_users: int = 0  # 0 = unlimited
    tls_required: bool = True

    @classmethod
    def from_options(cls, option: Callable[[str], Any]) -> VhostSettings:
        """From ``option(name)``: the vhost's own value of ``anon``, ``register``... or its global default."""
        return cls(anonymous=bool(option("anon")), register=bool(option("register")),
                   max_users=int(option("max-users") or 0), tls_required=bool(option("tls-required")))


@dataclass(frozen=True)
class WebChatSettings:
    """The web chat at ``/chat``: on/off and title per domain, where its Converse.js files are, endpoints."""

    enabled: bool = True
    title: str = "Web chat"
    directory: str = "webchat"
    endpoints: tuple[str, ...] = ()  # URLs offered instead of the live nodes' own (a reverse proxy)
    per_domain: tuple[tuple[str, bool, str], ...] = ()  # (domain, enabled, title) of each hosted domain

    @classmethod
    def from_values(cls, get: Getter, domains: list[str]) -> WebChatSettings:
        enabled, title = bool(get("--", "webchat")), get("--", "webchat-title")
        own = []
        for domain in domains:
            on = get("vhost-man", f"{domain.lower()}/webchat")
            named = get("vhost-man", f"{domain.lower()}/webchat-title")
            own.append((domain.lower(), enabled if on is None else bool(on), title if named is None else named))
        return cls(enabled=enabled, title=title, directory=get("--", "webchat-dir"),
                   endpoints=tuple(get("--", "webchat-endpoints")), per_domain=tuple(own))

    def for_domain(self, domain: str) -> tuple[bool, str]:
        """(enabled, title) of ``domain``; the global values for a domain not hosted."""
        for name, enabled, title in self.per_domain:
            if name == domain.lower():
                return enabled, title
        return self.enabled, self.title
