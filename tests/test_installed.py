"""CI tests the artifact, not the checkout: the wheel (built from the sdist) installed in a fresh virtualenv.

Every server and command here is the virtualenv's ``twistd`` / ``xmppcluster``, run from a directory
outside the checkout without ``PYTHONPATH`` (tests/support/installed.py).  The clients are the test
process's own (slixmpp, tests/clients/).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import zipfile

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.clients.bosh import BoshClient
from tests.clients.raw import RawClient
from tests.clients.ws import WSClient
from tests.support.certs import make_cert
from tests.support.databases import new_pg_schema, postgres_skip_reason
from tests.support.installed import ROOT, Installation, InstalledTwistd, installation
from tests.support.process import wait_for_port
from tests.support.server import free_port, test_ca
from tests.support.waiting import wait_until

PASSWORD = "installed pass"
PING = "<iq xmlns='jabber:client' type='get' id='{id}' to='{to}'><ping xmlns='urn:xmpp:ping'/></iq>"
BODY = "{jabber:client}body"


def python_files(root: str, top: str) -> set[str]:
    """Every ``.py`` file under ``root/top`` as a /-separated path relative to ``root`` (no __pycache__)."""
    found = set()
    for directory, subdirs, names in os.walk(os.path.join(root, top)):
        subdirs[:] = [d for d in subdirs if d != "__pycache__"]
        for name in names:
            if name.endswith(".py"):
                found.add(os.path.relpath(os.path.join(directory, name), root).replace(os.sep, "/"))
    return found


def write_certs(directory: str, names: list[str]) -> tuple[str, str]:
    """certs/default.pem for ``names`` from the test CA, and the CA's root as ca.pem: (certs dir, CA file)."""
    certs = os.path.join(directory, "certs")
    make_cert(test_ca(), names, os.path.join(certs, "default.pem"))
    ca_file = os.path.join(directory, "ca.pem")
    with open(ca_file, "wb") as out:
        out.write(test_ca().root_pem())
    return certs, ca_file


def write_config(directory: str, name: str, lines: list[str]) -> str:
    path = os.path.join(directory, f"{name}.properties")
    with open(path, "w") as out:
        out.write("\n".join(lines) + "\n")
    return path


def listeners(component: str, *ports: int, ssl_port: int | None = None) -> list[str]:
    """Config lines: ``component`` listening on loopback on ``ports`` (``ssl_port`` direct TLS); [] disables."""
    lines = [f"{component}/connections/ports[i]={','.join(str(p) for p in ports)}"]
    if ssl_port is not None:
        lines.append(f"{component}/connections/{ssl_port}/socket=ssl")
    lines += [f"{component}/connections/{p}/ifc[s]=127.0.0.1" for p in ports]
    return lines


class InstalledPackageTests(TestCase):
    """One build and virtualenv for the whole module (and the whole run); each test starts its own nodes."""

    # The first test of each trial worker waits for the build and the install.
    timeout = 300

    def ok(self, result: subprocess.CompletedProcess, *args: str) -> str:
        """The output of a successful command; a failure names the command and shows its output."""
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(args) or result.args} exited {result.returncode}:\n"
                                 f"{result.stdout}{result.stderr}")
        return result.stdout + result.stderr

    def cli(self, inst: Installation, cwd: str, *args: str, stdin: str | None = None) -> str:
        return self.ok(inst.run("xmppcluster", *args, cwd=cwd, stdin=stdin), "xmppcluster", *args)

    def start(self, inst: Installation, directory: str, config: str, *args: str, name: str) -> InstalledTwistd:
        node = InstalledTwistd(inst, directory, config, *args, name=name)
        self.addCleanup(node.stop)
        return node

    # -- the artifact ----------------------------------------------------------------------------------

    async def test_wheel_has_every_package(self) -> None:
        """Every directory of Python modules under xmppcluster/ (every module) is in the wheel, with the
        twistd plugin and the SQL migrations; nothing else is (no tests/, no twisted/__init__.py)."""
        inst = await deferToThread(installation, venv=False)
        with zipfile.ZipFile(inst.wheel) as wheel:
            names = set(wheel.namelist())
        source = python_files(ROOT, "xmppcluster")
        packaged = {n for n in names if n.startswith("xmppcluster/") and n.endswith(".py")}
        directories = {os.path.dirname(n) for n in source}
        self.assertEqual(sorted(directories - {os.path.dirname(n) for n in packaged}), [],
                         "directories of Python modules missing from the wheel (setup.cfg [options] packages)")
        self.assertEqual(sorted(source - packaged), [], "modules missing from the wheel")
        migrations = os.path.join(ROOT, "xmppcluster", "storage", "migrations")
        sql = {f"xmppcluster/storage/migrations/{n}" for n in os.listdir(migrations) if n.endswith(".sql")}
        self.assertTrue(sql)
        self.assertEqual(sorted(sql - names), [], "SQL migrations missing from the wheel (package_data)")
        # Twisted owns twisted/ and twisted/plugins/: the wheel may add the plugin module and nothing else there.
        self.assertEqual(sorted(n for n in names if n.startswith("twisted/")),
                         ["twisted/plugins/xmppcluster_plugin.py"])
        top = {n.split("/", 1)[0] for n in names}
        self.assertEqual(sorted(t for t in top if not t.endswith(".dist-info")), ["twisted", "xmppcluster"])

    async def test_installed_code_comes_from_the_virtualenv(self) -> None:
        """Every module imports in the virtualenv and from there; twistd lists the plugin."""
        inst = await deferToThread(installation)
        cwd = inst.workdir("imports-")
        code = ("import importlib, json, pkgutil, sys, xmppcluster\n"
                "for m in pkgutil.walk_packages(xmppcluster.__path__, 'xmppcluster.'):\n"
                "    importlib.import_module(m.name)\n"
                "import twisted.plugins.xmppcluster_plugin\n"
                "print(json.dumps({n: m.__file__ for n, m in sys.modules.items()"
                " if n.split('.')[0] == 'xmppcluster' or n == 'twisted.plugins.xmppcluster_plugin'}))\n")
        result = await deferToThread(inst.run, "python", "-c", code, cwd=cwd)
        files = json.loads(self.ok(result, "python -c <import every module>").strip().splitlines()[-1])
        venv = os.path.realpath(inst.venv) + os.sep
        outside = {n: f for n, f in files.items() if not os.path.realpath(f).startswith(venv)}
        self.assertEqual(outside, {}, f"modules loaded from outside {venv}")
        expected = {n[:-3].replace("/", ".").removesuffix(".__init__") for n in python_files(ROOT, "xmppcluster")}
        self.assertEqual(sorted(expected - set(files)), [], "modules that did not import")
        self.assertIn("twisted.plugins.xmppcluster_plugin", files)
        listed = await deferToThread(inst.run, "twistd", "--help", cwd=cwd)
        self.assertIn("xmppcluster", self.ok(listed, "twistd --help"))

    # -- one node, every listener ----------------------------------------------------------------------

    async def test_every_listener_logs_a_client_in(self) -> None:
        """STARTTLS, direct TLS, BOSH over http and https, WebSocket ws and wss: a login and a round trip on each."""
        inst = await deferToThread(installation)
        directory = inst.workdir("listeners-")
        certs, ca_file = write_certs(directory, ["localhost"])
        ports = {k: free_port() for k in ("c2s", "c2s_tls", "bosh", "bosh_tls", "ws", "wss")}
        config = write_config(directory, "node", [
            "--virt-hosts=localhost", "--node-name=node1.test",
            f"--user-db-uri=sqlite:///{os.path.join(directory, 'db.sqlite')}", f"--ssl-certs-location={certs}",
            # Logins on the plain BOSH and ws ports too, whatever the loopback policy is.
            "--scram-iterations=4096", "--vhost-tls-required=false",
            *listeners("c2s", ports["c2s"], ports["c2s_tls"], ssl_port=ports["c2s_tls"]),
            *listeners("bosh", ports["bosh"], ports["bosh_tls"], ssl_port=ports["bosh_tls"]),
            *listeners("ws2s", ports["ws"], ports["wss"], ssl_port=ports["wss"]),
        ])
        for user in ("alice", "bob"):
            out = self.cli(inst, directory, "--config", config, "adduser", f"{user}@localhost", "--password-stdin",
                           stdin=PASSWORD + "\n")
            self.assertIn(f"created {user}@localhost", out)
        node = self.start(inst, directory, config, name="node")
        for port in ports.values():
            await deferToThread(wait_for_port, port, process=node)
        # twistd's first line names its interpreter: the virtualenv's.
        interpreter = re.search(r"twistd [^ ]+ \((\S+) [0-9.]+\) starting up", node.output())
        self.assertIsNotNone(interpreter, node.output())
        self.assertEqual(os.path.dirname(interpreter.group(1)), os.path.join(inst.venv, "bin"))
        # The last line of a start, after every listener (the ports above may answer before it is written).
        await deferToThread(wait_until, lambda: "node node1.test serving localhost" in node.output(), 30)

        context = ssl.create_default_context(cafile=ca_file)
        results = await defer.gatherResults([
            deferToThread(self.slixmpp, ports["c2s"], ca_file, direct_tls=False),
            deferToThread(self.slixmpp, ports["c2s_tls"], ca_file, direct_tls=True),
            deferToThread(bosh_login_and_ping, f"http://127.0.0.1:{ports['bosh']}/http-bind", None, "bosh"),
            deferToThread(bosh_login_and_ping, f"https://localhost:{ports['bosh_tls']}/http-bind", context,
                          "bosh-tls"),
            deferToThread(ws_login_and_ping, ports["ws"], None, "ws"),
            deferToThread(ws_login_and_ping, ports["wss"], context, "wss"),
        ], consumeErrors=True)
        starttls, direct, *web = results
        for kind, clients in (("starttls", starttls), ("direct-tls", direct)):
            for client, peer in zip(clients, ("bob", "alice"), strict=True):
                self.assertEqual(client["error"], None, (kind, clients, node.output()[-3000:]))
                self.assertEqual([m["body"] for m in client["received"]], [f"{kind} from {peer}"], (kind, clients))
        self.assertEqual(web, [("alice@localhost/bosh", "result"), ("alice@localhost/bosh-tls", "result"),
                               ("alice@localhost/ws", "result"), ("alice@localhost/wss", "result")])
        self.assertNotIn("Traceback", node.output())

    def slixmpp(self, port: int, ca_file: str, *, direct_tls: bool) -> list[dict]:
        """alice and bob log in with slixmpp and send each other one message; their results."""
        kind = "direct-tls" if direct_tls else "starttls"
        clients = [{"jid": f"{me}@localhost/{kind}", "password": PASSWORD, "expect": 1,
                    "send": [{"to": f"{peer}@localhost/{kind}", "body": f"{kind} from {me}"}]}
                   for me, peer in (("alice", "bob"), ("bob", "alice"))]
        spec = {"host": "127.0.0.1", "port": port, "direct_tls": direct_tls, "ca": ca_file, "timeout": 30,
                "clients": clients}
        result = subprocess.run([sys.executable, "-m", "tests.clients.slix", json.dumps(spec)], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise AssertionError(f"slixmpp ({kind}) failed ({result.returncode}): {result.stderr[-2000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    # -- two nodes -------------------------------------------------------------------------------------

    async def test_two_node_cluster_routes_across_nodes(self) -> None:
        """Two installed nodes on one database link up; a message crosses them both ways; cluster-status
        lists both."""
        inst = await deferToThread(installation)
        directory = inst.workdir("cluster-")
        domain, names = "example.com", ["t1.example.com", "t2.example.com"]
        certs, ca_file = write_certs(directory, [domain, *names])
        if postgres_skip_reason() is None and await deferToThread(inst.can_import, "psycopg"):
            db_uri = new_pg_schema(self)[1]
        else:
            db_uri = f"sqlite:///{os.path.join(directory, 'shared.sqlite')}"
        ports = {name: {"c2s": free_port(), "cluster": free_port()} for name in names}
        members = ",".join(f"{n}:secret-{n}:{ports[n]['cluster']}:127.0.0.1" for n in names)
        configs = {name: write_config(directory, name, [
            f"--virt-hosts={domain}", f"--node-name={name}", "--cluster-mode=true", f"--cluster-nodes={members}",
            f"--user-db-uri={db_uri}", f"--ssl-certs-location={certs}", "--scram-iterations=4096",
            *listeners("c2s", ports[name]["c2s"]), "bosh/connections/ports[i]=", "ws2s/connections/ports[i]=",
            *listeners("cl-comp", ports[name]["cluster"]),
            "cl-comp/heartbeat-interval[F]=0.2", "cl-comp/failure-timeout[F]=1.5",
        ]) for name in names}
        # The first command migrates the shared database before the nodes start.
        for user in ("alice", "bob"):
            self.cli(inst, directory, "--config", configs[names[0]], "adduser", f"{user}@{domain}",
                     "--password-stdin", stdin=PASSWORD + "\n")
        nodes = {name: self.start(inst, directory, configs[name], name=name)
                 for name in names}

        def linked(name: str, other: str) -> None:
            wait_for_port(ports[name]["c2s"], process=nodes[name])
            try:
                wait_until(lambda: f"link to {other} up" in nodes[name].output(), timeout=30)
            except AssertionError:
                raise AssertionError(f"{name} did not link to {other}:\n{nodes[name].output()[-3000:]}") from None

        await defer.gatherResults([deferToThread(linked, *names), deferToThread(linked, *reversed(names))],
                                  consumeErrors=True)

        def status() -> list[str]:
            return self.cli(inst, directory, "--config", configs[names[0]], "cluster-status").splitlines()

        def each_sees_one_session_of_the_other(lines: list[str]) -> bool:
            return all(any(line.startswith(f"{a} ") and " up " in line and f"{b}:1" in line for line in lines)
                       for a, b in (names, names[::-1]))

        def scenario() -> tuple:
            alice = RawClient(ports[names[0]]["c2s"], domain=domain, ca_file=ca_file)
            self.addCleanup(alice.close)
            bob = RawClient(ports[names[1]]["c2s"], domain=domain, ca_file=ca_file)
            self.addCleanup(bob.close)
            alice.login("alice", PASSWORD, "a")
            bob.login("bob", PASSWORD, "b")
            # The heartbeat rows say when each node's directory holds the other's session.
            lines = wait_until(lambda: (lambda s: s if each_sees_one_session_of_the_other(s) else None)(status()),
                               timeout=30, interval=0.2)
            alice.send(f"<message to='bob@{domain}/b' type='chat'><body>to t2</body></message>")
            got = bob.until("{jabber:client}message")
            bob.send(f"<message to='alice@{domain}/a' type='chat'><body>to t1</body></message>")
            back = alice.until("{jabber:client}message")
            return lines, got, back

        lines, got, back = await deferToThread(scenario)
        self.assertEqual((got.get("from"), got.find(BODY).text), (f"alice@{domain}/a", "to t2"))
        self.assertEqual((back.get("from"), back.find(BODY).text), (f"bob@{domain}/b", "to t1"))
        self.assertEqual(len([line for line in lines if line.split(" ", 1)[0] in names]), 2, lines)
        for name in names:
            self.assertNotIn("Traceback", nodes[name].output())

    # -- the admin commands ----------------------------------------------------------------------------

    async def test_admin_commands(self) -> None:
        """check-config, import (a real Prosody export), adduser, users, export; the export imported into a
        second database exports the same bytes."""
        inst = await deferToThread(installation)
        directory = inst.workdir("cli-")
        prosody = os.path.join(directory, "prosody-export")
        shutil.copytree(os.path.join(ROOT, "tests", "fixtures", "prosody-0.12"), prosody)
        port = free_port()
        first, second = (write_config(directory, db, [
            "--virt-hosts=example.com", f"--user-db-uri=sqlite:///{os.path.join(directory, db)}.sqlite",
            *listeners("c2s", port), "bosh/connections/ports[i]=", "ws2s/connections/ports[i]=",
        ]) for db in ("first", "second"))
        run = self.cli

        def commands() -> dict[str, str]:
            out = {"check": run(inst, directory, "check-config", first)}
            bad = write_config(directory, "bad", ["--virt-hosts=example.com", "c2s/connections/ports[i]=5222",
                                                  "c2s/connections/5222/socket=sll"])
            out["bad"] = inst.run("xmppcluster", "check-config", bad, cwd=directory)
            out["import"] = run(inst, directory, "-c", first, "import", prosody)
            out["adduser"] = run(inst, directory, "-c", first, "adduser", "zoe@example.com", "--password-stdin",
                                 stdin=PASSWORD + "\n")
            out["users"] = run(inst, directory, "-c", first, "users")
            run(inst, directory, "-c", first, "export", "first.xml")
            out["reimport"] = run(inst, directory, "-c", second, "import", "first.xml")
            run(inst, directory, "-c", second, "export", "second.xml")
            return out

        out = await deferToThread(commands)
        self.assertIn(f"c2s {port} plain accept 127.0.0.1", out["check"])
        self.assertEqual(out["bad"].returncode, 2, out["bad"])
        self.assertIn(f"{os.path.join(directory, 'bad.properties')}:3:", out["bad"].stderr)
        self.assertIn("imported 5 accounts", out["import"])
        self.assertIn("created zoe@example.com", out["adduser"])
        self.assertEqual(out["users"].split(), [f"{u}@example.com" for u in
                                                ("alice", "bob", "carol", "dave", "erin", "zoe")])
        self.assertIn("imported 6 accounts", out["reimport"])
        with open(os.path.join(directory, "first.xml"), "rb") as a, open(os.path.join(directory, "second.xml"),
                                                                           "rb") as b:
            exported, again = a.read(), b.read()
        self.assertIn(b"jabber:iq:roster", exported)  # the Prosody export's rosters came through
        self.assertEqual(exported, again)


def bosh_login_and_ping(url: str, context: ssl.SSLContext | None, resource: str) -> tuple[str, str]:
    """Log alice in over BOSH at ``url`` and ping the server: (bound JID, the ping answer's type)."""
    client = BoshClient("localhost", context)
    jid = client.login([url], "alice", PASSWORD, resource)
    answer = list(client.post(url, payload=PING.format(id="ping", to="localhost")))
    for _ in range(10):
        for element in answer:
            if element.get("id") == "ping":
                client.post(url, "type='terminate'")
                return jid, element.get("type")
        answer = list(client.post(url))
    raise AssertionError(f"no answer to the ping over {url}")


def ws_login_and_ping(port: int, context: ssl.SSLContext | None, resource: str) -> tuple[str, str]:
    """Log alice in over WebSocket (wss with ``context``) and ping the server: (bound JID, answer type)."""
    client = WSClient(port, tls=context, server_name="localhost")
    try:
        jid = client.login("localhost", "alice", PASSWORD, resource)
        client.send(PING.format(id="ping", to="localhost"))
        return jid, client.until("{jabber:client}iq").get("type")
    finally:
        client.close()
