"""Exporting accounts as one canonical XEP-0227 document (export -> import -> export is byte-identical)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
from typing import IO

from twisted.internet.defer import Deferred

from xmppcluster.core.jid import nameprep
from xmppcluster.core.serializer import escape_text, quote
from xmppcluster.ops.provision.importer import BATCH_SIZE
from xmppcluster.ops.provision.model import BLOCKLIST_NAME, NS_PIE, NS_PRIVACY, NS_PRIVATE, NS_ROSTER, NS_SCRAM
from xmppcluster.storage.database import Cursor, Database

__all__ = ["export_database"]

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
    out = [f"    <user name={quote(user)}>\n"]
    for mechanism, iterations, salt, server_key, stored_key in page["credentials"].get(user, ()):
        out.append(f"      <scram-credentials xmlns='{NS_SCRAM}' mechanism={quote(mechanism)}>"
                   f"<iter-count>{int(iterations)}</iter-count><salt>{_b64(salt)}</salt>"
                   f"<server-key>{_b64(server_key)}</server-key><stored-key>{_b64(stored_key)}</stored-key>"
                   "</scram-credentials>\n")
    roster = page["roster"].get(user)
    if roster:
        out.append(f"      <query xmlns='{NS_ROSTER}'>\n")
        for contact, name, subscription, ask, approved, groups in roster:
            attrs = f"jid={quote(contact)}"
            if name is not None:
                attrs += f" name={quote(name)}"
            attrs += f" subscription='{subscription}'"
            if ask:
                attrs += " ask='subscribe'"
            if approved:
                attrs += " approved='true'"
            group_xml = "".join(f"<group>{escape_text(g)}</group>" for g in sorted(json.loads(groups or "[]")))
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
        items = "".join(f"<item type='jid' value={quote(jid)} action='deny' order='{n}'/>"
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
            out.write(f"  <host jid={quote(domain)}>\n".encode())
            current = domain
        out.write("".join(_user_xml(user, page) for user in users).encode("utf-8"))
        done += len(users)
        if progress is not None:
            progress(done, done / len(keys))
    if current is not None:
        out.write(b"  </host>\n")
    out.write(b"</server-data>\n")
    return len(keys)
