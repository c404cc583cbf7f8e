"""Synthetic XEP-0227 documents for benchmarks and import tests: ``count`` users with mutual rosters.

    python bench/xep0227.py --domain example.com --count 100000 --password secret > users.xml
    xmppcluster import users.xml

Writes the same layout as ``xmppcluster export``, so the importer sees what it sees in production.
"""

from __future__ import annotations

import argparse
import sys
from typing import IO

from xmppcluster.auth.credentials import DEFAULT_ITERATIONS, SCRAM_HASHES, derive
from xmppcluster.core.serializer import quote
from xmppcluster.ops.provision.exporter import _b64
from xmppcluster.ops.provision.model import NS_PIE, NS_ROSTER, NS_SCRAM

__all__ = ["write_synthetic"]


def write_synthetic(out: IO[bytes], domain: str, count: int, *, roster_size: int = 20, password: str | None = None,
                    plaintext: bool = False, iterations: int = DEFAULT_ITERATIONS, prefix: str = "user") -> None:
    """Write a XEP-0227 document of ``count`` users ``{prefix}{n}@{domain}`` (n from 1), each with a roster of
    the next ``roster_size`` users (mutual ``both``), for benchmarks and tests.

    Every user gets the password ``password`` (default: the user's own name): as SCRAM credentials derived
    once and shared by every user when ``password`` is given (the same salt for all: for load tests only),
    else as a plaintext ``password`` attribute (``plaintext``, or when ``password`` is None).
    """
    out.write(f"<?xml version='1.0' encoding='UTF-8'?>\n<server-data xmlns='{NS_PIE}'>\n"
              f"  <host jid={quote(domain)}>\n".encode())
    scram = ""
    if password is not None and not plaintext:
        for mechanism in SCRAM_HASHES:
            c = derive(mechanism, password, iterations=iterations)
            scram += (f"<scram-credentials xmlns='{NS_SCRAM}' mechanism='{mechanism}'><iter-count>{c.iterations}"
                      f"</iter-count><salt>{_b64(c.salt)}</salt><server-key>{_b64(c.server_key)}</server-key>"
                      f"<stored-key>{_b64(c.stored_key)}</stored-key></scram-credentials>")
    size = min(roster_size, count - 1)
    for n in range(1, count + 1):
        name = f"{prefix}{n}"
        secret = "" if scram else f" password={quote(password if password is not None else name)}"
        items = "".join(f"<item jid='{prefix}{(n - 1 + k) % count + 1}@{domain}' subscription='both'>"
                        "<group>Bench</group></item>" for k in range(1, size + 1))
        roster = f"<query xmlns='{NS_ROSTER}'>{items}</query>" if items else ""
        out.write(f"    <user name='{name}'{secret}>{scram}{roster}</user>\n".encode())
    out.write(b"  </host>\n</server-data>\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a synthetic XEP-0227 document to standard output.")
    parser.add_argument("--domain", default="example.com")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--roster-size", type=int, default=20)
    parser.add_argument("--password", help="shared SCRAM credentials for every user (default: plaintext "
                                           "passwords equal to each user's name)")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS)
    parser.add_argument("--prefix", default="user")
    args = parser.parse_args(argv)
    write_synthetic(sys.stdout.buffer, args.domain, args.count, roster_size=args.roster_size,
                    password=args.password, iterations=args.iterations, prefix=args.prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
