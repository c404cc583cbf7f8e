"""Federation (RFC 6120 server-to-server): finding, reaching and authenticating remote domains."""
