"""Wire-level facts of the cluster protocol: namespace, version, link keys and proofs."""

from __future__ import annotations

import hashlib
import hmac

NS = "urn:xmppcluster:cluster:1"
VERSION = "1"
#: A cluster stream carries whole stanzas (each already within the client limit) plus framing.
MAX_ELEMENT_BYTES = 16 * 1024 * 1024
MAX_ELEMENTS = 1_000_000
MAX_DEPTH = 256


class NoSecret(ValueError):
    """Neither node of a pair has a secret: the link cannot be authenticated."""


def link_key(a: tuple[str, str | None], b: tuple[str, str | None]) -> bytes:
    """The key two nodes share: derived from both names and whatever secrets they have."""
    (name_a, secret_a), (name_b, secret_b) = sorted((a, b))
    if not secret_a and not secret_b:
        raise NoSecret(f"cluster nodes {name_a} and {name_b} have no secret")
    material = "\0".join(("xmppcluster-link-v1", name_a, secret_a or "", name_b, secret_b or ""))
    return hashlib.sha256(material.encode()).digest()


def proof(key: bytes, role: str, initiator: str, acceptor: str, binding: bytes) -> str:
    """What each side of a link proves: knowledge of the key, bound to this TLS session."""
    message = b"\0".join((role.encode(), initiator.encode(), acceptor.encode(), binding))
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def check(key: bytes, role: str, initiator: str, acceptor: str, binding: bytes, claimed: str) -> bool:
    return hmac.compare_digest(proof(key, role, initiator, acceptor, binding), claimed)
