"""Serializing stanza trees, once per delivered stanza: the hot path's largest single cost.

Whatever built the tree (our parser, a module, a cluster frame), the XML written has exactly its
structure: nothing in a name, a namespace, a value or a text can open, close or change markup.

* text: ``&``, ``<``, ``>`` (so ``]]>`` too) and CR (``&#13;``: a literal CR would be read back as LF);
* attribute values: also ``'``, ``"`` and TAB, LF, CR as character references (attribute-value
  normalisation would turn the literal ones into spaces); any other C0 control -> :class:`ValueError`
  (XML cannot carry it at all);
* element and attribute names, prefixes: XML names without a colon (NCName); ``xmlns`` is no attribute
  name; otherwise :class:`ValueError`;
* namespace names: what :func:`xmppcluster.core.xml.namespace_allowed` accepts (the parser refuses the rest
  with ``invalid-namespace``, so no escaped form of them would be accepted anywhere): else
  :class:`ValueError`. The reserved XML namespaces are only ever written with their ``xml:`` prefix.

Names and namespace names are checked once each and remembered (a stream uses a few dozen). Text is not
checked for characters XML cannot carry: the parser refuses them on input and no code builds them.

Almost every stanza has one shape: elements in default namespaces (``xmlns='...'`` where one changes),
plain attributes and ``xml:lang``, and on a client stream ``stream:`` elements (features, errors).
:func:`serialize` writes that shape in one recursive pass; anything else (declared or generated prefixes,
other qualified attributes) takes the general pass, which tracks the bindings in force on the wire.
"""

from __future__ import annotations

import re

from twisted.words.xish.domish import Element, SerializedXML

from xmppcluster.core.xml import namespace_allowed

__all__ = ["escape_text", "quote", "serialize", "start_tag", "tag"]

XML_NS = "http://www.w3.org/XML/1998/namespace"
XMLNS_NS = "http://www.w3.org/2000/xmlns/"
_NO_PREFIXES: dict[str, str] = {}
_NONE: frozenset[str] = frozenset()

# NCName (XML 1.0 fifth edition, Namespaces in XML 1.0 third edition), limited to the BMP like expat.
_START = ("A-Z_a-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u02ff\u0370-\u037d\u037f-\u1fff\u200c\u200d"
          "\u2070-\u218f\u2c00-\u2fef\u3001-\ud7ff\uf900-\ufdcf\ufdf0-\ufffd")
_NCNAME = re.compile(f"[{_START}][{_START}\\-.0-9\u00b7\u0300-\u036f\u203f\u2040]*\\Z")
# Names checked already: element names and prefixes; attribute names (never ``xmlns``).
_MAX_CACHED = 4096
_NAMES: set[str] = set()
_ATTRIBUTE_NAMES: set[str] = set()
# Default namespaces the fast pass may write as xmlns='...': allowed names, not the reserved ones.
_DEFAULTS: set[str] = {""}
# An attribute value needing more than the five predefined escapes, or containing a C0 control.
_ATTRIBUTE_SPECIAL = re.compile("[\x00-\x1f&<>'\"]").search
_C0 = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]").search


class _Unusual(Exception):
    """The tree needs namespace prefixes: the general pass writes it."""


def _name(name: object) -> str:
    """``name`` if it is an NCName (remembered), else ValueError."""
    if name.__class__ is not str or _NCNAME.match(name) is None:
        raise ValueError(f"not an XML name (NCName): {name!r}")
    if len(_NAMES) >= _MAX_CACHED:
        _NAMES.clear()
    _NAMES.add(name)
    return name


def _attribute_name(name: object) -> str:
    if name == "xmlns":
        raise ValueError("'xmlns' is a namespace declaration, not an attribute")
    _name(name)
    if len(_ATTRIBUTE_NAMES) >= _MAX_CACHED:
        _ATTRIBUTE_NAMES.clear()
    _ATTRIBUTE_NAMES.add(name)
    return name


def _namespace(uri: object) -> str:
    if uri.__class__ is not str or not namespace_allowed(uri):
        raise ValueError(f"namespace name not allowed: {uri!r}")
    return uri


def _default(uri: str) -> None:
    """Check a namespace the fast pass is about to write as the default one."""
    if uri == XML_NS or uri == XMLNS_NS:
        raise _Unusual  # reserved: only ever bound to its own prefix (the general pass writes xml:)
    _namespace(uri)
    if len(_DEFAULTS) >= _MAX_CACHED:
        _DEFAULTS.clear()
        _DEFAULTS.add("")
    _DEFAULTS.add(uri)


def _text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def escape_text(text: str) -> str:
    """Character data escaped as :func:`serialize` escapes it (for text written by hand)."""
    return _text(text)


def _attribute(value: str) -> str:
    if _ATTRIBUTE_SPECIAL(value) is None:
        return value
    if _C0(value) is not None:
        raise ValueError(f"attribute value with a character XML cannot carry: {value!r}")
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")
            .replace('"', "&quot;").replace("\t", "&#9;").replace("\n", "&#10;").replace("\r", "&#13;"))


def _write(element: Element, default: str, prefixes: dict[str, str], in_scope: frozenset[str],
           out: list[str]) -> None:
    """The fast pass. ``default`` is the default namespace in force (on the wire too, except below a
    ``stream:`` element, whose namespace is written prefixed: see the general pass for the full rules)."""
    name = element.name
    if name not in _NAMES:
        _name(name)
    own = element.defaultUri
    if own is None:
        own = default
    uri = element.uri
    if uri is None:
        uri = own
    if element.localPrefixes:
        raise _Unusual
    if uri != own or uri in prefixes:
        # Only a prefix the caller declared already (``stream:`` on a client stream); else the general pass.
        prefix = prefixes.get(uri)
        if prefix is None or prefix not in in_scope:
            raise _Unusual
        name = f"{prefix}:{name}"
        if own != default and uri != own:
            if own not in _DEFAULTS:
                _default(own)
            out.append(f"<{name} xmlns='{own}'")
        else:
            out.append(f"<{name}")
    elif own != default:
        if own not in _DEFAULTS:
            _default(own)
        out.append(f"<{name} xmlns='{own}'")
    else:
        out.append(f"<{name}")
    for key, value in element.attributes.items():
        if key.__class__ is tuple:
            if key[0] != XML_NS:
                raise _Unusual
            local = key[1]
            if local not in _ATTRIBUTE_NAMES:
                _attribute_name(local)
            out.append(f" xml:{local}='{_attribute(value)}'")
        else:
            if key not in _ATTRIBUTE_NAMES:
                _attribute_name(key)
            out.append(f" {key}='{_attribute(value)}'")
    children = element.children
    if not children:
        out.append("/>")
        return
    out.append(">")
    for child in children:
        if child.__class__ is str:
            out.append(_text(child))
        elif isinstance(child, SerializedXML):
            out.append(child)
        elif isinstance(child, str):
            out.append(_text(child))
        else:
            _write(child, own, prefixes, in_scope, out)
    out.append(f"</{name}>")


class _General:
    """The general pass: any prefixes, tracked as they are bound on the wire.

    ``logical`` is the default namespace elements without a URI inherit (domish's ``defaultUri``
    chain); ``wire`` the default namespace a reader is in; ``scope`` the prefix bindings it knows.
    ``preferred`` (URI -> prefix, the caller's ``prefixes``) are always written with that prefix, as
    domish does (``stream:`` elements), declared where not in scope.
    """

    def __init__(self, preferred: dict[str, str], outer: dict[str, str]) -> None:
        self.preferred = preferred
        self.outer = outer  # bindings the enclosing XML declared (the transport's: ``stream``)
        self.counter = 0

    def _fresh(self, scope: dict[str, str], declared: dict[str | None, str]) -> str:
        while True:
            prefix = f"xn{self.counter}"
            self.counter += 1
            if prefix not in scope and prefix not in declared:
                return prefix

    def _prefix_for(self, uri: str, scope: dict[str, str], declared: dict[str | None, str],
                    attribute: bool = False) -> str:
        """A prefix bound to ``uri`` on this tag: the preferred one, one in scope, or a new declaration.

        An attribute never relies on the enclosing XML's declarations: a transport declares those only where
        it sees a prefixed element (BOSH adds ``xmlns:stream`` to a ``<body/>`` holding ``<stream:``)."""
        outer = self.outer if attribute else _NO_PREFIXES
        wanted = self.preferred.get(uri)
        if wanted is not None:
            if scope.get(wanted) == uri and outer.get(wanted) != uri:
                return wanted
            if wanted not in declared and wanted not in ("xml", "xmlns"):
                _name(wanted)
                declared[wanted] = uri
                scope[wanted] = uri
                return wanted
        for prefix, bound in scope.items():
            if bound == uri and prefix != "xml" and outer.get(prefix) != uri:
                return prefix
        prefix = self._fresh(scope, declared)
        declared[prefix] = uri
        scope[prefix] = uri
        return prefix

    def write(self, element: Element, logical: str, wire: str, scope: dict[str, str], out: list[str]) -> None:
        name = _name(element.name)
        own = element.defaultUri
        if own is None:
            own = logical
        uri = element.uri
        if uri is None:
            uri = own
        _namespace(uri)
        scope = dict(scope)
        declared: dict[str | None, str] = {}  # this tag's declarations (None: the default namespace)
        for prefix, bound in element.localPrefixes.items():
            _name(prefix)
            _namespace(bound)
            if prefix == "xmlns" or bound == XMLNS_NS or not bound or (prefix == "xml") != (bound == XML_NS):
                raise ValueError(f"cannot bind prefix {prefix!r} to {bound!r}")
            if scope.get(prefix) != bound:
                declared[prefix] = scope[prefix] = bound
        if uri == XML_NS:
            qname = f"xml:{name}"
        elif uri == XMLNS_NS:
            raise ValueError("no element is in the xmlns namespace")
        elif uri and (uri != own or uri in self.preferred):
            qname = f"{self._prefix_for(uri, scope, declared)}:{name}"
        else:
            qname = name
            if wire != uri:
                declared[None] = wire = uri
        attributes = []
        seen = set()
        for key, value in element.attributes.items():
            if key.__class__ is tuple and key[0]:
                attribute_uri, local = _namespace(key[0]), _attribute_name(key[1])
                if attribute_uri == XML_NS:
                    prefix = "xml"
                elif attribute_uri == XMLNS_NS:
                    raise ValueError("namespace declarations are not attributes")
                else:
                    prefix = self._prefix_for(attribute_uri, scope, declared, attribute=True)
                attributes.append(f" {prefix}:{local}='{_attribute(value)}'")
                expanded = (attribute_uri, local)
            else:
                local = _attribute_name(key[1] if key.__class__ is tuple else key)
                attributes.append(f" {local}='{_attribute(value)}'")
                expanded = ("", local)
            if expanded in seen:
                raise ValueError(f"attribute {expanded!r} twice")
            seen.add(expanded)
        out.append(f"<{qname}")
        for prefix, bound in declared.items():
            out.append(f" xmlns='{bound}'" if prefix is None else f" xmlns:{prefix}='{bound}'")
        out.extend(attributes)
        children = element.children
        if not children:
            out.append("/>")
            return
        out.append(">")
        for child in children:
            if isinstance(child, SerializedXML):
                out.append(child)
            elif isinstance(child, str):
                out.append(_text(child))
            else:
                self.write(child, own, wire, scope, out)
        out.append(f"</{qname}>")


# -- XML written by hand ------------------------------------------------------------------------------
# Frames that wrap XML serialized already (cluster frames, a BOSH <body/>, a stream header) are written as
# text: these are the only helpers for it (never xml.sax.saxutils.quoteattr, never a value in an f-string).

_QNAME = re.compile(f"(?:{_NCNAME.pattern[:-2]}:)?{_NCNAME.pattern}")


def quote(value: object) -> str:
    """An attribute value as ``'...'``, escaped as :func:`serialize` escapes it (``str()`` of a non-string);
    a C0 control XML cannot carry is a :class:`ValueError`."""
    return f"'{_attribute(value if value.__class__ is str else str(value))}'"


# Names checked already (a few dozen frame and attribute names in all).
_QNAMES: set[str] = set()


def _qname(name: str) -> str:
    if name in _QNAMES:
        return name
    if name.__class__ is not str or _QNAME.match(name) is None:
        raise ValueError(f"not an XML name: {name!r}")
    if len(_QNAMES) >= _MAX_CACHED:
        _QNAMES.clear()
    _QNAMES.add(name)
    return name


def start_tag(name: str, attrs: dict[str, object] | None = None) -> str:
    """``<name a='v' ...>``: names are XML names (a prefix allowed, ``xmlns`` and ``xmlns:p`` too), values
    quoted by :func:`quote`, None values left out."""
    out = ["<", _qname(name)]
    if attrs:
        for key, value in attrs.items():
            if value is not None:
                out += (" ", _qname(key), "='", _attribute(value if value.__class__ is str else str(value)), "'")
    out.append(">")
    return "".join(out)


def tag(name: str, attrs: dict[str, object] | None = None, content: str | None = None) -> str:
    """One element written by hand: ``<name a='v'/>``, or with ``content`` ``<name a='v'>content</name>``.

    ``content`` is XML inserted as it is: our serializer's output or other :func:`tag` results, never text
    from outside (escape that by building an element instead).
    """
    head = start_tag(name, attrs)
    return f"{head[:-1]}/>" if content is None else f"{head}{content}</{name}>"


def serialize(element: Element, default_uri: str = "", prefixes: dict[str, str] | None = None,
              in_scope: list[str] | None = None) -> str:
    """``element`` as XML inside a parent whose default namespace is ``default_uri``.

    ``prefixes`` maps namespace URIs to the prefixes they are always written with; ``in_scope`` lists
    those the enclosing XML has declared already (``stream`` on a client stream). Raises ValueError for a
    tree XML cannot express (see the module docstring): nothing a peer sent can make one.
    """
    out: list[str] = []
    preferred = prefixes or _NO_PREFIXES
    try:
        _write(element, default_uri, preferred, frozenset(in_scope) if in_scope else _NONE, out)
    except _Unusual:
        out.clear()
        scope = {prefix: uri for uri, prefix in preferred.items() if in_scope and prefix in in_scope}
        scope["xml"] = XML_NS
        _General(preferred, dict(scope)).write(element, default_uri, default_uri, scope, out)
    return "".join(out)

