"""The settings registry: every key the server understands, declared once with its type, default and limits.

The reader validates against it (:mod:`xmppcluster.config.builder`) and ``docs/configuration.rst`` is rendered
from it (:mod:`xmppcluster.config.docs`).  Secrets (cluster passwords, database passwords) are marked so that
messages never show them (:func:`_redact`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["GLOBAL", "KINDS", "ConfigError", "Setting", "register", "settings"]

GLOBAL = "--"
DEFAULT_PATH = "etc/init.properties"
DEFAULT_DB_URI = "sqlite:///data/xmppcluster.sqlite"
CONNECTION_MANAGERS = ("c2s", "bosh", "ws2s", "cl-comp", "s2s", "ext")
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
# s2s listens only where configured (``s2s/connections/ports[i]=5269,5270``): docs/federation.rst.
_DEFAULT_PORTS = {"c2s": [5222, 5223], "bosh": [5280], "ws2s": [5290], "cl-comp": [5277], "s2s": [], "ext": []}
_DEFAULT_SSL_PORTS = {"c2s": (5223,), "s2s": (5270,)}
_PORT = {"minimum": 1, "maximum": 65535}

# ---- the table: every setting, in documentation order ----
G = GLOBAL
register(G, "virt-hosts", "s", ["localhost"],
         "Hosted XMPP domains. Each may carry options: ``domain:-anon:register:max-users=1000:-tls-required``.")
register(G, "admins", "s", [],
         "Bare JIDs of the server administrators: they may list and run the XEP-0133 administration commands "
         "(XEP-0050 ad-hoc commands; docs/administration.rst), everyone else is refused.")
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
register(G, "csi-max-held", "I", 256,
         "Stanzas held for a client that said it is inactive (XEP-0352); one more and all are written.",
         minimum=1, maximum=10000)
for _cm in CONNECTION_MANAGERS:
    register(_cm, "connections/ports", "i", _DEFAULT_PORTS[_cm],
             f"Ports of the {_cm} connection manager" + (" (opened only with --cluster-mode)." if _cm == "cl-comp"
                                                          else ". Empty disables it."), **_PORT)
    register(_cm, "connections/<port>/socket", "S", "plain",
             "``plain``, or ``ssl`` for direct TLS" + {"c2s": " (default ``ssl`` for 5223).",
                                                      "s2s": " (default ``ssl`` for 5270, XEP-0368)."}.get(_cm, "."),
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
register("s2s", "require-encryption", "B", True,
         "Federation only over TLS (STARTTLS or direct TLS), both directions (RFC 6120 §5; XEP-0479).")
register("s2s", "secure-auth", "B", True,
         "A remote server must present a certificate valid for its domain (then SASL EXTERNAL, XEP-0178); "
         "only the domains of ``s2s/insecure-domains`` may authenticate with dialback alone (XEP-0220).")
register("s2s", "bidi", "B", True,
         "Offer and use XEP-0288 bidirectional streams: one connection carries both directions of a domain pair.")
register("s2s", "insecure-domains", "s", [],
         "Remote domains allowed to authenticate with dialback over TLS without a valid certificate.")
register("s2s", "allowed-domains", "s", [],
         "When set, the only remote domains we federate with (others: ``not-allowed``/``policy-violation``).")
register("s2s", "denied-domains", "s", [], "Remote domains we never federate with.")
register("s2s", "hosts", "s", [],
         "Static addresses of remote domains, before DNS: ``example.net=10.0.0.5:5269`` "
         "(``=10.0.0.5:5270:tls`` for direct TLS), comma-separated.")
register("s2s", "dns-servers", "s", [],
         "DNS servers for SRV/A/AAAA look-ups, ``address[:port]`` (default: the system's resolv.conf).")
register("s2s", "ca-file", "S", None,
         "PEM file of the certificate authorities trusted for remote servers (default: the system's store).",
         default_doc="the system's store")
register("s2s", "connect-timeout", "F", 15.0, "Seconds to resolve, connect and authenticate to a remote server.",
         minimum=1)
register("s2s", "idle-timeout", "I", 600, "Seconds without traffic before a server-to-server stream is closed.",
         minimum=1)
register("s2s", "ping-interval", "F", 60.0,
         "Seconds between XEP-0199 pings on an idle outgoing stream; a ping also confirms what was sent before.",
         minimum=1)
register("s2s", "queue-max-stanzas", "I", 5000,
         "Stanzas waiting (or unconfirmed) for one remote domain; past this, stanzas bounce ``resource-constraint``.",
         minimum=1)
register("s2s", "max-connections-per-domain", "I", 8,
         "Incoming streams authenticated for one remote domain at once (the oldest is closed past it).", minimum=1)
register("s2s", "max-incoming-unauthenticated", "I", 200,
         "Incoming server connections not yet authenticated at once, all addresses together.", minimum=1)
register("s2s", "rate-limit", "I", 1048576, "Bytes per second read from one server-to-server stream (0 = off).",
         minimum=0)
register("ext", "components", "s", [],
         "External components (XEP-0114) ``domain:secret``, comma-separated; a secret ``@/path`` is read from that "
         "file. They connect to the ``ext`` ports (docs/components.rst).", secret=True)
register("ext", "handshake-timeout", "F", 10.0, "Seconds a component connection has to complete its handshake.",
         minimum=0.1)
register("ext", "max-unauthenticated", "I", 50, "Component connections not yet authenticated at once.", minimum=1)
register("ext", "rate-limit", "I", 1048576, "Bytes per second read from one component connection (0 = off).",
         minimum=0)
register("ext", "idle-timeout", "I", 3600, "Seconds without traffic before a component connection is closed.",
         minimum=1)
register("vhost-man", "<domain>/sm-plugins", "s", [],
         "Per-vhost module selection (``+name``/``-name``) on top of ``--sm-plugins``, e.g. "
         "``vhost-man/example.org/sm-plugins[s]=-vcard-temp``.")
register(G, "webchat", "B", True,
         "Serve the web chat (Converse.js) at ``/chat`` on the BOSH and WebSocket ports; per domain: "
         "``vhost-man/<domain>/webchat``.")
register(G, "webchat-title", "S", "Web chat", "Title of the web chat page; per domain: "
         "``vhost-man/<domain>/webchat-title``.")
register(G, "webchat-dir", "S", "webchat",
         "Directory the web chat's Converse.js files are installed in (``xmppcluster install-webchat``).")
register(G, "webchat-endpoints", "s", [],
         "URLs the web chat connects to instead of the live nodes' own (``wss://`` and ``https://``), e.g. the "
         "reverse proxy's ``wss://chat.example.com/xmpp-websocket,https://chat.example.com/http-bind``.")
register("vhost-man", "<domain>/webchat", "B", None, "Per-vhost on/off of the web chat (default ``--webchat``).",
         default_doc="--webchat")
register("vhost-man", "<domain>/webchat-title", "S", None,
         "Per-vhost title of the web chat page (default ``--webchat-title``).", default_doc="--webchat-title")
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
register(G, "metrics-port", "I", 0,
         "Port of the operators' HTTP listener: ``/metrics`` (OpenMetrics for Prometheus) and ``/status`` "
         "(0 = off; docs/metrics.rst).", minimum=0, maximum=65535)
register(G, "metrics-ifc", "s", ["127.0.0.1"],
         "Interfaces (IP addresses) the metrics listener binds; loopback unless you put a firewall in front.")
register(G, "metrics-sample-interval", "I", 10,
         "Seconds between the status page's samples (its chart shows the last 60) and the offline-queue query.",
         minimum=1, maximum=3600)
del G



# --------------------------------------------------------------------------------------------------
# Looking keys up


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
    if setting.key == "components":
        return ",".join(f"{item.partition(':')[0]}:***" if item.partition(":")[2][:1] not in ("", "@") else item
                        for item in value.split(","))
    value = re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", value)
    return re.sub(r"(?i)(password=)[^&;\s]*", r"\1***", value)


