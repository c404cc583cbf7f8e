"""XEP-0280 Message Carbons (urn:xmpp:carbons:2), with the XEP-0334 ``<no-copy/>`` hint, across the cluster.

A resource turns carbons on or off with ``<enable/>``/``<disable/>``; the flag is ``Session.data[CARBONS]``,
and the cluster directory carries it to other nodes (a ``carbons='1'`` attribute on the session's entry), so
the node that routes a message sees every carbons-enabled resource of the account, wherever it is bound, and
sends each its copy in one hop (``session/carbons`` tells this module an account has one).

Which messages are copied (XEP-0280 §6.1): not error, groupchat or headline; none with ``<private/>``, a
``<no-copy/>`` hint, or a carbons ``<received/>``/``<sent/>`` of its own; then chat, or normal with a body or
an IM payload (receipts, chat states, markers, direct or mediated MUC invitations). A message received from
a MUC occupant (``<x xmlns='…muc#user'/>`` without an invitation) is not copied; one sent to an occupant is.

- *received*: a message to a local account is copied to its carbons-enabled resources that do not get the
  original (RFC 6121 §8.5), and never to the resource that sent it;
- *sent*: a message a client sends is copied to the account's other carbons-enabled resources (none when it
  is addressed to the account itself: the received copies cover it).

The ``<private/>`` element stays in the delivered message: XEP-0280 1.0 lifted the requirement to remove it,
as removing it lets the sender change delivery unseen. A carbon is only ever made here and delivered straight
to its session: a message that reaches the router with a carbons ``<received/>``/``<sent/>`` child was made
by someone else (a client forging one, CVE-2017-5589) and is refused with ``not-acceptable`` when it is for an
account with carbons enabled (an error quoting one loses the quote); one from the account's own bare JID (a
carbon of ours rerouted after its resource vanished) is dropped.

Hot path: an account none of whose resources ever enabled carbons costs one set lookup per message and hook.
"""

from __future__ import annotations

from typing import Any

from twisted.words.xish import domish

from xmppcluster.core import stanza as stanzas
from xmppcluster.core.events import MESSAGE_BARE, MESSAGE_FULL, MESSAGE_OUTGOING, SESSION_CARBONS
from xmppcluster.core.jid import InvalidJID, parse_jid
from xmppcluster.core.namespaces import CARBONS, CLIENT
from xmppcluster.core.sessions import BoundSession
from xmppcluster.modules.base import Module, StanzaError, hook, iq

NS = CARBONS
FORWARD = "urn:xmpp:forward:0"
HINTS = "urn:xmpp:hints"
MUC_USER = "http://jabber.org/protocol/muc#user"
#: Payloads that make a normal message an IM one (XEP-0184, XEP-0085, XEP-0333, XEP-0249).
IM_PAYLOADS = frozenset(("urn:xmpp:receipts", "http://jabber.org/protocol/chatstates", "urn:xmpp:chat-markers:0",
                         "jabber:x:conference"))
NEVER_COPIED = frozenset(("error", "groupchat", "headline"))
#: Runs after every other message hook (blocking, archiving...): copies go out for a message that is delivered.
PRIORITY = -100


def eligible(stanza: domish.Element, inbound: bool) -> bool:
    """Whether a message is carbon-copied (XEP-0280 §6.1); ``inbound``: to the account, else sent by it."""
    kind = stanza.getAttribute("type")
    if kind in NEVER_COPIED:
        return False
    im = kind == "chat"
    for child in stanza.children:
        if isinstance(child, str):
            continue
        uri = child.uri
        if uri == NS or (uri == HINTS and child.name == "no-copy"):
            return False  # <private/> (or a carbon wrapper: never copied again), <no-copy/>
        if uri == CLIENT:
            im = im or child.name == "body"
        elif uri in IM_PAYLOADS:
            im = True
        elif uri == MUC_USER:
            if any(not isinstance(c, str) and c.name == "invite" for c in child.children):
                im = True  # mediated invitation
            elif inbound:
                return False  # from a MUC occupant: the room sends it to each of the user's occupants
    return im


def forged(stanza: domish.Element) -> bool:
    """Whether a message carries a carbons ``<received/>`` or ``<sent/>`` (only this server makes those)."""
    return any(not isinstance(child, str) and child.uri == NS and child.name in ("received", "sent")
               for child in stanza.children)


def carbon(direction: str, stanza: domish.Element, bare: str, to: str) -> domish.Element:
    """``stanza`` wrapped for ``to`` (XEP-0280 §7, §8): ``<received|sent><forwarded>stanza`` from ``bare``.

    The original is shared, not copied (and its ``parent`` left alone): it is written out as it is."""
    wrapper = stanzas.make("message", frm=bare, to=to, type=stanza.getAttribute("type"))
    forwarded = wrapper.addElement((NS, direction)).addElement((FORWARD, "forwarded"))
    forwarded.children.append(stanza)
    return wrapper


class Carbons(Module):
    """XEP-0280: enable/disable per resource; received and sent copies to carbons-enabled resources."""

    name = NS
    features = (NS,)

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        #: Accounts that may have a carbons-enabled resource (here or on another node); pruned when looked at.
        self.accounts: set[str] = set()

    # -- the protocol ------------------------------------------------------------------------------

    @iq("set", NS, to=("account",))
    def toggle(self, request: domish.Element, sender: BoundSession | None) -> None:
        """``<enable/>`` or ``<disable/>``, for the sending resource only (repeating one is no error)."""
        if sender is None or self.target(request, sender) != sender.bare:
            raise StanzaError("not-allowed", "carbons are switched by the resource itself")
        action = stanzas.first_child(request).name
        if action not in ("enable", "disable"):
            raise StanzaError("bad-request")
        enabled = action == "enable"
        if enabled != bool(sender.data.get(NS)):
            if enabled:
                sender.data[NS] = True
            else:
                sender.data.pop(NS, None)
            # Before the result: the cluster sends the change on the same link as anything this resource sends next.
            self.server.hooks.notify(SESSION_CARBONS, sender)
        return None

    @hook(SESSION_CARBONS)
    def changed(self, session: BoundSession) -> None:
        if session.data.get(NS):
            self.accounts.add(session.bare)

    def enabled(self, bare: str, skip: list[BoundSession]) -> list[BoundSession]:
        """The carbons-enabled resources of ``bare`` (on any node) not in ``skip``."""
        found = []
        any_enabled = False
        for session in self.server.sessions.of(bare):
            if session.data.get(NS):
                any_enabled = True
                if session not in skip:
                    found.append(session)
        if not any_enabled:
            self.accounts.discard(bare)
        return found

    # -- sent ----------------------------------------------------------------------------------------

    @hook(MESSAGE_OUTGOING, PRIORITY)
    def sent(self, stanza: domish.Element, session: BoundSession) -> bool:
        bare = session.bare
        if bare not in self.accounts:
            return False
        to = stanza.getAttribute("to")
        if to is None or not eligible(stanza, inbound=False):
            return False
        try:
            if parse_jid(to).userhost() == bare:
                return False  # to the account itself: its resources get received copies
        except InvalidJID:
            return False
        for target in self.enabled(bare, [session]):
            target.deliver(carbon("sent", stanza, bare, target.jid))
        return False

    # -- received ------------------------------------------------------------------------------------

    @hook(MESSAGE_BARE, PRIORITY)
    def received_bare(self, stanza: domish.Element, bare: str, sender: BoundSession | None) -> bool:
        if bare not in self.accounts:
            return False
        if forged(stanza):
            return self._refuse(stanza, bare)
        if not eligible(stanza, inbound=True):
            return False
        kind = stanza.getAttribute("type") or "normal"
        skip = self.server.router.message_recipients(bare, kind)
        self._received(stanza, bare, skip, sender)
        return False

    @hook(MESSAGE_FULL, PRIORITY)
    def received_full(self, stanza: domish.Element, bare: str, resource: str, session: BoundSession | None,
                      sender: BoundSession | None) -> bool:
        if bare not in self.accounts:
            return False
        if forged(stanza):
            return self._refuse(stanza, bare)
        # No such resource: a chat message goes on to the bare JID (copied there), the rest is answered.
        if session is not None and eligible(stanza, inbound=True):
            self._received(stanza, bare, [session], sender)
        return False

    def _received(self, stanza: domish.Element, bare: str, skip: list[BoundSession],
                  sender: BoundSession | None) -> None:
        if sender is not None and sender.bare == bare:
            skip = [*skip, sender]
        for target in self.enabled(bare, skip):
            target.deliver(carbon("received", stanza, bare, target.jid))

    def _refuse(self, stanza: domish.Element, bare: str) -> bool:
        """A carbon that this server did not make, for an account with carbons enabled: never delivered. An
        error (e.g. the bounce of a forged carbon, which quotes it) goes on without the carbons elements."""
        if stanza.getAttribute("type") == "error":
            stanza.children = [child for child in stanza.children if isinstance(child, str)
                               or child.uri != NS or child.name not in ("received", "sent")]
            return False
        if stanza.getAttribute("from") != bare:
            self.log.debug("refused a forged carbon from {sender} to {bare}", sender=stanza.getAttribute("from"),
                          bare=bare)
            self.server.router.bounce(stanza, "not-acceptable", "only the recipient's own server sends carbons")
        return True
