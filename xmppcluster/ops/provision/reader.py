"""Reading XEP-0227 files: ``(host, <user/> element)`` pairs, one user in memory at a time, XIncludes followed."""

from __future__ import annotations

import os
import pyexpat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.words.xish.domish import Element

from xmppcluster.core.xml import new_child, qualify
from xmppcluster.ops.provision.model import NS_PIE, NS_XINCLUDE, ProvisionError

__all__ = ["MAX_DEPTH", "MAX_INCLUDE_DEPTH", "MAX_USER_BYTES", "MAX_USER_ELEMENTS", "iter_users"]

#: Caps on one ``<user/>`` subtree (its offline messages, vCard with photo, private XML included).
MAX_USER_BYTES = 64 * 1024 * 1024
MAX_USER_ELEMENTS = 1_000_000
MAX_DEPTH = 64
#: XInclude nesting (server-data -> host -> user is 2).
MAX_INCLUDE_DEPTH = 4

_READ = 256 * 1024

_UNDEFINED_ENTITY = pyexpat.errors.codes[pyexpat.errors.XML_ERROR_UNDEFINED_ENTITY]


class _Reader:
    """expat callbacks for one file: yields ``("user", host, element)`` and ``("include", ...)`` events.

    The document element may be ``<server-data/>``, ``<host/>`` or ``<user/>`` (XInclude'd files); each
    ``<user/>`` subtree is built as a domish Element, everything else is walked without being kept.
    """

    def __init__(self, path: Path, expect: str, host: str | None, warn: Callable[[str], None]) -> None:
        self.path = path
        self.expect = expect  # what the document element may be
        self.events: list[tuple] = []
        self._warn = warn
        self._stack: list[tuple[str, str | None]] = []  # (kind, host) of the open non-user elements
        self._host = host
        self._user: Element | None = None
        self._current: Element | None = None
        # Open elements of the user being built: no parent pointers, so finished trees hold no reference
        # cycles and are freed at once (cyclic GC over 100k users' trees would cost more than the parsing).
        self._open: list[Element] = []
        self._level = 0  # depth inside the <user/> being built
        self._count = 0
        self._start = 0
        self._text: list[str] = []
        self._ns: list[str] = [""]
        self._prefixes: dict[str, str] | None = None
        p = self.parser = pyexpat.ParserCreate("UTF-8", " ")
        p.buffer_text = True
        p.buffer_size = 65536
        p.StartElementHandler = self._on_start
        p.EndElementHandler = self._on_end
        p.CharacterDataHandler = self._on_text
        p.StartNamespaceDeclHandler = self._on_ns_start
        p.EndNamespaceDeclHandler = self._on_ns_end
        p.XmlDeclHandler = self._on_xml_decl
        p.StartDoctypeDeclHandler = self._refuse("a DOCTYPE")
        for name in ("EntityDeclHandler", "UnparsedEntityDeclHandler", "NotationDeclHandler",
                     "ElementDeclHandler", "AttlistDeclHandler"):
            setattr(p, name, self._refuse("DTD declarations"))
        p.ExternalEntityRefHandler = self._refuse("entity references")
        p.SkippedEntityHandler = self._refuse("entity references")
        p.SetParamEntityParsing(pyexpat.XML_PARAM_ENTITY_PARSING_NEVER)

    def feed(self, data: bytes, final: bool = False) -> None:
        try:
            self.parser.Parse(data, final)
        except pyexpat.ExpatError as e:
            where = f"{self.path}:{e.lineno}:{e.offset}"
            if e.code == _UNDEFINED_ENTITY:
                raise ProvisionError(f"{where}: refused: entity references are not allowed") from None
            raise ProvisionError(f"{where}: not well-formed XML: {pyexpat.errors.messages[e.code]}") from None

    def _where(self) -> str:
        return f"{self.path}:{self.parser.CurrentLineNumber}"

    def _refuse(self, what: str) -> Callable[..., Any]:
        def refuse(*args: object) -> None:
            raise ProvisionError(f"{self._where()}: refused: {what} not allowed in an import file")

        return refuse

    def _on_xml_decl(self, version: str | None, encoding: str | None, standalone: int) -> None:
        if encoding is not None and encoding.lower() not in ("utf-8", "utf8"):
            raise ProvisionError(f"{self.path}: only UTF-8 is supported, not {encoding}")

    def _on_ns_start(self, prefix: str | None, uri: str | None) -> None:
        if prefix is None:
            self._ns.append(uri or "")
        else:
            if self._prefixes is None:
                self._prefixes = {}
            self._prefixes[prefix] = uri or ""

    def _on_ns_end(self, prefix: str | None) -> None:
        if prefix is None:
            self._ns.pop()

    def _on_start(self, name: str, attrs: dict) -> None:
        if self._user is not None:
            self._child(name, attrs)
            return
        uri, _, local = name.rpartition(" ")
        prefixes, self._prefixes = self._prefixes, None
        kind = self._stack[-1][0] if self._stack else None
        host = self._stack[-1][1] if self._stack else self._host
        if kind == "skip":
            self._stack.append(("skip", host))
        elif kind is None and uri == NS_PIE and local in self.expect.split("|"):
            self._container(local, attrs, host, prefixes)
        elif kind is None:
            raise ProvisionError(f"{self._where()}: expected <{self.expect}/> in {NS_PIE}, found <{local}/>")
        elif uri == NS_XINCLUDE and local == "include":
            self._include(attrs, "host|server-data" if kind == "server-data" else "user", host)
            self._stack.append(("skip", host))
        elif kind == "server-data" and uri == NS_PIE and local == "host":
            self._container(local, attrs, host, prefixes)
        elif kind == "host" and uri == NS_PIE and local == "user":
            self._container(local, attrs, host, prefixes)
        else:
            self._warn(f"ignored <{local} xmlns='{uri}'/> inside <{kind}/>")
            self._stack.append(("skip", host))

    def _container(self, local: str, attrs: dict, host: str | None, prefixes: dict | None) -> None:
        if local == "host":
            jid = attrs.get("jid")
            if not jid:
                raise ProvisionError(f"{self._where()}: <host/> without a 'jid' attribute")
            self._stack.append(("host", jid))
        elif local == "user":
            if host is None:
                raise ProvisionError(f"{self._where()}: <user/> outside any <host/>")
            self._user = self._current = Element((NS_PIE, "user"), self._ns[-1], qualify(attrs), prefixes)
            self._open = [self._user]
            self._level, self._count, self._start = 1, 1, self.parser.CurrentByteIndex
            self._stack.append(("user", host))
        else:
            self._stack.append((local, host))

    def _include(self, attrs: dict, expect: str, host: str | None) -> None:
        href = attrs.get("href")
        if not href or attrs.get("xpointer") is not None or attrs.get("parse", "xml") != "xml":
            self._warn(f"{self._where()}: ignored an <xi:include/> that is not a plain href include")
            return
        self.events.append(("include", href, expect, host))

    def _child(self, name: str, attrs: dict) -> None:
        level = self._level + 1
        count = self._count = self._count + 1
        if count > MAX_USER_ELEMENTS or level > MAX_DEPTH:
            raise ProvisionError(f"{self._where()}: <user/> exceeds {MAX_USER_ELEMENTS} elements or depth {MAX_DEPTH}")
        if not count & 1023:
            self._check_size()
        element = new_child(self._current, name, attrs, self._ns[-1], self._prefixes, self._text)
        self._prefixes = None
        self._open.append(element)
        self._current = element
        self._level = level

    def _check_size(self) -> None:
        if self.parser.CurrentByteIndex - self._start > MAX_USER_BYTES:
            raise ProvisionError(f"{self._where()}: <user/> exceeds {MAX_USER_BYTES} bytes")

    def _on_end(self, name: str) -> None:
        if self._user is None:
            self._stack.pop()
            return
        element = self._current
        if self._text:
            element.children.append("".join(self._text))
            self._text.clear()
        self._level -= 1
        self._open.pop()
        if self._level:
            self._current = self._open[-1]
            return
        self._check_size()
        self.events.append(("user", self._stack.pop()[1], element))
        self._user = self._current = None

    def _on_text(self, data: str) -> None:
        if self._user is not None:
            self._text.append(data)
            if len(data) > 4096:
                self._check_size()


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
            reader.feed(chunk, final=not chunk)
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


def _resolve(including: Path, root: Path, href: str) -> Path:
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or parts.query or parts.fragment or parts.path.startswith("/"):
        raise ProvisionError(f"{including}: refused XInclude href {href!r}: only relative file references")
    target = (including.resolve().parent / unquote(parts.path)).resolve()
    if not target.is_relative_to(root):
        raise ProvisionError(f"{including}: refused XInclude href {href!r}: outside {root}")
    return target
