"""XEP-0313 Message Archive Management against a real node: stanza-ids stamped (forged ones removed), both
sides archived once (offline included), queries with every filter, RSM paging through 1,000 messages both
ways, flip-page, slixmpp's xep_0313 plugin, and attacks (huge max, another's archive, garbage, a query flood)."""

from __future__ import annotations

import json
import os
import sys
import time
import xml.etree.ElementTree as ET

from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.clients.raw import RawClient
from tests.support.attack import MAX_RSS_GROWTH, MAX_RTT, PINGER, PINGER_PASSWORD, MiB, Pinger, pinged_attack
from tests.support.cluster import DOMAIN, make_cluster, migrate
from tests.support.process import wait_for_port
from tests.support.server import start_server
from tests.support.slix import ROOT, ca_file
from tests.support.waiting import wait_until
from tests.test_message_rules import Client, make_server
from xmppcluster.core.serializer import serialize
from xmppcluster.core.xml import reparse
from xmppcluster.storage.archive import ArchivedMessage, ArchiveStore

NS = "urn:xmpp:mam:2"
SID = "urn:xmpp:sid:0"
RSM = "http://jabber.org/protocol/rsm"
FORWARD = "urn:xmpp:forward:0"
DATA = "jabber:x:data"
C = "{jabber:client}"
STANZAS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"
PASSWORD = "archive pässword"
#: The module is off by default (its cost on throughput, docs/im.rst).
MAM_ON = "--sm-plugins=+mam\n"


def ping(client: RawClient, to: str = "localhost") -> None:
    """Barrier: the server processed everything this client sent before."""
    client.send(f"<iq type='get' id='barrier' to='{to}'><ping xmlns='urn:xmpp:ping'/></iq>")
    while client.until(f"{C}iq").get("id") != "barrier":
        pass


def form(**fields: str | list[str]) -> str:
    parts = [f"<field var='FORM_TYPE' type='hidden'><value>{NS}</value></field>"]
    for var, value in fields.items():
        values = value if isinstance(value, list) else [value]
        name = var.rstrip("_").replace("_", "-")
        parts.append(f"<field var='{name}'>" + "".join(f"<value>{v}</value>" for v in values) + "</field>")
    return f"<x xmlns='{DATA}' type='submit'>{''.join(parts)}</x>"


def rsm(max: int | str | None = None, after: str | None = None, before: str | None = None) -> str:
    inner = "" if max is None else f"<max>{max}</max>"
    inner += "" if after is None else f"<after>{after}</after>"
    inner += "" if before is None else (f"<before>{before}</before>" if before else "<before/>")
    return f"<set xmlns='{RSM}'>{inner}</set>" if inner else ""


class Query:
    """The answer to one query: the result messages (id, body, stanza-id) and the fin."""

    def __init__(self, results: list[ET.Element], reply: ET.Element) -> None:
        self.reply = reply
        self.results = results
        self.fin = reply.find(f"{{{NS}}}fin")

    @property
    def error(self) -> str | None:
        error = self.reply.find(f"{C}error")
        if error is None:
            return None
        return next(iter(error)).tag.removeprefix(STANZAS)

    @property
    def ids(self) -> list[str]:
        return [r.find(f"{{{NS}}}result").get("id") for r in self.results]

    @property
    def bodies(self) -> list[str]:
        return [r.findtext(f"{{{NS}}}result/{{{FORWARD}}}forwarded/{C}message/{C}body") for r in self.results]

    @property
    def complete(self) -> bool:
        return self.fin.get("complete") in ("true", "1")

    def rsm(self, name: str) -> str | None:
        return self.fin.findtext(f"{{{RSM}}}set/{{{RSM}}}{name}")


def query(client: RawClient, payload: str = "", *, queryid: str = "q", to: str | None = None,
          extra: str = "") -> Query:
    address = f" to='{to}'" if to else ""
    client.send(f"<iq type='set' id='mam'{address}><query xmlns='{NS}' queryid='{queryid}'>{payload}{extra}"
                "</query></iq>")
    results = []
    while True:
        stanza = client.next()
        if stanza.tag == f"{C}message" and stanza.find(f"{{{NS}}}result") is not None:
            assert stanza.find(f"{{{NS}}}result").get("queryid") == queryid, ET.tostring(stanza)
            results.append(stanza)
        elif stanza.tag == f"{C}iq" and stanza.get("id") == "mam":
            return Query(results, stanza)


class Rows:
    """Stands for the batched writer: keeps the rows the module archives."""

    def __init__(self) -> None:
        self.rows: list[ArchivedMessage] = []

    def add(self, row: ArchivedMessage) -> None:
        self.rows.append(row)


class Rules(SynchronousTestCase):
    """The stream core, router and module as in production; clients on fake transports, rows kept in memory."""

    def setUp(self) -> None:
        self.server = make_server(modules=("mam", "urn:xmpp:carbons:2"))
        self.rows = self.server.modules["mam"].writer = Rows()
        self.alice = Client(self.server, "alice", "a")
        self.bob = Client(self.server, "bob", "b")
        for client in (self.alice, self.bob):
            client.presence(0)
            client.take()

    def ids(self, stanza) -> list[tuple[str, str]]:
        return [(c["by"], c["id"]) for c in stanza.elements(SID, "stanza-id")]

    def test_a_rerouted_message_is_not_archived_again(self) -> None:
        self.alice.send("<message to='bob@localhost/b' type='chat'><body>once</body></message>")
        [got] = self.bob.take("message")
        self.assertEqual([(r.user, r.direction) for r in self.rows.rows], [("alice", "out"), ("bob", "in")])
        [(by, id)] = self.ids(got)
        self.assertEqual((by, id), ("bob@localhost", self.rows.rows[1].id))
        # its session vanished before it was written: the RFC 6121 fallback routes it (as text) again
        self.server.router.undeliverable(reparse(serialize(got).encode()), "bob@localhost")
        [again] = self.bob.take("message")
        self.assertEqual(self.ids(again), [(by, id)])
        self.assertEqual(len(self.rows.rows), 2)

    def test_forged_ids_are_removed_even_well_formed_ones(self) -> None:
        mam = self.server.modules["mam"]
        for forged in ("forged", mam.new_id("alice@localhost", 1), "A" * 28):
            self.alice.send(f"<message to='bob@localhost' type='chat'><body>x</body>"
                            f"<stanza-id xmlns='{SID}' by='bob@localhost' id='{forged}'/></message>")
            [got] = self.bob.take("message")
            [(by, id)] = self.ids(got)
            self.assertNotEqual(id, forged)
            self.assertTrue(mam.ours(id, "bob@localhost"))
            self.assertFalse(mam.ours(id, "alice@localhost"))
        self.assertEqual(len(self.rows.rows), 6)

    def test_what_is_archived(self) -> None:
        sends = {
            "chat": "<message to='bob@localhost' type='chat'><body>yes</body></message>",
            "normal": "<message to='bob@localhost'><body>yes</body></message>",
            "store hint": "<message to='bob@localhost' type='chat'><store xmlns='urn:xmpp:hints'/>"
                          "<active xmlns='http://jabber.org/protocol/chatstates'/></message>",
            "no body": "<message to='bob@localhost' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/>"
                       "</message>",
            "no-permanent-store": "<message to='bob@localhost' type='chat'><body>no</body>"
                                  "<no-permanent-store xmlns='urn:xmpp:hints'/></message>",
            "headline": "<message to='bob@localhost' type='headline'><body>no</body></message>",
            "to self": "<message to='alice@localhost' type='chat'><body>once</body></message>",
        }
        counts = {}
        for name, xml in sends.items():
            before = len(self.rows.rows)
            self.alice.send(xml)
            counts[name] = len(self.rows.rows) - before
        self.assertEqual(counts, {"chat": 2, "normal": 2, "store hint": 2, "no body": 0, "no-permanent-store": 0,
                                  "headline": 0, "to self": 1})

    def test_the_received_carbon_carries_the_stanza_id(self) -> None:
        phone = Client(self.server, "bob", "phone")
        phone.send("<iq type='set' id='on'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        phone.presence(-1)
        phone.take()
        self.alice.send("<message to='bob@localhost/b' type='chat'><body>copied</body></message>")
        [got] = self.bob.take("message")
        [carbon] = phone.take("message")
        inner = reparse(serialize(carbon).encode())
        [fwd] = [c for c in inner.elements() if c.name == "received"]
        [message] = list(next(fwd.elements()).elements("jabber:client", "message"))
        self.assertEqual(self.ids(message), self.ids(got))


class Switch(TestCase):
    """Off by default: no archive, no stanza-id, no feature; on with --sm-plugins=+mam."""

    timeout = 60

    async def test_off_by_default(self) -> None:
        running = await start_server(self)
        for user in ("alice", "bob"):
            await running.add_user(f"{user}@localhost", PASSWORD)
        self.assertNotIn("mam", running.server.modules)

        def scenario():
            alice = RawClient(running.ports["c2s"]["plain"], ca_file=ca_file(running), timeout=30)
            bob = RawClient(running.ports["c2s"]["plain"], ca_file=ca_file(running), timeout=30)
            self.addCleanup(alice.close)
            self.addCleanup(bob.close)
            alice.login("alice", PASSWORD, "r")
            bob.login("bob", PASSWORD, "r")
            alice.send("<message to='bob@localhost/r' type='chat'><body>not archived</body></message>")
            got = bob.until(f"{C}message")
            return got, query(bob)

        got, answer = await deferToThread(scenario)
        self.assertIsNone(got.find(f"{{{SID}}}stanza-id"))
        self.assertEqual(answer.error, "service-unavailable")


class Archive(TestCase):
    """One real node (SQLite), raw clients (our own, independent of the server)."""

    timeout = 120

    async def start(self, *users: str):
        running = await start_server(self, MAM_ON)
        for user in users or ("alice", "bob", "mallory"):
            await running.add_user(f"{user}@localhost", PASSWORD)
        self.running = running
        return running

    def raw(self, user: str, resource: str = "r", *, presence: bool = True) -> RawClient:
        client = RawClient(self.running.ports["c2s"]["plain"], ca_file=ca_file(self.running), timeout=30)
        self.addCleanup(client.close)
        client.login(user, PASSWORD, resource)
        if presence:
            client.send("<presence/>")
            ping(client)
        return client

    async def test_stanza_id_stamped_forged_ones_removed_both_sides_archived(self) -> None:
        await self.start()

        def scenario():
            alice, bob = self.raw("alice"), self.raw("bob")
            alice.send(f"<message to='bob@localhost/r' type='chat' id='m1'><body>hello</body>"
                       f"<stanza-id xmlns='{SID}' by='bob@localhost' id='forged'/>"
                       f"<stanza-id xmlns='{SID}' by='elsewhere.example' id='kept'/></message>")
            got = bob.until(f"{C}message")
            alice.send("<message to='bob@localhost' type='chat'><body>to the bare JID</body></message>")
            got2 = bob.until(f"{C}message")
            alice.send("<message to='bob@localhost'><composing xmlns='http://jabber.org/protocol/chatstates'/>"
                       "</message>")  # no body: not archived
            alice.send("<message to='bob@localhost' type='chat'><body>secret</body>"
                       "<no-store xmlns='urn:xmpp:hints'/></message>")
            bob.until(f"{C}message")
            bob.until(f"{C}message")
            ping(alice)
            return got, got2, query(bob), query(alice)

        got, got2, bobs, alices = await deferToThread(scenario)
        ids = {s.get("by"): s.get("id") for s in got.findall(f"{{{SID}}}stanza-id")}
        self.assertEqual(set(ids), {"bob@localhost", "elsewhere.example"})
        self.assertNotEqual(ids["bob@localhost"], "forged")
        self.assertEqual(ids["elsewhere.example"], "kept")
        self.assertEqual(bobs.bodies, ["hello", "to the bare JID"])
        self.assertEqual(bobs.ids[0], ids["bob@localhost"])
        self.assertEqual(bobs.ids[1], got2.find(f"{{{SID}}}stanza-id").get("id"))
        self.assertEqual((bobs.rsm("count"), bobs.rsm("first"), bobs.rsm("last")), ("2", *bobs.ids))
        self.assertTrue(bobs.complete)
        first = bobs.results[0]
        self.assertEqual((first.get("from"), first.get("to")), ("bob@localhost", "bob@localhost/r"))
        inner = first.find(f"{{{NS}}}result/{{{FORWARD}}}forwarded/{C}message")
        self.assertEqual(inner.get("from"), "alice@localhost/r")
        self.assertIsNotNone(first.find(f"{{{NS}}}result/{{{FORWARD}}}forwarded/{{urn:xmpp:delay}}delay").get("stamp"))
        # alice's archive has her two sent messages, under ids of her own
        self.assertEqual(alices.bodies, ["hello", "to the bare JID"])
        self.assertFalse(set(alices.ids) & set(bobs.ids))

    async def test_preferences(self) -> None:
        await self.start("alice", "bob", "carol", "dave")

        def prefs(client: RawClient, payload: str | None = None) -> ET.Element:
            if payload is None:
                client.send(f"<iq type='get' id='prefs'><prefs xmlns='{NS}'/></iq>")
            else:
                client.send(f"<iq type='set' id='prefs'>{payload}</iq>")
            return client.until(f"{C}iq")

        def shape(reply: ET.Element) -> tuple:
            element = reply.find(f"{{{NS}}}prefs")
            return (element.get("default"), [j.text for j in element.findall(f"{{{NS}}}always/{{{NS}}}jid")],
                    [j.text for j in element.findall(f"{{{NS}}}never/{{{NS}}}jid")])

        def scenario():
            alice = self.raw("alice")
            senders = {name: self.raw(name) for name in ("bob", "carol", "dave")}
            found = {"initial": shape(prefs(alice))}
            found["set"] = shape(prefs(alice, f"<prefs xmlns='{NS}' default='roster'><always/>"
                                              f"<never><jid>carol@localhost</jid><jid>Dave@LOCALHOST</jid></never>"
                                              "</prefs>"))
            found["get"] = shape(prefs(alice))
            for contact in ("bob", "carol"):
                alice.send(f"<iq type='set' id='roster'><query xmlns='jabber:iq:roster'>"
                           f"<item jid='{contact}@localhost'/></query></iq>")
                while (reply := alice.until(f"{C}iq")).get("id") != "roster":
                    pass
                assert reply.get("type") == "result", ET.tostring(reply)
            stamped = {}

            def send_all(tag: str) -> None:
                for name, client in senders.items():
                    client.send(f"<message to='alice@localhost' type='chat'><body>{tag} from {name}</body></message>")
                    got = alice.until(f"{C}message")
                    stamped[f"{tag} {name}"] = got.find(f"{{{SID}}}stanza-id") is not None

            send_all("roster")
            found["roster"] = query(alice).bodies
            found["set2"] = shape(prefs(alice, f"<prefs xmlns='{NS}' default='never'><always>"
                                               "<jid>dave@localhost</jid><jid>carol@localhost</jid></always>"
                                               "<never><jid>carol@localhost</jid></never></prefs>"))
            send_all("never")
            found["never"] = query(alice).bodies
            found["bad_default"] = prefs(alice, f"<prefs xmlns='{NS}' default='sometimes'/>")
            found["bad_jid"] = prefs(alice, f"<prefs xmlns='{NS}' default='always'><always><jid>@@</jid></always>"
                                            "</prefs>")
            found["stamped"] = stamped
            return found

        found = await deferToThread(scenario)
        self.assertEqual(found["initial"], ("always", [], []))
        self.assertEqual(found["set"], ("roster", [], ["carol@localhost", "dave@localhost"]))
        self.assertEqual(found["get"], found["set"])
        # roster: bob is in the roster; carol too, but in never; dave in never
        self.assertEqual(found["roster"], ["roster from bob"])
        # never: dave in always; carol in both lists (never wins)
        self.assertEqual(found["set2"], ("never", ["dave@localhost"], ["carol@localhost"]))
        self.assertEqual(found["never"], ["roster from bob", "never from dave"])
        self.assertEqual(found["stamped"], {"roster bob": True, "roster carol": False, "roster dave": False,
                                            "never bob": False, "never carol": False, "never dave": True})
        for name, condition in (("bad_default", "bad-request"), ("bad_jid", "jid-malformed")):
            self.assertEqual(Query([], found[name]).error, condition, name)

    async def test_offline_message_is_archived_once_with_the_id_it_is_delivered_with(self) -> None:
        running = await self.start()

        def send():
            alice = self.raw("alice")
            alice.send("<message to='bob@localhost' type='chat'><body>while you were away</body></message>")
            ping(alice)

        await deferToThread(send)
        store = ArchiveStore(running.server.storage.db)
        await running.server.modules["mam"].writer.flush()
        self.assertEqual(await store.count("bob", "localhost"), 1)

        def login():
            bob = self.raw("bob", presence=False)
            bob.send("<presence/>")
            got = bob.until(f"{C}message")
            return got, query(bob)

        got, bobs = await deferToThread(login)
        self.assertEqual(got.findtext(f"{C}body"), "while you were away")
        self.assertEqual(bobs.ids, [got.find(f"{{{SID}}}stanza-id").get("id")])
        self.assertEqual(await store.count("bob", "localhost"), 1)

    async def exchange_1000(self) -> None:
        """alice sends bob 1,000 chat messages through the server (bob reads them as they come)."""

        def scenario():
            alice, bob = self.raw("alice"), self.raw("bob")
            for start in range(0, 1000, 100):
                for n in range(start, start + 100):
                    alice.send(f"<message to='bob@localhost/r' type='chat'><body>m{n}</body></message>")
                for _ in range(100):
                    bob.until(f"{C}message")
            ping(alice)

        await deferToThread(scenario)

    async def test_rsm_pages_through_1000_messages_both_ways(self) -> None:
        await self.start()
        await self.exchange_1000()
        expected = [f"m{n}" for n in range(1000)]

        def page_through():
            alice = self.raw("alice", "pager")
            forwards, after, pages = [], None, 0
            while True:
                page = query(alice, rsm(250, after=after))
                pages += 1
                assert page.rsm("count") == "1000", page.rsm("count")
                assert page.ids[0] == page.rsm("first") and page.ids[-1] == page.rsm("last")
                forwards += page.bodies
                if page.complete:
                    break
                after = page.rsm("last")
            backwards, before, flipped = [], "", []
            while True:
                page = query(alice, rsm(300, before=before))
                backwards = page.bodies + backwards
                flip = query(alice, rsm(300, before=before), extra=f"<flip-page xmlns='{NS}'/>")
                flipped += flip.bodies
                assert flip.ids == list(reversed(page.ids))
                if page.complete:
                    break
                before = page.rsm("first")
            return forwards, pages, backwards, flipped

        forwards, pages, backwards, flipped = await deferToThread(page_through)
        self.assertEqual(forwards, expected)
        self.assertEqual(pages, 4)
        self.assertEqual(backwards, expected)
        self.assertEqual(flipped, list(reversed(expected)))
        [bob] = await run_slixmpp(self.running, [{"jid": "bob@localhost/slix", "password": PASSWORD, "page": 100}])
        self.assertIsNone(bob["error"], bob)
        self.assertIn(NS, bob["features"])
        self.assertIn(SID, bob["features"])
        self.assertTrue({"with", "start", "end"} <= set(bob["fields"]), bob["fields"])
        self.assertEqual(bob["forwards"]["bodies"], expected)
        self.assertEqual(len(set(bob["forwards"]["ids"])), 1000)
        self.assertEqual(bob["backwards"]["bodies"], list(reversed(expected)))

    async def test_filters_and_errors(self) -> None:
        await self.start("alice", "bob", "carol")

        def scenario():
            alice, bob, carol = self.raw("alice"), self.raw("bob", "phone"), self.raw("carol")
            for n in range(6):
                alice.send(f"<message to='bob@localhost/phone' type='chat'><body>a{n}</body></message>")
                bob.until(f"{C}message")
                carol.send(f"<message to='bob@localhost' type='normal'><body>c{n}</body></message>")
                bob.until(f"{C}message")
            ping(alice)
            ping(carol)
            everything = query(bob)
            ids = everything.ids
            stamps = [r.find(f"{{{NS}}}result/{{{FORWARD}}}forwarded/{{urn:xmpp:delay}}delay").get("stamp")
                      for r in everything.results]
            answers = {
                "all": everything,
                "with": query(bob, form(with_="alice@localhost")),
                "with_full": query(bob, form(with_="carol@localhost/r")),
                "with_other_resource": query(bob, form(with_="carol@localhost/elsewhere")),
                "start_end": query(bob, form(start=stamps[2], end=stamps[4])),
                "after_id": query(bob, form(after_id=ids[9])),
                "before_id": query(bob, form(before_id=ids[2])),
                "ids": query(bob, form(ids=[ids[7], ids[3], "unknown"])),
                "with_rsm": query(bob, form(with_="carol@localhost") + rsm(2, before="")),
                "max0": query(bob, rsm(0)),
                "unknown_after": query(bob, rsm(5, after="no-such-id")),
                "unknown_after_id": query(bob, form(after_id="no-such-id")),
                "bad_stamp": query(bob, form(start="yesterday")),
                "bad_jid": query(bob, form(with_="@@")),
                "bad_max": query(bob, rsm("-1")),
                "unknown_field": query(bob, form(color="blue")),
                "bad_form_type": query(bob, f"<x xmlns='{DATA}' type='submit'><field var='FORM_TYPE'>"
                                            "<value>urn:example</value></field></x>"),
            }
            bob.send(f"<iq type='get' id='form'><query xmlns='{NS}'/></iq>")
            answers["form"] = bob.until(f"{C}iq")
            return ids, answers

        ids, a = await deferToThread(scenario)
        self.assertEqual(a["all"].bodies, [f"{x}{n}" for n in range(6) for x in "ac"])
        self.assertEqual(a["with"].bodies, [f"a{n}" for n in range(6)])
        self.assertEqual(a["with_full"].bodies, [f"c{n}" for n in range(6)])
        self.assertEqual(a["with_other_resource"].bodies, [])
        self.assertEqual(a["start_end"].bodies, ["a1", "c1", "a2"])
        self.assertEqual(a["after_id"].bodies, ["a5", "c5"])
        self.assertEqual(a["before_id"].bodies, ["a0", "c0"])
        self.assertEqual(a["ids"].ids, [ids[3], ids[7]])
        self.assertEqual(a["with_rsm"].bodies, ["c4", "c5"])
        self.assertFalse(a["with_rsm"].complete)
        self.assertEqual((a["with_rsm"].rsm("count"), a["max0"].rsm("count"), a["max0"].results), ("6", "12", []))
        for name, condition in (("unknown_after", "item-not-found"), ("unknown_after_id", "item-not-found"),
                                ("bad_stamp", "bad-request"), ("bad_jid", "jid-malformed"),
                                ("bad_max", "bad-request"), ("unknown_field", "feature-not-implemented"),
                                ("bad_form_type", "bad-request")):
            self.assertEqual(a[name].error, condition, name)
        fields = [f.get("var") for f in a["form"].findall(f"{{{NS}}}query/{{{DATA}}}x/{{{DATA}}}field")]
        self.assertEqual(fields, ["FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids"])


async def run_slixmpp(running, clients: list[dict], timeout: float = 60) -> list[dict]:
    spec = {"host": "127.0.0.1", "port": running.ports["c2s"]["plain"], "ca": ca_file(running), "timeout": timeout,
            "clients": clients}
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-m", "tests.clients.slix_mam", json.dumps(spec)], env=dict(os.environ), path=ROOT)
    if code != 0:
        raise AssertionError(f"slixmpp client failed ({code}): {err.decode(errors='replace')[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


class LeanClient(RawClient):
    """A raw client that forgets each top-level element once read (the flood reads 50,000 of them: the
    stream's tree would otherwise keep them all, in this process whose peak RSS the test measures)."""

    def _pump(self) -> None:
        self.parser.feed(self._read())
        for event, element in self.parser.read_events():
            if event == "start":
                if self.depth == 0:
                    self.root = element
                self.depth += 1
                continue
            self.depth -= 1
            if self.depth == 0:
                self.stream_closed = True
            elif self.depth == 1:
                self.root.remove(element)
                self.pending.append(element)


class Attacks(TestCase):
    """Hostile queries against a real node while a well-behaved client pings it."""

    timeout = 120

    async def test_huge_max_foreign_archive_garbage_and_a_query_flood(self) -> None:
        running = await start_server(self, MAM_ON)
        for user in ("alice", "mallory"):
            await running.add_user(f"{user}@localhost", PASSWORD)
        await running.add_user(PINGER, PINGER_PASSWORD)
        store = ArchiveStore(running.server.storage.db)
        now = int(time.time() * 1_000_000)
        await store.add([ArchivedMessage(
            "mallory", "localhost", f"id{n:05d}", now + n, "alice@localhost", "r", "in",
            f"<message xmlns='jabber:client' from='alice@localhost/r' type='chat'><body>{'x' * 200} {n}</body>"
            "</message>".encode()) for n in range(1000)])
        await store.add([ArchivedMessage("alice", "localhost", "alices", now, "bob@localhost", "", "in",
                                         b"<message xmlns='jabber:client'><body>private</body></message>")])
        port = running.ports["c2s"]["plain"]
        pinger = await deferToThread(Pinger, port, ca_file(running))

        def attack():
            mallory = LeanClient(port, ca_file=ca_file(running), timeout=60)
            try:
                mallory.login("mallory", PASSWORD, "m")
                found = {
                    "huge_max": query(mallory, rsm(999_999_999)),
                    "too_long_max": query(mallory, rsm("9" * 40)),
                    "foreign": query(mallory, to="alice@localhost"),
                    "foreign_with_form": query(mallory, form(with_="bob@localhost"), to="alice@localhost"),
                    "foreign_id": query(mallory, rsm(10, after="alices")),
                    "long_id": query(mallory, rsm(10, after="z" * 4000)),
                    "many_values": query(mallory, form(ids=[f"v{n}" for n in range(300)])),
                    "garbage_stamp": query(mallory, form(start="9999999-99-99T99:99:99Z")),
                    "nested_garbage": query(mallory, f"<x xmlns='{DATA}' type='submit'><field var='with'>"
                                                     "<value><b>no</b></value></field></x>"),
                    "both_ways": query(mallory, rsm(5, after="id00001", before="id00002")),
                    "long_queryid": query(mallory, queryid="q" * 300),
                }
                pages = 0
                for _round in range(20):  # 200 full pages: 50,000 result messages
                    for n in range(10):
                        mallory.send(f"<iq type='set' id='f{n}'><query xmlns='{NS}' queryid='f'>{rsm(250)}"
                                     "</query></iq>")
                    answered = 0
                    while answered < 10:
                        stanza = mallory.next()
                        if stanza.tag == f"{C}iq":
                            assert stanza.get("type") == "result", ET.tostring(stanza)
                            answered += 1
                        else:
                            pages += 1
                found["flood_results"] = pages
                return found
            finally:
                mallory.close()

        found, rtts, growth = await pinged_attack(pinger, attack, self.id())
        self.assertEqual(len(found["huge_max"].results), 250)
        self.assertFalse(found["huge_max"].complete)
        self.assertEqual(found["huge_max"].rsm("count"), "1000")
        for name, condition in (("too_long_max", "bad-request"), ("foreign", "forbidden"),
                                ("foreign_with_form", "forbidden"), ("foreign_id", "item-not-found"),
                                ("long_id", "item-not-found"), ("many_values", "bad-request"),
                                ("garbage_stamp", "bad-request"), ("both_ways", "bad-request"),
                                ("long_queryid", "bad-request")):
            self.assertEqual(found[name].error, condition, name)
            self.assertEqual(found[name].results, [], name)
        self.assertEqual(len(found["nested_garbage"].results), 50)  # a value without text: no filter
        self.assertEqual(found["flood_results"], 200 * 250)
        self.assertLess(max(rtts), MAX_RTT, f"ping round trips under attack: {sorted(rtts)[-5:]}")
        self.assertLess(growth, MAX_RSS_GROWTH, f"peak RSS grew by {growth / MiB:.0f} MiB")


class AcrossTheCluster(TestCase):
    """Two real twistd nodes sharing one database: a message between nodes is archived once per account, with
    the stanza-id it was delivered with, and each archive is queried from either node."""

    timeout = 120

    async def setUp(self) -> None:
        self.cluster = make_cluster(self, 2, MAM_ON)
        await migrate(self.cluster)
        await self.cluster.add_users(*(f"{u}@{DOMAIN}" for u in ("alice", "bob")), password=PASSWORD)
        for name in self.cluster.nodes:
            self.cluster.start(name, wait=False)
        for name in self.cluster.nodes:
            await deferToThread(self.wait_linked, name)

    def wait_linked(self, name: str) -> None:
        node = self.cluster.nodes[name]
        wait_for_port(node.ports["c2s"], process=node.process)
        other = next(n for n in self.cluster.nodes if n != name)
        wait_until(lambda: f"link to {other} up" in self.cluster.log(name), timeout=30)

    def raw(self, node: str, user: str, resource: str) -> RawClient:
        client = RawClient(self.cluster.nodes[node].ports["c2s"], domain=DOMAIN, ca_file=self.cluster.ca_file)
        self.addCleanup(client.close)
        client.login(user, PASSWORD, resource)
        client.send("<presence/>")
        ping(client, DOMAIN)
        return client

    def test_a_message_between_nodes_is_archived_once_per_account(self):
        def scenario():
            alice = self.raw("t1.example.com", "alice", "a")
            bob = self.raw("t2.example.com", "bob", "b")
            self.cluster.wait_replicated(1, 1)
            alice.send(f"<message to='bob@{DOMAIN}' type='chat'><body>across</body>"
                       f"<stanza-id xmlns='{SID}' by='bob@{DOMAIN}' id='forged'/></message>")
            got = bob.until(f"{C}message")
            bob.send(f"<message to='alice@{DOMAIN}/a' type='chat'><body>back</body></message>")
            alice.until(f"{C}message")
            ping(bob, DOMAIN)
            # each archive asked on the node the account is on, and on the other one
            bob_there = self.raw("t1.example.com", "bob", "elsewhere")
            alice_there = self.raw("t2.example.com", "alice", "elsewhere")
            return got, query(bob), query(bob_there), query(alice), query(alice_there)

        return deferToThread(scenario).addCallback(self._check)

    def _check(self, answers) -> None:
        got, bob_t2, bob_t1, alice_t1, alice_t2 = answers
        [sid] = got.findall(f"{{{SID}}}stanza-id")
        self.assertEqual(sid.get("by"), f"bob@{DOMAIN}")
        self.assertNotEqual(sid.get("id"), "forged")
        for answer in (bob_t2, bob_t1):
            self.assertEqual(answer.bodies, ["across", "back"])
            self.assertEqual(answer.ids[0], sid.get("id"))
        self.assertEqual(bob_t1.ids, bob_t2.ids)
        for answer in (alice_t1, alice_t2):
            self.assertEqual(answer.bodies, ["across", "back"])
        self.assertEqual(alice_t1.ids, alice_t2.ids)
