"""BOSH (XEP-0124 / XEP-0206): protocol tests on fake requests and task.Clock, plus a real HTTP login."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import tempfile
from io import BytesIO
from types import SimpleNamespace

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyChannel, DummyRequest
from twisted.words.xish import domish

from xmppcluster.auth.credentials import derive, salted_password
from xmppcluster.config import parse_text
from xmppcluster.core import namespaces as ns
from xmppcluster.core.server import XMPPServer
from xmppcluster.core.xml import parse_element
from xmppcluster.streams.bosh import BoshResource, bosh_sessions, limited_request
from xmppcluster.streams.bosh_session import HTTPBIND, XBOSH

DOMAIN = "example.com"
NODE = "t1.example.com"
_CREDS: dict[str, object] = {}


def credentials(mechanism: str) -> object:
    if mechanism not in _CREDS:
        _CREDS[mechanism] = derive(mechanism, "secret", salt=b"0123456789abcdef", iterations=4096)
    return _CREDS[mechanism]


class MemoryAccounts:
    """Accounts alice/bob with password 'secret', answered without touching a database."""

    async def get_credentials(self, user: str, domain: str, mechanism: str) -> object:
        return credentials(mechanism) if user in ("alice", "bob") and domain == DOMAIN else None


def make_server(clock: Clock, extra: str = "") -> XMPPServer:
    # Plain HTTP from 192.0.2.1 (not loopback): the domain must allow authentication without TLS.
    config = parse_text(f"--virt-hosts={DOMAIN}:-tls-required\n--node-name={NODE}\n{extra}\n", "<test>")
    return XMPPServer(config, SimpleNamespace(accounts=MemoryAccounts()), certs=None, clock=clock)


class FakeRequest(DummyRequest):
    """A DummyRequest with a body, a client address and a way to lose the connection."""

    def __init__(self, data: bytes = b"", method: bytes = b"POST", postpath: list[bytes] | None = None,
                 headers: dict[bytes, bytes] | None = None, peer: str = "192.0.2.1") -> None:
        super().__init__([] if postpath is None else postpath)
        self.method = method
        self.content = BytesIO(data)
        self.client = IPv4Address("TCP", peer, 40000)
        for name, value in (headers or {}).items():
            self.requestHeaders.setRawHeaders(name, [value])

    def lose(self) -> None:
        for d in self._finishedDeferreds:
            d.errback(Failure(ConnectionDone()))
        self._finishedDeferreds = []

    @property
    def data(self) -> bytes:
        return b"".join(self.written)

    def header(self, name: bytes) -> bytes | None:
        values = self.responseHeaders.getRawHeaders(name)
        return values[0] if values else None

    def body(self) -> domish.Element:
        assert self.finished, "no response yet"
        return parse_element(self.data)


def body_xml(children: str = "", **attrs: object) -> bytes:
    text = "".join(f" {key.replace('__', ':')}='{value}'" for key, value in attrs.items())
    return (f"<body xmlns='{HTTPBIND}' xmlns:xmpp='{XBOSH}'{text}>{children}</body>").encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class ScramClient:
    """Just enough of a SCRAM-SHA-1 client (RFC 5802) for tests."""

    def __init__(self, user: str, password: str) -> None:
        self.password = password
        self.bare = f"n={user},r=clientnonce{os.urandom(4).hex()}"

    def first(self) -> str:
        return b64(("n,," + self.bare).encode())

    def final(self, challenge: str) -> str:
        server_first = base64.b64decode(challenge).decode()
        attrs = dict(item.split("=", 1) for item in server_first.split(","))
        salted = salted_password("sha1", self.password, base64.b64decode(attrs["s"]), int(attrs["i"]))
        client_key = hmac.digest(salted, b"Client Key", "sha1")
        without_proof = f"c={b64(b'n,,')},r={attrs['r']}"
        message = f"{self.bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(hashlib.sha1(client_key).digest(), message, "sha1")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return b64(f"{without_proof},p={b64(proof)}".encode())


class Client:
    """A BOSH client driving a resource with fake requests."""

    def __init__(self, resource: BoshResource, clock: Clock, rid: int = 1000, peer: str = "192.0.2.1") -> None:
        self.resource = resource
        self.clock = clock
        self.rid = rid
        self.peer = peer
        self.sid: str | None = None

    def post(self, data: bytes, headers: dict[bytes, bytes] | None = None) -> FakeRequest:
        request = FakeRequest(data, headers=headers, peer=self.peer)
        request.render(self.resource)
        return request

    def create(self, children: str = "", **attrs: object) -> FakeRequest:
        defaults = {"to": DOMAIN, "rid": self.rid, "wait": 60, "hold": 1, "ver": "1.6", "xmpp__version": "1.0",
                    "xml__lang": "en"}
        defaults.update(attrs)
        request = self.post(body_xml(children, **{k: v for k, v in defaults.items() if v is not None}))
        if request.finished:
            self.sid = request.body().getAttribute("sid")
        return request

    def send(self, children: str = "", rid: int | None = None, **attrs: object) -> FakeRequest:
        if rid is None:
            self.rid += 1
            rid = self.rid
        return self.post(body_xml(children, sid=self.sid, rid=rid, **attrs))

    def settle(self) -> None:
        self.clock.advance(0)

    def login(self, user: str = "alice", resource: str = "web") -> str:
        self.create()
        scram = ScramClient(user, "secret")
        auth = self.send(f"<auth xmlns='{ns.SASL}' mechanism='SCRAM-SHA-1'>{scram.first()}</auth>")
        challenge = str(next(auth.body().elements(ns.SASL, "challenge")))
        done = self.send(f"<response xmlns='{ns.SASL}'>{scram.final(challenge)}</response>")
        assert next(done.body().elements(ns.SASL, "success"), None) is not None, done.data
        restart = self.send(to=DOMAIN, xmpp__restart="true")
        assert next(restart.body().elements(ns.STREAMS, "features"), None) is not None, restart.data
        bind = self.send(f"<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='{ns.BIND}'>"
                         f"<resource>{resource}</resource></bind></iq>")
        jid = str(next(next(bind.body().elements(ns.CLIENT, "iq")).elements(ns.BIND, "bind")).jid)
        assert jid == f"{user}@{DOMAIN}/{resource}", jid
        return jid


class BoshTestCase(TestCase):
    extra = ""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.server = make_server(self.clock, self.extra)
        self.resource = BoshResource(self.server, None)
        self.registry = bosh_sessions(self.server)
        self.client = Client(self.resource, self.clock)

    def configure(self, extra: str) -> None:
        self.server = make_server(self.clock, extra)
        self.resource = BoshResource(self.server, None)
        self.registry = bosh_sessions(self.server)
        self.client = Client(self.resource, self.clock)

    def quiet(self, client: Client | None = None) -> list[domish.Element]:
        """Let the stream core of ``client``'s session just record payloads (no authentication needed)."""
        seen: list[domish.Element] = []
        session = self.registry.find_session((client or self.client).sid)
        session.stream.element_received = seen.append
        return seen

    def assertTerminate(self, request: FakeRequest, condition: str | None) -> None:
        body = request.body()
        self.assertEqual(body.getAttribute("type"), "terminate", request.data)
        self.assertEqual(body.getAttribute("condition"), condition, request.data)


class SessionCreationTests(BoshTestCase):
    def test_attributes(self) -> None:
        request = self.client.create(route="xmpp:evil.example:22", content="text/xml; charset=utf-8")
        body = request.body()
        attrs = body.attributes
        self.assertEqual(len(attrs["sid"]), 40)
        self.assertEqual(attrs["wait"], "30")  # 60 asked, capped by bosh/max-wait
        self.assertEqual((attrs["hold"], attrs["requests"]), ("1", "2"))
        self.assertEqual((attrs["inactivity"], attrs["polling"], attrs["maxpause"]), ("60", "2", "120"))
        self.assertEqual(attrs["ver"], "1.6")
        self.assertEqual(attrs["from"], DOMAIN)
        self.assertEqual(attrs["ack"], "1000")
        self.assertEqual(attrs["secure"], "true")
        self.assertEqual(attrs["host"], NODE)
        self.assertEqual(attrs[(XBOSH, "version")], "1.0")
        self.assertEqual(attrs[(XBOSH, "restartlogic")], "true")
        stream = self.registry.find_session(attrs["sid"]).stream
        self.assertEqual(attrs["authid"], stream.id)
        features = next(body.elements(ns.STREAMS, "features"))
        mechanisms = [str(m) for m in next(features.elements(ns.SASL, "mechanisms")).elements()]
        self.assertIn("SCRAM-SHA-1", mechanisms)
        self.assertNotIn("PLAIN", mechanisms)  # plain HTTP
        self.assertIsNone(next(features.elements(ns.TLS, "starttls"), None))
        self.assertEqual(request.header(b"Content-Type"), b"text/xml; charset=utf-8")

    def test_host_only_on_creation_response(self) -> None:
        self.client.create()
        later = self.client.send(f"<auth xmlns='{ns.SASL}' mechanism='SCRAM-SHA-1'>"
                                 f"{ScramClient('alice', 'x').first()}</auth>")
        self.assertIsNone(later.body().getAttribute("host"))
        self.assertIsNone(later.body().getAttribute("sid"))

    def test_host_off(self) -> None:
        self.configure("bosh/send-node-hostname[B]=false")
        self.assertNotIn("host", self.client.create().body().attributes)

    def test_client_limits_are_lowered_never_raised(self) -> None:
        attrs = self.client.create(wait=10, hold=1).body().attributes
        self.assertEqual((attrs["wait"], attrs["hold"]), ("10", "1"))
        attrs = Client(self.resource, self.clock).create(wait=9999, hold=7).body().attributes
        self.assertEqual((attrs["wait"], attrs["hold"], attrs["requests"]), ("30", "1", "2"))

    def test_content_attribute(self) -> None:
        request = self.client.create(content="text/html; charset=utf-8")
        self.assertEqual(request.header(b"Content-Type"), b"text/html; charset=utf-8")
        self.assertEqual(self.client.send(wait=1).header(b"Content-Type"), None)  # held
        evil = Client(self.resource, self.clock).create(content="text/html\r\nX-Evil: 1")
        self.assertEqual(evil.header(b"Content-Type"), b"text/xml; charset=utf-8")

    def test_improper_addressing(self) -> None:
        self.assertTerminate(self.client.create(to=None), "improper-addressing")

    def test_host_unknown(self) -> None:
        self.assertTerminate(self.client.create(to="other.example"), "host-unknown")
        self.assertEqual(self.registry.sessions, {})

    def test_bad_rid(self) -> None:
        self.assertTerminate(self.client.create(rid="-5"), "bad-request")
        self.assertTerminate(self.client.create(rid=2 ** 53), "bad-request")

    def test_sessions_per_ip(self) -> None:
        self.configure("bosh/max-sessions-per-ip[I]=2")
        for _ in range(2):
            self.assertEqual(Client(self.resource, self.clock).create().body().getAttribute("type"), None)
        self.assertTerminate(Client(self.resource, self.clock).create(), "policy-violation")
        self.assertIsNotNone(Client(self.resource, self.clock, peer="192.0.2.9").create().body().getAttribute("sid"))


class RequestTests(BoshTestCase):
    def test_long_poll_answered_after_wait(self) -> None:
        self.client.create(wait=10)
        held = self.client.send()
        self.assertFalse(held.finished)
        self.clock.advance(9.9)
        self.assertFalse(held.finished)
        self.clock.advance(0.2)
        self.assertEqual(held.data, f"<body xmlns='{HTTPBIND}'/>".encode())

    def test_new_request_releases_held_one_with_ack(self) -> None:
        self.client.create()
        self.quiet()
        first = self.client.send()
        second = self.client.send("<presence xmlns='jabber:client'/>")
        self.assertTrue(first.finished)
        self.assertEqual(first.body().getAttribute("ack"), str(self.client.rid))
        self.assertFalse(second.finished)

    def test_replayed_rid_gets_identical_response(self) -> None:
        self.client.create()
        scram = ScramClient("alice", "secret")
        original = self.client.send(f"<auth xmlns='{ns.SASL}' mechanism='SCRAM-SHA-1'>{scram.first()}</auth>")
        self.assertIn(b"challenge", original.data)
        again = self.client.send(f"<auth xmlns='{ns.SASL}' mechanism='SCRAM-SHA-1'>{scram.first()}</auth>",
                                 rid=self.client.rid)
        self.assertEqual(again.data, original.data)
        creation = self.client.send(rid=self.client.rid - 1)
        self.assertIn(b"sid=", creation.data)

    def test_rid_outside_window(self) -> None:
        self.client.create()
        self.assertTerminate(self.client.send(rid=self.client.rid + 3), "item-not-found")
        self.assertIsNone(self.registry.find_session(self.client.sid))

    def test_forgotten_rid(self) -> None:
        self.client.create()
        self.quiet()
        for _ in range(3):
            self.client.send("<presence xmlns='jabber:client'/>")
        self.assertTerminate(self.client.send(rid=1000), "item-not-found")

    def test_out_of_order_requests_processed_in_order(self) -> None:
        self.client.create()
        session = self.registry.find_session(self.client.sid)
        seen: list[str] = []
        session.stream.element_received = lambda element: seen.append(element["id"])
        base = self.client.rid
        later = self.client.send("<iq xmlns='jabber:client' id='second'/>", rid=base + 2)
        self.assertEqual(seen, [])
        self.assertFalse(later.finished)
        earlier = self.client.send("<iq xmlns='jabber:client' id='first'/>", rid=base + 1)
        self.assertEqual(seen, ["first", "second"])
        self.assertTrue(earlier.finished)  # answered first (hold=1), and acknowledges base + 2
        self.assertEqual(earlier.body().getAttribute("ack"), str(base + 2))
        self.assertFalse(later.finished)

    def test_resent_held_rid_takes_over(self) -> None:
        self.client.create()
        held = self.client.send()
        again = self.client.send(rid=self.client.rid)
        self.assertEqual(held.body().getAttribute("type"), "error")  # recoverable
        self.assertFalse(again.finished)
        self.clock.advance(30)
        self.assertEqual(again.body().attributes, {})

    def test_lost_connection_then_resend_gets_cached_stanzas(self) -> None:
        self.client.create()
        held = self.client.send()
        held.lose()
        session = self.registry.find_session(self.client.sid)
        session.send(domish.Element((ns.CLIENT, "message")))
        self.client.settle()
        resent = self.client.send(rid=self.client.rid)
        self.assertIn(b"<message xmlns='jabber:client'/>", resent.data)

    def test_overactivity(self) -> None:
        self.client.create()
        session = self.registry.find_session(self.client.sid)
        self.quiet()
        base = self.client.rid
        held = self.client.send("<presence xmlns='jabber:client'/>", rid=base + 1)
        early = self.client.send("<presence xmlns='jabber:client'/>", rid=base + 3)
        self.assertFalse(held.finished or early.finished)
        third = self.client.send(rid=base + 4)
        self.assertTerminate(third, "policy-violation")
        self.assertTerminate(held, "other-request")
        self.assertTerminate(early, "other-request")
        self.assertIsNone(self.registry.find_session(self.client.sid))
        self.assertEqual(session.stream.state, "closed")

    def test_pause_or_terminate_may_exceed_requests(self) -> None:
        self.client.create()
        self.quiet()
        base = self.client.rid
        held = self.client.send("<presence xmlns='jabber:client'/>", rid=base + 1)
        early = self.client.send("<presence xmlns='jabber:client'/>", rid=base + 3)
        terminate = self.client.send(rid=base + 2, type="terminate")  # a third open request, allowed
        self.assertTerminate(held, None)
        self.assertEqual(terminate.body().attributes, {})
        self.assertEqual(early.body().attributes, {})
        self.assertIsNone(self.registry.find_session(self.client.sid))

    def test_too_frequent_empty_requests(self) -> None:
        self.client.create()
        self.client.send()
        self.assertTerminate(self.client.send(), "policy-violation")

    def test_polling_session_too_frequent(self) -> None:
        attrs = self.client.create(hold=0).body().attributes
        self.assertEqual((attrs["hold"], attrs["requests"]), ("0", "1"))
        self.assertTrue(self.client.send().finished)  # polling: answered at once
        self.clock.advance(2)
        self.assertEqual(self.client.send().body().attributes, {})
        self.clock.advance(1)
        self.assertTerminate(self.client.send(), "policy-violation")

    def test_malformed_body(self) -> None:
        self.client.create()
        request = self.client.post(b"<body xmlns='" + HTTPBIND.encode() + b"' rid='1'><iq>")
        self.assertTerminate(request, "bad-request")
        self.assertTerminate(self.client.post(b"<body xmlns='x' rid='1'/>"), "bad-request")
        dtd = b"<!DOCTYPE body [<!ENTITY a 'b'>]><body xmlns='" + HTTPBIND.encode() + b"'/>"
        self.assertTerminate(self.client.post(dtd), "bad-request")

    def test_unknown_sid(self) -> None:
        self.client.create()
        self.client.sid = "0" * 40
        self.assertTerminate(self.client.send(), "item-not-found")

    def test_legacy_client_gets_http_status(self) -> None:
        self.client.create(ver=None)
        request = self.client.send(rid=self.client.rid + 5)
        self.assertEqual(request.responseCode, 404)
        self.assertTerminate(request, "item-not-found")

    def test_body_too_large(self) -> None:
        self.configure("--max-stanza-size=10000\nbosh/max-body-size[I]=10000")
        self.client.create()
        big = "<message xmlns='jabber:client'><body>" + "x" * 10000 + "</body></message>"
        self.assertTerminate(self.client.send(big), "policy-violation")
        declared = self.client.post(b"<body/>", headers={b"Content-Length": b"20000"})
        self.assertTerminate(declared, "policy-violation")

    def test_limited_request_stops_buffering(self) -> None:
        request = limited_request(100)(DummyChannel())
        request.gotLength(None)
        request.handleContentChunk(b"x" * 60)
        request.handleContentChunk(b"x" * 60)
        self.assertTrue(request.body_too_large)
        request.content.seek(0)
        self.assertEqual(len(request.content.read()), 60)

    def test_stanza_namespace_inherited_from_body(self) -> None:
        self.client.create()
        session = self.registry.find_session(self.client.sid)
        seen = []
        session.stream.element_received = seen.append
        self.client.send("<iq id='x'><query xmlns='jabber:iq:version'/></iq>")
        self.assertEqual((seen[0].uri, seen[0].name), (ns.CLIENT, "iq"))


class KeyTests(BoshTestCase):
    def keys(self, n: int) -> list[str]:
        chain = [hashlib.sha1(b"seed").hexdigest()]
        for _ in range(n - 1):
            chain.append(hashlib.sha1(chain[-1].encode()).hexdigest())
        return chain  # chain[-1] is K(n)

    def test_key_sequence(self) -> None:
        chain = self.keys(4)
        self.client.create(newkey=chain[3])
        self.quiet()
        self.assertEqual(self.client.send("<presence xmlns='jabber:client'/>", key=chain[2]).finished, False)
        self.client.send("<presence xmlns='jabber:client'/>", key=chain[1].upper())
        self.assertIsNotNone(self.registry.find_session(self.client.sid))
        self.assertTerminate(self.client.send(key=chain[1]), "item-not-found")

    def test_missing_key(self) -> None:
        self.client.create(newkey=self.keys(2)[1])
        self.assertTerminate(self.client.send(), "item-not-found")

    def test_switching_key_sequence(self) -> None:
        old, new = self.keys(2), [hashlib.sha1(b"other").hexdigest()]
        new.append(hashlib.sha1(new[0].encode()).hexdigest())
        self.client.create(newkey=old[1])
        self.quiet()
        self.client.send("<presence xmlns='jabber:client'/>", key=old[0], newkey=new[1])
        self.client.send("<presence xmlns='jabber:client'/>", key=new[0])
        self.assertIsNotNone(self.registry.find_session(self.client.sid))


class LifecycleTests(BoshTestCase):
    extra = "bosh/max-inactivity[I]=10"

    def test_inactivity_ends_session_and_unbinds(self) -> None:
        jid = self.client.login()
        self.assertEqual(len(self.server.sessions), 1)
        self.clock.advance(9)
        self.assertIsNotNone(self.registry.find_session(self.client.sid))
        self.clock.advance(2)
        self.assertIsNone(self.registry.find_session(self.client.sid))
        self.assertEqual(len(self.server.sessions), 0, jid)
        self.assertEqual(self.server.streams, set())
        self.assertTerminate(self.client.send(), "item-not-found")

    def test_held_request_keeps_session_alive(self) -> None:
        self.client.create(wait=30)
        held = self.client.send()
        self.clock.advance(25)
        self.assertFalse(held.finished)
        self.assertIsNotNone(self.registry.find_session(self.client.sid))

    def test_pause_and_resume(self) -> None:
        self.client.login()
        held = self.client.send()
        session = self.registry.find_session(self.client.sid)
        session.send(domish.Element((ns.CLIENT, "message")))  # queued while the pause is answered
        pause = self.client.send(pause=60)
        self.assertTrue(held.finished)
        self.assertEqual(pause.body().attributes, {})
        self.assertEqual(list(pause.body().elements()), [])  # a pause response has no payloads
        self.clock.advance(50)
        self.assertIsNotNone(self.registry.find_session(self.client.sid))
        resumed = self.client.send()
        self.assertIn(b"<message", resumed.data)  # the queued stanza waited for the resume
        self.clock.advance(20)
        self.assertIsNone(self.registry.find_session(self.client.sid))  # back to the normal 10 s

    def test_pause_capped_by_maxpause(self) -> None:
        self.configure("bosh/max-inactivity[I]=10\nbosh/max-pause[I]=30")
        self.client.create()
        self.client.send(pause=3600)
        self.clock.advance(29)
        self.assertIsNotNone(self.registry.find_session(self.client.sid))
        self.clock.advance(2)
        self.assertIsNone(self.registry.find_session(self.client.sid))

    def test_client_terminate(self) -> None:
        self.client.login()
        held = self.client.send()
        terminate = self.client.send("<presence xmlns='jabber:client' type='unavailable'/>", type="terminate")
        self.assertTerminate(held, None)  # the oldest open request carries the terminate
        self.assertEqual(terminate.body().attributes, {})
        self.assertEqual(len(self.server.sessions), 0)
        self.assertIsNone(self.registry.find_session(self.client.sid))

    def test_stream_error_is_remote_stream_error(self) -> None:
        self.client.login()
        held = self.client.send()
        session = self.registry.find_session(self.client.sid)
        session.stream.fail("conflict", "replaced")
        self.assertTerminate(held, "remote-stream-error")
        error = next(held.body().elements(ns.STREAMS, "error"))
        self.assertIsNotNone(next(error.elements(ns.STREAM_ERRORS, "conflict"), None))
        self.assertIn(b"xmlns:stream=", held.data)

    def test_stream_error_without_open_request_waits_for_next(self) -> None:
        self.client.login()
        self.registry.find_session(self.client.sid).stream.fail("policy-violation")
        self.assertTerminate(self.client.send(), "remote-stream-error")
        self.assertTerminate(self.client.send(), "item-not-found")

    def test_system_shutdown(self) -> None:
        self.client.create()
        held = self.client.send()
        self.registry.shutdown()
        self.assertTerminate(held, "system-shutdown")
        self.assertEqual(self.server.streams, set())

    def test_shutdown_of_a_session_nobody_hears_leaves_nothing_scheduled(self) -> None:
        self.client.create()
        self.registry.shutdown()  # no request held: the answer would be kept for one inactivity period
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.registry.sessions, {})

    def test_redirect_keeps_the_scheme_of_the_port(self) -> None:
        """A loopback client on plain http counts as secure for SASL, yet is sent to http, not https."""
        self.client.peer = "127.0.0.1"
        self.client.create()
        session = self.registry.find_session(self.client.sid)
        self.assertTrue(session.secure)
        held = self.client.send()
        session.redirect_to("t2.example.com")
        self.assertTrue(str(next(held.body().elements(HTTPBIND, "uri"))).startswith("http://t2.example.com"))

    def test_see_other_uri(self) -> None:
        self.client.create()
        held = self.client.send()
        self.registry.find_session(self.client.sid).terminate("see-other-uri", uri="https://t2.example.com/http-bind")
        self.assertTerminate(held, "see-other-uri")
        self.assertEqual(str(next(held.body().elements(HTTPBIND, "uri"))), "https://t2.example.com/http-bind")

    def test_message_between_sessions(self) -> None:
        alice = self.client
        alice_jid = alice.login("alice", "web")
        bob = Client(self.resource, self.clock, rid=5000)
        bob.login("bob", "phone")
        waiting = bob.send()
        alice.send(f"<message xmlns='jabber:client' to='bob@{DOMAIN}/phone' type='chat'><body>hi</body></message>")
        self.assertFalse(waiting.finished)  # delivered on the next reactor turn, batched
        alice.settle()
        message = next(waiting.body().elements(ns.CLIENT, "message"))
        self.assertEqual((message["from"], str(message.body)), (alice_jid, "hi"))
        self.assertIn(b"<message xmlns='jabber:client'", waiting.data)

    def test_queue_overflow_bounces(self) -> None:
        self.configure("bosh/max-session-waiting-packets[I]=2")
        alice = self.client
        alice.login("alice", "web")
        bob = Client(self.resource, self.clock, rid=5000)
        bob.login("bob", "phone")
        held = alice.send()
        sent = []
        for n in range(4):
            sent.append(bob.send(f"<message xmlns='jabber:client' to='alice@{DOMAIN}/web' id='m{n}'>"
                                 "<body>x</body></message>"))
            alice.settle()
        # m0 went out in alice's held request; m1 and m2 wait (the limit is 2); m3 comes back to bob,
        # in the response to his previous request (responses go in rid order).
        self.assertIn(b"id='m0'", held.data)
        queue = self.registry.find_session(alice.sid).queue  # serialized while nobody polls (its byte bound)
        self.assertEqual([m.count(b"id='m1'") + 2 * m.count(b"id='m2'") for m in queue], [1, 2])
        error = next(sent[2].body().elements(ns.CLIENT, "message"))
        self.assertEqual((error["id"], error["type"]), ("m3", "error"))
        self.assertIn(b"recipient-unavailable", sent[2].data)

    def test_acknowledgement_report(self) -> None:
        self.client.create(ack="1")
        self.quiet()
        base = self.client.rid
        first = self.client.send("<presence xmlns='jabber:client'/>", ack=base)
        session = self.registry.find_session(self.client.sid)
        session.send(domish.Element((ns.CLIENT, "message")))
        self.client.settle()
        self.assertTrue(first.finished)
        self.clock.advance(2)
        # The client says it only got responses up to `base`: the response to base+1 is reported missing.
        nxt = self.client.send(ack=base)
        body = nxt.body()
        self.assertEqual(body.getAttribute("report"), str(base + 1))
        self.assertEqual(body.getAttribute("time"), "2000")


class HTTPTests(BoshTestCase):
    def test_get_page(self) -> None:
        for postpath in ([], [b""]):
            request = FakeRequest(method=b"GET", postpath=postpath)
            request.render(self.resource)
            self.assertIn(b"BOSH", request.data)
            self.assertEqual(request.header(b"Content-Type"), b"text/plain; charset=utf-8")
        elsewhere = FakeRequest(method=b"GET", postpath=[b"x"])
        elsewhere.render(self.resource)
        self.assertEqual(elsewhere.responseCode, 404)

    def test_cors_default(self) -> None:
        request = self.client.create()
        self.assertEqual(request.header(b"Access-Control-Allow-Origin"), b"*")

    def test_preflight(self) -> None:
        request = FakeRequest(method=b"OPTIONS", headers={b"Origin": b"https://app.example",
                                                          b"Access-Control-Request-Method": b"POST"})
        request.render(self.resource)
        self.assertEqual(request.header(b"Access-Control-Allow-Origin"), b"*")
        self.assertIn(b"POST", request.header(b"Access-Control-Allow-Methods"))
        self.assertEqual(request.header(b"Access-Control-Allow-Headers"), b"Content-Type")

    def test_cors_allow_list(self) -> None:
        self.configure("bosh/cors-allow-origins[s]=https://app.example")
        ok = self.client.post(body_xml(to=DOMAIN, rid=1, ver="1.6"), headers={b"Origin": b"https://app.example"})
        self.assertEqual(ok.header(b"Access-Control-Allow-Origin"), b"https://app.example")
        self.assertEqual(ok.header(b"Vary"), b"Origin")
        bad = self.client.post(body_xml(to=DOMAIN, rid=1, ver="1.6"), headers={b"Origin": b"https://evil.example"})
        self.assertEqual(bad.responseCode, 403)
        self.assertIsNone(bad.header(b"Access-Control-Allow-Origin"))
        self.assertEqual(len(self.registry.sessions), 1)
        preflight = FakeRequest(method=b"OPTIONS", headers={b"Origin": b"https://evil.example"})
        preflight.render(self.resource)
        self.assertIsNone(preflight.header(b"Access-Control-Allow-Origin"))


class SecureTests(BoshTestCase):
    def test_https_session(self) -> None:
        listener = SimpleNamespace(tls=True)
        secure = Client(BoshResource(self.server, listener), self.clock)
        body = secure.create().body()
        mechanisms = [str(m) for m in next(next(body.elements(ns.STREAMS, "features")).elements()).elements()]
        self.assertIn("PLAIN", mechanisms)
        self.assertNotIn("SCRAM-SHA-1-PLUS", mechanisms)  # no channel binding over BOSH
        # The same session over plain HTTP: the connection is dropped, the session survives.
        self.client.sid = secure.sid
        self.client.rid = secure.rid
        request = FakeRequest(body_xml(sid=secure.sid, rid=secure.rid + 1))
        request.transport = StringTransport()
        request.render(self.resource)
        self.assertFalse(request.finished)
        self.assertTrue(request.transport.disconnecting)
        self.assertIsNotNone(self.registry.find_session(secure.sid))


class RealHTTPTests(TestCase):
    """A real Site on loopback, a real SQLite database and a plain HTTP client (twisted.web.client.Agent)."""

    async def start(self) -> None:
        from xmppcluster.storage import open_storage

        directory = tempfile.mkdtemp(prefix="bosh-test-", dir=os.getcwd())
        config = parse_text(f"--virt-hosts={DOMAIN}\n--node-name={NODE}\n", "<test>")
        storage = await open_storage("sqlite:///" + os.path.join(directory, "db.sqlite"))
        self.addCleanup(storage.close)
        self.server = XMPPServer(config, storage, certs=None, clock=reactor)
        await storage.accounts.create("alice", DOMAIN, "secret")
        await storage.accounts.create("bob", DOMAIN, "secret")
        root = Resource()
        root.putChild(b"http-bind", BoshResource(self.server, None))
        site = Site(root)
        site.requestFactory = limited_request(bosh_sessions(self.server).settings.max_body)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}/http-bind/".encode()
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=self.pool)
        self.addCleanup(bosh_sessions(self.server).shutdown)

    async def post(self, data: bytes) -> tuple[int, dict, domish.Element]:
        response = await self.agent.request(b"POST", self.url, Headers({b"Content-Type": [b"text/xml; charset=utf-8"]}),
                                            FileBodyProducer(BytesIO(data)))
        raw = await readBody(response)
        return response.code, response.headers, parse_element(raw)

    async def login(self, user: str, resource: str, rid: int) -> tuple[str, int]:
        _, headers, body = await self.post(body_xml(to=DOMAIN, rid=rid, wait=20, hold=1, ver="1.6",
                                                    xmpp__version="1.0"))
        self.assertEqual(headers.getRawHeaders(b"Content-Type"), [b"text/xml; charset=utf-8"])
        self.assertEqual(headers.getRawHeaders(b"Access-Control-Allow-Origin"), [b"*"])
        sid = body["sid"]
        scram = ScramClient(user, "secret")
        _, _, body = await self.post(body_xml(f"<auth xmlns='{ns.SASL}' mechanism='SCRAM-SHA-1'>{scram.first()}"
                                              "</auth>", sid=sid, rid=rid + 1))
        challenge = str(next(body.elements(ns.SASL, "challenge")))
        _, _, body = await self.post(body_xml(f"<response xmlns='{ns.SASL}'>{scram.final(challenge)}</response>",
                                              sid=sid, rid=rid + 2))
        self.assertIsNotNone(next(body.elements(ns.SASL, "success"), None))
        _, _, body = await self.post(body_xml(sid=sid, rid=rid + 3, to=DOMAIN, xmpp__restart="true"))
        self.assertIsNotNone(next(body.elements(ns.STREAMS, "features"), None))
        _, _, body = await self.post(body_xml(f"<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='{ns.BIND}'>"
                                              f"<resource>{resource}</resource></bind></iq>", sid=sid, rid=rid + 4))
        jid = str(next(next(body.elements(ns.CLIENT, "iq")).elements(ns.BIND, "bind")).jid)
        self.assertEqual(jid, f"{user}@{DOMAIN}/{resource}")
        return sid, rid + 5

    @defer.inlineCallbacks
    def test_scram_login_bind_and_message(self):
        yield defer.ensureDeferred(self.start())
        alice_sid, alice_rid = yield defer.ensureDeferred(self.login("alice", "web", 1000))
        bob_sid, bob_rid = yield defer.ensureDeferred(self.login("bob", "phone", 7000))
        poll = defer.ensureDeferred(self.post(body_xml(sid=bob_sid, rid=bob_rid)))  # held: a long poll
        sent = defer.ensureDeferred(self.post(body_xml(
            f"<message xmlns='jabber:client' to='bob@{DOMAIN}/phone'><body>hello over BOSH</body></message>",
            sid=alice_sid, rid=alice_rid)))
        _, _, body = yield poll
        message = next(body.elements(ns.CLIENT, "message"))
        self.assertEqual(message["from"], f"alice@{DOMAIN}/web")
        self.assertEqual(str(message.body), "hello over BOSH")
        # Alice's request is held (nothing for her); her terminate releases it and ends the session.
        _, _, body = yield defer.ensureDeferred(self.post(body_xml(sid=alice_sid, rid=alice_rid + 1,
                                                                   type="terminate")))
        _, _, held = yield sent
        self.assertEqual(held.getAttribute("type"), "terminate")
        _, _, body = yield defer.ensureDeferred(self.post(body_xml(sid=bob_sid, rid=bob_rid + 1, type="terminate")))
        self.assertEqual(body.getAttribute("type"), "terminate")
        self.assertEqual(len(self.server.sessions), 0)
        self.assertEqual(bosh_sessions(self.server).sessions, {})
