"""Start the servers under test (xmppcluster nodes and Prosody), pinned to one core, and provision accounts.

Nothing here imports the test suite. xmppcluster runs as ``twistd -n xmppcluster``; Prosody from the Debian
package (installed with apt-get when absent and allowed) with its own config, data directory and ports.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
DOMAIN = "bench.example"
PASSWORD = "bench-secret"
ITERATIONS = 4096


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768-60999), which outgoing sockets draw from."""
    for _ in range(1000):
        port = random.randrange(20000, 32000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    if cpu is None or shutil.which("taskset") is None:
        return argv
    return ["taskset", "-c", str(cpu), *argv]


@dataclass
class BenchCA:
    """A root certificate authority that signs leaves directly (the s2s scenario's servers all trust it)."""

    key: object
    cert: object
    path: str  # the root, PEM


def make_ca(path: str, name: str = "xmppcluster bench CA") -> BenchCA:
    """A fresh EC P-256 root, valid for 30 days, written to ``path``."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    with open(path, "wb") as out:
        out.write(cert.public_bytes(serialization.Encoding.PEM))
    return BenchCA(key, cert, path)


def make_cert(path: str, names: list[str], ca: BenchCA | None = None) -> tuple[str, str]:
    """A certificate and key (PEM files) for ``names``: self-signed, or issued by ``ca`` (then for both server
    and client authentication, as s2s needs)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(subject if ca is None else ca.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False))
    if ca is not None:
        from cryptography.x509.oid import ExtendedKeyUsageOID

        builder = (builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                         ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    cert = builder.sign(key if ca is None else ca.key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    with open(path + ".crt", "wb") as out:
        out.write(cert_pem)
    with open(path + ".key", "wb") as out:
        out.write(key_pem)
    os.chmod(path + ".key", 0o644)
    with open(path + ".pem", "wb") as out:
        out.write(cert_pem + key_pem)
    return path + ".crt", path + ".key"


@dataclass
class Server:
    """A server under test: its name, ports and process."""

    name: str
    directory: str
    ports: dict[str, int]
    process: subprocess.Popen | None = None
    ws_path: str = "/xmpp-websocket"
    bosh_path: str = "/http-bind"
    log_file: object = None
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None

    def log_tail(self, n: int = 2000) -> str:
        for name in ("twistd.log", "prosody.log", "prosody.err"):
            path = os.path.join(self.directory, name)
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    return f.read()[-n:]
        return ""


# -- xmppcluster ----------------------------------------------------------------------------------------


def xmppcluster_config(directory: str, ports: dict[str, int], db_uri: str, node: str,
                       cluster: str | None = None, domain: str = DOMAIN, extra: list[str] | None = None) -> str:
    lines = [
        f"--virt-hosts={domain}", f"--node-name={node}", f"--user-db-uri={db_uri}",
        f"--ssl-certs-location={os.path.join(directory, 'certs')}", f"--scram-iterations={ITERATIONS}",
        "--vhost-tls-required=false", "--idle-timeout=3600", "--whitespace-keepalive=0",
        "--unauthenticated-timeout=120",
        "--client-rate-limit=0",  # like Prosody with mod_limits off: no read throttling
        f"c2s/connections/ports[i]={ports['c2s']}", f"c2s/connections/{ports['c2s']}/ifc[s]=127.0.0.1",
        f"c2s/connections/{ports['c2s']}/tls/required[B]=false",
        f"bosh/connections/ports[i]={ports['bosh']}", f"bosh/connections/{ports['bosh']}/ifc[s]=127.0.0.1",
        f"ws2s/connections/ports[i]={ports['ws']}", f"ws2s/connections/{ports['ws']}/ifc[s]=127.0.0.1",
        "bosh/max-sessions-per-ip[I]=0", "bosh/max-inactivity[I]=600", "ws2s/idle-timeout[I]=3600",
        "ws2s/ping-interval[I]=0",
    ]
    if cluster:
        lines += ["--cluster-mode=true", f"--cluster-nodes={cluster}",
                  f"cl-comp/connections/ports[i]={ports['cluster']}",
                  f"cl-comp/connections/{ports['cluster']}/ifc[s]=127.0.0.1"]
    lines += extra or []
    path = os.path.join(directory, f"{node}.properties")
    with open(path, "w") as out:
        out.write("\n".join(lines) + "\n")
    return path


def start_xmppcluster(directory: str, config: str, node: str, ports: dict[str, int], cpu: int | None,
                      name: str = "xmppcluster") -> Server:
    server = Server(name, directory, ports)
    server.log_file = open(os.path.join(directory, f"{node}.twistd.log"), "wb")
    server.process = subprocess.Popen(
        pinned(cpu, [TWISTD, "-n", "--pidfile=", "xmppcluster", "--config", config, f"--node-name={node}"]),
        cwd=directory, stdout=server.log_file, stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))))
    wait_for_port(ports["c2s"])
    return server


def xmppcluster_directory(base: str, domain: str = DOMAIN, ca: BenchCA | None = None,
                          name: str = "xmppcluster") -> tuple[str, str]:
    """A server's directory under ``base`` with ``certs/default.pem`` for ``domain`` (self-signed, or from
    ``ca``) and its SQLite URI."""
    directory = os.path.join(base, name)
    os.makedirs(os.path.join(directory, "certs"), exist_ok=True)
    make_cert(os.path.join(directory, "certs", "default"), [domain, f"t1.{domain}", f"t2.{domain}"], ca)
    os.rename(os.path.join(directory, "certs", "default.crt"), os.path.join(directory, "default.crt"))
    os.rename(os.path.join(directory, "certs", "default.key"), os.path.join(directory, "default.key"))
    return directory, "sqlite:///" + os.path.join(directory, "bench.sqlite")


def provision_xmppcluster(db_uri: str, users: list[str], rosters: dict[str, list[str]], domain: str = DOMAIN) -> None:
    """Accounts (and subscription='both' roster items) straight through the storage API, in a child process."""
    import json
    script = (
        "import asyncio, json, sys\n"
        "from twisted.internet import asyncioreactor\n"
        "asyncioreactor.install()\n"
        "from twisted.internet import defer, reactor\n"
        "from xmppcluster.storage import open_storage\n"
        "args = json.load(sys.stdin)\n"
        "async def main():\n"
        "    storage = await open_storage(args['uri'], scram_iterations=args['iterations'])\n"
        "    try:\n"
        "        for user in args['users']:\n"
        "            try:\n"
        "                await storage.accounts.create(user, args['domain'], args['password'])\n"
        "            except Exception as e:\n"
        "                if 'exist' not in type(e).__name__.lower(): raise\n"
        "        if args['rosters']:\n"
        "            from xmppcluster.storage.roster import RosterItem, RosterStore\n"
        "            store = getattr(storage, 'roster', None) or RosterStore(storage.db)\n"
        "            for user, contacts in args['rosters'].items():\n"
        "                for contact in contacts:\n"
        "                    item = RosterItem(contact, subscription='both')\n"
        "                    await store.modify(user, args['domain'], contact,\n"
        "                                       lambda old, p, item=item: (item, None))\n"
        "    finally:\n"
        "        await storage.close()\n"
        "def run():\n"
        "    d = defer.ensureDeferred(main())\n"
        "    d.addErrback(lambda f: (f.printTraceback(), setattr(sys, 'exitcode', 1)))\n"
        "    d.addBoth(lambda _: reactor.stop())\n"
        "sys.exitcode = 0\n"
        "reactor.callWhenRunning(run)\n"
        "reactor.run()\n"
        "sys.exit(sys.exitcode)\n"
    )
    payload = json.dumps({"uri": db_uri, "iterations": ITERATIONS, "users": users, "domain": domain,
                          "password": PASSWORD, "rosters": rosters})
    subprocess.run([sys.executable, "-c", script], input=payload.encode(), check=True,
                   env=dict(os.environ, PYTHONPATH=ROOT))


# -- Prosody --------------------------------------------------------------------------------------------


def prosody_available(install: bool) -> str | None:
    """Path of the prosody binary, installing the Debian package first when allowed; None if unavailable."""
    path = shutil.which("prosody")
    if path is None and install and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "prosody"], check=False, env=env,
                       stdout=subprocess.DEVNULL)
        path = shutil.which("prosody")
    return path


def prosody_version() -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "prosody"], capture_output=True, text=True)
        return out.stdout.strip() or "?"
    except OSError:
        return "?"


def _encode(part: str) -> str:
    """Prosody's datamanager path encoding (util/datamanager.lua: every byte but ASCII letters and digits)."""
    return "".join(c if c.isascii() and c.isalnum() else "".join(f"%{b:02x}" for b in c.encode()) for c in part)


def _lua(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def provision_prosody(directory: str, users: list[str], rosters: dict[str, list[str]], domain: str = DOMAIN) -> None:
    """Write mod_auth_internal_hashed accounts and rosters as Prosody's internal storage files."""
    host = os.path.join(directory, "data", _encode(domain))
    os.makedirs(os.path.join(host, "accounts"), exist_ok=True)
    os.makedirs(os.path.join(host, "roster"), exist_ok=True)
    for user in users:
        salt = str(uuid.uuid4())
        salted = hashlib.pbkdf2_hmac("sha1", PASSWORD.encode(), salt.encode(), ITERATIONS)
        stored = hashlib.sha1(hmac.digest(salted, b"Client Key", "sha1")).hexdigest()
        server_key = hmac.digest(salted, b"Server Key", "sha1").hex()
        with open(os.path.join(host, "accounts", _encode(user) + ".dat"), "w") as out:
            out.write(f"return {{\n\t[\"iteration_count\"] = {ITERATIONS};\n\t[\"salt\"] = {_lua(salt)};\n"
                      f"\t[\"stored_key\"] = {_lua(stored)};\n\t[\"server_key\"] = {_lua(server_key)};\n}};\n")
    for user, contacts in rosters.items():
        items = "".join(f"\t[{_lua(c)}] = {{ [\"subscription\"] = \"both\"; [\"groups\"] = {{}}; }};\n"
                        for c in contacts)
        with open(os.path.join(host, "roster", _encode(user) + ".dat"), "w") as out:
            out.write(f"return {{\n\t[false] = {{ [\"version\"] = 1; }};\n{items}}};\n")


#: The test suite's Prosody module that routes s2s to fixed addresses without DNS (read by Prosody, not imported).
PROSODY_PLUGINS = os.path.join(ROOT, "tests", "support", "prosody_plugins")


def prosody_s2s_missing() -> str | None:
    """Why Prosody cannot federate here without DNS, or None."""
    if not os.path.exists(os.path.join(PROSODY_PLUGINS, "mod_test_s2s_routes.lua")):
        return f"{PROSODY_PLUGINS}/mod_test_s2s_routes.lua is missing (static s2s routes for Prosody)"
    return None


def start_prosody(base: str, cpu: int | None, users: list[str], rosters: dict[str, list[str]], *,
                  domain: str = DOMAIN, name: str = "prosody", ca: BenchCA | None = None,
                  s2s_port: int | None = None, routes: dict[str, int] | None = None) -> Server:
    """Prosody for ``domain``. With ``s2s_port``: federation on that port (loopback), SASL EXTERNAL only
    (``s2s_secure_auth``, no dialback) with a certificate from ``ca``, which it trusts (``ssl.cafile``), and
    ``routes`` (remote domain -> STARTTLS s2s port on 127.0.0.1) through mod_test_s2s_routes."""
    directory = os.path.join(base, name)
    os.makedirs(os.path.join(directory, "data"), exist_ok=True)
    cert, key = make_cert(os.path.join(directory, domain), [domain], ca)
    ports = {"c2s": free_port(), "http": free_port()}
    ports["bosh"] = ports["ws"] = ports["http"]
    enabled = ["roster", "saslauth", "tls", "disco", "ping", "presence", "bosh", "websocket"]
    disabled = ["limits", "offline", "c2s_limits"]
    s2s = "s2s_ports = {}\n"
    ssl = f'ssl = {{ certificate = "{cert}"; key = "{key}"; }}'
    plugins = "{}"
    if s2s_port is None:
        disabled.append("s2s")
    else:
        ports["s2s"] = s2s_port
        enabled.append("test_s2s_routes")
        disabled.append("dialback")
        plugins = f'{{ "{PROSODY_PLUGINS}" }}'
        table = " ".join(f'["{d}"] = {{ host = "127.0.0.1"; port = {port}; direct_tls = false }};'
                         for d, port in (routes or {}).items())
        s2s = (f"s2s_ports = {{ {s2s_port} }}\ns2s_interfaces = {{ \"127.0.0.1\" }}\n"
               "s2s_require_encryption = true\ns2s_secure_auth = true\nuse_ipv6 = false\n"
               f"test_s2s_routes = {{ {table} }}\n")
        ssl = f'ssl = {{ certificate = "{cert}"; key = "{key}"; cafile = "{ca.path}"; }}'
    config = f"""
run_as_root = true
daemonize = false
pidfile = "{directory}/prosody.pid"
data_path = "{directory}/data"
plugin_paths = {plugins}
modules_enabled = {{ {" ".join(f'"{m}";' for m in enabled)} }}
modules_disabled = {{ {" ".join(f'"{m}";' for m in disabled)} }}
network_settings = {{ nagle = false; }}
c2s_ports = {{ {ports['c2s']} }}
c2s_interfaces = {{ "127.0.0.1" }}
{s2s}http_ports = {{ {ports['http']} }}
http_interfaces = {{ "127.0.0.1" }}
https_ports = {{}}
c2s_require_encryption = false
allow_unencrypted_plain_auth = false
consider_bosh_secure = true
consider_websocket_secure = true
cross_domain_websocket = true
cross_domain_bosh = true
bosh_max_inactivity = 600
c2s_timeout = 3600
authentication = "internal_hashed"
storage = "internal"
log = {{ info = "{directory}/prosody.log"; error = "{directory}/prosody.err"; }}  -- its default level, like ours
{ssl}
VirtualHost "{domain}"
"""
    path = os.path.join(directory, "prosody.cfg.lua")
    with open(path, "w") as out:
        out.write(config)
    provision_prosody(directory, users, rosters, domain)
    server = Server(name, directory, ports, ws_path="/xmpp-websocket", bosh_path="/http-bind",
                    extra={"log": os.path.join(directory, "prosody.log")})
    server.log_file = open(os.path.join(directory, "stdout.log"), "wb")
    server.process = subprocess.Popen(pinned(cpu, ["prosody", "--config", path, "-F"]), cwd=directory,
                                      stdout=server.log_file, stderr=subprocess.STDOUT)
    for port in ports.values():
        wait_for_port(port)
    return server


# -- two federating domains (the s2s scenario) -----------------------------------------------------------


#: XEP-0288 between the two xmppcluster servers. Off: one stream per direction, the same topology as between
#: the two Prosody (0.12 does not load mod_s2s_bidi unless told), although bidi is our default. (Bidi on once
#: lost the first stanzas when both servers opened their streams at once: a stream adopted at <success/> was
#: written to before its restart; fixed, and `--smoke s2s` with this on passes.)
S2S_BIDI = False


def start_xmppcluster_s2s(base: str, cpu: int | None, ca: BenchCA, users: dict[str, list[str]]) -> list[Server]:
    """One xmppcluster server per domain of ``users`` (domain -> accounts), each with a STARTTLS s2s listener
    on loopback, the others in its static map (``s2s/hosts``), a certificate from ``ca`` and ``ca`` as the
    only authority it trusts for peers (``s2s/ca-file``): they authenticate with SASL EXTERNAL. Reads on s2s
    streams are not rate-limited (``s2s/rate-limit=0``, like the clients' and Prosody without mod_limits)."""
    s2s_ports = {domain: free_port() for domain in users}
    started: list[Server] = []
    try:
        for domain, accounts in users.items():
            directory, db_uri = xmppcluster_directory(base, domain, ca, name=f"xmppcluster-{domain}")
            provision_xmppcluster(db_uri, accounts, {}, domain)
            ports = {"c2s": free_port(), "bosh": free_port(), "ws": free_port(), "s2s": s2s_ports[domain]}
            hosts = ",".join(f"{d}=127.0.0.1:{port}" for d, port in s2s_ports.items() if d != domain)
            extra = [f"s2s/connections/ports[i]={ports['s2s']}", f"s2s/connections/{ports['s2s']}/ifc[s]=127.0.0.1",
                     f"s2s/hosts[s]={hosts}", f"s2s/ca-file={ca.path}", "s2s/rate-limit[I]=0",
                     f"s2s/bidi[B]={'true' if S2S_BIDI else 'false'}"]
            node = f"t1.{domain}"
            config = xmppcluster_config(directory, ports, db_uri, node, domain=domain, extra=extra)
            server = start_xmppcluster(directory, config, node, ports, cpu, name=f"xmppcluster {domain}")
            server.extra["log"] = os.path.join(directory, f"{node}.twistd.log")
            started.append(server)
            wait_for_port(ports["s2s"])
    except BaseException:
        for server in started:
            server.stop()
        raise
    return started


def start_prosody_s2s(base: str, cpu: int | None, ca: BenchCA, users: dict[str, list[str]]) -> list[Server]:
    """One Prosody per domain of ``users``, federating like :func:`start_xmppcluster_s2s`'s servers."""
    s2s_ports = {domain: free_port() for domain in users}
    started: list[Server] = []
    try:
        for domain, accounts in users.items():
            routes = {d: port for d, port in s2s_ports.items() if d != domain}
            started.append(start_prosody(base, cpu, accounts, {}, domain=domain, name=f"prosody-{domain}", ca=ca,
                                         s2s_port=s2s_ports[domain], routes=routes))
    except BaseException:
        for server in started:
            server.stop()
        raise
    return started
