-- Rosters (RFC 6121 §2) and subscription state (RFC 6121 §3, Appendix A).
--
-- roster_versions: one counter per account, bumped on every visible roster change (XEP-0237 'ver').
-- roster_items: what the user sees. subscription is none|to|from|both; ask = 1 is "Pending Out";
--   approved = 1 is a subscription pre-approval (RFC 6121 §3.4); group_names is a JSON array of strings.
-- roster_pending: "Pending In": a contact's subscription request not yet answered, kept (as the stanza
--   text) so it is delivered again at the user's next available presence. Not part of the visible roster:
--   a request from a stranger creates no roster item.

CREATE TABLE roster_versions (
    domain TEXT NOT NULL,
    username TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (domain, username),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username) ON DELETE CASCADE
);

CREATE TABLE roster_items (
    domain TEXT NOT NULL,
    username TEXT NOT NULL,
    contact TEXT NOT NULL,
    name TEXT,
    subscription TEXT NOT NULL DEFAULT 'none' CHECK (subscription IN ('none', 'to', 'from', 'both')),
    ask INTEGER NOT NULL DEFAULT 0,
    approved INTEGER NOT NULL DEFAULT 0,
    group_names TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (domain, username, contact),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username) ON DELETE CASCADE
);

CREATE TABLE roster_pending (
    domain TEXT NOT NULL,
    username TEXT NOT NULL,
    contact TEXT NOT NULL,
    stanza TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (domain, username, contact),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username) ON DELETE CASCADE
);
