"""The XEP-0227 data model on our side: namespaces, :class:`Account` (one user as rows to write), and the
conversion of one ``<user/>`` element into it (validated, JIDs prepared; see docs/provisioning.rst).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from twisted.words.xish.domish import Element

from xmppcluster.auth.credentials import SCRAM_HASHES, ScramCredentials, derive
from xmppcluster.core.jid import InvalidJID, nameprep, nodeprep, parse_jid
from xmppcluster.core.serializer import serialize

__all__ = ["Account", "ProvisionError", "account_from_element"]

NS_PIE = "urn:xmpp:pie:0"
NS_SCRAM = "urn:xmpp:pie:0#scram"
NS_XINCLUDE = "http://www.w3.org/2001/XInclude"
NS_CLIENT = "jabber:client"
NS_SERVER = "jabber:server"
NS_ROSTER = "jabber:iq:roster"
NS_PRIVATE = "jabber:iq:private"
NS_PRIVACY = "jabber:iq:privacy"
NS_VCARD = "vcard-temp"
NS_DELAY = "urn:xmpp:delay"

#: Name of the XEP-0016 privacy list the XEP-0191 blocklist is exported as (and the default list).
BLOCKLIST_NAME = "blocklist"

#: Where stanzas are accepted from: jabber:client as the spec says, jabber:server, and no namespace of
#: their own (inheriting urn:xmpp:pie:0, as Prosody writes pending subscription requests).
_STANZA_NAMESPACES = frozenset((NS_CLIENT, NS_SERVER, NS_PIE))
_SUBSCRIPTIONS = frozenset(("none", "to", "from", "both"))
_DIGEST_SIZES = {"SCRAM-SHA-1": 20, "SCRAM-SHA-256": 32}
_ITER_COUNT = re.compile(r"[1-9][0-9]{0,9}")


class ProvisionError(Exception):
    """The import or export cannot go on; the message is one line for the operator."""


@dataclass
class Account:
    """One account as rows to write (already validated and prepared)."""

    user: str
    domain: str
    credentials: dict[str, ScramCredentials] = field(default_factory=dict)
    password: str | None = field(default=None, repr=False)  # plaintext, only until derived
    roster: list[tuple[str, str | None, str, int, int, str]] = field(default_factory=list)
    pending: list[tuple[str, str]] = field(default_factory=list)  # (contact, presence XML)
    vcard: str | None = None
    private: dict[str, str] = field(default_factory=dict)
    offline: list[tuple[int, str, bytes]] = field(default_factory=list)  # (stored_at, sender, stanza)
    blocklist: list[str] = field(default_factory=list)


@functools.lru_cache(maxsize=65536)
def _prepared_bare(text: str) -> str | None:
    try:
        jid = parse_jid(text)
    except InvalidJID:
        return None
    return f"{jid.user}@{jid.host}" if jid.user else jid.host


def _bare(text: str | None) -> str | None:
    """The prepared bare JID of ``text`` (a resource is dropped), or None when invalid."""
    return _prepared_bare(text) if text else None


def _text_of(element: Element) -> str:
    return "".join(c for c in element.children if isinstance(c, str)).strip()


def _requalify(element: Element, old: str, new: str) -> None:
    """Move a subtree that inherited ``old`` as default namespace to ``new`` (Prosody omits jabber:client)."""
    if element.uri == old:
        element.uri = new
    if element.defaultUri == old:
        element.defaultUri = new
    for child in element.elements():
        _requalify(child, old, new)


def _stamp(text: str | None) -> int | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp())


def _utc(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _scram(element: Element) -> ScramCredentials | str:
    """Credentials from ``<scram-credentials/>``, or why they were refused."""
    mechanism = element.getAttribute("mechanism") or ""
    if mechanism not in SCRAM_HASHES:
        return f"unsupported mechanism {mechanism[:40]!r}"
    values: dict[str, str] = {}
    for child in element.elements():
        if child.uri == NS_SCRAM and child.name in ("iter-count", "salt", "server-key", "stored-key"):
            if child.name in values:
                return f"{mechanism}: repeated <{child.name}/>"
            values[child.name] = _text_of(child)
    if len(values) != 4:
        return f"{mechanism}: incomplete credentials"
    if not _ITER_COUNT.fullmatch(values["iter-count"]):
        return f"{mechanism}: bad iter-count"
    try:
        salt, server_key, stored_key = (base64.b64decode("".join(values[k].split()), validate=True)
                                        for k in ("salt", "server-key", "stored-key"))
    except (binascii.Error, ValueError):
        return f"{mechanism}: bad base64"
    size = _DIGEST_SIZES[mechanism]
    if not salt or len(server_key) != size or len(stored_key) != size:
        return f"{mechanism}: wrong key sizes"
    return ScramCredentials(mechanism, salt, int(values["iter-count"]), stored_key, server_key)


def account_from_element(host: str, user_el: Element, warn: Callable[[str], None],
                         now: int | None = None) -> Account | None:
    """Validate and convert one ``<user/>``; None (with a warning) when it cannot be imported."""
    now = int(time.time()) if now is None else now
    name = user_el.getAttribute("name")
    try:
        domain = nameprep(host)
        user = nodeprep(name or "")
        if not user:
            raise InvalidJID("empty")
    except InvalidJID as e:
        warn(f"skipped user {name!r}@{host}: invalid JID ({e})")
        return None
    account = Account(user, domain, password=user_el.getAttribute("password") or None)
    jid = f"{user}@{domain}"
    for child in user_el.elements():
        key = (child.uri, child.name)
        if key == (NS_SCRAM, "scram-credentials"):
            creds = _scram(child)
            if isinstance(creds, str):
                warn(f"{jid}: ignored SCRAM credentials: {creds}")
            elif creds.mechanism in account.credentials:
                warn(f"{jid}: ignored repeated {creds.mechanism} credentials")
            else:
                account.credentials[creds.mechanism] = creds
        elif key == (NS_ROSTER, "query"):
            _roster(account, child, warn)
        elif child.name == "presence" and child.uri in _STANZA_NAMESPACES:
            _pending(account, child, warn)
        elif key == (NS_VCARD, "vCard"):
            if any(True for _ in child.elements()):
                account.vcard = serialize(child)
        elif key == (NS_PRIVATE, "query"):
            for item in child.elements():
                if item.uri and item.uri not in (NS_PRIVATE, NS_PIE):
                    account.private[item.uri] = account.private.get(item.uri, "") + serialize(item)
        elif key == (NS_PIE, "offline-messages"):
            _offline(account, child, warn, now)
        elif key == (NS_PRIVACY, "query"):
            _privacy(account, child, warn)
        else:
            warn(f"not imported: <{child.name} xmlns='{child.uri}'/>")
    return account


def _roster(account: Account, query: Element, warn: Callable[[str], None]) -> None:
    seen = set()
    for item in query.children:
        if isinstance(item, str) or item.name != "item" or item.uri != NS_ROSTER:
            continue
        attrs = item.attributes
        contact = _bare(attrs.get("jid"))
        subscription = attrs.get("subscription") or "none"
        if contact is None or subscription == "remove" or contact in seen:
            warn(f"{account.user}@{account.domain}: skipped roster item {attrs.get('jid')!r}")
            continue
        if subscription not in _SUBSCRIPTIONS:
            warn(f"{account.user}@{account.domain}: roster item {contact}: subscription "
                 f"{subscription[:20]!r} read as 'none'")
            subscription = "none"
        seen.add(contact)
        groups = []
        for el in item.children:
            if not isinstance(el, str) and el.name == "group" and el.uri == NS_ROSTER:
                group = _text_of(el)
                if group and group not in groups:
                    groups.append(group)
        account.roster.append((contact, attrs.get("name"), subscription, int(attrs.get("ask") == "subscribe"),
                               int(attrs.get("approved") in ("true", "1")), json.dumps(groups) if groups else "[]"))


def _pending(account: Account, presence: Element, warn: Callable[[str], None]) -> None:
    if presence.getAttribute("type") != "subscribe":
        warn(f"not imported: <presence type={presence.getAttribute('type')!r}/> in <user/>")
        return
    contact = _bare(presence.getAttribute("from"))
    if contact is None or any(c == contact for c, _ in account.pending):
        warn(f"{account.user}@{account.domain}: skipped a subscription request from "
             f"{presence.getAttribute('from')!r}")
        return
    _requalify(presence, presence.uri, NS_CLIENT)
    presence["from"] = contact
    presence["to"] = f"{account.user}@{account.domain}"
    account.pending.append((contact, serialize(presence)))


def _offline(account: Account, container: Element, warn: Callable[[str], None], now: int) -> None:
    for message in container.elements():
        if message.name != "message" or message.uri not in _STANZA_NAMESPACES:
            warn(f"not imported: <{message.name} xmlns='{message.uri}'/> in <offline-messages/>")
            continue
        _requalify(message, message.uri, NS_CLIENT)
        delay = next(message.elements(NS_DELAY, "delay"), None)
        stored_at = _stamp(delay.getAttribute("stamp")) if delay is not None else None
        if stored_at is None:
            if delay is None:
                delay = message.addElement((NS_DELAY, "delay"), content="Offline Storage")
                delay["from"] = account.domain
            stored_at = now
            delay["stamp"] = _utc(now)
        account.offline.append((stored_at, message.getAttribute("from") or "", serialize(message).encode("utf-8")))


def _privacy(account: Account, query: Element, warn: Callable[[str], None]) -> None:
    """The default privacy list's "deny everything from JID" items become the XEP-0191 blocklist."""
    default = next(query.elements(NS_PRIVACY, "default"), None)
    name = default.getAttribute("name") if default is not None else None
    ignored = 0
    for plist in query.elements(NS_PRIVACY, "list"):
        for item in plist.elements(NS_PRIVACY, "item"):
            is_block = (plist.getAttribute("name") == name and item.getAttribute("type") == "jid"
                        and item.getAttribute("action") == "deny" and not any(True for _ in item.elements()))
            if not is_block:
                ignored += 1
                continue
            try:
                blocked = parse_jid(item.getAttribute("value") or "").full()
            except InvalidJID:
                ignored += 1
                continue
            if blocked not in account.blocklist:
                account.blocklist.append(blocked)
    if ignored:
        warn("not imported: privacy-list rules other than the default list's jid/deny items")


def _derive_password(account: Account, iterations: int) -> Account:
    """Fill in the mechanisms the account lacks from its plaintext password, then forget the password."""
    password, account.password = account.password, None
    if password:
        for mechanism in SCRAM_HASHES:
            if mechanism not in account.credentials:
                account.credentials[mechanism] = derive(mechanism, password, iterations=iterations)
    return account
