"""A slixmpp user with a contact on another server, run in a subprocess by the federation interop tests.

    python -m tests.clients.slix_federation SPEC_JSON

SPEC: {"host", "port", "ca", "jid", "password", "contact", "subscribe": bool, "body", "timeout"}. The client
logs in (STARTTLS), sends available presence, asks ``contact`` for a subscription when ``subscribe`` (and
accepts and returns any request: slixmpp's auto_authorize/auto_subscribe), waits until the roster says
``both`` and the contact is available, sends ``body`` as a chat message to the contact's bare JID, waits for
one chat message from the contact, and prints one JSON line: what it saw.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import slixmpp


class FederatedUser(slixmpp.ClientXMPP):
    def __init__(self, spec: dict) -> None:
        super().__init__(spec["jid"], spec["password"])
        self.spec = spec
        self.contact = spec["contact"]
        self.ca_certs = spec["ca"]
        self.enable_direct_tls = False
        self.enable_starttls = True
        self.result = {"jid": spec["jid"], "authenticated": False, "subscription": None, "contact_available": False,
                       "received": [], "error": None}
        self.available = asyncio.Event()
        self.both = asyncio.Event()
        self.message = asyncio.Event()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("failed_auth", lambda _: self.fail("failed_auth"))
        self.add_event_handler("presence_available", self.on_available)
        self.add_event_handler("roster_update", self.on_roster)
        self.add_event_handler("message", self.on_message)

    def fail(self, why: str) -> None:
        self.result["error"] = why
        for event in (self.available, self.both, self.message):
            event.set()

    def on_available(self, presence) -> None:
        if presence["from"].bare == self.contact:
            self.result["contact_available"] = True
            self.available.set()

    def on_roster(self, _iq=None) -> None:
        item = self.client_roster[self.contact] if self.client_roster.has_jid(self.contact) else None
        subscription = item["subscription"] if item is not None else None
        self.result["subscription"] = subscription
        if subscription == "both":
            self.both.set()

    def on_message(self, msg) -> None:
        if msg["type"] in ("chat", "normal") and msg["from"].bare == self.contact:
            self.result["received"].append(msg["body"])
            self.message.set()

    async def on_start(self, _event) -> None:
        self.result["authenticated"] = True
        await self.get_roster()
        self.send_presence()
        if self.spec.get("subscribe"):
            self.send_presence(pto=self.contact, ptype="subscribe")
        self.on_roster()
        timeout = self.spec.get("timeout", 40)
        try:
            await asyncio.wait_for(self.both.wait(), timeout)
            await asyncio.wait_for(self.available.wait(), timeout)
            self.send_message(mto=self.contact, mbody=self.spec["body"], mtype="chat")
            await asyncio.wait_for(self.message.wait(), timeout)
        except TimeoutError:
            self.result["error"] = self.result["error"] or "timeout"
        self.on_roster()
        self.finished.set_result(None)


async def main(spec: dict) -> dict:
    client = FederatedUser(spec)
    client.finished = asyncio.get_event_loop().create_future()
    client.connect(spec["host"], spec["port"])
    try:
        await asyncio.wait_for(client.finished, spec.get("timeout", 40) * 3 + 10)
    except TimeoutError:
        client.result["error"] = client.result["error"] or "never finished"
    client.disconnect()
    await asyncio.sleep(0.2)
    return client.result


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
