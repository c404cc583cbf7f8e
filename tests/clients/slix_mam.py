"""slixmpp (its xep_0313 plugin, with xep_0059) pages through its own archive; run in a subprocess by
tests/test_mam.py; prints one JSON line.

    python -m tests.clients.slix_mam SPEC_JSON

SPEC: {"host", "port", "ca", "timeout", "clients": [{"jid", "password", "page": N, "with": JID (optional)}]}.
Each client logs in, asks for the query form (its field vars), then iterates over its archive forwards and
backwards with RSM pages of ``page`` messages, and reports the bodies and result ids in each direction.
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
        self.result: dict = {"jid": spec["jid"], "error": None}
        self.ca_certs = common["ca"]
        self.done = asyncio.get_event_loop().create_future()
        for plugin in ("xep_0030", "xep_0059", "xep_0297", "xep_0313", "xep_0359"):
            self.register_plugin(plugin)
        self.online = online
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("failed_auth", lambda _: self.finish("failed_auth"))
        self.add_event_handler("disconnected", lambda _: self.finish("disconnected"))

    async def on_start(self, _event) -> None:
        self.online.append(self)
        try:
            info = await self.plugin["xep_0030"].get_info(jid=self.boundjid.bare, timeout=10)
            self.result["features"] = sorted(info["disco_info"]["features"])
            fields = await self.plugin["xep_0313"].get_fields(timeout=10)
            self.result["fields"] = sorted(fields.get_fields())
            with_jid = slixmpp.JID(self.spec["with"]) if self.spec.get("with") else None
            for direction, reverse in (("forwards", False), ("backwards", True)):
                bodies, ids = [], []
                async for message in self.plugin["xep_0313"].iterate(
                        with_jid=with_jid, reverse=reverse, rsm={"max": self.spec.get("page", 100)}):
                    forwarded = message["mam_result"]["forwarded"]
                    bodies.append(forwarded["stanza"]["body"])
                    ids.append(message["mam_result"]["id"])
                self.result[direction] = {"bodies": bodies, "ids": ids}
        except Exception as err:  # report, don't hang
            self.finish(f"failed: {err!r}")
            return
        self.finish(None)

    def finish(self, error: str | None) -> None:
        if not self.done.done():
            self.result["error"] = error
            self.done.set_result(None)


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    print(json.dumps(asyncio.run(slix.run(json.loads(sys.argv[1]), Client))))


if __name__ == "__main__":
    main()
