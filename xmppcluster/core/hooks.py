"""Named events with prioritised handlers: how modules extend routing without the core naming them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

log = Logger()

Handler = Callable[..., Any]

#: Hook fired for each stanza a client sends: a fixed name per stanza kind, never built from input.
OUTGOING_HOOKS = {"message": "message/outgoing", "presence": "presence/outgoing", "iq": "iq/outgoing"}


class Hooks:
    """``fire(name, ...)`` calls handlers, highest priority first, until one returns a true value."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[tuple[int, int, Handler]]] = {}
        self._added = 0

    def add(self, name: str, handler: Handler, priority: int = 0) -> None:
        self._added += 1
        handlers = self._handlers.setdefault(name, [])
        handlers.append((-priority, self._added, handler))
        handlers.sort(key=lambda entry: entry[:2])

    def fire(self, name: str, *args: Any) -> bool:
        """Run the handlers of ``name``; True when one of them handled the event."""
        for _, _, handler in self._handlers.get(name, ()):
            try:
                if handler(*args):
                    return True
            except Exception:
                log.failure("hook {name} handler {handler!r} failed", name=name, handler=handler)
        return False
