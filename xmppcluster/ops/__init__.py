"""Operations: service wiring, the command line, accounts, provisioning, reloads, host-meta, the HTTP site."""
