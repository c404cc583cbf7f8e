"""What a feature module is: disco features, IQ handlers, hooks and stream features, declared in one place."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.words.xish import domish

from xmppcluster.core.events import EVENTS, UnknownEvent
from xmppcluster.core.stanza import StanzaError

__all__ = ["Module", "StanzaError", "hook", "iq"]

if TYPE_CHECKING:
    from xmppcluster.core.server import XMPPServer
    from xmppcluster.streams.core import ClientStream


def iq(type: str, namespace: str, *, to: tuple[str, ...] = ("server",)) -> Callable:
    """Mark a method as the handler of ``<iq type=type><x xmlns=namespace/></iq>``.

    ``to`` names the addressees it serves: ``"server"`` (the domain) and/or ``"account"`` (a bare JID,
    including a stanza without ``to``, which RFC 6120 §10.3 addresses to the sender's own account).
    The handler gets ``(request, sender)`` and returns the reply element, None (empty result), or a Deferred/coroutine.
    """

    def mark(fn: Callable) -> Callable:
        fn.__dict__.setdefault("_iq", []).append((type, namespace, to))
        return fn

    return mark


def hook(event: str, priority: int = 0) -> Callable:
    """Mark a method as a handler of ``event``, a constant of :mod:`xmppcluster.core.events` (higher
    ``priority`` runs first)."""
    if event not in EVENTS:
        raise UnknownEvent(f"{event!r} is not an event of xmppcluster/core/events.py")

    def mark(fn: Callable) -> Callable:
        fn.__dict__.setdefault("_hook", []).append((event, priority))
        return fn

    return mark


class Module:
    """Base class of feature modules. Subclasses declare, the server wires."""

    #: Name used in ``--sm-plugins`` to switch the module on or off.
    name: str = ""
    #: On unless ``--sm-plugins`` says ``-name``; otherwise only with ``+name``.
    default: bool = True
    #: Disco features (XEP-0030) this module adds to the server's disco#info.
    features: tuple[str, ...] = ()
    #: Disco features this module adds to an account's disco#info.
    account_features: tuple[str, ...] = ()
    #: Module classes this one cannot work without. At load each is injected as the attribute its class
    #: names in ``inject_as``; loading fails (:class:`~xmppcluster.modules.ModuleDependencyError`) when one is
    #: not enabled.
    requires: tuple[type[Module], ...] = ()
    #: Module classes this one uses when they are enabled: injected the same way, None when they are not.
    uses: tuple[type[Module], ...] = ()
    #: The attribute under which the modules that require or use this one get it.
    inject_as: str = ""

    def __init__(self, server: XMPPServer) -> None:
        self.server = server
        self.config = server.config
        self.log = Logger(namespace=f"xmppcluster.modules.{self.name}")
        #: The vhosts this module serves (``--sm-plugins`` and ``vhost-man/<domain>/sm-plugins``).
        self.domains: frozenset[str] = frozenset(server.domains)

    def serves(self, domain: str | None) -> bool:
        """Whether the module is active for ``domain`` (IQs to a domain it does not serve get
        ``service-unavailable``, and disco leaves its features out)."""
        return domain in self.domains

    def handlers(self) -> list[tuple[str, Any, Callable]]:
        """The (kind, key, bound method) triples declared with @iq and @hook."""
        found = []
        for attr in dir(type(self)):
            fn = getattr(type(self), attr, None)
            if not callable(fn):
                continue
            for spec in getattr(fn, "_iq", ()):
                found.append(("iq", spec, getattr(self, attr)))
            for spec in getattr(fn, "_hook", ()):
                found.append(("hook", spec, getattr(self, attr)))
        return found

    def stream_features(self, stream: ClientStream, stage: str) -> list[domish.Element]:
        """Extra stream features at ``stage`` (``"pre-auth"`` or ``"bound"``)."""
        return []

    @staticmethod
    def target(request: domish.Element, sender: Any) -> str:
        """The bare JID a request is addressed to (its ``to``, or the sender's own account)."""
        to = request.getAttribute("to")
        if to is None:
            return sender.bare
        return to.split("/", 1)[0]

    def start(self) -> None:
        """Called once the server is running (storage open)."""

    def stop(self) -> None:
        """Called when the server stops."""
