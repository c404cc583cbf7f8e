"""Certificates and TLS: the certificate store (``certs/*.pem``), SNI selection, STARTTLS creators, channel binding.

Each ``<directory>/<name>.pem`` holds a private key, the certificate and its chain (Tigase's layout); ``<name>`` is
the file stem in lower case.  A store builds one ``SSL.Context`` per file, all with the same policy (TLS >= 1.2,
ECDHE + AEAD suites, no compression, no renegotiation, no session tickets), installs the SNI callback before any
connection uses a context, and swaps in a complete new set on :meth:`CertificateStore.reload` (pyOpenSSL forbids
changing a context once used, and live connections keep the one they started with).
"""

from __future__ import annotations

import datetime
import os
import re
import sys
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IProtocolNegotiationFactory
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.logger import Logger
from zope.interface import implementer

__all__ = [
    "CertificateError",
    "CertificateStore",
    "channel_binding",
    "channel_binding_types",
    "gencert_main",
    "generate_self_signed",
    "is_tls",
]

log = Logger()

#: TLS 1.2 suites we accept: forward secret (ECDHE) and AEAD only.  TLS 1.3 suites are all AEAD (OpenSSL defaults).
CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"
MINIMUM_TLS_VERSION = TLSVersion.TLSv1_2
EXPIRY_WARNING = datetime.timedelta(days=30)

_PRIVATE_KEY_RE = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", re.DOTALL)
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

# Contexts made by a store: a connection on one of them is the server side (used by channel binding).
_SERVER_CONTEXTS: weakref.WeakSet[SSL.Context] = weakref.WeakSet()
#: server context -> tls-server-end-point hash of its certificate (one certificate per context; computed once).
_END_POINT: weakref.WeakKeyDictionary[SSL.Context, bytes | None] = weakref.WeakKeyDictionary()


class CertificateError(Exception):
    """A certificate file is missing, unreadable, inconsistent or outside its validity period."""


# ---------------------------------------------------------------------------------------------------------------
# names


def normalize_name(name: str | bytes | None) -> str | None:
    """A DNS name as the store compares it: ASCII (IDNA A-labels), lower case, no trailing dot; None if unusable."""
    if name is None:
        return None
    try:
        if isinstance(name, bytes):
            name = name.decode("ascii")
        name = name.strip().rstrip(".")
        if not name.isascii():
            name = name.encode("idna").decode("ascii")
    except (UnicodeError, ValueError):
        return None
    return name.lower() or None


def _valid_dns_name(name: str) -> bool:
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
    return len(name) <= 253 and bool(labels) and all(_LABEL_RE.match(label) for label in labels)


def _parent(name: str) -> str:
    return name.partition(".")[2]


# ---------------------------------------------------------------------------------------------------------------
# loading


@dataclass
class _Entry:
    name: str
    path: str
    key: object
    cert: x509.Certificate
    chain: list[x509.Certificate]
    dns_names: list[str] = field(default_factory=list)
    context: SSL.Context | None = None


def _read_pem(path: str, now: datetime.datetime) -> tuple[object, x509.Certificate, list[x509.Certificate]]:
    """Parse key + certificate + chain from one PEM file; CertificateError (naming the file) on any problem."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CertificateError(f"{path}: cannot read: {e.strerror or e}") from None
    keys = [m.group(0) for m in _PRIVATE_KEY_RE.finditer(data)]
    if not keys:
        raise CertificateError(f"{path}: no private key (expected key + certificate + chain in one PEM file)")
    if len(keys) > 1:
        raise CertificateError(f"{path}: {len(keys)} private keys; expected exactly one")
    try:
        key = serialization.load_pem_private_key(keys[0], password=None)
    except TypeError:
        raise CertificateError(f"{path}: the private key is encrypted; store it unencrypted (mode 0600)") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CertificateError(f"{path}: cannot parse the private key: {e}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateError(f"{path}: no parsable certificate") from None
    spki = _spki(key.public_key())
    leaves = [c for c in certs if _spki(c.public_key()) == spki]
    if not leaves:
        raise CertificateError(f"{path}: the private key does not match any certificate in the file")
    leaf = leaves[0]
    chain = [c for c in certs if c is not leaf]
    if now < leaf.not_valid_before_utc:
        raise CertificateError(f"{path}: certificate not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if now > leaf.not_valid_after_utc:
        raise CertificateError(f"{path}: certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    return key, leaf, chain


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return [n for n in (normalize_name(str(n)) for n in names) if n]


class _Snapshot:
    """One immutable generation of certificates and their contexts; reload() replaces it whole."""

    def __init__(self, entries: dict[str, _Entry], default: _Entry) -> None:
        self.entries = entries
        self.default = default
        self.by_san: dict[str, _Entry] = {}
        self.by_wildcard_san: dict[str, _Entry] = {}
        # Non-default files first (sorted), so a vhost's own file wins over a default that also lists the name.
        for entry in sorted(entries.values(), key=lambda e: (e is default, e.name)):
            for dns in entry.dns_names:
                if dns.startswith("*."):
                    self.by_wildcard_san.setdefault(dns[2:], entry)
                else:
                    self.by_san.setdefault(dns, entry)
        for entry in entries.values():
            entry.context = _make_context(entry, self._context_for_sni)

    def specific(self, name: str | None) -> _Entry | None:
        """The entry for ``name``: exact file, then ``*.<parent>`` file, then a certificate whose SANs cover it."""
        if not name:
            return None
        parent = _parent(name)
        return (
            self.entries.get(name)
            or (self.entries.get("*." + parent) if parent else None)
            or self.by_san.get(name)
            or (self.by_wildcard_san.get(parent) if parent else None)
        )

    def resolve(self, name: str | None) -> _Entry:
        return self.specific(normalize_name(name)) or self.default

    def _context_for_sni(self, server_name: bytes | None) -> SSL.Context | None:
        # Called by Twisted's servername callback: switch only when SNI names something specific, so an unknown
        # SNI keeps the context the connection started with (default, or the stream `to` for creator_for()).
        entry = self.specific(normalize_name(server_name))
        return entry.context if entry is not None else None


def _make_context(entry: _Entry, context_for_sni) -> SSL.Context:
    try:
        options = CertificateOptions(
            # cryptography objects: pyOpenSSL 26 deprecates its own X509/PKey wrappers here.
            privateKey=entry.key,
            certificate=entry.cert,
            extraCertChain=list(entry.chain),
            acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(CIPHERS_TLS12),
            raiseMinimumTo=MINIMUM_TLS_VERSION,
            contextForServerName=context_for_sni,
        )
        context = options.getContext()
        # Must happen before the first Connection uses the context (pyOpenSSL >= 24 refuses afterwards).
        context.set_options(SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION)
        # Replaces Twisted's ALPN callback, which answers "no overlap" with an empty protocol name: OpenSSL
        # then aborts the handshake with internal_error for every client that offers ALPN (XEP-0368 clients).
        context.set_alpn_select_callback(select_alpn)
    except (SSL.Error, ValueError, TypeError) as e:
        raise CertificateError(f"{entry.path}: unusable for TLS: {e}") from None
    _SERVER_CONTEXTS.add(context)
    return context


# ---------------------------------------------------------------------------------------------------------------
# ALPN (RFC 7301)


def listener_protocols(tls_protocol: Any) -> tuple[bytes, ...]:
    """The ALPN ids the listener behind ``tls_protocol`` speaks, preferred first (none: no ALPN answer).

    A listener's factory declares them with ``IProtocolNegotiationFactory``; on direct TLS it is the factory
    TLS wraps, on STARTTLS the factory of the protocol that started TLS.
    """
    factory = getattr(tls_protocol.factory, "wrappedFactory", None)
    if factory is None:
        factory = getattr(tls_protocol.wrappedProtocol, "factory", None)
    negotiation = IProtocolNegotiationFactory(factory, None)
    return tuple(negotiation.acceptableProtocols()) if negotiation is not None else ()


def select_alpn(connection: SSL.Connection, offered: list[bytes]) -> bytes | object:
    """The ALPN select callback of every server context: the listener's first protocol the client offered.

    No overlap means no ALPN in the answer and the handshake goes on: a client offering only protocols we do
    not know still gets its stream, and the stream itself says what it is. Never raises (a raise is a fatal
    internal_error alert).
    """
    try:
        wanted = listener_protocols(connection.get_app_data())
    except Exception:  # a connection made outside TLSMemoryBIOProtocol: nothing to match against
        wanted = ()
    for protocol in wanted:
        if protocol in offered:
            return protocol
    return SSL.NO_OVERLAPPING_PROTOCOLS


# ---------------------------------------------------------------------------------------------------------------
# the store


@implementer(IOpenSSLServerConnectionCreator)
class _ServerCreator:
    """Builds server connections from the store's current generation, starting with the cert for ``name``."""

    def __init__(self, store: CertificateStore, name: str | None) -> None:
        self._store = store
        self._name = name

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:  # noqa: N802 (Twisted interface)
        return SSL.Connection(self._store._snapshot.resolve(self._name).context, None)


class CertificateStore:
    """The server's certificates: ``<directory>/*.pem``, chosen per connection by SNI (or stream ``to``).

    ``clock`` is anything with ``seconds()`` (the reactor, ``task.Clock``); it decides what "expired" means.
    """

    def __init__(
        self,
        directory: str,
        default_name: str = "default",
        *,
        generate_names: list[str] | None = None,
        clock=None,
    ) -> None:
        self.directory = directory
        self.default_name = default_name.lower()
        self._clock = clock
        default_path = os.path.join(directory, self.default_name + ".pem")
        if generate_names and not os.path.exists(default_path):
            try:
                generate_self_signed(generate_names, default_path)
            except (ValueError, OSError) as e:
                raise CertificateError(f"{default_path}: cannot generate a self-signed certificate: {e}") from None
            log.info(
                "No {path}: wrote a self-signed certificate for {names}",
                path=default_path,
                names=", ".join(generate_names),
            )
        self._snapshot = self._load()

    def _now(self) -> datetime.datetime:
        seconds = self._clock.seconds() if self._clock is not None else time.time()
        return datetime.datetime.fromtimestamp(seconds, datetime.UTC)

    def _load(self) -> _Snapshot:
        now = self._now()
        try:
            files = sorted(f for f in os.listdir(self.directory) if f.endswith(".pem") and not f.startswith("."))
        except OSError as e:
            raise CertificateError(f"{self.directory}: cannot list certificates: {e.strerror or e}") from None
        entries: dict[str, _Entry] = {}
        for filename in files:
            path = os.path.join(self.directory, filename)
            name = filename[: -len(".pem")].lower()
            if name in entries:
                raise CertificateError(f"{path}: same name as {entries[name].path} (names are case-insensitive)")
            key, cert, chain = _read_pem(path, now)
            entries[name] = _Entry(name, path, key, cert, chain, _dns_names(cert))
            if cert.not_valid_after_utc - now < EXPIRY_WARNING:
                log.warn("{path}: certificate expires on {when:%Y-%m-%d}", path=path, when=cert.not_valid_after_utc)
        default = entries.get(self.default_name)
        if default is None:
            path = os.path.join(self.directory, self.default_name + ".pem")
            raise CertificateError(f"{path}: missing (the default certificate is required)")
        return _Snapshot(entries, default)

    def reload(self) -> None:
        """Re-read the directory.  New connections get the new set; on error the old set stays and this raises."""
        snapshot = self._load()
        self._snapshot = snapshot
        log.info("Certificates reloaded from {dir}: {names}", dir=self.directory, names=", ".join(self.names()))

    def names(self) -> list[str]:
        return sorted(self._snapshot.entries)

    def server_creator(self) -> IOpenSSLServerConnectionCreator:
        """For direct TLS listeners and STARTTLS: SNI picks the certificate, else the default one."""
        return _ServerCreator(self, None)

    def creator_for(self, name: str | None) -> IOpenSSLServerConnectionCreator:
        """For STARTTLS once the stream ``to`` is known: SNI if the client sends a known one, else ``name``'s cert."""
        return _ServerCreator(self, name)

    def identity_for(self, name: str | None) -> tuple[Any, x509.Certificate, tuple[x509.Certificate, ...], str]:
        """(private key, certificate, chain, file name) presented for ``name`` (federation builds its own
        contexts from them: they verify the peer)."""
        entry = self._snapshot.resolve(name)
        return entry.key, entry.cert, tuple(entry.chain), entry.path

    def specific_name(self, name: str | None) -> bool:
        """Whether a certificate file or SAN covers ``name`` itself (not just the default certificate)."""
        return self._snapshot.specific(normalize_name(name)) is not None

    def certificate_for(self, name: str | None) -> x509.Certificate:
        """The certificate a client asking for ``name`` gets (the default one for None or an unknown name)."""
        return self._snapshot.resolve(name).cert


# ---------------------------------------------------------------------------------------------------------------
# generation


def generate_self_signed(names: list[str], path: str, *, days: int = 3650) -> None:
    """Write a self-signed EC P-256 key + certificate (SANs = ``names``, CN = first) to ``path``, mode 0600."""
    dns = [normalize_name(n) for n in names]
    bad = [n for n, d in zip(names, dns, strict=True) if d is None or not _valid_dns_name(d)]
    if not names or bad:
        raise ValueError(f"not DNS names: {', '.join(bad) or '(none given)'}")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])] if len(dns[0]) <= 64 else [])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=not subject)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pem += cert.public_bytes(serialization.Encoding.PEM)
    _write_private(path, pem)


def _write_private(path: str, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``; the file is created 0600 (it holds a private key)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def gencert_main(config_path: str, names: list[str], *, out: str | None = None, force: bool = False) -> int:
    """``xmppcluster gencert NAME...``: write ``<ssl-certs-location>/<NAME>.pem`` (or ``--out``); print its path."""
    if out is None:
        from xmppcluster.config import ConfigError, load

        try:
            config = load(config_path)
        except ConfigError as e:
            print(f"xmppcluster gencert: {e}", file=sys.stderr)
            return 1
        stem = normalize_name(names[0]) if names else None
        if not stem or not _valid_dns_name(stem):
            print(f"xmppcluster gencert: not a DNS name: {names[0] if names else '(none)'}", file=sys.stderr)
            return 1
        out = os.path.join(config.ssl_certs_location, stem + ".pem")
    if os.path.exists(out) and not force:
        print(f"xmppcluster gencert: {out} exists; use --force to overwrite", file=sys.stderr)
        return 1
    try:
        generate_self_signed(names, out)
    except (ValueError, OSError) as e:
        print(f"xmppcluster gencert: {out}: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# connections


def _tls_connection(transport) -> SSL.Connection | None:
    try:
        handle = transport.getHandle()
    except Exception:
        return None
    return handle if isinstance(handle, SSL.Connection) else None


def is_tls(transport) -> bool:
    """True once the transport has a TLS layer (direct TLS, or after ``startTLS``), even mid-handshake."""
    return _tls_connection(transport) is not None


def _handshake_done(conn: SSL.Connection) -> bool:
    return conn.get_peer_finished() is not None


def _server_certificate(conn: SSL.Connection) -> x509.Certificate | None:
    if conn.get_context() in _SERVER_CONTEXTS:  # we are the server: our own (SNI-selected) certificate
        return conn.get_certificate(as_cryptography=True)
    peer = conn.get_peer_certificate(as_cryptography=True)  # client side: the server's certificate
    return peer if peer is not None else conn.get_certificate(as_cryptography=True)


def _end_point_hash(cert: x509.Certificate) -> bytes | None:
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return None
    if algorithm is None:  # e.g. Ed25519: RFC 5929 leaves the binding undefined
        return None
    if isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert.public_bytes(serialization.Encoding.DER))
    return digest.finalize()


def channel_binding(transport, kind: str) -> bytes | None:
    """Channel-binding data of ``kind`` ('tls-exporter' or 'tls-server-end-point') for a completed TLS handshake.

    None when the transport is not TLS, the handshake has not finished, or ``kind`` does not apply here
    (tls-exporter needs TLS 1.3; tls-server-end-point needs a certificate signed with a single hash).
    """
    conn = _tls_connection(transport)
    if conn is None or not _handshake_done(conn):
        return None
    if kind == "tls-exporter":
        if conn.get_protocol_version_name() != "TLSv1.3":
            return None
        return conn.export_keying_material(b"EXPORTER-Channel-Binding", 32)
    if kind == "tls-server-end-point":
        context = conn.get_context()
        if context in _SERVER_CONTEXTS:  # our own certificate: hash it once per context
            if context not in _END_POINT:
                cert = conn.get_certificate(as_cryptography=True)
                _END_POINT[context] = _end_point_hash(cert) if cert is not None else None
            return _END_POINT[context]
        cert = _server_certificate(conn)
        return _end_point_hash(cert) if cert is not None else None
    return None


def channel_bindings(transport) -> dict[str, bytes]:
    """Every channel-binding type available on this connection with its data, preferred first."""
    found = {}
    for kind in ("tls-exporter", "tls-server-end-point"):
        data = channel_binding(transport, kind)
        if data is not None:
            found[kind] = data
    return found


def channel_binding_types(transport) -> list[str]:
    """The binding types :func:`channel_binding` can provide on this connection, preferred first."""
    return list(channel_bindings(transport))
