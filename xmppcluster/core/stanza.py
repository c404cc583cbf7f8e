"""Small helpers for building replies and errors; no parsing, no serialization."""

from __future__ import annotations

from datetime import UTC, datetime

from twisted.words.xish import domish

from xmppcluster.core.namespaces import CLIENT, STANZA_ERRORS

#: RFC 6120 §8.3.3: the default error type of each stanza error condition.
ERROR_TYPES = {
    "bad-request": "modify",
    "conflict": "cancel",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "gone": "cancel",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "not-authorized": "auth",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "redirect": "modify",
    "registration-required": "auth",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "subscription-required": "auth",
    "undefined-condition": "cancel",
    "unexpected-request": "wait",
}


class StanzaError(Exception):
    """Raised by a handler to answer with a stanza error (RFC 6120 §8.3)."""

    def __init__(self, condition: str, text: str | None = None, type: str | None = None) -> None:
        super().__init__(condition)
        self.condition = condition
        self.text = text
        self.type = type


def make(name: str, *, to: str | None = None, frm: str | None = None, type: str | None = None,
         id: str | None = None) -> domish.Element:
    """A new stanza in jabber:client."""
    element = domish.Element((CLIENT, name))
    for key, value in (("to", to), ("from", frm), ("type", type), ("id", id)):
        if value is not None:
            element[key] = value
    return element


def copy(stanza: domish.Element, **changes: str | None) -> domish.Element:
    """A new stanza (``jabber:client``) with the name, attributes and children of ``stanza``, and ``changes``
    made to its attributes (``frm`` means ``from``; None removes one): the one way to copy a stanza, e.g. to
    readdress it. The children are shared, not copied; ``stanza`` itself is untouched."""
    element = domish.Element((CLIENT, stanza.name))
    element.attributes.update(stanza.attributes)
    for key, value in changes.items():
        key = "from" if key == "frm" else key
        if value is None:
            element.attributes.pop(key, None)
        else:
            element[key] = value
    element.children = list(stanza.children)
    return element


def result(request: domish.Element) -> domish.Element:
    """An empty ``type='result'`` reply to an IQ request."""
    return make("iq", to=request.getAttribute("from"), frm=request.getAttribute("to"), type="result",
                id=request.getAttribute("id"))


def error_reply(stanza: domish.Element, condition: str, *, type: str | None = None,
                text: str | None = None) -> domish.Element:
    """The error reply to ``stanza`` (RFC 6120 §8.3): addresses swapped, original payload kept."""
    reply = domish.Element((CLIENT, stanza.name))
    for key, value in stanza.attributes.items():
        reply.attributes[key] = value
    if stanza.hasAttribute("from"):
        reply["to"] = stanza["from"]
    else:
        reply.attributes.pop("to", None)
    if stanza.hasAttribute("to"):
        reply["from"] = stanza["to"]
    else:
        reply.attributes.pop("from", None)
    reply["type"] = "error"
    for child in stanza.elements():
        if child.name != "error":
            reply.addChild(child)
    error = reply.addElement("error")
    error["type"] = type or ERROR_TYPES.get(condition, "cancel")
    error.addElement((STANZA_ERRORS, condition))
    if text:
        error.addElement((STANZA_ERRORS, "text"), content=text)
    return reply


def first_child(element: domish.Element) -> domish.Element | None:
    """The first child element (the payload of an IQ), or None."""
    for child in element.elements():
        return child
    return None


def utc_stamp(seconds: float) -> str:
    """XEP-0082 DateTime in UTC with milliseconds, e.g. ``2024-05-01T10:20:30.123Z``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
