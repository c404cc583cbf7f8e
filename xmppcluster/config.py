"""``init.properties`` (the Tigase grammar) → one typed, validated :class:`Config`.

The file follows ``java.util.Properties`` rules; keys are ``--global`` settings or
``component/node/key[T]`` component settings with an optional type suffix.  Every setting the server
understands is declared once, in the registry table below: the parser validates against it and
``docs/configuration.rst`` is generated from it (:func:`settings_table`).

Invalid input is an error (``FILE:LINE: key 'K' = 'V': expected ...``), never a silent default;
unknown keys are warnings.  Secrets (cluster passwords, database passwords) never appear in messages.
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

__all__ = [
    "ClusterNode",
    "Config",
    "ConfigError",
    "Listener",
    "Setting",
    "check_config_main",
    "load",
    "parse_text",
    "register",
    "settings",
    "settings_table",
    "split_key",
]

GLOBAL = "--"
DEFAULT_PATH = "etc/init.properties"
DEFAULT_DB_URI = "sqlite:///data/xmppcluster.sqlite"
CONNECTION_MANAGERS = ("c2s", "bosh", "ws2s", "cl-comp")
COMMAND_LINE = "<command line>"

KINDS = {
    "S": "string",
    "s": "string list",
    "B": "boolean",
    "b": "boolean list",
    "I": "integer",
    "i": "integer list",
    "L": "long integer",
    "l": "long integer list",
    "F": "float",
}
_TRUE = ("yes", "true", "on", "1")
_FALSE = ("no", "false", "off", "0")
_WS = " \t\f"


class ConfigError(Exception):
    """A configuration error; ``str()`` is one line naming file, line, key, value and what was expected."""

    def __init__(
        self,
        expected: str,
        *,
        filename: str | None = None,
        line: int | None = None,
        key: str | None = None,
        value: str | None = None,
    ) -> None:
        self.expected = expected
        self.filename = filename
        self.line = line
        self.key = key
        self.value = value
        location = filename or "<config>"
        if line:
            location = f"{location}:{line}"
        if key is None:
            message = f"{location}: {expected}"
        else:
            message = f"{location}: key {_quote(key)} = {_quote(value or '')}: expected {expected}"
        super().__init__(message)


def _quote(text: str, limit: int = 200) -> str:
    """Single-quoted, one line, bounded."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"'{text}'"


# --------------------------------------------------------------------------------------------------
# The settings registry


@dataclass(frozen=True)
class Setting:
    """One registered key.  ``key`` has no suffix; per-port keys use the placeholder ``<port>``."""

    component: str
    key: str
    kind: str
    default: Any
    doc: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    secret: bool = False
    default_doc: str | None = None

    @property
    def name(self) -> str:
        """The key as written in the file (without suffix)."""
        return GLOBAL + self.key if self.component == GLOBAL else f"{self.component}/{self.key}"

    @property
    def is_list(self) -> bool:
        return self.kind in "sbil"

    def describe(self) -> str:
        """What a valid value looks like (used after 'expected')."""
        many = self.is_list
        if self.kind in "Bb":
            what = ("booleans" if many else "a boolean") + " (" + ", ".join(_TRUE + _FALSE) + ")"
        elif self.choices:
            what = ("values among: " if many else "one of: ") + ", ".join(self.choices)
        elif self.kind in "IiLlF":
            what = {(True, False): "a number", (True, True): "numbers", (False, False): "an integer",
                    (False, True): "integers"}[(self.kind == "F", many)]
            if self.minimum is not None and self.maximum is not None:
                what += f" from {_num(self.minimum)} to {_num(self.maximum)}"
            elif self.minimum is not None:
                what += f" >= {_num(self.minimum)}"
            elif self.maximum is not None:
                what += f" <= {_num(self.maximum)}"
        else:
            what = "strings" if many else "a string"
        return f"a comma-separated list of {what}" if many else what

    def parse(self, text: str) -> Any:
        """Typed value of *text*; raises ValueError with the 'expected' phrase."""
        if not self.is_list:
            return self._element(text, text)
        if not text.strip():
            return []
        items = [item.strip() for item in text.split(",")]
        if self.kind == "s":
            items = [item for item in items if item]
        return [self._element(item, text) for item in items]

    def _element(self, item: str, whole: str) -> Any:
        bad = "" if item == whole else f" (bad element {_quote(item)})"
        try:
            value = _scalar(self.kind.upper(), item)
        except ValueError:
            raise ValueError(self.describe() + bad) from None
        if self.choices is not None and value not in self.choices:
            raise ValueError(self.describe() + bad)
        if self.minimum is not None and value < self.minimum or self.maximum is not None and value > self.maximum:
            raise ValueError(self.describe() + bad)
        return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_DECODE = re.compile(r"([+-]?)(?:0[xX]([0-9a-fA-F]+)|#([0-9a-fA-F]+)|0([0-7]+)|([1-9][0-9]*|0))")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[fFdD]?")


def _scalar(kind: str, text: str) -> Any:
    """Parse one element: 'S' as is, 'B' Tigase booleans (strict), 'I'/'L' Java ``decode``, 'F' a finite float."""
    if kind == "S":
        return text
    word = text.strip()
    if kind == "B":
        if word.lower() in _TRUE:
            return True
        if word.lower() in _FALSE:
            return False
        raise ValueError(word)
    if kind in "IL":
        m = _DECODE.fullmatch(word)
        if not m:
            raise ValueError(word)
        sign, hex1, hex2, octal, dec = m.groups()
        n = int(hex1 or hex2, 16) if (hex1 or hex2) else int(octal, 8) if octal else int(dec)
        n = -n if sign == "-" else n
        bits = 31 if kind == "I" else 63
        if not -(2**bits) <= n < 2**bits:
            raise ValueError(word)
        return n
    if kind == "F":
        if not _FLOAT.fullmatch(word):
            raise ValueError(word)
        return float(word.rstrip("fFdD"))
    raise ValueError(kind)


_REGISTRY: dict[tuple[str, str], Setting] = {}


def register(
    component: str,
    key: str,
    kind: str,
    default: Any,
    doc: str,
    *,
    choices: tuple[str, ...] | list[str] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    secret: bool = False,
    default_doc: str | None = None,
) -> None:
    """Declare a setting.  Globals use component ``'--'`` and a key like ``'virt-hosts'``.

    *secret* values are redacted in messages; *default_doc* replaces the rendered default in the docs.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    if (component, key) in _REGISTRY:
        raise ValueError(f"{component}/{key} registered twice")
    _REGISTRY[(component, key)] = Setting(
        component, key, kind, default, doc, tuple(choices) if choices else None, minimum, maximum, secret, default_doc
    )


def settings() -> list[Setting]:
    """All registered settings, in table order."""
    return list(_REGISTRY.values())


# Per-vhost options (``--virt-hosts=example.com:-anon:register:max-users=1000``) → the global holding their default.
VHOST_OPTIONS = {
    "anon": "vhost-anonymous-enabled",
    "register": "vhost-register-enabled",
    "max-users": "vhost-max-users",
    "tls-required": "vhost-tls-required",
}
_DEFAULT_PORTS = {"c2s": [5222, 5223], "bosh": [5280], "ws2s": [5290], "cl-comp": [5277]}
_DEFAULT_SSL_PORTS = {"c2s": (5223,)}
_PORT = {"minimum": 1, "maximum": 65535}

# ---- the table: every setting, in documentation order ----
G = GLOBAL
register(G, "virt-hosts", "s", ["localhost"],
         "Hosted XMPP domains. Each may carry options: ``domain:-anon:register:max-users=1000:-tls-required``.")
register(G, "admins", "s", [], "Bare JIDs of server administrators.")
register(G, "node-name", "S", None, "This node's host name; cluster nodes identify each other by it.",
         default_doc="host's FQDN")
register(G, "cluster-mode", "B", False, "Run as one node of a cluster (opens the cl-comp listener).")
register(G, "cluster-nodes", "s", [], "Static cluster members ``name[:secret[:port[:address]]]``, comma-separated; "
         "a secret ``@/path`` is read from that file.",
         secret=True)
register(G, "user-db-uri", "S", DEFAULT_DB_URI,
         "Database: ``sqlite:///PATH`` (single node) or ``postgresql://user:pass@host/db`` (shared by all nodes); "
         "a Tigase ``jdbc:`` prefix is accepted.", secret=True)
register(G, "user-db", "S", None, "Tigase compatibility, informational: the scheme of --user-db-uri decides.",
         choices=("sqlite", "pgsql"))
register(G, "ssl-certs-location", "S", "certs", "Directory of ``<domain>.pem`` certificate files.")
register(G, "ssl-def-cert-domain", "S", "default", "Certificate used when no domain matches (``<name>.pem``).")
register(G, "vhost-anonymous-enabled", "B", False, "Default of the per-vhost ``anon`` option (SASL ANONYMOUS).")
register(G, "vhost-register-enabled", "B", False, "Default of the per-vhost ``register`` option (XEP-0077).")
register(G, "vhost-max-users", "I", 0, "Default of the per-vhost ``max-users`` option (0 = unlimited).", minimum=0)
register(G, "vhost-tls-required", "B", True, "Default of the per-vhost ``tls-required`` option (no auth without TLS).")
for _cm in CONNECTION_MANAGERS:
    register(G, f"{_cm}-ports", "i", None, f"Shortcut for ``{_cm}/connections/ports[i]`` (that key wins).", **_PORT)
register(G, "max-stanza-size", "I", 262144, "Largest accepted stanza, in bytes.", minimum=10000)
register(G, "elements-number-limit", "I", 1000, "Most XML elements in one stanza.", minimum=1)
register(G, "max-xml-depth", "I", 64, "Deepest element nesting in a stanza.", minimum=4)
register(G, "unauthenticated-timeout", "I", 60, "Seconds a connection may stay unauthenticated.", minimum=1)
register(G, "idle-timeout", "I", 600, "Seconds without traffic before a client connection is closed.", minimum=1)
register(G, "whitespace-keepalive", "I", 90, "Seconds between whitespace keepalives on idle streams (0 = off).",
         minimum=0)
register(G, "client-rate-limit", "I", 262144,
         "Bytes per second a client connection may send (TCP and WebSocket); faster input is read more "
         "slowly, never dropped (0 = no limit).", minimum=0)
register(G, "client-rate-burst", "I", 1048576, "Bytes a client may send at once above the rate limit.",
         minimum=0)
register(G, "client-output-limit", "I", 1048576,
         "Bytes waiting for a client that does not read (beyond the socket's own buffer): its input stops "
         "as soon as output waits; past this the stream ends with ``resource-constraint`` and the stanzas "
         "never sent are routed again (offline storage, errors). Also the byte bound of a BOSH session's queue.",
         minimum=65536)
register(G, "scram-iterations", "I", 10000, "PBKDF2 iterations for newly stored SCRAM credentials.",
         minimum=4096, maximum=10_000_000)
register(G, "auth-failure-delay", "F", 1.0, "Seconds of delay after a failed authentication (doubles per failure).",
         minimum=0)
register(G, "auth-failure-max-delay", "F", 30.0, "Upper bound of the failed-authentication delay, in seconds.",
         minimum=0)
register(G, "max-connections-per-ip", "I", 100,
         "Concurrent client connections from one address (IPv6: one /64) on the c2s, BOSH and WebSocket ports "
         "together; trusted proxies are exempt (0 = unlimited).", minimum=0)
register(G, "trusted-proxies", "s", ["127.0.0.1", "::1"],
         "Reverse proxies (addresses or networks) whose client-address and scheme headers are believed on the "
         "BOSH and WebSocket ports; exempt from the per-address limits.")
register(G, "trusted-proxy-header", "S", "x-forwarded",
         "What trusted proxies send: ``x-forwarded`` (X-Forwarded-For and X-Forwarded-Proto) or "
         "``forwarded`` (RFC 7239).", choices=("x-forwarded", "forwarded"))
register(G, "secure-loopback", "B", True,
         "A client whose address is loopback counts as encrypted (PLAIN offered, ``tls-required`` met).")
register(G, "sm-plugins", "s", [], "Enable (``+name``) or disable (``-name``) session-manager modules.")
register(G, "roster-max-size", "I", 1000, "Most contacts in one roster.", minimum=1)
register(G, "directed-presence-max", "I", 1000,
         "Most JIDs one resource may have sent directed presence to at once (more: ``<policy-violation/>``).",
         minimum=1, maximum=2000)
register(G, "offline-max-messages", "I", 1000, "Most offline messages stored per user (0 = no offline storage).",
         minimum=0)
register(G, "offline-max-bytes", "I", 10485760,
         "Most bytes of offline messages stored per user (0 = no byte limit); a message that does not fit is "
         "refused with ``service-unavailable``.", minimum=0)
register(G, "roster-pending-max-bytes", "I", 1048576,
         "Most bytes of unanswered subscription requests kept per user (0 = no byte limit); a request that does "
         "not fit is kept without its payload (status, nick...).", minimum=0)
register(G, "vcard-max-size", "I", 65536, "Largest vCard stored, in bytes.", minimum=1024)
for _cm in CONNECTION_MANAGERS:
    register(_cm, "connections/ports", "i", _DEFAULT_PORTS[_cm],
             f"Ports of the {_cm} connection manager" + (" (opened only with --cluster-mode)." if _cm == "cl-comp"
                                                          else ". Empty disables it."), **_PORT)
    register(_cm, "connections/<port>/socket", "S", "plain",
             "``plain``, or ``ssl`` for direct TLS" + (" (default ``ssl`` for 5223)." if _cm == "c2s" else "."),
             choices=("plain", "ssl"))
    register(_cm, "connections/<port>/type", "S", "accept", "``accept`` (listen) or ``connect``.",
             choices=("accept", "connect"))
    register(_cm, "connections/<port>/ifc", "s", ["*"], "Interfaces (IP addresses) to listen on; ``*`` = all.")
    if _cm in ("c2s", "cl-comp"):
        register(_cm, "connections/<port>/tls/required", "B", True,
                 "Require STARTTLS before authentication on a plain port.")
register("cl-comp", "heartbeat-interval", "F", 1.0, "Seconds between heartbeats on a cluster link.", minimum=0.1)
register("cl-comp", "failure-timeout", "F", 6.0,
         "Seconds without anything from a node before it is declared dead (its sessions leave the directory).",
         minimum=0.5)
register("cl-comp", "drain-timeout", "F", 5.0, "Seconds a stopping node waits for its clients to move.", minimum=0)
register("cl-comp", "handshake-timeout", "F", 5.0,
         "Seconds a connection to the cluster port has to complete TLS and authenticate (then it is closed).",
         minimum=0.1)
register("vhost-man", "<domain>/sm-plugins", "s", [],
         "Per-vhost module selection (``+name``/``-name``) on top of ``--sm-plugins``, e.g. "
         "``vhost-man/example.org/sm-plugins[s]=-vcard-temp``.")
register("bosh", "send-node-hostname", "B", True,
         "Send this node's name as ``host`` in the session-creation response, so clients reach the same node.")
register("bosh", "max-wait", "I", 30, "Longest ``wait`` granted to a client, in seconds.", minimum=1)
register("bosh", "min-polling", "I", 2, "Shortest polling interval (``polling``), in seconds.", minimum=0)
register("bosh", "max-inactivity", "I", 60, "Seconds without a request before a session ends.", minimum=1)
register("bosh", "concurrent-requests", "I", 2, "Simultaneous requests per session (``requests``).", minimum=1)
register("bosh", "hold-requests", "I", 1, "Requests the server may hold (``hold``).", minimum=1)
register("bosh", "max-pause", "I", 120, "Longest ``pause`` a client may request, in seconds.", minimum=0)
register("bosh", "max-session-waiting-packets", "I", 100, "Stanzas queued for a session with no request.",
         minimum=1)
register("bosh", "max-body-size", "I", 524288, "Largest request body, in bytes (>= --max-stanza-size).",
         minimum=10000)
register("bosh", "max-sessions-per-ip", "I", 100, "Concurrent sessions from one IP address (0 = unlimited).",
         minimum=0)
register("bosh", "cors-allow-origins", "s", ["*"], "Origins allowed by CORS (``*`` = any).")
register("bosh", "consider-secure", "B", False,
         "Treat every request on the BOSH ports as encrypted (TLS ends at a proxy that sends no scheme header).")
register("ws2s", "allowed-origins", "s", ["*"], "Origins allowed to open a WebSocket (``*`` = any).")
register("ws2s", "ping-interval", "I", 30, "Seconds between WebSocket pings on an idle connection (0 = off).",
         minimum=0)
register("ws2s", "idle-timeout", "I", 600, "Seconds without traffic before a WebSocket is closed.", minimum=1)
register("ws2s", "consider-secure", "B", False,
         "Treat every WebSocket on the ws2s ports as encrypted (TLS ends at a proxy that sends no scheme header).")
del G


# --------------------------------------------------------------------------------------------------
# Public value objects


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
    _values: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False, compare=False)
    _listeners: dict[str, list[Listener]] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._listeners is None:
            self._listeners = _compute_listeners(self._values, self.cluster_mode, _plain_fail, [])

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


# --------------------------------------------------------------------------------------------------
# The java.util.Properties layer

_NEWLINE = re.compile(r"\r\n|\r|\n")
_SUFFIX = re.compile(r"\[[^\[\]]*\]\Z")
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


@dataclass(frozen=True)
class _Entry:
    filename: str
    line: int | None
    key: str
    value: str


def _odd_backslashes(text: str) -> bool:
    return (len(text) - len(text.rstrip("\\"))) % 2 == 1


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(line number, logical line): comments and blanks dropped, ``\\`` continuations joined."""
    natural = _NEWLINE.split(text)
    result = []
    i = 0
    while i < len(natural):
        start = i + 1
        line = natural[i].lstrip(_WS)
        i += 1
        if not line or line[0] in "#!":
            continue
        parts = []
        while _odd_backslashes(line):
            parts.append(line[:-1])
            if i >= len(natural):
                line = ""
                break
            line = natural[i].lstrip(_WS)
            i += 1
            if not line:
                break
        parts.append(line)
        result.append((start, "".join(parts)))
    return result


def _split_entry(logical: str) -> tuple[str, str]:
    """Raw (still escaped) key and value: the key ends at the first unescaped ``=``, ``:`` or whitespace."""
    n = len(logical)
    i = 0
    escaped = False
    key_end = n
    has_sep = False
    while i < n:
        c = logical[i]
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c in "=:" or c in _WS:
            key_end = i
            has_sep = c in "=:"
            i += 1
            break
        i += 1
    while i < n:
        c = logical[i]
        if c in _WS:
            i += 1
        elif not has_sep and c in "=:":
            has_sep = True
            i += 1
        else:
            break
    value = logical[i:]
    # Drop trailing whitespace unless escaped (``\ `` keeps a space).
    while value and value[-1] in _WS and not _odd_backslashes(value[:-1]):
        value = value[:-1]
    return logical[:key_end], value


def _unescape(text: str, filename: str, line: int | None) -> str:
    out = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        i += 1
        if c != "\\":
            out.append(c)
            continue
        if i >= n:
            break
        c = text[i]
        i += 1
        if c == "u":
            digits = text[i:i + 4]
            if not re.fullmatch(r"[0-9a-fA-F]{4}", digits):
                raise ConfigError(f"malformed \\uXXXX escape {_quote(text[i - 2:i + 4])}", filename=filename, line=line)
            out.append(chr(int(digits, 16)))
            i += 4
        else:
            out.append(_ESCAPES.get(c, c))
    result = "".join(out)
    try:
        return result.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        raise ConfigError("unpaired \\uD800-\\uDFFF surrogate escape", filename=filename, line=line) from None


def split_key(key: str) -> tuple[str, str, str]:
    """Tigase's split of a component key: (component, node, key) at the first and last ``/``."""
    base = _SUFFIX.sub("", key)
    if "/" not in base:
        raise ValueError(f"{key!r} has no '/'")
    component, rest = base.split("/", 1)
    node, _, name = rest.rpartition("/")
    return component, node, name


# --------------------------------------------------------------------------------------------------
# From entries to a Config


def _lookup(component: str, key: str) -> Setting | None:
    setting = _REGISTRY.get((component, key))
    if setting is None:
        m = re.fullmatch(r"connections/([0-9]+)/(.+)", key)
        if m:
            setting = _REGISTRY.get((component, f"connections/<port>/{m.group(2)}"))
        elif component == "vhost-man" and "/" in key:
            setting = _REGISTRY.get((component, f"<domain>/{key.rsplit('/', 1)[1]}"))
    return setting


def _port_default(component: str, key: str) -> Any:
    m = re.fullmatch(r"connections/([0-9]+)/(.+)", key)
    if m and m.group(2) == "socket" and int(m.group(1)) in _DEFAULT_SSL_PORTS.get(component, ()):
        return "ssl"
    return _lookup(component, key).default


def _redact(setting: Setting | None, value: str) -> str:
    if setting is None or not setting.secret:
        return value
    if setting.key == "cluster-nodes":
        items = []
        for item in value.split(","):
            fields = item.split(":", 3)
            if len(fields) > 1 and fields[1] and not fields[1].startswith("@"):  # @path names a file: shown
                fields[1] = "***"
            items.append(":".join(fields))
        return ",".join(items)
    value = re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", value)
    return re.sub(r"(?i)(password=)[^&;\s]*", r"\1***", value)


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

    def build(self) -> Config:
        g = (GLOBAL,)
        cluster_mode = self.get("cluster-mode")
        virt_hosts, vhost_options = self._virt_hosts()
        for canon, items in self.values.items():
            if canon[0] == "vhost-man":
                domain = canon[1].rsplit("/", 1)[0].lower()
                if domain not in virt_hosts:
                    raise self.fail(canon, f"a domain listed in --virt-hosts ({', '.join(virt_hosts)})")
                for item in items:
                    if not re.fullmatch(r"[+-][A-Za-z0-9][A-Za-z0-9:._#-]*", item):
                        raise self.fail(canon, f"+name or -name entries (bad entry {_quote(item)})")
        admins = []
        for jid in self.get("admins"):
            if not re.fullmatch(r"[^@/\s]+@[^@/\s]+", jid):
                raise self.fail(g + ("admins",), f"bare JIDs like admin@example.com (bad element {_quote(jid)})")
            local, domain = jid.split("@")
            admins.append(f"{local}@{domain.lower()}")
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
    for line, logical in _logical_lines(text):
        raw_key, raw_value = _split_entry(logical)
        key = _unescape(raw_key, filename, line)
        builder.add(_Entry(filename, line, key, _unescape(raw_value, filename, line)))
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
        _REGISTRY[(GLOBAL, "user-db-uri")], config.user_db_uri) != config.user_db_uri
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
    for warning in config.warnings:
        print(warning, file=sys.stderr)
    for lst in config.all_listeners():
        print(f"{lst.component} {lst.port} {lst.socket} {lst.type} {','.join(lst.ifc)}")
    return 0


def _render_default(setting: Setting) -> str:
    if setting.default_doc is not None:
        return setting.default_doc
    value = setting.default
    if value is None:
        return "(unset)"
    if isinstance(value, list):
        return ",".join(_render_scalar(v) for v in value) if value else "(empty)"
    return _render_scalar(value)


def _render_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def settings_table() -> str:
    """The reStructuredText table of every registered setting (pasted into docs/configuration.rst)."""
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 34 8 14 44",
        "",
        "   * - Key",
        "     - Type",
        "     - Default",
        "     - Meaning",
    ]
    for s in settings():
        meaning = s.doc
        if s.choices and "``" not in meaning:
            meaning += " One of: " + ", ".join(s.choices) + "."
        limits = [f"minimum {_num(s.minimum)}"] if s.minimum is not None and "ports" not in s.key else []
        if s.maximum is not None and "ports" not in s.key:
            limits.append(f"maximum {_num(s.maximum)}")
        if limits:
            meaning += " (" + ", ".join(limits) + ")"
        lines += [
            f"   * - ``{s.name}``",
            f"     - ``[{s.kind}]`` {KINDS[s.kind]}",
            f"     - ``{_render_default(s)}``",
            f"     - {meaning}",
        ]
    return "\n".join(lines) + "\n"


def write_settings_table(path: str) -> None:
    """Replace the generated table between the ``BEGIN``/``END settings-table`` markers of ``path``."""
    with open(path, encoding="utf-8") as source:
        text = source.read()
    begin, end = ".. BEGIN settings-table\n\n", "\n.. END settings-table"
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    with open(path, "w", encoding="utf-8") as out:
        out.write(head + begin + settings_table() + end + tail)


if __name__ == "__main__":
    # python -m xmppcluster.config                    print the table
    # python -m xmppcluster.config docs/configuration.rst   update it in place
    if len(sys.argv) > 1:
        write_settings_table(sys.argv[1])
    else:
        sys.stdout.write(settings_table())
