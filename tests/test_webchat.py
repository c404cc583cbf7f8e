"""The web chat at /chat (Converse.js served by the node): the page in headless Chromium on a real two-node
cluster, its Content-Security-Policy, and its answers when the assets are missing or the domain has it off.

The browser test: both nodes have their TLS BOSH and WebSocket listeners on the same ports (t1 on 127.0.0.1, t2
on 127.0.0.2: one listener layout, as host-meta and the drain's see-other-uri assume); Chromium resolves
t1.example.com and t2.example.com there (--host-resolver-rules) and trusts the nodes' key only. The page served
by t2 logs alice in over WebSocket, chats with bob (slixmpp on t1), and when t2 is drained (SIGTERM) follows
the see-other-uri to t1 and keeps chatting. Screenshots go to the test's temp directory (``_trial_temp``).

Skipped, with the reason printed, without Chromium, node, playwright-core (``tests/js/install``) or the
Converse.js files (``xmppcluster install-webchat``, run by ``./dev test``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from twisted.internet import reactor, task, threads
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, readBody

from tests.support.browser import JS, find_chromium, find_node, missing_packages, spki_sha256
from tests.support.cluster import DOMAIN, make_cluster, migrate
from tests.support.lineproc import LineProcess
from tests.support.process import ROOT
from tests.support.server import free_port, start_server
from xmppcluster.ops.webchat import CONVERSE_VERSION, assets_dir
from xmppcluster.storage import open_storage
from xmppcluster.storage.roster import RosterItem, RosterStore

PASSWORD = "web chat pässword"
WEBCHAT_DIR = os.environ.get("XMPPCLUSTER_WEBCHAT_DIR", os.path.join(ROOT, "webchat"))
T1, T2 = "t1.example.com", "t2.example.com"
ADDRESS = {T1: "127.0.0.1", T2: "127.0.0.2"}


def skip_test(reason: str) -> None:
    print(f"\nSKIPPED web chat test: {reason}", file=sys.stderr)
    raise SkipTest(reason)


async def get(url: str, headers: dict[bytes, list[bytes]] | None = None) -> tuple[int, dict, bytes]:
    """A plain-HTTP GET: (status, headers by lower-case name, body)."""
    from twisted.web.http_headers import Headers

    response = await Agent(reactor).request(b"GET", url.encode(), Headers(headers or {}))
    body = await readBody(response)
    found = {k.decode().lower(): b", ".join(v).decode() for k, v in response.headers.getAllRawHeaders()}
    return response.code, found, body


class ServedPage(TestCase):
    """One node in this process: the page, its headers and its refusals (no browser needed)."""

    timeout = 60

    async def start(self, extra: str = ""):
        return await start_server(self, extra, components=("c2s", "bosh", "ws2s"),
                                  domains=("localhost", "other.test"))

    async def test_missing_assets_answer_503_naming_the_command(self) -> None:
        missing = self.mktemp()
        running = await self.start(f"--webchat-dir={missing}\n")
        code, headers, body = await get(f"http://127.0.0.1:{running.ports['bosh']['plain']}/chat/")
        self.assertEqual(code, 503)
        self.assertEqual(headers["content-type"], "text/plain; charset=utf-8")
        self.assertIn(b"web chat assets not installed: run `xmppcluster install-webchat --webchat-dir", body)
        self.assertIn(missing.encode(), body)
        self.assertIn("default-src 'none'", headers["content-security-policy"])

    async def test_root_and_chat_redirect_to_the_page(self) -> None:
        running = await self.start(f"--webchat-dir={self.mktemp()}\n")
        for component in ("bosh", "ws2s"):
            port = running.ports[component]["plain"]
            code, headers, _ = await get(f"http://127.0.0.1:{port}/")
            self.assertEqual((code, headers.get("location")), (302, "/chat/"), component)
            code, headers, _ = await get(f"http://127.0.0.1:{port}/chat?domain=other.test")
            self.assertEqual((code, headers.get("location")), (301, "/chat/?domain=other.test"), component)

    async def test_page_config_and_csp_with_assets(self) -> None:
        if assets_dir(WEBCHAT_DIR) is None:
            skip_test(f"Converse.js is not installed in {WEBCHAT_DIR}: run `xmppcluster install-webchat`")
        running = await self.start(f"--webchat-dir={WEBCHAT_DIR}\n--webchat-title=Chat <&> here\n"
                                   "vhost-man/other.test/webchat-title=Other chat\n")
        bosh, ws = running.ports["bosh"]["plain"], running.ports["ws2s"]["plain"]
        code, headers, body = await get(f"http://localhost:{bosh}/chat/")
        self.assertEqual(code, 200, body)
        csp = dict(part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";"))
        self.assertEqual(csp["script-src"], "'self'")  # no inline script, no eval
        self.assertEqual(csp["default-src"], "'none'")
        self.assertEqual(csp["frame-ancestors"], "'none'")
        self.assertIn(f"ws://localhost:{ws}", csp["connect-src"].split())
        self.assertEqual(headers["x-content-type-options"], "nosniff")
        self.assertIn(b"<title>Chat &lt;&amp;&gt; here</title>", body)
        self.assertNotIn(b"<script>", body)  # every script has a src
        self.assertNotIn(b"<style", body)
        code, _, body = await get(f"http://localhost:{bosh}/chat/config.json")
        config = json.loads(body)
        self.assertEqual((config["domain"], config["title"]), ("localhost", "Chat <&> here"))
        [node] = config["nodes"]
        self.assertEqual(node["websocket"], [f"ws://localhost:{ws}/xmpp-websocket"])
        self.assertEqual(node["bosh"], [f"http://localhost:{bosh}/http-bind"])
        code, _, body = await get(f"http://127.0.0.1:{ws}/chat/config.json?domain=other.test")
        self.assertEqual(json.loads(body)["title"], "Other chat")
        code, headers, body = await get(f"http://127.0.0.1:{ws}/chat/dist/converse.min.js")
        self.assertEqual((code, headers["content-type"]), (200, "text/javascript"))
        code, headers, _ = await get(f"http://127.0.0.1:{ws}/chat/app.js")
        self.assertEqual((code, headers["content-type"]), (200, "text/javascript"))
        code, _, _ = await get(f"http://127.0.0.1:{ws}/chat/dist/../../../../etc/passwd")
        self.assertEqual(code, 404)
        code, _, _ = await get(f"http://127.0.0.1:{ws}/chat/dist/%2e%2e/%2e%2e/package.json")
        self.assertEqual(code, 404)

    async def test_off_for_one_domain(self) -> None:
        running = await self.start(f"--webchat-dir={WEBCHAT_DIR}\nvhost-man/other.test/webchat=false\n")
        port = running.ports["bosh"]["plain"]
        code, _, body = await get(f"http://127.0.0.1:{port}/chat/?domain=other.test")
        self.assertEqual((code, body), (404, b"web chat is not enabled for other.test\n"))
        code, _, body = await get(f"http://127.0.0.1:{port}/chat/config.json?domain=nowhere.test")
        self.assertEqual(code, 404)

    async def test_off_everywhere(self) -> None:
        running = await self.start(f"--webchat-dir={WEBCHAT_DIR}\n--webchat=false\n")
        code, _, _ = await get(f"http://127.0.0.1:{running.ports['bosh']['plain']}/chat/")
        self.assertEqual(code, 404)


class HostileRequests(TestCase):
    """What a request controls (Host, ?domain=, the path) never reaches the CSP or config.json unchecked."""

    timeout = 60

    async def test_host_header_cannot_inject_into_the_policy_or_the_config(self) -> None:
        running = await start_server(self, f"--webchat-dir={WEBCHAT_DIR}\n", components=("c2s", "bosh", "ws2s"))
        port = running.ports["bosh"]["plain"]
        for host in (b"evil.example; script-src *", b"a' 'unsafe-eval", b"[not-an-address]:1", b"x" * 300):
            code, headers, body = await get(f"http://127.0.0.1:{port}/chat/config.json", {b"Host": [host]})
            csp = headers["content-security-policy"]
            self.assertNotIn("evil", csp)
            self.assertNotIn("unsafe-eval", csp)
            self.assertEqual(csp.count("script-src"), 1)
            if code == 200:  # assets installed: the config names the node, not the Host given
                self.assertTrue(json.loads(body)["nodes"][0]["websocket"][0].startswith("ws://node1.test:"), body)

    async def test_oversized_or_unknown_domain_is_not_found(self) -> None:
        running = await start_server(self, f"--webchat-dir={WEBCHAT_DIR}\n", components=("c2s", "bosh"))
        port = running.ports["bosh"]["plain"]
        for domain in ("a" * 5000, "nowhere.test", "%00"):
            code, headers, body = await get(f"http://127.0.0.1:{port}/chat/?domain={domain}")
            self.assertEqual(code, 404, body[:200])
            self.assertEqual(headers["content-type"], "text/plain; charset=utf-8")
            self.assertNotIn(b"<", body)


class InstallCommand(TestCase):
    """``xmppcluster install-webchat`` as an operator runs it."""

    def run_command(self, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        if path is not None:
            env["PATH"] = path
        command = os.path.join(os.path.dirname(sys.executable), "xmppcluster")
        return subprocess.run([command, "--config", self.mktemp(), "install-webchat", *args], capture_output=True,
                              text=True, env=env, timeout=120)

    def test_without_npm_says_so(self) -> None:
        target = self.mktemp()
        done = self.run_command("--webchat-dir", target, path=os.path.dirname(sys.executable))
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertIn("npm not found", done.stderr)
        self.assertIsNone(assets_dir(target))

    def test_installed_files_are_left_alone(self) -> None:
        if assets_dir(WEBCHAT_DIR) is None:
            skip_test(f"Converse.js is not installed in {WEBCHAT_DIR}: run `xmppcluster install-webchat`")
        done = self.run_command("--webchat-dir", WEBCHAT_DIR)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(f"Converse.js {CONVERSE_VERSION} already installed", done.stdout)


class BrowserTest(TestCase):
    """The page in headless Chromium (skipped, with the reason printed, when something it needs is missing)."""

    timeout = 180
    passed = False

    def setUp(self) -> None:
        reasons = []
        if find_node() is None:
            reasons.append("node is not installed")
        if find_chromium() is None:
            reasons.append("chromium is not installed (/usr/bin/chromium)")
        if missing_packages("playwright-core"):
            reasons.append("playwright-core missing in tests/js/node_modules (run tests/js/install)")
        if assets_dir(WEBCHAT_DIR) is None:
            reasons.append(f"Converse.js is not installed in {WEBCHAT_DIR} (run `xmppcluster install-webchat`)")
        if reasons:
            skip_test("; ".join(reasons))

    def _shot(self, name: str) -> str:
        directory = os.path.abspath(os.path.join("webchat-screenshots", self.id().rsplit(".", 1)[-1]))
        os.makedirs(directory, exist_ok=True)
        return os.path.join(directory, name)


class ClusterChat(BrowserTest):
    """Converse.js from t2 chats with slixmpp on t1, and moves to t1 when t2 is drained or dies."""

    async def _cluster(self):
        cluster = make_cluster(self, 2, f"--webchat-dir={WEBCHAT_DIR}\n")
        # One HTTP listener layout on both nodes: TLS BOSH and WebSocket on the same ports, each node on its address.
        self.https, self.wss = free_port(), free_port()
        for name, node in cluster.nodes.items():
            ifc = ADDRESS[name]
            with open(node.config, "a") as out:
                out.write(f"bosh/connections/ports[i]={node.ports['bosh']},{self.https}\n"
                          f"bosh/connections/{self.https}/socket=ssl\nbosh/connections/{self.https}/ifc[s]={ifc}\n"
                          f"ws2s/connections/ports[i]={node.ports['ws2s']},{self.wss}\n"
                          f"ws2s/connections/{self.wss}/socket=ssl\nws2s/connections/{self.wss}/ifc[s]={ifc}\n")
        await migrate(cluster)
        await cluster.add_users(f"alice@{DOMAIN}", f"bob@{DOMAIN}", password=PASSWORD)
        storage = await open_storage(cluster.db_uri)
        try:
            rosters = RosterStore(storage.db)
            for user, contact, name in (("alice", f"bob@{DOMAIN}", "Bob"), ("bob", f"alice@{DOMAIN}", "Alice")):
                item = RosterItem(contact, name, "both")
                await rosters.modify(user, DOMAIN, contact, lambda before, pending, item=item: (item, None))
        finally:
            await storage.close()
        cluster.start(T1)
        cluster.start(T2)
        return cluster

    async def _linked(self, browser: LineProcess, url: str) -> dict:
        """Poll t2's config.json (a status query) until it lists both nodes."""
        for _ in range(200):
            answer = await browser.call("eval", expr=f"fetch({json.dumps(url)}).then(r => r.json())")
            if len(answer["value"]["nodes"]) == 2:
                return answer["value"]
            await task.deferLater(reactor, 0.1, lambda: None)
        raise AssertionError(f"t2 never listed t1: {answer['value']}")

    async def test_page_from_t2_chats_and_moves_to_t1_when_t2_drains(self) -> None:
        await self.chat_then_lose_t2("drain")

    async def test_page_from_t2_moves_to_t1_when_t2_dies(self) -> None:
        await self.chat_then_lose_t2("kill")

    async def test_login_when_the_chosen_node_died_goes_to_another(self) -> None:
        """The page read its node list while t2 was up; t2 dies before the user logs in: t1 takes the login."""
        cluster = await self._cluster()
        browser = self.browser(cluster)
        await browser.wait_event(lambda e: e.get("event") == "ready")
        page = f"https://{T1}:{self.https}/chat/"
        await browser.call("goto", url=page + "config.json")
        await self._linked(browser, page + "config.json")
        await browser.call("goto", url=page + f"?node={T2}", waitFor="#converse-login-jid")  # t2 first
        cluster.kill(T2)
        await browser.call("login", jid=f"alice@{DOMAIN}", password=PASSWORD)
        state = (await browser.call("waitConnected", node=T1))["state"]
        self.assertEqual((state["connectedTo"], state["moves"]), (T1, 1))
        await browser.call("screenshot", path=self._shot("1-logged-in-on-t1.png"))
        self.passed = True

    def browser(self, cluster) -> LineProcess:
        spki = spki_sha256(os.path.join(cluster.directory, "certs", "default.pem"))
        rules = ", ".join(f"MAP {name} {address}" for name, address in ADDRESS.items())
        browser = LineProcess("chromium", find_node(), ["node", "webchat.mjs", json.dumps({
            "spki": [spki], "hostRules": rules, "chromium": find_chromium()})], path=JS)
        self.addCleanup(browser.stop)
        self.addCleanup(lambda: self.passed or print("\nbrowser events:", *browser.events[-40:], sep="\n",
                                                     file=sys.stderr))
        return browser

    async def chat_then_lose_t2(self, how: str) -> None:
        cluster = await self._cluster()
        browser = self.browser(cluster)
        peer = LineProcess("bob", sys.executable, [sys.executable, "-m", "tests.clients.slix_peer", json.dumps({
            "jid": f"bob@{DOMAIN}/tcp", "password": PASSWORD, "host": "127.0.0.1",
            "port": cluster.ports[T1]["c2s"], "ca": cluster.ca_file})], path=ROOT)
        self.addCleanup(peer.stop)
        await browser.wait_event(lambda e: e.get("event") == "ready")
        await peer.wait_event(lambda e: e.get("event") == "online")

        page = f"https://{T2}:{self.https}/chat/"
        answer = await browser.call("goto", url=page + f"?node={T2}")
        self.assertEqual(answer["status"], 200)
        csp = answer["headers"]["content-security-policy"]
        self.assertIn("script-src 'self';", csp)
        self.assertIn(f"wss://{T1}:{self.wss}", csp)  # the other node may be connected to
        config = await self._linked(browser, page + "config.json")
        self.assertEqual([n["name"] for n in config["nodes"]], [T2, T1])
        self.assertEqual(config["nodes"][1]["websocket"], [f"wss://{T1}:{self.wss}/xmpp-websocket"])
        # Again, now that t1 is listed; ?node= pins the first node (else the page picks one at random).
        await browser.call("goto", url=page + f"?node={T2}", waitFor="#converse-login-jid")
        await browser.call("screenshot", path=self._shot("1-login.png"))

        await browser.call("login", jid=f"alice@{DOMAIN}", password=PASSWORD)
        state = (await browser.call("waitConnected", node=T2))["state"]
        self.assertEqual(state["connectedTo"], T2)
        # Presence both ways: bob (t1) sees alice come online; alice's roster shows bob available.
        await peer.wait_event(lambda e: e.get("event") == "presence" and e["from"].startswith(f"alice@{DOMAIN}/")
                              and e["type"] == "available")
        roster = await browser.call("rosterStatus", name="Bob")
        self.assertIn("online", roster["html"])

        await browser.call("openChat", name="Bob")
        peer.send({"send": {"to": f"alice@{DOMAIN}", "body": "hello from t1"}})
        await browser.call("waitText", text="hello from t1")
        await browser.call("send", text="hello from the page on t2")
        message = await peer.wait_event(lambda e: e.get("event") == "message")
        self.assertEqual(message["body"], "hello from the page on t2")
        self.assertTrue(message["from"].startswith(f"alice@{DOMAIN}/"), message)
        await browser.call("screenshot", path=self._shot("2-chat-on-t2.png"))

        if how == "drain":
            code = await threads.deferToThread(cluster.terminate, T2)
            # twistd stops its reactor, then ends by the signal it got (Twisted re-raises it): not a kill.
            self.assertEqual(code, -signal.SIGTERM, cluster.log(T2)[-3000:])
            self.assertIn("draining 1 client streams to t1.example.com", cluster.log(T2))
        else:
            cluster.kill(T2)
        state = (await browser.call("waitConnected", node=T1, timeout=40000, wait=45))["state"]
        self.assertEqual((state["connectedTo"], state["moves"]), (T1, 1))  # one move, no reconnect storm
        await browser.call("screenshot", path=self._shot("3-moved-to-t1.png"))

        body = f"still there after the {how}?"
        peer.send({"send": {"to": f"alice@{DOMAIN}", "body": body}})
        await browser.call("waitText", text=body)
        await browser.call("send", text="yes, now through t1")
        message = await peer.wait_event(lambda e: e.get("event") == "message" and e["body"] == "yes, now through t1")
        self.assertTrue(message["from"].startswith(f"alice@{DOMAIN}/"), message)
        await browser.call("screenshot", path=self._shot("4-chat-on-t1.png"))

        violations = [e for e in browser.events if e.get("event") == "csp"]
        self.assertEqual(violations, [], "the page broke its own Content-Security-Policy")
        self.passed = True


class PlainPageOnOneNode(BrowserTest):
    """``./dev serve``'s case: one node, the page over plain http://localhost, WebSocket over ws://."""

    async def test_login_over_plain_http(self) -> None:
        running = await start_server(self, f"--webchat-dir={WEBCHAT_DIR}\n", components=("c2s", "bosh", "ws2s"))
        await running.add_user("alice@localhost", PASSWORD)
        browser = LineProcess("chromium", find_node(), ["node", "webchat.mjs", json.dumps(
            {"chromium": find_chromium()})], path=JS)
        self.addCleanup(browser.stop)
        await browser.wait_event(lambda e: e.get("event") == "ready")
        answer = await browser.call("goto", url=f"http://localhost:{running.ports['bosh']['plain']}/",
                                    waitFor="#converse-login-jid")  # / redirects to /chat/
        self.assertEqual(answer["status"], 200)
        await browser.call("login", jid="alice", password=PASSWORD)  # the domain is filled in: localhost
        state = (await browser.call("waitConnected", node="node1.test"))["state"]
        ws = running.ports["ws2s"]["plain"]
        self.assertEqual(state["current"]["websocket"], [f"ws://localhost:{ws}/xmpp-websocket"])
        await browser.call("screenshot", path=self._shot("plain-http.png"))
        self.assertEqual([e for e in browser.events if e.get("event") == "csp"], [])

