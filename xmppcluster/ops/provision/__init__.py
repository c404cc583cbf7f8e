"""Bulk provisioning in the XEP-0227 portable format: ``xmppcluster import FILE...`` and ``export [FILE]``.

Import streams the file(s) through the server's hardened XML parser (no DOCTYPE, DTD or entity references;
one ``<user/>`` subtree in memory at a time, under size caps), turns each user into rows, and writes them in
batches (``executemany``, one transaction per batch) while the next batch is parsed. Plaintext passwords
are turned into SCRAM-SHA-1 and SCRAM-SHA-256 credentials on a thread pool (PBKDF2 releases the GIL);
SCRAM credentials are stored as they are. Export writes accounts in a canonical order (hosts, then users,
by code point; see :func:`export_database`), one page of accounts at a time, so that export -> import ->
export is byte-identical. See ``docs/provisioning.rst``.

One job per module: :mod:`.reader` (files -> ``<user/>`` elements), :mod:`.model` (a ``<user/>`` ->
:class:`Account`), :mod:`.importer` (accounts -> database, batched), :mod:`.exporter` (database -> document),
:mod:`.cli` (the two commands). The synthetic-data generator for benchmarks is ``bench/xep0227.py``.
"""

from xmppcluster.ops.provision.cli import export_main, import_main
from xmppcluster.ops.provision.exporter import export_database
from xmppcluster.ops.provision.importer import BATCH_SIZE, ImportReport, import_files
from xmppcluster.ops.provision.model import Account, ProvisionError, account_from_element
from xmppcluster.ops.provision.reader import iter_users

__all__ = [
    "BATCH_SIZE",
    "Account",
    "ImportReport",
    "ProvisionError",
    "account_from_element",
    "export_database",
    "export_main",
    "import_files",
    "import_main",
    "iter_users",
]
