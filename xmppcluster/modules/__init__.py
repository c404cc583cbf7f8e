"""Feature modules. Each is one file declaring its disco features and the stanzas it handles.

Modules are discovered: every :class:`~xmppcluster.modules.base.Module` subclass with a ``name`` in a
file of this package is available; those with ``default = True`` are on unless ``--sm-plugins`` says
``-name``, the others only with ``+name``.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xmppcluster.core.server import XMPPServer


@cache
def available_modules() -> dict[str, type]:
    """Module name (as used in ``--sm-plugins``) -> class."""
    from xmppcluster.modules.base import Module

    found: dict[str, type] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, Module) and value is not Module
                    and value.__module__ == module.__name__ and value.name):
                found[value.name] = value
    return found


class UnknownModule(ValueError):
    """``--sm-plugins`` names a module that does not exist."""


def enabled_modules(config: Any) -> list[type]:
    """The module classes to load: defaults, plus ``+name``, minus ``-name`` (``--sm-plugins``), plus any
    module a vhost enables for itself (``vhost-man/<domain>/sm-plugins``)."""
    return [available_modules()[name] for name in sorted(module_domains(config))]


def module_domains(config: Any) -> dict[str, frozenset[str]]:
    """Module name -> the vhosts it serves, for every module that serves at least one."""
    modules = available_modules()
    per_domain = {domain: config.vhost_modules(domain) for domain in config.virt_hosts}
    named = [*config.sm_plugins_enabled, *config.sm_plugins_disabled]
    for enabled, disabled in per_domain.values():
        named += enabled + disabled
    unknown = sorted({n for n in named if n not in modules})
    if unknown:
        raise UnknownModule(f"--sm-plugins names unknown module(s) {', '.join(unknown)}; "
                            f"available: {', '.join(sorted(modules))}")
    result: dict[str, frozenset[str]] = {}
    for name, cls in modules.items():
        on = (cls.default or name in config.sm_plugins_enabled) and name not in config.sm_plugins_disabled
        domains = frozenset(d for d, (enabled, disabled) in per_domain.items()
                            if name in enabled or (on and name not in disabled))
        if domains:
            result[name] = domains
    return result


def load_modules(server: XMPPServer, names: list[str] | None = None) -> None:
    """Instantiate the enabled modules (``--sm-plugins``), or exactly ``names``, and add them to ``server``."""
    serving = module_domains(server.config)
    for name in sorted(serving) if names is None else names:
        module = available_modules()[name](server)
        module.domains = serving.get(name, server.domains)
        server.add_module(module)
