"""Reloading certificates without a restart: SIGHUP in the server, ``xmppcluster reload-certs`` outside it.

The server re-reads ``certs/*.pem`` on SIGHUP (:class:`SighupReloader`, installed by the service); new connections
get the new certificates, live ones keep theirs, and a broken file leaves the previous set in place (logged).
``xmppcluster reload-certs`` sends SIGHUP to the running server, found by its pid file: ``--pidfile FILE``, else
``twistd.pid`` in the current directory (twistd's default).  Before signalling, the process is checked to be a
twistd / xmppcluster process (``/proc/<pid>/cmdline``): SIGHUP kills most other programs, and a stale pid file may
name one.  The result is reported in the server's log, not by the command.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from twisted.logger import Logger

from xmppcluster.core.tls import CertificateError

__all__ = ["DEFAULT_PIDFILE", "SighupReloader", "reload_certificates", "reload_certs_main"]

log = Logger()

DEFAULT_PIDFILE = "twistd.pid"


def reload_certificates(certs: Any, reason: str) -> bool:
    """``certs.reload()``, logged; False (old certificates kept) when a file is broken."""
    log.info("reloading certificates ({reason})", reason=reason)
    try:
        certs.reload()
    except CertificateError as e:
        log.error("certificate reload failed, the previous certificates stay in use: {error}", error=str(e))
        return False
    return True


class SighupReloader:
    """SIGHUP -> :func:`reload_certificates` in the reactor thread.  ``install()`` is a no-op off the main thread."""

    def __init__(self, certs: Any, reactor: Any) -> None:
        self.certs = certs
        self.reactor = reactor
        self._previous: Any = None
        self.installed = False

    def install(self) -> bool:
        if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
            return False
        self._previous = signal.signal(signal.SIGHUP, self._on_signal)
        self.installed = True
        return True

    def uninstall(self) -> None:
        """Put back the previous handler, unless someone replaced ours meanwhile."""
        if not self.installed:
            return
        self.installed = False
        if signal.getsignal(signal.SIGHUP) == self._on_signal:
            signal.signal(signal.SIGHUP, self._previous if self._previous is not None else signal.SIG_DFL)

    def _on_signal(self, signum: int, frame: Any) -> None:
        # A signal handler may interrupt the reactor anywhere: only schedule the work.
        self.reactor.callFromThread(reload_certificates, self.certs, "SIGHUP")


def _looks_like_server(pid: int) -> bool | None:
    """True/False from ``/proc/<pid>/cmdline``; None where /proc is not available."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:  # no /proc, or no such process (os.kill then says so)
        return None
    return b"twistd" in cmdline or b"xmppcluster" in cmdline


def reload_certs_main(pidfile: str | None = None, *, force: bool = False) -> int:
    """``xmppcluster reload-certs [--pidfile FILE] [--force]``: SIGHUP to the server; 0 sent, 1 not."""
    path = pidfile or DEFAULT_PIDFILE
    prog = "xmppcluster reload-certs"
    try:
        with open(path) as f:
            text = f.read(64).strip()
    except OSError as e:
        print(f"{prog}: {path}: {e.strerror or e} (is the server running? twistd writes twistd.pid in its working "
              "directory; give --pidfile)", file=sys.stderr)
        return 1
    if not text.isdigit() or int(text) <= 1:
        print(f"{prog}: {path}: not a process id", file=sys.stderr)
        return 1
    pid = int(text)
    if not force and _looks_like_server(pid) is False:
        print(f"{prog}: process {pid} (from {path}) is not an xmppcluster server; stale pid file? "
              "(--force sends the signal anyway)", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"{prog}: no process {pid} (stale pid file {path})", file=sys.stderr)
        return 1
    except PermissionError:
        print(f"{prog}: not allowed to signal process {pid}", file=sys.stderr)
        return 1
    print(f"sent SIGHUP to {pid}; the server log reports the reloaded certificates")
    return 0
