"""slixmpp IM scenarios (roster, subscriptions, presence) run in a subprocess; prints one JSON result line.

    python -m tests.clients.slix_im SPEC_JSON

SPEC: {"host", "port", "ca", "timeout", "scenario": "handshake" | "fetch", "alice": {"jid", "password"},
"bob": {"jid", "password"}}.

- handshake: alice/a1 and bob/b1 come online; alice asks bob for his presence, each answers and asks
  back by hand (slixmpp's automatic answers are off); waits for "both" on both sides and for each
  other's presence; then alice/a2 comes online, a1 renames bob, and a2 must receive the roster push.
- fetch: alice and bob log in afresh and report their rosters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import slixmpp


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid: str, password: str, common: dict) -> None:
        super().__init__(jid, password)
        self.ca_certs = common["ca"]
        self.roster.auto_authorize = None  # answer requests ourselves
        self.roster.auto_subscribe = False
        self.started = asyncio.get_event_loop().create_future()
        self.seen: list[str] = []
        self.requests: list[str] = []
        self.pushes: list[dict] = []
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("failed_auth", lambda _e: self._fail("failed_auth"))
        self.add_event_handler("presence_available", self.on_available)
        self.add_event_handler("presence_subscribe", self.on_subscribe)
        self.add_event_handler("roster_update", self.on_roster_update)

    def _fail(self, why: str) -> None:
        if not self.started.done():
            self.started.set_exception(RuntimeError(why))

    async def on_start(self, _event) -> None:
        if not self.started.done():
            self.started.set_result(None)

    def on_available(self, presence) -> None:
        self.seen.append(str(presence["from"]))

    def on_subscribe(self, presence) -> None:
        contact = presence["from"].bare
        self.requests.append(contact)
        self.send_presence(pto=contact, ptype="subscribed")
        if self.client_roster[contact]["subscription"] in ("none", "from") and not \
                self.client_roster[contact]["pending_out"]:
            self.send_presence(pto=contact, ptype="subscribe")

    def on_roster_update(self, iq) -> None:
        for jid, item in iq["roster"]["items"].items():
            self.pushes.append({"jid": str(jid), "name": item["name"], "subscription": item["subscription"],
                                "groups": sorted(item["groups"])})

    def roster_of(self) -> dict:
        roster = self.client_roster
        return {jid: {"subscription": roster[jid]["subscription"], "name": roster[jid]["name"],
                      "groups": sorted(roster[jid]["groups"])} for jid in roster if jid != self.boundjid.bare}


async def online(spec: dict, resource: str, common: dict) -> Client:
    client = Client(f"{spec['jid']}/{resource}", spec["password"], common)
    client.connect(common["host"], common["port"])
    await client.started
    await client.get_roster()
    client.send_presence()
    return client


async def until(check, timeout: float) -> None:
    deadline = asyncio.get_event_loop().time() + timeout
    while not check():
        if asyncio.get_event_loop().time() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.05)


async def handshake(common: dict) -> dict:
    alice_spec, bob_spec = common["alice"], common["bob"]
    alice_bare, bob_bare = alice_spec["jid"], bob_spec["jid"]
    alice, bob = await asyncio.gather(online(alice_spec, "a1", common), online(bob_spec, "b1", common))
    clients = [alice, bob]
    result: dict = {"error": None}
    try:
        alice.send_presence(pto=bob_bare, ptype="subscribe")

        def done() -> bool:
            return (alice.client_roster[bob_bare]["subscription"] == "both"
                    and bob.client_roster[alice_bare]["subscription"] == "both"
                    and any(s.startswith(bob_bare + "/") for s in alice.seen)
                    and any(s.startswith(alice_bare + "/") for s in bob.seen))

        await until(done, common["timeout"])
        second = await online(alice_spec, "a2", common)
        clients.append(second)
        second.pushes.clear()
        await alice.update_roster(bob_bare, name="Bobby", groups=["Friends"])
        await until(lambda: any(p["name"] == "Bobby" for p in second.pushes), common["timeout"])
        result["second_pushes"] = second.pushes
        result["second_seen"] = second.seen
    except TimeoutError:
        result["error"] = "timeout"
    for name, client in (("alice", alice), ("bob", bob)):
        result[name] = {"roster": client.roster_of(), "seen": client.seen, "requests": client.requests}
    for client in clients:
        client.disconnect()
    await asyncio.sleep(0.2)
    return result


async def fetch(common: dict) -> dict:
    alice, bob = await asyncio.gather(online(common["alice"], "fresh", common), online(common["bob"], "fresh", common))
    result = {"alice": alice.roster_of(), "bob": bob.roster_of()}
    for client in (alice, bob):
        client.disconnect()
    await asyncio.sleep(0.2)
    return result


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    common = json.loads(sys.argv[1])
    scenario = {"handshake": handshake, "fetch": fetch}[common["scenario"]]
    result = asyncio.run(asyncio.wait_for(scenario(common), common["timeout"] * 3))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
