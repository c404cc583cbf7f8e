"""Every row of RFC 6121 Appendix A (outbound A.2, inbound A.3), plus pre-approval (§3.4), one test per row.

The rows below are transcribed from the RFC independently of the implementation's code paths:
(existing state, forwarded?, new state or None for "no state change").
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from xmppcluster.modules.subscription import State, inbound, outbound

NONE, NPO, NPI, NPOI = "None", "None + Pending Out", "None + Pending In", "None + Pending Out/In"
TO, TPI, FROM, FPO, BOTH = "To", "To + Pending In", "From", "From + Pending Out", "Both"

# A.2.1 .. A.2.4: the user's server processing stanzas the user sends ("route?").
OUTBOUND = {
    "subscribe": [
        (NONE, True, NPO), (NPO, True, None), (NPI, True, NPOI), (NPOI, True, None), (TO, True, None),
        (TPI, True, None), (FROM, True, FPO), (FPO, True, None), (BOTH, True, None),
    ],
    "unsubscribe": [
        (NONE, True, None), (NPO, True, NONE), (NPI, True, None), (NPOI, True, NPI), (TO, True, NONE),
        (TPI, True, NPI), (FROM, True, None), (FPO, True, FROM), (BOTH, True, FROM),
    ],
    "subscribed": [
        (NONE, False, None), (NPO, False, None), (NPI, True, FROM), (NPOI, True, FPO), (TO, False, None),
        (TPI, True, BOTH), (FROM, False, None), (FPO, False, None), (BOTH, False, None),
    ],
    "unsubscribed": [
        (NONE, False, None), (NPO, False, None), (NPI, True, NONE), (NPOI, True, NPO), (TO, False, None),
        (TPI, True, TO), (FROM, True, NONE), (FPO, True, NPO), (BOTH, True, TO),
    ],
}

# A.3.1 .. A.3.4: the user's server processing stanzas from the contact ("deliver?").
INBOUND = {
    "subscribe": [
        (NONE, True, NPI), (NPO, True, NPOI), (NPI, False, None), (NPOI, False, None), (TO, True, TPI),
        (TPI, False, None), (FROM, False, None), (FPO, False, None), (BOTH, False, None),
    ],
    "unsubscribe": [
        (NONE, False, None), (NPO, False, None), (NPI, True, NONE), (NPOI, True, NPO), (TO, False, None),
        (TPI, True, TO), (FROM, True, NONE), (FPO, True, NPO), (BOTH, True, TO),
    ],
    "subscribed": [
        (NONE, False, None), (NPO, True, TO), (NPI, False, None), (NPOI, True, TPI), (TO, False, None),
        (TPI, False, None), (FROM, False, None), (FPO, True, BOTH), (BOTH, False, None),
    ],
    "unsubscribed": [
        (NONE, False, None), (NPO, True, NONE), (NPI, False, None), (NPOI, True, NPI), (TO, True, NONE),
        (TPI, True, NPI), (FROM, False, None), (FPO, True, FROM), (BOTH, True, FROM),
    ],
}


class AppendixATests(SynchronousTestCase):
    """One generated test per row: test_<direction>_<kind>_<state>."""

    def check(self, step, kind: str, existing: str, forward: bool, new: str | None) -> None:
        transition = step(State.named(existing), kind)
        self.assertEqual(transition.forward, forward)
        self.assertEqual(transition.state.name, new or existing)


def _slug(name: str) -> str:
    return name.lower().replace(" + ", "_").replace("/", "_").replace(" ", "_")


for _direction, _step, _table in (("outbound", outbound, OUTBOUND), ("inbound", inbound, INBOUND)):
    for _kind, _rows in _table.items():
        for _existing, _forward, _new in _rows:
            def _test(self, step=_step, kind=_kind, existing=_existing, forward=_forward, new=_new):
                self.check(step, kind, existing, forward, new)

            _test.__doc__ = f"A: {_direction} {_kind} in {_existing!r}"
            setattr(AppendixATests, f"test_{_direction}_{_kind}_{_slug(_existing)}", _test)


class AutoReplyTests(SynchronousTestCase):
    def test_inbound_subscribe_when_subscribed_is_answered_by_the_server(self) -> None:
        # §3.1.3: "From", "From + Pending Out", "Both": the server replies subscribed for the user.
        for existing in (FROM, FPO, BOTH):
            self.assertEqual(inbound(State.named(existing), "subscribe").auto_reply, "subscribed", existing)
        for existing in (NONE, NPO, NPI, NPOI, TO, TPI):
            self.assertIsNone(inbound(State.named(existing), "subscribe").auto_reply, existing)


class PreApprovalTests(SynchronousTestCase):
    """RFC 6121 §3.4."""

    def test_subscribed_without_request_pre_approves(self) -> None:
        for existing in (NONE, NPO, TO):
            transition = outbound(State.named(existing), "subscribed")
            self.assertFalse(transition.forward, existing)
            self.assertTrue(transition.state.approved, existing)
            self.assertEqual(transition.state.name, existing)

    def test_subscribed_when_already_subscribed_is_not_a_pre_approval(self) -> None:
        for existing in (FROM, FPO, BOTH):
            self.assertFalse(outbound(State.named(existing), "subscribed").state.approved, existing)

    def test_pre_approved_request_is_approved_by_the_server(self) -> None:
        for existing, new in ((NONE, FROM), (NPO, FPO), (TO, BOTH)):
            transition = inbound(State.named(existing, approved=True), "subscribe")
            self.assertFalse(transition.forward, existing)
            self.assertEqual(transition.auto_reply, "subscribed")
            self.assertEqual(transition.state.name, new)
            self.assertFalse(transition.state.approved)

    def test_unsubscribed_cancels_pre_approval(self) -> None:
        for existing in (NONE, NPO, TO):
            transition = outbound(State.named(existing, approved=True), "unsubscribed")
            self.assertFalse(transition.forward)
            self.assertFalse(transition.state.approved)
            self.assertEqual(transition.state.name, existing)

    def test_inbound_unsubscribed_keeps_pre_approval(self) -> None:
        # §4.3.2: an "unsubscribed" answering a probe must not cancel a pre-approval.
        transition = inbound(State.named(TO, approved=True), "unsubscribed")
        self.assertTrue(transition.state.approved)
        self.assertEqual(transition.state.name, NONE)


class StateTests(SynchronousTestCase):
    def test_names_round_trip(self) -> None:
        for name in (NONE, NPO, NPI, NPOI, TO, TPI, FROM, FPO, BOTH):
            self.assertEqual(State.named(name).name, name)

    def test_unknown_names_and_kinds(self) -> None:
        self.assertRaises(ValueError, State.named, "Both + Pending In")
        self.assertRaises(ValueError, State.named, "Sometimes")
        self.assertRaises(ValueError, outbound, State(), "probe")
        self.assertRaises(ValueError, inbound, State(), "available")
