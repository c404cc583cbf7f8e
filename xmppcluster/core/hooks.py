"""Deprecated: the former name of :mod:`xmppcluster.core.events` (kept until every caller is converted)."""

from __future__ import annotations

from xmppcluster.core.events import OUTGOING as OUTGOING_HOOKS
from xmppcluster.core.events import Events as Hooks

__all__ = ["OUTGOING_HOOKS", "Hooks"]
