"""``xmppcluster [--config FILE] COMMAND``: the admin command line.

Each command lives with the code it administers; this module only parses arguments and dispatches.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_CONFIG = "etc/init.properties"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xmppcluster", description="Administer an xmppcluster server.")
    parser.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="init.properties file (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, help_text in (("adduser", "create an account"), ("passwd", "change an account's password")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("jid", help="user@domain")
        source = sub.add_mutually_exclusive_group()
        source.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
        source.add_argument("--password-file", metavar="F", help="read the password from the first line of F")

    sub = commands.add_parser("deluser", help="delete an account and its data")
    sub.add_argument("jid", help="user@domain")

    sub = commands.add_parser("users", help="list accounts")
    sub.add_argument("domain", nargs="?", help="only this domain")

    sub = commands.add_parser("import", help="import accounts and their data from XEP-0227 files")
    sub.add_argument("files", nargs="+", metavar="FILE", help="XEP-0227 file, or a directory of *.xml files")
    sub.add_argument("--replace", action="store_true", help="overwrite accounts that exist (default: skip them)")
    sub.add_argument("--progress", action="store_true", help="show progress even when stderr is not a terminal")
    sub.add_argument("--batch-size", type=int, default=500, metavar="N", help="accounts per transaction")

    sub = commands.add_parser("export", help="export accounts and their data as XEP-0227")
    sub.add_argument("file", nargs="?", metavar="FILE", help="output file (default: standard output)")
    sub.add_argument("--domain", action="append", metavar="D", help="only this domain (repeatable)")
    sub.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    sub.add_argument("--progress", action="store_true", help="show progress even when stderr is not a terminal")

    sub = commands.add_parser("gencert", help="write a self-signed certificate for NAME(s)")
    sub.add_argument("names", nargs="+", metavar="NAME", help="DNS names; the first names the file")
    sub.add_argument("--out", metavar="FILE", help="output PEM (default: <certs>/<first name>.pem)")
    sub.add_argument("--force", action="store_true", help="overwrite an existing file")

    sub = commands.add_parser("reload-certs", help="make the running server re-read its certificates (SIGHUP)")
    sub.add_argument("--pidfile", metavar="FILE", help="the server's pid file (default: ./twistd.pid)")
    sub.add_argument("--force", action="store_true", help="signal even if the pid does not look like the server")

    commands.add_parser("cluster-status", help="show the cluster's nodes, links and sessions")
    commands.add_parser("s2s-status", help="show every node's server-to-server streams (federation)")

    sub = commands.add_parser("install-webchat", help="install the web chat's Converse.js files (needs npm)")
    sub.add_argument("--webchat-dir", metavar="DIR", help="where (default: --webchat-dir of the configuration)")

    sub = commands.add_parser("check-config", help="validate the configuration and print the listeners")
    sub.add_argument("file", nargs="?", help="file to check (default: --config)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        from xmppcluster.config import check_config_main

        return check_config_main(args.file or args.config)
    if args.command == "cluster-status":
        from xmppcluster.cluster.status import cluster_status_main

        return cluster_status_main(args.config)
    if args.command == "s2s-status":
        from xmppcluster.ops.s2s_status import s2s_status_main

        return s2s_status_main(args.config)
    if args.command == "gencert":
        from xmppcluster.core.tls import gencert_main

        return gencert_main(args.config, args.names, out=args.out, force=args.force)
    if args.command in ("import", "export"):
        from xmppcluster.ops import provision

        return provision.import_main(args) if args.command == "import" else provision.export_main(args)
    if args.command == "install-webchat":
        from xmppcluster.ops.webchat import install_main

        return install_main(args.config, args.webchat_dir)
    if args.command == "reload-certs":
        from xmppcluster.ops.reload import reload_certs_main

        return reload_certs_main(args.pidfile, force=args.force)
    from xmppcluster.ops import admin

    return admin.main(args)


if __name__ == "__main__":
    sys.exit(main())
