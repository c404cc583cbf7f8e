"""A blocking server-to-server peer for protocol and attack tests: it speaks for ``origin`` to ``target``.

Like :class:`tests.clients.raw.RawClient` (which it extends) it shares no code with the server: its own
header, STARTTLS with a client certificate from the test CA, SASL EXTERNAL, raw dialback elements.
"""

from __future__ import annotations

import base64

from OpenSSL import SSL

from tests.clients.raw import SASL, STREAMS, TLS, RawClient, q

S2S_HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' "
              "xmlns:stream='http://etherx.jabber.org/streams' from='{origin}' to='{to}' version='1.0'>")
DIALBACK = "jabber:server:dialback"


class RawServer(RawClient):
    """A fake remote server: ``cert_file`` (key + certificate + chain PEM) is presented for TLS."""

    def __init__(self, port: int, origin: str, target: str, *, cert_file: str | None, ca_file: str | None,
                 direct_tls: bool = False, timeout: float = 10.0) -> None:
        self.origin = origin
        self.cert_file = cert_file
        super().__init__(port, domain=target, direct_tls=direct_tls, ca_file=ca_file, timeout=timeout)

    def _context(self) -> SSL.Context:
        context = super()._context()
        if self.cert_file:
            context.use_certificate_chain_file(self.cert_file)
            context.use_privatekey_file(self.cert_file)
        return context

    def open(self):
        self._new_parser()
        self.send(S2S_HEADER.format(origin=self.origin, to=self.domain))
        return self.until(q(STREAMS, "features"))

    def external(self, authzid: str | None = None):
        """STARTTLS (unless on TLS already), then EXTERNAL; returns <success/> or <failure/>."""
        if self.tls is None:
            self.open()
            self.starttls()
        else:
            self.open()
        token = base64.b64encode((authzid or self.origin).encode()).decode()
        self.send(f"<auth xmlns='{SASL}' mechanism='EXTERNAL'>{token}</auth>")
        result = self.next()
        if result.tag == q(SASL, "success"):
            self.open()
        return result

    def login(self) -> None:
        result = self.external()
        if result.tag != q(SASL, "success"):
            raise AssertionError(f"EXTERNAL failed: {result.tag}")


__all__ = ["DIALBACK", "TLS", "RawServer"]
