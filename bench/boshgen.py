"""BOSH (XEP-0124/0206) load: keep-alive HTTP/1.1 connections on raw asyncio sockets, two per session.

Receivers always keep one request held by the server and re-poll as soon as it returns; senders post a batch
of pre-built messages on whichever of their two connections is free (the post releases the held one).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import time

import loadgen
import servers

HTTPBIND = "http://jabber.org/protocol/httpbind"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
_LENGTH = re.compile(rb"(?i)content-length: *(\d+)")


class HTTPConnection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.buffer = b""
        self.waiting: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None
        self.on_response = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            match = _LENGTH.search(head)
            length = int(match.group(1)) if match else 0
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            body = rest[:length]
            if self.on_response is not None:
                self.on_response(self, body)
            elif self.waiting is not None and not self.waiting.done():
                waiting, self.waiting = self.waiting, None
                waiting.set_result(body)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_exception(ConnectionError("BOSH connection closed"))

    def post(self, path: str, data: bytes) -> asyncio.Future | None:
        self.transport.write(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml; charset=utf-8\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
        if self.on_response is not None:
            return None
        self.waiting = asyncio.get_running_loop().create_future()
        return self.waiting


class Session:
    def __init__(self, server: servers.Server) -> None:
        self.server = server
        self.path = server.bosh_path
        self.rid = int.from_bytes(os.urandom(4), "big") % 10_000_000 + 1000
        self.sid = ""
        self.conns: list[HTTPConnection] = []
        self.jid = ""
        self.pending = b""

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(2):
            _, conn = await loop.create_connection(HTTPConnection, "127.0.0.1", self.server.ports["bosh"])
            self.conns.append(conn)

    def body(self, children: str = "", **attrs: str) -> bytes:
        self.rid += 1
        text = "".join(f" {k.replace('__', ':')}='{v}'" for k, v in attrs.items())
        sid = f" sid='{self.sid}'" if self.sid else ""
        return (f"<body xmlns='{HTTPBIND}' xmlns:xmpp='urn:xmpp:xbosh' rid='{self.rid}'{sid}{text}>{children}"
                "</body>").encode()

    async def exchange(self, children: str = "", **attrs: str) -> bytes:
        return await asyncio.wait_for(self.conns[0].post(self.path, self.body(children, **attrs)), 30)

    async def until(self, pattern: re.Pattern, reply: bytes) -> re.Match:
        """Poll (empty requests) until ``pattern`` appears in what the server sent."""
        self.pending += reply
        for _ in range(20):
            match = pattern.search(self.pending)
            if match is not None:
                self.pending = self.pending[match.end():]
                return match
            self.pending += await self.exchange()
        raise loadgen.LoginFailed(f"BOSH: no {pattern.pattern[:30]!r} in {self.pending[-300:]!r}")

    async def login(self, user: str, resource: str) -> None:
        await self.open()
        reply = await self.exchange(to=servers.DOMAIN, wait="60", hold="1", ver="1.6", xmpp__version="1.0",
                                    content="text/xml; charset=utf-8")
        self.sid = re.search(rb"sid=[\"']([^\"']+)", reply).group(1).decode()
        await self.until(loadgen._FEATURES, reply)
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n={user},r={nonce}"
        reply = await self.exchange(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'>"
                                    f"{base64.b64encode(('n,,' + first_bare).encode()).decode()}</auth>")
        challenge = await self.until(loadgen._CHALLENGE, reply)
        server_first = base64.b64decode(challenge.group(1)).decode()
        fields = dict(part.split("=", 1) for part in server_first.split(","))
        salted = loadgen.salted_password(servers.PASSWORD, base64.b64decode(fields["s"]), int(fields["i"]))
        final_bare = f"c=biws,r={fields['r']}"
        message = f"{first_bare},{server_first},{final_bare}".encode()
        client_key = hmac.digest(salted, b"Client Key", "sha1")
        signature = hmac.digest(hashlib.sha1(client_key).digest(), message, "sha1")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        final = base64.b64encode(f"{final_bare},p={base64.b64encode(proof).decode()}".encode()).decode()
        reply = await self.exchange(f"<response xmlns='{SASL}'>{final}</response>")
        if (await self.until(loadgen._SUCCESS, reply)).group(1):
            raise loadgen.LoginFailed("BOSH SCRAM failed")
        reply = await self.exchange(to=servers.DOMAIN, xmpp__restart="true")
        await self.until(loadgen._FEATURES, reply)
        reply = await self.exchange("<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:"
                                    f"ns:xmpp-bind'><resource>{resource}</resource></bind></iq>")
        bound = await self.until(loadgen.iq_pattern("b1"), reply)
        self.jid = re.search(rb"<jid>([^<]+)</jid>", bound.group(0)).group(1).decode()
        reply = await self.exchange("<iq xmlns='jabber:client' type='get' id='r1'><query xmlns='jabber:iq:roster'/>"
                                    "</iq><presence xmlns='jabber:client'/><iq xmlns='jabber:client' type='get' "
                                    f"id='p1' to='{servers.DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
        await self.until(loadgen.iq_pattern("p1"), reply)
        self.pending = b""

    def close(self) -> None:
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.abort()


async def bosh_scenario(server: servers.Server, users: list[str], p: dict) -> dict:
    semaphore = asyncio.Semaphore(20)

    async def login(user: str, n: int) -> Session:
        async with semaphore:
            session = Session(server)
            try:
                await session.login(user, f"b{n}")
            except BaseException:
                session.close()
                raise
            return session

    sessions = await asyncio.gather(*(login(u, i) for i, u in enumerate(users)))
    pairs = [(sessions[2 * i], sessions[2 * i + 1]) for i in range(len(sessions) // 2)]
    running = [True]
    received = [0]
    window = p["window"]
    pumps = []
    try:
        for sender, receiver in pairs:
            state = {"inflight": 0, "free": list(sender.conns)}
            one = (f"<message xmlns='jabber:client' to='{receiver.jid}' type='chat' id='m'><body>{loadgen.BODY}"
                   "</body></message>")

            def pump(sender=sender, state=state, one=one) -> None:
                while running[0] and state["free"] and state["inflight"] < window:
                    n = window - state["inflight"]
                    conn = state["free"].pop()
                    state["inflight"] += n
                    conn.post(sender.path, sender.body(one * n))

            def sender_back(conn: HTTPConnection, body: bytes, state=state, pump=pump) -> None:
                state["free"].append(conn)
                pump()

            def receiver_back(conn: HTTPConnection, body: bytes, receiver=receiver, state=state, pump=pump) -> None:
                n = body.count(b"</message>")
                received[0] += n
                state["inflight"] -= n
                if running[0]:
                    conn.post(receiver.path, receiver.body())
                pump()

            for conn in sender.conns:
                conn.on_response = sender_back
            pumps.append(pump)
            poll = receiver.conns[0]
            poll.on_response = receiver_back
            poll.post(receiver.path, receiver.body())
        await asyncio.sleep(0.2)  # the receivers' polls are held
        for pump in pumps:
            pump()  # first batch
        await asyncio.sleep(p["warmup"])
        start_count, start = received[0], time.perf_counter()
        await asyncio.sleep(p["seconds"])
        rate = (received[0] - start_count) / (time.perf_counter() - start)
    finally:
        running[0] = False
        for session in sessions:
            session.close()
    return {"messages_per_s": round(rate), "sessions": len(sessions), "window": window}
