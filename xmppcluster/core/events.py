"""Every server event, by name, with its arguments; and :class:`Events`, which runs their handlers.

An event is either *notified* (:meth:`Events.notify`: every handler runs, what they return is ignored) or
*dispatched* (:meth:`Events.dispatch`: handlers run by priority until one returns a true value, which is
the result). Each name below is a constant; an event name is never built from stanza or frame content.
Handlers are added with :meth:`Events.on` or, in a feature module, ``@hook(EVENT, priority)``; higher
priorities run first, equal priorities in the order they were added.

docs/architecture.rst ("Events") lists the same table; ``python -m xmppcluster.core.events`` prints it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

log = Logger()

Handler = Callable[..., Any]

NOTIFY = "notify"
DISPATCH = "dispatch"


class Event(str):
    """An event name (a ``str``, so it keys dictionaries like one) with what the table documents."""

    op: str
    args: str
    doc: str
    fired_by: str
    handled_by: str

    def __new__(cls, name: str, op: str, args: str, doc: str, fired_by: str, handled_by: str) -> Event:
        self = super().__new__(cls, name)
        self.op, self.args, self.doc, self.fired_by, self.handled_by = op, args, doc, fired_by, handled_by
        return self


# -- streams -------------------------------------------------------------------------------------------

STREAM_PRE_AUTH_IQ = Event(
    "stream/pre-auth-iq", DISPATCH, "stream, iq",
    "an IQ before authentication; true = answered (otherwise the stream refuses it)",
    "streams/core.py", "register (in-band registration)")
STREAM_ELEMENT = Event(
    "stream/element", DISPATCH, "stream, element",
    "a top-level element of a bound stream that is not a stanza; true = taken (otherwise unsupported-stanza-type)",
    "streams/core.py", "csi")

STREAM_AUTHENTICATED = Event(
    "stream/authenticated", NOTIFY, "stream, user: str | None, condition: str | None",
    "a SASL exchange ended: user (localpart) on success, else None and the failure condition",
    "streams/core.py", "ops/metrics.py")

# -- sessions --------------------------------------------------------------------------------------------

SESSION_BOUND = Event(
    "session/bound", NOTIFY, "session",
    "a resource of this node was bound",
    "streams/core.py", "blocking, cluster")
SESSION_UNBOUND = Event(
    "session/unbound", NOTIFY, "session, reason: str",
    "a session ended (local; or remote, notified once by the node that announces a dead node's sessions)",
    "streams/core.py, cluster", "presence, last, roster, cluster, csi")
SESSION_INTERESTED = Event(
    "session/interested", NOTIFY, "session",
    "a session's roster interest changed (it requested the roster)",
    "core/sessions.py", "cluster")
SESSION_DIRECTED = Event(
    "session/directed", NOTIFY, "session, target: str | None, added: bool",
    "a directed-presence recipient was added or removed (target None: all removed)",
    "presence", "cluster")
SESSION_CARBONS = Event(
    "session/carbons", NOTIFY, "session",
    "a session turned XEP-0280 carbons on or off (its data[CARBONS]); for another node's session, its entry said so",
    "carbons, cluster", "carbons, cluster")

# -- what a client sends -------------------------------------------------------------------------------

MESSAGE_OUTGOING = Event(
    "message/outgoing", DISPATCH, "stanza, session",
    "a message a client sent, before routing; true = handled (not routed)",
    "streams/core.py, blocking", "blocking, carbons, mam, ops/metrics.py")
PRESENCE_OUTGOING = Event(
    "presence/outgoing", DISPATCH, "stanza, session",
    "a presence a client sent, before routing; true = handled (not routed)",
    "streams/core.py, blocking", "blocking, presence, ops/metrics.py")
IQ_OUTGOING = Event(
    "iq/outgoing", DISPATCH, "stanza, session",
    "an IQ a client sent, before routing; true = handled (not routed)",
    "streams/core.py, blocking", "blocking, ops/metrics.py")

#: The outgoing event per stanza kind: a fixed table, never a name built from the input.
OUTGOING = {"message": MESSAGE_OUTGOING, "presence": PRESENCE_OUTGOING, "iq": IQ_OUTGOING}

# -- routing -------------------------------------------------------------------------------------------

ROUTE_REMOTE = Event(
    "route/remote", DISPATCH, "stanza, target: JID, sender",
    "a stanza for a domain that is not local; true = handled (otherwise remote-server-not-found)",
    "core/router.py", "blocking, s2s/component.py, s2s/federation.py")
MESSAGE_SERVER = Event(
    "message/server", DISPATCH, "stanza, sender",
    "a message to a local domain; true = handled (otherwise service-unavailable for normal/chat)",
    "core/router.py", "(none yet)")
PRESENCE_SERVER = Event(
    "presence/server", DISPATCH, "stanza, sender",
    "a presence to a local domain; true = handled (otherwise dropped)",
    "core/router.py", "(none yet)")
MESSAGE_BARE = Event(
    "message/bare", DISPATCH, "stanza, bare: str, sender",
    "a message to a local bare JID; true = handled (otherwise RFC 6121 §8.5.2 delivery)",
    "core/router.py", "blocking, carbons, mam")
PRESENCE_BARE = Event(
    "presence/bare", DISPATCH, "stanza, bare: str, sender",
    "a presence to a local bare JID; true = handled (otherwise to its available resources)",
    "core/router.py", "blocking, presence")
IQ_BARE = Event(
    "iq/bare", DISPATCH, "stanza, bare: str, sender",
    "an IQ to a local bare JID; true = handled (otherwise the @iq handlers for accounts)",
    "core/router.py", "blocking")
MESSAGE_FULL = Event(
    "message/full", DISPATCH, "stanza, bare: str, resource: str, session | None, sender",
    "a message to a local full JID; true = handled (otherwise to the session, or RFC 6121 §8.5.3)",
    "core/router.py", "blocking, carbons, mam")
PRESENCE_FULL = Event(
    "presence/full", DISPATCH, "stanza, bare: str, resource: str, session | None, sender",
    "a presence to a local full JID; true = handled",
    "core/router.py", "blocking, presence")
IQ_FULL = Event(
    "iq/full", DISPATCH, "stanza, bare: str, resource: str, session | None, sender",
    "an IQ to a local full JID; true = handled",
    "core/router.py", "blocking, last")
IQ_RESPONSE = Event(
    "iq/response", DISPATCH, "stanza, target: 'server' | 'account', sender",
    "an IQ result or error addressed to the server or an account; true = taken (otherwise dropped)",
    "core/router.py", "push (app server replies)")
MESSAGE_OFFLINE = Event(
    "message/offline", DISPATCH, "stanza, bare: str",
    "a message no resource of bare can take; true = taken (stored or dropped; otherwise service-unavailable)",
    "core/router.py", "offline, push (watches, never takes)")

#: Per stanza kind: the event for a stanza to a local domain, and to a local full JID (fixed tables).
TO_SERVER = {"message": MESSAGE_SERVER, "presence": PRESENCE_SERVER}  # IQs go to the @iq handlers
TO_FULL = {"message": MESSAGE_FULL, "presence": PRESENCE_FULL, "iq": IQ_FULL}

# -- presence ----------------------------------------------------------------------------------------------

PRESENCE_BROADCAST = Event(
    "presence/broadcast", NOTIFY, "stanza, session",
    "a session's own presence (no 'to') changed; the core has updated availability and priority",
    "core/router.py", "presence, last, offline, cluster")
PRESENCE_INITIAL = Event(
    "presence/initial", NOTIFY, "session",
    "follows the broadcast of a session's first available presence",
    "core/router.py", "presence, offline, admin_commands (message of the day)")

# -- rosters ---------------------------------------------------------------------------------------------

ROSTER_SUBSCRIBED_FROM = Event(
    "roster/subscribed-from", DISPATCH, "owner: str, contact: str",
    "a question: true when contact has a subscription from owner (may see owner's presence)",
    "blocking", "roster")
ROSTER_CHANGED = Event(
    "roster/changed", NOTIFY, "owner: str, contact: str",
    "owner's roster item for contact changed in the database (on this node)",
    "roster", "cluster")
ROSTER_CHANGED_ELSEWHERE = Event(
    "roster/changed-elsewhere", NOTIFY, "owner: str",
    "another node changed owner's roster: drop the cached roster of owner",
    "cluster", "roster")

# -- blocking ---------------------------------------------------------------------------------------------

BLOCKING_CHANGED = Event(
    "blocking/changed", NOTIFY, "owner: str, added: list[str], removed: list[str]",
    "owner's blocklist changed (on this node)",
    "blocking", "cluster")
BLOCKLIST_CHANGED_ELSEWHERE = Event(
    "blocking/changed-elsewhere", NOTIFY, "owner: str, blocked: list[str], unblocked: list[str]",
    "the blocklist of owner changed on another node: forget the cache, push to local resources",
    "cluster", "blocking")

# -- offline storage ------------------------------------------------------------------------------------

OFFLINE_WAITING = Event(
    "offline/waiting", NOTIFY, "owner: str, node: str",
    "a message of owner was stored while owner's eligible resources are on node: that node should deliver",
    "offline", "cluster")
OFFLINE_WAITING_HERE = Event(
    "cluster/offline-waiting", NOTIFY, "peer: str, frame: Element",
    "another node stored a message for an account with an eligible resource here (frame's owner)",
    "cluster", "offline")
OFFLINE_STORING = Event(
    "offline/storing", DISPATCH, "stanza",
    "a question: a Deferred firing once the store of this stanza is over, or None when none runs "
    "(the cluster link waits on it before acknowledging a routed frame)",
    "cluster", "offline")

# -- accounts ---------------------------------------------------------------------------------------------

ACCOUNT_REMOVED = Event(
    "account/removed", NOTIFY, "user: str, domain: str",
    "an account was removed (in-band registration's cancel, the delete-user command)",
    "register, admin_commands", "(none yet)")

# -- cluster --------------------------------------------------------------------------------------------

CACHES_STALE = Event(
    "cluster/caches-stale", NOTIFY, "",
    "cache events from peers may have been lost: forget every cached roster and blocklist",
    "cluster", "roster, blocking")
CLUSTER_NODE_UP = Event(
    "cluster/node-up", NOTIFY, "peer: str",
    "a link to peer is up (new or replaced)",
    "cluster", "cluster (BOSH forwarding), s2s/component.py")
CLUSTER_NODE_DOWN = Event(
    "cluster/node-down", NOTIFY, "peer: str",
    "peer was declared down",
    "cluster", "cluster (BOSH forwarding), s2s/component.py")
CLUSTER_BOSH_REQUEST = Event(
    "cluster/bosh-req", NOTIFY, "peer: str, frame: Element",
    "a BOSH request forwarded by peer to this node (the session's owner)",
    "cluster", "cluster (BOSH forwarding)")
CLUSTER_BOSH_RESPONSE = Event(
    "cluster/bosh-resp", NOTIFY, "peer: str, frame: Element",
    "the answer to a BOSH request this node forwarded to peer",
    "cluster", "cluster (BOSH forwarding)")
CLUSTER_COMPONENT = Event(
    "cluster/component", NOTIFY, "peer: str, frame: Element",
    "peer holds (comp-up) or lost (comp-down) an external component, or forwards a stanza for it (comp-stanza)",
    "cluster", "s2s/component.py")

#: Every event, by name.
EVENTS: dict[str, Event] = {value: value for value in list(globals().values()) if isinstance(value, Event)}


class UnknownEvent(ValueError):
    """A handler was added for a name that is not an event of this module."""


class Events:
    """Handlers per event, highest priority first; :meth:`notify` runs them all, :meth:`dispatch` until one
    takes the event. A handler that raises is logged and counts as not having taken it."""

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[Handler, ...]] = {}
        self._order: dict[str, list[tuple[int, int, Handler]]] = {}
        self._added = 0

    def on(self, name: str, handler: Handler, priority: int = 0) -> None:
        """Run ``handler`` for the event ``name`` (one of this module's constants)."""
        if name not in EVENTS:
            raise UnknownEvent(f"{name!r} is not an event of xmppcluster/core/events.py")
        self._added += 1
        order = self._order.setdefault(name, [])
        order.append((-priority, self._added, handler))
        order.sort(key=lambda entry: entry[:2])
        # A new tuple: a notify or dispatch running while a handler is added keeps its own list.
        self._handlers[name] = tuple(entry[2] for entry in order)

    def notify(self, name: str, *args: Any) -> None:
        """Run every handler of ``name``; what they return is ignored."""
        for handler in self._handlers.get(name, ()):
            try:
                handler(*args)
            except Exception:
                log.failure("event {name} handler {handler!r} failed", name=name, handler=handler)

    def dispatch(self, name: str, *args: Any) -> Any:
        """Run the handlers of ``name`` until one returns a true value, and return it (else None)."""
        for handler in self._handlers.get(name, ()):
            try:
                result = handler(*args)
            except Exception:
                log.failure("event {name} handler {handler!r} failed", name=name, handler=handler)
                continue
            if result:
                return result
        return None


def table() -> str:
    """The events as a reStructuredText list table (docs/architecture.rst, section "Events")."""
    lines = [".. list-table::", "   :header-rows: 1", "",
             "   * - Event", "     - Operation", "     - Arguments", "     - Meaning", "     - Fired by",
             "     - Handled by"]
    for event in EVENTS.values():
        lines += [f"   * - ``{event}``", f"     - {event.op}", f"     - {event.args or '(none)'}",
                  f"     - {event.doc}", f"     - {event.fired_by}", f"     - {event.handled_by}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(table(), end="")
