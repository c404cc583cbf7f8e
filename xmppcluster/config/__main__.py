"""``python -m xmppcluster.config [docs/configuration.rst]``: print the settings table, or update it in place."""

import sys

from xmppcluster.config.docs import settings_table, write_settings_table

if len(sys.argv) > 1:
    write_settings_table(sys.argv[1])
else:
    sys.stdout.write(settings_table())
