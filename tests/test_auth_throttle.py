"""The SASL throttle across streams: failures space out the next checks of an account or address on every
stream, parallel guesses queue for one slot at a time, and a check whose slot is too far away is refused."""

from __future__ import annotations

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.trial import unittest

from tests.test_sasl import ITERATIONS, Accounts, ScramClient, auth, response, text
from xmppcluster.auth import scram
from xmppcluster.auth.sasl import NS_SASL, AuthThrottle, ChannelInfo, SASLServer

PEER = "192.0.2.7"
JULIET = "juliet@example.com"


class AdmitTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.throttle = AuthThrottle(clock=self.clock, base_delay=1.0, max_delay=30.0)

    def test_clean_keys_are_never_gated(self) -> None:
        for _ in range(5):
            self.assertEqual(self.throttle.admit(PEER, JULIET), 0.0)

    def test_account_slots_after_a_failure(self) -> None:
        self.throttle.failed(PEER, JULIET)  # 1 failure: checks 1 s apart
        self.assertEqual(self.throttle.admit("198.51.100.1", JULIET), 1.0)
        # Queued behind the first, which counts as a failure until its outcome: 2 s after it.
        self.assertEqual(self.throttle.admit("198.51.100.2", JULIET), 3.0)
        self.assertEqual(self.throttle.admit("198.51.100.3", "romeo@example.com"), 0.0)
        self.clock.advance(7)  # the second booked check would follow 4 s after its slot at 3 s
        self.assertEqual(self.throttle.admit("198.51.100.4", JULIET), 0.0)

    def test_spacing_doubles_and_far_slots_are_refused(self) -> None:
        for _ in range(6):
            self.throttle.failed(PEER, JULIET)
        self.assertEqual(self.throttle.spacing(6), 30.0)
        self.assertEqual(self.throttle.admit("198.51.100.1", JULIET), 30.0)
        self.assertIsNone(self.throttle.admit("198.51.100.2", JULIET))  # 60 s away: refused, not queued
        self.clock.advance(31)
        self.assertEqual(self.throttle.admit("198.51.100.2", JULIET), 29.0)

    def test_address_gated_after_its_grace(self) -> None:
        for n in range(3):
            self.throttle.failed(PEER, f"user{n}@example.com")
            gated = n + 1 > self.throttle.peer_grace
            self.assertEqual(self.throttle.admit(PEER, "someone@example.com") > 0, gated, n)

    def test_success_clears_the_account_queue(self) -> None:
        self.throttle.failed(PEER, JULIET)
        self.throttle.succeeded(PEER, JULIET)
        self.assertEqual(self.throttle.admit("198.51.100.1", JULIET), 0.0)

    def test_disabled(self) -> None:
        throttle = AuthThrottle(clock=self.clock, base_delay=0.0, max_delay=0.0)
        throttle.failed(PEER, JULIET)
        self.assertEqual(throttle.admit(PEER, JULIET), 0.0)

    def test_booked_slot_keeps_entry_alive(self) -> None:
        throttle = AuthThrottle(clock=self.clock, window=10.0)
        for _ in range(6):
            throttle.failed(PEER, JULIET)
        self.clock.advance(9)
        self.assertEqual(throttle.admit("198.51.100.1", JULIET), 21.0)
        self.clock.advance(11)  # past the window, but a check is booked at 30 s and the next slot is 60 s
        self.assertIsNone(throttle.admit("198.51.100.2", JULIET))
        self.clock.advance(15)
        self.assertEqual(throttle.admit("198.51.100.2", JULIET), 25.0)


class ParallelStreamsTests(unittest.TestCase):
    """N SASL negotiations (N streams) guessing one account get their proofs checked one slot at a time."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.throttle = AuthThrottle(clock=self.clock, base_delay=1.0, max_delay=8.0)
        self.accounts = Accounts()
        self.checked: list[float] = []
        verify = scram.verify_client_proof

        def counting(*args):
            self.checked.append(self.clock.seconds())
            return verify(*args)

        self.patch(scram, "verify_client_proof", counting)

    def server(self, peer: str) -> SASLServer:
        return SASLServer(domain="example.com", credentials=self.accounts, channel=ChannelInfo(True, {}),
                          peer=peer, throttle=self.throttle, clock=self.clock,
                          log=Logger(observer=lambda event: None), iterations=ITERATIONS)

    def proof(self, server: SASLServer, password: str) -> Deferred:
        """Send the client-first message (answered at once), then the proof; the Deferred of its answer."""
        client = ScramClient("SCRAM-SHA-256", "juliet", password)
        challenge = self.successResultOf(Deferred.fromCoroutine(server.handle(auth("SCRAM-SHA-256",
                                                                                    client.first()))))
        return Deferred.fromCoroutine(server.handle(response(client.final(text(challenge.reply)))))

    def test_parallel_guesses(self) -> None:
        self.throttle.failed("203.0.113.1", JULIET)  # the account is already under attack
        results = [self.proof(self.server(f"198.51.100.{n}"), "wrong") for n in range(10)]
        self.clock.pump([0.5] * 200)
        conditions = [self.successResultOf(d).reply.firstChildElement().name for d in results]
        # Checked in slots 1, 2, 4, 8 s apart (capped at 8); the others were refused without a check.
        self.assertEqual(self.checked, [1.0, 3.0, 7.0])
        self.assertEqual(conditions.count("not-authorized"), 3)
        self.assertEqual(conditions.count("temporary-auth-failure"), 7)

    def test_refused_attempt_says_why(self) -> None:
        for _ in range(5):
            self.throttle.failed("203.0.113.1", JULIET)
        self.throttle.admit("203.0.113.1", JULIET)  # the next slot is taken
        reply = self.successResultOf(self.proof(self.server(PEER), "r0m30")).reply
        self.assertEqual(reply.firstChildElement().name, "temporary-auth-failure")
        self.assertIn("try again later", str(next(reply.elements(NS_SASL, "text"))))
        self.assertEqual(self.checked, [])  # the right password was not even looked at

    def test_proof_waits_for_the_slot(self) -> None:
        self.throttle.failed("203.0.113.1", JULIET)
        final = self.proof(self.server(PEER), "r0m30")  # the client-first message did not wait
        self.assertNoResult(final)
        self.clock.advance(1.0)
        self.assertEqual(self.successResultOf(final).reply.name, "success")


class EncryptionRequiredTests(unittest.SynchronousTestCase):
    def test_every_mechanism_refused_with_text(self) -> None:
        clock = task.Clock()
        server = SASLServer(domain="example.com", credentials=Accounts(), channel=ChannelInfo(False, {}),
                            peer=PEER, throttle=AuthThrottle(clock=clock), clock=clock,
                            log=Logger(observer=lambda event: None), require_encryption=True)
        self.assertIn("SCRAM-SHA-256", server.mechanisms())  # advertised, so that a client learns why
        for mechanism in ("SCRAM-SHA-256", "PLAIN"):
            d = Deferred.fromCoroutine(server.handle(auth(mechanism, b"n,,n=juliet,r=abc")))
            reply = self.successResultOf(d).reply  # at once: not delayed, not counted
            self.assertEqual(reply.firstChildElement().name, "encryption-required")
            self.assertIn("encrypted connection", str(next(reply.elements(NS_SASL, "text"))))
        self.assertEqual(len(server.throttle), 0)
