"""Account administration: ``xmppcluster adduser | passwd | deluser | users``.

Exit codes: 0 done; 1 the request failed (account exists, no such user, unknown domain, bad JID, no
usable password, database unreachable), each reported as one line on stderr; 2 the configuration is invalid.
Passwords come from a terminal prompt (asked twice), ``--password-stdin`` or ``--password-file``; they are
never echoed, logged or stored (only salted SCRAM credentials are).
"""

from __future__ import annotations

import argparse
import getpass
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import IO, Any

from twisted.internet import task
from twisted.internet.defer import ensureDeferred
from twisted.words.protocols.jabber.jid import JID, InvalidFormat

from xmppcluster.auth.credentials import saslprep
from xmppcluster.storage import AccountExists, NoSuchAccount, StorageError, open_storage

PROG = "xmppcluster"


class AdminError(Exception):
    """A failed request; its message is the one line printed on stderr."""


def main(args: argparse.Namespace) -> int:
    """Run one account command (``args`` from :func:`xmppcluster.ops.cli.build_parser`); returns the exit code."""
    from xmppcluster.config import ConfigError, load

    try:
        config = load(args.config)
    except ConfigError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    for warning in getattr(config, "warnings", ()):
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    return _react(lambda: run(args, config))


async def run(
    args: argparse.Namespace,
    config: Any,
    *,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """The command itself, inside a running reactor; streams are injectable for tests."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        await _COMMANDS[args.command](args, config, stdin, stdout)
    except (AdminError, StorageError) as e:
        print(f"{PROG}: {e}", file=stderr)
        return 1
    return 0


async def _adduser(args: argparse.Namespace, config: Any, stdin: IO[str], stdout: IO[str]) -> None:
    user, domain = _account(args.jid, config)
    storage = await _open(config)
    try:
        if await storage.accounts.exists(user, domain):
            raise AccountExists(f"{user}@{domain} already exists")
        limit = config.vhost(domain).max_users
        if limit and await storage.accounts.count(domain) >= limit:
            raise AdminError(f"{domain} already has its maximum of {limit} accounts (vhost option max-users)")
        await storage.accounts.create(user, domain, read_password(args, stdin))
    finally:
        await storage.close()
    print(f"created {user}@{domain}", file=stdout)


async def _passwd(args: argparse.Namespace, config: Any, stdin: IO[str], stdout: IO[str]) -> None:
    user, domain = _account(args.jid, config)
    storage = await _open(config)
    try:
        if not await storage.accounts.exists(user, domain):
            raise NoSuchAccount(f"no such user {user}@{domain}")
        await storage.accounts.set_password(user, domain, read_password(args, stdin))
    finally:
        await storage.close()
    print(f"password changed for {user}@{domain}", file=stdout)


async def _deluser(args: argparse.Namespace, config: Any, stdin: IO[str], stdout: IO[str]) -> None:
    user, domain = _account(args.jid, config)
    storage = await _open(config)
    try:
        await storage.accounts.delete(user, domain)
    finally:
        await storage.close()
    print(f"deleted {user}@{domain}", file=stdout)


async def _users(args: argparse.Namespace, config: Any, stdin: IO[str], stdout: IO[str]) -> None:
    domain = None
    if args.domain is not None:
        domain = _hosted(_parse_domain(args.domain), config)
    storage = await _open(config)
    try:
        jids = await storage.accounts.list(domain)
    finally:
        await storage.close()
    for jid in jids:
        print(jid, file=stdout)


_COMMANDS: dict[str, Callable[..., Awaitable[None]]] = {
    "adduser": _adduser,
    "passwd": _passwd,
    "deluser": _deluser,
    "users": _users,
}


async def _open(config: Any):
    return await open_storage(config.user_db_uri, scram_iterations=config.auth.scram_iterations)


def _account(text: str, config: Any) -> tuple[str, str]:
    """``(user, domain)`` of a bare JID, normalised (nodeprep/nameprep), on a hosted domain."""
    jid = _parse(text, "JID")
    if not jid.user or jid.resource is not None:
        raise AdminError(f"bad JID {text!r}: expected user@domain")
    return jid.user, _hosted(jid.host, config)


def _parse(text: str, what: str) -> JID:
    """Parse and normalise; RFC 7622 caps each part at 1023 bytes."""
    try:
        jid = JID(text) if text else None
    except (InvalidFormat, UnicodeError, ValueError) as e:
        raise AdminError(f"bad {what} {text!r}: {str(e) or 'invalid'}") from None
    if jid is None or any(len(part.encode()) > 1023 for part in (jid.user, jid.host, jid.resource) if part):
        raise AdminError(f"bad {what} {text[:80]!r}")
    return jid


def _parse_domain(text: str) -> str:
    jid = _parse(text, "domain")
    if jid.user is not None or jid.resource is not None:
        raise AdminError(f"bad domain {text!r}")
    return jid.host


def _hosted(domain: str, config: Any) -> str:
    hosted = set()
    for host in config.virt_hosts:
        try:
            hosted.add(JID(host).host)
        except (InvalidFormat, UnicodeError, ValueError):
            hosted.add(host.lower())
    if domain not in hosted:
        raise AdminError(f"unknown domain {domain} (not in --virt-hosts)")
    return domain


def read_password(args: argparse.Namespace, stdin: IO[str]) -> str:
    """The new password from ``--password-file``, ``--password-stdin`` or a terminal prompt (asked twice)."""
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                password = _first_line(f.readline())
        except (OSError, UnicodeError) as e:
            raise AdminError(f"cannot read password file {args.password_file}: {e.strerror or e}") from None
    elif args.password_stdin:
        password = _first_line(stdin.readline())
    elif stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password (again): ") != password:
            raise AdminError("passwords do not match")
    else:
        raise AdminError("no password: standard input is not a terminal; use --password-stdin or --password-file")
    try:
        prepared = saslprep(password)
    except ValueError:
        raise AdminError("password contains a character SASLprep prohibits") from None
    if not prepared:
        raise AdminError("empty password refused")
    return password


def _first_line(line: str) -> str:
    return line.rstrip("\r\n")


def _react(work: Callable[[], Awaitable[int]]) -> int:
    """Run ``work`` under ``task.react`` and return its exit code (react itself always exits)."""
    codes: list[int] = []

    async def body(reactor: Any) -> None:
        try:
            codes.append(await work())
        except Exception:
            traceback.print_exc()
            codes.append(1)

    try:
        task.react(lambda reactor: ensureDeferred(body(reactor)))
    except SystemExit as e:
        if not codes:
            return e.code if isinstance(e.code, int) else 1
    return codes[0] if codes else 1
