"""slixmpp running XEP-0133 administration commands through its xep_0050/xep_0133 plugins; prints one JSON line.

    python -m tests.clients.slix_admin SPEC_JSON

SPEC: {"host", "port", "ca", "timeout", "jid", "password", "steps": [...]}. Each step is one of
``{"list": true}`` (disco#items of the commands node of the server), ``{"info": true}`` (the server's disco
features) or ``{"command": "add-user", "values": {"var": value or [values]}}`` (a command node for a non-XEP-0133
command): the command is started with
the plugin's ``add_user(session=...)``, its form is filled with ``values`` (typed as the server's form says)
and completed. Results: ``{"authenticated", "error", "steps": [...]}``, a command's result being
``{"status", "notes": [[type, text]], "fields": {var: [values]}}`` or ``{"error": condition, "text": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout

ADMIN = "http://jabber.org/protocol/admin"


def _values(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [str(value)] if str(value) else []


class Client(slixmpp.ClientXMPP):
    def __init__(self, spec: dict) -> None:
        super().__init__(spec["jid"], spec["password"])
        self.spec = spec
        self.result: dict = {"authenticated": False, "error": None, "steps": []}
        self.ca_certs = spec["ca"]
        for plugin in ("xep_0030", "xep_0004", "xep_0050", "xep_0133"):
            self.register_plugin(plugin)
        self.done = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("failed_auth", lambda _e: self.finish("failed_auth"))
        self.add_event_handler("disconnected", lambda _e: self.finish("disconnected"))

    async def on_start(self, _event) -> None:
        self.result["authenticated"] = True
        self.send_presence()
        try:
            for step in self.spec.get("steps", []):
                self.result["steps"].append(await self.step(step))
        except Exception as err:  # report, don't hang until the timeout
            self.result["error"] = f"{type(err).__name__}: {err}"
        self.finish(None)

    async def step(self, step: dict) -> dict:
        domain = self.boundjid.domain
        try:
            if step.get("list"):
                items = await self["xep_0133"].get_commands(jid=domain)
                return {"items": sorted(item[1] for item in items["disco_items"]["items"])}
            if step.get("info"):
                info = await self["xep_0030"].get_info(jid=domain, local=False)
                return {"features": sorted(info["disco_info"]["features"])}
        except (IqError, IqTimeout) as err:
            return {"error": err.iq["error"]["condition"] if isinstance(err, IqError) else "timeout"}
        return await asyncio.wait_for(self.command(step["command"], step.get("values", {})), 15)

    def command(self, name: str, values: dict) -> asyncio.Future:
        """Run one XEP-0133 command (or, for a name with ``#``, the command of that node) with the plugins'
        flow API; a future of its outcome."""
        outcome: asyncio.Future = asyncio.get_event_loop().create_future()

        def answer(iq, session) -> None:
            if iq["type"] == "error":  # slixmpp keeps a failed session unless told (and reuses it otherwise)
                self["xep_0050"].terminate_command(session)
            if not outcome.done():
                outcome.set_result(_outcome(iq))

        def fill(iq, session) -> None:
            if iq["command"]["status"] == "completed":
                answer(iq, session)
                return
            types = {var: field["type"] for var, field in iq["command"]["form"].get_fields().items()}
            form = self["xep_0004"].make_form(ftype="submit")
            form.add_field(var="FORM_TYPE", ftype="hidden", value=ADMIN)
            for var, value in values.items():
                kind = types.get(var, "text-single")
                form.add_field(var=var, ftype=kind, value=value if kind.endswith("-multi") else str(value))
            session["payload"] = form
            session["next"] = answer
            self["xep_0050"].complete_command(session)

        session = {"next": fill, "error": answer}
        if "#" in name:
            self["xep_0050"].start_command(self.boundjid.domain, name, session)
        else:
            getattr(self["xep_0133"], name.replace("-", "_"))(session=session)
        return outcome

    def finish(self, error: str | None) -> None:
        if not self.done.done():
            self.result["error"] = self.result["error"] or error
            self.done.set_result(None)


def _outcome(iq) -> dict:
    if iq["type"] == "error":
        return {"error": iq["error"]["condition"], "text": iq["error"]["text"]}
    command = iq["command"]
    fields = {var: _values(field.get_value(convert=False)) for var, field in command["form"].get_fields().items()
              if var != "FORM_TYPE"}
    return {"status": command["status"], "notes": [list(note) for note in command["notes"]], "fields": fields}


async def run(spec: dict) -> dict:
    client = Client(spec)
    client.connect(spec["host"], spec["port"])
    try:
        await asyncio.wait_for(client.done, spec.get("timeout", 20))
    except TimeoutError:
        client.result["error"] = client.result["error"] or "timeout"
    client.disconnect()
    await asyncio.sleep(0.1)
    return client.result


def main() -> None:
    logging.basicConfig(level=logging.DEBUG if os.environ.get("SLIX_DEBUG") else logging.ERROR)
    print(json.dumps(asyncio.run(run(json.loads(sys.argv[1])))))


if __name__ == "__main__":
    main()
