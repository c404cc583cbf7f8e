"""core/events.py: notify runs every handler, dispatch stops at the first that takes the event; every event
name used in xmppcluster/ is one of its constants (never a literal, never built from input); the docs'
table is the module's; modules get the modules they declare (``requires``/``uses``) at load."""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from xmppcluster.config import parse_text
from xmppcluster.core import events
from xmppcluster.core.events import (
    DISPATCH,
    MESSAGE_OFFLINE,
    NOTIFY,
    PRESENCE_BROADCAST,
    Events,
    UnknownEvent,
)
from xmppcluster.core.server import XMPPServer
from xmppcluster.modules import ModuleDependencyError, inject_dependencies, load_modules
from xmppcluster.modules.base import Module, hook

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "xmppcluster"


class EventsTests(TestCase):
    def test_notify_runs_every_handler_even_when_one_raises(self) -> None:
        ran: list[str] = []
        bus = Events()

        def broken(*args: object) -> None:
            ran.append("broken")
            raise RuntimeError("boom")

        bus.on(PRESENCE_BROADCAST, lambda *a: ran.append("first") or True, 10)
        bus.on(PRESENCE_BROADCAST, broken, 5)
        bus.on(PRESENCE_BROADCAST, lambda *a: ran.append("last"), 0)
        self.assertIsNone(bus.notify(PRESENCE_BROADCAST, "stanza", "session"))
        self.assertEqual(ran, ["first", "broken", "last"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_dispatch_stops_at_the_first_true_value_and_returns_it(self) -> None:
        ran: list[str] = []
        bus = Events()
        bus.on(MESSAGE_OFFLINE, lambda *a: ran.append("declines") or False, 20)
        bus.on(MESSAGE_OFFLINE, lambda *a: ran.append("takes") or "taken", 10)
        bus.on(MESSAGE_OFFLINE, lambda *a: ran.append("never") or True, 0)
        self.assertEqual(bus.dispatch(MESSAGE_OFFLINE, "stanza", "bare"), "taken")
        self.assertEqual(ran, ["declines", "takes"])

    def test_dispatch_without_a_taker_returns_none_and_skips_a_raising_handler(self) -> None:
        bus = Events()
        self.assertIsNone(bus.dispatch(MESSAGE_OFFLINE, "stanza", "bare"))

        def broken(*args: object) -> bool:
            raise RuntimeError("boom")

        bus.on(MESSAGE_OFFLINE, broken, 10)
        bus.on(MESSAGE_OFFLINE, lambda *a: True)
        self.assertIs(bus.dispatch(MESSAGE_OFFLINE, "stanza", "bare"), True)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_priorities_higher_first_then_in_the_order_added(self) -> None:
        ran: list[int] = []
        bus = Events()
        for number, priority in ((1, 0), (2, 100), (3, -5), (4, 100), (5, 0)):
            bus.on(PRESENCE_BROADCAST, lambda *a, n=number: ran.append(n), priority)
        bus.notify(PRESENCE_BROADCAST)
        self.assertEqual(ran, [2, 4, 1, 5, 3])

    def test_a_handler_added_while_notifying_runs_from_the_next_event_on(self) -> None:
        ran: list[str] = []
        bus = Events()

        def adds(*args: object) -> None:
            ran.append("adds")
            bus.on(PRESENCE_BROADCAST, lambda *a: ran.append("added"), -1)

        bus.on(PRESENCE_BROADCAST, adds)
        bus.notify(PRESENCE_BROADCAST)
        self.assertEqual(ran, ["adds"])

    def test_unknown_names_are_refused(self) -> None:
        self.assertRaises(UnknownEvent, Events().on, "presence/anything", lambda: None)
        self.assertRaises(UnknownEvent, hook, "presence/anything")

    def test_every_event_has_its_operation_and_documentation(self) -> None:
        self.assertTrue(events.EVENTS)
        for name, event in events.EVENTS.items():
            self.assertIn(event.op, (NOTIFY, DISPATCH), name)
            self.assertTrue(event.doc and event.fired_by and event.handled_by, name)
        constants = [v for v in vars(events).values() if isinstance(v, events.Event)]
        self.assertEqual(len(constants), len(events.EVENTS), "two constants with one name")


def _calls(tree: ast.AST) -> list[tuple[ast.Call, str]]:
    """(call, method) for every ``x.on/notify/dispatch/fire(...)``, ``hooks.add(...)`` and ``@hook(...)``."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        if isinstance(func, ast.Attribute):
            receiver = func.value.attr if isinstance(func.value, ast.Attribute) else getattr(func.value, "id", "")
            if func.attr in ("on", "notify", "dispatch", "fire") or (func.attr == "add" and receiver == "hooks"):
                # fire and hooks.add: the former API, gone; named here so that it does not come back unseen
                found.append((node, func.attr))
        elif isinstance(func, ast.Name) and func.id in ("hook", "on"):
            found.append((node, "on"))
    return found


def _constant(node: ast.expr) -> events.Event | None:
    """The events.py constant an argument names (``NAME`` or ``events.NAME``/``ev.NAME``), if any."""
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
    value = getattr(events, name, None) if name else None
    return value if isinstance(value, events.Event) else None


def _events_named(node: ast.expr) -> list[events.Event]:
    """The events an argument may be: a constant, or any value of a table of them (``TO_FULL[name]``)."""
    if isinstance(node, ast.Subscript):
        table = _constant_table(node.value)
        return list(table.values()) if table else []
    event = _constant(node)
    return [event] if event is not None else []


def _constant_table(node: ast.expr) -> dict | None:
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
    value = getattr(events, name, None) if name else None
    return value if isinstance(value, dict) and value is not events.EVENTS else None


class EventNamesTests(TestCase):
    def test_every_event_name_in_the_package_is_a_constant(self) -> None:
        problems = []
        for path in sorted(PACKAGE.rglob("*.py")):
            if path.name == "events.py" and path.parent.name == "core":
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for call, method in _calls(tree):
                where = f"{path.relative_to(ROOT)}:{call.lineno}"
                first = call.args[0]
                if isinstance(first, (ast.Constant, ast.JoinedStr, ast.BinOp)) or (
                        isinstance(first, ast.Call) and getattr(first.func, "attr", "") == "format"):
                    problems.append(f"{where}: {method}() with a name that is not a constant of core/events.py")
                    continue
                event = _constant(first)
                if event is not None and method in (NOTIFY, DISPATCH) and event.op != method:
                    problems.append(f"{where}: {method}({event}) but the event is {event.op}ed")
        self.assertEqual(problems, [])

    def test_the_table_names_everyone_who_fires_or_handles_an_event(self) -> None:
        fired: dict[str, set[str]] = {name: set() for name in events.EVENTS}
        handled: dict[str, set[str]] = {name: set() for name in events.EVENTS}
        for path in sorted(PACKAGE.rglob("*.py")):
            relative = path.relative_to(PACKAGE).as_posix()
            label = ("cluster" if relative.startswith("cluster/") else
                     path.stem if relative.startswith("modules/") else relative)
            for call, method in _calls(ast.parse(path.read_text(encoding="utf-8"))):
                for event in _events_named(call.args[0]):
                    (handled if method in ("on", "add") else fired)[event].add(label)
        for name, event in events.EVENTS.items():
            for label in fired[name]:
                self.assertIn(label, event.fired_by, f"{name} is fired by {label}")
            for label in handled[name]:
                self.assertIn(label, event.handled_by, f"{name} is handled by {label}")
            if not handled[name]:
                self.assertEqual(event.handled_by, "(none yet)", f"{name} has no handler")

    def test_the_scan_catches_literals_and_built_names(self) -> None:
        source = ('hooks.notify("presence/broadcast", s)\nself.server.hooks.dispatch(f"remote/{x}", e)\n'
                  '@hook("session/bound")\ndef f(): pass\nhooks.add("cluster/node-up", h)\n'
                  'hooks.dispatch(PRESENCE_BROADCAST, s)\n')
        calls = _calls(ast.parse(source))
        self.assertEqual([method for _, method in calls], ["notify", "dispatch", "on", "add", "dispatch"])
        self.assertEqual(_constant(calls[-1][0].args[0]), PRESENCE_BROADCAST)

    def test_the_architecture_document_lists_every_event(self) -> None:
        text = (ROOT / "docs" / "architecture.rst").read_text(encoding="utf-8")
        self.assertIn(events.table(), text, "docs/architecture.rst: paste `python -m xmppcluster.core.events`")


class _Needed(Module):
    name = "test-needed"
    inject_as = "needed"


class _Needs(Module):
    name = "test-needs"
    requires = (_Needed,)
    needed: _Needed | None = None


class DependencyTests(TestCase):
    def setUp(self) -> None:
        self.server = XMPPServer(parse_text("--virt-hosts=localhost\n"), None, None, clock=Clock())

    def test_modules_get_what_they_use(self) -> None:
        load_modules(self.server, ["jabber:iq:roster", "presence", "urn:xmpp:blocking", "msgoffline"])
        modules = self.server.modules
        self.assertIs(modules["presence"].roster, modules["jabber:iq:roster"])
        self.assertIs(modules["msgoffline"].blocking, modules["urn:xmpp:blocking"])

    def test_a_used_module_that_is_not_enabled_is_none(self) -> None:
        load_modules(self.server, ["presence", "msgoffline"])
        self.assertIsNone(self.server.modules["presence"].roster)
        self.assertIsNone(self.server.modules["msgoffline"].blocking)

    def test_a_missing_required_module_is_named(self) -> None:
        needs = _Needs(self.server)
        err = self.assertRaises(ModuleDependencyError, inject_dependencies, [needs])
        self.assertIn("test-needs requires module test-needed", str(err))
        needed = _Needed(self.server)
        inject_dependencies([needs, needed])
        self.assertIs(needs.needed, needed)
