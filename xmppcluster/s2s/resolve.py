"""Where an outgoing s2s connection goes: a static map entry, else DNS SRV (RFC 6120 §3.2, XEP-0368).

:func:`targets` turns a remote domain into the ordered list of :class:`Target` (host name or address,
port, direct TLS or STARTTLS) to try; :mod:`xmppcluster.s2s.connect` tries them. DNS goes through
``twisted.names`` and never blocks the reactor.

Outcomes, and the stanza error a caller bounces with (RFC 6120 §8.3.3):

* a non-empty list: try the targets in that order;
* :class:`NotFound` (``remote-server-not-found``): the domain decidedly has no s2s service (an SRV
  record whose target is ``.``, RFC 2782), a static entry with no address, or a name DNS cannot carry;
* :class:`ResolveError` (``remote-server-timeout``): DNS did not say (timeout, SERVFAIL, REFUSED, a
  network or format error); trying again later may work.

Decisions where the RFCs leave room: the ``.`` record speaks only for its own service (``_xmpps-server``
with ``.`` and no ``_xmpp-server`` record still falls back to the domain on 5269); when one of the two
lookups fails and the other returns records, those records are used; when one fails and the other has
none, the answer is :class:`ResolveError` (a record may exist that we could not see).
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from encodings import idna as idna2003

import idna
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver, IHostResolution, IResolutionReceiver
from twisted.logger import Logger
from twisted.names import client, dns, error
from twisted.names.common import ResolverBase
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT",
    "NamesHostnameResolver",
    "NotFound",
    "ResolveError",
    "Target",
    "Unreachable",
    "ascii_domain",
    "order_srv",
    "resolver_for",
    "targets",
]

#: The port of the fallback (RFC 6120 §3.2.2, STARTTLS) when a domain publishes no SRV record.
DEFAULT_PORT = 5269
#: Seconds before each retransmission of a DNS query; the query fails when the last one expires.
DEFAULT_TIMEOUT: tuple[float, ...] = (1.0, 3.0, 5.0)

_log = Logger()

DIRECT_TLS_SERVICE = b"_xmpps-server._tcp."
STARTTLS_SERVICE = b"_xmpp-server._tcp."


@dataclass(frozen=True)
class Target:
    """One place to connect to: ``host`` is a DNS name in ASCII (A-label) form or an IP literal."""

    host: str
    port: int
    direct_tls: bool

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port} ({'direct TLS' if self.direct_tls else 'STARTTLS'})"


class Unreachable(Exception):
    """Base of the lookup failures; ``condition`` is the stanza error to bounce with."""

    condition = "remote-server-not-found"

    def __init__(self, domain: str, reason: str, detail: str = "") -> None:
        super().__init__(domain, reason, detail)
        self.domain = domain
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.domain}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


class NotFound(Unreachable):
    """The domain decidedly cannot be reached: bounce with ``remote-server-not-found``.

    ``reason``: ``"no-service"`` (SRV target ``.``, or an empty static entry) or ``"invalid-domain"``.
    """

    condition = "remote-server-not-found"


class ResolveError(Unreachable):
    """DNS gave no usable answer: bounce with ``remote-server-timeout`` (a later try may succeed).

    ``reason``: ``"timeout"`` (no reply before the last retransmission), ``"server-failure"`` (SERVFAIL),
    ``"refused"`` (REFUSED) or ``"error"`` (any other response code, a malformed reply, a network error).
    """

    condition = "remote-server-timeout"


def ascii_domain(domain: str) -> str:
    """``domain`` as DNS carries it: lower case A-labels, no final dot. Raises ``ValueError`` if impossible.

    IDNA 2008 (UTS 46 mapping) first, IDNA 2003 (what nameprep'd JIDs follow) if 2008 refuses the name.
    """
    name = domain.rstrip(".")
    if name.isascii():
        text = name.lower()
    else:
        try:
            text = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError:
            try:
                text = b".".join(idna2003.ToASCII(label) for label in name.split(".")).decode("ascii").lower()
            except UnicodeError as e:
                raise ValueError(f"not an IDNA domain: {domain!r}") from e
    labels = text.split(".")
    if not text or len(text) > 253 or any(not 0 < len(label) <= 63 for label in labels):
        raise ValueError(f"not a DNS name: {domain!r}")
    return text


def _ip_literal(domain: str) -> str | None:
    """The address if ``domain`` is an IP literal (``192.0.2.1`` or ``[2001:db8::1]``), else None."""
    text = domain[1:-1] if domain.startswith("[") and domain.endswith("]") else domain
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _static_entry(domain: str, static: Mapping[str, list[tuple[str, int, bool]]] | None):
    if not static:
        return None
    for key in (domain, domain.lower(), domain.rstrip(".").lower()):
        if key in static:
            return static[key]
    return None


async def targets(
    domain: str,
    resolver: client.Resolver | ResolverBase | None,
    static: Mapping[str, list[tuple[str, int, bool]]] | None = None,
    *,
    timeout: Sequence[float] | None = None,
    rng: random.Random | None = None,
) -> list[Target]:
    """Where to connect for ``domain``, best first; never an empty list.

    ``resolver`` is a ``twisted.names`` resolver (:func:`resolver_for`; None: the system's). ``static``
    maps a domain to ``(host, port, direct_tls)`` entries that replace DNS, tried in their order.
    ``timeout`` overrides the resolver's retransmission timeouts; ``rng`` draws the RFC 2782 weighted
    order (a seeded ``random.Random`` makes it reproducible).

    Raises :class:`NotFound` (bounce ``remote-server-not-found``) or :class:`ResolveError` (bounce
    ``remote-server-timeout``); see the module docstring.
    """
    entry = _static_entry(domain, static)
    if entry is not None:
        if not entry:
            raise NotFound(domain, "no-service", "static entry without address")
        return [Target(host, port, direct_tls) for host, port, direct_tls in entry]
    address = _ip_literal(domain)
    if address is not None:
        return [Target(address, DEFAULT_PORT, False)]
    try:
        name = ascii_domain(domain).encode("ascii")
    except ValueError as e:
        raise NotFound(domain, "invalid-domain", str(e)) from None
    if resolver is None:
        resolver = client.getResolver()
    lookups = [
        defer.ensureDeferred(_srv(resolver, domain, DIRECT_TLS_SERVICE + name, timeout)),
        defer.ensureDeferred(_srv(resolver, domain, STARTTLS_SERVICE + name, timeout)),
    ]
    # Both run at once; cancelling targets() cancels both (DeferredList.cancel).
    (tls_ok, tls), (plain_ok, plain) = await defer.DeferredList(lookups, consumeErrors=True)
    records = []
    for ok, outcome, direct_tls in ((tls_ok, tls, True), (plain_ok, plain, False)):
        if ok and outcome:
            records.extend((record, direct_tls) for record in outcome)
    if records:
        return order_srv(records, rng or random)
    for ok, outcome in ((tls_ok, tls), (plain_ok, plain)):
        if not ok:
            outcome.raiseException()
    if plain is None:  # no _xmpp-server record at all: the domain itself, RFC 6120 §3.2.2
        return [Target(name.decode("ascii"), DEFAULT_PORT, False)]
    raise NotFound(domain, "no-service", "SRV target '.'")


_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (defer.TimeoutError, "timeout"),  # dns.DNSQueryTimeoutError too
    (error.DNSServerError, "server-failure"),
    (error.DNSQueryRefusedError, "refused"),
)


async def _srv(resolver, domain: str, name: bytes, timeout: Sequence[float] | None) -> list[dns.Record_SRV] | None:
    """The usable SRV records at ``name``; ``[]`` when the only target is ``.``; None when there is none."""
    try:
        if timeout is None:
            answers, _authority, _additional = await resolver.lookupService(name)
        else:
            answers, _authority, _additional = await resolver.lookupService(name, tuple(timeout))
    except defer.CancelledError:
        raise
    except Exception as e:
        # NXDOMAIN, or a plain DomainError (a name no resolver of a chain knows): no record. Every other
        # failure, the DNS*Error response codes included (they subclass DomainError), means "DNS did not say".
        if isinstance(e, error.DNSNameError) or type(e) is error.DomainError:
            return None
        reason = next((reason for kind, reason in _REASONS if isinstance(e, kind)), "error")
        raise ResolveError(domain, reason, f"{name.decode('ascii')}: {type(e).__name__}") from None
    found = [rr.payload for rr in answers if rr.type == dns.SRV]
    if not found:
        return None  # NOERROR with no SRV answer: the same as NXDOMAIN for us
    usable = [record for record in found if record.target.name not in (b"", b".") and record.port]
    return [record for record in usable if record.target.name.isascii()]


def order_srv(records: Sequence[tuple[dns.Record_SRV, bool]], rng) -> list[Target]:
    """RFC 2782 order: lowest priority first, weighted random order within a priority.

    Zero-weight records come first in each draw as the RFC says, so they win only when the drawn number
    is 0 (drawn from ``0..total`` only when some record has weight 0; from ``1..total`` otherwise, which
    keeps the odds exactly proportional to the weights). Records are shuffled first so that all-zero
    weights give a uniform order.
    """
    result: list[Target] = []
    for priority in sorted({record.priority for record, _ in records}):
        group = [(record, tls) for record, tls in records if record.priority == priority]
        rng.shuffle(group)
        group.sort(key=lambda entry: entry[0].weight != 0)
        while group:
            record, tls = group.pop(_draw([record.weight for record, _ in group], rng))
            result.append(Target(record.target.name.decode("ascii").rstrip(".").lower(), record.port, tls))
    return result


def _draw(weights: list[int], rng) -> int:
    """The index of the first running sum of ``weights`` that reaches a random number (RFC 2782)."""
    total = sum(weights)
    drawn = rng.randint(0 if weights[0] == 0 else 1, total) if total else 0
    running = 0
    for index, weight in enumerate(weights):
        running += weight
        if running >= drawn:
            return index
    return len(weights) - 1


def resolver_for(
    servers: list[tuple[str, int]] | None, timeout: Sequence[float] = DEFAULT_TIMEOUT, reactor=None
) -> client.Resolver | ResolverBase:
    """A ``twisted.names`` resolver asking ``servers`` (``(address, port)``, in that order), else the system's.

    With servers: a plain ``client.Resolver`` (UDP, TCP when a reply is truncated; its TCP connection stays
    open once made). Without: ``client.getResolver()``, which reads ``/etc/resolv.conf`` and ``/etc/hosts``
    (``timeout`` then only applies through :func:`targets`' own ``timeout``).
    """
    if servers:
        return client.Resolver(servers=list(servers), timeout=tuple(timeout), reactor=reactor)
    return client.getResolver()


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@implementer(IHostnameResolver)
class NamesHostnameResolver:
    """Host names to addresses through a ``twisted.names`` resolver, for ``HostnameEndpoint``.

    A and AAAA are asked at once; the addresses come out interleaved, IPv6 first (RFC 8305 §4), and
    ``HostnameEndpoint`` then races them. A name that resolves to nothing ends with no address, which the
    endpoint reports as ``DNSLookupError``.
    """

    def __init__(self, resolver, timeout: Sequence[float] | None = None) -> None:
        self._resolver = resolver
        self._timeout = tuple(timeout) if timeout is not None else None

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes=None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        want4 = addressTypes is None or IPv4Address in addressTypes
        want6 = addressTypes is None or IPv6Address in addressTypes
        literal = _ip_literal(hostName)
        if literal is not None:
            v6 = ":" in literal
            if (want6 if v6 else want4) and transportSemantics == "TCP":
                resolutionReceiver.addressResolved((IPv6Address if v6 else IPv4Address)("TCP", literal, portNumber))
            resolutionReceiver.resolutionComplete()
            return resolution
        try:
            name = ascii_domain(hostName).encode("ascii")
        except ValueError:
            resolutionReceiver.resolutionComplete()
            return resolution
        extra = () if self._timeout is None else (self._timeout,)
        lookups = [
            self._resolver.lookupIPV6Address(name, *extra) if want6 else defer.succeed(([], [], [])),
            self._resolver.lookupAddress(name, *extra) if want4 else defer.succeed(([], [], [])),
        ]

        def deliver(results: list[tuple[bool, object]]) -> None:
            (ok6, found6), (ok4, found4) = results
            v6 = [socket.inet_ntop(socket.AF_INET6, rr.payload.address)
                  for rr in (found6[0] if ok6 else []) if rr.type == dns.AAAA]
            v4 = [rr.payload.dottedQuad() for rr in (found4[0] if ok4 else []) if rr.type == dns.A]
            if not resolution.cancelled and transportSemantics == "TCP":
                for index in range(max(len(v6), len(v4))):
                    if index < len(v6):
                        resolutionReceiver.addressResolved(IPv6Address("TCP", v6[index], portNumber))
                    if index < len(v4):
                        resolutionReceiver.addressResolved(IPv4Address("TCP", v4[index], portNumber))
            resolutionReceiver.resolutionComplete()

        defer.DeferredList(lookups, consumeErrors=True).addCallback(deliver).addErrback(_ignore)
        return resolution


def _ignore(failure: Failure) -> None:
    """A receiver that raised is logged here rather than left as an unhandled error in a Deferred."""
    _log.failure("address delivery to a resolution receiver failed", failure)
