"""The import graph of ``xmppcluster/``: layers point one way (docs/architecture.rst, "Layers").

Every import counts, lazy ones inside functions too; only ``if TYPE_CHECKING:`` blocks are left out (they
never run). Packages are the nodes: ``core``, ``streams``, ``modules``, ``auth``, ``storage``, ``cluster``,
``config``, ``ops``, ``s2s``.
"""

from __future__ import annotations

import ast
import pathlib
from collections import defaultdict

from twisted.trial.unittest import TestCase

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "xmppcluster"

#: Package -> packages it must never import (directly or lazily).
FORBIDDEN = {
    "core": {"streams", "modules", "cluster", "ops", "storage", "s2s"},
    "streams": {"cluster", "modules", "ops", "s2s"},
    "modules": {"streams", "cluster", "ops", "s2s"},
    "auth": {"streams", "modules", "cluster", "ops", "s2s"},
    "storage": {"streams", "modules", "cluster", "ops", "core", "s2s"},
    "cluster": {"modules", "ops", "s2s"},
    "config": {"core", "streams", "modules", "auth", "storage", "cluster", "ops", "s2s"},
    "s2s": {"modules", "cluster", "ops", "storage"},
}


def layer(module: str) -> str:
    """``xmppcluster.core.router`` -> ``core``; a top-level module is its own layer."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_of(path: pathlib.Path) -> set[str]:
    """The ``xmppcluster`` modules ``path`` imports, outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("xmppcluster"):
            for alias in node.names:  # "from xmppcluster.core import jid": the module is xmppcluster.core.jid
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if module_path(candidate) is not None else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("xmppcluster"))
    return found


def module_path(module: str) -> pathlib.Path | None:
    relative = pathlib.Path(*module.split(".")[1:])
    for candidate in (PACKAGE / relative.with_suffix(".py"), PACKAGE / relative / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_graph() -> dict[str, dict[str, list[str]]]:
    """layer -> imported layer -> the imports that make the edge (``a.b -> c.d``)."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        for target in imports_of(path):
            if layer(source) != layer(target) and layer(target):
                graph[layer(source)][layer(target)].append(f"{source} -> {target}")
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Every elementary cycle's layers, found by depth-first search from each layer (the graph is tiny)."""
    found: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()

    def visit(path: list[str]) -> None:
        for nxt in graph.get(path[-1], {}):
            if nxt == path[0]:
                key = tuple(sorted(path))
                if key not in seen:
                    seen.add(key)
                    found.append([*path, nxt])
            elif nxt not in path:
                visit([*path, nxt])

    for start in list(graph):
        visit([start])
    return found


class LayerTests(TestCase):
    def test_no_forbidden_import(self) -> None:
        graph = layer_graph()
        violations = [edge for source, banned in FORBIDDEN.items()
                      for target in sorted(banned) for edge in graph.get(source, {}).get(target, [])]
        self.assertEqual(violations, [], "imports against the layering (docs/architecture.rst)")

    def test_no_cycle_between_layers(self) -> None:
        graph = layer_graph()
        found = cycles(graph)
        detail = [" -> ".join(cycle) + ": " + "; ".join(graph[cycle[0]][cycle[1]][:3]) for cycle in found]
        self.assertEqual(detail, [], "import cycles between layers")

    def test_no_top_level_modules_but_config(self) -> None:
        """Every module lives in a layer (a package); ``config`` is the one top-level exception until it is one."""
        loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "config.py"))
        self.assertEqual(loose, [])

    def test_the_checker_sees_a_violation(self) -> None:
        """A lazy import inside a function counts (the check is not blind to the usual way round it)."""
        graph = {"streams": {"cluster": ["x"]}, "cluster": {"streams": ["y"]}}
        self.assertEqual(len(cycles(graph)), 1)
        probe = PACKAGE / "streams" / "bosh.py"
        self.assertTrue(all(layer(m) for m in imports_of(probe)))


class SessionInterfaceTests(TestCase):
    def test_local_and_remote_sessions_implement_bound_session(self) -> None:
        """Every member of core.sessions.BoundSession exists on Session and on cluster's RemoteSession."""
        from xmppcluster.cluster.directory import RemoteSession
        from xmppcluster.core.sessions import BoundSession, Session

        members = {name for name in vars(BoundSession) if not name.startswith("_")}
        members |= set(BoundSession.__annotations__)
        self.assertIn("deliver_serialized", members)
        local = Session("u", "example.org", "r", object())  # type: ignore[arg-type]
        for cls in (Session, RemoteSession):
            instance = local if cls is Session else RemoteSession(None, "n", "u@example.org/r", 1)  # type: ignore[arg-type]
            missing = sorted(name for name in members
                             if not hasattr(cls, name) and name not in getattr(instance, "__dict__", {})
                             and name not in getattr(cls, "__slots__", ()))
            self.assertEqual(missing, [], cls.__name__)
