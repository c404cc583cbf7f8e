"""A blocking XEP-0114 external component for protocol and attack tests.

Like :class:`tests.clients.raw.RawClient` (which it extends) it shares no code with the server: its own
``jabber:component:accept`` header and its own handshake digest (hex SHA-1 of the stream id and the secret).
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET

from tests.clients.raw import STREAMS, RawClient, q

ACCEPT = "jabber:component:accept"
COMPONENT_HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' "
                    "xmlns:stream='http://etherx.jabber.org/streams' to='{to}'>")


class RawComponent(RawClient):
    """A component for ``domain`` connecting to the ``ext`` port ``port``."""

    def __init__(self, port: int, domain: str, *, timeout: float = 10.0) -> None:
        super().__init__(port, domain=domain, timeout=timeout)
        self.stream_id: str | None = None
        self.header: ET.Element | None = None

    def _pump(self) -> None:
        self.parser.feed(self._read())
        for event, element in self.parser.read_events():
            if event == "start":
                if self.depth == 0:
                    self.header = element
                    self.stream_id = element.get("id")
                self.depth += 1
                continue
            self.depth -= 1
            if self.depth == 0:
                self.stream_closed = True
            elif self.depth == 1:
                if element.tag == q(STREAMS, "error"):
                    self.stream_error = element
                self.pending.append(element)

    def open(self) -> str | None:
        """Send the header; the server's stream id (None when it answered with an error right away)."""
        self._new_parser()
        self.header = None
        self.send(COMPONENT_HEADER.format(to=self.domain))
        while self.header is None:
            self._pump()
        return self.stream_id

    def handshake(self, secret: str) -> ET.Element:
        """Open the stream and prove ``secret``: the server's ``<handshake/>`` (or raises Closed)."""
        self.open()
        digest = hashlib.sha1(((self.stream_id or "") + secret).encode()).hexdigest()
        self.send(f"<handshake>{digest}</handshake>")
        return self.next()


def c(name: str) -> str:
    """A tag in the component namespace."""
    return f"{{{ACCEPT}}}{name}"


__all__ = ["ACCEPT", "RawComponent", "c"]
