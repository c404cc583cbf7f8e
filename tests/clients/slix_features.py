"""slixmpp exercising the base modules; run by tests/test_features_interop.py, prints one JSON line.

    python -m tests.clients.slix_features SPEC_JSON

SPEC: {"host", "port", "ca", "timeout", "jid", "password", "register": bool, "peer": bare JID or null}.
With ``register`` the account is created in-band (slixmpp's xep_0077) before logging in. Then: publish a
vCard and read it back, read ``peer``'s vCard, disco#info of the server and of the own account,
software version, entity time and server uptime.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout


def _condition(err: Exception) -> str:
    if isinstance(err, IqError):
        return err.iq["error"]["condition"]
    return type(err).__name__


class Client(slixmpp.ClientXMPP):
    def __init__(self, spec: dict) -> None:
        super().__init__(spec["jid"], spec["password"])
        self.spec = spec
        self.result: dict = {"registered": None, "authenticated": False, "error": None}
        self.ca_certs = spec["ca"]
        for plugin in ("xep_0030", "xep_0054", "xep_0092", "xep_0202", "xep_0012", "xep_0077"):
            self.register_plugin(plugin)
        self.done = asyncio.get_event_loop().create_future()
        self.add_event_handler("register", self.on_register)
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("failed_auth", lambda _e: self.finish("failed_auth"))
        self.add_event_handler("disconnected", lambda _e: self.finish("disconnected"))

    async def on_register(self, form) -> None:
        self.result["register_fields"] = sorted(form["register"]["fields"])
        if not self.spec.get("register"):
            return
        iq = self.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = self.boundjid.user
        iq["register"]["password"] = self.password
        try:
            await iq.send()
            self.result["registered"] = True
        except (IqError, IqTimeout) as err:
            self.result["registered"] = _condition(err)

    async def on_start(self, _event) -> None:
        self.result["authenticated"] = True
        r = self.result
        domain = self.boundjid.domain
        try:
            vcard = self["xep_0054"].make_vcard()
            vcard["FN"] = "Interop Tester"
            vcard["NICKNAME"] = "slix"
            await self["xep_0054"].publish_vcard(vcard)
            own = await self["xep_0054"].get_vcard(self.boundjid.bare, local=False)
            r["vcard_fn"] = own["vcard_temp"]["FN"]
            r["vcard_nick"] = own["vcard_temp"]["NICKNAME"]
            if self.spec.get("peer"):
                try:
                    other = await self["xep_0054"].get_vcard(self.spec["peer"], local=False)
                    r["peer_vcard_fn"] = other["vcard_temp"]["FN"]
                except IqError as err:
                    r["peer_vcard_fn"] = {"error": _condition(err)}
            info = await self["xep_0030"].get_info(jid=domain, local=False)
            r["server_identities"] = [list(i[:2]) for i in info["disco_info"]["identities"]]
            r["server_features"] = sorted(info["disco_info"]["features"])
            info = await self["xep_0030"].get_info(jid=self.boundjid.bare, local=False)
            r["account_identities"] = [list(i[:2]) for i in info["disco_info"]["identities"]]
            version = await self["xep_0092"].get_version(domain)
            r["version"] = {"name": version["software_version"]["name"],
                            "version": version["software_version"]["version"]}
            entity_time = await self["xep_0202"].get_entity_time(domain)
            # slixmpp's tzo/utc getters misparse spec-conformant values (they append their own 'Z'): raw text
            r["time_tzo"] = entity_time.xml.find("{urn:xmpp:time}time/{urn:xmpp:time}tzo").text
            r["time_utc"] = entity_time.xml.find("{urn:xmpp:time}time/{urn:xmpp:time}utc").text
            uptime = await self["xep_0012"].get_last_activity(domain)
            r["uptime"] = uptime["last_activity"]["seconds"]
        except (IqError, IqTimeout) as err:
            r["error"] = f"{type(err).__name__}: {_condition(err)}"
        except Exception as err:  # report, don't hang until the timeout
            r["error"] = f"{type(err).__name__}: {err}"
        self.finish(None)

    def finish(self, error: str | None) -> None:
        if not self.done.done():
            self.result["error"] = self.result["error"] or error
            self.done.set_result(None)


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
    logging.basicConfig(level=logging.ERROR)
    print(json.dumps(asyncio.run(run(json.loads(sys.argv[1])))))


if __name__ == "__main__":
    main()
