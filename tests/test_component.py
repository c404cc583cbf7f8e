"""XEP-0114 external components against a real node: handshake, routing both ways, addressing, limits."""

from __future__ import annotations

import time

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.clients.raw import STREAMS, RawClient, q
from tests.clients.raw_component import RawComponent, c
from tests.support.attack import MAX_RTT, PINGER, PINGER_PASSWORD, Pinger, pinged_attack
from tests.support.server import free_port, start_server
from tests.support.slix import ca_file

CLIENT = "{jabber:client}"
STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"
COMPONENT = "push.localhost"
SECRET = "s3cret-push"


def condition(stanza) -> str | None:
    error = stanza.find(f"{CLIENT}error")
    if error is None:
        return None
    return next((child.tag.split("}")[1] for child in error if child.tag.startswith(f"{{{STANZA_ERRORS}}}")
                 and not child.tag.endswith("}text")), None)


class ComponentTests(TestCase):
    timeout = 60

    async def start(self, extra: str = "") -> None:
        self.ext = free_port()
        self.running = await start_server(self, f"ext/connections/ports[i]={self.ext}\n"
                                                f"ext/connections/{self.ext}/ifc[s]=127.0.0.1\n"
                                                f"ext/components[s]={COMPONENT}:{SECRET},idle.localhost:other\n"
                                                + extra)
        await self.running.add_user("alice@localhost", "alice-pass")
        self.ca = ca_file(self.running)

    def component(self, domain: str = COMPONENT, secret: str | None = SECRET) -> RawComponent:
        comp = RawComponent(self.ext, domain)
        self.addCleanup(comp.close)
        if secret is not None:
            answer = comp.handshake(secret)
            assert answer.tag == c("handshake"), answer.tag
        return comp

    def alice(self) -> RawClient:
        client = RawClient(self.running.ports["c2s"]["plain"], ca_file=self.ca)
        self.addCleanup(client.close)
        client.login("alice", "alice-pass", "phone")
        return client

    async def test_listed_in_the_domains_disco_items(self):
        """Components named under a hosted domain are its disco#items (others are not listed)."""
        await self.start("ext/components[s]=push.localhost:a,gateway.example.org:b\n")

        def run():
            alice = self.alice()
            alice.send("<iq type='get' id='items' to='localhost'>"
                       "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
            reply = alice.until(f"{CLIENT}iq")
            return [item.get("jid") for item in reply.iter("{http://jabber.org/protocol/disco#items}item")]

        self.assertEqual(await deferToThread(run), ["push.localhost"])

    # -- handshake -----------------------------------------------------------------------------------------

    async def test_handshake(self):
        await self.start()
        comp = await deferToThread(self.component)
        self.assertTrue(comp.stream_id)
        self.assertEqual(comp.header.get("from"), COMPONENT)
        self.assertIn(COMPONENT, self.running.server.components.connected)

    async def test_bad_secret(self):
        await self.start()

        def run():
            comp = self.component(secret=None)
            answer = comp.handshake("wrong")
            return answer.tag, comp.error_condition()

        tag, error = await deferToThread(run)
        self.assertEqual((tag, error), (q(STREAMS, "error"), "not-authorized"))
        self.assertNotIn(COMPONENT, self.running.server.components.connected)

    async def test_unknown_domain(self):
        await self.start()

        def run():
            comp = self.component("nope.localhost", secret=None)
            comp.open()
            return comp.stream_id, comp.error_condition()

        self.assertEqual(await deferToThread(run), (None, "host-unknown"))

    async def test_stanzas_before_handshake(self):
        await self.start()

        def run():
            comp = self.component(secret=None)
            comp.open()
            comp.send(f"<message from='{COMPONENT}' to='alice@localhost'><body>x</body></message>")
            return comp.error_condition()

        self.assertEqual(await deferToThread(run), "not-authorized")

    async def test_handshake_timeout(self):
        await self.start("ext/handshake-timeout[F]=0.3\n")

        def run():
            comp = self.component(secret=None)
            comp.open()
            return comp.error_condition()

        self.assertEqual(await deferToThread(run), "connection-timeout")

    async def test_unauthenticated_cap(self):
        await self.start("ext/max-unauthenticated=2\n")

        def run():
            first, second = self.component(secret=None), self.component(secret=None)
            first.open()
            second.open()
            third = self.component(secret=None)
            return third.error_condition()

        self.assertEqual(await deferToThread(run), "resource-constraint")

    async def test_second_connection_replaces_the_first(self):
        await self.start()

        def run():
            old = self.component()
            new = self.component()
            return old.error_condition(), new

        error, new = await deferToThread(run)
        self.assertEqual(error, "conflict")
        self.assertEqual(self.running.server.components.connected[COMPONENT].stream_id, new.stream_id)

        def still_works():
            new.send(f"<iq type='get' id='p1' from='{COMPONENT}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
            return new.until(c("iq")).get("type")

        self.assertEqual(await deferToThread(still_works), "result")

    # -- routing ---------------------------------------------------------------------------------------------

    async def test_message_both_ways(self):
        await self.start()

        def run():
            comp = self.component()
            alice = self.alice()
            alice.send(f"<message to='{COMPONENT}' id='m1' type='chat'><body>subscribe me</body></message>")
            got = comp.until(c("message"))
            comp.send(f"<message from='bot@{COMPONENT}/x' to='{got.get('from')}' type='chat'>"
                      f"<body>done</body></message>")
            answer = alice.until(f"{CLIENT}message")
            return got.get("from"), got.findtext(c("body")), answer.get("from"), answer.findtext(f"{CLIENT}body")

        self.assertEqual(await deferToThread(run),
                         ("alice@localhost/phone", "subscribe me", f"bot@{COMPONENT}/x", "done"))

    async def test_iq_both_ways(self):
        await self.start()

        def run():
            comp = self.component()
            alice = self.alice()
            alice.send(f"<iq type='get' id='q1' to='{COMPONENT}'><query xmlns='jabber:iq:version'/></iq>")
            request = comp.until(c("iq"))
            comp.send(f"<iq type='result' id='{request.get('id')}' from='{COMPONENT}' to='{request.get('from')}'>"
                      "<query xmlns='jabber:iq:version'><name>push</name></query></iq>")
            result = alice.until(f"{CLIENT}iq")
            comp.send(f"<iq type='get' id='q2' from='{COMPONENT}' to='alice@localhost/phone'>"
                      "<ping xmlns='urn:xmpp:ping'/></iq>")
            ping = alice.until(f"{CLIENT}iq")
            alice.send(f"<iq type='result' id='{ping.get('id')}' to='{ping.get('from')}'/>")
            pong = comp.until(c("iq"))
            return (result.get("type"), result.findtext("{jabber:iq:version}query/{jabber:iq:version}name"),
                    ping.get("from"), pong.get("type"), pong.get("id"), pong.get("from"))

        self.assertEqual(await deferToThread(run),
                         ("result", "push", COMPONENT, "result", "q2", "alice@localhost/phone"))

    async def test_spoofed_from(self):
        await self.start()

        def run():
            comp = self.component()
            comp.send("<message from='alice@localhost' to='alice@localhost'><body>spoof</body></message>")
            return comp.error_condition()

        self.assertEqual(await deferToThread(run), "invalid-from")

    async def test_not_connected_bounces(self):
        await self.start()

        def run():
            alice = self.alice()
            alice.send("<message to='idle.localhost' id='m2' type='chat'><body>anyone?</body></message>")
            return alice.until(f"{CLIENT}message")

        bounce = await deferToThread(run)
        self.assertEqual((bounce.get("type"), bounce.get("from"), condition(bounce)),
                         ("error", "idle.localhost", "service-unavailable"))

    async def test_slixmpp_component(self):
        """Interop: slixmpp's ComponentXMPP (not ours) connects, pings the server and talks to a user."""
        import json
        import os
        import sys

        from twisted.internet.utils import getProcessOutputAndValue

        from tests.support.slix import ROOT

        await self.start()
        alice = await deferToThread(self.alice)
        spec = {"port": self.ext, "jid": COMPONENT, "secret": SECRET, "to": "alice@localhost/phone", "timeout": 20}
        running = getProcessOutputAndValue(sys.executable, ["-m", "tests.clients.slix_component", json.dumps(spec)],
                                           env=dict(os.environ), path=ROOT)

        def answer():
            hello = alice.until(f"{CLIENT}message")
            alice.send(f"<message to='{hello.get('from')}' type='chat'><body>hi bot</body></message>")
            return hello.get("from"), hello.findtext(f"{CLIENT}body")

        self.assertEqual(await deferToThread(answer), (f"bot@{COMPONENT}", "hello"))
        out, err, code = await running
        self.assertEqual(code, 0, err.decode(errors="replace")[-2000:])
        result = json.loads(out.decode().strip().splitlines()[-1])
        self.assertEqual(result, {"connected": True, "pong": True, "error": None,
                                  "reply": {"from": "alice@localhost/phone", "to": f"bot@{COMPONENT}",
                                            "body": "hi bot"}})

    # -- attacks ---------------------------------------------------------------------------------------------

    async def test_oversized_stanza(self):
        await self.start()

        def run():
            comp = self.component()
            comp.send(f"<message from='{COMPONENT}' to='alice@localhost'><body>" + "x" * 300_000 + "</body></message>")
            return comp.error_condition()

        self.assertEqual(await deferToThread(run), "policy-violation")

    async def test_flood_while_a_client_pings(self):
        rate = 200_000
        await self.start(f"ext/rate-limit={rate}\n")
        await self.running.add_user(PINGER, PINGER_PASSWORD)
        comp = await deferToThread(self.component)
        pinger = await deferToThread(Pinger, self.running.ports["c2s"]["plain"], self.ca)
        chunk = (f"<message type='headline' from='{COMPONENT}' to='localhost'><body>"
                 + "f" * 900 + "</body></message>").encode() * 100

        def attack():
            started, sent = time.monotonic(), 0
            while sent < 1_500_000:
                comp.send(chunk)
                sent += len(chunk)
            comp.send(f"<iq type='get' id='end' from='{COMPONENT}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
            while comp.until(c("iq")).get("id") != "end":
                pass
            return sent, time.monotonic() - started

        (sent, elapsed), rtts, _ = await pinged_attack(pinger, attack, self.id())
        self.assertGreater(elapsed, (sent - 4 * rate) / rate * 0.9)
        self.assertLess(max(rtts), MAX_RTT, f"ping round trips under attack: {sorted(rtts)[-5:]}")


class ComponentConfigTests(TestCase):
    """``ext/components``: secrets inline or from a file, errors located at file:line, secrets never shown."""

    def test_inline_and_file_secrets(self):
        from xmppcluster.config import parse_text

        path = self.mktemp()
        with open(path, "w") as f:
            f.write("from-a-file\n")
        cfg = parse_text(f"ext/components[s]=Push.Example.com:abc,gw.example.com:@{path}\n", "init.properties")
        self.assertEqual(cfg.components, {"push.example.com": "abc", "gw.example.com": "from-a-file"})
        self.assertEqual(cfg.listeners("ext"), [])  # off by default
        self.assertNotIn("abc", repr(cfg))

    def test_errors_name_the_line_and_hide_the_secret(self):
        from xmppcluster.config import ConfigError, parse_text

        for value, expected in (("bad domain:topsecret", "domain:secret entries"),
                                ("push.example.com", "domain:secret entries"),
                                ("localhost:topsecret", "not in --virt-hosts"),
                                ("a.example.com:topsecret,a.example.com:x", "each component domain once"),
                                ("a.example.com:@/nonexistent/secret", "a readable secret file")):
            with self.assertRaises(ConfigError) as caught:
                parse_text(f"--virt-hosts=localhost\n\next/components[s]={value}\n", "init.properties")
            self.assertIn("init.properties:3:", str(caught.exception))
            self.assertIn(expected, str(caught.exception))
            self.assertNotIn("topsecret", str(caught.exception))


class ComponentClusterTests(TestCase):
    """The component on t2, the user on t1: stanzas cross the cluster link both ways."""

    timeout = 90

    async def setUp(self) -> None:
        from tests.support.cluster import DOMAIN, make_cluster, migrate

        self.domain = DOMAIN
        self.ext = {name: free_port() for name in ("t1.example.com", "t2.example.com")}
        node_extra = {name: f"ext/connections/ports[i]={port}\next/connections/{port}/ifc[s]=127.0.0.1\n"
                      for name, port in self.ext.items()}
        self.cluster = make_cluster(self, 2, f"ext/components[s]={COMPONENT}:{SECRET}\n", node_extra=node_extra)
        await migrate(self.cluster)
        await self.cluster.add_users(f"alice@{DOMAIN}", password="alice-pass")
        for name in self.cluster.nodes:
            self.cluster.start(name, wait=False)
        for name in self.cluster.nodes:
            await deferToThread(self.wait_linked, name)

    def wait_linked(self, name: str) -> None:
        from tests.support.process import wait_for_port
        from tests.support.waiting import wait_until

        node = self.cluster.nodes[name]
        wait_for_port(node.ports["c2s"], process=node.process)
        others = [n for n in self.cluster.nodes if n != name]
        wait_until(lambda: all(f"link to {o} up" in self.cluster.log(name) for o in others), timeout=30)

    def test_component_on_t2_user_on_t1(self):
        def scenario():
            alice = RawClient(self.cluster.nodes["t1.example.com"].ports["c2s"], domain=self.domain,
                              ca_file=self.cluster.ca_file)
            self.addCleanup(alice.close)
            me = alice.login("alice", "alice-pass", "a")
            self.cluster.wait_replicated(1, 0)
            comp = RawComponent(self.ext["t2.example.com"], COMPONENT)
            self.addCleanup(comp.close)
            assert comp.handshake(SECRET).tag == c("handshake")
            # t2 told t1 about the component before answering the handshake, on the link this message takes
            comp.send(f"<message from='{COMPONENT}' to='{me}' type='chat'><body>hello</body></message>")
            first = alice.until(f"{CLIENT}message").findtext(f"{CLIENT}body")
            alice.send(f"<message to='{COMPONENT}' type='chat'><body>ping me</body></message>")
            got = comp.until(c("message"))
            alice.send(f"<iq type='get' id='v1' to='{COMPONENT}'><query xmlns='jabber:iq:version'/></iq>")
            request = comp.until(c("iq"))
            comp.send(f"<iq type='result' id='{request.get('id')}' from='{COMPONENT}' to='{request.get('from')}'/>")
            result = alice.until(f"{CLIENT}iq")
            comp.send("</stream:stream>")
            comp.wait_closed()  # t2 has closed its side: the component is gone there
            alice.send(f"<message to='{COMPONENT}' id='late' type='chat'><body>still there?</body></message>")
            bounce = alice.until(f"{CLIENT}message")
            return (first, got.get("from"), got.findtext(c("body")), result.get("type"), result.get("from"),
                    bounce.get("type"), condition(bounce))

        return deferToThread(scenario).addCallback(
            self.assertEqual, ("hello", f"alice@{self.domain}/a", "ping me", "result", COMPONENT, "error",
                               "service-unavailable"))
