-- Cluster membership: each node heartbeats its row; discovery ignores stale rows; a node deletes its
-- own row on a clean stop. `secret` is set only in discovery mode (no --cluster-nodes): the shared
-- database is then the trust anchor for link authentication, as in Tigase's tig_cluster_nodes.
CREATE TABLE cluster_nodes (
    name TEXT NOT NULL PRIMARY KEY,
    address TEXT,
    port INTEGER,
    secret TEXT,
    started_at DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL,
    sessions INTEGER NOT NULL,
    links TEXT NOT NULL
);
