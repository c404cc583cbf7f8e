"""Memory per BOSH session: N concurrent sessions, each with a long poll held open, on one node.

    .venv/bin/python bench/bosh_sessions.py [--sessions 1000] [--no-login]

The server runs in a child process (so its RSS is measured alone): SQLite, one account, the BOSH resource
on a loopback port. The client (this process) opens one keep-alive HTTP connection per session, creates
the session, by default authenticates with SCRAM-SHA-1 and binds a resource, then sends an empty request
that the server holds (the long poll). The report is the server's RSS growth divided by N, which includes
the TCP connection, the held twisted.web request, the BOSH session, the stream core and the bound session.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import re
import subprocess
import sys
import tempfile
import time

HTTPBIND = "http://jabber.org/protocol/httpbind"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
DOMAIN = "bench.example"

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from servers import rss_kib  # noqa: E402

# -- the server (child process) ------------------------------------------------------------------------


def serve(db_path: str) -> None:
    from twisted.internet import defer, reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from xmppcluster.config import parse_text
    from xmppcluster.core.server import XMPPServer
    from xmppcluster.storage import open_storage
    from xmppcluster.streams.bosh import BoshResource, bosh_sessions, limited_request

    async def start() -> None:
        config = parse_text(f"--virt-hosts={DOMAIN}\n--node-name=t1.{DOMAIN}\nbosh/max-sessions-per-ip[I]=0\n"
                            "bosh/max-wait[I]=120\n--idle-timeout=3600\n", "<bench>")
        storage = await open_storage("sqlite:///" + db_path)
        await storage.accounts.create("bench", DOMAIN, "secret")
        server = XMPPServer(config, storage, certs=None, clock=reactor)
        root = Resource()
        root.putChild(b"http-bind", BoshResource(server, None))
        site = Site(root)
        site.requestFactory = limited_request(bosh_sessions(server).settings.max_body)
        site.noisy = False
        port = reactor.listenTCP(0, site, interface="127.0.0.1", backlog=2048)
        print(f"READY {port.getHost().port}", flush=True)

    defer.ensureDeferred(start()).addErrback(lambda f: (f.printTraceback(), reactor.stop()))
    reactor.run()


# -- the client ----------------------------------------------------------------------------------------


class Scram:
    salted: dict[tuple[bytes, int], bytes] = {}

    def __init__(self) -> None:
        self.bare = f"n=bench,r={os.urandom(8).hex()}"

    def first(self) -> str:
        return base64.b64encode(("n,," + self.bare).encode()).decode()

    def final(self, challenge: str) -> str:
        server_first = base64.b64decode(challenge).decode()
        attrs = dict(item.split("=", 1) for item in server_first.split(","))
        key = (base64.b64decode(attrs["s"]), int(attrs["i"]))
        if key not in self.salted:
            self.salted[key] = hashlib.pbkdf2_hmac("sha1", b"secret", *key)
        client_key = hmac.digest(self.salted[key], b"Client Key", "sha1")
        without_proof = f"c={base64.b64encode(b'n,,').decode()},r={attrs['r']}"
        message = f"{self.bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(hashlib.sha1(client_key).digest(), message, "sha1")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return base64.b64encode(f"{without_proof},p={base64.b64encode(proof).decode()}".encode()).decode()


def run_client(port: int, sessions: int, login: bool, server_pid: int) -> None:
    from twisted.internet import defer, protocol, reactor

    class HTTPConnection(protocol.Protocol):
        """Keep-alive HTTP/1.1 POSTs, one at a time."""

        def connectionMade(self) -> None:
            self.buffer = b""
            self.waiting: defer.Deferred | None = None

        def post(self, body: str) -> defer.Deferred:
            data = body.encode()
            self.transport.write(b"POST /http-bind HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
            self.waiting = defer.Deferred()
            return self.waiting

        def dataReceived(self, data: bytes) -> None:
            self.buffer += data
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            waiting, self.waiting = self.waiting, None
            waiting.callback(rest[:length].decode())

    def body(children: str = "", **attrs: object) -> str:
        text = "".join(f" {k.replace('__', ':')}='{v}'" for k, v in attrs.items())
        return f"<body xmlns='{HTTPBIND}' xmlns:xmpp='urn:xmpp:xbosh'{text}>{children}</body>"

    async def one(n: int, connections: list) -> None:
        endpoint = protocol.ClientCreator(reactor, HTTPConnection)
        conn = await endpoint.connectTCP("127.0.0.1", port)
        connections.append(conn)
        rid = 1000
        reply = await conn.post(body(to=DOMAIN, rid=rid, wait=120, hold=1, ver="1.6", xmpp__version="1.0"))
        sid = re.search(r"sid=[\"']([0-9a-f]+)", reply).group(1)
        if login:
            scram = Scram()
            reply = await conn.post(body(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'>{scram.first()}</auth>",
                                         sid=sid, rid=rid + 1))
            challenge = re.search(r"<challenge[^>]*>([^<]+)<", reply).group(1)
            reply = await conn.post(body(f"<response xmlns='{SASL}'>{scram.final(challenge)}</response>",
                                         sid=sid, rid=rid + 2))
            assert "<success" in reply, reply
            await conn.post(body(sid=sid, rid=rid + 3, to=DOMAIN, xmpp__restart="true"))
            reply = await conn.post(body(f"<iq xmlns='jabber:client' type='set' id='b'><bind "
                                         f"xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r{n}</resource>"
                                         "</bind></iq>", sid=sid, rid=rid + 4))
            assert "<jid>" in reply, reply
            rid += 4
        conn.post(body(sid=sid, rid=rid + 1))  # the long poll: held by the server

    async def main() -> None:
        connections: list = []
        await defer.DeferredList([defer.ensureDeferred(_settle())])
        before = rss_kib(server_pid)
        started = time.perf_counter()
        batch = 50
        for first in range(0, sessions, batch):
            await defer.gatherResults([defer.ensureDeferred(one(n, connections))
                                       for n in range(first, min(first + batch, sessions))])
        elapsed = time.perf_counter() - started
        await _settle()
        after = rss_kib(server_pid)
        per = (after - before) / sessions
        kind = "authenticated and bound" if login else "unauthenticated"
        held = sum(1 for conn in connections if conn.waiting is not None)
        print(f"{sessions} BOSH sessions ({kind}), {held} long polls held open, set up in {elapsed:.1f} s")
        print(f"server RSS: {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB after; "
              f"{per:.1f} KiB per session")
        for conn in connections:
            conn.transport.loseConnection()

    async def _settle() -> None:
        d = defer.Deferred()
        reactor.callLater(0.5, d.callback, None)
        await d

    def done(result: object) -> None:
        if hasattr(result, "printTraceback"):
            result.printTraceback()
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(main()).addBoth(done))
    reactor.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--no-login", action="store_true", help="do not authenticate (no SASL, no bind)")
    parser.add_argument("--serve", metavar="DB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    directory = tempfile.mkdtemp(prefix="bosh-bench-")
    child = subprocess.Popen([sys.executable, __file__, "--serve", os.path.join(directory, "db.sqlite")],
                             stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        if not line.startswith("READY "):
            raise SystemExit(f"server did not start: {line!r}")
        run_client(int(line.split()[1]), args.sessions, not args.no_login, child.pid)
    finally:
        child.terminate()
        child.wait(timeout=10)


if __name__ == "__main__":
    main()
