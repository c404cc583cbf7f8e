"""XEP-0004 data forms: build the forms the server sends, read the ones clients submit (bounded)."""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.words.xish import domish

from xmppcluster.core.stanza import StanzaError

DATA = "jabber:x:data"

#: What a submitted form may hold; anything bigger is refused with bad-request (docs/security.rst).
MAX_FIELDS = 32
MAX_VALUES = 256
MAX_VALUE_CHARS = 8192


@dataclass
class Field:
    """One field of a form the server sends."""

    var: str
    type: str = "text-single"
    label: str | None = None
    values: list[str] = field(default_factory=list)
    required: bool = False
    #: (label, value) pairs of a list-single or list-multi.
    options: list[tuple[str, str]] = field(default_factory=list)
    desc: str | None = None


def hidden_form_type(namespace: str) -> Field:
    return Field("FORM_TYPE", "hidden", values=[namespace])


def build(kind: str, fields: list[Field], *, title: str | None = None,
          instructions: str | None = None) -> domish.Element:
    """An ``<x xmlns='jabber:x:data' type=kind/>`` (``form`` or ``result``) with ``fields``."""
    form = domish.Element((DATA, "x"))
    form["type"] = kind
    if title:
        form.addElement("title", content=title)
    if instructions:
        form.addElement("instructions", content=instructions)
    for spec in fields:
        element = form.addElement("field")
        element["var"] = spec.var
        element["type"] = spec.type
        if spec.label:
            element["label"] = spec.label
        if spec.desc:
            element.addElement("desc", content=spec.desc)
        if spec.required:
            element.addElement("required")
        for value in spec.values:
            element.addElement("value", content=value)
        for label, value in spec.options:
            option = element.addElement("option")
            option["label"] = label
            option.addElement("value", content=value)
    return form


def find(parent: domish.Element) -> domish.Element | None:
    """The first data form child of ``parent``."""
    for child in parent.elements(DATA, "x"):
        return child
    return None


def parse_submit(form: domish.Element) -> dict[str, list[str]]:
    """The values of a submitted form by field var; ``bad-request`` for anything malformed or too big."""
    if form.getAttribute("type") != "submit":
        raise StanzaError("bad-request", "the form must be of type submit")
    values: dict[str, list[str]] = {}
    for element in form.elements(DATA, "field"):
        var = element.getAttribute("var")
        if not var or var in values:
            raise StanzaError("bad-request", "each field needs one unique var")
        if len(values) >= MAX_FIELDS:
            raise StanzaError("bad-request", f"at most {MAX_FIELDS} fields")
        found = []
        for value in element.elements(DATA, "value"):
            text = str(value)
            if len(found) >= MAX_VALUES or len(text) > MAX_VALUE_CHARS:
                raise StanzaError("bad-request", f"at most {MAX_VALUES} values of {MAX_VALUE_CHARS} characters")
            found.append(text)
        values[var] = found
    return values


def single(values: dict[str, list[str]], var: str, *, required: bool = True, strip: bool = True) -> str | None:
    """The one value of ``var`` (stripped unless ``strip`` is false, as for a password); ``bad-request`` when
    required and missing, or repeated."""
    found = values.get(var) or []
    if len(found) > 1:
        raise StanzaError("bad-request", f"field {var} takes one value")
    text = found[0] if found else ""
    text = text.strip() if strip else text
    if not text:
        if required:
            raise StanzaError("bad-request", f"field {var} is required")
        return None
    return text
