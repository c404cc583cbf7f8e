"""XEP-0313 Message Archive Management (urn:xmpp:mam:2) with XEP-0359 stanza-ids and XEP-0059 paging.

Archiving: a chat or normal message with a body (or a XEP-0334 ``<store/>`` hint; never with ``<no-store/>``
or ``<no-permanent-store/>``) is archived once for each local account it concerns:

- *incoming*, for the recipient, where the router decides its delivery (``message/bare``, ``message/full``
  for an existing resource): the node the sender is on, or the node that received it over federation. The
  message is stamped there with ``<stanza-id xmlns='urn:xmpp:sid:0' by='user@domain' id=…/>`` before it goes
  anywhere: to a session here, on the cluster link to another node (which writes it out as it is), or to
  offline storage (so the offline copy and the archive carry the same id and the message is archived once);
- *outgoing*, for the sender, on the sender's node (``message/outgoing``); a message to the account itself is
  archived once, as incoming.

Why there: the routing node is the one place that sees each message exactly once per account; the node that
finally writes it to a client may not see it at all as an element (routed frames are written as text).

A stanza-id is the archive time (8 bytes), 7 random bytes and a 6-byte HMAC of them and the account under a
secret every node shares (``server_secrets``), base64url: an account's ids grow with time, so the archive's
primary key is appended to (random ids made each insert cost more as the table grew: 8 us a row at first,
40 us at 160,000 rows). A message that comes through routing again (its session vanished, its node
died: the RFC 6121 fallback) still carries our stanza-id, whose MAC proves it was archived already; any other
stanza-id ``by`` the account (a client or remote server forging one) is removed before delivery.

Writes are batched: rows collect for :data:`BATCH_DELAY` (and while the previous batch is being written) and
are inserted in one transaction. A query first waits for the rows still in memory, so an archive always
answers with everything archived before the query arrived. A node that dies loses the rows of its current
batch (about the last 20 ms of messages; docs/im.rst).

Queries: the owner only (``forbidden`` otherwise); the XEP-0004 form fields with, start, end, before-id,
after-id, ids (urn:xmpp:mam:2#extended), RSM max/after/before, ``<flip-page/>``; at most :attr:`MAX_PAGE`
messages a page whatever ``max`` says.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import random
from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.task import LoopingCall, deferLater
from twisted.words.xish import domish

from xmppcluster.core import stanza as stanzas
from xmppcluster.core.events import MESSAGE_BARE, MESSAGE_FULL, MESSAGE_OUTGOING
from xmppcluster.core.jid import JID, InvalidJID, parse_jid
from xmppcluster.core.keyed import KeyedQueue
from xmppcluster.core.namespaces import CLIENT
from xmppcluster.core.serializer import serialize, tag
from xmppcluster.core.sessions import BoundSession
from xmppcluster.modules import forms
from xmppcluster.modules.base import Module, StanzaError, hook, iq
from xmppcluster.storage.archive import (
    IN,
    OUT,
    ArchivedMessage,
    ArchivePrefs,
    ArchivePrefsStore,
    ArchiveQuery,
    ArchiveStore,
    UnknownArchiveId,
)

NS = "urn:xmpp:mam:2"
EXTENDED = "urn:xmpp:mam:2#extended"
SID = "urn:xmpp:sid:0"
RSM = "http://jabber.org/protocol/rsm"
FORWARD = "urn:xmpp:forward:0"
DELAY = "urn:xmpp:delay"
HINTS = "urn:xmpp:hints"

#: Runs after blocking (a refused message is not archived), before carbons (the carbon shows the stanza-id).
PRIORITY = -50
#: The most messages one page returns (a larger RSM max is capped).
MAX_PAGE = 250
#: The page size when the query has no RSM max.
DEFAULT_PAGE = 50
#: Seconds rows collect before they are written (a batch also waits while the previous one is written):
#: one transaction, and one hand-off to the database thread, per batch instead of per message.
BATCH_DELAY = 0.02
MAX_QUERYID = 256
#: Result messages written before letting the reactor run other work (and waiting for the client to read).
RESULTS_PER_TURN = 25
#: JIDs in each preference list at most.
MAX_PREFS_JIDS = 1000
#: Seconds between two looks at the preferences other nodes wrote.
PREFS_REFRESH = 2.0


def archivable(stanza: domish.Element) -> bool:
    """Chat or normal with a body or a ``<store/>`` hint, and no ``<no-store/>``/``<no-permanent-store/>``."""
    if (stanza.getAttribute("type") or "normal") not in ("normal", "chat"):
        return False
    keep = False
    for child in stanza.children:
        if isinstance(child, str):
            continue
        if child.uri == HINTS:
            if child.name in ("no-store", "no-permanent-store"):
                return False
            keep = keep or child.name == "store"
        elif child.uri == CLIENT and child.name == "body":
            keep = True
    return keep


def stamp(us: int) -> str:
    """XEP-0082 DateTime in UTC with microseconds (what ``start``/``end`` compare with exactly)."""
    return datetime.fromtimestamp(us // 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{us % 1_000_000:06d}Z"


def parse_stamp(text: str) -> int:
    """A XEP-0082 DateTime as microseconds since the epoch; ``bad-request`` when it is not one."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise StanzaError("bad-request", "start and end take a XEP-0082 DateTime") from None
    if when.tzinfo is None:
        raise StanzaError("bad-request", "a DateTime needs a time zone (Z)")
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _settled(d: Deferred) -> Deferred:
    """A Deferred firing with None once ``d`` fires, leaving ``d``'s result alone."""
    done: Deferred = Deferred()
    d.addBoth(lambda result: (done.callback(None), result)[1])
    return done


class ArchiveWriter:
    """Collects archive rows and writes them in batches: one transaction per :data:`BATCH_DELAY` (or per write
    already running), never more than one write at a time."""

    def __init__(self, store: ArchiveStore, reactor: Any, log: Any) -> None:
        self.store = store
        self.reactor = reactor
        self.log = log
        self._rows: list[ArchivedMessage] = []
        self._call: Any = None
        self._running: Deferred | None = None
        #: rows written, and rows lost to a failed write (metrics, tests)
        self.written = 0
        self.failed = 0

    def add(self, row: ArchivedMessage) -> None:
        self._rows.append(row)
        if self._running is None and self._call is None:
            self._call = self.reactor.callLater(BATCH_DELAY, self._start)

    def _start(self) -> Deferred:
        self._call = None
        running = self._running
        if running is None:
            running = ensureDeferred(self._drain())
            # A drain that finished at once (nothing to wait for) has already reset _running.
            self._running = None if running.called else running
        return running

    async def _drain(self) -> None:
        try:
            while self._rows:
                rows, self._rows = self._rows, []  # all at once: one transaction, 500 rows a statement
                try:
                    self.written += await self.store.add(rows)
                except Exception:
                    self.failed += len(rows)
                    self.log.failure("archiving {n} messages failed", n=len(rows))
        finally:
            self._running = None

    def flush(self) -> Deferred:
        """Fires once every row added so far is written (or failed)."""
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if not self._rows and self._running is None:
            return succeed(None)

        async def wait() -> None:
            while self._rows or self._running is not None:
                running = self._running if self._running is not None else self._start()
                await _settled(running)

        return ensureDeferred(wait())


def prefs_reply(request: domish.Element, prefs: ArchivePrefs) -> domish.Element:
    reply = stanzas.result(request)
    element = reply.addElement((NS, "prefs"))
    element["default"] = prefs.default
    for name, jids in (("always", prefs.always), ("never", prefs.never)):
        wrapper = element.addElement(name)
        for jid in sorted(jids):
            wrapper.addElement("jid", content=jid)
    return reply


def result_xml(item: ArchivedMessage, owner: str, to: str, queryid: str | None) -> bytes:
    """``<message><result><forwarded><delay/>stanza</forwarded></result></message>`` as UTF-8, written around
    the archived text as it is (it is our serializer's output, with its xmlns)."""
    delay = tag("delay", {"xmlns": DELAY, "stamp": stamp(item.ts)})
    forwarded = tag("forwarded", {"xmlns": FORWARD}, delay + item.stanza.decode("utf-8"))
    result = tag("result", {"xmlns": NS, "queryid": queryid, "id": item.id}, forwarded)
    return tag("message", {"xmlns": CLIENT, "from": owner, "to": to}, result).encode("utf-8")


class MessageArchive(Module):
    """XEP-0313: archive messages per account, answer the owner's queries."""

    name = "mam"
    #: Off unless ``--sm-plugins=+mam``: archiving costs 1:1 chat throughput far more than issue #17 allows
    #: (bench/mam.py; docs/im.rst), until that is brought down.
    default = False
    account_features = (NS, EXTENDED, SID)

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.store: ArchiveStore | None = None
        self.prefs_store: ArchivePrefsStore | None = None
        #: XEP-0441 preferences of the accounts that set some (all of them, every node; reloaded every few s)
        self.prefs: dict[str, ArchivePrefs] = {}
        self._prefs_since = 0.0
        self._prefs_loop: LoopingCall | None = None
        self.writer: ArchiveWriter | None = None
        #: HMAC key of stanza-ids; a node-local one until the shared one is read at start
        self.key = os.urandom(32)
        self._last_us = 0
        self._random = random.Random(os.urandom(32))
        #: resource -> the query being answered for it
        self._queries = KeyedQueue()

    def start(self) -> None:
        db = getattr(self.server.storage, "db", None)
        if db is None:
            return
        self.store = ArchiveStore(db)
        self.writer = ArchiveWriter(self.store, self.server.clock, self.log)
        self.prefs_store = ArchivePrefsStore(db)
        self._prefs_loop = LoopingCall(self._reload_prefs)
        self._prefs_loop.clock = self.server.clock
        self._prefs_loop.start(PREFS_REFRESH, now=True).addErrback(
            lambda failure: self.log.failure("reloading archive preferences stopped", failure))
        from xmppcluster.storage.secrets import shared_secret

        def got(key: bytes) -> None:
            self.key = key

        d = ensureDeferred(shared_secret(db, "mam-stanza-id"))
        d.addCallbacks(got, lambda failure: self.log.failure("reading the stanza-id secret failed", failure))

    def stop(self) -> Deferred:
        if self._prefs_loop is not None and self._prefs_loop.running:
            self._prefs_loop.stop()
        return self.writer.flush() if self.writer is not None else succeed(None)

    async def _reload_prefs(self) -> None:
        """Take in the preferences written (here or on another node) since the last look; a margin covers
        clocks of nodes a little apart."""
        assert self.prefs_store is not None
        try:
            rows = await self.prefs_store.changed_since(self._prefs_since - 5.0)
        except Exception:
            self.log.failure("reading archive preferences failed")
            return
        for bare, prefs, updated in rows:
            self.prefs[bare] = prefs
            self._prefs_since = max(self._prefs_since, updated)

    # -- stanza-ids ------------------------------------------------------------------------------------

    def _mac(self, nonce: bytes, owner: str) -> bytes:
        return hmac.new(self.key, nonce + owner.encode(), hashlib.sha256).digest()[:6]

    def new_id(self, owner: str, ts: int) -> str:
        """A stanza-id for ``owner`` archived at ``ts`` (microseconds): the time first, so an account's ids
        grow with time and the archive's primary key is appended to, not written all over."""
        # Not os.urandom: a system call per message releases the GIL to the database thread (measured: 12 us
        # a call under load). The random part only keeps ids apart; the MAC is what cannot be forged.
        nonce = ts.to_bytes(8, "big") + self._random.getrandbits(56).to_bytes(7, "big")
        return base64.urlsafe_b64encode(nonce + self._mac(nonce, owner)).decode()

    def ours(self, id: str, owner: str) -> bool:
        """Whether ``id`` is a stanza-id this cluster made for ``owner``."""
        try:
            raw = base64.urlsafe_b64decode(id.encode("ascii")) if len(id) == 28 else b""
        except (ValueError, UnicodeEncodeError):
            return False
        return len(raw) == 21 and hmac.compare_digest(raw[15:], self._mac(raw[:15], owner))

    def _now_us(self) -> int:
        now = int(self.server.clock.seconds() * 1_000_000)
        self._last_us = now if now > self._last_us else self._last_us + 1
        return self._last_us

    # -- archiving -------------------------------------------------------------------------------------

    def decide(self, owner: str, other: JID) -> bool | None:
        """XEP-0441: archive a message of ``owner`` with ``other``? None: only if ``other`` is in the owner's
        roster (default ``roster``), which the archive's write checks."""
        prefs = self.prefs.get(owner)
        if prefs is None:
            return True
        full, bare = other.full(), other.userhost()
        if full in prefs.never or bare in prefs.never:
            return False
        if full in prefs.always or bare in prefs.always:
            return True
        return {"always": True, "never": False}.get(prefs.default)

    def _archive(self, stanza: domish.Element, owner: str, direction: str, jid: JID, id: str, ts: int,
                 decision: bool | None) -> None:
        user, _, domain = owner.partition("@")
        assert self.writer is not None
        self.writer.add(ArchivedMessage(user, domain, id, ts, jid.userhost(), jid.resource or "",
                                        direction, serialize(stanza).encode("utf-8"), if_in_roster=decision is None))

    @hook(MESSAGE_OUTGOING, PRIORITY)
    def outgoing(self, stanza: domish.Element, session: BoundSession) -> bool:
        if self.writer is None or not self.serves(session.bare.partition("@")[2]):
            return False
        to = stanza.getAttribute("to")
        if to is None or not archivable(stanza):
            return False
        bare = session.bare
        try:
            jid = parse_jid(to)
        except InvalidJID:
            return False
        if jid.userhost() == bare:
            return False  # to the account itself: archived once, as incoming
        decision = self.decide(bare, jid)
        if decision is not False:
            ts = self._now_us()
            self._archive(stanza, bare, OUT, jid, self.new_id(bare, ts), ts, decision)
        return False

    @hook(MESSAGE_BARE, PRIORITY)
    def to_bare(self, stanza: domish.Element, bare: str, sender: BoundSession | None) -> bool:
        self._incoming(stanza, bare)
        return False

    @hook(MESSAGE_FULL, PRIORITY)
    def to_full(self, stanza: domish.Element, bare: str, resource: str, session: BoundSession | None,
                sender: BoundSession | None) -> bool:
        if session is not None:  # otherwise it goes on to the bare JID (archived there) or is answered
            self._incoming(stanza, bare)
        return False

    def _incoming(self, stanza: domish.Element, bare: str) -> None:
        archived = False
        forged = []
        for child in stanza.elements(SID, "stanza-id"):
            if child.getAttribute("by") == bare:
                if not archived and self.ours(child.getAttribute("id") or "", bare):
                    archived = True  # routed again (RFC 6121 fallback): archived when it was first routed
                else:
                    forged.append(child)
        for child in forged:
            stanza.children.remove(child)
        if archived or self.writer is None or not self.serves(bare.partition("@")[2]) or not archivable(stanza):
            return
        try:
            jid = parse_jid(stanza.getAttribute("from") or bare.partition("@")[2])
        except InvalidJID:
            return
        decision = self.decide(bare, jid)
        if decision is False:
            return
        ts = self._now_us()
        id = self.new_id(bare, ts)
        mark = stanza.addElement((SID, "stanza-id"))
        mark["by"] = bare
        mark["id"] = id
        self._archive(stanza, bare, IN, jid, id, ts, decision)

    # -- queries ---------------------------------------------------------------------------------------

    def _owner(self, request: domish.Element, sender: BoundSession | None) -> str:
        if sender is None or self.target(request, sender) != sender.bare:
            raise StanzaError("forbidden", "only the owner may query an archive")
        if self.store is None:
            raise StanzaError("service-unavailable", "no archive storage")
        return sender.bare

    @iq("get", NS, to=("account",))
    async def get(self, request: domish.Element, sender: BoundSession | None) -> domish.Element:
        """The query form (XEP-0313 §5.1.1), or the preferences (XEP-0441)."""
        owner = self._owner(request, sender)
        child = stanzas.first_child(request)
        if child.name == "prefs":
            assert self.prefs_store is not None
            user, _, domain = owner.partition("@")
            return prefs_reply(request, await self.prefs_store.get(user, domain) or ArchivePrefs())
        if child.name != "query":
            raise StanzaError("bad-request", "expected <query/> or <prefs/>")
        reply = stanzas.result(request)
        query = reply.addElement((NS, "query"))
        query.addChild(forms.build("form", [
            forms.hidden_form_type(NS),
            forms.Field("with", "jid-single"),
            forms.Field("start", "text-single"),
            forms.Field("end", "text-single"),
            forms.Field("before-id", "text-single"),
            forms.Field("after-id", "text-single"),
            forms.Field("ids", "text-multi"),
        ]))
        return reply

    @iq("set", NS, to=("account",))
    async def set(self, request: domish.Element, sender: BoundSession | None) -> domish.Element:
        """A query: the matching messages as ``<result/>`` messages, then the IQ result with ``<fin/>``; or new
        preferences (XEP-0441), answered with the preferences as stored."""
        owner = self._owner(request, sender)
        assert sender is not None and self.store is not None
        element = stanzas.first_child(request)
        if element.name == "prefs":
            return await self._set_prefs(request, element, owner)
        if element.name != "query":
            raise StanzaError("bad-request", "expected <query/> or <prefs/>")
        queryid = element.getAttribute("queryid")
        if queryid is not None and len(queryid) > MAX_QUERYID:
            raise StanzaError("bad-request", "queryid too long")
        q, flip = self._parse(element)
        # One query at a time per resource: a client pipelining queries gets them answered in turn.
        return await self._queries.run(sender.jid, self._answer, request, sender, owner, q, flip, queryid)

    async def _answer(self, request: domish.Element, sender: BoundSession, owner: str, q: ArchiveQuery,
                      flip: bool, queryid: str | None) -> domish.Element:
        assert self.store is not None
        if self.writer is not None:
            await self.writer.flush()
        user, _, domain = owner.partition("@")
        try:
            page = await self.store.query(user, domain, q)
        except UnknownArchiveId:
            raise StanzaError("item-not-found", "no such id in the archive") from None
        items = list(reversed(page.items)) if flip else page.items
        stream = getattr(sender, "stream", None)
        for n, item in enumerate(items):
            if n and n % RESULTS_PER_TURN == 0:
                # Let other clients' work run, and never build up more output than this client reads.
                await deferLater(self.server.clock, 0, lambda: None)
                if stream is not None:
                    await stream.output_ready()
            if not sender.is_open:
                break
            sender.deliver_serialized(result_xml(item, owner, sender.jid, queryid))
        reply = stanzas.result(request)
        fin = reply.addElement((NS, "fin"))
        if page.complete:
            fin["complete"] = "true"
        rsm = fin.addElement((RSM, "set"))
        if page.items:
            rsm.addElement("first", content=page.items[0].id)
            rsm.addElement("last", content=page.items[-1].id)
        rsm.addElement("count", content=str(page.count))
        return reply

    async def _set_prefs(self, request: domish.Element, element: domish.Element, owner: str) -> domish.Element:
        default = element.getAttribute("default")
        if default not in ("always", "never", "roster"):
            raise StanzaError("bad-request", "default must be always, never or roster")
        lists: dict[str, set[str]] = {"always": set(), "never": set()}
        for child in element.elements(NS):
            if child.name not in lists:
                continue
            for item in child.elements(NS, "jid"):
                try:
                    jid = parse_jid(str(item).strip())
                except InvalidJID:
                    raise StanzaError("jid-malformed", "not a JID in the preferences") from None
                lists[child.name].add(jid.full())
                if len(lists[child.name]) > MAX_PREFS_JIDS:
                    raise StanzaError("not-acceptable", f"at most {MAX_PREFS_JIDS} JIDs in each list")
        # A JID in both lists: never wins (the safer choice for the user's privacy).
        prefs = ArchivePrefs(default, frozenset(lists["always"] - lists["never"]), frozenset(lists["never"]))
        user, _, domain = owner.partition("@")
        assert self.prefs_store is not None
        await self.prefs_store.set(user, domain, prefs, float(self.server.clock.seconds()))
        self.prefs[owner] = prefs
        return prefs_reply(request, prefs)

    def _parse(self, element: domish.Element) -> tuple[ArchiveQuery, bool]:
        q = ArchiveQuery(max=DEFAULT_PAGE)
        form = forms.find(element)
        if form is not None:
            values = forms.parse_submit(form)
            form_type = forms.single(values, "FORM_TYPE", required=False)
            if form_type not in (None, NS):
                raise StanzaError("bad-request", f"FORM_TYPE must be {NS}")
            unknown = set(values) - {"FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids"}
            if unknown:
                raise StanzaError("feature-not-implemented", f"unknown field {sorted(unknown)[0]}")
            with_ = forms.single(values, "with", required=False)
            if with_ is not None:
                try:
                    jid = parse_jid(with_)
                except InvalidJID:
                    raise StanzaError("jid-malformed", "with is not a JID") from None
                q.with_jid, q.with_resource = jid.userhost(), jid.resource
            start = forms.single(values, "start", required=False)
            end = forms.single(values, "end", required=False)
            q.start = parse_stamp(start) if start is not None else None
            q.end = parse_stamp(end) if end is not None else None
            q.before_id = forms.single(values, "before-id", required=False)
            q.after_id = forms.single(values, "after-id", required=False)
            if "ids" in values:
                q.ids = [value.strip() for value in values["ids"] if value.strip()]
        rsm = next(element.elements(RSM, "set"), None)
        if rsm is not None:
            for child in rsm.elements():
                if child.uri != RSM:
                    continue
                text = str(child).strip()
                if child.name == "max":
                    if not text.isdigit() or len(text) > 9:
                        raise StanzaError("bad-request", "RSM max must be a non-negative integer")
                    q.max = int(text)
                elif child.name == "after":
                    if not text:
                        raise StanzaError("bad-request", "RSM after needs an id")
                    q.after = text
                elif child.name == "before":
                    q.before = text
                elif child.name == "index":
                    raise StanzaError("feature-not-implemented", "RSM index is not supported; page by id")
            if q.after is not None and q.before is not None:
                raise StanzaError("bad-request", "RSM after and before together")
        q.max = min(q.max, MAX_PAGE)
        flip = next(element.elements(NS, "flip-page"), None) is not None
        return q, flip

