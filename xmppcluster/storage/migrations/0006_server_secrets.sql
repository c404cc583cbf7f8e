-- Random secrets shared by every node of a cluster (e.g. the SASL fake-salt key for unknown accounts),
-- created on first use by xmppcluster/storage/secrets.py.
CREATE TABLE server_secrets (
    name TEXT NOT NULL PRIMARY KEY,
    value BLOB NOT NULL
);
