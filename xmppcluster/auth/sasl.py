"""The XML side of SASL (RFC 6120 §6): features, <auth>/<response>/<abort>, <challenge>/<success>/<failure>.

One :class:`SASLServer` per stream. The stream core calls :meth:`SASLServer.handle` for every element in
the SASL namespace, one at a time (await each result before passing the next element), and sends
``result.reply``. ``done`` is true after ``<success>`` and after every ``<failure>``; after a failure the
client may start again with a new ``<auth>`` (RFC 6120 §6.4.5), and :attr:`SASLServer.failures` lets
the core close the stream after too many tries. Once authenticated, any further element gets
``malformed-request`` (the core should have restarted the stream).
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.words.xish import domish

from xmppcluster.auth.credentials import DEFAULT_ITERATIONS
from xmppcluster.auth.mechanisms import (
    AccountDisabled,
    Anonymous,
    AuthContext,
    AuthPolicyError,
    Challenge,
    ChannelInfo,
    CredentialLookup,
    CredentialsExpired,
    Mechanism,
    MechanismTooWeak,
    Plain,
    SASLFailure,
    Success,
    prep_username,
)
from xmppcluster.auth.scram import ScramMechanism, unb64
from xmppcluster.auth.throttle import AuthThrottle

__all__ = [
    "NS_SASL",
    "NS_SASL_CB",
    "AccountDisabled",
    "AuthPolicyError",
    "AuthThrottle",
    "ChannelInfo",
    "CredentialLookup",
    "CredentialsExpired",
    "MechanismTooWeak",
    "SASLResult",
    "SASLServer",
]

NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_SASL_CB = "urn:xmpp:sasl-cb:0"

SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1")
#: Channel-binding types, strongest first (advertisement order).
BINDING_PREFERENCE = ("tls-exporter", "tls-unique", "tls-server-end-point")
#: Largest decoded SASL payload accepted; SCRAM and PLAIN messages are far smaller.
MAX_DATA = 8192
#: Failures that are neither counted nor delayed: the client gave up, our storage did, or no password was
#: looked at because the hop is not encrypted.
UNTHROTTLED = frozenset({"aborted", "temporary-auth-failure", "encryption-required"})
#: The text of ``<encryption-required/>`` when the domain requires an encrypted hop (``tls-required``).
TLS_REQUIRED_TEXT = ("this domain requires an encrypted connection before authentication: use STARTTLS, "
                     "direct TLS, https:// or wss://")
#: The text of ``<temporary-auth-failure/>`` when the throttle refuses a check (too many recent failures).
THROTTLED_TEXT = "too many failed attempts for this account or address: try again later"

XML_NS = "http://www.w3.org/XML/1998/namespace"
_MECHANISM_NAME = re.compile(r"[A-Z0-9_-]{1,20}")
#: Fake-salt secret for unknown accounts when none is configured (one per process; pass a cluster-wide one).
_PROCESS_SECRET = os.urandom(32)
_log = Logger(namespace="xmppcluster.auth")


@dataclass
class SASLResult:
    reply: domish.Element  # <challenge/>, <success/> or <failure/> in NS_SASL, ready to send
    done: bool  # negotiation finished (success or failure)
    user: str | None = None  # authenticated localpart on success (nodeprep'd), else None
    anonymous: bool = False


class SASLServer:
    """Server side of one SASL negotiation on one stream."""

    def __init__(
        self,
        *,
        domain: str,
        credentials: CredentialLookup,
        channel: ChannelInfo,
        peer: str,
        throttle: AuthThrottle,
        require_encryption: bool = False,
        log_allowed: Callable[[str], bool] | None = None,
        allow_anonymous: bool = False,
        allow_plain: bool = True,
        clock: IReactorTime | None = None,
        log: Logger | None = None,
        secret: bytes | None = None,
        iterations: int = DEFAULT_ITERATIONS,
        run_blocking: Callable[..., Awaitable[Any]] | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self._ctx = AuthContext(domain, credentials, channel, secret or _PROCESS_SECRET, iterations)
        if run_blocking is not None:  # PLAIN's PBKDF2 runs in a thread (deferToThread) unless told otherwise
            self._ctx.run_blocking = run_blocking
        self.domain = domain
        self.channel = channel
        self.peer = peer
        self.throttle = throttle
        self.allow_anonymous = allow_anonymous
        self.allow_plain = allow_plain
        #: The domain requires an encrypted hop (``tls-required``): on any other, every mechanism fails.
        self.require_encryption = require_encryption
        #: Whether a failure line about this peer may be written at info (else debug): a per-address budget.
        self.log_allowed = log_allowed
        self.failures = 0
        self._clock = clock
        self._log = log or _log
        self._mechanism: Mechanism | None = None
        self._authenticated = False

    def bindings(self) -> list[str]:
        """Channel-binding types available on this hop, strongest first."""
        known = [name for name in BINDING_PREFERENCE if name in self.channel.bindings]
        return known + sorted(set(self.channel.bindings) - set(known))

    def mechanisms(self) -> list[str]:
        """Mechanisms offered now, strongest first."""
        offered = [f"{name}-PLUS" for name in SCRAM_MECHANISMS] if self.channel.bindings else []
        offered += SCRAM_MECHANISMS
        if self.allow_plain and self.channel.secure:
            offered.append("PLAIN")
        if self.allow_anonymous:
            offered.append("ANONYMOUS")
        return offered

    def features(self) -> list[domish.Element]:
        """``<mechanisms/>`` and, when a binding is available, XEP-0440 ``<sasl-channel-binding/>``."""
        mechanisms = domish.Element((NS_SASL, "mechanisms"))
        for name in self.mechanisms():
            mechanisms.addElement("mechanism", content=name)
        features = [mechanisms]
        if self.channel.bindings:
            advert = domish.Element((NS_SASL_CB, "sasl-channel-binding"))
            for name in self.bindings():
                advert.addElement("channel-binding")["type"] = name
            features.append(advert)
        return features

    async def handle(self, element: domish.Element) -> SASLResult:
        """Process one ``<auth>``, ``<response>`` or ``<abort>`` and return what to send back."""
        requested = element.getAttribute("mechanism") if element.name == "auth" else None
        label = requested if requested and _MECHANISM_NAME.fullmatch(requested) else "-"
        if self._mechanism is not None:
            label = self._mechanism.name
        try:
            if self._authenticated or element.uri != NS_SASL:
                raise SASLFailure("malformed-request")
            if element.name == "abort":
                raise SASLFailure("aborted")
            if element.name == "auth":
                if self._mechanism is not None:
                    raise SASLFailure("malformed-request")
                self._mechanism = self._start(requested)
                data = _decode(element)
            elif element.name == "response" and self._mechanism is not None:
                data = _decode(element) or b""
            else:
                raise SASLFailure("malformed-request")
            outcome = await self._step(data)
        except SASLFailure as failure:
            return await self._failed(label, failure)
        except Exception:
            self._log.failure("SASL {mechanism} crashed", mechanism=label)
            return await self._failed(label, SASLFailure("temporary-auth-failure"))
        if isinstance(outcome, Challenge):
            return SASLResult(_element("challenge", outcome.data), done=False)
        self._mechanism = None
        self._authenticated = True
        if not outcome.anonymous:
            self.throttle.succeeded(self.peer, f"{outcome.user}@{self.domain}")
        self._log.info(
            "SASL {mechanism} success for {user}@{domain} from {peer}",
            mechanism=label, user=outcome.user, domain=self.domain, peer=self.peer,
        )
        reply = _element("success", outcome.data)
        return SASLResult(reply, done=True, user=outcome.user, anonymous=outcome.anonymous)

    async def _step(self, data: bytes | None) -> Challenge | Success:
        """Run the mechanism's next step; one that checks a password first waits for the throttle's slot."""
        mechanism = self._mechanism
        assert mechanism is not None
        checks, user = _password_check(mechanism, data)
        if checks:
            wait = self.throttle.admit(self.peer, f"{user}@{self.domain}" if user else None)
            if wait is None:
                raise Throttled("temporary-auth-failure", user)
            if wait > 0:
                await task.deferLater(self._clock, wait, lambda: None)
        return await mechanism.step(data)

    def _start(self, name: str | None) -> Mechanism:
        if self.require_encryption and not self.channel.secure:
            raise SASLFailure("encryption-required")
        if name == "PLAIN" and self.allow_plain and not self.channel.secure:
            raise SASLFailure("encryption-required")
        if name is None or name not in self.mechanisms():
            raise SASLFailure("invalid-mechanism")
        if name == "PLAIN":
            return Plain(self._ctx)
        if name == "ANONYMOUS":
            return Anonymous(self._ctx)
        return ScramMechanism(self._ctx, name)

    async def _failed(self, label: str, failure: SASLFailure) -> SASLResult:
        self._mechanism = None
        self.failures += 1
        account = f"{failure.user}@{self.domain}" if failure.user else None
        emit = self._log.info if self.log_allowed is None or self.log_allowed(self.peer) else self._log.debug
        emit(
            "SASL {mechanism} failure ({condition}) for {account} from {peer}",
            mechanism=label, condition=failure.condition, account=account or "-", peer=self.peer,
        )
        if failure.condition not in UNTHROTTLED:
            delay = self.throttle.delay(self.peer, account)
            self.throttle.failed(self.peer, account)
            if delay > 0:
                await task.deferLater(self._clock, delay, lambda: None)
        reply = domish.Element((NS_SASL, "failure"))
        reply.addElement(failure.condition)
        if failure.condition == "encryption-required" and self.require_encryption and not self.channel.secure:
            reply.addElement("text", content=TLS_REQUIRED_TEXT)[(XML_NS, "lang")] = "en"
        elif isinstance(failure, Throttled):
            reply.addElement("text", content=THROTTLED_TEXT)[(XML_NS, "lang")] = "en"
        return SASLResult(reply, done=True)


class Throttled(SASLFailure):
    """The throttle refused to check this attempt (its slot was too far away): ``temporary-auth-failure``."""


def _password_check(mechanism: Mechanism, data: bytes | None) -> tuple[bool, str | None]:
    """Whether ``mechanism.step(data)`` checks a password or proof, and the prepared localpart if known."""
    if isinstance(mechanism, Plain):
        if data is None:
            return False, None
        parts = data.split(b"\0")
        if len(parts) != 3:
            return True, None
        try:
            return True, prep_username(parts[1].decode("utf-8"))
        except (UnicodeDecodeError, SASLFailure):
            return True, None
    user = getattr(mechanism, "proving", None)  # SCRAM, once its client-first message is in
    return user is not None, user


def _decode(element: domish.Element) -> bytes | None:
    """Element text as SASL data: no text -> ``None`` (no data), ``=`` -> ``b""``, else strict base64."""
    text = "".join(str(child) for child in element.children if isinstance(child, str)).strip()
    if not text:
        return None
    if text == "=":
        return b""
    if len(text) > MAX_DATA * 4 // 3 + 4:
        raise SASLFailure("malformed-request")
    data = unb64(text)
    if data is None:
        raise SASLFailure("incorrect-encoding")
    return data


def _element(name: str, data: bytes) -> domish.Element:
    """``<challenge/>`` or ``<success/>`` carrying ``data``; empty data -> no text (an empty challenge asks for
    the initial response; ``<success/>`` without additional data)."""
    element = domish.Element((NS_SASL, name))
    if data:
        element.addContent(base64.b64encode(data).decode("ascii"))
    return element
