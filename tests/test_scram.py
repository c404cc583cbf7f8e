"""SCRAM computations against the RFC 5802 / RFC 7677 test vectors, and the client-first parser."""

from __future__ import annotations

import base64

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from xmppcluster.auth.credentials import derive, saslprep
from xmppcluster.auth.mechanisms import AuthContext, Challenge, ChannelInfo, SASLFailure, Success, fake_credentials
from xmppcluster.auth.scram import (
    ScramMechanism,
    decode_saslname,
    encode_saslname,
    parse_client_first,
    server_signature,
    verify_client_proof,
)

# RFC 5802 §5 (SCRAM-SHA-1) and RFC 7677 §3 (SCRAM-SHA-256): user "user", password "pencil".
VECTORS = {
    "SCRAM-SHA-1": dict(
        client_first="n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
        server_nonce="3rfcNHYJY1ZVvWVs7j",
        salt="QSXCR+Q6sek8bf92",
        server_first="r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
        client_final="c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        server_final="v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
    ),
    "SCRAM-SHA-256": dict(
        client_first="n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
        server_nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        salt="W22ZaJ0SNY7soEsUEjb6gQ==",
        server_first="r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        client_final=(
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
            "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        ),
        server_final="v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
    ),
}


class Lookup:
    def __init__(self, credentials):
        self.credentials = credentials

    async def get_credentials(self, user, domain, mechanism):
        return self.credentials.get((user, mechanism))


def context(credentials, bindings=None):
    return AuthContext("example.com", Lookup(credentials), ChannelInfo(True, bindings or {}), b"k" * 32, 4096)


class VectorTests(unittest.TestCase):
    def vector(self, mechanism):
        v = VECTORS[mechanism]
        creds = derive(mechanism, "pencil", base64.b64decode(v["salt"]), 4096)
        without_proof = v["client_final"].rsplit(",p=", 1)[0]
        auth_message = f"{v['client_first'][3:]},{v['server_first']},{without_proof}".encode()
        return v, creds, auth_message

    def test_proof_and_signature(self):
        for mechanism in VECTORS:
            v, creds, auth_message = self.vector(mechanism)
            proof = base64.b64decode(v["client_final"].rsplit(",p=", 1)[1])
            self.assertTrue(verify_client_proof(creds, auth_message, proof))
            self.assertFalse(verify_client_proof(creds, auth_message, bytes(len(proof))))
            self.assertFalse(verify_client_proof(creds, auth_message, proof[:-1]))
            self.assertEqual(f"v={base64.b64encode(server_signature(creds, auth_message)).decode()}",
                             v["server_final"])

    def test_full_exchange_reproduces_rfc_messages(self):
        for mechanism in VECTORS:
            v, creds, _ = self.vector(mechanism)
            mech = ScramMechanism(context({("user", mechanism): creds}), mechanism, server_nonce=v["server_nonce"])
            first = self.successResultOf(Deferred.fromCoroutine(mech.step(v["client_first"].encode())))
            self.assertEqual(first, Challenge(v["server_first"].encode()))
            final = self.successResultOf(Deferred.fromCoroutine(mech.step(v["client_final"].encode())))
            self.assertEqual(final, Success("user", v["server_final"].encode()))

    def test_wrong_proof_in_vector_exchange(self):
        v, creds, _ = self.vector("SCRAM-SHA-256")
        mech = ScramMechanism(context({("user", "SCRAM-SHA-256"): creds}), "SCRAM-SHA-256", v["server_nonce"])
        self.successResultOf(Deferred.fromCoroutine(mech.step(v["client_first"].encode())))
        bad = v["client_final"][:-6] + "AAAAA="
        failure = self.failureResultOf(Deferred.fromCoroutine(mech.step(bad.encode())), SASLFailure)
        self.assertEqual(failure.value.condition, "not-authorized")
        self.assertEqual(failure.value.user, "user")


class ParserTests(unittest.TestCase):
    def test_saslname(self):
        self.assertEqual(decode_saslname("a=2Cb=3Dc"), "a,b=c")
        self.assertEqual(encode_saslname("a,b=c"), "a=2Cb=3Dc")
        for bad in ("a=b", "a=", "=2", "=3d"):
            self.assertRaises(SASLFailure, decode_saslname, bad)

    def test_client_first(self):
        first = parse_client_first("p=tls-exporter,a=juliet@example.com,n=ju=2Cliet,r=abc,x=ext")
        self.assertEqual(first.gs2_header, "p=tls-exporter,a=juliet@example.com,")
        self.assertEqual((first.cb_flag, first.cb_name), ("p", "tls-exporter"))
        self.assertEqual((first.authzid, first.username, first.nonce), ("juliet@example.com", "ju,liet", "abc"))
        self.assertEqual(first.bare, "n=ju=2Cliet,r=abc,x=ext")

    def test_client_first_malformed(self):
        for bad in (
            "n,,r=abc,n=user",  # wrong order
            "n,,m=ext,n=user,r=abc",  # mandatory extension
            "x,,n=user,r=abc",  # unknown flag
            "p=,,n=user,r=abc",  # empty cb-name
            "p=tls exporter,,n=user,r=abc",
            "n,b=x,n=user,r=abc",  # not an authzid
            "n,,n=user,r=",  # empty nonce
            "n,,n=user,r=a\x7fb",  # unprintable nonce
            "n,,n=user,r=" + "a" * 513,
            "n,,n=user",
            "n,n=user,r=abc",
        ):
            self.assertRaises(SASLFailure, parse_client_first, bad)


class FakeCredentialsTests(unittest.TestCase):
    def test_deterministic_per_name_and_secret(self):
        ctx = context({})
        a = fake_credentials("SCRAM-SHA-256", "alice", ctx)
        self.assertEqual(a, fake_credentials("SCRAM-SHA-256", "alice", context({})))
        self.assertNotEqual(a.salt, fake_credentials("SCRAM-SHA-256", "bob", ctx).salt)
        other = AuthContext("example.com", Lookup({}), ChannelInfo(True, {}), b"z" * 32, 4096)
        self.assertNotEqual(a.salt, fake_credentials("SCRAM-SHA-256", "alice", other).salt)
        self.assertEqual((len(a.salt), a.iterations, len(a.stored_key)), (16, 4096, 32))
        self.assertEqual(len(fake_credentials("SCRAM-SHA-1", "alice", ctx).stored_key), 20)


class SASLprepTests(unittest.TestCase):
    """RFC 4013 examples, and the ASCII fast path giving what the full profile gives."""

    def test_rfc4013_examples(self) -> None:
        self.assertEqual(saslprep("I\u00adX"), "IX")  # soft hyphen mapped to nothing
        self.assertEqual(saslprep("user"), "user")
        self.assertEqual(saslprep("USER"), "USER")
        self.assertEqual(saslprep("\u00aa"), "a")  # NFKC
        self.assertEqual(saslprep("\u2168"), "IX")
        self.assertEqual(saslprep("a\u00a0b"), "a b")  # non-ASCII space mapped to space
        for bad in ("\u0007", "a\x00b", "x\x7f"):
            with self.assertRaises(ValueError):
                saslprep(bad)

    def test_ascii_fast_path_matches_the_full_profile(self) -> None:
        for code in range(128):
            text = f"a{chr(code)}b"
            try:
                slow = saslprep("\u00e9" + text)[1:]  # a non-ASCII first character takes the full path
            except ValueError:
                slow = None
            try:
                fast = saslprep(text)
            except ValueError:
                fast = None
            self.assertEqual(fast, slow, hex(code))
