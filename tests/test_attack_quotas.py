"""Storage quotas in bytes against a real node: offline messages and pending subscription requests.

Counting messages is not enough: 1,000 offline messages of 256 KiB each are 256 MiB per victim. Each attack
runs while a well-behaved client pings the node (tests/support/attack.py): its round trip must stay under
250 ms.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.clients.raw import RawClient
from tests.support.attack import MAX_RTT, under_attack
from tests.support.server import start_server
from tests.support.slix import ca_file

PASSWORD = "pencil"
CLIENT = "{jabber:client}"
STANZAS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"
OFFLINE_QUOTA = 200_000
PENDING_QUOTA = 50_000
BODY = "x" * 60_000  # 4 of these do not fit in OFFLINE_QUOTA, 3 do


class QuotaCase(TestCase):
    timeout = 90
    extra_config = ""

    async def setUp(self) -> None:
        self.running = await start_server(self, self.extra_config)
        self.ca = ca_file(self.running)
        for user in ("mallory", "bob", *(f"m{n}" for n in range(5))):
            await self.running.add_user(f"{user}@localhost", PASSWORD)

    def login(self, user: str, resource: str = "r") -> RawClient:
        client = RawClient(self.running.ports["c2s"]["plain"], ca_file=self.ca, timeout=30)
        client.login(user, PASSWORD, resource)
        return client

    @staticmethod
    def barrier(client: RawClient, ident: str) -> list:
        """Ping the node and return what arrived before its answer (the node handled all we sent before)."""
        client.send(f"<iq type='get' id='{ident}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        seen = []
        while True:
            element = client.next()
            if element.tag == f"{CLIENT}iq" and element.get("id") == ident:
                return seen
            seen.append(element)


class OfflineBytesTests(QuotaCase):
    extra_config = f"--offline-max-bytes={OFFLINE_QUOTA}\n"

    async def test_big_messages_to_an_offline_account(self) -> None:
        offline = self.running.server.modules["msgoffline"]

        def send() -> tuple[RawClient, list]:
            mallory = self.login("mallory")
            for n in range(6):
                mallory.send(f"<message to='bob@localhost' id='m{n}' type='chat'><body>{BODY}</body></message>")
            # Every message has been routed (its store started); a fast store may have bounced already.
            return mallory, self.barrier(mallory, "sent")

        async def attack() -> list:
            mallory, early = await deferToThread(send)
            try:
                await offline.drain()  # every store has finished (or bounced)
                return early + await deferToThread(self.barrier, mallory, "stored")
            finally:
                mallory.close()

        arrived, rtts = await under_attack(self.running, lambda: _blocking(attack))
        bounced = [e.get("id") for e in arrived
                   if e.tag == f"{CLIENT}message" and e.get("type") == "error"
                   and e.find(f"{CLIENT}error/{STANZAS}service-unavailable") is not None]
        stored = await offline.store.list("bob", "localhost")
        self.assertEqual(bounced, ["m3", "m4", "m5"])
        self.assertEqual(len(stored), 3)
        self.assertLessEqual(sum(len(message.stanza) for message in stored), OFFLINE_QUOTA)
        self.assertLess(max(rtts), MAX_RTT, f"ping round trips under attack: {sorted(rtts)[-5:]}")


class PendingBytesTests(QuotaCase):
    extra_config = f"--roster-pending-max-bytes={PENDING_QUOTA}\n"

    async def test_big_subscription_requests(self) -> None:
        roster = self.running.server.modules["jabber:iq:roster"]

        def send() -> None:
            for n in range(5):
                client = self.login(f"m{n}")
                try:
                    client.send(f"<presence to='bob@localhost' type='subscribe'><status>{'s' * 30_000}</status>"
                                "</presence>")
                    self.barrier(client, "sent")
                finally:
                    client.close()

        async def attack() -> dict[str, str]:
            await deferToThread(send)
            await roster.settle()
            return await roster.store.pending("bob", "localhost")

        pending, rtts = await under_attack(self.running, lambda: _blocking(attack))
        # Every request is kept; those past the quota without their payload.
        self.assertEqual(sorted(pending), [f"m{n}@localhost" for n in range(5)])
        self.assertLessEqual(sum(len(xml.encode()) for xml in pending.values()), PENDING_QUOTA + 4 * 200)
        self.assertEqual(sum("<status>" in xml for xml in pending.values()), 1)
        self.assertLess(max(rtts), MAX_RTT, f"ping round trips under attack: {sorted(rtts)[-5:]}")

        # bob logs in and is asked by all five, the first one with its status.
        def bob_logs_in() -> list:
            bob = self.login("bob")
            try:
                bob.send("<presence/>")
                asks = []
                while len(asks) < 5:
                    element = bob.next()
                    if element.tag == f"{CLIENT}presence" and element.get("type") == "subscribe":
                        asks.append(element)
                return asks
            finally:
                bob.close()

        asks = await deferToThread(bob_logs_in)
        self.assertEqual(sorted(a.get("from") for a in asks), [f"m{n}@localhost" for n in range(5)])


def _blocking(coroutine_function) -> object:
    """Run an async function on the reactor from an attack thread and wait for its result."""
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.threads import blockingCallFromThread

    return blockingCallFromThread(reactor, lambda: ensureDeferred(coroutine_function()))


