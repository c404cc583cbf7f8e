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
    from xmppcluster.modules.base import Module


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


class ModuleDependencyError(ValueError):
    """An enabled module requires a module that is not enabled."""


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
    """Instantiate the enabled modules (``--sm-plugins``), or exactly ``names``, give each the modules it
    declares (``requires``, ``uses``), and add them to ``server``."""
    serving = module_domains(server.config)
    modules = []
    for name in sorted(serving) if names is None else names:
        module = available_modules()[name](server)
        module.domains = serving.get(name, server.domains)
        modules.append(module)
    inject_dependencies(modules)
    for module in modules:
        server.add_module(module)


def inject_dependencies(modules: list[Module]) -> None:
    """Set on each module the modules it ``requires`` and ``uses``, as the attribute each dependency's class
    names in ``inject_as`` (None for a used module that is not loaded). Raises
    :class:`ModuleDependencyError` when a required module is not among ``modules``."""
    for module in modules:
        wanted = [(cls, True) for cls in module.requires] + [(cls, False) for cls in module.uses]
        for cls, required in wanted:
            if not cls.inject_as:
                raise TypeError(f"module {cls.name} is a dependency of {module.name} but has no inject_as")
            found = next((other for other in modules if isinstance(other, cls)), None)
            if found is None and required:
                raise ModuleDependencyError(
                    f"module {module.name} requires module {cls.name}, which is not enabled "
                    f"(--sm-plugins, vhost-man/<domain>/sm-plugins)")
            setattr(module, cls.inject_as, found)
