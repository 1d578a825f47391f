"""One statement over many rows, executed a chunk of rows at a time inside the caller's transaction.

A first pass records 10,000 creations in one transaction: their parameters built at once (a dict
per row, then SQLAlchemy's processed copy of each) were the daemon's peak memory, and the heap
that peak grew stayed the daemon's for good. Rows are taken from an iterable, so a chunk's are
built only when it is sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import islice
from typing import Any

from sqlalchemy import Connection, Executable

ROWS = 500
"""Rows per execution: large enough that the statements stay few, small enough to hold."""


def execute(conn: Connection, statement: Executable, rows: Iterable[Mapping[str, Any]]) -> None:
    remaining = iter(rows)
    while chunk := list(islice(remaining, ROWS)):
        conn.execute(statement, chunk)
