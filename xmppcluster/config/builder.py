"""From located entries to one typed, validated :class:`Config`, and the entry points :func:`load` and
:func:`parse_text`.

Values are checked against the registry (:mod:`xmppcluster.config.schema`) and across keys (ports, cluster
members, the database URI...).  Invalid input is an error (``FILE:LINE: key 'K' = 'V': expected ...``), never a
silent default; unknown keys are warnings.  The typed sections (:mod:`xmppcluster.config.sections`) are built
once, with the Config.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xmppcluster.config.properties import _SUFFIX, _Entry, read_entries
from xmppcluster.config.schema import (
    _DEFAULT_PORTS,
    _REGISTRY,
    _WS,
    COMMAND_LINE,
    CONNECTION_MANAGERS,
    DEFAULT_DB_URI,
    DEFAULT_PATH,
    GLOBAL,
    KINDS,
    VHOST_OPTIONS,
    ConfigError,
    Setting,
    _lookup,
    _port_default,
    _quote,
    _redact,
    _scalar,
)
from xmppcluster.config.sections import (
    AuthSettings,
    BoshSettings,
    ClusterSettings,
    Limits,
    PeerSettings,
    Quotas,
    S2SSettings,
    VhostSettings,
    WebChatSettings,
    WebSocketSettings,
    parse_host_port,
)

__all__ = ["ClusterNode", "Config", "Listener", "check_config_main", "load", "parse_text"]



@dataclass(frozen=True)
class Listener:
    """One port of a connection manager."""

    component: str
    port: int
    socket: str
    type: str
    ifc: tuple[str, ...] = ("*",)
    tls_required: bool = False

    @property
    def tls(self) -> bool:
        """Direct TLS (no STARTTLS)."""
        return self.socket == "ssl"


@dataclass(frozen=True)
class ClusterNode:
    """A static cluster member from ``--cluster-nodes`` (``name:secret:port:address``)."""

    name: str
    secret: str | None = field(repr=False)
    port: int = 5277
    address: str | None = None


def _default_node_name() -> str:
    return socket.getfqdn()


@dataclass
class Config:
    """The validated configuration.  ``Config()`` is the built-in default."""

    source: str | None = None
    virt_hosts: list[str] = field(default_factory=lambda: ["localhost"])
    vhost_options: dict[str, dict[str, object]] = field(default_factory=dict)
    admins: list[str] = field(default_factory=list)
    node_name: str = field(default_factory=lambda: _default_node_name())
    cluster_mode: bool = False
    cluster_nodes: list[ClusterNode] = field(default_factory=list)
    user_db_uri: str = field(default=DEFAULT_DB_URI, repr=False)
    ssl_certs_location: str = "certs"
    ssl_def_cert_domain: str = "default"
    warnings: list[str] = field(default_factory=list)
    sm_plugins_enabled: list[str] = field(default_factory=list)
    sm_plugins_disabled: list[str] = field(default_factory=list)
    #: XEP-0114 components: domain -> secret (ext/components; never logged)
    components: dict[str, str] = field(default_factory=dict, repr=False)
    _values: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False, compare=False)
    _listeners: dict[str, list[Listener]] | None = field(default=None, repr=False, compare=False)
    # The typed sections, built once from the values (consumers take these, not key lookups).
    limits: Limits = field(init=False, repr=False, compare=False)
    auth: AuthSettings = field(init=False, repr=False, compare=False)
    quotas: Quotas = field(init=False, repr=False, compare=False)
    peers: PeerSettings = field(init=False, repr=False, compare=False)
    bosh: BoshSettings = field(init=False, repr=False, compare=False)
    websocket: WebSocketSettings = field(init=False, repr=False, compare=False)
    webchat: WebChatSettings = field(init=False, repr=False, compare=False)
    cluster: ClusterSettings = field(init=False, repr=False, compare=False)
    s2s: S2SSettings = field(init=False, repr=False, compare=False)
    _vhosts: dict[str, VhostSettings] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._listeners is None:
            self._listeners = _compute_listeners(self._values, self.cluster_mode, _plain_fail, [])
        get = self.get
        self.limits = Limits.from_values(get)
        self.auth = AuthSettings.from_values(get)
        self.quotas = Quotas.from_values(get)
        self.peers = PeerSettings.from_values(get)
        self.bosh = BoshSettings.from_values(get)
        self.websocket = WebSocketSettings.from_values(get)
        self.webchat = WebChatSettings.from_values(get, self.virt_hosts)
        self.cluster = ClusterSettings.from_values(get)
        self.s2s = S2SSettings.from_values(get)
        self._vhosts = {domain: VhostSettings.from_options(lambda name, d=domain: self.vhost_option(d, name))
                        for domain in [*self.virt_hosts, ""]}  # "": a domain not hosted gets the global defaults

    def vhost(self, domain: str) -> VhostSettings:
        """The options of virtual host ``domain`` (the global defaults for a domain not listed)."""
        return self._vhosts.get(domain.lower()) or self._vhosts[""]

    def notices(self) -> list[str]:
        """What an operator is told at start and by check-config: the warnings."""
        return list(self.warnings)

    def listeners(self, component: str) -> list[Listener]:
        """Listeners of one connection manager (``c2s``, ``bosh``, ``ws2s``, ``cl-comp``), by port."""
        return list(self._listeners.get(component, []))

    def all_listeners(self) -> list[Listener]:
        return [lst for cm in CONNECTION_MANAGERS for lst in self.listeners(cm)]

    def get(self, component: str, key: str) -> Any:
        """Typed value of a registered setting (the default when unset).

        ``get('--', 'cluster-mode')``, ``get('bosh', 'max-wait')``, ``get('c2s', 'connections/5222/socket')``.
        """
        if component == GLOBAL and key.startswith(GLOBAL):
            key = key[2:]
        key = _SUFFIX.sub("", key)
        setting = _lookup(component, key)
        if setting is None:
            raise KeyError(f"unregistered setting {component}/{key}")
        if (component, key) in self._values:
            value = self._values[(component, key)]
        else:
            value = _port_default(component, key) if "<port>" in setting.key else setting.default
        return list(value) if isinstance(value, list) else value

    def vhost_modules(self, domain: str) -> tuple[list[str], list[str]]:
        """(enabled, disabled) module names for ``domain`` from ``vhost-man/<domain>/sm-plugins``."""
        enabled: list[str] = []
        disabled: list[str] = []
        for item in self._values.get(("vhost-man", f"{domain.lower()}/sm-plugins"), []):
            (disabled if item.startswith("-") else enabled).append(item.lstrip("+-"))
        return enabled, disabled

    def vhost_option(self, domain: str, name: str) -> Any:
        """Per-vhost option (``anon``, ``register``, ``max-users``, ``tls-required``), else its global default."""
        if name not in VHOST_OPTIONS:
            raise KeyError(f"unknown vhost option {name!r}")
        options = self.vhost_options.get(domain.lower(), {})
        if name in options:
            return options[name]
        return self.get(GLOBAL, VHOST_OPTIONS[name])




class _Builder:
    """Turns entries into a Config, remembering where each value came from for error messages."""

    def __init__(self, source: str | None, filename: str) -> None:
        self.source = source
        self.filename = filename
        self.values: dict[tuple[str, str], Any] = {}
        self.where: dict[tuple[str, str], _Entry] = {}
        self.warnings: list[str] = []

    @staticmethod
    def _loc(entry: _Entry) -> str:
        return f"{entry.filename}:{entry.line}" if entry.line else entry.filename

    def error(self, entry: _Entry, expected: str, setting: Setting | None = None) -> ConfigError:
        return ConfigError(expected, filename=entry.filename, line=entry.line, key=entry.key,
                           value=_redact(setting, entry.value))

    def fail(self, canon: tuple[str, str], expected: str) -> ConfigError:
        """Error located at the entry that set *canon* (or at the file when it is a default)."""
        setting = _lookup(*canon)
        entry = self.where.get(canon)
        if entry is None:
            name = setting.name if setting else "/".join(canon)
            default = self.values.get(canon, setting.default if setting else "")
            text = ",".join(map(str, default)) if isinstance(default, list) else str(default)
            entry = _Entry(self.filename, None, name, text)
        return self.error(entry, expected, setting)

    def add(self, entry: _Entry) -> None:
        key = entry.key
        suffix = None
        base = key
        m = re.fullmatch(r"(.*)\[([^\[\]]*)\]", key, re.DOTALL)
        if m:
            base, suffix = m.groups()
            if suffix not in KINDS:
                raise self.error(entry, "a type suffix among " + " ".join(f"[{k}]" for k in KINDS)
                                 + f", not [{suffix}]")
        if base.startswith(GLOBAL):
            component, name = GLOBAL, base[2:]
            if not name:
                raise self.error(entry, "a global name after '--'")
        elif base == "config-type":
            self.warnings.append(f"{self._loc(entry)}: Tigase key 'config-type' has no meaning here (ignored)")
            return
        else:
            component, _, name = base.partition("/")
            if not component or not name or name.endswith("/") or "//" in name:
                raise self.error(entry, "a key of the form component/key or --global-name")
            m = re.fullmatch(r"connections/([0-9]+)/(.+)", name)
            if m:
                name = f"connections/{int(m.group(1))}/{m.group(2)}"
        setting = _lookup(component, name)
        if setting is None:
            self.warnings.append(f"{self._loc(entry)}: unknown key {_quote(key)} (ignored)")
            return
        if suffix is not None and suffix != setting.kind:
            raise self.error(entry, f"type suffix [{setting.kind}] or no suffix ({setting.name} is a "
                                    f"{KINDS[setting.kind]}), not [{suffix}]", setting)
        try:
            value = setting.parse(entry.value)
        except ValueError as e:
            raise self.error(entry, str(e), setting) from None
        canon = (component, name)
        previous = self.where.get(canon)
        if previous is not None:
            self.warnings.append(f"{self._loc(entry)}: key {_quote(setting.name)} set again "
                                 f"(replaces {self._loc(previous)})")
        self.values[canon] = value
        self.where[canon] = entry

    def get(self, key: str, component: str = GLOBAL) -> Any:
        canon = (component, key)
        return self.values[canon] if canon in self.values else _REGISTRY[canon].default

    def _check_s2s(self) -> None:
        """``s2s/hosts`` entries are ``domain=host[:port][:tls]``; ``s2s/dns-servers`` entries ``host[:port]``."""
        for entry in self.get("hosts", "s2s"):
            domain, equals, address = entry.partition("=")
            try:
                if not equals or not domain.strip():
                    raise ValueError(f"domain=host[:port][:tls] entries (bad element {_quote(entry)})")
                parse_host_port(address, 5269)
            except ValueError as e:
                raise self.fail(("s2s", "hosts"), str(e)) from None
        for entry in self.get("dns-servers", "s2s"):
            try:
                parse_host_port(entry, 53)
            except ValueError as e:
                raise self.fail(("s2s", "dns-servers"), str(e)) from None

    def build(self) -> Config:
        g = (GLOBAL,)
        cluster_mode = self.get("cluster-mode")
        virt_hosts, vhost_options = self._virt_hosts()
        for canon, items in self.values.items():
            if canon[0] == "vhost-man":
                domain = canon[1].rsplit("/", 1)[0].lower()
                if domain not in virt_hosts:
                    raise self.fail(canon, f"a domain listed in --virt-hosts ({', '.join(virt_hosts)})")
                for item in items if canon[1].endswith("/sm-plugins") else ():
                    if not re.fullmatch(r"[+-][A-Za-z0-9][A-Za-z0-9:._#-]*", item):
                        raise self.fail(canon, f"+name or -name entries (bad entry {_quote(item)})")
        admins = []
        for jid in self.get("admins"):
            if not re.fullmatch(r"[^@/\s]+@[^@/\s]+", jid):
                raise self.fail(g + ("admins",), f"bare JIDs like admin@example.com (bad element {_quote(jid)})")
            local, domain = jid.split("@")
            admins.append(f"{local}@{domain.lower()}")
        self._check_s2s()
        components = self._components(virt_hosts)
        explicit_name = self.values.get(g + ("node-name",))
        if explicit_name is not None and not _HOSTNAME.fullmatch(explicit_name):
            raise self.fail(g + ("node-name",), "a host name like t1.example.com")
        node_name = (explicit_name or _default_node_name()).lower()
        if cluster_mode and _is_localhost(node_name):
            if explicit_name is not None:
                raise self.fail(g + ("node-name",), "a real host name in cluster mode: nodes identify each other "
                                                   "by host name, and 'localhost' names every machine")
            raise self.fail(g + ("cluster-mode",), f"--node-name to be set: this host's name {_quote(node_name)} "
                                                  "cannot identify a cluster node (e.g. --node-name=t1.example.com)")
        cluster_nodes = self._cluster_nodes()
        if cluster_mode and cluster_nodes and node_name not in {n.name for n in cluster_nodes}:
            self.warnings.append(f"{self.filename}: this node {_quote(node_name)} is not listed in --cluster-nodes")
        user_db_uri = self._user_db_uri()
        enabled, disabled = self._sm_plugins()
        if self.get("auth-failure-max-delay") < self.get("auth-failure-delay"):
            raise self.fail(g + ("auth-failure-max-delay",),
                            f"a value >= --auth-failure-delay ({self.get('auth-failure-delay')})")
        for item in self.get("trusted-proxies"):
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise self.fail(g + ("trusted-proxies",), f"IP addresses or networks like 10.0.0.0/8 "
                                                          f"(bad element {_quote(item)})") from None
        if self.get("max-body-size", "bosh") < self.get("max-stanza-size"):
            raise self.fail(("bosh", "max-body-size"), f"a value >= --max-stanza-size ({self.get('max-stanza-size')})")
        listeners = _compute_listeners(self.values, cluster_mode, self.fail, self.warnings)
        if cluster_mode and cluster_nodes:
            me = next((n for n in cluster_nodes if n.name == node_name), None)
            ports = [lst.port for lst in listeners.get("cl-comp", [])]
            if me is not None and me.port not in ports:
                self.warnings.append(f"{self.filename}: --cluster-nodes gives this node port {me.port}, "
                                     f"but cl-comp listens on {', '.join(map(str, ports)) or 'no port'}")
        return Config(
            source=self.source,
            virt_hosts=virt_hosts,
            vhost_options=vhost_options,
            admins=admins,
            node_name=node_name,
            cluster_mode=cluster_mode,
            cluster_nodes=cluster_nodes,
            user_db_uri=user_db_uri,
            ssl_certs_location=self.get("ssl-certs-location"),
            ssl_def_cert_domain=self.get("ssl-def-cert-domain"),
            warnings=self.warnings,
            sm_plugins_enabled=enabled,
            sm_plugins_disabled=disabled,
            components=components,
            _values=dict(self.values),
            _listeners=listeners,
        )

    def _virt_hosts(self) -> tuple[list[str], dict[str, dict[str, object]]]:
        canon = (GLOBAL, "virt-hosts")
        hosts: list[str] = []
        options: dict[str, dict[str, object]] = {}
        for item in self.get("virt-hosts"):
            domain, *flags = [part.strip() for part in item.split(":")]
            domain = domain.lower()
            if not _DOMAIN.fullmatch(domain):
                raise self.fail(canon, f"domain names, optionally with :options (bad domain {_quote(domain)})")
            opts: dict[str, object] = {}
            for flag in flags:
                name, has_value, text = flag.partition("=")
                negated = not has_value and name.startswith("-")
                name = name[1:] if negated else name
                if name not in VHOST_OPTIONS:
                    raise self.fail(canon, "vhost options among " + ", ".join(VHOST_OPTIONS)
                                    + f" (bad option {_quote(flag)} for {domain})")
                setting = _REGISTRY[(GLOBAL, VHOST_OPTIONS[name])]
                if has_value:
                    try:
                        opts[name] = setting.parse(text)
                    except ValueError as e:
                        raise self.fail(canon, f"{name}={setting.describe()} (bad option {_quote(flag)} for "
                                               f"{domain})") from e
                elif setting.kind == "B":
                    opts[name] = not negated
                else:
                    raise self.fail(canon, f"{name}=<{KINDS[setting.kind]}> (bad option {_quote(flag)} for {domain})")
            if domain in options:
                self.warnings.append(f"{self._loc(self.where[canon])}: virtual host {_quote(domain)} listed twice")
                options[domain].update(opts)
                continue
            hosts.append(domain)
            options[domain] = opts
        if not hosts:
            raise self.fail(canon, "at least one domain")
        return hosts, options

    def _cluster_nodes(self) -> list[ClusterNode]:
        canon = (GLOBAL, "cluster-nodes")
        nodes: list[ClusterNode] = []
        literal = False  # a secret written out (not @file)
        for item in self.get("cluster-nodes"):
            fields = item.split(":", 3)
            name = fields[0].strip().lower()
            shown = _quote(_redact(_REGISTRY[canon], item))
            if not _HOSTNAME.fullmatch(name):
                raise self.fail(canon, f"name[:secret[:port[:address]]] entries with a host name (bad entry {shown})")
            secret = fields[1] if len(fields) > 1 and fields[1] else None
            if secret is not None and secret.startswith("@"):
                secret = self._secret_file(canon, secret[1:])
            elif secret is not None:
                literal = True
            port = 5277
            if len(fields) > 2 and fields[2].strip():
                try:
                    port = _scalar("I", fields[2])
                except ValueError:
                    port = 0
                if not 1 <= port <= 65535:
                    raise self.fail(canon, f"a port from 1 to 65535 in name:secret:port (bad entry {shown})")
            address = fields[3].strip() if len(fields) > 3 and fields[3].strip() else None
            if address is not None and not (_is_ip(address) or _HOSTNAME.fullmatch(address)):
                raise self.fail(canon, f"an IP address or host name in name:secret:port:address (bad entry {shown})")
            if any(n.name == name for n in nodes):
                raise self.fail(canon, f"each node once ({_quote(name)} is listed twice)")
            nodes.append(ClusterNode(name, secret, port, address))
        entry = self.where.get(canon)
        if literal and entry is not None and entry.filename == COMMAND_LINE:
            self.warnings.append("--cluster-nodes on the command line shows the node secrets to every local user "
                                 "(ps, /proc/<pid>/cmdline): set it in the configuration file, or give each "
                                 "secret as name:@/path/to/secret-file")
        return nodes

    def _components(self, virt_hosts: list[str]) -> dict[str, str]:
        """``ext/components`` entries ``domain:secret`` (``domain:@/path``): domain -> secret."""
        canon = ("ext", "components")
        components: dict[str, str] = {}
        for item in self.get("components", "ext"):
            domain, _, secret = item.partition(":")
            domain = domain.strip().lower()
            shown = _quote(_redact(_REGISTRY[canon], item))
            if not _HOSTNAME.fullmatch(domain) or not secret.strip():
                raise self.fail(canon, f"domain:secret entries (bad entry {shown})")
            if domain in virt_hosts:
                raise self.fail(canon, f"a component domain that is not in --virt-hosts ({_quote(domain)} is)")
            if domain in components:
                raise self.fail(canon, f"each component domain once ({_quote(domain)} is listed twice)")
            secret = secret.strip()
            components[domain] = self._secret_file(canon, secret[1:]) if secret.startswith("@") else secret
        return components

    def _secret_file(self, canon: tuple[str, str], path: str) -> str:
        """A secret kept in a file (``name:@/path:port``): its first line, surrounding whitespace dropped."""
        try:
            with open(path, "rb") as f:
                data = f.read(4096)
                mode = os.fstat(f.fileno()).st_mode
        except OSError as e:
            raise self.fail(canon, f"a readable secret file (cannot read {_quote(path)}: {e.strerror})") from None
        lines = data.decode("utf-8", "replace").strip().splitlines()
        secret = lines[0].strip() if lines else ""
        if not secret:
            raise self.fail(canon, f"a secret in {_quote(path)} (the file is empty)")
        if mode & stat.S_IROTH:
            self.warnings.append(f"{path}: holds a cluster secret but is readable by every user (chmod o-r)")
        return secret

    def _user_db_uri(self) -> str:
        canon = (GLOBAL, "user-db-uri")
        uri = self.get("user-db-uri").strip()
        if uri.lower().startswith("jdbc:"):
            uri = uri[5:]
        scheme = uri.split(":", 1)[0].lower()
        if not (scheme == "sqlite" and re.match(r"sqlite:///.", uri, re.IGNORECASE)
                or scheme in ("postgresql", "postgres") and uri[len(scheme):].startswith("://")):
            raise self.fail(canon, "sqlite:///PATH or postgresql://[user[:password]@]host[:port]/dbname")
        declared = self.values.get((GLOBAL, "user-db"))
        if declared is not None and (declared == "sqlite") != (scheme == "sqlite"):
            self.warnings.append(f"{self._loc(self.where[(GLOBAL, 'user-db')])}: --user-db={declared} does not "
                                 f"match the {scheme} --user-db-uri (the URI decides)")
        return uri

    def _sm_plugins(self) -> tuple[list[str], list[str]]:
        canon = (GLOBAL, "sm-plugins")
        enabled: list[str] = []
        disabled: list[str] = []
        for item in self.get("sm-plugins"):
            name, has_extra, _ = item.partition("=")
            target = disabled if name.startswith("-") else enabled
            name = name.lstrip("+-")
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9:._#-]*", name):
                raise self.fail(canon, f"+name or -name entries (bad entry {_quote(item)})")
            if name in (disabled if target is enabled else enabled):
                raise self.fail(canon, f"each module either enabled or disabled ({_quote(name)} is both)")
            if has_extra:
                self.warnings.append(f"{self._loc(self.where[canon])}: Tigase thread setting in {_quote(item)} "
                                     "ignored")
            if name not in target:
                target.append(name)
        return enabled, disabled


_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_DOMAIN = re.compile(r"[^\s@/:,\\\"'<>&.]+(?:\.[^\s@/:,\\\"'<>&.]+)*")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_localhost(name: str) -> bool:
    name = name.rstrip(".")
    return name.split(".")[0] in ("localhost", "localhost6") or name.startswith("127.") or name == "::1"


def _plain_fail(canon: tuple[str, str], expected: str) -> ConfigError:
    setting = _lookup(*canon)
    return ConfigError(expected, key=setting.name if setting else "/".join(canon))


def _compute_listeners(
    values: dict[tuple[str, str], Any],
    cluster_mode: bool,
    fail: Callable[[tuple[str, str], str], ConfigError],
    warnings: list[str],
) -> dict[str, list[Listener]]:
    """Listeners per connection manager from the typed values; cross-checks ports."""
    result: dict[str, list[Listener]] = {}
    taken: list[tuple[Listener, tuple[str, str]]] = []
    for cm in CONNECTION_MANAGERS:
        ports_key = (cm, "connections/ports")
        if ports_key not in values and (GLOBAL, f"{cm}-ports") in values:
            ports_key = (GLOBAL, f"{cm}-ports")
        ports = values.get(ports_key, _DEFAULT_PORTS[cm])
        if len(set(ports)) != len(ports):
            raise fail(ports_key, "distinct ports")
        for component, key in values:
            m = re.fullmatch(r"connections/([0-9]+)/(.+)", key)
            if component == cm and m and int(m.group(1)) not in ports:
                listed = ", ".join(map(str, ports)) or "none"
                raise fail((component, key), f"a port listed in {cm}/connections/ports[i] ({listed}); "
                                             f"port {m.group(1)} is not")
        if cm == "cl-comp" and not cluster_mode:
            if values.get(ports_key):
                warnings.append("cl-comp ports are opened only with --cluster-mode=true")
            result[cm] = []
            continue
        listeners = []
        for port in sorted(ports):
            def get(name: str, cm: str = cm, port: int = port) -> Any:
                key = f"connections/{port}/{name}"
                return values[(cm, key)] if (cm, key) in values else _port_default(cm, key)

            sock = get("socket")
            tls_required = bool(_lookup(cm, f"connections/{port}/tls/required")) and get("tls/required")
            if sock == "ssl":
                if (cm, f"connections/{port}/tls/required") in values:
                    warnings.append(f"{cm}/connections/{port}/tls/required has no effect on an ssl socket")
                tls_required = False
            ifc = tuple(get("ifc")) or ("*",)
            for address in ifc:
                if address != "*" and not _is_ip(address) and not _HOSTNAME.fullmatch(address):
                    raise fail((cm, f"connections/{port}/ifc"), f"'*' or IP addresses (bad element {_quote(address)})")
            listener = Listener(cm, port, sock, get("type"), ifc, tls_required)
            if listener.type == "accept":
                for other, _ in taken:
                    if other.port == port and ("*" in ifc or "*" in other.ifc or set(ifc) & set(other.ifc)):
                        raise fail(ports_key, f"ports not already used by {other.component} ({port})")
                taken.append((listener, ports_key))
            listeners.append(listener)
        result[cm] = listeners
    return result


# --------------------------------------------------------------------------------------------------
# Entry points


def parse_text(text: str, filename: str = "<string>", overrides: dict[str, str] | None = None) -> Config:
    """Parse init.properties *text*; *overrides* (``{'--node-name': 't1.example.com'}``) apply after it."""
    return _parse(text, filename, filename, overrides)


def _parse(text: str, filename: str, source: str | None, overrides: dict[str, str] | None) -> Config:
    builder = _Builder(source, filename)
    for entry in read_entries(text, filename):
        builder.add(entry)
    for key, value in (overrides or {}).items():
        builder.add(_Entry(COMMAND_LINE, None, key, str(value).strip(_WS)))
    return builder.build()


def load(path: str | None, overrides: dict[str, str] | None = None) -> Config:
    """Load *path*; ``None`` or a missing default file (``etc/init.properties``) gives the built-in defaults."""
    if path is None:
        return _parse("", "<defaults>", None, overrides)
    try:
        with open(path, "rb") as f:
            data = f.read()
            mode = os.fstat(f.fileno()).st_mode
    except FileNotFoundError:
        if os.path.normpath(path) != os.path.normpath(DEFAULT_PATH):
            raise ConfigError("file not found", filename=path) from None
        config = _parse("", "<defaults>", None, overrides)
        config.warnings.insert(0, f"{path}: not found, using the built-in defaults")
        return config
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", filename=path) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 (byte offset {e.start})", filename=path) from None
    config = _parse(text, path, path, overrides)
    nodes = _REGISTRY[(GLOBAL, "cluster-nodes")]
    has_secret = any(_redact(nodes, item) != item for item in config.get(GLOBAL, "cluster-nodes")) or _redact(
        _REGISTRY[(GLOBAL, "user-db-uri")], config.user_db_uri) != config.user_db_uri or any(
        _redact(_REGISTRY[("ext", "components")], item) != item for item in config.get("ext", "components"))
    if has_secret and mode & stat.S_IROTH:
        config.warnings.append(f"{path}: contains secrets but is readable by every user (chmod o-r)")
    return config


def check_config_main(path: str) -> int:
    """``xmppcluster check-config [FILE]``: warnings to stderr, one line per listener to stdout; 2 on error."""
    try:
        config = load(path)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    for warning in config.notices():
        print(warning, file=sys.stderr)
    for lst in config.all_listeners():
        print(f"{lst.component} {lst.port} {lst.socket} {lst.type} {','.join(lst.ifc)}")
    return 0
