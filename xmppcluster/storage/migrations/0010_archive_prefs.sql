-- Message archive preferences (XEP-0441): one row per account that set them (xmppcluster/storage/archive.py).
--
-- default_mode is always|never|roster; always_jids and never_jids are JSON arrays of JIDs (bare or full);
-- updated is when the row was written (seconds), so every node can reload what changed since it last looked.

CREATE TABLE archive_prefs (
    domain TEXT NOT NULL,
    username TEXT NOT NULL,
    default_mode TEXT NOT NULL CHECK (default_mode IN ('always', 'never', 'roster')),
    always_jids TEXT NOT NULL,
    never_jids TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (domain, username),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username) ON DELETE CASCADE
);

CREATE INDEX archive_prefs_by_update ON archive_prefs (updated);
