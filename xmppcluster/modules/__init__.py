"""Feature modules. Each is one file declaring its disco features and the stanzas it handles.

``MODULES`` maps the name used in ``--sm-plugins`` to the class; ``DEFAULT`` lists those on by default.
"""

from __future__ import annotations

from typing import Any

MODULES: dict[str, str] = {}

#: Modules enabled when ``--sm-plugins`` does not say otherwise.
DEFAULT: tuple[str, ...] = ()


def enabled_modules(config: Any) -> list[str]:
    """DEFAULT, plus ``+name`` and minus ``-name`` entries of ``--sm-plugins``; unknown names are config errors."""
    enable, disable = config.sm_plugins_enabled, config.sm_plugins_disabled
    names = [n for n in DEFAULT if n not in disable]
    names.extend(n for n in enable if n not in names)
    return [n for n in names if n in MODULES]
