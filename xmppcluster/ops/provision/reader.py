"""Reading XEP-0227 files: ``(host, <user/> element)`` pairs, one user in memory at a time, XIncludes followed.

The server's one hardened parser (:class:`xmppcluster.core.xml.StreamParser`) reads the file as a stream:
``<server-data/>`` or ``<host/>`` is the stream header, a ``<host/>`` inside ``<server-data/>`` is a container
(:class:`~xmppcluster.core.xml.Containers`), and each ``<user/>`` is a stanza, built alone under the caps
below. A file whose document element is a ``<user/>`` (an XInclude'd per-user file) is that one stanza.
Comments and processing instructions are skipped; a DOCTYPE, DTD or entity reference is refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from twisted.words.xish.domish import Element

from xmppcluster.core.xml import StreamFault, StreamParser, parse_element
from xmppcluster.ops.provision.model import NS_PIE, NS_XINCLUDE, ProvisionError

__all__ = ["MAX_DEPTH", "MAX_INCLUDE_DEPTH", "MAX_USER_BYTES", "MAX_USER_ELEMENTS", "iter_users"]

#: Caps on one ``<user/>`` subtree (its offline messages, vCard with photo, private XML included).
MAX_USER_BYTES = 64 * 1024 * 1024
MAX_USER_ELEMENTS = 1_000_000
MAX_DEPTH = 64
#: XInclude nesting (server-data -> host -> user is 2).
MAX_INCLUDE_DEPTH = 4

_READ = 256 * 1024

#: The parser's restricted-XML refusals, worded for a file.
_REFUSED = {
    "DOCTYPE is not allowed": "a DOCTYPE not allowed in an import file",
    "DTD declarations are not allowed": "DTD declarations not allowed in an import file",
}


class _WholeUser(Exception):
    """The document element is a ``<user/>``: the file is one stanza (read by :func:`_read_user`)."""


class _Reader:
    """The parser's handler and container policy for one file: collects ``("user", host, element)`` and
    ``("include", href, expect, host)`` events as the file is fed."""

    def __init__(self, path: Path, expect: str, host: str | None, warn: Callable[[str], None]) -> None:
        self.path = path
        self.expect = expect  # what the document element may be
        self.events: list[tuple] = []
        self.ended = False
        self._warn = warn
        self._host = host  # the including <host/>'s JID, for a file XInclude'd inside one
        self.root: str | None = None  # "server-data" or "host", once the document element is read
        self._hosts: list[str] = []  # the open <host/> container (inside <server-data/>)
        self.parser = StreamParser(self, max_stanza_bytes=MAX_USER_BYTES, max_elements=MAX_USER_ELEMENTS,
                                   max_depth=MAX_DEPTH, containers=self, skip_comments=True)

    def feed(self, data: bytes) -> None:
        try:
            self.parser.feed(data)
        except StreamFault as fault:
            raise _fault_error(self.path, self.parser.position, fault) from None

    def _where(self) -> str:
        return f"{self.path}:{self.parser.position[0]}"

    # -- StreamHandler ---------------------------------------------------------------------------------

    def stream_started(self, root: Element) -> None:
        if root.uri != NS_PIE or root.name not in self.expect.split("|"):
            raise ProvisionError(f"{self._where()}: expected <{self.expect}/> in {NS_PIE}, found <{root.name}/>")
        if root.name == "user":
            raise _WholeUser()
        if root.name == "host":
            self._host = _host_jid(root, self._where)
        self.root = root.name

    def element_received(self, element: Element) -> None:
        inside = "host" if self.root == "host" or self._hosts else "server-data"
        host = self._hosts[-1] if self._hosts else self._host
        if element.uri == NS_XINCLUDE and element.name == "include":
            self._include(element, "host|server-data" if inside == "server-data" else "user", host)
        elif inside == "host" and element.uri == NS_PIE and element.name == "user":
            self.events.append(("user", host, element))
        else:
            self._warn(f"ignored <{element.name} xmlns='{element.uri}'/> inside <{inside}/>")

    def stream_ended(self) -> None:
        self.ended = True

    # -- Containers: a <host/> inside <server-data/> -----------------------------------------------------

    def enter(self, element: Element) -> bool:
        if self.root != "server-data" or self._hosts or element.uri != NS_PIE or element.name != "host":
            return False
        self._hosts.append(_host_jid(element, self._where))
        return True

    def leave(self, element: Element) -> None:
        self._hosts.pop()

    def _include(self, element: Element, expect: str, host: str | None) -> None:
        href = element.getAttribute("href")
        plain = element.getAttribute("xpointer") is None and element.attributes.get("parse", "xml") == "xml"
        if not href or not plain:
            self._warn(f"{self._where()}: ignored an <xi:include/> that is not a plain href include")
            return
        self.events.append(("include", href, expect, host))


def _host_jid(element: Element, where: Callable[[], str]) -> str:
    jid = element.getAttribute("jid")
    if not jid:
        raise ProvisionError(f"{where()}: <host/> without a 'jid' attribute")
    return jid


def _fault_error(path: Path, position: tuple[int, int] | None, fault: StreamFault) -> ProvisionError:
    """The parser's fault as one line for the operator (file:line, what was wrong)."""
    where = f"{path}:{position[0]}" if position else str(path)
    text = fault.text or fault.condition
    if fault.condition == "not-well-formed":
        at = f"{where}:{position[1]}" if position else where
        return ProvisionError(f"{at}: not well-formed XML: {text}")
    if fault.condition == "bad-format":
        return ProvisionError(f"{where}: not well-formed XML: {text}")
    if fault.condition == "unsupported-encoding":
        return ProvisionError(f"{path}: only UTF-8 is supported")
    if fault.condition == "policy-violation":
        if "byte" in text:
            return ProvisionError(f"{where}: <user/> exceeds {MAX_USER_BYTES} bytes")
        return ProvisionError(f"{where}: <user/> exceeds {MAX_USER_ELEMENTS} elements or depth {MAX_DEPTH}")
    return ProvisionError(f"{where}: refused: {_REFUSED.get(text, text)}")


def _read_user(path: Path, host: str | None) -> tuple[str, Element]:
    """A file that is one ``<user/>``: read whole (at most :data:`MAX_USER_BYTES`) and parsed as one element."""
    if host is None:
        raise ProvisionError(f"{path}:1: <user/> outside any <host/>")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_USER_BYTES + 1)
    except OSError as e:
        raise ProvisionError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) > MAX_USER_BYTES:
        raise ProvisionError(f"{path}: <user/> exceeds {MAX_USER_BYTES} bytes")
    try:
        user = parse_element(data, max_bytes=MAX_USER_BYTES, max_elements=MAX_USER_ELEMENTS, max_depth=MAX_DEPTH,
                             skip_comments=True)
    except StreamFault as fault:
        raise _fault_error(path, None, fault) from None
    return host, user


def iter_users(path: str | os.PathLike, *, warn: Callable[[str], None] | None = None,
               progress: Callable[[int], None] | None = None) -> Iterator[tuple[str, Element]]:
    """``(host, <user/> element)`` for every user in the XEP-0227 file ``path``, XIncludes followed.

    Includes must be relative and stay inside the directory of ``path``. ``progress(n)`` is called with the
    number of bytes of ``path`` read so far. Raises :class:`ProvisionError` on refused or broken XML.
    """
    path = Path(path)
    root = path.resolve().parent
    return _iter_file(path, root, "server-data|host|user", None, 0, warn or (lambda message: None), progress)


def _iter_file(path: Path, root: Path, expect: str, host: str | None, depth: int,
               warn: Callable[[str], None], progress: Callable[[int], None] | None) -> Iterator[tuple[str, Element]]:
    reader = _Reader(path, expect, host, warn)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, generator-friendly
    except OSError as e:
        raise ProvisionError(f"cannot read {path}: {e.strerror or e}") from None
    with f:
        done = 0
        while True:
            chunk = f.read(_READ)
            try:
                reader.feed(chunk)
            except _WholeUser:
                yield _read_user(path, host)
                return
            done += len(chunk)
            if progress is not None:
                progress(done)
            events, reader.events = reader.events, []
            for event in events:
                if event[0] == "user":
                    yield event[1], event[2]
                else:
                    _, href, expect_inner, inner_host = event
                    if depth >= MAX_INCLUDE_DEPTH:
                        raise ProvisionError(f"{path}: XInclude nested deeper than {MAX_INCLUDE_DEPTH}")
                    target = _resolve(path, root, href)
                    yield from _iter_file(target, root, expect_inner, inner_host, depth + 1, warn, None)
            if not chunk:
                break
    if not reader.ended:
        line, column = reader.parser.position
        raise ProvisionError(f"{path}:{line}:{column}: not well-formed XML: no element found")  # expat's words


def _resolve(including: Path, root: Path, href: str) -> Path:
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or parts.query or parts.fragment or parts.path.startswith("/"):
        raise ProvisionError(f"{including}: refused XInclude href {href!r}: only relative file references")
    target = (including.resolve().parent / unquote(parts.path)).resolve()
    if not target.is_relative_to(root):
        raise ProvisionError(f"{including}: refused XInclude href {href!r}: outside {root}")
    return target
