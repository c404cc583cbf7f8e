"""Bulk provisioning in the XEP-0227 portable format: ``xmppcluster import FILE...`` and ``export [FILE]``.

Import streams the file(s) through a restricted expat parser (no DOCTYPE, DTD or entity references; one
``<user/>`` subtree in memory at a time, under size caps), turns each user into rows, and writes them in
batches (``executemany``, one transaction per batch) while the next batch is parsed. Plaintext passwords
are turned into SCRAM-SHA-1 and SCRAM-SHA-256 credentials on a thread pool (PBKDF2 releases the GIL);
SCRAM credentials are stored as they are. Export writes accounts in a canonical order (hosts, then users,
by code point; see :func:`export_database`), one page of accounts at a time, so that export -> import ->
export is byte-identical. See ``docs/provisioning.rst``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import functools
import gc
import json
import os
import pyexpat
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred
from twisted.words.xish.domish import Element

from xmppcluster.auth.credentials import DEFAULT_ITERATIONS, SCRAM_HASHES, ScramCredentials, derive
from xmppcluster.core.jid import InvalidJID, nameprep, nodeprep, parse_jid
from xmppcluster.core.serializer import serialize
from xmppcluster.core.xml import new_child, qualify
from xmppcluster.storage.database import POSTGRESQL, Cursor, Database

__all__ = [
    "Account",
    "ImportReport",
    "ProvisionError",
    "export_database",
    "export_main",
    "import_files",
    "import_main",
    "iter_users",
]

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

BATCH_SIZE = 500
#: Caps on one ``<user/>`` subtree (its offline messages, vCard with photo, private XML included).
MAX_USER_BYTES = 64 * 1024 * 1024
MAX_USER_ELEMENTS = 1_000_000
MAX_DEPTH = 64
#: XInclude nesting (server-data -> host -> user is 2).
MAX_INCLUDE_DEPTH = 4

_READ = 256 * 1024
#: Where stanzas are accepted from: jabber:client as the spec says, jabber:server, and no namespace of
#: their own (inheriting urn:xmpp:pie:0, as Prosody writes pending subscription requests).
_STANZA_NAMESPACES = frozenset((NS_CLIENT, NS_SERVER, NS_PIE))
_SUBSCRIPTIONS = frozenset(("none", "to", "from", "both"))
_DIGEST_SIZES = {"SCRAM-SHA-1": 20, "SCRAM-SHA-256": 32}
_ITER_COUNT = re.compile(r"[1-9][0-9]{0,9}")
_UNDEFINED_ENTITY = pyexpat.errors.codes[pyexpat.errors.XML_ERROR_UNDEFINED_ENTITY]
_PROG = "xmppcluster"


class ProvisionError(Exception):
    """The import or export cannot go on; the message is one line for the operator."""


# -- reading ---------------------------------------------------------------------------------------------


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


# -- converting ------------------------------------------------------------------------------------------


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


# -- writing ---------------------------------------------------------------------------------------------


@dataclass
class ImportReport:
    imported: int = 0
    replaced: int = 0
    skipped: int = 0
    derived: int = 0  # accounts whose credentials were derived from a plaintext password
    seconds: float = 0.0
    warnings: Counter = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.imported / self.seconds if self.seconds > 0 else 0.0


def _chunks(items: list, size: int = 500) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _existing(cursor: Cursor, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
    by_domain: dict[str, list[str]] = {}
    for domain, user in keys:
        by_domain.setdefault(domain, []).append(user)
    found = set()
    for domain, users in by_domain.items():
        for chunk in _chunks(users):
            marks = ", ".join("?" * len(chunk))
            rows = cursor.execute(f"SELECT username FROM accounts WHERE domain = ? AND username IN ({marks})",
                                  (domain, *chunk)).fetchall()
            found.update((domain, row[0]) for row in rows)
    return found


def _write_batch(cursor: Cursor, accounts: list[Account], replace: bool, now: int) -> tuple[int, int, list[str]]:
    """Insert ``accounts`` in this transaction; returns ``(written, replaced, skipped JIDs)``."""
    existing = _existing(cursor, [(a.domain, a.user) for a in accounts])
    skipped: list[str] = []
    replaced = 0
    if existing:
        if replace:
            for domain, user in sorted(existing):
                cursor.execute("DELETE FROM accounts WHERE domain = ? AND username = ?", (domain, user))
            replaced = len(existing)
        else:
            skipped = [f"{a.user}@{a.domain}" for a in accounts if (a.domain, a.user) in existing]
            accounts = [a for a in accounts if (a.domain, a.user) not in existing]
    blob = bytes
    rows: dict[str, list[tuple]] = {name: [] for name in _INSERTS}
    for a in accounts:
        key = (a.domain, a.user)
        rows["accounts"].append((*key, now))
        for c in a.credentials.values():
            rows["account_credentials"].append((*key, c.mechanism, blob(c.salt), c.iterations,
                                                blob(c.stored_key), blob(c.server_key)))
        if a.roster:
            rows["roster_versions"].append((*key, now))
            rows["roster_items"].extend((*key, *item) for item in a.roster)
        rows["roster_pending"].extend((*key, contact, xml, now) for contact, xml in a.pending)
        if a.vcard is not None:
            rows["vcards"].append((*key, a.vcard, now))
        rows["private_storage"].extend((*key, ns, data) for ns, data in a.private.items())
        rows["offline_messages"].extend((*key, seq, at, sender, blob(stanza))
                                        for seq, (at, sender, stanza) in enumerate(a.offline, 1))
        rows["blocklist"].extend((*key, jid) for jid in a.blocklist)
    for table, sql in _INSERTS.items():
        if rows[table]:
            _insert(cursor, table, sql, rows[table])
    return len(accounts), replaced, skipped


def _insert(cursor: Cursor, table: str, sql: str, rows: list[tuple]) -> None:
    """``executemany`` on SQLite; on PostgreSQL one ``INSERT ... SELECT FROM unnest(arrays)`` per table."""
    if cursor.dialect != POSTGRESQL:
        cursor.executemany(sql, rows)
        return
    head = sql.partition(" VALUES ")[0]
    arrays = ", ".join(f"?::{kind}[]" for kind in _PG_TYPES[table])
    cursor.execute(f"{head} SELECT * FROM unnest({arrays})", [list(column) for column in zip(*rows, strict=True)])


#: Column types of each table, for the PostgreSQL array parameters.
_PG_TYPES = {
    "accounts": ("text", "text", "bigint"),
    "account_credentials": ("text", "text", "text", "bytea", "integer", "bytea", "bytea"),
    "roster_versions": ("text", "text", "bigint"),
    "roster_items": ("text", "text", "text", "text", "text", "integer", "integer", "text"),
    "roster_pending": ("text", "text", "text", "text", "bigint"),
    "vcards": ("text", "text", "text", "bigint"),
    "private_storage": ("text", "text", "text", "text"),
    "offline_messages": ("text", "text", "bigint", "bigint", "text", "bytea"),
    "blocklist": ("text", "text", "text"),
}


_INSERTS = {
    "accounts": "INSERT INTO accounts (domain, username, created_at) VALUES (?, ?, ?)",
    "account_credentials": "INSERT INTO account_credentials (domain, username, mechanism, salt, iterations,"
                           " stored_key, server_key) VALUES (?, ?, ?, ?, ?, ?, ?)",
    "roster_versions": "INSERT INTO roster_versions (domain, username, version) VALUES (?, ?, ?)",
    "roster_items": "INSERT INTO roster_items (domain, username, contact, name, subscription, ask, approved,"
                    " group_names) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "roster_pending": "INSERT INTO roster_pending (domain, username, contact, stanza, created_at)"
                      " VALUES (?, ?, ?, ?, ?)",
    "vcards": "INSERT INTO vcards (domain, username, vcard, updated_at) VALUES (?, ?, ?, ?)",
    "private_storage": "INSERT INTO private_storage (domain, username, namespace, data) VALUES (?, ?, ?, ?)",
    "offline_messages": "INSERT INTO offline_messages (domain, username, seq, stored_at, sender, stanza)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
    "blocklist": "INSERT INTO blocklist (domain, username, jid) VALUES (?, ?, ?)",
}


def _deferred(future: Future) -> Deferred:
    """A Deferred fired in the reactor thread with ``future``'s outcome."""
    from twisted.internet import reactor

    d: Deferred = Deferred()

    def done(f: Future) -> None:
        error = f.exception()
        if error is not None:
            reactor.callFromThread(d.errback, error)
        else:
            reactor.callFromThread(d.callback, f.result())

    future.add_done_callback(done)
    return d


async def import_files(
    db: Database,
    paths: Iterable[str | os.PathLike],
    *,
    iterations: int = DEFAULT_ITERATIONS,
    replace: bool = False,
    hosts: Iterable[str] | None = None,
    batch_size: int = BATCH_SIZE,
    workers: int | None = None,
    warn: Callable[[str], None] | None = None,
    progress: Callable[[int, float | None], None] | None = None,
) -> ImportReport:
    """Import every user of the XEP-0227 ``paths`` (files, or directories of ``*.xml`` files such as
    Prosody's per-user files) into ``db``.

    Existing accounts are skipped with a warning, or deleted and imported again with ``replace``. Users of
    domains not in ``hosts`` (when given) are skipped. ``progress(accounts, fraction)`` is called as the
    import goes. Each batch is one transaction; a :class:`ProvisionError` (refused or broken XML) stops the
    import, leaving the batches already written in place (importing again skips them).
    """
    importer = _Importer(db, iterations, replace, hosts, workers, warn)
    files = _expand(paths)
    sizes = [max(f.stat().st_size, 1) for f in files]
    total, done_before = sum(sizes), 0
    started = time.monotonic()
    # Parsing allocates millions of short-lived objects: collect the young generation less often (the
    # trees are acyclic and freed by reference counting); restored below.
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], 50_000), *thresholds[1:])
    try:
        for path, size in zip(files, sizes, strict=True):
            read = [0]

            def seen_bytes(n: int, read: list[int] = read) -> None:
                read[0] = n

            for host, user_el in iter_users(path, warn=importer.note, progress=seen_bytes):
                if importer.add(host, user_el) >= batch_size:
                    await importer.flush()
                    if progress is not None:
                        progress(importer.report.imported + importer.report.skipped,
                                 (done_before + min(read[0], size)) / total)
            done_before += size
        await importer.flush()
        await importer.wait()
    finally:
        gc.set_threshold(*thresholds)
        await importer.close()
    report = importer.report
    report.seconds = time.monotonic() - started
    if progress is not None:
        progress(report.imported + report.skipped, 1.0)
    return report


class _Importer:
    """Batches accounts; derives passwords on a thread pool; keeps one write in flight while parsing."""

    def __init__(self, db: Database, iterations: int, replace: bool, hosts: Iterable[str] | None,
                 workers: int | None, warn: Callable[[str], None] | None) -> None:
        self.db = db
        self.iterations = iterations
        self.replace = replace
        self.allowed = {nameprep(h) for h in hosts} if hosts is not None else None
        self.report = ImportReport()
        self.now = int(time.time())
        self._say = warn or (lambda message: None)
        self._batch: list[Account] = []
        self._seen: set[tuple[str, str]] = set()
        self._writing: Deferred | None = None
        self._executor = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2, thread_name_prefix="pbkdf2")

    def note(self, message: str) -> None:
        """Count a warning; print the first few of each kind."""
        kind = _kind(message)
        self.report.warnings[kind] += 1
        if self.report.warnings[kind] <= WARNINGS_SHOWN:
            self._say(message)

    def add(self, host: str, user_el: Element) -> int:
        """Convert and queue one user; returns the batch length."""
        account = account_from_element(host, user_el, self.note, self.now)
        if account is None:
            self.report.skipped += 1
            return len(self._batch)
        jid, key = f"{account.user}@{account.domain}", (account.domain, account.user)
        if self.allowed is not None and account.domain not in self.allowed:
            self.report.skipped += 1
            self.note(f"skipped {jid}: {account.domain} is not a hosted domain")
        elif key in self._seen:
            self.report.skipped += 1
            self.note(f"skipped {jid}: it appears twice in the input")
        else:
            self._seen.add(key)
            if not account.credentials and not account.password:
                self.note(f"{jid}: no credentials: set a password (xmppcluster passwd) before it can log in")
            self._batch.append(account)
        return len(self._batch)

    async def flush(self) -> None:
        """Derive the batch's missing credentials, wait for the previous write, start this one."""
        batch, self._batch = self._batch, []
        if not batch:
            return
        needing = [a for a in batch if a.password]
        self.report.derived += sum(1 for a in needing if len(a.credentials) < len(SCRAM_HASHES))
        for d in [_deferred(self._executor.submit(_derive_password, a, self.iterations)) for a in needing]:
            await d
        await self.wait()
        self._writing = Deferred.fromCoroutine(
            self.db.interaction(_write_batch, batch, self.replace, self.now))

    async def wait(self) -> None:
        """Wait for the write in flight and account for it."""
        writing, self._writing = self._writing, None
        if writing is None:
            return
        written, replaced, skipped = await writing
        self.report.imported += written
        self.report.replaced += replaced
        self.report.skipped += len(skipped)
        for jid in skipped:
            self.note(f"skipped {jid}: the account exists (use --replace to overwrite it)")

    async def close(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            try:
                await writing
            except Exception:  # the error that got us here is the one reported
                pass
        self._executor.shutdown(wait=True, cancel_futures=True)


#: How many warnings of one kind are printed (the rest are counted in the summary).
WARNINGS_SHOWN = 5


def _kind(message: str) -> str:
    """A warning's category for the summary: the account named at its start dropped."""
    head, sep, rest = message.partition(": ")
    if not sep or head == "not imported":
        return message
    if head.startswith("skipped "):
        return f"skipped: {rest}"
    return rest


def _expand(paths: Iterable[str | os.PathLike]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(x for x in p.iterdir() if x.suffix == ".xml" and x.is_file())
            if not found:
                raise ProvisionError(f"{p}: no *.xml files in this directory")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise ProvisionError(f"{p}: no such file or directory")
    return files


# -- exporting -------------------------------------------------------------------------------------------

_ATTR_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;",
                               "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})


def _attr(value: str) -> str:
    return value.translate(_ATTR_ESCAPES)


def _text(value: str) -> str:
    return value.translate(_TEXT_ESCAPES)


def _b64(data: bytes) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def _read_page(cursor: Cursor, domain: str, users: list[str]) -> dict[str, dict[str, list[tuple]]]:
    """Every row of ``users`` of ``domain``, per table, grouped by username (one transaction)."""
    marks = ", ".join("?" * len(users))
    where = f" WHERE domain = ? AND username IN ({marks})"
    params = (domain, *users)
    queries = {
        "credentials": "SELECT username, mechanism, iterations, salt, server_key, stored_key FROM account_credentials",
        "roster": "SELECT username, contact, name, subscription, ask, approved, group_names FROM roster_items",
        "pending": "SELECT username, contact, stanza FROM roster_pending",
        "vcard": "SELECT username, vcard FROM vcards",
        "private": "SELECT username, namespace, data FROM private_storage",
        "offline": "SELECT username, seq, stanza FROM offline_messages",
        "blocklist": "SELECT username, jid FROM blocklist",
    }
    page: dict[str, dict[str, list[tuple]]] = {}
    for name, sql in queries.items():
        grouped: dict[str, list[tuple]] = {}
        for row in cursor.execute(sql + where, params).fetchall():
            grouped.setdefault(row[0], []).append(row[1:])
        for rows in grouped.values():
            rows.sort(key=lambda r: r[0])  # mechanism, contact, namespace, seq, jid: code point order
        page[name] = grouped
    return page


def _user_xml(user: str, page: dict[str, dict[str, list[tuple]]]) -> str:
    """One ``<user/>`` in the canonical layout (see docs/provisioning.rst)."""
    out = [f"    <user name='{_attr(user)}'>\n"]
    for mechanism, iterations, salt, server_key, stored_key in page["credentials"].get(user, ()):
        out.append(f"      <scram-credentials xmlns='{NS_SCRAM}' mechanism='{_attr(mechanism)}'>"
                   f"<iter-count>{int(iterations)}</iter-count><salt>{_b64(salt)}</salt>"
                   f"<server-key>{_b64(server_key)}</server-key><stored-key>{_b64(stored_key)}</stored-key>"
                   "</scram-credentials>\n")
    roster = page["roster"].get(user)
    if roster:
        out.append(f"      <query xmlns='{NS_ROSTER}'>\n")
        for contact, name, subscription, ask, approved, groups in roster:
            attrs = f"jid='{_attr(contact)}'"
            if name is not None:
                attrs += f" name='{_attr(name)}'"
            attrs += f" subscription='{subscription}'"
            if ask:
                attrs += " ask='subscribe'"
            if approved:
                attrs += " approved='true'"
            group_xml = "".join(f"<group>{_text(g)}</group>" for g in sorted(json.loads(groups or "[]")))
            out.append(f"        <item {attrs}>{group_xml}</item>\n" if group_xml else f"        <item {attrs}/>\n")
        out.append("      </query>\n")
    for _contact, stanza in page["pending"].get(user, ()):
        out.append(f"      {stanza}\n")
    for (vcard,) in page["vcard"].get(user, ()):
        out.append(f"      {vcard}\n")
    private = page["private"].get(user)
    if private:
        out.append(f"      <query xmlns='{NS_PRIVATE}'>{''.join(data for _ns, data in private)}</query>\n")
    blocked = page["blocklist"].get(user)
    if blocked:
        items = "".join(f"<item type='jid' value='{_attr(jid)}' action='deny' order='{n}'/>"
                        for n, (jid,) in enumerate(blocked, 1))
        out.append(f"      <query xmlns='{NS_PRIVACY}'><default name='{BLOCKLIST_NAME}'/>"
                   f"<list name='{BLOCKLIST_NAME}'>{items}</list></query>\n")
    offline = page["offline"].get(user)
    if offline:
        out.append("      <offline-messages>\n")
        out.extend(f"        {bytes(stanza).decode('utf-8')}\n" for _seq, stanza in offline)
        out.append("      </offline-messages>\n")
    out.append("    </user>\n")
    return "".join(out)


async def export_database(db: Database, out: IO[bytes], *, domains: Iterable[str] | None = None,
                          page_size: int = BATCH_SIZE, progress: Callable[[int, float | None], None] | None = None
                          ) -> int:
    """Write every account (of ``domains``, if given) as one XEP-0227 document to ``out``; returns the count.

    Canonical: hosts, then users, sorted by code point; within a user the order of :func:`_user_xml`. Only
    the account names are held in memory; the rest is read one page of ``page_size`` accounts at a time (the
    next page is read while the current one is written).
    """
    wanted = {nameprep(d) for d in domains} if domains is not None else None
    keys = sorted((domain, user) for domain, user in await db.query("SELECT domain, username FROM accounts")
                  if wanted is None or domain in wanted)
    pages: list[tuple[str, list[str]]] = []
    for domain, user in keys:
        if not pages or pages[-1][0] != domain or len(pages[-1][1]) >= page_size:
            pages.append((domain, []))
        pages[-1][1].append(user)
    out.write(f"<?xml version='1.0' encoding='UTF-8'?>\n<server-data xmlns='{NS_PIE}'>\n".encode())
    reading = Deferred.fromCoroutine(db.interaction(_read_page, *pages[0], idempotent=True)) if pages else None
    done, current = 0, None
    for index, (domain, users) in enumerate(pages):
        page = await reading
        if index + 1 < len(pages):
            reading = Deferred.fromCoroutine(db.interaction(_read_page, *pages[index + 1], idempotent=True))
        if domain != current:
            if current is not None:
                out.write(b"  </host>\n")
            out.write(f"  <host jid='{_attr(domain)}'>\n".encode())
            current = domain
        out.write("".join(_user_xml(user, page) for user in users).encode("utf-8"))
        done += len(users)
        if progress is not None:
            progress(done, done / len(keys))
    if current is not None:
        out.write(b"  </host>\n")
    out.write(b"</server-data>\n")
    return len(keys)


# -- command line ----------------------------------------------------------------------------------------


class _Progress:
    """A one-line progress report on stderr, redrawn at most every 0.2 s."""

    def __init__(self, stream: IO[str] | None, verb: str) -> None:
        self.stream = stream
        self.verb = verb
        self.started = self._last = time.monotonic()
        self._drawn = False

    def __call__(self, count: int, fraction: float | None) -> None:
        now = time.monotonic()
        if self.stream is None or (now - self._last < 0.2 and fraction != 1.0):
            return
        self._last = now
        width = 30
        filled = int(width * (fraction or 0.0))
        rate = count / max(now - self.started, 1e-6)
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {100 * (fraction or 0):5.1f}% "
                          f"{count} accounts {self.verb} ({rate:,.0f}/s)")
        self.stream.flush()
        self._drawn = True

    def note(self, message: str) -> None:
        """Print a warning line (below the bar, which is redrawn at the next update)."""
        if self._drawn:
            sys.stderr.write("\n")
            self._drawn = False
        print(f"{_PROG}: warning: {message}", file=sys.stderr)

    def end(self) -> None:
        if self.stream is not None and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def _progress_stream(args: argparse.Namespace) -> IO[str] | None:
    return sys.stderr if getattr(args, "progress", False) or sys.stderr.isatty() else None


def _load_config(path: str) -> Any:
    from xmppcluster.config import ConfigError, load

    try:
        config = load(path)
    except ConfigError as e:
        print(f"{_PROG}: {e}", file=sys.stderr)
        return None
    for warning in getattr(config, "warnings", ()):
        print(f"{_PROG}: warning: {warning}", file=sys.stderr)
    return config


def import_main(args: argparse.Namespace) -> int:
    """``xmppcluster import FILE...``: 0 done (warnings possible), 1 failed, 2 bad configuration."""
    from xmppcluster.ops.admin import _react

    config = _load_config(args.config)
    if config is None:
        return 2
    return _react(lambda: _import(args, config))


async def _import(args: argparse.Namespace, config: Any) -> int:
    from xmppcluster.storage import StorageError, open_storage

    iterations = config.auth.scram_iterations
    bar = _Progress(_progress_stream(args), "read")
    report = None
    try:
        storage = await open_storage(config.user_db_uri, scram_iterations=iterations)
        try:
            report = await import_files(
                storage.db, args.files, iterations=iterations, replace=args.replace, hosts=config.virt_hosts,
                batch_size=args.batch_size, warn=bar.note,
                progress=bar)
        finally:
            bar.end()
            await storage.close()
    except (ProvisionError, StorageError, OSError) as e:
        print(f"{_PROG}: import failed: {e}", file=sys.stderr)
        return 1
    for kind, count in sorted(report.warnings.items()):
        if count > WARNINGS_SHOWN:
            print(f"{_PROG}: warning: {count} times in all: {kind}", file=sys.stderr)
    print(f"imported {report.imported} accounts ({report.replaced} replaced, {report.skipped} skipped,"
          f" {report.derived} from plaintext passwords) in {report.seconds:.1f} s: {report.rate:,.0f} accounts/s",
          file=sys.stderr)
    return 0


def export_main(args: argparse.Namespace) -> int:
    """``xmppcluster export [FILE]``: 0 done, 1 failed, 2 bad configuration."""
    from xmppcluster.ops.admin import _react

    config = _load_config(args.config)
    if config is None:
        return 2
    return _react(lambda: _export(args, config))


async def _export(args: argparse.Namespace, config: Any) -> int:
    from xmppcluster.storage import StorageError, open_storage

    bar = _Progress(_progress_stream(args), "written")
    target = Path(args.file) if args.file and args.file != "-" else None
    if target is not None and target.exists() and not args.force:
        print(f"{_PROG}: {target} exists (use --force to overwrite it)", file=sys.stderr)
        return 1
    partial = target.with_name(target.name + ".partial") if target is not None else None
    try:
        storage = await open_storage(config.user_db_uri)
        try:
            if partial is None:
                count = await export_database(storage.db, sys.stdout.buffer, domains=args.domain, progress=bar)
                sys.stdout.buffer.flush()
            else:
                # The file holds credentials: readable by its owner only (XEP-0227 Security Considerations).
                fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb", buffering=1 << 20) as out:
                    count = await export_database(storage.db, out, domains=args.domain, progress=bar)
                os.replace(partial, target)
        finally:
            bar.end()
            await storage.close()
    except (StorageError, OSError) as e:
        if partial is not None:
            partial.unlink(missing_ok=True)
        print(f"{_PROG}: export failed: {e}", file=sys.stderr)
        return 1
    print(f"exported {count} accounts" + (f" to {target}" if target else ""), file=sys.stderr)
    return 0


def write_synthetic(out: IO[bytes], domain: str, count: int, *, roster_size: int = 20, password: str | None = None,
                    plaintext: bool = False, iterations: int = DEFAULT_ITERATIONS, prefix: str = "user") -> None:
    """Write a XEP-0227 document of ``count`` users ``{prefix}{n}@{domain}`` (n from 1), each with a roster of
    the next ``roster_size`` users (mutual ``both``), for benchmarks and tests.

    Every user gets the password ``password`` (default: the user's own name): as SCRAM credentials derived
    once and shared by every user when ``password`` is given (the same salt for all: for load tests only),
    else as a plaintext ``password`` attribute (``plaintext``, or when ``password`` is None).
    """
    out.write(f"<?xml version='1.0' encoding='UTF-8'?>\n<server-data xmlns='{NS_PIE}'>\n"
              f"  <host jid='{_attr(domain)}'>\n".encode())
    scram = ""
    if password is not None and not plaintext:
        for mechanism in SCRAM_HASHES:
            c = derive(mechanism, password, iterations=iterations)
            scram += (f"<scram-credentials xmlns='{NS_SCRAM}' mechanism='{mechanism}'><iter-count>{c.iterations}"
                      f"</iter-count><salt>{_b64(c.salt)}</salt><server-key>{_b64(c.server_key)}</server-key>"
                      f"<stored-key>{_b64(c.stored_key)}</stored-key></scram-credentials>")
    size = min(roster_size, count - 1)
    for n in range(1, count + 1):
        name = f"{prefix}{n}"
        secret = "" if scram else f" password='{_attr(password if password is not None else name)}'"
        items = "".join(f"<item jid='{prefix}{(n - 1 + k) % count + 1}@{_attr(domain)}' subscription='both'>"
                        "<group>Bench</group></item>" for k in range(1, size + 1))
        roster = f"<query xmlns='{NS_ROSTER}'>{items}</query>" if items else ""
        out.write(f"    <user name='{name}'{secret}>{scram}{roster}</user>\n".encode())
    out.write(b"  </host>\n</server-data>\n")
