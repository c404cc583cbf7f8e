"""Two slixmpp clients for the XEP-0352 test, run in a subprocess; prints one JSON result line.

    python -m tests.clients.slix_csi SPEC_JSON

SPEC: {"port", "ca", "password"}. bob@localhost (xep_0352, xep_0199) goes inactive and pings the server
(its answer comes after the indication took effect); then alice@localhost sends bob five directed presences
(status s1..s5) and a chat message. Result: whether bob saw the CSI feature, and what bob received from
alice, in order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import slixmpp


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid: str, spec: dict) -> None:
        super().__init__(jid, spec["password"])
        self.ca_certs = spec["ca"]
        self.started = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", lambda _event: self.started.done() or self.started.set_result(None))


async def run(spec: dict) -> dict:
    result: dict = {"csi_enabled": False, "received": []}
    bob = Client("bob@localhost/phone", spec)
    alice = Client("alice@localhost/pc", spec)
    bob.register_plugin("xep_0352")
    bob.register_plugin("xep_0199")
    alice.register_plugin("xep_0199")
    got_message = asyncio.get_event_loop().create_future()

    def on_presence(presence) -> None:
        if presence["from"].bare == "alice@localhost":
            result["received"].append(["presence", presence["status"]])

    def on_message(message) -> None:
        if message["from"].bare == "alice@localhost" and message["body"]:
            result["received"].append(["message", message["body"]])
            if not got_message.done():
                got_message.set_result(None)

    bob.add_event_handler("presence", on_presence)
    bob.add_event_handler("message", on_message)
    for client in (bob, alice):
        client.connect("127.0.0.1", spec["port"])
    await asyncio.gather(bob.started, alice.started)
    result["csi_enabled"] = bob.plugin["xep_0352"].enabled
    bob.send_presence()
    bob.plugin["xep_0352"].send_inactive()
    await bob.plugin["xep_0199"].ping(jid="localhost", timeout=10)
    for n in range(1, 6):
        alice.send_presence(pto="bob@localhost/phone", pstatus=f"s{n}")
    await alice.plugin["xep_0199"].ping(jid="localhost", timeout=10)
    alice.send_message(mto="bob@localhost/phone", mbody="hello", mtype="chat")
    await asyncio.wait_for(got_message, 10)
    for client in (bob, alice):
        client.disconnect()
    await asyncio.sleep(0.1)
    return result


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    spec = json.loads(sys.argv[1])
    print(json.dumps(asyncio.run(asyncio.wait_for(run(spec), 30))))


if __name__ == "__main__":
    main()
