"""Real Prosody and ejabberd servers beside ours, for the federation (s2s) interop tests.

Each peer runs in its own process group with its own configuration, ports on 127.0.0.1, data directory,
log files, and (ejabberd) Erlang node name and cookie; the system services and epmd are never used. It is
stopped in the test's cleanup (SIGTERM, then SIGKILL for its whole process group; a peer also gets SIGTERM
if the test process dies)::

    peer = await start_prosody(self, "prosody.test", ca=test_ca(), routes={"a.test": ("127.0.0.1", port)})
    await peer.add_user("bob", "secret")
    results = await run_clients(peer, [{"jid": "bob@prosody.test", "password": "secret"}])

Certificates: the peer presents a certificate for its domain (DNS SAN only) signed by the test CA
(``tests/support/certs.py``; leaf + intermediate sent) and trusts that CA's root when it verifies remote
servers (Prosody: ``ssl.cafile``, besides the system store; ejabberd: ``ca_file`` only), so SASL EXTERNAL
(XEP-0178) works both ways with certificates from the same CA. Give a peer ``ca=make_ca()`` to make it
distrust (and be distrusted by) everything signed by ``test_ca()``.

Routes: ``routes`` maps a remote domain to the (host, port) of its STARTTLS s2s listener, ``tls_routes`` to
its direct TLS listener (XEP-0368); no DNS is asked for those domains. Other domains resolve as each server
normally does (and fail: there is no DNS for test domains).

- Prosody 0.12 reads name servers only from /etc/resolv.conf, so the test-only module
  ``prosody_plugins/mod_test_s2s_routes.lua`` (loaded through ``plugin_paths``) replaces
  ``net.resolvers.service``'s ``new`` for the routed domains with a ``net.resolvers.manual`` resolver
  holding the route. mod_s2s and mod_dialback's connections back to the authoritative server both use it.
- ejabberd 23.01 (xmpp 1.6.1) looks SRV records up with ``inet_res:getbyname``, which answers from the
  resolver cache first, and the target's address with ``net:getaddrinfo`` (libc; ERL_INETRC hosts entries
  do not apply). So each route is an SRV record put into the cache at boot (``-eval inet_db:add_rr(...)``)
  whose target is the route's IP literal; ERL_INETRC gives the Erlang resolver no name server, so SRV
  lookups of other domains fail at once. (``outgoing_s2s_port`` alone could not give two domains two ports.)

Authentication policy: ``secure_auth`` (Prosody ``s2s_secure_auth``; ejabberd: mod_s2s_dialback's ``access``
denies dialback to all but ``insecure_domains``, which makes ejabberd verify the certificate of every other
server it connects to), ``dialback`` (load mod_dialback / mod_s2s_dialback; without it only EXTERNAL can
authenticate), ``insecure_domains`` (Prosody ``s2s_insecure_domains``). Both require TLS on s2s
(``s2s_require_encryption`` / ``s2s_use_starttls: required``). ejabberd's access rule acts on its outgoing
connections only; an incoming dialback request is still refused for an untrusted server because the
connection ejabberd opens back to verify the key checks that server's certificate.

Logs: Prosody ``<dir>/prosody.log`` (debug level by default: every stanza sent and received) and
``prosody.out``; ejabberd ``<dir>/logs/ejabberd.log`` and ``error.log`` (``log_level``, default info: one
line per s2s connection with the authentication method, e.g. "Accepted inbound s2s EXTERNAL authentication
a.test -> b.test") and ``ejabberd.out``. ``peer.logs()`` returns them for assertion messages. ``<dir>`` is
``<trial temp dir>/<kind>-<domain>-XXXX`` (``peer.directory``).
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from tests.support.certs import TestCA, make_cert
from tests.support.server import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGINS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prosody_plugins")
PROSODY = "/usr/bin/prosody"
PROSODYCTL = "/usr/bin/prosodyctl"
EJABBERDCTL = "/usr/sbin/ejabberdctl"
ERL = "/usr/bin/erl"
#: How long a peer may take to listen (ejabberd creates its Mnesia database on first start).
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0

Route = tuple[str, int]


@dataclass
class PeerServer:
    """A running Prosody or ejabberd; ``stop()`` is registered as the test's cleanup."""

    kind: str
    domain: str
    c2s_port: int
    s2s_port: int
    #: The test CA's root, PEM (what clients and our server trust for this peer's certificate).
    ca_file: str
    directory: str
    #: The peer's main log (Prosody: debug level; ejabberd: ``loglevel``), then its stdout/stderr.
    log_path: str
    config_path: str
    #: The direct TLS s2s listener (XEP-0368), or None.
    s2s_tls_port: int | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    output_path: str = ""

    def jid(self, user: str) -> str:
        return f"{user}@{self.domain}"

    async def add_user(self, user: str, password: str) -> None:
        raise NotImplementedError

    def logs(self) -> str:
        """The peer's log and console output (for assertion messages)."""
        text = []
        for path in (self.log_path, self.output_path):
            if path and os.path.exists(path):
                with open(path, errors="replace") as log:
                    text.append(f"--- {path}\n{log.read()}")
        return "\n".join(text)

    async def wait_for_log(self, pattern: str, timeout: float = 30.0) -> re.Match:
        """Wait until the peer's log has a line matching ``pattern`` (a regex); the match.

        Polls the log file without blocking the reactor; AssertionError with the log after ``timeout``.
        """
        regex = re.compile(pattern)
        for _ in range(int(timeout / 0.05)):
            if os.path.exists(self.log_path):
                with open(self.log_path, errors="replace") as log:
                    match = regex.search(log.read())
                if match:
                    return match
            await deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"no line matching {pattern!r} in the {self.kind} log after {timeout} s:\n"
                             f"{self.logs()[-6000:]}")

    async def wait_for_offline(self, user: str, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until ``count`` messages for ``user`` are in the peer's offline storage (XEP-0160)."""
        raise NotImplementedError

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def stop(self) -> int | None:
        """SIGTERM to the peer, SIGKILL to its whole process group after ``STOP_TIMEOUT``; its exit status."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            for _ in range(int(STOP_TIMEOUT / 0.05)):
                if process.poll() is not None:
                    break
                await deferLater(reactor, 0.05, lambda: None)
        _kill_group(process.pid)
        if process.poll() is None:
            process.wait()
        return process.returncode


def _kill_group(pgid: int) -> None:
    """SIGKILL whatever is left in the process group the peer leads (Erlang port programs, ...)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the test process dies (Linux PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _spawn(argv: list[str], *, cwd: str, env: dict[str, str], output: str) -> subprocess.Popen:
    with open(output, "wb") as out:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)


async def _run(argv: list[str], *, cwd: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run a command without blocking the reactor; (exit status, stdout, stderr)."""
    out, err, code = await getProcessOutputAndValue(argv[0], argv[1:], env=env if env is not None else
                                                    dict(os.environ), path=cwd)
    return code, out.decode(errors="replace"), err.decode(errors="replace")


async def _wait_listening(peer: PeerServer, port: int, timeout: float = START_TIMEOUT) -> None:
    """Wait, without blocking the reactor, until ``port`` accepts; fail with the logs if the peer exits."""
    for _ in range(int(timeout / 0.05)):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            pass
        if not peer.running():
            code = peer.process.returncode if peer.process else None
            raise RuntimeError(f"{peer.kind} exited ({code}) before listening on {port}:\n{peer.logs()[-6000:]}")
        await deferLater(reactor, 0.05, lambda: None)
    raise TimeoutError(f"{peer.kind} does not listen on {port} after {timeout} s:\n{peer.logs()[-6000:]}")


def _directory(kind: str, domain: str) -> str:
    """A fresh directory for one peer in the trial temp directory (cwd), readable by nobody else."""
    return tempfile.mkdtemp(prefix=f"{kind}-{domain}-", dir=os.getcwd())


@dataclass
class _Certs:
    key: str
    cert: str
    combined: str
    ca: str


def _write_certs(directory: str, ca: TestCA, domain: str) -> _Certs:
    """The peer's key, certificate + chain (separate and combined) and the CA root, under ``certs/``."""
    certs = os.path.join(directory, "certs")
    os.makedirs(certs, exist_ok=True)
    combined = os.path.join(certs, f"{domain}.pem")
    leaf, pem = make_cert(ca, [domain], combined)
    key = serialization.load_pem_private_key(pem, password=None)
    paths = _Certs(os.path.join(certs, f"{domain}.key"), os.path.join(certs, f"{domain}.crt"), combined,
                   os.path.join(certs, "ca.pem"))
    with open(paths.key, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    with open(paths.cert, "wb") as out:
        out.write(leaf.public_bytes(serialization.Encoding.PEM))
        out.write(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in ca.chain))
    with open(paths.ca, "wb") as out:
        out.write(ca.root_pem())
    return paths


# -- Prosody ----------------------------------------------------------------------------------------------


def prosody_missing() -> str | None:
    """Why Prosody cannot run here, or None."""
    missing = [path for path in (PROSODY, PROSODYCTL) if not os.access(path, os.X_OK)]
    if missing:
        return f"Prosody is not installed ({', '.join(missing)} missing; tests/install-prosody installs it)"
    if not os.path.exists(os.path.join(PLUGINS, "mod_test_s2s_routes.lua")):
        return f"the test module {PLUGINS}/mod_test_s2s_routes.lua is missing"
    return None


def _lua(value: object) -> str:
    """A Python value as a Lua literal (str, bool, int, list/tuple, dict)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, dict):
        return "{ " + " ".join(f"[{_lua(k)}] = {_lua(v)};" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple | set | frozenset):
        return "{ " + " ".join(f"{_lua(v)};" for v in value) + " }"
    raise TypeError(f"no Lua literal for {value!r}")


def _route_table(routes: dict[str, Route], tls_routes: dict[str, Route]) -> dict[str, dict]:
    table: dict[str, dict] = {}
    for direct_tls, source in ((False, routes), (True, tls_routes)):
        for domain, (host, port) in source.items():
            if domain in table:
                raise ValueError(f"{domain} is in both routes and tls_routes")
            table[domain] = {"host": host, "port": int(port), "direct_tls": direct_tls}
    return table


class ProsodyPeer(PeerServer):
    log_level: str = "debug"

    async def wait_for_offline(self, user: str, count: int = 1, timeout: float = 30.0) -> None:
        """Counts mod_offline's "Saved to offline storage" debug lines (so only with ``log_level="debug"``)."""
        if self.log_level != "debug":
            raise ValueError("wait_for_offline needs the Prosody peer's log_level='debug'")
        saved = re.compile(rf"Saved to offline storage: <message[^>]*\bto=['\"]{re.escape(self.jid(user))}['\"/]")
        for _ in range(int(timeout / 0.05)):
            if os.path.exists(self.log_path):
                with open(self.log_path, errors="replace") as log:
                    if len(saved.findall(log.read())) >= count:
                        return
            await deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"{user}@{self.domain} has not {count} offline message(s) after {timeout} s:\n"
                             f"{self.logs()[-6000:]}")

    async def add_user(self, user: str, password: str) -> None:
        """``prosodyctl register`` with this instance's configuration (internal storage: usable at once)."""
        code, out, err = await _run([PROSODYCTL, "--config", self.config_path, "register", user, self.domain,
                                     password], cwd=self.directory)
        if code != 0:
            raise RuntimeError(f"prosodyctl register {user}@{self.domain} failed ({code}): {out}{err}")


async def start_prosody(test: TestCase, domain: str, *, ca: TestCA, routes: dict[str, Route] | None = None,
                        tls_routes: dict[str, Route] | None = None, secure_auth: bool = False,
                        dialback: bool = True, insecure_domains: Iterable[str] = (), bidi: bool = False,
                        direct_tls: bool = False, s2s_port: int | None = None, log_level: str = "debug",
                        extra: str = "") -> PeerServer:
    """Start Debian's Prosody 0.12 for ``domain``; SkipTest when it is not installed.

    ``secure_auth``: ``s2s_secure_auth`` (remote servers must present a certificate valid for their domain,
    except ``insecure_domains`` = ``s2s_insecure_domains``); ``dialback``: load mod_dialback (XEP-0220),
    otherwise only SASL EXTERNAL authenticates s2s streams; ``bidi``: mod_s2s_bidi (XEP-0288);
    ``direct_tls``: also a direct TLS s2s listener (``s2s_tls_port``); ``s2s_port``: a port chosen by the
    caller (from ``free_port()``, e.g. to route another peer to it first). ``extra`` is Lua appended to the
    global section.
    """
    reason = prosody_missing()
    if reason:
        raise SkipTest(reason)
    directory = _directory("prosody", domain)
    certs = _write_certs(directory, ca, domain)
    data = os.path.join(directory, "data")
    os.mkdir(data, 0o750)
    c2s, s2s = free_port(), s2s_port or free_port()
    s2s_tls = free_port() if direct_tls else None
    modules = ["roster", "saslauth", "tls", "disco", "ping", "presence", "message", "iq", "time", "version",
               "test_s2s_routes"]
    disabled: list[str] = []
    if dialback:
        modules.append("dialback")
    else:
        disabled.append("dialback")
    if bidi:
        modules.append("s2s_bidi")
    log_path = os.path.join(directory, "prosody.log")
    lines = [
        "-- written by tests/support/peers.py",
        "run_as_root = true" if os.geteuid() == 0 else "",
        f"pidfile = {_lua(os.path.join(directory, 'prosody.pid'))}",
        f"data_path = {_lua(data)}",
        f"plugin_paths = {_lua([PLUGINS])}",
        f"log = {{ {{ levels = {{ min = {_lua(log_level)} }}, to = \"file\", filename = {_lua(log_path)} }} }}",
        f"certificates = {_lua(os.path.dirname(certs.key))}",
        'interfaces = { "127.0.0.1" }',
        'local_interfaces = { "127.0.0.1" }',
        f"c2s_ports = {{ {c2s} }}",
        "c2s_direct_tls_ports = { }",
        f"s2s_ports = {{ {s2s} }}",
        f"s2s_direct_tls_ports = {{ {s2s_tls or ''} }}",
        "http_ports = { }",
        "https_ports = { }",
        f"modules_enabled = {_lua(modules)}",
        f"modules_disabled = {_lua(disabled)}",
        "authentication = \"internal_hashed\"",
        "storage = \"internal\"",
        "allow_registration = false",
        "c2s_require_encryption = true",
        "s2s_require_encryption = true",
        f"s2s_secure_auth = {_lua(secure_auth)}",
        f"s2s_insecure_domains = {_lua(sorted(insecure_domains))}",
        "s2s_timeout = 30",
        "use_ipv6 = false",
        f"ssl = {{ certificate = {_lua(certs.cert)}; key = {_lua(certs.key)}; cafile = {_lua(certs.ca)}; }}",
        f"test_s2s_routes = {_lua(_route_table(routes or {}, tls_routes or {}))}",
        extra,
        "",
        f"VirtualHost {_lua(domain)}",
        "",
    ]
    config_path = os.path.join(directory, "prosody.cfg.lua")
    with open(config_path, "w") as out:
        out.write("\n".join(lines))
    peer = ProsodyPeer("prosody", domain, c2s, s2s, certs.ca, directory, log_path, config_path, s2s_tls,
                       output_path=os.path.join(directory, "prosody.out"))
    peer.log_level = log_level
    peer.process = _spawn([PROSODY, "-F", "--config", config_path], cwd=directory, env=dict(os.environ),
                          output=peer.output_path)
    test.addCleanup(peer.stop)
    await _wait_listening(peer, c2s)
    await _wait_listening(peer, s2s)
    return peer


# -- ejabberd ---------------------------------------------------------------------------------------------


def _ejabberd_libs() -> str | None:
    """ERL_LIBS as Debian's ejabberdctl sets it (the directory holding ejabberd-<version>/ebin)."""
    try:
        with open(EJABBERDCTL) as script:
            match = re.search(r"^ERL_LIBS=['\"]?([^'\"\n]+)", script.read(), re.M)
    except OSError:
        return None
    candidates = [match.group(1)] if match else []
    candidates += ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib/ejabberd", "/usr/lib"]
    for libs in candidates:
        if glob.glob(os.path.join(libs, "ejabberd-*", "ebin", "ejabberd.app")):
            return libs
    return None


def ejabberd_missing() -> str | None:
    """Why ejabberd cannot run here, or None."""
    if not os.access(EJABBERDCTL, os.X_OK):
        return f"ejabberd is not installed ({EJABBERDCTL} missing; tests/install-ejabberd installs it)"
    if not os.access(ERL, os.X_OK):
        return f"Erlang is not installed ({ERL} missing)"
    if _ejabberd_libs() is None:
        return "ejabberd's Erlang application (ejabberd-*/ebin/ejabberd.app) was not found"
    return None


def _yaml(value: object) -> str:
    """A value as YAML flow syntax (JSON is YAML; strings quoted)."""
    return json.dumps(value)


def _erl_string(text: str) -> str:
    return json.dumps(text)  # an Erlang string literal for the ASCII domains and paths used here


@dataclass
class EjabberdPeer(PeerServer):
    #: The Erlang node (``-name``), its cookie and its distribution port (epmd is never used).
    node: str = ""
    cookie: str = field(default="", repr=False)
    dist_port: int = 0
    env: dict[str, str] = field(default_factory=dict, repr=False)

    def ctl_argv(self, *args: str) -> list[str]:
        """An ``ejabberd_ctl`` call as Debian's ejabberdctl makes it (hidden node, no epmd, our cookie)."""
        return [ERL, "-name", f"ctl-{secrets.token_hex(4)}@127.0.0.1", "-setcookie", self.cookie, "-hidden",
                "-noinput", "-start_epmd", "false", "-erl_epmd_port", str(self.dist_port), "-dist_listen", "false",
                "-s", "ejabberd_ctl", "-extra", self.node, *args]

    async def ctl(self, *args: str) -> tuple[int, str]:
        """Run an ejabberdctl command against this node; (exit status, stdout + stderr)."""
        code, out, err = await _run(self.ctl_argv(*args), cwd=self.directory, env=self.env)
        return code, out + err

    async def wait_for_offline(self, user: str, count: int = 1, timeout: float = 30.0) -> None:
        """Polls ``ejabberdctl get_offline_count`` (mod_admin_extra)."""
        out = ""
        for _ in range(int(timeout / 0.5)):
            code, out = await self.ctl("get_offline_count", user, self.domain)
            if code == 0 and out.strip().isdigit() and int(out.strip()) >= count:
                return
            await deferLater(reactor, 0.5, lambda: None)
        raise AssertionError(f"{user}@{self.domain} has not {count} offline message(s) after {timeout} s "
                             f"({out.strip()}):\n{self.logs()[-6000:]}")

    async def add_user(self, user: str, password: str) -> None:
        """``ejabberdctl register`` on this node."""
        code, out = await self.ctl("register", user, self.domain, password)
        if code != 0:
            raise RuntimeError(f"ejabberdctl register {user}@{self.domain} failed ({code}): {out}")


async def start_ejabberd(test: TestCase, domain: str, *, ca: TestCA, routes: dict[str, Route] | None = None,
                         tls_routes: dict[str, Route] | None = None, secure_auth: bool = False,
                         dialback: bool = True, insecure_domains: Iterable[str] = (), direct_tls: bool = False,
                         s2s_port: int | None = None, retry_delay: int = 1, log_level: str = "info",
                         modules: dict[str, dict] | None = None, extra: str = "") -> PeerServer:
    """Start Debian's ejabberd for ``domain``; SkipTest when it is not installed.

    ``s2s_use_starttls: required``, ``ca_file`` = the test CA. ``dialback``: load mod_s2s_dialback; with
    ``secure_auth`` its ``access`` allows dialback only towards ``insecure_domains``, so ejabberd verifies the
    certificate of every other server it connects to (including the connection back that verifies an incoming
    dialback key, so untrusted servers are refused both ways). Without ``dialback`` only SASL EXTERNAL
    authenticates. ``retry_delay``: ``s2s_max_retry_delay`` in seconds (how long, at most, ejabberd
    bounces stanzas to a domain after failing to connect to it). ``modules`` adds/overrides modules;
    ``extra`` is YAML appended at the top level (keys not set here).
    """
    reason = ejabberd_missing()
    if reason:
        raise SkipTest(reason)
    directory = _directory("ejabberd", domain)
    certs = _write_certs(directory, ca, domain)
    spool, logs = os.path.join(directory, "spool"), os.path.join(directory, "logs")
    os.mkdir(spool, 0o750)
    os.mkdir(logs, 0o750)
    c2s, s2s, dist = free_port(), s2s_port or free_port(), free_port()
    s2s_tls = free_port() if direct_tls else None
    table = _route_table(routes or {}, tls_routes or {})

    listen = [
        {"port": c2s, "ip": "127.0.0.1", "module": "ejabberd_c2s", "starttls_required": True,
         "max_stanza_size": 262144},
        {"port": s2s, "ip": "127.0.0.1", "module": "ejabberd_s2s_in", "max_stanza_size": 524288},
    ]
    if s2s_tls:
        listen.append({"port": s2s_tls, "ip": "127.0.0.1", "module": "ejabberd_s2s_in", "tls": True,
                       "max_stanza_size": 524288})
    enabled: dict[str, dict] = {"mod_roster": {}, "mod_disco": {}, "mod_ping": {}, "mod_time": {},
                                "mod_version": {"show_os": False}, "mod_offline": {}, "mod_admin_extra": {}}
    access_rules: dict[str, dict] = {"local": {"allow": "local"}, "c2s": {"allow": "all"}, "s2s": {"allow": "all"}}
    acl: dict[str, dict] = {"local": {"user_regexp": ""}}
    if dialback:
        if secure_auth:
            insecure = sorted(insecure_domains)
            if insecure:
                acl["insecure_servers"] = {"server": insecure}
                access_rules["dialback"] = {"allow": "insecure_servers"}
            else:
                access_rules["dialback"] = {"deny": "all"}
            enabled["mod_s2s_dialback"] = {"access": "dialback"}
        else:
            enabled["mod_s2s_dialback"] = {}
    enabled.update(modules or {})
    config = {
        "hosts": [domain],
        "loglevel": log_level,
        "log_rotate_count": 0,
        "hide_sensitive_log_data": False,
        "certfiles": [certs.combined],
        "ca_file": certs.ca,
        "s2s_use_starttls": "required",
        "s2s_access": "s2s",
        "s2s_dns_timeout": 2,
        "s2s_dns_retries": 1,
        "outgoing_s2s_families": ["ipv4"],
        "outgoing_s2s_timeout": 10,
        # After a failed outgoing connection ejabberd bounces stanzas to that domain for a random time up to
        # this (default 300 s), so a test that starts our server late or restarts it is not locked out.
        "s2s_max_retry_delay": retry_delay,
        "auth_method": "internal",
        "auth_password_format": "scram",
        "listen": listen,
        "acl": acl,
        "access_rules": access_rules,
        "shaper_rules": {"max_user_sessions": 10},
        "api_permissions": {"console commands": {"from": ["ejabberd_ctl"], "who": "all", "what": "*"}},
        "modules": enabled,
    }
    config_path = os.path.join(directory, "ejabberd.yml")
    with open(config_path, "w") as out:
        out.write("# written by tests/support/peers.py\n")
        for key, value in config.items():
            out.write(f"{key}: {_yaml(value)}\n")
        if extra:
            out.write(extra.rstrip("\n") + "\n")

    # Routes: ejabberd (xmpp 1.6.1's xmpp_stream_out) looks SRV records up with inet_res:getbyname, which
    # answers from inet_db's cache first, and the SRV target's address with net:getaddrinfo (libc). So each
    # routed domain's SRV record is put into the cache at boot with the route's IP address as its target
    # (getaddrinfo resolves a literal itself), and the Erlang resolver has no name server (an empty
    # resolv.conf in ERL_INETRC): SRV lookups of other domains fail at once instead of asking the network.
    inetrc = os.path.join(directory, "inetrc")
    with open(inetrc, "w") as out:
        out.write("{lookup, [file]}.\n{resolv_conf, \"\"}.\n")
    evals = []
    for name, route in table.items():
        srv = "_xmpps-server._tcp." if route["direct_tls"] else "_xmpp-server._tcp."
        evals += ["-eval", f"inet_db:add_rr({_erl_string(srv + name)}, in, srv, 31536000, "
                           f"{{0, 0, {route['port']}, {_erl_string(route['host'])}}})"]

    node = f"peer-{secrets.token_hex(4)}@127.0.0.1"
    cookie = secrets.token_hex(16)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ERL_", "EJABBERD_"))}
    env.update({
        "HOME": directory,  # no ~/.erlang.cookie is read or written
        "EJABBERD_CONFIG_PATH": config_path,
        "EJABBERD_LOG_PATH": os.path.join(logs, "ejabberd.log"),
        "ERL_CRASH_DUMP": os.path.join(logs, "erl_crash.dump"),
        "ERL_CRASH_DUMP_BYTES": "0",
        "ERL_INETRC": inetrc,
        "ERL_LIBS": _ejabberd_libs() or "",
        "ERL_MAX_PORTS": "32000",
        "ERL_MAX_ETS_TABLES": "1400",
    })
    peer = EjabberdPeer("ejabberd", domain, c2s, s2s, certs.ca, directory, os.path.join(logs, "ejabberd.log"),
                        config_path, s2s_tls, output_path=os.path.join(directory, "ejabberd.out"))
    peer.node, peer.cookie, peer.dist_port, peer.env = node, cookie, dist, env
    # What `ejabberdctl foreground` runs, as the current user and with distribution on its own port (no epmd).
    argv = [ERL, "-name", node, "-setcookie", cookie, "-noinput", "+K", "true", "+P", "250000",
            "-start_epmd", "false", "-erl_epmd_port", str(dist),
            "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
            "-mnesia", "dir", _erl_string(spool), *evals, "-s", "ejabberd"]
    peer.process = _spawn(argv, cwd=spool, env=env, output=peer.output_path)
    test.addCleanup(peer.stop)
    await _wait_listening(peer, c2s)
    await _wait_listening(peer, s2s)
    # The listeners open before the application reports itself running ("is starting with status: started"):
    # ask until it says it runs (a status query is the barrier), within the start timeout.
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        code, out = await peer.ctl("status")
        if code == 0:
            return peer
        if time.monotonic() > deadline or not peer.running():
            raise RuntimeError(f"ejabberd listens but `ejabberdctl status` fails ({code}): {out}\n"
                               f"{peer.logs()[-6000:]}")
        await deferLater(reactor, 0.2, lambda: None)


# -- clients ----------------------------------------------------------------------------------------------


async def run_clients(peer: PeerServer, clients: list[dict], *, timeout: float = 20) -> list[dict]:
    """Log ``clients`` in to ``peer`` with slixmpp (STARTTLS on its c2s port); their results.

    Same client specs and results as ``tests.clients.slix`` (``send``, ``expect``, ``roster``...).
    """
    spec = {"host": "127.0.0.1", "port": peer.c2s_port, "direct_tls": False, "ca": peer.ca_file,
            "timeout": timeout, "clients": clients}
    code, out, err = await _run([sys.executable, "-m", "tests.clients.slix", json.dumps(spec)], cwd=ROOT)
    if code != 0:
        raise AssertionError(f"slixmpp client failed ({code}): {err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


