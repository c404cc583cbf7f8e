-- Service administration (XEP-0133): disabled accounts and the message of the day, shared by every node.
--
-- accounts_disabled: an account with a row here cannot log in (SASL answers account-disabled once the
-- password is proven); re-enabling deletes the row; deleting the account deletes it too.
CREATE TABLE accounts_disabled (
    domain TEXT NOT NULL,
    username TEXT NOT NULL,
    disabled_at BIGINT NOT NULL,
    PRIMARY KEY (domain, username),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username) ON DELETE CASCADE
);

-- motd: the message of the day of a virtual host, sent to each session at its initial presence.
CREATE TABLE motd (
    domain TEXT NOT NULL PRIMARY KEY,
    text TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
