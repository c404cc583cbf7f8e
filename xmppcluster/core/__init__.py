"""The protocol core: router, sessions, events, stanzas, the serializer and the one hardened parser, JIDs, TLS.

Transports (``streams/``) and features (``modules/``) import from here; nothing here imports them.
"""
