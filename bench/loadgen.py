"""The load generator: asyncio protocols on raw sockets, pre-built stanzas, its own SCRAM-SHA-1 client.

It shares no code with the server. Negotiation matches regular expressions on the raw bytes; once a
session is established, received bytes are only counted (``</message>``) or scanned for a timestamp, so
the generator spends far less per stanza than any server it drives.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import ssl
import time
from collections.abc import Callable

STREAMS = "http://etherx.jabber.org/streams"
FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
HEADER = ("<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
          f"xmlns:stream='{STREAMS}' version='1.0'>")
WS_OPEN = "<open xmlns='" + FRAMING + "' to='{domain}' version='1.0'/>"

_FEATURES = re.compile(rb"<stream:features.*?</stream:features>|<stream:features[^>]*/>", re.S)
_PROCEED = re.compile(rb"<proceed[^>]*/?>")
_CHALLENGE = re.compile(rb"<challenge[^>]*>([^<]*)</challenge>|<(failure)")
_SUCCESS = re.compile(rb"<success[^>]*(?:/>|>[^<]*</success>)|<(failure)")
_END = b"</message>"
_ERROR = b"<error"
_STAMP = re.compile(rb"id=[\"']L(\d+)")
_SALTED: dict[tuple[str, bytes, int], bytes] = {}


class LoginFailed(Exception):
    pass


def iq_pattern(ident: str) -> re.Pattern:
    return re.compile(rb"<iq[^>]*\bid=[\"']" + ident.encode() + rb"[\"'][^>]*?(?:/>|>.*?</iq>)", re.S)


def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    """PBKDF2 once per (password, salt, iterations): the client's share of SCRAM stays cheap."""
    key = (password, salt, iterations)
    if key not in _SALTED:
        _SALTED[key] = hashlib.pbkdf2_hmac("sha1", password.encode(), salt, iterations)
    return _SALTED[key]


def client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # self-signed bench certificates on loopback
    return context


class Client(asyncio.Protocol):
    """One XMPP connection (plain TCP, STARTTLS or WebSocket)."""

    def __init__(self, domain: str, websocket: bool = False) -> None:
        self.domain = domain
        self.websocket = websocket
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self._want: tuple[re.Pattern, asyncio.Future] | None = None
        #: When set, established traffic goes here instead of the buffer: fn(data).
        self.sink: Callable[[bytes], None] | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.jid = ""
        self._handshake: asyncio.Future | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink(data)
            return
        self.buf += data
        if self._handshake is not None:
            if b"\r\n\r\n" in self.buf:
                head, _, self.buf = self.buf.partition(b"\r\n\r\n")
                future, self._handshake = self._handshake, None
                future.set_result(head)
            return
        self._check()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self._want is not None and not self._want[1].done():
            self._want[1].set_exception(LoginFailed("connection closed: " + self.buf[-300:].decode(errors="replace")))

    def _check(self) -> None:
        if self._want is None:
            return
        pattern, future = self._want
        match = pattern.search(self.buf)
        if match is not None:
            self.buf = self.buf[match.end():]
            self._want = None
            future.set_result(match)

    async def expect(self, pattern: re.Pattern, timeout: float = 30.0) -> re.Match:
        future = asyncio.get_running_loop().create_future()
        self._want = (pattern, future)
        self._check()
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise LoginFailed(f"timed out waiting for {pattern.pattern[:40]!r}; have {self.buf[-200:]!r}") from None

    # -- writing -------------------------------------------------------------------------------------

    def encode(self, stanza: bytes) -> bytes:
        """One stanza as this connection puts it on the wire (RFC 7395: one framed element with its xmlns)."""
        if not self.websocket:
            return stanza
        for name in (b"<message", b"<presence", b"<iq"):
            if stanza.startswith(name):
                stanza = name + b" xmlns='jabber:client'" + stanza[len(name):]
                break
        return frame(stanza)

    def write(self, data: bytes) -> None:
        """Write one stanza (or, on TCP, any bytes)."""
        self.transport.write(self.encode(data))

    def write_raw(self, data: bytes) -> None:
        """Write already encoded bytes (see :meth:`encode`)."""
        self.transport.write(data)

    def send(self, text: str) -> None:
        self.write(text.encode())

    # -- negotiation ---------------------------------------------------------------------------------

    async def _open(self) -> re.Match:
        self.send((WS_OPEN if self.websocket else HEADER).format(domain=self.domain))
        return await self.expect(_FEATURES)

    async def upgrade(self, path: str, host: str) -> None:
        loop = asyncio.get_running_loop()
        self._handshake = loop.create_future()
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write((f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                              "Sec-WebSocket-Protocol: xmpp\r\n\r\n").encode())
        head = await asyncio.wait_for(self._handshake, 30)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise LoginFailed(f"websocket upgrade refused: {head[:200]!r}")

    async def login(self, user: str, password: str, resource: str, *, starttls: bool = False,
                    roster: bool = True, presence: str | None = "<presence/>") -> None:
        """Header, (STARTTLS), SCRAM-SHA-1, restart, bind, roster get, initial presence, then a ping round trip."""
        features = await self._open()
        if starttls:
            if b"starttls" not in features.group(0):
                raise LoginFailed("no STARTTLS offered")
            self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            await self.expect(_PROCEED)
            loop = asyncio.get_running_loop()
            self.transport = await loop.start_tls(self.transport, self, client_context(), server_hostname=self.domain)
            await self._open()
        await self.scram(user, password)
        await self._open()
        self.send(f"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}"
                  "</resource></bind></iq>")
        bound = await self.expect(iq_pattern("b1"))
        jid = re.search(rb"<jid>([^<]+)</jid>", bound.group(0))
        if jid is None:
            raise LoginFailed(f"bind failed: {bound.group(0)[:200]!r}")
        self.jid = jid.group(1).decode()
        if roster:
            self.send("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
            await self.expect(iq_pattern("r1"))
        if presence:
            self.send(presence)
        await self.ping("p1")
        self.buf = b""

    async def ping(self, ident: str) -> None:
        self.send(f"<iq type='get' id='{ident}' to='{self.domain}'><ping xmlns='urn:xmpp:ping'/></iq>")
        await self.expect(iq_pattern(ident))

    async def scram(self, user: str, password: str) -> None:
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n={user},r={nonce}"
        self.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>"
                  f"{base64.b64encode(('n,,' + first_bare).encode()).decode()}</auth>")
        challenge = await self.expect(_CHALLENGE)
        if challenge.group(2):
            raise LoginFailed("SCRAM refused")
        server_first = base64.b64decode(challenge.group(1)).decode()
        fields = dict(part.split("=", 1) for part in server_first.split(","))
        if not fields["r"].startswith(nonce):
            raise LoginFailed("bad server nonce")
        salted = salted_password(password, base64.b64decode(fields["s"]), int(fields["i"]))
        final_bare = f"c=biws,r={fields['r']}"
        auth_message = f"{first_bare},{server_first},{final_bare}".encode()
        client_key = hmac.digest(salted, b"Client Key", "sha1")
        signature = hmac.digest(hashlib.sha1(client_key).digest(), auth_message, "sha1")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        final = f"{final_bare},p={base64.b64encode(proof).decode()}"
        self.send(f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{base64.b64encode(final.encode()).decode()}"
                  "</response>")
        success = await self.expect(_SUCCESS)
        if success.group(1):
            raise LoginFailed(f"SCRAM failed for {user}")

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


def frame(payload: bytes) -> bytes:
    """A masked client text frame. The masking key is zero, so the payload goes out as is (RFC 6455 §5.3
    requires a mask, not a random-looking payload; servers unmask with whatever key is given)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


async def connect(host: str, port: int, domain: str, *, websocket: str | None = None) -> Client:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: Client(domain, websocket is not None), host, port)
    if websocket is not None:
        await client.upgrade(websocket, f"{host}:{port}")
    return client


# -- load patterns -------------------------------------------------------------------------------------


class Counter:
    """Counts complete ``</message>`` ends in a byte stream (split-safe); calls ``on_count(n)``. ``errors``
    counts the ``<error`` elements among them (bounces also end with ``</message>``)."""

    __slots__ = ("rest", "total", "errors", "on_count")

    def __init__(self, on_count: Callable[[int], None] | None = None) -> None:
        self.rest = b""
        self.total = 0
        self.errors = 0
        self.on_count = on_count

    def __call__(self, data: bytes) -> None:
        data = self.rest + data if self.rest else data
        n = data.count(_END)
        if n:
            end = data.rfind(_END)
            self.rest = data[end + len(_END):]
            self.total += n
            self.errors += data.count(_ERROR, 0, end)
            if self.on_count is not None:
                self.on_count(n)
        else:
            self.rest = data[-4096:]


class Stamps:
    """Collects ``now - sent`` for every message whose id is ``L<perf_counter_ns>``."""

    __slots__ = ("rest", "latencies", "record")

    def __init__(self) -> None:
        self.rest = b""
        self.latencies: list[int] = []
        self.record = True

    def __call__(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        data = self.rest + data if self.rest else data
        end = data.rfind(_END)
        if end < 0:
            self.rest = data[-65536:]
            return
        self.rest = data[end + len(_END):]
        if self.record:
            self.latencies.extend(now - int(stamp) for stamp in _STAMP.findall(data, 0, end))


def message(to: str, body: str, ident: str = "m") -> bytes:
    return f"<message to='{to}' type='chat' id='{ident}'><body>{body}</body></message>".encode()


BODY = "The quick brown fox jumps over the lazy dog; a benchmark message of ordinary size."


async def saturate(pairs: list[tuple[Client, Client]], window: int, warmup: float, seconds: float,
                   cpu=None, stats: dict | None = None) -> float:
    """Each sender keeps ``window`` messages in flight to its receiver; received messages/s over ``seconds``.

    With ``cpu`` (a function returning the servers' CPU seconds so far), ``stats["cpu_us_per_message"]``
    is the servers' CPU per delivered message over the same window. ``stats["errors"]``: error stanzas
    (bounces) among the messages counted, warm-up included."""
    counters = []
    running = [True]
    for sender, receiver in pairs:
        one = sender.encode(message(receiver.jid, BODY))

        def refill(n: int, sender: Client = sender, one: bytes = one) -> None:
            if running[0]:
                sender.write_raw(one * n)

        counter = Counter(refill)
        counters.append(counter)
        receiver.sink = counter
    for sender, receiver in pairs:
        sender.write_raw(sender.encode(message(receiver.jid, BODY)) * window)
    await asyncio.sleep(warmup)
    start_count, start = sum(c.total for c in counters), time.perf_counter()
    cpu_start = cpu() if cpu else 0.0
    await asyncio.sleep(seconds)
    delivered = sum(c.total for c in counters) - start_count
    rate = delivered / (time.perf_counter() - start)
    if cpu and stats is not None:
        stats["cpu_us_per_message"] = (cpu() - cpu_start) * 1e6 / max(delivered, 1)
    if stats is not None:
        stats["errors"] = sum(c.errors for c in counters)
    running[0] = False
    await asyncio.sleep(0.5)  # let what is in flight drain
    for _, receiver in pairs:
        receiver.sink = None
        receiver.buf = b""
    return rate


async def fixed_rate(pairs: list[tuple[Client, Client]], rate: float, warmup: float, seconds: float) -> list[int]:
    """Send ``rate`` messages/s spread over the pairs (1 ms ticks); one-way latencies in ns."""
    for _, receiver in pairs:
        receiver.sink = Stamps()
    sinks = [receiver.sink for _, receiver in pairs]
    prefixes = [f"<message to='{receiver.jid}' type='chat' id='L".encode() for _, receiver in pairs]
    tail = f"'><body>{BODY}</body></message>".encode()
    total = warmup + seconds
    start = time.perf_counter()
    sent = 0
    index = 0
    recording = False
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= total:
            break
        if not recording and elapsed >= warmup:
            recording = True
            for sink in sinks:
                sink.latencies.clear()
        due = int(elapsed * rate) - sent
        for _ in range(due):
            sender = pairs[index][0]
            sender.write(prefixes[index] + str(time.perf_counter_ns()).encode() + tail)
            index = (index + 1) % len(pairs)
        sent += max(due, 0)
        await asyncio.sleep(0.0005)
    await asyncio.sleep(0.5)
    latencies = [v for sink in sinks for v in sink.latencies]
    for _, receiver in pairs:
        receiver.sink = None
    return latencies


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]
