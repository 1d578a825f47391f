"""What the store raises when a database cannot be used as it is."""

from __future__ import annotations


class StoreError(Exception):
    """The database cannot be used as it is (the message names the file, says why and what to do)."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer watchkeeper; opening it would risk its history."""
