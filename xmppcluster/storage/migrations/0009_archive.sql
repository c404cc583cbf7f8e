-- Message archive (XEP-0313 MAM): one row per archived message per account (xmppcluster/storage/archive.py).
--
-- id is the XEP-0359 stanza-id the server stamped (random, unique per account); ts the archive time in
-- microseconds since the epoch, strictly increasing per node; (ts, id) orders an archive. with_jid is the
-- bare JID of the other party, with_resource its resource ('' if none); direction 'in' (received by the
-- account) or 'out' (sent by it); stanza the message as UTF-8 XML. Rows go with the account.

CREATE TABLE archive (
    domain TEXT NOT NULL,
    username TEXT NOT NULL,
    id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    with_jid TEXT NOT NULL,
    with_resource TEXT NOT NULL,
    direction TEXT NOT NULL,
    stanza BLOB NOT NULL,
    PRIMARY KEY (domain, username, id),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username) ON DELETE CASCADE
);

CREATE INDEX archive_by_time ON archive (domain, username, ts, id);

CREATE INDEX archive_by_with ON archive (domain, username, with_jid, ts, id);
