"""``init.properties`` (the Tigase grammar) → one typed, validated :class:`Config`.

The package, one job per module:

- :mod:`~xmppcluster.config.schema`: the registry of every setting (type, default, limits, docs);
- :mod:`~xmppcluster.config.properties`: the ``java.util.Properties`` reader (located entries, ``FILE:LINE``);
- :mod:`~xmppcluster.config.builder`: entries → :class:`Config`, cross-checks, :func:`load`, :func:`parse_text`;
- :mod:`~xmppcluster.config.sections`: the typed sections consumers take (``config.limits``, ``config.bosh``...);
- :mod:`~xmppcluster.config.docs`: the settings table of ``docs/configuration.rst``
  (``python -m xmppcluster.config docs/configuration.rst`` regenerates it).

Config imports nothing else of xmppcluster (tests/test_layers.py).
"""

from xmppcluster.config.builder import (
    ClusterNode,
    Config,
    Listener,
    check_config_main,
    load,
    parse_text,
)
from xmppcluster.config.docs import settings_table, write_settings_table
from xmppcluster.config.properties import split_key
from xmppcluster.config.schema import GLOBAL, KINDS, VHOST_OPTIONS, ConfigError, Setting, register, settings
from xmppcluster.config.sections import (
    AuthSettings,
    BoshSettings,
    ClusterSettings,
    Limits,
    PeerSettings,
    Quotas,
    VhostSettings,
    WebSocketSettings,
)

__all__ = [
    "GLOBAL",
    "KINDS",
    "VHOST_OPTIONS",
    "AuthSettings",
    "BoshSettings",
    "ClusterNode",
    "ClusterSettings",
    "Config",
    "ConfigError",
    "Limits",
    "Listener",
    "PeerSettings",
    "Quotas",
    "Setting",
    "VhostSettings",
    "WebSocketSettings",
    "check_config_main",
    "load",
    "parse_text",
    "register",
    "settings",
    "settings_table",
    "split_key",
    "write_settings_table",
]
