"""Feature modules. Each is one file declaring its disco features and the stanzas it handles.

Modules are discovered: every :class:`~xmppcluster.modules.base.Module` subclass with a ``name`` in a
file of this package is available; those with ``default = True`` are on unless ``--sm-plugins`` says
``-name``, the others only with ``+name``.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import Any


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
    """The module classes to load: defaults, plus ``+name``, minus ``-name`` (``--sm-plugins``)."""
    modules = available_modules()
    unknown = [n for n in (*config.sm_plugins_enabled, *config.sm_plugins_disabled) if n not in modules]
    if unknown:
        raise UnknownModule(f"--sm-plugins names unknown module(s) {', '.join(unknown)}; "
                            f"available: {', '.join(sorted(modules))}")
    return [cls for name, cls in sorted(modules.items())
            if (cls.default or name in config.sm_plugins_enabled) and name not in config.sm_plugins_disabled]
