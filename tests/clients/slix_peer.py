"""A slixmpp client driven line by line by a test (the web chat test's peer).

    python -m tests.clients.slix_peer SPEC_JSON     SPEC: {"jid", "password", "host", "port", "ca"}

Prints JSON events, one a line: {"event": "online"}, {"event": "message", "from", "body"},
{"event": "presence", "from", "type", "show"}, {"event": "disconnected"}.  Reads commands on stdin, one a
line: {"send": {"to", "body"}} or {"quit": true}.
"""

from __future__ import annotations

import asyncio
import json
import sys

import slixmpp


def emit(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class Peer(slixmpp.ClientXMPP):
    def __init__(self, spec: dict) -> None:
        super().__init__(spec["jid"], spec["password"], sasl_mech="SCRAM-SHA-256")
        self.ca_certs = spec["ca"]
        self.enable_direct_tls = False
        self.enable_starttls = True
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("failed_auth", lambda _: emit({"event": "failed_auth"}))
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("presence", self.on_presence)
        self.add_event_handler("disconnected", lambda _: emit({"event": "disconnected"}))

    async def on_start(self, _event) -> None:
        await self.get_roster()
        self.send_presence()
        emit({"event": "online", "jid": str(self.boundjid)})

    def on_message(self, msg) -> None:
        if msg["type"] in ("chat", "normal") and msg["body"]:
            emit({"event": "message", "from": str(msg["from"]), "body": msg["body"]})

    def on_presence(self, presence) -> None:
        emit({"event": "presence", "from": str(presence["from"]), "type": presence["type"],
              "show": presence["show"]})


async def commands(peer: Peer) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        if "send" in command:
            peer.send_message(mto=command["send"]["to"], mbody=command["send"]["body"], mtype="chat")
        if command.get("quit"):
            break
    peer.disconnect()
    await asyncio.sleep(0.2)


def main() -> None:
    spec = json.loads(sys.argv[1])
    peer = Peer(spec)
    peer.connect(spec["host"], spec["port"])
    asyncio.get_event_loop().run_until_complete(commands(peer))


if __name__ == "__main__":
    main()
