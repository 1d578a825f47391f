"""What the store raises when a database cannot be used as it is."""

from __future__ import annotations


class StoreError(Exception):
    """The database cannot be used as it is (the message names the file, says why and what to do)."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer watchkeeper; opening it would risk its history."""


class StoreUnavailable(StoreError):
    """The database server cannot be reached now (PostgreSQL): nothing was written; try again."""


class LeaseLost(StoreError):
    """A write fenced by an account's lease found the lease gone or taken (its epoch moved on):
    nothing was written, and this instance must stop serving the account."""

    def __init__(self, account: str, epoch: int) -> None:
        super().__init__(f"lease of account {account} (epoch {epoch}) is no longer held")
        self.account = account
        self.epoch = epoch
