"""slixmpp's XEP-0114 component (a third-party implementation) against our ``ext`` port; prints one JSON line.

    python -m tests.clients.slix_component SPEC_JSON

SPEC: {"port", "jid" (the component domain), "secret", "to" (a user's full JID), "timeout"}. The component
connects, pings the server (XEP-0199), sends "hello" to ``to`` and waits for a message back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import slixmpp


class Component(slixmpp.ComponentXMPP):
    def __init__(self, spec: dict) -> None:
        super().__init__(spec["jid"], spec["secret"], "127.0.0.1", spec["port"])
        self.spec = spec
        self.result: dict = {"connected": False, "pong": None, "reply": None, "error": None}
        self.done = asyncio.get_event_loop().create_future()
        self.register_plugin("xep_0199")
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("disconnected", lambda _: self.finish("disconnected"))

    async def on_start(self, _event) -> None:
        self.result["connected"] = True
        try:
            server = self.spec["to"].split("@")[1].split("/")[0]
            await self.plugin["xep_0199"].ping(server, ifrom=self.boundjid.bare, timeout=10)
            self.result["pong"] = True
        except Exception as err:
            self.finish(f"ping failed: {err!r}")
            return
        self.send_message(mto=self.spec["to"], mbody="hello", mtype="chat", mfrom=f"bot@{self.boundjid.bare}")

    def on_message(self, msg) -> None:
        self.result["reply"] = {"from": str(msg["from"]), "to": str(msg["to"]), "body": msg["body"]}
        self.finish(None)

    def finish(self, error: str | None) -> None:
        if not self.done.done():
            self.result["error"] = error
            self.done.set_result(None)


async def main(spec: dict) -> dict:
    component = Component(spec)
    component.connect()
    try:
        await asyncio.wait_for(component.done, spec.get("timeout", 20))
    except TimeoutError:
        component.result["error"] = component.result["error"] or "timeout"
    component.disconnect()
    return component.result


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
