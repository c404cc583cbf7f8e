"""XEP-0133: Service Administration, as ad-hoc commands (modules/adhoc.py) for the JIDs in ``--admins``.

Everyone else neither sees these commands in disco nor may run them (``forbidden``). Administrators act on
the accounts of every virtual host of the server; user counts, lists, announcements and the message of the
day concern the domain the command is sent to. Online users are counted from the session registry, which
in a cluster holds every node's sessions, so they are cluster-wide. The message of the day lives in the
database (every node agrees) and is sent to each session at its initial presence. A project command,
``urn:xmppcluster:commands#cluster-status``, shows the nodes, their links and sessions (as
``xmppcluster cluster-status`` does). docs/administration.rst lists the commands.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.words.xish import domish

from xmppcluster.auth.credentials import saslprep
from xmppcluster.core import stanza as stanzas
from xmppcluster.core.events import ACCOUNT_REMOVED, PRESENCE_INITIAL
from xmppcluster.core.jid import InvalidJID, parse_jid
from xmppcluster.modules import forms
from xmppcluster.modules.adhoc import AdHoc, Command, Context, Outcome
from xmppcluster.modules.base import Module, StanzaError, hook
from xmppcluster.modules.forms import Field, hidden_form_type
from xmppcluster.storage.errors import AccountExists, NoSuchAccount
from xmppcluster.storage.motd import MotdStore

ADMIN = "http://jabber.org/protocol/admin"
CLUSTER_STATUS = "urn:xmppcluster:commands#cluster-status"
MAX_PASSWORD_BYTES = 1023
#: Seconds a node may go on sending a message of the day another node changed (this node's own changes
#: take effect at once).
MOTD_CACHE_SECONDS = 10.0
LIST_SIZES = ("25", "50", "75", "100", "150", "200", "none")


def _form(title: str, fields: list[Field], instructions: str | None = None) -> domish.Element:
    return forms.build("form", [hidden_form_type(ADMIN), *fields], title=title, instructions=instructions)


def _result(fields: list[Field]) -> domish.Element:
    return forms.build("result", [hidden_form_type(ADMIN), *fields])


class AdminCommand(Command):
    """A command only the administrators may list and run; ``title`` and ``fields`` make its form."""

    title = ""
    instructions: str | None = None
    fields: tuple[Field, ...] | None = None

    def __init__(self, admin: ServiceAdmin) -> None:
        self.admin = admin
        self.server = admin.server

    def allowed(self, requester: str | None, domain: str) -> bool:
        return requester is not None and requester in self.admin.admins and self.admin.serves(domain)

    async def form(self, ctx: Context) -> domish.Element | None:
        if self.fields is None:
            return None
        return _form(self.title, list(self.fields), self.instructions)


def _admin(node: str) -> str:
    return f"{ADMIN}#{node}"


def _password(text: str | None) -> str:
    try:
        prepared = saslprep(text or "")
    except ValueError:
        prepared = ""
    if not prepared or len((text or "").encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise StanzaError("not-acceptable", "this password is not allowed")
    return text or ""


class _Accounts(AdminCommand):
    """Commands on a list of accounts (``accountjids``): each is done or reported in the note."""

    verb = ""
    fields = (Field("accountjids", "jid-multi", "The Jabber ID(s) of the accounts", required=True),)

    async def run(self, ctx: Context, values: dict[str, list[str]]) -> Outcome:
        jids = [v.strip() for v in values.get("accountjids", []) if v.strip()]
        if not jids:
            raise StanzaError("bad-request", "field accountjids is required")
        done, failed = [], []
        for text in jids:
            try:
                bare = self.admin.account(text)
                await self.one(bare, ctx)
                done.append(bare)
            except (StanzaError, NoSuchAccount) as err:
                failed.append(f"{text} ({getattr(err, 'text', None) or 'no such account'})")
        note = f"{self.verb}: {', '.join(done) or 'none'}"
        if failed:
            note += f"; failed: {', '.join(failed)}"
        return Outcome(note, "warn" if failed else "info")

    async def one(self, bare: str, ctx: Context) -> None:
        raise NotImplementedError


class AddUser(AdminCommand):
    node, name, title = _admin("add-user"), "Add a User", "Adding a User"
    fields = (Field("accountjid", "jid-single", "The Jabber ID for the account to be added", required=True),
              Field("password", "text-private", "The password for this account", required=True),
              Field("password-verify", "text-private", "Retype password", required=True))

    async def run(self, ctx: Context, values: dict[str, list[str]]) -> Outcome:
        bare = self.admin.account(forms.single(values, "accountjid"))
        password = _password(forms.single(values, "password", strip=False))
        verify = forms.single(values, "password-verify", required=False, strip=False)
        if verify is not None and verify != password:
            raise StanzaError("not-acceptable", "the passwords differ")
        user, _, domain = bare.partition("@")
        try:
            await self.server.storage.accounts.create(user, domain, password)
        except AccountExists:
            raise StanzaError("conflict", f"{bare} already exists") from None
        self.admin.log.info("admin {admin} added the account {bare}", admin=ctx.requester, bare=bare)
        return Outcome(f"Added {bare}")


class DeleteUser(_Accounts):
    node, name, title, verb = _admin("delete-user"), "Delete a User", "Deleting Users", "Deleted"

    async def one(self, bare: str, ctx: Context) -> None:
        user, _, domain = bare.partition("@")
        await self.server.storage.accounts.delete(user, domain)
        self.admin.log.info("admin {admin} deleted the account {bare}", admin=ctx.requester, bare=bare)
        self.server.hooks.notify(ACCOUNT_REMOVED, user, domain)
        for session in self.server.sessions.of(bare):
            session.close("not-authorized", "the account was removed")


class DisableUser(_Accounts):
    node, name, title, verb = _admin("disable-user"), "Disable a User", "Disabling Users", "Disabled"

    async def one(self, bare: str, ctx: Context) -> None:
        user, _, domain = bare.partition("@")
        await self.server.storage.accounts.set_disabled(user, domain, True)
        self.admin.log.info("admin {admin} disabled the account {bare}", admin=ctx.requester, bare=bare)
        for session in self.server.sessions.of(bare):
            session.close("not-authorized", "the account was disabled")


class ReenableUser(_Accounts):
    node, name, title, verb = _admin("reenable-user"), "Re-Enable a User", "Re-Enabling Users", "Re-enabled"

    async def one(self, bare: str, ctx: Context) -> None:
        user, _, domain = bare.partition("@")
        await self.server.storage.accounts.set_disabled(user, domain, False)
        self.admin.log.info("admin {admin} re-enabled the account {bare}", admin=ctx.requester, bare=bare)


class EndUserSession(_Accounts):
    node, name, title, verb = (_admin("end-user-session"), "End a User Session", "Ending User Sessions",
                               "Sessions ended")

    async def one(self, bare: str, ctx: Context) -> None:
        sessions = self.server.sessions.of(bare)
        if not sessions:
            raise StanzaError("item-not-found", "not online")
        for session in sessions:
            session.close("policy-violation", "ended by an administrator")


class ChangeUserPassword(AdminCommand):
    node, name, title = _admin("change-user-password"), "Change User Password", "Changing a User Password"
    fields = (Field("accountjid", "jid-single", "The Jabber ID for this account", required=True),
              Field("password", "text-private", "The password for this account", required=True))

    async def run(self, ctx: Context, values: dict[str, list[str]]) -> Outcome:
        bare = self.admin.account(forms.single(values, "accountjid"))
        password = _password(forms.single(values, "password", strip=False))
        user, _, domain = bare.partition("@")
        try:
            await self.server.storage.accounts.set_password(user, domain, password)
        except NoSuchAccount:
            raise StanzaError("item-not-found", f"no such account {bare}") from None
        self.admin.log.info("admin {admin} changed the password of {bare}", admin=ctx.requester, bare=bare)
        return Outcome(f"Changed the password of {bare}")


class RegisteredUsersNum(AdminCommand):
    node, name = _admin("get-registered-users-num"), "Get Number of Registered Users"

    async def run(self, ctx: Context, values: dict[str, list[str]]) -> Outcome:
        count = await self.server.storage.accounts.count(ctx.domain)
        return Outcome(form=_result([Field("registeredusersnum", "text-single", "The number of registered users",
                                           [str(count)])]))


class OnlineUsersNum(AdminCommand):
    node, name = _admin("get-online-users-num"), "Get Number of Online Users"

    async def run(self, ctx: Context, values: dict[str, list[str]]) -> Outcome:
        count = len(self.admin.online(ctx.domain))
        return Outcome(form=_result([Field("onlineusersnum", "text-single", "The number of online users",
                                           [str(count)])]))


class OnlineUsersList(AdminCommand):
    node, name, title = _admin("get-online-users-list"), "Get List of Online Users", "Requesting List of Online Users"
    fields = (Field("max_items", "list-single", "Maximum number of items to report",
                    options=[(size, size) for size in LIST_SIZES]),)

    async def run(self, ctx: Context, values: dict[str, list[str]]) -> Outcome:
        size = forms.single(values, "max_items", required=False) or "none"
        if size not in LIST_SIZES:
            raise StanzaError("bad-request", "max_items is one of " + ", ".join(LIST_SIZES))
        online = self.admin.online(ctx.domain)
        shown = online if size == "none" else online[:int(size)]
        return Outcome(form=_result([Field("onlineuserjids", "jid-multi", "The list of all online users", shown)]))


class Announce(AdminCommand):
    node, name, title = _admin("announce"), "Send Announcement to Online Users", "Making an Announcement"
    fields = (Field("announcement", "text-multi", "Announcement", required=True),)

    async def run(self, ctx: Context, values: dict[str, list[str]]) -> Outcome:
        text = "\n".join(values.get("announcement", [])).strip()
        if not text:
            raise StanzaError("bad-request", "field announcement is required")
        sent = self.admin.broadcast(ctx.domain, text)
        self.admin.log.info("admin {admin} announced to {n} sessions of {domain}", admin=ctx.requester, n=sent,
                            domain=ctx.domain)
        return Outcome(f"Sent to {sent} sessions")


class SetMotd(AdminCommand):
    node, name, title = _admin("set-motd"), "Set Message of the Day", "Setting the Message of the Day"
    fields = (Field("motd", "text-multi", "Message of the Day", required=True),)

    async def run(self, ctx: Context, values: dict[str, list[str]]) -> Outcome:
        text = "\n".join(values.get("motd", [])).strip()
        if not text:
            raise StanzaError("bad-request", "field motd is required")
        await self.admin.set_motd(ctx.domain, text)
        self.admin.log.info("admin {admin} set the message of the day of {domain}", admin=ctx.requester,
                            domain=ctx.domain)
        return Outcome("Message of the day set")


class EditMotd(SetMotd):
    node, name, title = _admin("edit-motd"), "Edit Message of the Day", "Editing the Message of the Day"

    async def form(self, ctx: Context) -> domish.Element | None:
        current = await self.admin.motd.get(ctx.domain) if self.admin.motd is not None else None
        return _form(self.title, [Field("motd", "text-multi", "Message of the Day",
                                        current.split("\n") if current else [], required=True)])


class DeleteMotd(AdminCommand):
    node, name = _admin("delete-motd"), "Delete Message of the Day"

    async def run(self, ctx: Context, values: dict[str, list[str]]) -> Outcome:
        await self.admin.set_motd(ctx.domain, None)
        self.admin.log.info("admin {admin} deleted the message of the day of {domain}", admin=ctx.requester,
                            domain=ctx.domain)
        return Outcome("Message of the day deleted")


class ClusterStatus(AdminCommand):
    node, name = CLUSTER_STATUS, "Cluster Status"

    async def run(self, ctx: Context, values: dict[str, list[str]]) -> Outcome:
        cluster = self.server.cluster
        if cluster is None:
            local = sum(1 for s in self.server.sessions if s.node is None)
            lines = [f"{self.server.node_name}: a single node (not in cluster mode), {local} sessions"]
        else:
            lines = await cluster.status()
        return Outcome(form=forms.build("result", [Field("status", "text-multi", "Nodes, links and sessions",
                                                         lines)], title="Cluster status"))


COMMANDS = (AddUser, DeleteUser, DisableUser, ReenableUser, EndUserSession, ChangeUserPassword,
            RegisteredUsersNum, OnlineUsersNum, OnlineUsersList, Announce, SetMotd, EditMotd, DeleteMotd,
            ClusterStatus)


class ServiceAdmin(Module):
    name = ADMIN
    requires = (AdHoc,)

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.adhoc: AdHoc | None = None
        self.admins = frozenset(_prepared(jid) for jid in self.config.admins) - {None}
        self.motd: MotdStore | None = None
        self._motd_cache: dict[str, tuple[float, str | None]] = {}

    def start(self) -> None:
        assert self.adhoc is not None
        db = getattr(self.server.storage, "db", None)
        self.motd = MotdStore(db) if db is not None else None  # no database (unit tests): no MOTD
        for command in COMMANDS:
            self.adhoc.register(command(self))

    # -- what the commands use -----------------------------------------------------------------------

    def account(self, text: str | None) -> str:
        """The prepared bare JID of an account of a hosted domain; ``not-acceptable`` otherwise."""
        try:
            jid = parse_jid(text or "")
        except InvalidJID:
            raise StanzaError("jid-malformed", f"not a JID: {text}") from None
        if jid.user is None or jid.resource is not None or not self.server.is_local_domain(jid.host):
            raise StanzaError("not-acceptable", f"not an account of this server: {text}")
        return f"{jid.user}@{jid.host}"

    def online(self, domain: str) -> list[str]:
        """The accounts of ``domain`` with a bound resource on any node, sorted."""
        return sorted({s.bare for s in self.server.sessions if s.domain == domain})

    def broadcast(self, domain: str, text: str) -> int:
        """Send ``text`` as a headline from ``domain`` to each session of ``domain`` on any node; how many."""
        sent = 0
        for session in list(self.server.sessions):
            if session.domain == domain and session.is_open:
                message = stanzas.make("message", to=session.jid, frm=domain, type="headline")
                message.addElement("body", content=text)
                session.deliver(message)
                sent += 1
        return sent

    async def set_motd(self, domain: str, text: str | None) -> None:
        if self.motd is None:
            raise StanzaError("service-unavailable", "no database")
        await self.motd.set(domain, text)
        self._motd_cache[domain] = (self.server.clock.seconds(), text)

    async def _current_motd(self, domain: str) -> str | None:
        now = self.server.clock.seconds()
        cached = self._motd_cache.get(domain)
        if cached is not None and now - cached[0] < MOTD_CACHE_SECONDS:
            return cached[1]
        assert self.motd is not None
        text = await self.motd.get(domain)
        self._motd_cache[domain] = (now, text)
        return text

    @hook(PRESENCE_INITIAL)
    def presence_initial(self, session: Any) -> None:
        if self.motd is not None and not session.anonymous:
            ensureDeferred(self._send_motd(session)).addErrback(
                lambda failure: self.log.failure("sending the message of the day failed", failure))

    async def _send_motd(self, session: Any) -> None:
        text = await self._current_motd(session.domain)
        if text and session.is_open:
            message = stanzas.make("message", to=session.jid, frm=session.domain, type="headline")
            message.addElement("subject", content="Message of the day")
            message.addElement("body", content=text)
            session.deliver(message)


def _prepared(jid: str) -> str | None:
    try:
        parsed = parse_jid(jid)
    except InvalidJID:
        return None
    return f"{parsed.user}@{parsed.host}" if parsed.user else None

