"""slixmpp (its xep_0280 plugin) carbons scenarios run in a subprocess by tests/test_carbons.py; prints one JSON line.

    python -m tests.clients.slix_carbons SPEC_JSON

SPEC: {"host", "port", "ca", "timeout", "clients": [CLIENT, ...]} with CLIENT:
{"jid", "password", "port": int (optional, another node), "priority": int, "carbons": bool (enable them),
"ping": [full JID, ...] (before sending: ping each until it answers, e.g. a resource on another node),
"send": [{"to", "body", "type", "private": bool}], "expect": N messages, "expect_received": N carbons,
"expect_sent": N carbons}.

Every client logs in, enables carbons if asked, sends presence and proves the server processed it (a ping to
its domain); once all are there each pings its ``ping`` JIDs (a pong from a resource on another node comes
over the same link as that node's earlier directory changes, so it is a barrier for them), sends its messages
and waits for what it expects.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout

from tests.clients import slix


class Client(slixmpp.ClientXMPP):
    def __init__(self, spec: dict, common: dict, everyone_online: asyncio.Event, online: list) -> None:
        super().__init__(spec["jid"], spec["password"])
        self.spec = spec
        self.result: dict = {"jid": spec["jid"], "received": [], "carbons_received": [], "carbons_sent": [],
                             "error": None}
        self.ca_certs = common["ca"]
        self.everyone_online = everyone_online
        self.online = online
        self.done = asyncio.get_event_loop().create_future()
        for plugin in ("xep_0030", "xep_0199", "xep_0280", "xep_0297"):
            self.register_plugin(plugin)
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("failed_auth", lambda _: self.finish("failed_auth"))
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("carbon_received", lambda msg: self.on_carbon(msg, "received"))
        self.add_event_handler("carbon_sent", lambda msg: self.on_carbon(msg, "sent"))
        self.add_event_handler("disconnected", lambda _: self.finish("disconnected"))

    def connect(self, host: str, port: int, *args, **kwargs):
        return super().connect(host, self.spec.get("port", port), *args, **kwargs)

    async def on_start(self, _event) -> None:
        try:
            info = await self.plugin["xep_0030"].get_info(jid=self.boundjid.domain, timeout=10)
            self.result["features"] = sorted(info["disco_info"]["features"])
            if self.spec.get("carbons"):
                await self.plugin["xep_0280"].enable(timeout=10)
            self.send_presence(ppriority=self.spec.get("priority", 0))
            await self.plugin["xep_0199"].ping(self.boundjid.domain, timeout=10)
        except Exception as err:  # report, don't hang
            self.finish(f"setup failed: {err!r}")
            return
        self.online.append(self)
        await self.everyone_online.wait()
        for jid in self.spec.get("ping", []):
            for _ in range(100):
                try:
                    await self.plugin["xep_0199"].ping(jid, timeout=5)
                    break
                except (IqError, IqTimeout):
                    await asyncio.sleep(0.1)  # not in this node's directory yet: ask again
            else:
                self.finish(f"{jid} never answered a ping")
                return
        for message in self.spec.get("send", []):
            msg = self.make_message(mto=message["to"], mbody=message["body"], mtype=message.get("type", "chat"))
            if message.get("private"):
                msg.enable("carbon_private")
            msg.send()
        self.check()

    def on_message(self, msg) -> None:
        if msg["type"] == "error" or msg.xml.find("{urn:xmpp:carbons:2}received") is not None \
                or msg.xml.find("{urn:xmpp:carbons:2}sent") is not None:
            return
        self.result["received"].append({"from": str(msg["from"]), "to": str(msg["to"]), "body": msg["body"]})
        self.check()

    def on_carbon(self, msg, direction: str) -> None:
        inner = msg[f"carbon_{direction}"]
        self.result[f"carbons_{direction}"].append({
            "from": str(msg["from"]), "to": str(msg["to"]), "inner_from": str(inner["from"]),
            "inner_to": str(inner["to"]), "body": inner["body"]})
        self.check()

    def check(self) -> None:
        if (len(self.result["received"]) >= self.spec.get("expect", 0)
                and len(self.result["carbons_received"]) >= self.spec.get("expect_received", 0)
                and len(self.result["carbons_sent"]) >= self.spec.get("expect_sent", 0)):
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
