"""Server Dialback (XEP-0220) keys and elements, with stateless keys (XEP-0185).

The key for a stream is ``HMAC-SHA256(key=hex(SHA-256(secret)), "<receiving> <originating> <stream id>")`` in
hex. The secret is the database's (``server_secrets``), so every node of the cluster computes the same key:
a ``<db:verify/>`` that reaches any node is answered correctly, without state.
"""

from __future__ import annotations

import hashlib
import hmac

from twisted.words.xish import domish

NS = "jabber:server:dialback"
FEATURE = "urn:xmpp:features:dialback"


def dialback_key(secret: bytes, receiving: str, originating: str, stream_id: str) -> str:
    """The dialback key the originating domain sends to the receiving domain on stream ``stream_id``."""
    key = hashlib.sha256(secret).hexdigest().encode("ascii")
    text = f"{receiving} {originating} {stream_id}".encode()
    return hmac.new(key, text, hashlib.sha256).hexdigest()


def key_matches(secret: bytes, receiving: str, originating: str, stream_id: str, key: str) -> bool:
    """Whether ``key`` is the one we would have sent (compared in constant time)."""
    expected = dialback_key(secret, receiving, originating, stream_id)
    return hmac.compare_digest(expected.encode("ascii"), key.strip().encode("utf-8", "replace"))


def element(name: str, frm: str, to: str, *, type: str | None = None, id: str | None = None,
            key: str | None = None, error: str | None = None) -> domish.Element:
    """``<db:result/>`` or ``<db:verify/>`` (``error``: a stanza error condition for ``type='error'``)."""
    result = domish.Element((NS, name))
    result["from"] = frm
    result["to"] = to
    if type is not None:
        result["type"] = type
    if id is not None:
        result["id"] = id
    if key is not None:
        result.addContent(key)
    if error is not None:
        result.addChild(error_element(error))
    return result


def error_element(condition: str) -> domish.Element:
    """The ``<error/>`` child of a dialback element of type ``error`` (XEP-0220 §2.4.2)."""
    failure = domish.Element(("jabber:server", "error"))
    failure["type"] = "cancel"
    failure.addElement(("urn:ietf:params:xml:ns:xmpp-stanzas", condition))
    return failure


def features() -> domish.Element:
    """The stream feature announcing dialback with error handling (XEP-0220 §2.4.2)."""
    feature = domish.Element((FEATURE, "dialback"))
    feature.addElement("errors")
    return feature
