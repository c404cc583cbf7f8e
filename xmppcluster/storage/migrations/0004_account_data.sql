-- Per-account data of the base modules: vCard (XEP-0054), private XML (XEP-0049), last logout (XEP-0012).
-- XML is stored as serialized text; deleting the account deletes its rows (ON DELETE CASCADE).

CREATE TABLE vcards (
    domain TEXT NOT NULL,
    username TEXT NOT NULL,
    vcard TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (domain, username),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username) ON DELETE CASCADE
);

CREATE TABLE private_storage (
    domain TEXT NOT NULL,
    username TEXT NOT NULL,
    namespace TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (domain, username, namespace),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username) ON DELETE CASCADE
);

CREATE TABLE last_activity (
    domain TEXT NOT NULL,
    username TEXT NOT NULL,
    seconds BIGINT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (domain, username),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username) ON DELETE CASCADE
);
