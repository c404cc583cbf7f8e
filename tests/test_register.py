"""XEP-0077 in-band registration: before authentication on the stream core, and after it through the router."""

from __future__ import annotations

import base64

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.words.xish import domish

from tests.test_base_modules import Harness, child, error_condition
from tests.test_message_rules import eventually
from xmppcluster.auth.credentials import derive
from xmppcluster.auth.sasl import ChannelInfo
from xmppcluster.core import namespaces as ns
from xmppcluster.core.xml import parse_element
from xmppcluster.modules import register
from xmppcluster.streams.core import ClientStream, StreamHeader

REG = "jabber:iq:register"
ENABLED = "--virt-hosts=localhost:register,example.org:max-users=3:register,closed.org\n"


class Transport:
    """A stream transport that records what it is asked to send; ``next()`` waits for the next element."""

    listener = None
    pause_reading = resume_reading = redirect_to = None  # optional capabilities (StreamTransport)

    def __init__(self, secure: bool = True, peer: str = "192.0.2.1") -> None:
        self.peer = peer
        self.secure = secure
        self.can_starttls = False
        self.sent: list[domish.Element] = []
        self.closed: list[domish.Element | None] = []
        self._waiting: list[Deferred] = []
        self._read = 0

    def open_stream(self, attrs: dict) -> None:
        pass

    def send(self, element: domish.Element) -> None:
        self.sent.append(element)
        while self._waiting and self._read < len(self.sent):
            self._read += 1
            self._waiting.pop(0).callback(self.sent[self._read - 1])

    def send_serialized(self, xml: bytes) -> None:
        self.send(parse_element(xml))

    def close_stream(self, error: domish.Element | None = None) -> None:
        self.closed.append(error)

    def restart_stream(self) -> None:
        pass

    def start_tls(self, creator: object) -> None:
        raise AssertionError("no STARTTLS here")

    def channel_info(self) -> ChannelInfo:
        return ChannelInfo(secure=self.secure, bindings={})

    def next(self) -> Deferred:
        d: Deferred = Deferred()
        if self._read < len(self.sent):
            self._read += 1
            d.callback(self.sent[self._read - 1])
        else:
            self._waiting.append(d)
        return d


def iq(type: str, inner: str, id: str = "r1", to: str | None = None) -> domish.Element:
    to_attr = f" to='{to}'" if to else ""
    return parse_element(f"<iq xmlns='jabber:client' type='{type}' id='{id}'{to_attr}>"
                         f"<query xmlns='{REG}'>{inner}</query></iq>")


def creds(user: str, password: str) -> str:
    return f"<username>{user}</username><password>{password}</password>"


class PreAuthTests(TestCase):
    timeout = 20

    async def setUp(self) -> None:
        self.h = await Harness.create(self, ["jabber:iq:register"], ENABLED)
        self.accounts = self.h.server.storage.accounts

    def open(self, domain: str = "localhost", secure: bool = True, peer: str = "192.0.2.1") -> tuple:
        transport = Transport(secure, peer)
        stream = ClientStream(self.h.server, transport, tls_required=False)
        stream.stream_started(StreamHeader(to=domain, version="1.0", lang="en"))
        self.addCleanup(stream.connection_lost)
        return stream, transport

    async def ask(self, stream: ClientStream, transport: Transport, request: domish.Element) -> domish.Element:
        transport._read = len(transport.sent)
        stream.element_received(request)
        return await transport.next()

    def test_feature_only_when_enabled_and_encrypted(self) -> None:
        def offered(domain: str, secure: bool = True) -> bool:
            features = self.open(domain, secure)[1].sent[0]
            return any(e.uri == register.FEATURE and e.name == "register" for e in features.elements())

        self.assertTrue(offered("localhost"))
        self.assertFalse(offered("closed.org"))
        self.assertFalse(offered("localhost", secure=False))

    def test_feature_follows_the_encrypted_hop_not_tls_on_this_socket(self) -> None:
        """A hop that counts as encrypted without TLS here (loopback, a trusted proxy's https) is like TLS."""
        class ProxiedTransport(Transport):
            def channel_info(self) -> ChannelInfo:
                return ChannelInfo(secure=True, bindings={})

        transport = ProxiedTransport(secure=False)  # e.g. plain BOSH behind a TLS-terminating trusted proxy
        stream = ClientStream(self.h.server, transport, tls_required=False)
        stream.stream_started(StreamHeader(to="localhost", version="1.0", lang="en"))
        self.addCleanup(stream.connection_lost)
        self.assertTrue(any(e.uri == register.FEATURE for e in transport.sent[0].elements()))

    async def test_form(self) -> None:
        stream, transport = self.open()
        reply = await self.ask(stream, transport, iq("get", ""))
        self.assertEqual(reply["type"], "result")
        self.assertEqual([e.name for e in child(reply, "query").elements()], ["instructions", "username", "password"])

    async def test_register_then_authenticate(self) -> None:
        stream, transport = self.open()
        reply = await self.ask(stream, transport, iq("set", creds("Carol", "pässword")))
        self.assertEqual((reply["type"], reply["id"]), ("result", "r1"))
        self.assertFalse(reply.hasAttribute("to"))
        self.assertTrue(await self.accounts.exists("carol", "localhost"))
        token = base64.b64encode("\0carol\0pässword".encode()).decode()
        reply = await self.ask(stream, transport,
                               parse_element(f"<auth xmlns='{ns.SASL}' mechanism='PLAIN'>{token}</auth>"))
        self.assertEqual(reply.name, "success")

    async def test_conflict_and_no_password_echo(self) -> None:
        stream, transport = self.open()
        reply = await self.ask(stream, transport, iq("set", creds("alice", "hunter2")))
        self.assertEqual(error_condition(reply), "conflict")
        self.assertNotIn("hunter2", reply.toXml())

    async def test_missing_or_bad_fields(self) -> None:
        stream, transport = self.open()
        for inner in ("<username>dave</username>", "<username>dave</username><password/>",
                      "<password>x</password>", creds("bad@name", "x"), creds("dave", "\ue000")):
            reply = await self.ask(stream, transport, iq("set", inner))
            self.assertEqual(error_condition(reply), "not-acceptable", inner)
        self.assertFalse(await self.accounts.exists("dave", "localhost"))

    async def test_one_registration_per_stream(self) -> None:
        stream, transport = self.open()
        await self.ask(stream, transport, iq("set", creds("erin", "pw")))
        reply = await self.ask(stream, transport, iq("set", creds("frank", "pw")))
        self.assertEqual(error_condition(reply), "not-acceptable")
        self.assertFalse(await self.accounts.exists("frank", "localhost"))

    async def test_disabled_vhost(self) -> None:
        stream, transport = self.open("closed.org")
        for kind, inner in (("get", ""), ("set", creds("gina", "pw"))):
            reply = await self.ask(stream, transport, iq(kind, inner))
            self.assertEqual(error_condition(reply), "service-unavailable")
        self.assertEqual(transport.closed, [])
        self.assertFalse(await self.accounts.exists("gina", "closed.org"))

    async def test_plain_stream_refused(self) -> None:
        stream, transport = self.open(secure=False)
        reply = await self.ask(stream, transport, iq("set", creds("hal", "pw")))
        self.assertEqual(error_condition(reply), "not-authorized")
        self.assertFalse(await self.accounts.exists("hal", "localhost"))

    async def test_max_users(self) -> None:
        for n in range(3):
            stream, transport = self.open("example.org", peer=f"192.0.2.{10 + n}")
            reply = await self.ask(stream, transport, iq("set", creds(f"u{n}", "pw")))
            self.assertIsNone(error_condition(reply))
        stream, transport = self.open("example.org", peer="192.0.2.20")
        reply = await self.ask(stream, transport, iq("set", creds("u3", "pw")))
        self.assertEqual(error_condition(reply), "not-allowed")
        self.assertEqual(await self.accounts.count("example.org"), 3)

    async def test_throttle_per_address(self) -> None:
        self.patch(register, "THROTTLE_MAX", 2)
        clock = self.h.server.clock
        for n in range(2):
            stream, transport = self.open(peer="2001:db8::1")
            reply = await self.ask(stream, transport, iq("set", creds(f"t{n}", "pw")))
            self.assertIsNone(error_condition(reply))
        stream, transport = self.open(peer="2001:db8::2")  # same /64
        reply = await self.ask(stream, transport, iq("set", creds("t2", "pw")))
        self.assertEqual(error_condition(reply), "policy-violation")
        other, other_transport = self.open(peer="198.51.100.1")
        reply = await self.ask(other, other_transport, iq("set", creds("t3", "pw")))
        self.assertIsNone(error_condition(reply))
        clock.advance(register.THROTTLE_WINDOW)  # (the earlier streams time out meanwhile)
        stream, transport = self.open(peer="2001:db8::3")
        reply = await self.ask(stream, transport, iq("set", creds("t2", "pw")))
        self.assertIsNone(error_condition(reply))

    async def test_failed_attempts_do_not_count(self) -> None:
        self.patch(register, "THROTTLE_MAX", 1)
        stream, transport = self.open()
        for _ in range(3):
            reply = await self.ask(stream, transport, iq("set", creds("alice", "pw")))
            self.assertEqual(error_condition(reply), "conflict")
        reply = await self.ask(stream, transport, iq("set", creds("ivan", "pw")))
        self.assertIsNone(error_condition(reply))

    async def test_other_iq_before_auth_still_fails(self) -> None:
        stream, transport = self.open()
        stream.element_received(parse_element("<iq xmlns='jabber:client' type='get' id='x'>"
                                              "<query xmlns='jabber:iq:roster'/></iq>"))
        self.assertEqual(len(transport.closed), 1)


class PostAuthTests(TestCase):
    timeout = 20

    async def setUp(self) -> None:
        self.h = await Harness.create(self, ["jabber:iq:register"], ENABLED)
        self.accounts = self.h.server.storage.accounts

    async def test_get_says_registered_without_password(self) -> None:
        alice = self.h.login("alice@localhost")
        reply = await self.h.iq(alice, f"<query xmlns='{REG}'/>")
        query = child(reply, "query")
        self.assertIsNotNone(child(query, "registered"))
        self.assertEqual(str(child(query, "username")), "alice")
        self.assertEqual(str(child(query, "password")), "")

    async def stored_key(self, user: str = "alice") -> bytes:
        return (await self.accounts.get_credentials(user, "localhost", "SCRAM-SHA-256")).stored_key

    async def test_change_password(self) -> None:
        alice = self.h.login("alice@localhost")
        reply = await self.h.iq(alice, f"<query xmlns='{REG}'>{creds('alice', 'n3w')}</query>", type="set",
                                to="localhost")
        self.assertIsNone(error_condition(reply))
        stored = await self.accounts.get_credentials("alice", "localhost", "SCRAM-SHA-256")
        self.assertEqual(derive("SCRAM-SHA-256", "n3w", stored.salt, stored.iterations).stored_key,
                         stored.stored_key)

    async def test_password_change_refusals(self) -> None:
        before = await self.stored_key()
        alice = self.h.login("alice@localhost")
        cases = [(creds("bob", "x"), "not-allowed"), ("<password>x</password>", "bad-request"),
                 (creds("alice", ""), "not-acceptable")]
        for inner, condition in cases:
            reply = await self.h.iq(alice, f"<query xmlns='{REG}'>{inner}</query>", type="set")
            self.assertEqual(error_condition(reply), condition, inner)
            self.assertNotIn("<password>x", reply.toXml())
        plain = self.h.login("alice@localhost", "plain", secure=False)
        reply = await self.h.iq(plain, f"<query xmlns='{REG}'>{creds('alice', 'x')}</query>", type="set")
        self.assertEqual(error_condition(reply), "not-authorized")
        bob = self.h.login("bob@localhost")
        reply = await self.h.iq(bob, f"<query xmlns='{REG}'>{creds('alice', 'x')}</query>", type="set",
                                to="alice@localhost")
        self.assertEqual(error_condition(reply), "forbidden")
        self.assertEqual(await self.stored_key(), before)

    async def test_remove_account(self) -> None:
        removed = []
        self.h.server.hooks.on("account/removed", lambda user, domain: removed.append((user, domain)))
        phone = self.h.login("alice@localhost", "phone")
        laptop = self.h.login("alice@localhost", "laptop")
        reply = await self.h.iq(phone, f"<query xmlns='{REG}'><remove/></query>", type="set")
        self.assertEqual(reply["type"], "result")
        await eventually(lambda: phone.stream.failed)  # closed just after the reply went out
        self.assertFalse(await self.accounts.exists("alice", "localhost"))
        self.assertEqual(removed, [("alice", "localhost")])
        for session in (phone, laptop):
            self.assertEqual([c for c, _ in session.stream.failed], ["not-authorized"])
        self.assertEqual(phone.stream.sent.index(reply), len(phone.stream.sent) - 1)

    async def test_remove_must_be_alone(self) -> None:
        alice = self.h.login("alice@localhost")
        reply = await self.h.iq(alice, f"<query xmlns='{REG}'><remove/><username>alice</username></query>",
                                type="set")
        self.assertEqual(error_condition(reply), "bad-request")
        self.assertTrue(await self.accounts.exists("alice", "localhost"))

    async def test_disabled_vhost(self) -> None:
        h = await Harness.create(self, ["jabber:iq:register"], "--virt-hosts=localhost,example.org\n")
        alice = h.login("alice@localhost")
        for kind, inner in (("get", ""), ("set", "<remove/>")):
            reply = await h.iq(alice, f"<query xmlns='{REG}'>{inner}</query>", type=kind)
            self.assertEqual(error_condition(reply), "service-unavailable")
        self.assertTrue(await h.server.storage.accounts.exists("alice", "localhost"))
