"""slixmpp messaging scenarios run in a subprocess by tests/test_messaging_interop.py; prints one JSON line.

    python -m tests.clients.slix_msg SPEC_JSON

SPEC: {"host", "port", "ca", "timeout", "clients": [CLIENT, ...]} with CLIENT:
{"jid", "password", "priority": int | null (no <priority/>), "block": [jid, ...] (XEP-0191, before presence),
"send": [{"to", "body", "type"}], "expect": N messages, "expect_errors": N message errors}.

Every client logs in, blocks, sends its presence and proves the server processed it (a ping round trip on
the same stream); once all clients got there, each sends its messages, then waits for what it expects.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import slixmpp

from tests.clients import slix


class Client(slixmpp.ClientXMPP):
    def __init__(self, spec: dict, common: dict, everyone_online: asyncio.Event, online: list) -> None:
        super().__init__(spec["jid"], spec["password"])
        self.spec = spec
        self.result: dict = {"jid": spec["jid"], "received": [], "errors": [], "error": None}
        self.ca_certs = common["ca"]
        self.everyone_online = everyone_online
        self.online = online
        self.done = asyncio.get_event_loop().create_future()
        for plugin in ("xep_0191", "xep_0199", "xep_0203"):
            self.register_plugin(plugin)
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("failed_auth", lambda _: self.finish("failed_auth"))
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("message_error", self.on_error)
        self.add_event_handler("disconnected", lambda _: self.finish("disconnected"))

    async def on_start(self, _event) -> None:
        try:
            if self.spec.get("block"):
                await self.plugin["xep_0191"].block(self.spec["block"])
            self.send_presence(ppriority=self.spec.get("priority"))
            await self.plugin["xep_0199"].ping(self.boundjid.domain, timeout=10)
        except Exception as err:  # report, don't hang
            self.finish(f"setup failed: {err!r}")
            return
        self.online.append(self)
        await self.everyone_online.wait()
        for message in self.spec.get("send", []):
            self.send_message(mto=message["to"], mbody=message["body"], mtype=message.get("type", "chat"))
        self.check()

    def on_message(self, msg) -> None:
        if msg["type"] == "error":
            return
        delay = msg["delay"]
        self.result["received"].append({
            "from": str(msg["from"]), "to": str(msg["to"]), "body": msg["body"],
            "delay_from": str(delay["from"]) if delay["stamp"] else None,
            "delay_stamp": delay["stamp"].isoformat() if delay["stamp"] else None,
        })
        self.check()

    def on_error(self, msg) -> None:
        error = msg["error"]
        blocked = error.xml.find("{urn:xmpp:blocking:errors}blocked") is not None
        self.result["errors"].append({"from": str(msg["from"]), "condition": error["condition"],
                                      "type": error["type"], "blocked": blocked})
        self.check()

    def check(self) -> None:
        if (len(self.result["received"]) >= self.spec.get("expect", 0)
                and len(self.result["errors"]) >= self.spec.get("expect_errors", 0)):
            self.finish(None)

    def finish(self, error: str | None) -> None:
        if not self.done.done():
            self.result["error"] = error
            self.done.set_result(None)


async def run(common: dict) -> list[dict]:
    return await slix.run(common, Client)


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    print(json.dumps(asyncio.run(run(json.loads(sys.argv[1])))))


if __name__ == "__main__":
    main()
