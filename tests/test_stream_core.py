"""The negotiation state machine of the stream core, on a fake transport and a task.Clock."""

from __future__ import annotations

import base64

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.words.xish import domish

from xmppcluster.auth.credentials import derive
from xmppcluster.auth.sasl import ChannelInfo
from xmppcluster.config import parse_text
from xmppcluster.core import namespaces as ns
from xmppcluster.core.server import XMPPServer
from xmppcluster.streams.core import ClientStream, StreamHeader

PASSWORD = "correct horse"


class FakeAccounts:
    def __init__(self, users: dict[str, str]) -> None:
        self.creds = {(u, m): derive(m, p) for u, p in users.items() for m in ("SCRAM-SHA-1", "SCRAM-SHA-256")}

    async def get_credentials(self, user: str, domain: str, mechanism: str):
        return self.creds.get((user, mechanism)) if domain == "localhost" else None


class FakeStorage:
    def __init__(self) -> None:
        self.accounts = FakeAccounts({"alice": PASSWORD, "bob": PASSWORD})


class FakeCerts:
    def creator_for(self, name):
        return ("creator", name)


class FakeTransport:
    """Records what the core asks of its transport."""

    listener = None
    pause_reading = resume_reading = redirect_to = None  # optional capabilities (StreamTransport)

    def __init__(self, *, secure: bool = False, can_starttls: bool = True) -> None:
        self.peer = "192.0.2.1"
        self.secure = secure
        self.can_starttls = can_starttls
        self.headers: list[dict] = []
        self.sent: list[domish.Element] = []
        self.closed: list[domish.Element | None] = []
        self.restarts = 0
        self.tls: list = []

    def open_stream(self, attrs):
        self.headers.append(attrs)

    def send(self, element):
        self.sent.append(element)

    def send_serialized(self, xml: bytes) -> None:
        self.send(el(xml.decode()))

    def close_stream(self, error=None):
        self.closed.append(error)

    def restart_stream(self):
        self.restarts += 1

    def start_tls(self, creator):
        self.tls.append(creator)
        self.secure = True
        self.can_starttls = False

    def channel_info(self):
        return ChannelInfo(secure=self.secure, bindings={})

    # helpers for assertions
    def last(self) -> domish.Element:
        return self.sent[-1]

    def error_condition(self) -> str | None:
        error = self.closed[-1]
        return None if error is None else next(error.elements()).name


def make_server(config: str = "", clock: Clock | None = None) -> XMPPServer:
    base = "--auth-failure-delay=1.0\n--unauthenticated-timeout=60\n--idle-timeout=600\n"
    server = XMPPServer(parse_text(base + config), FakeStorage(), FakeCerts(), clock=clock or Clock())
    return server


def header(to: str | None = "localhost", version: str | None = "1.0") -> StreamHeader:
    return StreamHeader(to=to, version=version, lang="en")


def el(xml: str) -> domish.Element:
    from xmppcluster.core.xml import parse_element

    return parse_element(xml)


def plain_auth(user: str, password: str) -> domish.Element:
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    return el(f"<auth xmlns='{ns.SASL}' mechanism='PLAIN'>{token}</auth>")


def feature_names(features: domish.Element) -> list[str]:
    return [child.name for child in features.elements()]


class NegotiationTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = make_server(clock=self.clock)

    def open(self, *, secure: bool = False, tls_required: bool = True) -> tuple[ClientStream, FakeTransport]:
        transport = FakeTransport(secure=secure, can_starttls=not secure)
        stream = ClientStream(self.server, transport, tls_required=tls_required)
        return stream, transport

    def authenticate(self, stream: ClientStream, transport: FakeTransport, user: str = "alice") -> None:
        stream.stream_started(header())
        stream.element_received(plain_auth(user, PASSWORD))
        self.assertEqual(transport.last().name, "success")
        stream.stream_started(header())

    def bind(self, stream: ClientStream, transport: FakeTransport, resource: str | None = "phone") -> str:
        body = f"<resource>{resource}</resource>" if resource else ""
        stream.element_received(el(f"<iq xmlns='jabber:client' type='set' id='b1'>"
                                   f"<bind xmlns='{ns.BIND}'>{body}</bind></iq>"))
        reply = transport.last()
        self.assertEqual(reply["type"], "result")
        return str(next(reply.elements(ns.BIND, "bind")).jid)

    def login(self, user: str = "alice", resource: str | None = "phone") -> tuple[ClientStream, FakeTransport]:
        stream, transport = self.open(secure=True)
        self.authenticate(stream, transport, user)
        self.bind(stream, transport, resource)
        return stream, transport

    # -- headers -------------------------------------------------------------------------------------------

    def test_header_answered_with_features(self) -> None:
        stream, transport = self.open()
        stream.stream_started(header())
        self.assertEqual(transport.headers[0]["from"], "localhost")
        self.assertEqual(transport.headers[0]["version"], "1.0")
        self.assertEqual(transport.headers[0]["id"], stream.id)
        self.assertEqual(feature_names(transport.last()), ["starttls"])
        self.assertEqual(next(transport.last().elements()).firstChildElement().name, "required")

    def test_missing_version(self) -> None:
        stream, transport = self.open()
        stream.stream_started(header(version=None))
        self.assertEqual(transport.error_condition(), "unsupported-version")
        self.assertEqual(stream.state, "closed")

    def test_unserved_domain(self) -> None:
        stream, transport = self.open()
        stream.stream_started(header(to="elsewhere.example"))
        self.assertEqual(transport.error_condition(), "host-unknown")

    def test_missing_to(self) -> None:
        stream, transport = self.open()
        stream.stream_started(header(to=None))
        self.assertEqual(transport.error_condition(), "host-unknown")

    def test_error_before_header_opens_stream_first(self) -> None:
        stream, transport = self.open()
        stream.transport_failed("not-well-formed", "broken")
        self.assertEqual(len(transport.headers), 1)
        self.assertEqual(transport.error_condition(), "not-well-formed")

    def test_unexpected_restart(self) -> None:
        stream, transport = self.open(secure=True)
        stream.stream_started(header())
        stream.stream_started(header())
        self.assertEqual(transport.error_condition(), "bad-format")

    # -- STARTTLS -------------------------------------------------------------------------------------------

    def test_sasl_before_required_tls(self) -> None:
        stream, transport = self.open()
        stream.stream_started(header())
        stream.element_received(plain_auth("alice", PASSWORD))
        self.assertEqual(transport.error_condition(), "policy-violation")

    def test_stanza_before_tls(self) -> None:
        stream, transport = self.open()
        stream.stream_started(header())
        stream.element_received(el("<message xmlns='jabber:client' to='bob@localhost'/>"))
        self.assertEqual(transport.error_condition(), "not-authorized")

    def test_starttls_then_mechanisms(self) -> None:
        stream, transport = self.open()
        stream.stream_started(header())
        stream.element_received(el(f"<starttls xmlns='{ns.TLS}'/>"))
        self.assertEqual(transport.last().name, "proceed")
        self.assertEqual(transport.tls, [("creator", "localhost")])
        self.assertEqual(transport.restarts, 1)
        stream.stream_started(header())
        features = transport.last()
        self.assertNotIn("starttls", feature_names(features))
        mechanisms = [str(m) for m in next(features.elements(ns.SASL, "mechanisms")).elements()]
        self.assertIn("PLAIN", mechanisms)
        self.assertIn("SCRAM-SHA-256", mechanisms)

    def test_optional_tls_offers_plain_free_mechanisms(self) -> None:
        stream, transport = self.open(tls_required=False)
        stream.stream_started(header())
        features = transport.last()
        self.assertEqual(feature_names(features)[0], "starttls")
        self.assertIsNone(next(features.elements()).firstChildElement())
        mechanisms = [str(m) for m in next(features.elements(ns.SASL, "mechanisms")).elements()]
        self.assertNotIn("PLAIN", mechanisms)
        self.assertIn("SCRAM-SHA-1", mechanisms)

    # -- SASL ------------------------------------------------------------------------------------------------

    def test_plain_success_restarts_and_offers_bind(self) -> None:
        stream, transport = self.open(secure=True)
        stream.stream_started(header())
        stream.element_received(plain_auth("alice", PASSWORD))
        self.assertEqual(transport.last().name, "success")
        self.assertEqual(transport.restarts, 1)
        self.assertEqual(stream.state, "authenticated")
        stream.stream_started(header())
        self.assertEqual(feature_names(transport.last())[:2], ["bind", "session"])
        self.assertEqual(len(transport.headers), 2)

    def test_wrong_password_delayed_failure_then_retry(self) -> None:
        stream, transport = self.open(secure=True)
        stream.stream_started(header())
        stream.element_received(plain_auth("alice", "wrong"))
        self.assertNotEqual(transport.last().name, "failure")  # throttled: not answered yet
        self.clock.advance(1.0)
        self.assertEqual(transport.last().name, "failure")
        self.assertEqual(transport.last().firstChildElement().name, "not-authorized")
        self.assertEqual(stream.state, "auth")
        stream.element_received(plain_auth("alice", PASSWORD))
        self.clock.advance(0)
        self.assertEqual(transport.last().name, "success")

    def test_too_many_failures_close_the_stream(self) -> None:
        stream, transport = self.open(secure=True)
        stream.stream_started(header())
        for _ in range(3):
            stream.element_received(plain_auth("alice", "wrong"))
            self.clock.advance(10)
        self.assertEqual([e.name for e in transport.sent].count("failure"), 3)
        self.assertEqual(transport.error_condition(), "policy-violation")

    def test_elements_during_sasl_are_queued_in_order(self) -> None:
        stream, transport = self.open(secure=True)
        stream.stream_started(header())
        stream.element_received(plain_auth("alice", "wrong"))
        stream.element_received(plain_auth("alice", PASSWORD))
        self.clock.advance(1.0)
        self.assertEqual([e.name for e in transport.sent[-2:]], ["failure", "success"])

    def test_stanza_before_auth(self) -> None:
        stream, transport = self.open(secure=True)
        stream.stream_started(header())
        stream.element_received(el("<iq xmlns='jabber:client' type='get' id='1'/>"))
        self.assertEqual(transport.error_condition(), "not-authorized")

    # -- binding ---------------------------------------------------------------------------------------------

    def test_bind_client_resource(self) -> None:
        stream, transport = self.open(secure=True)
        self.authenticate(stream, transport)
        self.assertEqual(self.bind(stream, transport, "phone"), "alice@localhost/phone")
        self.assertEqual(stream.state, "established")
        self.assertIs(self.server.sessions.get("alice@localhost", "phone"), stream.session)

    def test_bind_generated_resource(self) -> None:
        stream, transport = self.open(secure=True)
        self.authenticate(stream, transport)
        jid = self.bind(stream, transport, None)
        self.assertTrue(jid.startswith("alice@localhost/") and len(jid) > len("alice@localhost/"))

    def test_bind_resourceprep(self) -> None:
        stream, transport = self.open(secure=True)
        self.authenticate(stream, transport)
        self.assertEqual(self.bind(stream, transport, "Ph\u00d6ne"), "alice@localhost/Ph\u00d6ne")

    def test_bind_invalid_resource(self) -> None:
        stream, transport = self.open(secure=True)
        self.authenticate(stream, transport)
        stream.element_received(el(f"<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='{ns.BIND}'>"
                                   f"<resource>{'x' * 1100}</resource></bind></iq>"))
        self.assertEqual(transport.last()["type"], "error")
        self.assertEqual(stream.state, "bind")

    def test_conflict_older_session_kicked(self) -> None:
        first, first_transport = self.login(resource="same")
        second, second_transport = self.login(resource="same")
        self.assertEqual(first_transport.error_condition(), "conflict")
        self.assertEqual(first.state, "closed")
        self.assertIs(self.server.sessions.get("alice@localhost", "same"), second.session)
        self.assertEqual(len(self.server.sessions), 1)

    def test_legacy_session_iq(self) -> None:
        stream, transport = self.login()
        stream.element_received(el(f"<iq xmlns='jabber:client' type='set' id='s1'>"
                                   f"<session xmlns='{ns.SESSION}'/></iq>"))
        self.assertEqual((transport.last()["type"], transport.last()["id"]), ("result", "s1"))

    def test_message_before_bind(self) -> None:
        stream, transport = self.open(secure=True)
        self.authenticate(stream, transport)
        stream.element_received(el("<message xmlns='jabber:client' to='bob@localhost'/>"))
        self.assertEqual(transport.error_condition(), "not-authorized")

    # -- established ------------------------------------------------------------------------------------------

    def test_message_between_sessions_with_stamped_from(self) -> None:
        alice, _ = self.login("alice", "a")
        bob, bob_transport = self.login("bob", "b")
        alice.element_received(el("<message xmlns='jabber:client' to='bob@localhost/b' id='m1'>"
                                  "<body>hi</body></message>"))
        delivered = bob_transport.last()
        self.assertEqual(delivered["from"], "alice@localhost/a")
        self.assertEqual(str(next(delivered.elements(ns.CLIENT, "body"))), "hi")

    def test_spoofed_from_is_a_stream_error(self) -> None:
        alice, transport = self.login("alice")
        alice.element_received(el("<message xmlns='jabber:client' from='bob@localhost/x' to='bob@localhost'/>"))
        self.assertEqual(transport.error_condition(), "invalid-from")

    def test_own_bare_from_accepted(self) -> None:
        alice, _ = self.login("alice", "a")
        bob, bob_transport = self.login("bob", "b")
        alice.element_received(el("<message xmlns='jabber:client' from='alice@localhost' to='bob@localhost/b'/>"))
        self.assertEqual(bob_transport.last()["from"], "alice@localhost/a")

    def test_unknown_top_level_element(self) -> None:
        stream, transport = self.login()
        stream.element_received(el("<foo xmlns='jabber:client'/>"))
        self.assertEqual(transport.error_condition(), "unsupported-stanza-type")

    def test_iq_to_unknown_namespace_gets_service_unavailable(self) -> None:
        stream, transport = self.login()
        stream.element_received(el("<iq xmlns='jabber:client' type='get' id='q' to='localhost'>"
                                   "<query xmlns='urn:example:nothing'/></iq>"))
        reply = transport.last()
        self.assertEqual((reply["type"], reply["id"]), ("error", "q"))
        self.assertEqual(reply.error.firstChildElement().name, "service-unavailable")

    def test_clean_close_unbinds(self) -> None:
        unbound = []
        self.server.hooks.on("session/unbound", lambda session, reason: unbound.append(session.jid))
        stream, transport = self.login()
        stream.stream_ended()
        self.assertEqual(transport.closed, [None])
        self.assertEqual(unbound, ["alice@localhost/phone"])
        self.assertEqual(len(self.server.sessions), 0)

    def test_connection_lost_unbinds(self) -> None:
        stream, transport = self.login()
        stream.connection_lost()
        self.assertEqual(len(self.server.sessions), 0)
        self.assertEqual(transport.closed, [])

    # -- timers ----------------------------------------------------------------------------------------------

    def test_unauthenticated_timeout(self) -> None:
        stream, transport = self.open()
        stream.stream_started(header())
        self.clock.advance(59)
        self.assertEqual(transport.closed, [])
        self.clock.advance(2)
        self.assertEqual(transport.error_condition(), "connection-timeout")

    def test_authenticated_stream_not_timed_out_as_unauthenticated(self) -> None:
        stream, transport = self.login()
        self.clock.advance(61)
        self.assertEqual(transport.closed, [])

    def test_idle_timeout_reset_by_activity(self) -> None:
        stream, transport = self.login()
        self.clock.advance(500)
        stream.activity()
        self.clock.advance(500)
        self.assertEqual(transport.closed, [])
        self.clock.advance(101)
        self.assertEqual(transport.error_condition(), "connection-timeout")

    def test_nothing_sent_after_close(self) -> None:
        stream, transport = self.login()
        stream.fail("policy-violation", "test")
        count = len(transport.sent)
        stream.send(el("<message xmlns='jabber:client'/>"))
        stream.element_received(el("<message xmlns='jabber:client' to='alice@localhost'/>"))
        self.assertEqual(len(transport.sent), count)
        self.assertEqual(len(transport.closed), 1)
