-- Accounts and their salted SCRAM credentials (never a plaintext password).
-- Later per-user tables reference accounts with
--   FOREIGN KEY (domain, username) REFERENCES accounts (domain, username) ON DELETE CASCADE
-- so deleting an account deletes its data.

CREATE TABLE accounts (
    domain TEXT NOT NULL,
    username TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (domain, username)
);

CREATE TABLE account_credentials (
    domain TEXT NOT NULL,
    username TEXT NOT NULL,
    mechanism TEXT NOT NULL,
    salt BLOB NOT NULL,
    iterations INTEGER NOT NULL,
    stored_key BLOB NOT NULL,
    server_key BLOB NOT NULL,
    PRIMARY KEY (domain, username, mechanism),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username) ON DELETE CASCADE
);
