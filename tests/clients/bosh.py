"""A blocking BOSH client for protocol tests: each request may go to a different node (URL)."""

from __future__ import annotations

import ssl
import urllib.request
import xml.etree.ElementTree as ET

from tests.clients.raw import SASL, Scram, q

HTTPBIND = "http://jabber.org/protocol/httpbind"
BOSH = f"{{{HTTPBIND}}}body"


class BoshClient:
    def __init__(self, domain: str, context: ssl.SSLContext | None = None) -> None:
        """``context``: the TLS context for https URLs (its trust roots decide what verifies)."""
        self.domain = domain
        self.context = context
        self.rid = 1000
        self.sid: str | None = None
        self.created: ET.Element | None = None

    def post(self, url: str, attrs: str = "", payload: str = "", timeout: float = 15) -> ET.Element:
        self.rid += 1
        sid = f" sid='{self.sid}'" if self.sid else ""
        body = (f"<body xmlns='{HTTPBIND}' rid='{self.rid}'{sid} {attrs} "
                f"xmlns:xmpp='urn:xmpp:xbosh'>{payload}</body>")
        request = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "text/xml"})
        with urllib.request.urlopen(request, timeout=timeout, context=self.context) as answer:
            return ET.fromstring(answer.read())

    def create(self, url: str) -> ET.Element:
        self.rid = 1000
        self.created = self.post(url, f"to='{self.domain}' wait='5' hold='1' ver='1.11' xmpp:version='1.0'")
        self.sid = self.created.get("sid")
        return self.created

    def children(self, url: str, *expected: str) -> list[ET.Element]:
        """Poll until elements arrive; return them."""
        for _ in range(10):
            found = list(self.post(url))
            if found:
                return found
        raise AssertionError(f"nothing arrived (expected {expected})")

    def login(self, urls: list[str], user: str, password: str, resource: str) -> str:
        """SCRAM-SHA-1, restart, bind: request i goes to urls[i % len(urls)]."""
        step = iter(range(1000))

        def url() -> str:
            return urls[next(step) % len(urls)]

        created = self.create(url())
        if created.find(".//{urn:ietf:params:xml:ns:xmpp-sasl}mechanisms") is None:
            self.children(url(), "features")
        scram = Scram(user, password, "SCRAM-SHA-1")
        answer = self.post(url(), payload=f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'>{scram.first()}</auth>")
        challenge = answer.find(q(SASL, "challenge"))
        if challenge is None:
            raise AssertionError(ET.tostring(answer))
        answer = self.post(url(), payload=f"<response xmlns='{SASL}'>{scram.final(challenge.text)}</response>")
        if answer.find(q(SASL, "success")) is None:
            raise AssertionError(ET.tostring(answer))
        self.post(url(), "xmpp:restart='true'")
        answer = self.post(url(), payload=f"<iq xmlns='jabber:client' type='set' id='b'>"
                                          f"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                                          f"<resource>{resource}</resource></bind></iq>")
        jid = answer.find(".//{urn:ietf:params:xml:ns:xmpp-bind}jid")
        return jid.text
