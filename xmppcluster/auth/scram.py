"""Server side of SCRAM (RFC 5802, RFC 7677) with channel binding (RFC 5929, RFC 9266), stdlib only.

Handles SCRAM-SHA-1, SCRAM-SHA-256 and their -PLUS variants. Error mapping to RFC 6120 conditions:
syntax errors -> ``malformed-request``; wrong proof, wrong nonce, wrong or unavailable channel binding,
``y`` flag while we offer -PLUS (downgrade) -> ``not-authorized``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

from xmppcluster.auth.credentials import SCRAM_HASHES, ScramCredentials
from xmppcluster.auth.mechanisms import (
    AuthContext,
    Challenge,
    Mechanism,
    SASLFailure,
    Success,
    check_authzid,
    fake_credentials,
    lookup,
    prep_username,
    verdict,
)

#: Longest client nonce we accept (characters).
MAX_NONCE = 512
_CB_NAME = re.compile(r"[A-Za-z0-9.-]+")
_NONCE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")  # printable ASCII except ','


def _malformed() -> SASLFailure:
    return SASLFailure("malformed-request")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes | None:
    """Strict base64 (RFC 4648 alphabet and padding, no whitespace); ``None`` when invalid."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None


def decode_saslname(value: str) -> str:
    """``=2C`` -> ``,`` and ``=3D`` -> ``=``; any other ``=`` is malformed (RFC 5802 §5.1)."""
    if "=" in value.replace("=2C", "").replace("=3D", ""):
        raise _malformed()
    return value.replace("=2C", ",").replace("=3D", "=")


def encode_saslname(value: str) -> str:
    return value.replace("=", "=3D").replace(",", "=2C")


def client_signature(credentials: ScramCredentials, auth_message: bytes) -> bytes:
    return hmac.digest(credentials.stored_key, auth_message, SCRAM_HASHES[credentials.mechanism])


def verify_client_proof(credentials: ScramCredentials, auth_message: bytes, proof: bytes) -> bool:
    """ClientKey = proof XOR ClientSignature; the proof is right when H(ClientKey) == StoredKey."""
    hash_name = SCRAM_HASHES[credentials.mechanism]
    signature = client_signature(credentials, auth_message)
    if len(proof) != len(signature):
        return False
    client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
    return hmac.compare_digest(hashlib.new(hash_name, client_key).digest(), credentials.stored_key)


def server_signature(credentials: ScramCredentials, auth_message: bytes) -> bytes:
    return hmac.digest(credentials.server_key, auth_message, SCRAM_HASHES[credentials.mechanism])


@dataclass(frozen=True)
class ClientFirst:
    """A parsed client-first-message."""

    gs2_header: str  # e.g. "p=tls-exporter,," (what c= must start with)
    cb_flag: str  # "n", "y" or "p"
    cb_name: str | None
    authzid: str
    username: str  # decoded saslname, not yet prepared
    nonce: str
    bare: str  # client-first-message-bare (part of AuthMessage)


def parse_client_first(text: str) -> ClientFirst:
    """Parse ``gs2-header client-first-message-bare``; raises ``malformed-request``."""
    fields = text.split(",", 2)
    if len(fields) != 3:
        raise _malformed()
    flag, authzid_field, bare = fields
    cb_name = None
    if flag.startswith("p="):
        cb_name = flag[2:]
        if not _CB_NAME.fullmatch(cb_name):
            raise _malformed()
        flag = "p"
    elif flag not in ("n", "y"):
        raise _malformed()
    if authzid_field and not authzid_field.startswith("a="):
        raise _malformed()
    authzid = decode_saslname(authzid_field[2:]) if authzid_field else ""
    attrs = bare.split(",")
    # A leading m= (reserved-mext) is a mandatory extension we do not know: fail (RFC 5802 §5.1).
    if len(attrs) < 2 or not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
        raise _malformed()
    nonce = attrs[1][2:]
    if len(nonce) > MAX_NONCE or not _NONCE.fullmatch(nonce):
        raise _malformed()
    return ClientFirst(
        gs2_header=f"{fields[0]},{authzid_field},",
        cb_flag=flag,
        cb_name=cb_name,
        authzid=authzid,
        username=decode_saslname(attrs[0][2:]),
        nonce=nonce,
        bare=bare,
    )


def new_server_nonce() -> str:
    return base64.b64encode(os.urandom(18)).decode("ascii")  # 24 characters, no padding, no ','


class ScramMechanism(Mechanism):
    """One SCRAM exchange: client-first -> server-first -> client-final -> server-final (``v=``)."""

    def __init__(self, ctx: AuthContext, name: str, server_nonce: str | None = None) -> None:
        self.name = name  # type: ignore[misc]  # per-instance: one class serves four mechanisms
        self.ctx = ctx
        self.plus = name.endswith("-PLUS")
        self.family = name.removesuffix("-PLUS")
        if self.family not in SCRAM_HASHES:
            raise ValueError(f"not a SCRAM mechanism: {name}")
        self._server_nonce = server_nonce or new_server_nonce()
        self._state = "start"

    @property
    def proving(self) -> str | None:
        """The account (prepared localpart) whose proof the next step checks, once the client-first is in."""
        return self._user if self._state == "final" else None

    async def step(self, data: bytes | None) -> Challenge | Success:
        if self._state == "start":
            if data is None:
                return Challenge(b"")  # ask for the initial response
            return await self._first(data)
        if self._state == "final" and data is not None:
            return self._final(data)
        raise _malformed()

    async def _first(self, data: bytes) -> Challenge:
        first = parse_client_first(_text(data))
        user = prep_username(first.username)
        if self.plus:
            if first.cb_flag != "p":
                raise SASLFailure("malformed-request", user)  # -PLUS requires p=
            if first.cb_name not in self.ctx.channel.bindings:
                raise SASLFailure("not-authorized", user)  # unsupported channel-binding type
        elif first.cb_flag == "p":
            raise SASLFailure("malformed-request", user)  # p= needs the -PLUS mechanism
        elif first.cb_flag == "y" and self.ctx.channel.bindings:
            raise SASLFailure("not-authorized", user)  # we offered -PLUS: someone stripped it
        check_authzid(first.authzid, user, self.ctx.domain)
        credentials, self._refusal = await lookup(self.ctx, user, self.family)
        self._known = credentials is not None and credentials.mechanism == self.family
        self._credentials = credentials if self._known else fake_credentials(self.family, user, self.ctx)
        self._user = user
        self._first_message = first
        self._nonce = first.nonce + self._server_nonce
        creds = self._credentials
        self._server_first = f"r={self._nonce},s={b64(creds.salt)},i={creds.iterations}"
        self._state = "final"
        return Challenge(self._server_first.encode("ascii"))

    def _final(self, data: bytes) -> Success:
        self._state = "done"
        user, first = self._user, self._first_message
        text = _text(data)
        attrs = text.split(",")
        if len(attrs) < 3 or not attrs[0].startswith("c=") or not attrs[1].startswith("r="):
            raise SASLFailure("malformed-request", user)
        if not attrs[-1].startswith("p="):
            raise SASLFailure("malformed-request", user)
        cbind_input, proof = unb64(attrs[0][2:]), unb64(attrs[-1][2:])
        if cbind_input is None or proof is None:
            raise SASLFailure("malformed-request", user)
        expected = first.gs2_header.encode("utf-8")
        if first.cb_name is not None:
            expected += self.ctx.channel.bindings[first.cb_name]
        if not hmac.compare_digest(cbind_input, expected) or attrs[1][2:] != self._nonce:
            raise SASLFailure("not-authorized", user)
        without_proof = text[: text.rindex(",p=")]
        auth_message = f"{first.bare},{self._server_first},{without_proof}".encode()
        proven = verify_client_proof(self._credentials, auth_message, proof) and self._known
        verdict(user, proven, self._refusal)
        signature = server_signature(self._credentials, auth_message)
        return Success(user, f"v={b64(signature)}".encode("ascii"))


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed() from None
