-- Offline messages (XEP-0160) and blocklists (XEP-0191), both per account and deleted with it.
--
-- offline_messages: one row per stored stanza (serialized UTF-8 XML, delay stamp included), ordered by
-- seq within an account. A delivery first claims rows (claim token + time) so that two resources, or two
-- cluster nodes, never deliver the same row twice; rows are deleted once handed to the transport, and a
-- claim left behind by a crashed node expires.

CREATE TABLE offline_messages (
    domain TEXT NOT NULL,
    username TEXT NOT NULL,
    seq BIGINT NOT NULL,
    stored_at BIGINT NOT NULL,
    sender TEXT NOT NULL,
    stanza BLOB NOT NULL,
    claim TEXT,
    claimed_at BIGINT,
    PRIMARY KEY (domain, username, seq),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username) ON DELETE CASCADE
);

-- blocklist: the JIDs an account blocks, as prepared JID text (domain, domain/resource, bare or full).
CREATE TABLE blocklist (
    domain TEXT NOT NULL,
    username TEXT NOT NULL,
    jid TEXT NOT NULL,
    PRIMARY KEY (domain, username, jid),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username) ON DELETE CASCADE
);
