"""A slixmpp client run in a subprocess by the interop tests; prints one JSON result line.

    python -m tests.clients.slix SPEC_JSON

SPEC: {"host", "port", "direct_tls", "ca", "timeout", "clients": [{"jid", "password", "mech",
"send": [{"to", "body", "type"}], "expect": N, "roster": bool}]}. Clients log in concurrently; each
sends its messages once every client is online, then waits for ``expect`` messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import slixmpp


class Client(slixmpp.ClientXMPP):
    def __init__(self, spec: dict, common: dict, everyone_online: asyncio.Event, online: list) -> None:
        super().__init__(spec["jid"], spec["password"], sasl_mech=spec.get("mech"))
        self.spec = spec
        self.result = {"jid": spec["jid"], "authenticated": False, "received": [], "error": None}
        self.ca_certs = common["ca"]
        self.enable_direct_tls = bool(common.get("direct_tls"))
        self.enable_starttls = not common.get("direct_tls")
        self.everyone_online = everyone_online
        self.online = online
        self.done = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("failed_auth", self.on_failed_auth)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("disconnected", self.on_disconnected)

    async def on_start(self, _event) -> None:
        self.result["authenticated"] = True
        self.result["bound"] = str(self.boundjid)
        self.result["mechanism"] = getattr(self.plugin["feature_mechanisms"], "mech", None) and \
            self.plugin["feature_mechanisms"].mech.name
        if self.spec.get("roster"):
            try:
                await self.get_roster()
                self.result["roster"] = {k: dict(v) for k, v in self.client_roster[self.boundjid.bare].items()}
            except slixmpp.exceptions.IqError as err:
                self.result["roster"] = {"error": err.iq["error"]["condition"]}
        self.send_presence()
        self.online.append(self)
        await self.everyone_online.wait()
        for message in self.spec.get("send", []):
            self.send_message(mto=message["to"], mbody=message["body"], mtype=message.get("type", "chat"))
        self._maybe_done()

    def on_failed_auth(self, _event) -> None:
        self.result["error"] = "failed_auth"
        if not self.done.done():
            self.done.set_result(None)

    def on_message(self, msg) -> None:
        if msg["type"] in ("chat", "normal"):
            self.result["received"].append({"from": str(msg["from"]), "body": msg["body"], "to": str(msg["to"])})
            self._maybe_done()

    def on_disconnected(self, _event) -> None:
        if not self.done.done():
            self.result["error"] = self.result["error"] or "disconnected"
            self.done.set_result(None)

    def _maybe_done(self) -> None:
        if len(self.result["received"]) >= self.spec.get("expect", 0) and not self.done.done():
            self.done.set_result(None)


async def run(common: dict, client_class: type | None = None) -> list[dict]:
    """Log every client of ``common`` in, release their sends once all are online, collect results.
    ``client_class`` (default :class:`Client`) takes ``(spec, common, everyone_online, online)``."""
    everyone_online = asyncio.Event()
    online: list = []
    clients = [(client_class or Client)(spec, common, everyone_online, online) for spec in common["clients"]]
    for client in clients:
        client.connect(common["host"], common["port"])

    async def watch() -> None:
        while len(online) < len(clients) and not all(c.done.done() for c in clients):
            await asyncio.sleep(0.05)
        everyone_online.set()

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait_for(asyncio.gather(*(c.done for c in clients)), common.get("timeout", 20))
    except TimeoutError:
        for client in clients:
            if not client.done.done():
                client.result["error"] = client.result["error"] or "timeout"
                client.done.set_result(None)
    watcher.cancel()
    for client in clients:
        client.disconnect()
    await asyncio.sleep(0.1)
    return [c.result for c in clients]


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    common = json.loads(sys.argv[1])
    results = asyncio.run(run(common))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
