"""Who the client is: its address behind trusted reverse proxies, and whether its hop counts as encrypted.

A BOSH or WebSocket request that comes from a proxy the operator trusts (``--trusted-proxies``, loopback by
default) carries the client's address in ``X-Forwarded-For`` (or RFC 7239 ``Forwarded`` with
``--trusted-proxy-header=forwarded``) and the scheme the client used in ``X-Forwarded-Proto`` (or the
``proto`` of ``Forwarded``). From any other peer those headers are ignored: anybody can send them.

A hop counts as encrypted ("secure": PLAIN is offered and a vhost's ``tls-required`` is met) when it is TLS
here; when the listener's component is declared secure (``bosh/consider-secure``, ``ws2s/consider-secure``,
like Prosody's ``consider_bosh_secure``); when a trusted proxy says the client used ``https``/``wss``; or,
with ``--secure-loopback`` (on by default), when the client's address is a loopback address and no trusted
proxy said otherwise.
"""

from __future__ import annotations

import ipaddress
import re
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xmppcluster.config import Config

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Forwarded header (RFC 7239): one ``name=value`` pair, the value a token or a quoted string.
_PAIR = re.compile(r'\s*([A-Za-z0-9!#$%&\'*+.^_`|~-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,"\s]*)\s*')
_SECURE_SCHEMES = frozenset(("https", "wss"))


def parse_address(text: str) -> Address | None:
    """An IP address as it appears in a header or a socket: bare, ``[v6]``, ``v4:port``, ``[v6]:port``, or a
    v4-mapped v6 address (returned as v4); None when it is none of these (``unknown``, ``_hidden``...)."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDR networks (``10.0.0.0/8``, ``::1``); raises ValueError naming a bad one."""
    networks = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or network: {item!r}") from None
    return tuple(networks)


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and their v4-mapped forms."""
    parsed = parse_address(address)
    return parsed is not None and parsed.is_loopback


def forwarded_elements(value: str) -> list[dict[str, str]]:
    """The elements of an RFC 7239 ``Forwarded`` header, leftmost first, each ``{name: value}`` (lower-case
    names, quotes removed). A malformed element ends the list (what follows it cannot be told apart)."""
    elements: list[dict[str, str]] = []
    position, size = 0, len(value)
    current: dict[str, str] = {}
    while position < size:
        match = _PAIR.match(value, position)
        if match is None:
            break
        name, raw = match.group(1).lower(), match.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        current.setdefault(name, raw)
        position = match.end()
        if position < size and value[position] == ";":
            position += 1
        elif position < size and value[position] == ",":
            elements.append(current)
            current = {}
            position += 1
        elif position < size:
            break
    if current:
        elements.append(current)
    return elements


@dataclass(frozen=True)
class ClientOrigin:
    """Where a request really comes from."""

    address: str  # the client's IP address (from a trusted proxy's header, else the TCP peer)
    secure: bool  # the hop from the client counts as encrypted
    proxied: bool  # the TCP peer is a trusted proxy


class ClientPolicy:
    """The operator's trust settings: trusted proxies, their header, loopback and per-component opt-ins."""

    def __init__(self, trusted_proxies: Iterable[str] = ("127.0.0.1", "::1"), *, header: str = "x-forwarded",
                 secure_loopback: bool = True, secure_components: Iterable[str] = ()) -> None:
        self.trusted = parse_networks(trusted_proxies)
        self.header = header
        self.secure_loopback = secure_loopback
        self.secure_components = frozenset(secure_components)

    @classmethod
    def from_config(cls, config: Config) -> ClientPolicy:
        peers = config.peers
        return cls(peers.trusted_proxies, header=peers.trusted_proxy_header, secure_loopback=peers.secure_loopback,
                   secure_components=peers.secure_components)

    def is_trusted_proxy(self, address: str) -> bool:
        parsed = parse_address(address)
        return parsed is not None and any(parsed in network for network in self.trusted)

    def stream_secure(self, peer: str, tls: bool) -> bool:
        """A TCP stream (no HTTP headers): TLS, or a loopback client with ``--secure-loopback``."""
        return tls or (self.secure_loopback and is_loopback(peer))

    def origin(self, peer: str, tls: bool, component: str, header: Callable[[str], str | None]) -> ClientOrigin:
        """The client behind an HTTP request from ``peer``; ``header(name)`` gives a request header (all its
        lines joined with commas) or None."""
        proxied = self.is_trusted_proxy(peer)
        address, proto = peer, None
        if proxied:
            if self.header == "forwarded":
                address, proto = self._from_forwarded(peer, header("forwarded"))
            else:
                address = self._from_x_forwarded_for(peer, header("x-forwarded-for"))
                scheme = header("x-forwarded-proto")
                if scheme:
                    proto = scheme.rsplit(",", 1)[-1].strip()
        if tls or component in self.secure_components:
            secure = True
        elif proto:
            secure = proto.lower() in _SECURE_SCHEMES
        else:
            secure = self.secure_loopback and is_loopback(address)
        return ClientOrigin(address, secure, proxied)

    def _client(self, peer: str, hops: list[str]) -> tuple[str, int]:
        """The rightmost address of ``hops`` (leftmost = the client as the first proxy saw it) that is not a
        trusted proxy, and its index; an unreadable entry stops the walk at the proxy that passed it on."""
        address, index = peer, len(hops)
        for index in range(len(hops) - 1, -1, -1):
            parsed = parse_address(hops[index])
            if parsed is None:
                return address, index + 1
            address = str(parsed)
            if not self.is_trusted_proxy(address):
                return address, index
        return address, index

    def _from_x_forwarded_for(self, peer: str, value: str | None) -> str:
        if not value:
            return peer
        return self._client(peer, value.split(","))[0]

    def _from_forwarded(self, peer: str, value: str | None) -> tuple[str, str | None]:
        if not value:
            return peer, None
        elements = forwarded_elements(value)
        address, index = self._client(peer, [element.get("for", "") for element in elements])
        if index >= len(elements):
            return address, None
        return address, elements[index].get("proto")


_policies: weakref.WeakKeyDictionary[Any, ClientPolicy] = weakref.WeakKeyDictionary()


def client_policy(server: Any) -> ClientPolicy:
    """The policy of ``server`` (built from its configuration on first use)."""
    policy = _policies.get(server)
    if policy is None:
        policy = _policies[server] = ClientPolicy.from_config(server.config)
    return policy
