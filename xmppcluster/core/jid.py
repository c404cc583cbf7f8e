"""JIDs on the hot path: RFC 6122 preparation with stricter checks, behind a bounded LRU cache.

Twisted's ``JID()`` costs about 100 us (stringprep in pure Python) and its ``internJID`` cache has no
bound, so every JID that comes off the wire goes through :func:`parse_jid` instead. On top of Twisted's
stringprep profiles this module enforces: each part at most 1023 bytes, no empty localpart or resource
when its separator is present, a domain with valid labels (1-63 bytes each once in ASCII form, a final
dot dropped) or an IPv6 literal in brackets. Pure-ASCII parts (nearly all of them) take a fast path that
gives the same result as the stringprep profiles.

The JID objects returned are shared by every caller: treat them as immutable. Use :func:`bare_jid`, not
``JID.userhostJID()``, which goes through Twisted's unbounded intern table.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from encodings import idna

from twisted.words.protocols.jabber import xmpp_stringprep
from twisted.words.protocols.jabber.jid import JID

__all__ = ["InvalidJID", "JIDCache", "bare_jid", "nameprep", "nodeprep", "parse_jid", "resourceprep"]

MAX_PART_BYTES = 1023
# The longest possible JID text: three full parts and two separators.
MAX_JID_BYTES = 3 * MAX_PART_BYTES + 2

# ASCII characters each profile prohibits (derived from RFC 3454 tables C.1.1, C.2.1, RFC 6122 appendix A.5
# for nodeprep, and STD 3 host-name rules for nameprep); tests check these against Twisted's profiles.
_ASCII_CONTROLS = frozenset(map(chr, [*range(0x20), 0x7F]))
_NODE_PROHIBITED = _ASCII_CONTROLS | frozenset(" \"&'/:<>@")
_LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


class InvalidJID(ValueError):
    """The text is not a valid JID (or JID part)."""


def _check_length(part: str, what: str) -> str:
    if not part:
        raise InvalidJID(f"empty {what}")
    if len(part) > MAX_PART_BYTES // 4 and len(part.encode("utf-8")) > MAX_PART_BYTES:
        raise InvalidJID(f"{what} longer than {MAX_PART_BYTES} bytes")
    return part


def nodeprep(text: str) -> str:
    """Prepare a localpart (RFC 6122 Nodeprep); raises InvalidJID."""
    if text.isascii():
        result = text.lower()
        if not _NODE_PROHIBITED.isdisjoint(result):
            raise InvalidJID("prohibited character in localpart")
    else:
        try:
            result = xmpp_stringprep.nodeprep.prepare(text)
        except UnicodeError as e:
            raise InvalidJID(f"localpart: {e}") from None
    return _check_length(result, "localpart")


def resourceprep(text: str) -> str:
    """Prepare a resourcepart (RFC 6122 Resourceprep); raises InvalidJID."""
    if text.isascii():
        if not _ASCII_CONTROLS.isdisjoint(text):
            raise InvalidJID("prohibited character in resource")
        result = text
    else:
        try:
            result = xmpp_stringprep.resourceprep.prepare(text)
        except UnicodeError as e:
            raise InvalidJID(f"resource: {e}") from None
    return _check_length(result, "resource")


def _label(label: str) -> str:
    if label.isascii():
        label = label.lower()
        if not _LDH.issuperset(label):
            raise InvalidJID("prohibited character in domain")
        ascii_len = len(label)
    else:
        try:
            label = xmpp_stringprep.nameprep.nameprep(label)
            ascii_len = len(idna.ToASCII(label))
        except (UnicodeError, IndexError) as e:
            raise InvalidJID(f"domain: {e or 'empty label'}") from None
    if not 0 < ascii_len <= 63:
        raise InvalidJID("domain label must be 1 to 63 bytes")
    if label[0] == "-" or label[-1] == "-":
        raise InvalidJID("domain label starts or ends with a hyphen")
    return label


def nameprep(text: str) -> str:
    """Prepare a domainpart (RFC 6122: IDNA nameprep with STD 3 rules, or an IPv6 literal); raises InvalidJID."""
    if not text:
        raise InvalidJID("empty domain")
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1]
        if "%" in inner:
            raise InvalidJID("IPv6 zone identifiers are not allowed")
        try:
            return f"[{ipaddress.IPv6Address(inner).compressed}]"
        except ValueError:
            raise InvalidJID("invalid IPv6 address literal") from None
    labels = idna.dots.split(text)
    if len(labels) > 1 and not labels[-1]:
        del labels[-1]  # a final dot is not part of the domain (RFC 6122 section 2.2)
    return _check_length(".".join(_label(label) for label in labels), "domain")


def _parse(text: str) -> JID:
    if not isinstance(text, str):
        raise InvalidJID("a JID must be text")
    if len(text) > MAX_JID_BYTES // 4 and len(text.encode("utf-8", "surrogatepass")) > MAX_JID_BYTES:
        raise InvalidJID(f"JID longer than {MAX_JID_BYTES} bytes")
    bare, slash, resource = text.partition("/")
    local, at, domain = bare.rpartition("@")
    jid = JID.__new__(JID)  # the parts are prepared here; JID() would run stringprep a second time
    jid.user = nodeprep(local) if at else None
    jid.host = nameprep(domain)
    jid.resource = resourceprep(resource) if slash else None
    return jid


class JIDCache:
    """Least-recently-used cache of parsed JIDs, bounded in entries and in the characters of its keys."""

    def __init__(self, maxsize: int = 65536, max_chars: int = 8 * 1024 * 1024) -> None:
        self.maxsize = maxsize
        self.max_chars = max_chars
        self._entries: OrderedDict[str, JID] = OrderedDict()
        self._chars = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._chars = 0

    def parse(self, text: str) -> JID:
        """Return the (shared) JID for ``text``; raises InvalidJID. Invalid texts are not cached."""
        entries = self._entries
        try:
            jid = entries[text]
        except KeyError:
            pass
        except TypeError:
            raise InvalidJID("a JID must be text") from None
        else:
            entries.move_to_end(text)
            return jid
        jid = _parse(text)
        entries[text] = jid
        self._chars += len(text)
        while len(entries) > self.maxsize or self._chars > self.max_chars:
            old, _ = entries.popitem(last=False)
            self._chars -= len(old)
        return jid


cache = JIDCache()


def parse_jid(text: str) -> JID:
    """Parse and prepare a JID through the process-wide bounded cache; raises InvalidJID."""
    return cache.parse(text)


def bare_jid(jid: JID) -> JID:
    """The bare JID (no resource) of ``jid``, through the same cache."""
    if jid.resource is None:
        return jid
    return cache.parse(jid.userhost())
