"""Real ``twistd -n xmppcluster`` processes for tests: started, waited for, always killed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def wait_for_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1", process: Twistd | None = None) -> None:
    """Wait until something listens on ``port``; fail at once, with its log, if ``process`` exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if process is not None and process.process.poll() is not None:
                raise RuntimeError(f"the server exited ({process.process.returncode}) before listening on "
                                   f"{port}:\n{process.output()[-3000:]}") from None
            time.sleep(0.05)
    tail = process.output()[-3000:] if process is not None else ""
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s\n{tail}")


class Twistd:
    """One server process with its own working directory and log file."""

    def __init__(self, directory: str, config_path: str, *args: str, name: str = "twistd",
                 env: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.log_path = os.path.join(directory, f"{name}.log")
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "xmppcluster", "--config", config_path, *args],
            cwd=directory, stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, errors="replace") as log:
            return log.read()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode
