"""Rendering the settings table of ``docs/configuration.rst`` from the registry.

``python -m xmppcluster.config docs/configuration.rst`` rewrites the table between its markers;
tests/test_config.py checks that the committed page matches.
"""

from __future__ import annotations

from typing import Any

from xmppcluster.config.schema import KINDS, Setting, _num, settings

__all__ = ["settings_table", "write_settings_table"]


def _render_default(setting: Setting) -> str:
    if setting.default_doc is not None:
        return setting.default_doc
    value = setting.default
    if value is None:
        return "(unset)"
    if isinstance(value, list):
        return ",".join(_render_scalar(v) for v in value) if value else "(empty)"
    return _render_scalar(value)


def _render_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def settings_table() -> str:
    """The reStructuredText table of every registered setting (pasted into docs/configuration.rst)."""
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 34 8 14 44",
        "",
        "   * - Key",
        "     - Type",
        "     - Default",
        "     - Meaning",
    ]
    for s in settings():
        meaning = s.doc
        if s.choices and "``" not in meaning:
            meaning += " One of: " + ", ".join(s.choices) + "."
        limits = [f"minimum {_num(s.minimum)}"] if s.minimum is not None and "ports" not in s.key else []
        if s.maximum is not None and "ports" not in s.key:
            limits.append(f"maximum {_num(s.maximum)}")
        if limits:
            meaning += " (" + ", ".join(limits) + ")"
        lines += [
            f"   * - ``{s.name}``",
            f"     - ``[{s.kind}]`` {KINDS[s.kind]}",
            f"     - ``{_render_default(s)}``",
            f"     - {meaning}",
        ]
    return "\n".join(lines) + "\n"


def write_settings_table(path: str) -> None:
    """Replace the generated table between the ``BEGIN``/``END settings-table`` markers of ``path``."""
    with open(path, encoding="utf-8") as source:
        text = source.read()
    begin, end = ".. BEGIN settings-table\n\n", "\n.. END settings-table"
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    with open(path, "w", encoding="utf-8") as out:
        out.write(head + begin + settings_table() + end + tail)
