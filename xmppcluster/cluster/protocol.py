"""Wire-level facts of the cluster protocol: framing, namespace, version, link keys and proofs.

A link carries frames: one kind letter, the payload's length in decimal, ``\n``, the payload.

* ``X``: one XML element (hello, auth, heartbeats, directory events), parsed with the hardened parser;
* ``R``: a routed stanza, ``node \n session-jid \n stanza``: the stanza is already serialized, and the
  receiving node writes it to its client as it is. ``node`` is empty unless the frame is to be relayed.

Routed stanzas are most of the traffic: a length-prefixed frame costs the receiver a slice where an XML
wrapper cost it an expat pass over the whole stanza (about 3.5 us of the 11 us a routed message cost).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator

NS = "urn:xmppcluster:cluster:2"
VERSION = "3"
#: A frame carries one whole stanza (each already within the client limit) or one directory event.
MAX_ELEMENT_BYTES = 16 * 1024 * 1024
MAX_ELEMENTS = 1_000_000
MAX_DEPTH = 256
#: Before ``<auth/>`` succeeded only ``<hello/>`` and ``<auth/>`` may come: frames and elements this small.
PREAUTH_MAX_BYTES = 2048
PREAUTH_MAX_ELEMENTS = 1
PREAUTH_MAX_DEPTH = 1
CONTROL, ROUTED = b"X"[0], b"R"[0]
_MAX_HEADER = 12  # kind + up to 10 digits + newline


class FrameError(ValueError):
    """The peer does not speak this framing (or breaks it)."""


def control(xml: bytes) -> bytes:
    """An ``X`` frame around one serialized element."""
    return b"X%d\n%s" % (len(xml), xml)


def routed(node: str, session: str, body: bytes) -> bytes:
    """An ``R`` frame: ``body`` (a stanza as UTF-8 XML) for ``session`` on ``node`` ('' for the receiver).

    A newline ends each of the first two fields: neither may hold one (no JID or node name can)."""
    if "\n" in session or "\n" in node:
        raise ValueError(f"a newline in a routed frame's node or session: {node!r} {session!r}")
    head = f"{node}\n{session}\n".encode()
    return b"R%d\n%s%s" % (len(head) + len(body), head, body)


def split_routed(payload: bytes) -> tuple[str, str, bytes]:
    """``(node, session, body)`` of an ``R`` payload (the stanza stays UTF-8 bytes: it is written to the
    client as it is); :class:`FrameError` if it is not one."""
    try:
        node, session, body = payload.split(b"\n", 2)
        return node.decode("utf-8"), session.decode("utf-8"), body
    except (UnicodeDecodeError, ValueError):
        raise FrameError("malformed routed frame") from None


class FrameDecoder:
    """Bytes in, ``(kind, payload)`` out; whatever is incomplete waits for the next :meth:`feed`.

    An incomplete frame is gathered in a ``bytearray`` and looked at again only once enough bytes for it
    have arrived, so a frame arriving in many small reads costs linear time (copying the whole backlog
    on every read was quadratic: 16 MiB in 4 KiB reads copied ~32 GiB). ``max_payload`` may be changed
    between reads (tiny before authentication, :data:`MAX_ELEMENT_BYTES` after).
    """

    def __init__(self, max_payload: int = MAX_ELEMENT_BYTES) -> None:
        self.max_payload = max_payload
        self._partial: bytearray | None = None  # the start of an incomplete frame
        self._needed = 0  # bytes _partial must hold before it is worth parsing again

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._partial) if self._partial is not None else 0

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        if self._partial is not None:
            self._partial += data
            if len(self._partial) < self._needed:
                return
            buffer, self._partial = bytes(self._partial), None
        else:
            buffer = data
        position, end, needed = 0, len(buffer), 0
        try:
            while position < end:
                newline = buffer.find(b"\n", position, position + _MAX_HEADER)
                if newline < 0:
                    if end - position >= _MAX_HEADER:
                        raise FrameError(f"bad frame header {buffer[position:position + _MAX_HEADER]!r}")
                    needed = end - position + 1
                    break
                kind, digits = buffer[position], buffer[position + 1:newline]
                if kind not in (CONTROL, ROUTED) or not digits.isdigit():
                    raise FrameError(f"bad frame header {buffer[position:newline + 1]!r}")
                size = int(digits)
                if size > self.max_payload:
                    raise FrameError(f"frame of {size} bytes exceeds the {self.max_payload}-byte limit")
                start = newline + 1
                if end - start < size:
                    needed = start + size - position
                    break
                position = start + size
                yield kind, buffer[start:position]
        except FrameError:
            position = end  # nothing after a framing error is read
            raise
        finally:
            if position < end:
                self._partial = bytearray(buffer[position:])
                self._needed = needed


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
