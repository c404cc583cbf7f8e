"""The ``java.util.Properties`` layer of ``init.properties``: logical lines, key/value split, escapes.

Knows nothing about which keys exist; it turns text into located entries (file, line, key, value) and
reports malformed escapes as ``FILE:LINE: ...`` :class:`~xmppcluster.config.schema.ConfigError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from xmppcluster.config.schema import _WS, ConfigError, _quote

__all__ = ["read_entries", "split_key"]

_NEWLINE = re.compile(r"\r\n|\r|\n")
_SUFFIX = re.compile(r"\[[^\[\]]*\]\Z")
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


@dataclass(frozen=True)
class _Entry:
    """One ``key=value`` line: where it came from, key and value unescaped."""

    filename: str
    line: int | None
    key: str
    value: str


def _odd_backslashes(text: str) -> bool:
    return (len(text) - len(text.rstrip("\\"))) % 2 == 1


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(line number, logical line): comments and blanks dropped, ``\\`` continuations joined."""
    natural = _NEWLINE.split(text)
    result = []
    i = 0
    while i < len(natural):
        start = i + 1
        line = natural[i].lstrip(_WS)
        i += 1
        if not line or line[0] in "#!":
            continue
        parts = []
        while _odd_backslashes(line):
            parts.append(line[:-1])
            if i >= len(natural):
                line = ""
                break
            line = natural[i].lstrip(_WS)
            i += 1
            if not line:
                break
        parts.append(line)
        result.append((start, "".join(parts)))
    return result


def _split_entry(logical: str) -> tuple[str, str]:
    """Raw (still escaped) key and value: the key ends at the first unescaped ``=``, ``:`` or whitespace."""
    n = len(logical)
    i = 0
    escaped = False
    key_end = n
    has_sep = False
    while i < n:
        c = logical[i]
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c in "=:" or c in _WS:
            key_end = i
            has_sep = c in "=:"
            i += 1
            break
        i += 1
    while i < n:
        c = logical[i]
        if c in _WS:
            i += 1
        elif not has_sep and c in "=:":
            has_sep = True
            i += 1
        else:
            break
    value = logical[i:]
    # Drop trailing whitespace unless escaped (``\ `` keeps a space).
    while value and value[-1] in _WS and not _odd_backslashes(value[:-1]):
        value = value[:-1]
    return logical[:key_end], value


def _unescape(text: str, filename: str, line: int | None) -> str:
    out = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        i += 1
        if c != "\\":
            out.append(c)
            continue
        if i >= n:
            break
        c = text[i]
        i += 1
        if c == "u":
            digits = text[i:i + 4]
            if not re.fullmatch(r"[0-9a-fA-F]{4}", digits):
                raise ConfigError(f"malformed \\uXXXX escape {_quote(text[i - 2:i + 4])}", filename=filename, line=line)
            out.append(chr(int(digits, 16)))
            i += 4
        else:
            out.append(_ESCAPES.get(c, c))
    result = "".join(out)
    try:
        return result.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        raise ConfigError("unpaired \\uD800-\\uDFFF surrogate escape", filename=filename, line=line) from None


def split_key(key: str) -> tuple[str, str, str]:
    """Tigase's split of a component key: (component, node, key) at the first and last ``/``."""
    base = _SUFFIX.sub("", key)
    if "/" not in base:
        raise ValueError(f"{key!r} has no '/'")
    component, rest = base.split("/", 1)
    node, _, name = rest.rpartition("/")
    return component, node, name




def read_entries(text: str, filename: str) -> Iterator[_Entry]:
    """The entries of *text*, in file order, each located at the line where it starts."""
    for line, logical in _logical_lines(text):
        raw_key, raw_value = _split_entry(logical)
        key = _unescape(raw_key, filename, line)
        yield _Entry(filename, line, key, _unescape(raw_value, filename, line))
