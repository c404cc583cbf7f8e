"""``xmppcluster import FILE...`` and ``xmppcluster export [FILE]``: configuration, progress bar, summary."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from xmppcluster.ops.provision.exporter import export_database
from xmppcluster.ops.provision.importer import WARNINGS_SHOWN, import_files
from xmppcluster.ops.provision.model import ProvisionError

__all__ = ["export_main", "import_main"]

_PROG = "xmppcluster"


class _Progress:
    """A one-line progress report on stderr, redrawn at most every 0.2 s."""

    def __init__(self, stream: IO[str] | None, verb: str) -> None:
        self.stream = stream
        self.verb = verb
        self.started = self._last = time.monotonic()
        self._drawn = False

    def __call__(self, count: int, fraction: float | None) -> None:
        now = time.monotonic()
        if self.stream is None or (now - self._last < 0.2 and fraction != 1.0):
            return
        self._last = now
        width = 30
        filled = int(width * (fraction or 0.0))
        rate = count / max(now - self.started, 1e-6)
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {100 * (fraction or 0):5.1f}% "
                          f"{count} accounts {self.verb} ({rate:,.0f}/s)")
        self.stream.flush()
        self._drawn = True

    def note(self, message: str) -> None:
        """Print a warning line (below the bar, which is redrawn at the next update)."""
        if self._drawn:
            sys.stderr.write("\n")
            self._drawn = False
        print(f"{_PROG}: warning: {message}", file=sys.stderr)

    def end(self) -> None:
        if self.stream is not None and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def _progress_stream(args: argparse.Namespace) -> IO[str] | None:
    return sys.stderr if getattr(args, "progress", False) or sys.stderr.isatty() else None


def _load_config(path: str) -> Any:
    from xmppcluster.config import ConfigError, load

    try:
        config = load(path)
    except ConfigError as e:
        print(f"{_PROG}: {e}", file=sys.stderr)
        return None
    for warning in getattr(config, "warnings", ()):
        print(f"{_PROG}: warning: {warning}", file=sys.stderr)
    return config


def import_main(args: argparse.Namespace) -> int:
    """``xmppcluster import FILE...``: 0 done (warnings possible), 1 failed, 2 bad configuration."""
    from xmppcluster.ops.admin import _react

    config = _load_config(args.config)
    if config is None:
        return 2
    return _react(lambda: _import(args, config))


async def _import(args: argparse.Namespace, config: Any) -> int:
    from xmppcluster.storage import StorageError, open_storage

    iterations = config.auth.scram_iterations
    bar = _Progress(_progress_stream(args), "read")
    report = None
    try:
        storage = await open_storage(config.user_db_uri, scram_iterations=iterations)
        try:
            report = await import_files(
                storage.db, args.files, iterations=iterations, replace=args.replace, hosts=config.virt_hosts,
                batch_size=args.batch_size, warn=bar.note,
                progress=bar)
        finally:
            bar.end()
            await storage.close()
    except (ProvisionError, StorageError, OSError) as e:
        print(f"{_PROG}: import failed: {e}", file=sys.stderr)
        return 1
    for kind, count in sorted(report.warnings.items()):
        if count > WARNINGS_SHOWN:
            print(f"{_PROG}: warning: {count} times in all: {kind}", file=sys.stderr)
    print(f"imported {report.imported} accounts ({report.replaced} replaced, {report.skipped} skipped,"
          f" {report.derived} from plaintext passwords) in {report.seconds:.1f} s: {report.rate:,.0f} accounts/s",
          file=sys.stderr)
    return 0


def export_main(args: argparse.Namespace) -> int:
    """``xmppcluster export [FILE]``: 0 done, 1 failed, 2 bad configuration."""
    from xmppcluster.ops.admin import _react

    config = _load_config(args.config)
    if config is None:
        return 2
    return _react(lambda: _export(args, config))


async def _export(args: argparse.Namespace, config: Any) -> int:
    from xmppcluster.storage import StorageError, open_storage

    bar = _Progress(_progress_stream(args), "written")
    target = Path(args.file) if args.file and args.file != "-" else None
    if target is not None and target.exists() and not args.force:
        print(f"{_PROG}: {target} exists (use --force to overwrite it)", file=sys.stderr)
        return 1
    partial = target.with_name(target.name + ".partial") if target is not None else None
    try:
        storage = await open_storage(config.user_db_uri)
        try:
            if partial is None:
                count = await export_database(storage.db, sys.stdout.buffer, domains=args.domain, progress=bar)
                sys.stdout.buffer.flush()
            else:
                # The file holds credentials: readable by its owner only (XEP-0227 Security Considerations).
                fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb", buffering=1 << 20) as out:
                    count = await export_database(storage.db, out, domains=args.domain, progress=bar)
                os.replace(partial, target)
        finally:
            bar.end()
            await storage.close()
    except (StorageError, OSError) as e:
        if partial is not None:
            partial.unlink(missing_ok=True)
        print(f"{_PROG}: export failed: {e}", file=sys.stderr)
        return 1
    print(f"exported {count} accounts" + (f" to {target}" if target else ""), file=sys.stderr)
    return 0
