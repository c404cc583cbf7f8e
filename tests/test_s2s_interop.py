"""Federation with servers nobody here wrote: Debian's Prosody 0.12 and ejabberd, on loopback.

In each test a slixmpp user on our server (a.test) and one on the peer subscribe to each other (our user
asks), see each other's presence and chat, both ways. Variants: SASL EXTERNAL with certificates from one
trusted CA, and dialback only (each side distrusts the other's CA and lists it as an insecure domain).
Without the peer installed the tests skip and say why (tests/support/peers.py).
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.support.certs import make_ca
from tests.support.federation import PASSWORD, ca_path, federated_pair
from tests.support.peers import start_ejabberd, start_prosody
from tests.support.server import free_port, start_server, test_ca

OURS = "a.test"


class InteropCase(TestCase):
    timeout = 120
    kind = ""
    peer_domain = ""
    trusted = True
    bidi = False

    async def setUp(self) -> None:
        our_port = free_port()
        ca = test_ca() if self.trusted else make_ca("another CA")
        start = start_prosody if self.kind == "prosody" else start_ejabberd
        options = dict(secure_auth=self.trusted, dialback=not self.trusted)
        if self.bidi:
            options["bidi"] = True
        if not self.trusted:
            options["insecure_domains"] = [OURS]
        self.peer = await start(self, self.peer_domain, ca=ca, routes={OURS: ("127.0.0.1", our_port)}, **options)
        await self.peer.add_user("bob", PASSWORD)
        self.ca = ca_path(self)
        insecure = "" if self.trusted else f"s2s/insecure-domains[s]={self.peer_domain}\n"
        self.ours = await start_server(self, f"s2s/connections/ports[i]={our_port}\n"
                                             f"s2s/connections/{our_port}/ifc[s]=127.0.0.1\n"
                                             f"s2s/hosts[s]={self.peer_domain}=127.0.0.1:{self.peer.s2s_port}\n"
                                             f"s2s/ca-file={self.ca}\ns2s/connect-timeout=20\n" + insecure,
                                       domains=(OURS,))
        await self.ours.add_user(f"alice@{OURS}", PASSWORD)

    async def exchange(self) -> None:
        ours = {"host": "127.0.0.1", "port": self.ours.ports["c2s"]["plain"], "ca": self.ca,
                "jid": f"alice@{OURS}", "password": PASSWORD}
        theirs = {"host": "127.0.0.1", "port": self.peer.c2s_port, "ca": self.peer.ca_file,
                  "jid": f"bob@{self.peer_domain}", "password": PASSWORD}
        alice, bob = await federated_pair(ours, theirs)
        context = f"\nalice: {alice}\nbob: {bob}\n--- {self.kind} log (tail) ---\n{self.peer.logs()[-4000:]}"
        for result in (alice, bob):
            self.assertIsNone(result["error"], context)
            self.assertEqual(result["subscription"], "both", context)
            self.assertTrue(result["contact_available"], context)
        self.assertEqual(alice["received"], ["hello from theirs"], context)
        self.assertEqual(bob["received"], ["hello from ours"], context)
        methods = {(line["direction"], line["auth"]) for line in self.ours.server.federation.status()}
        expected = "EXTERNAL" if self.trusted else "dialback"
        self.assertIn(("out", expected), methods, context)
        if self.bidi:  # Prosody answered on our stream: it never connected to us
            self.assertEqual(self.ours.server.federation.incoming, set(), context)
        else:
            self.assertTrue({("in", expected), ("in", "dialback+cert")} & methods, f"{methods}{context}")


class ProsodyExternalTests(InteropCase):
    kind, peer_domain = "prosody", "prosody.test"

    async def test_subscription_presence_chat(self) -> None:
        await self.exchange()


class ProsodyBidiTests(InteropCase):
    """XEP-0288 with Prosody's mod_s2s_bidi: one connection carries both directions."""

    kind, peer_domain, bidi = "prosody", "prosody.test", True

    async def test_subscription_presence_chat(self) -> None:
        await self.exchange()


class ProsodyDialbackTests(InteropCase):
    kind, peer_domain, trusted = "prosody", "prosody.test", False

    async def test_subscription_presence_chat(self) -> None:
        await self.exchange()


class EjabberdExternalTests(InteropCase):
    kind, peer_domain = "ejabberd", "ejabberd.test"

    async def test_subscription_presence_chat(self) -> None:
        await self.exchange()


class EjabberdDialbackTests(InteropCase):
    kind, peer_domain, trusted = "ejabberd", "ejabberd.test", False

    async def test_subscription_presence_chat(self) -> None:
        await self.exchange()
