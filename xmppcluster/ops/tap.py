"""``twistd -n xmppcluster``: command-line options and the service they build."""

from __future__ import annotations

import sys

from twisted.application.service import IService
from twisted.python import usage

from xmppcluster.ops.cli import DEFAULT_CONFIG

#: Command-line options that override the global key of the same name in the file.
OVERRIDES = ("node-name", "virt-hosts", "user-db-uri", "cluster-mode", "cluster-nodes", "admins",
             "ssl-certs-location", "ssl-def-cert-domain")


class Options(usage.Options):
    """Options of the twistd plugin; each ``--x`` overrides the file's ``--x`` key."""

    optParameters = [["config", "c", DEFAULT_CONFIG, "init.properties file"]] + [
        [name, None, None, f"overrides --{name} from the config file"] for name in OVERRIDES
    ]

    def postOptions(self) -> None:
        from xmppcluster.config import ConfigError, load

        overrides = {f"--{name}": self[name] for name in OVERRIDES if self[name] is not None}
        try:
            self["parsed"] = load(self["config"], overrides)
        except ConfigError as err:
            # One clear line, not twistd's usage text: the operator needs file:line and the key.
            sys.stderr.write(f"xmppcluster: {err}\n")
            raise SystemExit(2) from None


def makeService(options: Options) -> IService:
    from xmppcluster.ops.service import makeService as build

    return build(options["parsed"])
