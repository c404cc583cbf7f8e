"""SASL mechanism plumbing shared by all mechanisms, plus PLAIN (RFC 4616) and ANONYMOUS (RFC 4505).

A mechanism is a small state machine: :meth:`Mechanism.step` takes the decoded client data (``None`` when the
client sent no initial response) and returns a :class:`Challenge` or a :class:`Success`, or raises
:class:`SASLFailure` carrying an RFC 6120 §6.5 condition name. The XML framing lives in :mod:`.sasl`.
"""

from __future__ import annotations

import functools
import hmac
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.words.protocols.jabber import jid
from twisted.words.protocols.jabber.xmpp_stringprep import nodeprep

from xmppcluster.auth.credentials import SCRAM_HASHES, ScramCredentials, saslprep, verify_password

_log = Logger(namespace="xmppcluster.auth")

#: Longest localpart accepted (RFC 7622 §3.3.1: 1023 octets after preparation).
MAX_LOCALPART = 1023


@dataclass
class ChannelInfo:
    """What the transport knows about this hop."""

    secure: bool  # this hop is TLS-encrypted
    bindings: dict[str, bytes] = field(default_factory=dict)  # channel-binding type -> data; only available ones


class CredentialLookup(Protocol):
    """Where SCRAM credentials come from (storage). ``None`` means no such account.

    May raise :class:`AuthPolicyError` subclasses; any other exception becomes ``temporary-auth-failure``.
    """

    async def get_credentials(self, user: str, domain: str, mechanism: str) -> ScramCredentials | None: ...


class SASLFailure(Exception):
    """Negotiation failed with an RFC 6120 §6.5 ``condition``; ``user`` is the prepared localpart if known."""

    def __init__(self, condition: str, user: str | None = None) -> None:
        super().__init__(condition)
        self.condition = condition
        self.user = user


class AuthPolicyError(Exception):
    """Raised by a :class:`CredentialLookup` to refuse an existing account.

    With ``credentials`` the condition is reported only after the client has proven the password (a wrong
    password still gets ``not-authorized``), so the condition does not reveal that the account exists.
    """

    condition: ClassVar[str] = "not-authorized"

    def __init__(self, credentials: ScramCredentials | None = None) -> None:
        super().__init__(self.condition)
        self.credentials = credentials


class AccountDisabled(AuthPolicyError):
    condition = "account-disabled"


class CredentialsExpired(AuthPolicyError):
    condition = "credentials-expired"


class MechanismTooWeak(AuthPolicyError):
    """Server policy needs a stronger mechanism for this account (e.g. channel binding)."""

    condition = "mechanism-too-weak"


@dataclass
class Challenge:
    data: bytes


@dataclass
class Success:
    user: str
    data: bytes = b""
    anonymous: bool = False


@dataclass
class AuthContext:
    """Everything a mechanism needs from the server side of one negotiation."""

    domain: str
    credentials: CredentialLookup
    channel: ChannelInfo
    secret: bytes  # server secret for the fake salts of unknown accounts
    iterations: int  # iteration count shown for unknown accounts
    #: Runs a CPU-heavy function (PBKDF2) off the reactor thread: ``await run_blocking(fn, *args)``.
    run_blocking: Callable[..., Awaitable[Any]] = deferToThread


class Mechanism:
    """Base class: one instance per exchange."""

    name: ClassVar[str] = ""

    async def step(self, data: bytes | None) -> Challenge | Success:  # pragma: no cover - interface
        raise NotImplementedError


def prep_username(name: str) -> str:
    """SASLprep then nodeprep ``name``; a name that fails either is ``not-authorized`` (no account can match)."""
    try:
        prepared = _prepared(name)
    except (UnicodeError, ValueError):
        raise SASLFailure("not-authorized") from None
    if not prepared or len(prepared.encode("utf-8")) > MAX_LOCALPART:
        raise SASLFailure("not-authorized")
    return prepared


@functools.lru_cache(maxsize=4096)
def _prepared(name: str) -> str:
    return nodeprep.prepare(saslprep(name))  # stringprep in Python: ~50 us a name, once per name


def check_authzid(authzid: str, user: str, domain: str) -> None:
    """An authzid must be absent/empty or the authenticated account's own bare JID."""
    if not authzid:
        return
    try:
        requested = jid.JID(authzid)
    except (jid.InvalidFormat, UnicodeError, ValueError):
        raise SASLFailure("invalid-authzid", user) from None
    if requested.resource is not None or requested.userhost() != f"{user}@{domain}":
        raise SASLFailure("invalid-authzid", user)


def fake_credentials(mechanism: str, user: str, ctx: AuthContext) -> ScramCredentials:
    """Deterministic stand-in for an unknown account: same salt for the same name, never matches a proof."""
    key = f"{mechanism}\0{user}@{ctx.domain}".encode()
    salt = hmac.digest(ctx.secret, b"salt\0" + key, "sha256")[:16]
    filler = hmac.digest(ctx.secret, b"key\0" + key, SCRAM_HASHES[mechanism])
    return ScramCredentials(mechanism, salt, ctx.iterations, filler, filler)


async def lookup(ctx: AuthContext, user: str, mechanism: str) -> tuple[ScramCredentials | None, AuthPolicyError | None]:
    """Ask storage for ``user``'s credentials; returns ``(credentials, policy refusal)``."""
    try:
        return await ctx.credentials.get_credentials(user, ctx.domain, mechanism), None
    except AuthPolicyError as refusal:
        return refusal.credentials, refusal
    except Exception:
        _log.failure("credential lookup failed for {user}@{domain}", user=user, domain=ctx.domain)
        raise SASLFailure("temporary-auth-failure", user) from None


def verdict(user: str, proven: bool, refusal: AuthPolicyError | None) -> None:
    """Raise the failure for this outcome, or return when ``user`` is authenticated."""
    if refusal is not None and (proven or refusal.credentials is None):
        raise SASLFailure(refusal.condition, user)
    if not proven:
        raise SASLFailure("not-authorized", user)


class Plain(Mechanism):
    """PLAIN: ``[authzid] NUL authcid NUL passwd``, checked against the stored SCRAM keys (one PBKDF2 run)."""

    name = "PLAIN"

    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx

    async def step(self, data: bytes | None) -> Challenge | Success:
        if data is None:
            return Challenge(b"")
        parts = data.split(b"\0")
        if len(parts) != 3:
            raise SASLFailure("malformed-request")
        try:
            authzid, authcid, password = (part.decode("utf-8") for part in parts)
        except UnicodeDecodeError:
            raise SASLFailure("malformed-request") from None
        user = prep_username(authcid)
        check_authzid(authzid, user, self.ctx.domain)
        credentials, refusal = await lookup(self.ctx, user, "SCRAM-SHA-256")
        if credentials is None and refusal is None:
            credentials, refusal = await lookup(self.ctx, user, "SCRAM-SHA-1")
        known = credentials is not None
        if credentials is None:  # spend the same PBKDF2 time as for a real account
            credentials = fake_credentials("SCRAM-SHA-256", user, self.ctx)
        try:
            # PBKDF2 (--scram-iterations rounds, or more) runs in a thread: never on the reactor.
            proven = bool(password) and await self.ctx.run_blocking(verify_password, credentials, password) and known
        except ValueError:  # password fails SASLprep
            proven = False
        verdict(user, proven, refusal)
        if credentials.mechanism != "SCRAM-SHA-256":
            await self._complete_credentials(user, password, credentials.iterations)
        return Success(user)

    async def _complete_credentials(self, user: str, password: str, iterations: int) -> None:
        """An account with SCRAM-SHA-1 keys only (e.g. imported from Prosody) gets new keys for both
        mechanisms now that the password is known: a fresh salt, and never fewer PBKDF2 iterations than
        it had (Prosody uses 10,000, like ``--scram-iterations`` by default). A failure here never fails
        the login."""
        store = getattr(self.ctx.credentials, "set_password", None)
        if store is None:
            return
        try:
            await store(user, self.ctx.domain, password, min_iterations=iterations)
        except Exception:
            _log.failure("could not add SCRAM-SHA-256 credentials for {user}@{domain}", user=user,
                         domain=self.ctx.domain)


class Anonymous(Mechanism):
    """ANONYMOUS: any (ignored, never logged) trace data; the session gets a random localpart."""

    name = "ANONYMOUS"

    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx

    async def step(self, data: bytes | None) -> Challenge | Success:
        return Success(uuid.uuid4().hex, anonymous=True)
