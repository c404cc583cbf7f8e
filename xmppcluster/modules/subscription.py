"""The presence subscription state machine of RFC 6121 §3 and Appendix A, as pure functions.

A :class:`State` is what the user's server knows about one contact: the subscription (``none``, ``to``,
``from``, ``both``), the two pending flags and the pre-approval flag (§3.4). :func:`outbound` applies a
subscription stanza the user sends to the contact, :func:`inbound` one the contact sends to the user;
each returns a :class:`Transition`: whether the stanza goes on (routed to the contact, or delivered to
the user's resources), the new state, and an automatic reply the server sends on the user's behalf.
No I/O here: the presence module does the storing, routing and pushing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

SUBSCRIBE = "subscribe"
SUBSCRIBED = "subscribed"
UNSUBSCRIBE = "unsubscribe"
UNSUBSCRIBED = "unsubscribed"
KINDS = (SUBSCRIBE, SUBSCRIBED, UNSUBSCRIBE, UNSUBSCRIBED)


@dataclass(frozen=True)
class State:
    """The user's side of the relationship with one contact."""

    subscription: str = "none"
    pending_out: bool = False
    pending_in: bool = False
    approved: bool = False

    @property
    def has_to(self) -> bool:
        return self.subscription in ("to", "both")

    @property
    def has_from(self) -> bool:
        return self.subscription in ("from", "both")

    @property
    def name(self) -> str:
        """The Appendix A name ("None + Pending Out/In", "From + Pending Out", ...); ignores ``approved``."""
        base = self.subscription.capitalize()
        out, into = self.pending_out and not self.has_to, self.pending_in and not self.has_from
        if out and into:
            return f"{base} + Pending Out/In"
        if out:
            return f"{base} + Pending Out"
        if into:
            return f"{base} + Pending In"
        return base

    @classmethod
    def named(cls, name: str, *, approved: bool = False) -> State:
        """The state called ``name`` in Appendix A."""
        base, _, pending = name.partition(" + ")
        subscription = base.lower()
        if subscription not in ("none", "to", "from", "both"):
            raise ValueError(f"unknown subscription state {name!r}")
        flags = {"": (False, False), "Pending Out": (True, False), "Pending In": (False, True),
                 "Pending Out/In": (True, True)}
        if pending not in flags:
            raise ValueError(f"unknown subscription state {name!r}")
        out, into = flags[pending]
        if (out and subscription in ("to", "both")) or (into and subscription in ("from", "both")):
            raise ValueError(f"no such state in RFC 6121 Appendix A: {name!r}")
        return cls(subscription, out, into, approved)


@dataclass(frozen=True)
class Transition:
    """What the server does with one subscription stanza."""

    #: Outbound: route the stanza to the contact. Inbound: deliver it to the user's available resources.
    forward: bool
    state: State
    #: A presence type the server sends back to the contact on the user's behalf (inbound only).
    auto_reply: str | None = None


def _with(state: State, *, to: bool | None = None, frm: bool | None = None, out: bool | None = None,
          into: bool | None = None, approved: bool | None = None) -> State:
    has_to = state.has_to if to is None else to
    has_from = state.has_from if frm is None else frm
    subscription = {(False, False): "none", (True, False): "to", (False, True): "from", (True, True): "both"}
    return replace(
        state,
        subscription=subscription[(has_to, has_from)],
        pending_out=(state.pending_out if out is None else out) and not has_to,
        pending_in=(state.pending_in if into is None else into) and not has_from,
        approved=state.approved if approved is None else approved,
    )


def normal(state: State) -> State:
    """``state`` with pending flags that contradict the subscription cleared (To never pends out...)."""
    return _with(state)


def outbound(state: State, kind: str) -> Transition:
    """The user sends ``kind`` to the contact (RFC 6121 §3.1.2, §3.2.2, §3.3.2, §3.4, Appendix A.2)."""
    state = normal(state)
    if kind == SUBSCRIBE:
        # A.2.1: always routed; asks unless the user is already subscribed.
        return Transition(True, _with(state, out=True))
    if kind == UNSUBSCRIBE:
        # A.2.2: always routed; drops the subscription to the contact and any pending request.
        return Transition(True, _with(state, to=False, out=False))
    if kind == SUBSCRIBED:
        if state.pending_in:
            # A.2.3: approves the contact's pending request.
            return Transition(True, _with(state, frm=True, into=False, approved=False))
        if not state.has_from:
            # §3.4: no request to approve yet: a pre-approval, noted and not routed.
            return Transition(False, replace(state, approved=True))
        return Transition(False, state)
    if kind == UNSUBSCRIBED:
        # A.2.4: cancels the contact's subscription or denies its request; also cancels a pre-approval (§3.4).
        if state.has_from or state.pending_in:
            return Transition(True, _with(state, frm=False, into=False, approved=False))
        return Transition(False, replace(state, approved=False))
    raise ValueError(f"not a subscription type: {kind!r}")


def inbound(state: State, kind: str) -> Transition:
    """The contact sends ``kind`` to the user (RFC 6121 §3.1.3, §3.2.3, §3.3.3, §3.4, Appendix A.3)."""
    state = normal(state)
    if kind == SUBSCRIBE:
        if state.has_from:
            # §3.1.3: already subscribed: the server answers for the user, nothing is delivered.
            return Transition(False, state, SUBSCRIBED)
        if state.approved:
            # §3.4: pre-approved: the server approves for the user.
            return Transition(False, _with(state, frm=True, into=False, approved=False), SUBSCRIBED)
        if state.pending_in:
            return Transition(False, state)
        return Transition(True, _with(state, into=True))
    if kind == SUBSCRIBED:
        # A.3.3: only an outstanding request of the user is approved.
        if state.pending_out:
            return Transition(True, _with(state, to=True, out=False))
        return Transition(False, state)
    if kind == UNSUBSCRIBE:
        # A.3.2: the contact cancels its subscription to the user or its pending request.
        if state.has_from or state.pending_in:
            return Transition(True, _with(state, frm=False, into=False))
        return Transition(False, state)
    if kind == UNSUBSCRIBED:
        # A.3.4: the contact cancels the user's subscription or denies the user's request.
        if state.has_to or state.pending_out:
            return Transition(True, _with(state, to=False, out=False))
        return Transition(False, state)
    raise ValueError(f"not a subscription type: {kind!r}")
