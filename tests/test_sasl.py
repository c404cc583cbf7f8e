"""SASL negotiation through SASLServer.handle(): every mechanism, channel binding, failures, throttling, logging."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger, formatEvent
from twisted.trial import unittest
from twisted.words.xish import domish

from xmppcluster.auth.credentials import derive
from xmppcluster.auth.sasl import (
    NS_SASL,
    AccountDisabled,
    AuthThrottle,
    ChannelInfo,
    CredentialsExpired,
    MechanismTooWeak,
    SASLServer,
)
from xmppcluster.auth.throttle import peer_key

ITERATIONS = 64  # keep tests fast; the server shows the same count for unknown accounts
EXPORTER = b"\x01" * 32
END_POINT = b"\x02" * 32
BOTH = {"tls-exporter": EXPORTER, "tls-server-end-point": END_POINT}


class Accounts:
    """In-memory CredentialLookup: juliet/r0m30 on example.com."""

    def __init__(self):
        self.accounts = {"juliet": "r0m30"}
        self.refusal = None
        self.error = None
        self.calls = []

    async def get_credentials(self, user, domain, mechanism):
        self.calls.append((user, domain, mechanism))
        if self.error is not None:
            raise self.error
        password = self.accounts.get(user) if domain == "example.com" else None
        creds = derive(mechanism, password, b"s" * 16, ITERATIONS) if password else None
        if self.refusal is not None:
            raise self.refusal(creds)
        return creds


class ScramClient:
    """A SCRAM client written from RFC 5802 for these tests (shares no code with the server)."""

    def __init__(self, mechanism, user, password, flag="n", authzid="", binding=b"", nonce=None):
        self.hash = "sha256" if mechanism.startswith("SCRAM-SHA-256") else "sha1"
        self.password = password
        self.binding = binding
        authz = f"a={authzid}" if authzid else ""
        self.gs2 = f"{flag},{authz},"
        self.nonce = nonce or base64.b64encode(os.urandom(12)).decode()
        self.bare = f"n={user.replace('=', '=3D').replace(',', '=2C')},r={self.nonce}"

    def first(self):
        return (self.gs2 + self.bare).encode()

    def final(self, server_first, nonce=None, binding=None):
        fields = dict(item.split("=", 1) for item in server_first.decode().split(","))
        assert fields["r"].startswith(self.nonce)
        salted = hashlib.pbkdf2_hmac(self.hash, self.password.encode(), base64.b64decode(fields["s"]),
                                     int(fields["i"]))
        cbind = base64.b64encode(self.gs2.encode() + (self.binding if binding is None else binding)).decode()
        without_proof = f"c={cbind},r={nonce or fields['r']}"
        auth_message = f"{self.bare},{server_first.decode()},{without_proof}".encode()
        client_key = hmac.digest(salted, b"Client Key", self.hash)
        signature = hmac.digest(hashlib.new(self.hash, client_key).digest(), auth_message, self.hash)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", self.hash)
        self.expected_v = base64.b64encode(hmac.digest(server_key, auth_message, self.hash)).decode()
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


def auth(mechanism, data=None):
    el = domish.Element((NS_SASL, "auth"))
    if mechanism is not None:
        el["mechanism"] = mechanism
    if data is not None:
        el.addContent(data if isinstance(data, str) else base64.b64encode(data).decode() or "=")
    return el


def response(data):
    el = domish.Element((NS_SASL, "response"))
    el.addContent(data if isinstance(data, str) else base64.b64encode(data).decode() or "=")
    return el


def text(el):
    return base64.b64decode(str(el)) if str(el) else b""


class Base(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.throttle = AuthThrottle(clock=self.clock)
        self.accounts = Accounts()
        self.events = []
        self.secret = b"cluster-secret"

    def server(self, secure=True, bindings=None, **kw):
        return SASLServer(
            domain="example.com", credentials=self.accounts, channel=ChannelInfo(secure, dict(bindings or {})),
            peer="192.0.2.7", throttle=self.throttle, clock=self.clock, log=Logger(observer=self.events.append),
            secret=self.secret, iterations=ITERATIONS, run_blocking=lambda fn, *args: succeed(fn(*args)), **kw,
        )

    def send(self, server, element, advance=True):
        d = Deferred.fromCoroutine(server.handle(element))
        if advance:
            self.clock.advance(31)  # longer than any delay (max 30 s), shorter than the window
        return self.successResultOf(d)

    def assertFailure(self, result, condition):
        self.assertTrue(result.done)
        self.assertEqual(result.reply.toXml(), f"<failure xmlns='{NS_SASL}'><{condition}/></failure>")
        self.assertIsNone(result.user)

    def scram(self, mechanism="SCRAM-SHA-256", user="juliet", password="r0m30", server=None, initial=True,
              **client_kw):
        """Run a SCRAM exchange; returns (final result, client)."""
        server = server or self.server(bindings=BOTH)
        client = ScramClient(mechanism, user, password, **client_kw)
        if initial:
            challenge = self.send(server, auth(mechanism, client.first()))
        else:
            empty = self.send(server, auth(mechanism))
            self.assertEqual(empty.reply.toXml(), f"<challenge xmlns='{NS_SASL}'/>")
            challenge = self.send(server, response(client.first()))
        if challenge.reply.name != "challenge":
            return challenge, client
        self.assertFalse(challenge.done)
        return self.send(server, response(client.final(text(challenge.reply)))), client


class FeatureTests(Base):
    def test_without_tls(self):
        server = self.server(secure=False)
        self.assertEqual(server.mechanisms(), ["SCRAM-SHA-256", "SCRAM-SHA-1"])
        self.assertEqual(
            [el.toXml() for el in server.features()],
            [f"<mechanisms xmlns='{NS_SASL}'><mechanism>SCRAM-SHA-256</mechanism>"
             "<mechanism>SCRAM-SHA-1</mechanism></mechanisms>"],
        )

    def test_tls_with_bindings_and_anonymous(self):
        server = self.server(bindings={"tls-server-end-point": END_POINT, "tls-exporter": EXPORTER},
                             allow_anonymous=True)
        self.assertEqual(
            [el.toXml() for el in server.features()],
            [
                f"<mechanisms xmlns='{NS_SASL}'><mechanism>SCRAM-SHA-256-PLUS</mechanism>"
                "<mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>SCRAM-SHA-256</mechanism>"
                "<mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism>"
                "<mechanism>ANONYMOUS</mechanism></mechanisms>",
                "<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/>"
                "<channel-binding type='tls-server-end-point'/></sasl-channel-binding>",
            ],
        )

    def test_tls_without_bindings_no_plus(self):
        server = self.server(allow_plain=False)
        self.assertEqual(server.mechanisms(), ["SCRAM-SHA-256", "SCRAM-SHA-1"])
        self.assertEqual(len(server.features()), 1)


class ScramTests(Base):
    def test_every_mechanism_and_binding(self):
        cases = [
            ("SCRAM-SHA-256", "n", b"", {}),
            ("SCRAM-SHA-1", "n", b"", {}),
            ("SCRAM-SHA-256", "y", b"", {}),  # y is fine when we offer no -PLUS
            ("SCRAM-SHA-256", "n", b"", BOTH),  # n: client has no channel binding
            ("SCRAM-SHA-256-PLUS", "p=tls-exporter", EXPORTER, BOTH),
            ("SCRAM-SHA-256-PLUS", "p=tls-server-end-point", END_POINT, BOTH),
            ("SCRAM-SHA-1-PLUS", "p=tls-exporter", EXPORTER, BOTH),
            ("SCRAM-SHA-1-PLUS", "p=tls-server-end-point", END_POINT, {"tls-server-end-point": END_POINT}),
        ]
        for mechanism, flag, binding, bindings in cases:
            for initial in (True, False):
                result, client = self.scram(mechanism, server=self.server(bindings=bindings), flag=flag,
                                            binding=binding, initial=initial)
                self.assertTrue(result.done, (mechanism, flag))
                self.assertEqual(result.reply.name, "success", (mechanism, flag, result.reply.toXml()))
                self.assertEqual(text(result.reply), f"v={client.expected_v}".encode())
                self.assertEqual((result.user, result.anonymous), ("juliet", False))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_username_is_prepared(self):
        result, _ = self.scram(user="JuLiet")
        self.assertEqual(result.user, "juliet")
        self.assertEqual(self.accounts.calls[-1], ("juliet", "example.com", "SCRAM-SHA-256"))

    def test_wrong_password(self):
        result, _ = self.scram(password="wrong")
        self.assertFailure(result, "not-authorized")

    def test_wrong_binding_data(self):
        for flag, binding in (("p=tls-exporter", END_POINT), ("p=tls-server-end-point", b"")):
            result, _ = self.scram("SCRAM-SHA-256-PLUS", flag=flag, binding=binding)
            self.assertFailure(result, "not-authorized")

    def test_binding_type_not_available(self):
        server = self.server(bindings={"tls-server-end-point": END_POINT})
        result, _ = self.scram("SCRAM-SHA-256-PLUS", server=server, flag="p=tls-exporter", binding=EXPORTER)
        self.assertFailure(result, "not-authorized")

    def test_downgrade_y_flag_detected(self):
        result, _ = self.scram("SCRAM-SHA-256", flag="y")
        self.assertFailure(result, "not-authorized")
        self.assertEqual(self.accounts.calls, [])  # refused before any lookup

    def test_plus_needs_p_and_p_needs_plus(self):
        result, _ = self.scram("SCRAM-SHA-256-PLUS", flag="n")
        self.assertFailure(result, "malformed-request")
        result, _ = self.scram("SCRAM-SHA-256", flag="p=tls-exporter", binding=EXPORTER)
        self.assertFailure(result, "malformed-request")

    def test_plus_not_offered_without_binding(self):
        result, _ = self.scram("SCRAM-SHA-256-PLUS", server=self.server(), flag="p=tls-exporter", binding=b"")
        self.assertFailure(result, "invalid-mechanism")

    def test_c_attribute_must_repeat_gs2_header(self):
        server = self.server()
        client = ScramClient("SCRAM-SHA-256", "juliet", "r0m30", flag="y")
        challenge = self.send(server, auth("SCRAM-SHA-256", client.first()))
        client.gs2 = "n,,"  # c= no longer matches what was sent first
        self.assertFailure(self.send(server, response(client.final(text(challenge.reply)))), "not-authorized")

    def test_nonce_mismatch(self):
        server = self.server()
        client = ScramClient("SCRAM-SHA-256", "juliet", "r0m30")
        challenge = self.send(server, auth("SCRAM-SHA-256", client.first()))
        final = client.final(text(challenge.reply), nonce=client.nonce + "forged")
        self.assertFailure(self.send(server, response(final)), "not-authorized")

    def test_malformed_final(self):
        server = self.server()
        client = ScramClient("SCRAM-SHA-256", "juliet", "r0m30")
        self.send(server, auth("SCRAM-SHA-256", client.first()))
        self.assertFailure(self.send(server, response(b"c=biws,p=AAAA")), "malformed-request")

    def test_authzid(self):
        result, _ = self.scram(authzid="juliet@example.com")
        self.assertEqual(result.user, "juliet")
        for bad in ("romeo@example.com", "juliet@example.com/balcony", "juliet@other.example", "@@"):
            result, _ = self.scram(authzid=bad)
            self.assertFailure(result, "invalid-authzid")

    def test_invalid_username(self):
        for name in ("jul@iet", "", "a\u0000b", "x" * 1100):
            result, _ = self.scram(user=name)
            self.assertFailure(result, "not-authorized")

    def test_unknown_user_indistinguishable(self):
        """Same challenge shape, a salt stable per name (and across servers sharing the secret), same reply."""
        self.accounts.accounts["romeo"] = "x"
        client = ScramClient("SCRAM-SHA-256", "nobody", "guess", nonce="N")
        first = text(self.send(self.server(), auth("SCRAM-SHA-256", client.first())).reply)
        again = text(self.send(self.server(), auth("SCRAM-SHA-256", client.first())).reply)
        real = ScramClient("SCRAM-SHA-256", "romeo", "guess", nonce="N")
        real_first = text(self.send(self.server(), auth("SCRAM-SHA-256", real.first())).reply)

        def shape(message):
            fields = dict(item.split("=", 1) for item in message.decode().split(","))
            return sorted(fields), len(fields["r"]), len(base64.b64decode(fields["s"])), fields["i"]

        self.assertEqual(shape(first), shape(real_first))
        self.assertEqual(first.split(b",")[1:], again.split(b",")[1:])  # same fake salt and count
        self.secret = b"another"
        other = text(self.send(self.server(), auth("SCRAM-SHA-256", client.first())).reply)
        self.assertNotEqual(first.split(b",")[1], other.split(b",")[1])

        self.throttle = AuthThrottle(clock=self.clock)
        unknown, _ = self.scram(user="nobody", password="guess", server=self.server())
        self.throttle = AuthThrottle(clock=self.clock)
        wrong, _ = self.scram(user="romeo", password="guess", server=self.server())
        self.assertEqual(unknown.reply.toXml(), wrong.reply.toXml())

    def test_sha1_only_account_for_sha256_request(self):
        async def only_sha1(user, domain, mechanism):
            return derive("SCRAM-SHA-1", "r0m30", b"s" * 16, ITERATIONS)

        self.accounts.get_credentials = only_sha1
        result, _ = self.scram("SCRAM-SHA-256")
        self.assertFailure(result, "not-authorized")


class PlainAnonymousTests(Base):
    def plain(self, server, message):
        return self.send(server, auth("PLAIN", message))

    def test_plain_over_tls(self):
        result = self.plain(self.server(), b"\0juliet\0r0m30")
        self.assertEqual(result.reply.toXml(), f"<success xmlns='{NS_SASL}'/>")
        self.assertEqual((result.done, result.user), (True, "juliet"))
        result = self.plain(self.server(), b"juliet@example.com\0Juliet\0r0m30")
        self.assertEqual(result.user, "juliet")

    def test_plain_without_initial_response(self):
        server = self.server()
        self.assertEqual(self.send(server, auth("PLAIN")).reply.toXml(), f"<challenge xmlns='{NS_SASL}'/>")
        self.assertEqual(self.send(server, response(b"\0juliet\0r0m30")).user, "juliet")

    def test_plain_sha1_only_account(self):
        calls = []

        async def only_sha1(user, domain, mechanism):
            calls.append(mechanism)
            return derive("SCRAM-SHA-1", "r0m30", b"s" * 16, ITERATIONS) if mechanism == "SCRAM-SHA-1" else None

        self.accounts.get_credentials = only_sha1
        self.assertEqual(self.plain(self.server(), b"\0juliet\0r0m30").user, "juliet")
        self.assertEqual(calls, ["SCRAM-SHA-256", "SCRAM-SHA-1"])

    def test_plain_refused_without_tls(self):
        server = self.server(secure=False)
        self.assertNotIn("PLAIN", server.mechanisms())
        self.assertFailure(self.plain(server, b"\0juliet\0r0m30"), "encryption-required")
        self.assertEqual(self.accounts.calls, [])

    def test_plain_disabled(self):
        server = self.server(allow_plain=False)
        self.assertNotIn("PLAIN", server.mechanisms())
        self.assertFailure(self.plain(server, b"\0juliet\0r0m30"), "invalid-mechanism")

    def test_plain_failures(self):
        for message, condition in [
            (b"\0juliet\0wrong", "not-authorized"),
            (b"\0nobody\0r0m30", "not-authorized"),
            (b"\0juliet\0", "not-authorized"),
            (b"\0jul@iet\0r0m30", "not-authorized"),
            (b"juliet\0r0m30", "malformed-request"),
            (b"", "malformed-request"),
            (b"\0juliet\0r0m30\0", "malformed-request"),
            (b"\0\xffjuliet\0r0m30", "malformed-request"),
            (b"romeo@example.com\0juliet\0r0m30", "invalid-authzid"),
        ]:
            self.assertFailure(self.plain(self.server(), message), condition)

    def test_anonymous(self):
        self.assertFailure(self.send(self.server(), auth("ANONYMOUS")), "invalid-mechanism")
        first = self.send(self.server(allow_anonymous=True), auth("ANONYMOUS"))
        second = self.send(self.server(allow_anonymous=True), auth("ANONYMOUS", b"trace"))
        for result in (first, second):
            self.assertEqual(result.reply.toXml(), f"<success xmlns='{NS_SASL}'/>")
            self.assertTrue(result.anonymous)
            self.assertRegex(result.user, "^[0-9a-f]{32}$")
        self.assertNotEqual(first.user, second.user)


class ProtocolTests(Base):
    def test_abort(self):
        server = self.server()
        self.send(server, auth("SCRAM-SHA-256", ScramClient("SCRAM-SHA-256", "juliet", "x").first()))
        result = self.send(server, domish.Element((NS_SASL, "abort")), advance=False)  # no delay
        self.assertFailure(result, "aborted")
        self.assertEqual(self.throttle.delay("192.0.2.7", "juliet@example.com"), 1.0)  # not counted

    def test_bad_base64(self):
        for data in ("not base64!", "AAA", "AA=A"):
            self.assertFailure(self.send(self.server(), auth("PLAIN", data)), "incorrect-encoding")

    def test_equals_is_empty_response(self):
        self.assertFailure(self.send(self.server(), auth("PLAIN", "=")), "malformed-request")

    def test_oversized_data(self):
        big = base64.b64encode(b"\0juliet\0" + b"x" * 9000).decode()
        self.assertFailure(self.send(self.server(), auth("PLAIN", big)), "malformed-request")

    def test_mechanism_errors(self):
        self.assertFailure(self.send(self.server(), auth(None)), "invalid-mechanism")
        self.assertFailure(self.send(self.server(), auth("DIGEST-MD5")), "invalid-mechanism")
        self.assertFailure(self.send(self.server(), auth("scram-sha-256")), "invalid-mechanism")

    def test_out_of_order(self):
        self.assertFailure(self.send(self.server(), response(b"x")), "malformed-request")
        self.assertFailure(self.send(self.server(), domish.Element(("jabber:client", "auth"))), "malformed-request")
        self.assertFailure(self.send(self.server(), domish.Element((NS_SASL, "success"))), "malformed-request")
        server = self.server()
        self.send(server, auth("PLAIN"))
        self.assertFailure(self.send(server, auth("PLAIN")), "malformed-request")

    def test_retry_after_failure_then_nothing_after_success(self):
        server = self.server()
        self.assertFailure(self.send(server, auth("PLAIN", b"\0juliet\0wrong")), "not-authorized")
        self.assertEqual(server.failures, 1)
        self.assertEqual(self.send(server, auth("PLAIN", b"\0juliet\0r0m30")).user, "juliet")
        self.assertFailure(self.send(server, auth("PLAIN", b"\0juliet\0r0m30")), "malformed-request")
        self.assertFailure(self.send(server, response(b"")), "malformed-request")

    def test_policy_refusals(self):
        for refusal, condition in ((AccountDisabled, "account-disabled"),
                                   (CredentialsExpired, "credentials-expired"),
                                   (MechanismTooWeak, "mechanism-too-weak")):
            self.accounts.refusal = refusal
            result, _ = self.scram()
            self.assertFailure(result, condition)
            result, _ = self.scram(password="wrong")  # not revealed without the password
            self.assertFailure(result, "not-authorized")
            self.assertFailure(self.send(self.server(), auth("PLAIN", b"\0juliet\0r0m30")), condition)
            self.assertFailure(self.send(self.server(), auth("PLAIN", b"\0juliet\0bad")), "not-authorized")

    def test_refusal_without_credentials(self):
        self.accounts.refusal = lambda creds: AccountDisabled()
        result, _ = self.scram()
        self.assertFailure(result, "account-disabled")

    def test_storage_error(self):
        self.accounts.error = RuntimeError("database down")
        result, _ = self.scram()
        self.assertFailure(result, "temporary-auth-failure")
        self.assertEqual(self.throttle.delay("192.0.2.7", "juliet@example.com"), 1.0)  # not counted
        self.flushLoggedErrors(RuntimeError)


class LoggingTests(Base):
    def messages(self):
        return [formatEvent(event) for event in self.events if not event.get("log_failure")]

    def test_one_line_per_outcome_without_secrets(self):
        server = self.server()
        self.send(server, auth("PLAIN", b"\0juliet\0s3cret-pw"))
        self.send(server, auth("PLAIN", b"\0juliet\0r0m30"))
        result, client = self.scram(server=self.server(bindings=BOTH), flag="p=tls-exporter",
                                    mechanism="SCRAM-SHA-256-PLUS", binding=EXPORTER)
        lines = self.messages()
        self.assertEqual(len(lines), 3, lines)
        self.assertIn("PLAIN failure (not-authorized) for juliet@example.com from 192.0.2.7", lines[0])
        self.assertIn("PLAIN success for juliet@example.com", lines[1])
        self.assertIn("SCRAM-SHA-256-PLUS success for juliet@example.com", lines[2])
        everything = repr(self.events)
        for secret in ("s3cret-pw", "r0m30", client.expected_v, "p="):
            self.assertNotIn(secret, everything)


class ThrottleTests(Base):
    def test_delay_grows_and_caps(self):
        delays = []
        for _ in range(8):
            delays.append(self.throttle.delay("192.0.2.7", "juliet@example.com"))
            self.throttle.failed("192.0.2.7", "juliet@example.com")
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0])

    def test_per_ip_and_per_account(self):
        for _ in range(3):
            self.throttle.failed("192.0.2.7", "juliet@example.com")
        self.assertEqual(self.throttle.delay("198.51.100.1", "juliet@example.com"), 8.0)  # account counter
        self.assertEqual(self.throttle.delay("192.0.2.7", "romeo@example.com"), 8.0)  # IP counter
        self.assertEqual(self.throttle.delay("198.51.100.1", "romeo@example.com"), 1.0)
        self.assertEqual(self.throttle.delay("192.0.2.7", None), 8.0)

    def test_success_clears_account_not_ip(self):
        for _ in range(3):
            self.throttle.failed("192.0.2.7", "juliet@example.com")
        self.throttle.succeeded("192.0.2.7", "juliet@example.com")
        self.assertEqual(self.throttle.delay("198.51.100.1", "juliet@example.com"), 1.0)
        self.assertEqual(self.throttle.delay("192.0.2.7", "juliet@example.com"), 8.0)

    def test_window_forgets(self):
        self.throttle.failed("192.0.2.7", "juliet@example.com")
        self.clock.advance(599)
        self.throttle.failed("192.0.2.7", "juliet@example.com")
        self.assertEqual(self.throttle.delay("192.0.2.7", None), 4.0)
        self.clock.advance(601)
        self.assertEqual(self.throttle.delay("192.0.2.7", "juliet@example.com"), 1.0)

    def test_bounded_memory(self):
        throttle = AuthThrottle(clock=self.clock, max_entries=10)
        for i in range(50):
            throttle.failed(f"10.0.0.{i}", f"user{i}@example.com")
        self.assertEqual(len(throttle), 20)
        self.assertEqual(throttle.delay("10.0.0.49", None), 2.0)  # newest kept
        self.assertEqual(throttle.delay("10.0.0.0", "user0@example.com"), 1.0)  # oldest dropped
        self.clock.advance(601)
        throttle.failed("10.0.0.99", None)
        self.assertEqual(len(throttle), 11)  # expired peers pruned; accounts pruned on their next write

    def test_ipv6_grouped_by_64(self):
        self.assertEqual(peer_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64")
        self.assertEqual(peer_key("::ffff:192.0.2.7"), "192.0.2.7")
        self.assertEqual(peer_key("not-an-ip"), "not-an-ip")
        self.throttle.failed("2001:db8:1:2::1", None)
        self.assertEqual(self.throttle.delay("2001:db8:1:2::99", None), 2.0)

    def test_failure_reply_waits_for_delay(self):
        server = self.server()
        expected = [1.0, 2.0, 4.0]
        for delay in expected:
            d = Deferred.fromCoroutine(server.handle(auth("PLAIN", b"\0juliet\0wrong")))
            self.clock.advance(delay - 0.01)
            self.assertNoResult(d)
            self.clock.advance(0.01)
            self.assertFailure(self.successResultOf(d), "not-authorized")

    def test_unknown_account_delayed_like_known(self):
        for _ in range(2):
            self.send(self.server(), auth("PLAIN", b"\0nobody\0x"))
        self.assertEqual(self.throttle.delay("198.51.100.1", "nobody@example.com"), 4.0)

    def test_success_does_not_wait(self):
        d = Deferred.fromCoroutine(self.server().handle(auth("PLAIN", b"\0juliet\0r0m30")))
        self.assertEqual(self.successResultOf(d).user, "juliet")
