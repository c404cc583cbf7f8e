"""XEP-0050: Ad-Hoc Commands, the framework. Other modules register :class:`Command` objects; this module
lists them in disco (node ``http://jabber.org/protocol/commands``, only those the requester may run), runs
them with data forms (XEP-0004), and keeps the sessions of multi-step commands: bound to the requester's
full JID, at most :data:`MAX_SESSIONS_PER_USER` open per account and :data:`MAX_SESSIONS` per node, each
forgotten after :data:`SESSION_TIMEOUT` seconds.

A command is one form then one result: ``execute`` answers the form (status ``executing``, the only
action ``complete``); ``complete`` (or ``execute``) with the filled form runs it (status ``completed``
with a note and/or a result form); ``cancel`` ends the session. A command without a form runs at once.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from twisted.words.xish import domish

from xmppcluster.core import stanza as stanzas
from xmppcluster.core.jid import parse_jid
from xmppcluster.modules import forms
from xmppcluster.modules.base import Module, StanzaError, iq

COMMANDS = "http://jabber.org/protocol/commands"

#: Open sessions (a form sent, no answer yet) per account, and on this node; a new one beyond is refused.
MAX_SESSIONS_PER_USER = 5
MAX_SESSIONS = 1000
#: Seconds an open session waits for its form before it is forgotten (session-expired).
SESSION_TIMEOUT = 300.0
ACTIONS = ("execute", "cancel", "prev", "next", "complete")


class CommandError(StanzaError):
    """A stanza error with a XEP-0050 specific condition (``bad-action``, ``bad-sessionid``, ...)."""

    def __init__(self, condition: str, specific: str, text: str | None = None) -> None:
        super().__init__(condition, text)
        self.specific = specific


@dataclass
class Context:
    """Who runs a command, and on which domain."""

    domain: str
    #: The requester's bare and full JIDs.
    requester: str
    jid: str
    sender: Any


@dataclass
class Outcome:
    """What a completed command answers: a note, and/or a result form."""

    note: str | None = None
    note_type: str = "info"
    form: domish.Element | None = None


class Command:
    """One command: its node, its name, who may run it, its form and what it does."""

    node: str = ""
    name: str = ""

    def allowed(self, requester: str | None, domain: str) -> bool:
        """May ``requester`` (a bare JID; None for nobody) list and run this command on ``domain``?"""
        return False

    async def form(self, ctx: Context) -> domish.Element | None:
        """The form to fill (``type='form'``), or None to run at once."""
        return None

    async def run(self, ctx: Context, values: dict[str, list[str]]) -> Outcome:
        """Do it, with the submitted ``values`` (field var -> values; empty for a command without form)."""
        raise NotImplementedError


@dataclass
class _Session:
    sid: str
    node: str
    jid: str
    requester: str
    timer: Any


class AdHoc(Module):
    name = COMMANDS
    features = (COMMANDS,)
    inject_as = "adhoc"

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.commands: dict[str, Command] = {}
        self.sessions: dict[str, _Session] = {}
        self.per_user: dict[str, int] = {}

    def register(self, command: Command) -> None:
        """Offer ``command`` (a module calls this from ``start``)."""
        self.commands[command.node] = command

    def stop(self) -> None:
        for sid in list(self.sessions):
            self._close(sid)

    # -- disco (xmppcluster/modules/disco.py asks) ---------------------------------------------------

    def visible(self, requester: str | None, domain: str) -> list[Command]:
        return [c for c in self.commands.values() if c.allowed(requester, domain)]

    def disco_items(self, node: str, domain: str, requester: str | None) -> list[tuple[str, str, str]] | None:
        """(jid, node, name) of the commands ``requester`` may run, for the commands node; else None."""
        if node != COMMANDS:
            return None
        return [(domain, c.node, c.name) for c in self.visible(requester, domain)]

    def disco_info(self, node: str, domain: str,
                   requester: str | None) -> tuple[list[tuple[str, str, str]], list[str]] | None:
        """Identities (category, type, name) and features of the commands node or of a command node."""
        if node == COMMANDS:
            return [("automation", "command-list", "Commands")], [COMMANDS]
        command = self.commands.get(node)
        if command is None or not command.allowed(requester, domain):
            return None
        return [("automation", "command-node", command.name)], [COMMANDS, forms.DATA]

    # -- execution ---------------------------------------------------------------------------------

    @iq("set", COMMANDS, to=("server",))
    async def execute(self, request: domish.Element, sender: Any) -> domish.Element:
        try:
            return await self._execute(request, sender)
        except StanzaError as err:
            return _error(request, err)
        except Exception:
            self.log.failure("ad-hoc command {node} failed", node=_node_of(request))
            return _error(request, StanzaError("internal-server-error"))

    async def _execute(self, request: domish.Element, sender: Any) -> domish.Element:
        element = stanzas.first_child(request)
        assert element is not None
        node = element.getAttribute("node") or ""
        action = element.getAttribute("action") or "execute"
        sid = element.getAttribute("sessionid")
        domain = parse_jid(request["to"]).host
        command = self.commands.get(node)
        if command is None:
            raise StanzaError("item-not-found")
        if sender is None or not command.allowed(sender.bare, domain):
            raise StanzaError("forbidden")
        if action not in ACTIONS:
            raise CommandError("bad-request", "malformed-action")
        ctx = Context(domain, sender.bare, sender.jid, sender)
        if sid is None:
            if action != "execute":
                raise CommandError("bad-request", "bad-action", "start a command with execute")
            form = await command.form(ctx)
            if form is None:
                return _reply(request, node, secrets.token_hex(8), "completed", await command.run(ctx, {}))
            sid = self._open(node, sender)
            return _reply(request, node, sid, "executing", Outcome(form=form), actions=True)
        session = self.sessions.get(sid)
        if session is None or session.jid != sender.jid or session.node != node:
            raise CommandError("bad-request", "bad-sessionid")
        if action in ("prev", "next"):
            raise CommandError("bad-request", "bad-action", "this command has one step: complete or cancel")
        self._close(sid)
        if action == "cancel":
            return _reply(request, node, sid, "canceled", Outcome())
        form = forms.find(element)
        if form is None:
            raise CommandError("bad-request", "bad-payload", "the filled form is missing")
        return _reply(request, node, sid, "completed", await command.run(ctx, forms.parse_submit(form)))

    def _open(self, node: str, sender: Any) -> str:
        if self.per_user.get(sender.bare, 0) >= MAX_SESSIONS_PER_USER or len(self.sessions) >= MAX_SESSIONS:
            raise StanzaError("resource-constraint", "too many open command sessions; complete or cancel one")
        sid = secrets.token_hex(16)
        timer = self.server.clock.callLater(SESSION_TIMEOUT, self._close, sid)
        self.sessions[sid] = _Session(sid, node, sender.jid, sender.bare, timer)
        self.per_user[sender.bare] = self.per_user.get(sender.bare, 0) + 1
        return sid

    def _close(self, sid: str) -> None:
        session = self.sessions.pop(sid, None)
        if session is None:
            return
        if session.timer.active():
            session.timer.cancel()
        left = self.per_user.get(session.requester, 1) - 1
        if left:
            self.per_user[session.requester] = left
        else:
            self.per_user.pop(session.requester, None)


def _reply(request: domish.Element, node: str, sid: str, status: str, outcome: Outcome, *,
           actions: bool = False) -> domish.Element:
    reply = stanzas.result(request)
    command = reply.addElement((COMMANDS, "command"))
    command["node"] = node
    command["sessionid"] = sid
    command["status"] = status
    if actions:
        offered = command.addElement("actions")
        offered["execute"] = "complete"
        offered.addElement("complete")
    if outcome.note:
        note = command.addElement("note", content=outcome.note)
        note["type"] = outcome.note_type
    if outcome.form is not None:
        command.addChild(outcome.form)
    return reply


def _node_of(request: domish.Element) -> str:
    element = stanzas.first_child(request)
    return (element.getAttribute("node") if element is not None else None) or ""


def _error(request: domish.Element, err: StanzaError) -> domish.Element:
    """The error reply, echoing the ``<command/>`` element's node, sessionid and action (clients find their
    session by them) but not its payload (large, or holding a password); with the XEP-0050 condition if any."""
    bare = stanzas.make("iq", to=request.getAttribute("to"), frm=request.getAttribute("from"), type="set",
                        id=request.getAttribute("id"))
    element = stanzas.first_child(request)
    if element is not None:
        echo = bare.addElement((COMMANDS, "command"))
        for name in ("node", "sessionid", "action"):
            value = element.getAttribute(name)
            if value is not None and len(value) <= 1024:
                echo[name] = value
    reply = stanzas.error_reply(bare, err.condition, type=err.type, text=err.text)
    specific = getattr(err, "specific", None)
    if specific:
        error = next(child for child in reply.elements() if child.name == "error")
        error.addElement((COMMANDS, specific))
    return reply
