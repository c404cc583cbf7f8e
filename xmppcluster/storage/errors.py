"""Storage exceptions (re-exported by :mod:`xmppcluster.storage`)."""

from __future__ import annotations


class StorageError(Exception):
    """A storage operation failed in a way the caller can report in one line."""


class AccountExists(StorageError):
    """The account being created already exists."""


class NoSuchAccount(StorageError):
    """The account does not exist."""
