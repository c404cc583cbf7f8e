"""Hardened XML parsing for every inbound byte: TCP streams, WebSocket messages, BOSH bodies.

RFC 6120 section 11 restricted XML on top of pyexpat, building :class:`twisted.words.xish.domish.Element`
trees the rest of Twisted understands:

* DOCTYPE / DTD declarations, comments, processing instructions and entity references other than the five
  predefined ones (character references are fine) -> ``restricted-xml``;
* an XML declaration is accepted only where XML allows it (the very start); a non-UTF-8 encoding in it ->
  ``unsupported-encoding``;
* malformed XML or UTF-8 -> ``not-well-formed``;
* a namespace name (``xmlns='...'`` or ``xmlns:p='...'``) with whitespace, a control character or any of
  ``' " < > & \\ ^ ` { | }`` -> ``invalid-namespace`` (:func:`namespace_allowed`). None of these can
  appear in a URI or IRI (XML-NAMES requires a URI reference), except ``'`` and ``&``, which no XMPP
  namespace uses: refusing them all means no namespace name can ever close the quotes it is written in;
* per stanza: byte size, element count and nesting depth caps -> ``policy-violation``. Bytes are counted as
  they are fed, so an oversized stanza is refused while it arrives and memory stays bounded;
* text is gathered in a list and joined once per element (plus expat's ``buffer_text``), so building a
  text node is linear in its size.
"""

from __future__ import annotations

import pyexpat
import re
from typing import Any, Protocol

from twisted.words.xish.domish import Element

__all__ = ["Containers", "StreamFault", "StreamHandler", "StreamParser", "namespace_allowed", "parse_element"]

XML_NS = "http://www.w3.org/XML/1998/namespace"

DEFAULT_MAX_STANZA_BYTES = 262144
DEFAULT_MAX_ELEMENTS = 1000
DEFAULT_MAX_DEPTH = 64

# Input is handed to expat in slices of at most this many bytes: the size cap is checked between slices,
# so a single huge read cannot make expat buffer more than one slice beyond the limit.
_SLICE = 32768
# expat's character-data buffer (allocated per parser, so per connection: 8 KiB would be ~1/6 of an idle
# session). Longer text still arrives whole, in several handler calls joined by the builder.
_TEXT_BUFFER = 1024
# pyexpat interns every element/attribute name it sees. One dict shared by every parser (not one per
# parser, ~3 KiB per connection): the names of one stream are the names of all. A peer sending endless
# fresh names would grow it: it is cleared between stanzas once it gets this big.
_MAX_INTERNED = 2048
_NAMES: dict[str, str] = {}

# Namespace names: no whitespace or control character (C0, DEL, C1), nothing that is markup or quoting in
# XML, nothing RFC 3986/3987 keeps out of URI and IRI references, no surrogate or non-character.
_BAD_NAMESPACE = re.compile("[\x00-\x20\x7f-\x9f\"'<>&\\\\^`{|}\ud800-\udfff\ufffe\uffff]")
# Namespace names already checked: an XMPP stream uses a handful. Cleared when a peer sends too many.
_MAX_NAMESPACES = 1024
_NAMESPACES: set[str] = set()

_UNDEFINED_ENTITY = pyexpat.errors.codes[pyexpat.errors.XML_ERROR_UNDEFINED_ENTITY]
_UTF8_NAMES = frozenset(("utf-8", "utf8"))


class StreamFault(Exception):
    """The peer's XML must end the stream with this RFC 6120 stream error condition."""

    def __init__(self, condition: str, text: str | None = None) -> None:
        super().__init__(condition if text is None else f"{condition}: {text}")
        self.condition = condition
        self.text = text


def namespace_allowed(uri: str) -> bool:
    """Whether ``uri`` may be a namespace name here (the parser refuses the others, the serializer
    never writes them): no whitespace, control character, ``' " < > & \\ ^ ` { | }``, surrogate or
    U+FFFE/U+FFFF. The empty name (no namespace) is allowed."""
    if uri in _NAMESPACES:
        return True
    if uri.__class__ is not str or _BAD_NAMESPACE.search(uri) is not None:
        return False
    if len(_NAMESPACES) >= _MAX_NAMESPACES:
        _NAMESPACES.clear()
    _NAMESPACES.add(uri)
    return True


class StreamHandler(Protocol):
    """What :class:`StreamParser` calls back."""

    def stream_started(self, root: Element) -> None: ...

    def element_received(self, element: Element) -> None: ...

    def stream_ended(self) -> None: ...


class Containers(Protocol):
    """Elements a stream descends into instead of taking them as stanzas (a file's ``<host/>`` of users).

    ``enter(element)`` gets each stanza-level start tag (attributes, no children): True makes it a container,
    whose children are stanzas in turn; ``leave(element)`` gets its end tag. Containers are never built.
    """

    def enter(self, element: Element) -> bool: ...

    def leave(self, element: Element) -> None: ...


class _Reset(Exception):
    """Raised inside a dead builder's callbacks to abandon the rest of its input."""


def qualify(attrs: dict) -> dict:
    """Turn expat's ``'uri name'`` attribute keys into domish's ``(uri, name)`` tuples."""
    out = {}
    for key, value in attrs.items():
        uri, sep, local = key.rpartition(" ")
        out[(uri, local) if sep else key] = value
    return out


def new_child(parent: Element | None, name: str, attrs: dict, default_uri: str, prefixes: dict | None,
              text: list[str]) -> Element:
    """The element expat just started (``name`` is ``'uri local'``): pending ``text`` is first flushed
    into ``parent``, then the new element is appended to it, without a back reference (no parent/child
    cycle: a dropped tree is freed by reference counting, never left to the cycle collector)."""
    if text:
        parent.children.append(text[0] if len(text) == 1 else "".join(text))
        text.clear()
    uri, _, local = name.rpartition(" ")
    for key in attrs:
        if " " in key:
            attrs = qualify(attrs)
            break
    element = Element((uri, local), default_uri, attrs, prefixes)
    if parent is not None:
        parent.children.append(element)
    return element


class _Builder:
    """One pyexpat parser and the tree being built from it.

    In stream mode the document element is the stream header and each of its children is a stanza; in
    element mode the document element itself is the single result. The limits apply per stanza (element
    mode: to the element). Elements get no ``parent`` reference: a parsed stanza holds no reference cycle,
    so it is freed by reference counting when dropped, and the cyclic collector never sees it (with
    parent links, every stanza waited for a collection, and the collections were the latency tail).
    """

    def __init__(self, handler: StreamHandler | None, max_bytes: int, max_elements: int, max_depth: int,
                 containers: Containers | None = None, skip_comments: bool = False) -> None:
        self.max_bytes = max_bytes
        self.max_elements = max_elements
        self.max_depth = max_depth
        self.dead = False  # set by StreamParser.reset(): abandon whatever is still being parsed
        self.result: Element | None = None
        self.fed = 0  # bytes handed to expat so far
        self.error_at: tuple[int, int] | None = None  # (line, column) of expat's error
        self._containers = containers
        self._entered: list[Element] = []  # open containers, outermost first
        self._handler = handler
        self._level = 0  # 0: outside any stanza, 1: inside the stanza element, ...
        self._count = 0
        self._stanza_start = 0  # byte index of the current stanza's '<'
        self._current: Element | None = None
        self._open: list[Element | None] = []  # ancestors of the current element (no parent links: no cycles)
        self._text: list[str] = []
        self._ns_stack = [""]
        self._prefixes: dict[str, str] | None = None
        self._unit = "element" if handler is None else "stanza"

        p = self.parser = pyexpat.ParserCreate("UTF-8", " ", intern=_NAMES)
        self._interned = p.intern
        p.buffer_size = _TEXT_BUFFER  # before buffer_text, which allocates the buffer
        p.buffer_text = True
        if hasattr(p, "SetReparseDeferralEnabled"):
            # expat >= 2.6 may hold back a complete stanza until more bytes arrive; the size cap already
            # bounds the re-parsing cost that deferral protects against.
            p.SetReparseDeferralEnabled(False)
        p.StartElementHandler = self._on_start if handler is None else self._on_root_start
        p.EndElementHandler = self._on_end
        p.CharacterDataHandler = self._on_text
        p.StartNamespaceDeclHandler = self._on_ns_start
        p.EndNamespaceDeclHandler = self._on_ns_end
        p.XmlDeclHandler = self._on_xml_decl
        p.StartDoctypeDeclHandler = self._on_doctype
        p.EntityDeclHandler = self._on_dtd
        p.UnparsedEntityDeclHandler = self._on_dtd
        p.NotationDeclHandler = self._on_dtd
        p.ElementDeclHandler = self._on_dtd
        p.AttlistDeclHandler = self._on_dtd
        p.ExternalEntityRefHandler = self._on_entity
        p.SkippedEntityHandler = self._on_entity
        if not skip_comments:  # else expat drops them
            p.CommentHandler = self._on_comment
            p.ProcessingInstructionHandler = self._on_pi

    # -- feeding -----------------------------------------------------------------------------------------

    def parse(self, data: bytes, final: bool = False) -> None:
        """Parse one slice and enforce the byte cap on what is still open afterwards."""
        p = self.parser
        try:
            p.Parse(data, final)
        except pyexpat.ExpatError as e:
            self.error_at = (e.lineno, e.offset)
            if e.code == _UNDEFINED_ENTITY:
                raise StreamFault("restricted-xml", "entity references are not allowed") from None
            raise StreamFault("not-well-formed", pyexpat.errors.messages[e.code]) from None
        self.fed += len(data)
        if self._level:
            if self.fed - self._stanza_start > self.max_bytes:
                raise self._too_big(self._unit)
        else:
            # Bytes expat holds without having reported them: an unfinished stream header or stanza start tag.
            consumed = p.CurrentByteIndex
            if consumed >= 0 and self.fed - consumed > self.max_bytes:
                raise self._too_big("unfinished tag")

    def _too_big(self, what: str) -> StreamFault:
        return StreamFault("policy-violation", f"{what} exceeds the {self.max_bytes}-byte limit")

    # -- elements ----------------------------------------------------------------------------------------

    def _on_root_start(self, name: str, attrs: dict) -> None:
        uri, _, local = name.rpartition(" ")
        for key in attrs:
            if " " in key:
                attrs = qualify(attrs)
                break
        root = Element((uri, local), self._ns_stack[-1], attrs, self._prefixes)
        # Only the header's own xmlns='...' counts (the stack holds one entry per declaration).
        root.defaultUri = (self._ns_stack[-1] or None) if len(self._ns_stack) > 1 else None
        self._prefixes = None
        self.parser.StartElementHandler = self._on_start
        self._handler.stream_started(root)
        if self.dead:
            raise _Reset()

    def _on_start(self, name: str, attrs: dict) -> None:
        level = self._level + 1
        if level == 1:
            if self._containers is not None and self._enter(name, attrs):
                return
            self._stanza_start = self.parser.CurrentByteIndex
            self._count = 1
        else:
            count = self._count = self._count + 1
            if count > self.max_elements:
                raise StreamFault("policy-violation", f"{self._unit} exceeds the {self.max_elements}-element limit")
            if level > self.max_depth:
                raise StreamFault(
                    "policy-violation", f"{self._unit} exceeds the nesting depth limit of {self.max_depth}"
                )
            if self.parser.CurrentByteIndex - self._stanza_start > self.max_bytes:
                raise self._too_big(self._unit)
        element = new_child(self._current, name, attrs, self._ns_stack[-1], self._prefixes, self._text)
        self._prefixes = None
        self._open.append(self._current)
        self._current = element
        self._level = level

    def _enter(self, name: str, attrs: dict) -> bool:
        element = new_child(None, name, attrs, self._ns_stack[-1], self._prefixes, [])
        if not self._containers.enter(element):
            return False
        self._prefixes = None
        self._entered.append(element)
        return True

    def _on_end(self, name: str) -> None:
        element = self._current
        if element is None and self._entered:  # a container's end tag
            self._containers.leave(self._entered.pop())
            return
        if element is None:  # the stream header's end tag
            self._handler.stream_ended()
            if self.dead:
                raise _Reset()
            return
        text = self._text
        if text:
            element.children.append(text[0] if len(text) == 1 else "".join(text))
            text.clear()
        level = self._level = self._level - 1
        self._current = self._open.pop()
        if level:
            return
        if self.parser.CurrentByteIndex - self._stanza_start > self.max_bytes:
            raise self._too_big(self._unit)
        if len(self._interned) > _MAX_INTERNED:
            self._interned.clear()
        if self._handler is None:
            self.result = element
            return
        self._handler.element_received(element)
        if self.dead:
            raise _Reset()

    def _on_text(self, data: str) -> None:
        if self._current is not None:
            self._text.append(data)
        elif not data.isspace():
            # Between stanzas only whitespace (keepalives) makes sense; it is dropped, never accumulated.
            raise StreamFault("bad-format", "character data outside a stanza")

    def _on_ns_start(self, prefix: str | None, uri: str | None) -> None:
        if uri and uri not in _NAMESPACES and not namespace_allowed(uri):
            raise StreamFault("invalid-namespace", "a namespace name may not contain whitespace, control "
                                                   "characters or any of ' \" < > & \\ ^ ` { | }")
        if prefix is None:
            self._ns_stack.append(uri or "")
        else:
            if self._prefixes is None:
                self._prefixes = {}
            self._prefixes[prefix] = uri

    def _on_ns_end(self, prefix: str | None) -> None:
        if prefix is None:
            self._ns_stack.pop()

    # -- restricted XML (RFC 6120 section 11.1) ----------------------------------------------------------

    def _on_xml_decl(self, version: str | None, encoding: str | None, standalone: int) -> None:
        if encoding is not None and encoding.lower() not in _UTF8_NAMES:
            raise StreamFault("unsupported-encoding", "only UTF-8 is allowed")

    def _on_doctype(self, *args: object) -> None:
        raise StreamFault("restricted-xml", "DOCTYPE is not allowed")

    def _on_dtd(self, *args: object) -> None:
        raise StreamFault("restricted-xml", "DTD declarations are not allowed")

    def _on_entity(self, *args: object) -> int:
        raise StreamFault("restricted-xml", "entity references are not allowed")

    def _on_comment(self, data: str) -> None:
        raise StreamFault("restricted-xml", "comments are not allowed")

    def _on_pi(self, target: str, data: str) -> None:
        raise StreamFault("restricted-xml", "processing instructions are not allowed")


class StreamParser:
    """Incremental parser for one XML stream (TCP). Builds domish.Element stanzas (children of the root).

    ``handler.stream_started(root)`` gets the stream header (``root.defaultUri`` is the default namespace it
    declares, or None; ``root.localPrefixes`` its prefix declarations); ``handler.element_received(element)``
    each complete top-level child (``parent`` is None); ``handler.stream_ended()`` the closing tag.

    :meth:`feed` raises :class:`StreamFault`; after a fault the parser is dead and every later feed raises
    the same condition until :meth:`reset`. An exception raised by the handler propagates out of
    :meth:`feed` and also kills the parser (expat cannot continue after it).

    For files rather than streams (XEP-0227 import): ``containers`` (:class:`Containers`) makes chosen
    stanza-level elements containers whose children are the stanzas, so a document of many users is read one
    user at a time; ``skip_comments`` drops comments and processing instructions instead of refusing them.
    """

    def __init__(
        self,
        handler: StreamHandler,
        *,
        max_stanza_bytes: int = DEFAULT_MAX_STANZA_BYTES,
        max_elements: int = DEFAULT_MAX_ELEMENTS,
        max_depth: int = DEFAULT_MAX_DEPTH,
        containers: Containers | None = None,
        skip_comments: bool = False,
    ) -> None:
        self.handler = handler
        self.max_stanza_bytes = max_stanza_bytes
        self.max_elements = max_elements
        self.max_depth = max_depth
        self.containers = containers
        self.skip_comments = skip_comments
        self._fault: StreamFault | None = None
        self._builder = self._new_builder()

    @classmethod
    def within(cls, handler: StreamHandler, limits: Any) -> StreamParser:
        """A parser for a network stream, with the per-stanza limits of ``limits`` (``config.limits``:
        ``max_stanza_bytes``, ``max_elements``, ``max_depth``)."""
        return cls(handler, max_stanza_bytes=limits.max_stanza_bytes, max_elements=limits.max_elements,
                   max_depth=limits.max_depth)

    def _new_builder(self) -> _Builder:
        return _Builder(self.handler, self.max_stanza_bytes, self.max_elements, self.max_depth, self.containers,
                        self.skip_comments)

    @property
    def position(self) -> tuple[int, int]:
        """``(line, column)`` reached in the input (of the error after a not-well-formed fault): for
        messages about files; a stream never needs it."""
        builder = self._builder
        if builder.error_at is not None:
            return builder.error_at
        return builder.parser.CurrentLineNumber, builder.parser.CurrentColumnNumber

    def feed(self, data: bytes) -> None:
        """Parse the next bytes of the stream, calling the handler for whatever they complete."""
        if self._fault is not None:
            raise StreamFault(self._fault.condition, self._fault.text)
        if isinstance(data, str):
            data = data.encode("utf-8")
        builder = self._builder
        try:
            if len(data) <= _SLICE:
                builder.parse(data)
            else:
                view = memoryview(data)
                for start in range(0, len(data), _SLICE):
                    builder.parse(view[start : start + _SLICE])
        except _Reset:
            # The handler called reset() while this input was being parsed: the rest of it belonged to the
            # old stream and is dropped (after STARTTLS it must never reach the new one).
            return
        except StreamFault as fault:
            if builder is self._builder:
                self._fault = fault
            raise
        except BaseException:
            if builder is self._builder:
                self._fault = StreamFault("internal-server-error")
            raise

    def reset(self) -> None:
        """Start over for a stream restart (after STARTTLS or SASL success).

        Input not parsed yet is discarded, including the rest of the data being fed when this is called
        from a handler callback.
        """
        self._builder.dead = True
        self._fault = None
        self._builder = self._new_builder()


def parse_element(
    data: bytes | str,
    *,
    max_bytes: int = DEFAULT_MAX_STANZA_BYTES,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    max_depth: int = DEFAULT_MAX_DEPTH,
    skip_comments: bool = False,
) -> Element:
    """Parse exactly one complete element (a WebSocket message, a BOSH ``<body/>``) under the same rules.

    The element counts as the stanza for the limits (it is level 1 and element number 1). Raises
    :class:`StreamFault`: ``not-well-formed`` for broken XML, an unclosed element, trailing data or a
    second root.
    """
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError:
            raise StreamFault("not-well-formed", "invalid character") from None
    if len(data) > max_bytes:
        raise StreamFault("policy-violation", f"element exceeds the {max_bytes}-byte limit")
    builder = _Builder(None, max_bytes, max_elements, max_depth, skip_comments=skip_comments)
    builder.parse(data, True)
    if builder.result is None:  # pragma: no cover - expat reports "no element found" first
        raise StreamFault("not-well-formed", "no element")
    return builder.result


#: :func:`reparse`'s default depth limit: far above any stanza the server accepts (``--max-xml-depth``) with
#: what it adds (delay, error, forwarding wrappers), and low enough for the recursive code that walks elements.
REPARSE_MAX_DEPTH = 1_000


def reparse(data: bytes | str, *, max_elements: int | None = None, max_depth: int = REPARSE_MAX_DEPTH) -> Element:
    """One stanza this server serialized itself, as an element again: the one way to parse trusted bytes
    (the offline store, stored subscription requests, a stream's or BOSH session's queue of serialized
    stanzas, a stanza routed by a cluster node).

    Limits: the size is the input's own (it was bounded when the stanza was accepted); at most
    ``max_elements`` elements (default ``len(data)``, which well-formed input cannot exceed: the size alone
    bounds the work) and ``max_depth`` levels (default :data:`REPARSE_MAX_DEPTH`). The stream's rules still
    hold (no DTD, entity, comment or processing instruction; namespace names as on input). Raises
    :class:`StreamFault` when the bytes are not one such element: the caller drops or bounces the stanza
    and logs it (a damaged database row, a peer's bug), never with a traceback.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    return parse_element(data, max_bytes=len(data) + 1,
                         max_elements=len(data) if max_elements is None else max_elements, max_depth=max_depth)
