-- XEP-0357 push registrations: one row per (account, app server JID, node) an account's client enabled
-- (xmppcluster/storage/push.py). Shared by every node of a cluster, so any node storing an offline message
-- can notify. options is the XEP-0004 publish-options form as serialized XML ('' when none), size-capped by
-- the module; token names the registration in notification IQ ids, so whichever node receives the app
-- server's error reply can disable it (XEP-0357 §7).

CREATE TABLE push_registrations (
    domain TEXT NOT NULL,
    username TEXT NOT NULL,
    jid TEXT NOT NULL,
    node TEXT NOT NULL,
    options TEXT NOT NULL,
    token TEXT NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (domain, username, jid, node),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username) ON DELETE CASCADE
);
