"""TLS between servers: contexts that present our certificate and check the peer's (RFC 6120 §13.7.2, RFC 6125).

Both sides ask for the other's certificate but never fail the handshake on it: a peer without a valid
certificate may still authenticate with dialback where policy allows (``s2s/insecure-domains``). What
OpenSSL found wrong with the chain is recorded per connection; :func:`peer_identity` then says whether the
certificate is valid for a given domain (chain to a trusted authority, DNS-ID match with service_identity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions
from zope.interface import implementer

from xmppcluster.core.tls import CIPHERS_TLS12, MINIMUM_TLS_VERSION, CertificateStore, normalize_name, select_alpn

ALPN = b"xmpp-server"
#: The X509_V_ERR_* codes a peer's chain most often fails with.
_VERIFY_ERRORS = {9: "not yet valid", 10: "expired", 18: "self-signed", 19: "self-signed issuer in the chain",
                  20: "issuer unknown", 21: "issuer unknown", 62: "host name mismatch"}


@dataclass(frozen=True)
class PeerIdentity:
    """What the peer's certificate proves: ``valid`` for the domain asked, else ``reason`` says why not."""

    valid: bool
    reason: str


def _record_verification(connection: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
    """OpenSSL's verify callback: note what is wrong with the chain, never abort the handshake."""
    if not ok:
        holder = connection.get_app_data()
        errors = getattr(holder, "peer_verify_errors", None)
        if errors is None:
            errors = []
            try:
                holder.peer_verify_errors = errors
            except AttributeError:
                return True
        errors.append((depth, errno, cert.get_subject().commonName))
    return True


class PeerContexts:
    """Server and client contexts for federation, one per certificate of the store, built on first use."""

    def __init__(self, certs: CertificateStore, ca_file: str | None) -> None:
        self.certs = certs
        self.ca_file = ca_file
        #: (certificate path, id of the certificate object, side) -> (certificate, context)
        self._contexts: dict[tuple[str, int, str], tuple[Any, SSL.Context]] = {}

    def context(self, name: str | None, side: str) -> SSL.Context:
        """The context presenting the certificate for ``name``; ``side`` is ``"server"`` or ``"client"``."""
        key, cert, chain, path = self.certs.identity_for(name)
        cache_key = (path, id(cert), side)
        cached = self._contexts.get(cache_key)
        if cached is not None and cached[0] is cert:
            return cached[1]
        options = CertificateOptions(
            privateKey=key, certificate=cert, extraCertChain=list(chain),
            acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(CIPHERS_TLS12),
            raiseMinimumTo=MINIMUM_TLS_VERSION,
            contextForServerName=self._for_server_name if side == "server" else None)
        context = options.getContext()
        context.set_options(SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION)
        context.set_verify(SSL.VERIFY_PEER, _record_verification)
        if self.ca_file:
            context.load_verify_locations(self.ca_file)
        else:
            context.set_default_verify_paths()
        if side == "server":
            context.set_alpn_select_callback(select_alpn)
        self._contexts[cache_key] = (cert, context)
        return context

    def _for_server_name(self, server_name: bytes | None) -> SSL.Context | None:
        name = normalize_name(server_name)
        if name is None or not self.certs.specific_name(name):
            return None
        return self.context(name, "server")

    def server_creator(self, name: str | None) -> IOpenSSLServerConnectionCreator:
        """For an incoming stream (STARTTLS once the stream ``to`` is known, or direct TLS with SNI)."""
        return _ServerCreator(self, name)

    def client_creator(self, local: str, remote: str, *, alpn: bool) -> IOpenSSLClientConnectionCreator:
        """For an outgoing stream from ``local`` to ``remote``: SNI ``remote``, our certificate for ``local``."""
        return _ClientCreator(self.context(local, "client"), remote, alpn)


@implementer(IOpenSSLServerConnectionCreator)
class _ServerCreator:
    def __init__(self, contexts: PeerContexts, name: str | None) -> None:
        self.contexts = contexts
        self.name = name

    def serverConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:  # noqa: N802 (Twisted interface)
        return SSL.Connection(self.contexts.context(self.name, "server"), None)


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    def __init__(self, context: SSL.Context, remote: str, alpn: bool) -> None:
        self.context = context
        self.remote = remote
        self.alpn = alpn

    def clientConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:  # noqa: N802 (Twisted interface)
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tls_protocol)
        connection.set_tlsext_host_name(self.remote.encode("idna"))
        if self.alpn:
            connection.set_alpn_protos([ALPN])
        return connection


def _connection(transport: Any) -> SSL.Connection | None:
    try:
        handle = transport.getHandle()
    except Exception:
        return None
    return handle if isinstance(handle, SSL.Connection) else None


def tls_version(transport: Any) -> str | None:
    """``TLSv1.3``... for a TLS transport, else None."""
    connection = _connection(transport)
    return connection.get_protocol_version_name() if connection is not None else None


def peer_identity(transport: Any, domain: str) -> PeerIdentity:
    """Whether the peer on ``transport`` presented a certificate valid for ``domain`` (after the handshake)."""
    connection = _connection(transport)
    if connection is None:
        return PeerIdentity(False, "no TLS")
    cert = connection.get_peer_certificate(as_cryptography=True)
    if cert is None:
        return PeerIdentity(False, "no certificate presented")
    holder = connection.get_app_data()
    errors = getattr(holder, "peer_verify_errors", None)
    if errors:
        depth, errno, subject = errors[0]
        why = _VERIFY_ERRORS.get(errno, f"X509 error {errno}")
        return PeerIdentity(False, f"certificate chain not trusted ({why} at depth {depth}, {subject})")
    try:
        verify_certificate_hostname(cert, domain)
    except VerificationError:
        return PeerIdentity(False, f"certificate not valid for {domain}")
    except Exception as e:  # a malformed certificate: never trusted
        return PeerIdentity(False, f"unusable certificate ({e.__class__.__name__})")
    return PeerIdentity(True, "certificate valid")
