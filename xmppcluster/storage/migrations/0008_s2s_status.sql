-- What each node's federation is doing (xmppcluster s2s-status): one row per node, rewritten every few seconds
-- by xmppcluster/ops/s2s_status.py. streams is a JSON list of the node's server-to-server streams and links.
CREATE TABLE s2s_status (
    node TEXT NOT NULL PRIMARY KEY,
    updated REAL NOT NULL,
    streams TEXT NOT NULL
);
