"""Run the JS interop programs of ``tests/js`` (Strophe.js in headless Chromium, @xmpp/client in node).

``tests/js/install`` (called by ``./dev test``) installs Chromium and the npm packages; when something is
still missing, :func:`require` skips the test with the reason printed, never silently.

Each program takes one JSON argument and prints JSON lines: ``{"event": "online", ...}`` once its client
is logged in (roster fetched), then ``{"event": "result", "result": {...}}`` or ``{"event": "error"}``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sys
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, error, protocol, reactor
from twisted.trial.unittest import SkipTest

JS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "js")
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def find_node() -> str | None:
    return shutil.which("node")


def find_chromium() -> str | None:
    override = os.environ.get("XMPPCLUSTER_CHROMIUM")
    for path in ((override,) if override else ()) + CHROMIUM_CANDIDATES:
        if path and os.access(path, os.X_OK):
            return path
    return None


def missing_packages(*packages: str) -> list[str]:
    return [name for name in packages if not os.path.isdir(os.path.join(JS, "node_modules", name))]


def require(*, browser: bool, packages: tuple[str, ...]) -> None:
    """Skip (printing why) unless node, the npm ``packages`` and, if ``browser``, Chromium are present."""
    reasons = []
    if find_node() is None:
        reasons.append("node is not installed")
    missing = missing_packages(*packages)
    if missing:
        reasons.append(f"npm packages missing in tests/js/node_modules: {', '.join(missing)}")
    if browser and find_chromium() is None:
        reasons.append("chromium is not installed (/usr/bin/chromium)")
    if reasons:
        reason = "; ".join(reasons) + " -- run tests/js/install"
        print(f"\nSKIPPED interop test: {reason}", file=sys.stderr)
        raise SkipTest(reason)


def spki_sha256(pem_path: str) -> str:
    """base64 SHA-256 of the first certificate's public key (``--ignore-certificate-errors-spki-list``)."""
    with open(pem_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


class _Program(protocol.ProcessProtocol):
    def __init__(self, run: JsRun) -> None:
        self.run = run
        self.out = b""
        self.err = b""

    def outReceived(self, data: bytes) -> None:
        self.out += data
        *lines, self.out = self.out.split(b"\n")
        for line in lines:
            if line.strip():
                self.run._line(line)

    def errReceived(self, data: bytes) -> None:
        self.err = (self.err + data)[-8000:]

    def processEnded(self, reason: Any) -> None:
        if self.out.strip():
            self.run._line(self.out)
        self.run._ended(reason, self.err.decode(errors="replace"))


class JsRun:
    """A running JS program: ``online`` fires with the online event, ``result`` with the result dict."""

    def __init__(self, name: str, timeout: float) -> None:
        self.name = name
        self.online: defer.Deferred = defer.Deferred()
        self.result: defer.Deferred = defer.Deferred()
        self.events: list[dict] = []
        self.transport: Any = None
        self.ended: defer.Deferred = defer.Deferred()
        self._killer = reactor.callLater(timeout, self._timeout)

    def _line(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return
        self.events.append(event)
        if event.get("event") == "online" and not self.online.called:
            self.online.callback(event)
        elif event.get("event") == "result" and not self.result.called:
            self.result.callback(event["result"])

    def _ended(self, reason: Any, stderr: str) -> None:
        if self._killer.active():
            self._killer.cancel()
        failure = None
        if not self.result.called:
            errors = [e.get("error") for e in self.events if e.get("event") == "error"]
            failure = AssertionError(f"{self.name} gave no result ({reason.value}): {errors or ''}\n{stderr[-3000:]}")
            self.result.errback(failure)
        if not self.online.called:
            self.online.errback(failure or AssertionError(f"{self.name} ended without coming online"))
        self.ended.callback(None)

    def _timeout(self) -> None:
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    def stop(self) -> defer.Deferred:
        """Kill the program unless it has given its result (then let it close its browser); fires at its end."""
        if not self.result.called:
            self._timeout()
        self.result.addErrback(lambda _: None)  # nobody awaited it: the test has already ended
        self.online.addErrback(lambda _: None)
        return self.ended


def run_js(program: str, spec: dict, *, timeout: float = 60, env: dict[str, str] | None = None) -> JsRun:
    """Start ``tests/js/<program>`` with ``spec``; the caller awaits ``.online`` / ``.result`` (stop it in cleanup)."""
    run = JsRun(program, timeout)
    environment = dict(os.environ)
    environment.update(env or {})
    run.transport = reactor.spawnProcess(_Program(run), find_node(), ["node", program, json.dumps(spec)],
                                         env=environment, path=JS)
    return run
