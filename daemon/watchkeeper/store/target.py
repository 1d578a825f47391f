"""Where the store lives: a SQLite file (a Path) or a PostgreSQL database (a ``postgresql://`` URL).

The URL may carry a password, which is a secret: ``str()`` and ``repr()`` of a target never show
it, and ``secrets()`` hands it to the log redactor. Errors name the host and the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True, slots=True)
class PostgresTarget:
    url: str = field(repr=False)
    """As given, password included: only ever handed to the driver."""
    host: str
    port: int
    dbname: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        return f"postgresql://{user}{self.host}:{self.port}/{self.dbname}"

    def secrets(self) -> frozenset[str]:
        return frozenset({self.password} if self.password else ())


Target = Path | PostgresTarget


def is_url(text: str) -> bool:
    return text.partition("://")[0].lower() in SCHEMES and "://" in text


def parse_url(text: str) -> PostgresTarget:
    """A ``postgresql://[user[:password]@]host[:port]/dbname[?options]`` URL; ValueError names what
    is wrong without quoting the URL (it may hold the password)."""
    try:
        parts = urlsplit(text)
        port = parts.port or 5432
    except ValueError:
        raise ValueError("is not a valid postgresql:// URL (check the host and port)") from None
    dbname = unquote(parts.path.lstrip("/"))
    if not parts.hostname:
        raise ValueError("a postgresql:// URL needs a host (postgresql://user@host:5432/dbname)")
    if not dbname or "/" in dbname:
        raise ValueError("a postgresql:// URL needs one database name after the host (…/dbname)")
    return PostgresTarget(
        url=text,
        host=parts.hostname,
        port=port,
        dbname=dbname,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def parse(text: str, base: Path) -> Target:
    """A URL is PostgreSQL; anything else is a SQLite file, relative to ``base``."""
    return parse_url(text) if is_url(text) else base / text


def secrets(target: Target) -> frozenset[str]:
    return target.secrets() if isinstance(target, PostgresTarget) else frozenset()
