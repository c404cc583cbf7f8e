"""XML namespaces used across the server."""

CLIENT = "jabber:client"
STREAMS = "http://etherx.jabber.org/streams"
STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"
TLS = "urn:ietf:params:xml:ns:xmpp-tls"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
SESSION = "urn:ietf:params:xml:ns:xmpp-session"
FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
XML = "http://www.w3.org/XML/1998/namespace"
#: XEP-0280 Message Carbons; also the ``Session.data`` key of a session's carbons flag (replicated to other nodes).
CARBONS = "urn:xmpp:carbons:2"
