"""Salted SCRAM credentials (RFC 5802 §3): what the server stores instead of a password."""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

#: SCRAM mechanism family name -> hashlib digest name.
SCRAM_HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}

#: PBKDF2 iterations of new credentials (``--scram-iterations``). RFC 5802 / RFC 7677 ask for at least 4096;
#: 10,000 is Prosody's count, so accounts imported from it and ours cannot be told apart by the count shown.
#: More costs the server on every PLAIN login (also for unknown accounts) and slow clients on every SCRAM one.
DEFAULT_ITERATIONS = 10_000


@dataclass(frozen=True)
class ScramCredentials:
    """StoredKey/ServerKey for one hash, with the salt and iteration count used."""

    mechanism: str  # "SCRAM-SHA-1" or "SCRAM-SHA-256" (without -PLUS)
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def salted_password(hash_name: str, password: str, salt: bytes, iterations: int) -> bytes:
    """Hi() of RFC 5802: PBKDF2 with HMAC over the SASLprep'd password."""
    return hashlib.pbkdf2_hmac(hash_name, saslprep(password).encode("utf-8"), salt, iterations)


def derive(
    mechanism: str, password: str, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> ScramCredentials:
    """Derive the credentials the server keeps for ``password``."""
    hash_name = SCRAM_HASHES[mechanism]
    salt = os.urandom(16) if salt is None else salt
    salted = salted_password(hash_name, password, salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", hash_name)
    return ScramCredentials(
        mechanism=mechanism,
        salt=salt,
        iterations=iterations,
        stored_key=hashlib.new(hash_name, client_key).digest(),
        server_key=hmac.digest(salted, b"Server Key", hash_name),
    )


def verify_password(credentials: ScramCredentials, password: str) -> bool:
    """True when ``password`` yields the stored key (used by PLAIN: no plaintext is stored)."""
    candidate = derive(credentials.mechanism, password, credentials.salt, credentials.iterations)
    return hmac.compare_digest(candidate.stored_key, credentials.stored_key)


def saslprep(text: str) -> str:
    """SASLprep (RFC 4013) of a password or username: map, normalise NFKC, refuse prohibited code points."""
    if text.isascii() and text.isprintable():
        return text  # no ASCII character is mapped, changed by NFKC or prohibited, except the controls
    import stringprep
    import unicodedata

    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    normalised = unicodedata.normalize("NFKC", mapped)
    for ch in normalised:
        if (
            stringprep.in_table_c12(ch)
            or stringprep.in_table_c21_c22(ch)
            or stringprep.in_table_c3(ch)
            or stringprep.in_table_c4(ch)
            or stringprep.in_table_c5(ch)
            or stringprep.in_table_c6(ch)
            or stringprep.in_table_c7(ch)
            or stringprep.in_table_c8(ch)
            or stringprep.in_table_c9(ch)
        ):
            raise ValueError("prohibited character in SASLprep input")
    return normalised
