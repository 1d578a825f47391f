"""The state file -> validated desired state (DESIGN.md section 2).

A state file is applied whole or not at all, so validation collects every problem instead of
stopping at the first: an operator fixes a file in one round. Each issue names its path
(``channels[2].events[1]``; indexes count from 0, as in Zoho's json_path), the channel id where there
is one, and what would be valid. Secret values never reach a message: secret fields report types and
lengths only, and notify_url (whose query may hold a secret) is described, never quoted.

Field parsers are pure and raise ValueError; ``_Scope`` turns those into issues at the right path.
The only I/O is reading the file and resolving secret references (watchkeeper.secrets).
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import tomllib
from collections import ChainMap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar, cast, get_args
from urllib.parse import urlsplit

from watchkeeper import secrets
from watchkeeper.logs import MIN_SECRET
from watchkeeper.model import (
    ChannelSpec,
    Event,
    Product,
    canonical_json,
    parse_event,
    shared_events,
)
from watchkeeper.policy import Policy
from watchkeeper.store import target
from watchkeeper.store.target import Target
from watchkeeper.zoho.regions import (
    REGIONS,
    TTL_MARGIN,
    VERSIONS,
    Endpoint,
    check_base_url,
    is_loopback,
    max_lifetime,
)

T = TypeVar("T")
Resolver = Callable[[str], str]
Version = tuple[Product, str]
"""A valid (product, api_version): what a channel's ttl range and keys depend on."""

DAEMON_KEYS = (
    "database",
    "instance",
    "lease",
    "reconcile_every",
    "renew_window",
    "retry_initial",
    "retry_max",
    "max_delete_fraction",
    "allow_empty",
    "metrics",
    "concurrency",
)
DEFAULT_CONCURRENCY = 8
MAX_CONCURRENCY = 64
REFRESH_KEYS = ("client_id", "client_secret", "refresh_token")
CREDENTIAL_KEYS = (*REFRESH_KEYS, "access_token")
ACCOUNT_KEYS = (
    "product",
    "api_version",
    "region",
    "api_domain",
    "accounts_url",
    *CREDENTIAL_KEYS,
    "reconcile_every",
)
CHANNEL_KEYS = (
    "account",
    "channel_id",
    "name",
    "events",
    "notify_url",
    "token",
    "ttl",
    "notify_on_related_action",
    "return_affected_field_values",
    "notification_condition",
    "backfill",
)
TOP_KEYS = ("daemon", "accounts", "channels")

DEFAULT_DATABASE = "watchkeeper.db"
DEFAULT_LEASE = timedelta(seconds=60)
MIN_LEASE = timedelta(seconds=3)
MIN_TTL = timedelta(seconds=10)
MAX_TOKEN = 50
"""Zoho answers a longer channel token with INVALID_DATA, maximum_length 50 (recorded)."""
MAX_CHANNEL_ID = 2**63 - 1
CONDITION_SINCE = (6,)
"""notification_condition exists from CRM v6 on; Bigin does not document it."""


@dataclass(frozen=True, slots=True)
class AccountSpec:
    """One Zoho org to act in: where its API lives and how to authenticate (secrets resolved)."""

    name: str
    product: Product
    api_version: str
    endpoint: Endpoint
    client_id: str | None = field(default=None, repr=False)
    client_secret: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    reconcile_every: timedelta | None = None
    """Its own look interval; None: ``[daemon]``'s (which, in a state directory, another file may
    set: so it is resolved when applied, by ``DesiredState.reconcile_every``)."""

    def same_client(self, other: AccountSpec) -> bool:
        """Whether ``other`` is served by the same client: a new look interval alone needs none
        (a new client would fetch a new access token)."""
        return replace(self, reconcile_every=other.reconcile_every) == other


class Address(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class DesiredState:
    """What the state file asks for, validated, with every secret resolved."""

    path: Path
    database: Target
    """A SQLite file, or a PostgreSQL database shared by several instances (section 8)."""
    policy: Policy
    accounts: Mapping[str, AccountSpec]
    channels: tuple[ChannelSpec, ...] = field(repr=False)
    """Not in the repr: a ChannelSpec shows its token and notify_url."""
    metrics: Address | None = None
    """``[daemon].metrics``: where /metrics, /livez and /readyz listen; None, nowhere."""
    concurrency: int = DEFAULT_CONCURRENCY
    """``[daemon].concurrency``: how many accounts are served at once (each in order)."""
    instance: str | None = None
    """``[daemon].instance``: this instance's name among those sharing a database."""
    lease: timedelta = DEFAULT_LEASE
    """``[daemon].lease``: how long an account stays with an instance that went silent."""

    def reconcile_every(self, account: str) -> timedelta:
        """How often ``account`` is looked at: its own interval, else ``[daemon]``'s."""
        spec = self.accounts.get(account)
        own = spec.reconcile_every if spec is not None else None
        return self.policy.reconcile_every if own is None else own

    def secrets(self) -> frozenset[str]:
        """Every secret value, for the log redactor (which masks the short ones as whole tokens).

        A notify_url's query values shorter than MIN_SECRET are left out: the redactor masks every
        query value of every URL anyway, and outside a URL a short one is as often a word as a
        secret (``?source=crm`` must not mask every "crm" of every line). The database password
        is one (several instances on PostgreSQL)."""
        found: set[str | None] = set(target.secrets(self.database))
        for account in self.accounts.values():
            found |= {account.client_secret, account.refresh_token, account.access_token}
        for channel in self.channels:
            found |= {channel.token, urlsplit(channel.notify_url).password}
            found |= {v for v in secrets.url_secrets(channel.notify_url) if len(v) >= MIN_SECRET}
        return frozenset(value for value in found if value)


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in the state file, worded for the operator who has to fix it."""

    path: str
    """Where in the file, e.g. ``channels[2].events[1]``; empty for a problem with the whole file."""
    message: str
    channel_id: str | None = None
    line: int | None = None
    column: int | None = None
    file: str | None = None

    def __str__(self) -> str:
        where = self.file or ""
        if self.line is not None:
            where += f":{self.line}:{self.column}"
        path = self.path + (f" (channel {self.channel_id})" if self.channel_id else "")
        head = ": ".join(part for part in (where, path) if part)
        return f"{head}: {self.message}" if head else self.message


class ConfigError(Exception):
    """A state file that must not be applied; ``str()`` gives one issue a line."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(map(str, self.issues)))


def load(path: Path, *, environ: Mapping[str, str] | None = None) -> DesiredState:
    """Read, resolve and validate the state file; ConfigError lists every problem found."""
    env = os.environ if environ is None else environ
    try:
        raw = path.read_bytes()
    except OSError as exc:
        message = f"cannot read the state file ({exc.strerror})"
        raise ConfigError([ConfigIssue("", message, file=str(path))]) from None
    document = parse(raw)
    if isinstance(document, ConfigIssue):
        raise ConfigError([replace(document, file=str(path))])
    issues, state = check(document, path, environ=env)
    if state is None:
        raise ConfigError(issues)
    return state


def parse(raw: bytes) -> dict[str, Any] | ConfigIssue:
    """The file's TOML document, or the issue that makes it unreadable (no file named yet)."""
    try:
        return _parse_toml(raw)
    except RecursionError:  # `x = [[[[...` 100,000 deep: tomllib recursed
        return ConfigIssue("", "arrays or tables are nested too deeply to read")


def declared(document: Mapping[str, Any]) -> dict[str, Version | None]:
    """The accounts a document declares, each with its (product, api_version) if that is valid:
    what the channels of the other files of a state directory are checked against."""
    tables = document.get("accounts")
    if not isinstance(tables, dict):
        return {}
    return {name: _version_of(t) if isinstance(t, dict) else None for name, t in tables.items()}


def check(
    document: Mapping[str, Any],
    path: Path,
    *,
    environ: Mapping[str, str],
    outside: dict[str, Version | None] | None = None,
) -> tuple[list[ConfigIssue], DesiredState | None]:
    """A parsed file's issues (each naming the file) or its desired state, secrets resolved.

    ``outside``: the accounts the other files of a state directory declare, which this file's
    channels may name; None for a file alone, which must declare an account of its own."""
    # Cached for the file: 10,000 channels naming one token, or one notify_url, hold one string.
    resolve = functools.cache(functools.partial(secrets.resolve, environ=environ, base_dir=path.parent))
    try:
        issues, state = _build(document, path, resolve, environ.get("STATE_DIRECTORY"), outside)
    except RecursionError:  # a check below recursed into a deeply nested value
        issues, state = [ConfigIssue("", "arrays or tables are nested too deeply to read")], None
    return [replace(issue, file=str(path)) for issue in issues], state


# -- durations ---------------------------------------------------------------------------------

_DURATION_RE = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


@functools.lru_cache(maxsize=256)
def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``23h``, ``1d``, ``1h30m``: units d h m s in that order, each at most once."""
    match = _DURATION_RE.fullmatch(text) if isinstance(text, str) else None
    if not text or match is None:
        raise ValueError(f"{text!r} is not a duration like 90s, 15m, 23h, 1d or 1h30m")
    days, hours, minutes, seconds = (int(group or 0) for group in match.groups())
    try:
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:
        raise ValueError(f"duration {text!r} is too long") from None


def format_duration(delta: timedelta) -> str:
    """The inverse of parse_duration (whole seconds), for messages: ``6d23h55m``."""
    rest, parts = int(delta.total_seconds()), []
    for unit, size in _UNITS:
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


# -- TOML syntax -------------------------------------------------------------------------------

_POSITION_RE = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")


def _parse_toml(raw: bytes) -> dict[str, Any] | ConfigIssue:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = raw.count(b"\n", 0, exc.start) + 1, exc.start - raw.rfind(b"\n", 0, exc.start)
        return ConfigIssue("", "not UTF-8 text", None, line, column)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _POSITION_RE.search(message)
        if match is None:
            return ConfigIssue("", f"TOML syntax error: {message}")
        if match.group(1):
            line, column = int(match.group(1)), int(match.group(2))
        else:  # tomllib reports "end of document" without a position
            line, column = text.count("\n") + 1, len(text) - text.rfind("\n")
        return ConfigIssue("", f"TOML syntax error: {message[: match.start()]}", None, line, column)


# -- field parsers: pure, raise ValueError -----------------------------------------------------

_TOML_TYPES = ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"))


def _type_name(value: object) -> str:
    """TOML's name for a value's type, with its article: messages show types, never values."""
    kinds = (*_TOML_TYPES, (list, "an array"), (dict, "a table"))
    return next((name for kind, name in kinds if isinstance(value, kind)), "a date-time")


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"must be a non-empty string, not {'empty' if value == '' else _type_name(value)}"
        )
    return value


def _label(value: object) -> str:
    """A name people read in tables and logs: an ESC or a newline in it would forge output."""
    text = _text(value)
    if not text.isprintable():
        raise ValueError("must not contain control characters (escapes, newlines, tabs)")
    return text


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {_type_name(value)}")
    return value


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, not {_type_name(value)}")
    return float(value)


def _duration(value: object) -> timedelta:
    if not isinstance(value, str):
        raise ValueError(f'must be a duration string like "15m", not {_type_name(value)}')
    return parse_duration(value)


def _positive_duration(value: object) -> timedelta:
    delta = _duration(value)
    if delta <= timedelta(0):
        raise ValueError(f"{value!r} must be longer than 0s")
    return delta


def _choice(options: Sequence[str], what: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = _text(value)
        if text not in options:
            hint = difflib.get_close_matches(text, options, n=1)
            guess = f"did you mean {hint[0]!r}? " if hint else ""
            raise ValueError(f"{what} {text!r} is unknown; {guess}one of: {_few(options)}")
        return text

    return parse


def _few(options: Sequence[str], shown: int = 12) -> str:
    """Options for a message: a directory of 10,000 accounts must not list them all."""
    more = f" and {len(options) - shown} more" if len(options) > shown else ""
    return ", ".join(options[:shown]) + more


def _renew_window(value: object) -> tuple[float, float]:
    wanted = "two fractions [a, b] with 0 < a <= b < 1, like [0.6, 0.7]"
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"must be {wanted}")
    low, high = (_number(item) for item in value)
    if not 0 < low <= high < 1:
        raise ValueError(f"[{low}, {high}] is not {wanted}")
    return low, high


def _fraction(value: object) -> float:
    number = _number(value)
    if not 0 <= number <= 1:
        raise ValueError(f"{number} is not a fraction between 0 and 1")
    return number


def _concurrency(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be a whole number, not {_type_name(value)}")
    if not 1 <= value <= MAX_CONCURRENCY:
        raise ValueError(f"{value} is not between 1 and {MAX_CONCURRENCY}")
    return value


def _address(value: object) -> Address:
    wanted = 'a "host:port" string like "127.0.0.1:9464" or "[::1]:9464", port 1 to 65535'
    if not isinstance(value, str):
        raise ValueError(f"must be {wanted}, not {_type_name(value)}")
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address must be bracketed, or its last group reads as the port
    if not (sep and host and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{value!r} is not {wanted}")
    if any(char.isspace() or char in "[]/" for char in host):
        raise ValueError(f"{value!r} is not {wanted}")
    return Address(host, int(port))


def _channel_id(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be digits (a string or an integer), not {_type_name(value)}")
    text = str(value)
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_CHANNEL_ID:
        raise ValueError(
            f"{text!r} is not digits that fit a signed 64-bit integer (0 to {MAX_CHANNEL_ID})"
        )
    return str(int(text))  # Zoho keeps it as a long: "007" would come back as "7"


def _notify_url(url: str) -> str:
    """Described, never quoted: its query may carry a secret."""
    if any(char.isspace() or not char.isprintable() for char in url):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError("is not a URL; write https://host/path") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an https URL with a host, like https://hooks.example.com/zoho")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(f"must use https (plain http only for loopback hosts), host {parts.hostname!r}")
    return url


def _token(token: str) -> str:
    if len(token) > MAX_TOKEN:
        raise ValueError(
            f"is {len(token)} characters long once resolved; Zoho accepts at most {MAX_TOKEN}"
        )
    return token


def _secret(resolve: Resolver) -> Callable[[object], str]:
    return lambda value: resolve(_text(value))


def _base_url(what: str) -> Callable[[object], str]:
    return lambda value: check_base_url(_text(value), what)


def _version_number(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.removeprefix("v").split("."))


def _version_of(table: Mapping[str, Any]) -> Version | None:
    product, version = table.get("product", ""), table.get("api_version")
    if product in get_args(Product) and isinstance(version, str) and version in VERSIONS[product]:
        return product, version
    return None


def _ttl(value: object, version: Version | None) -> timedelta:
    """``version`` is None when the account is unknown (reported there): only the floor is checked."""
    ttl = _duration(value)
    top = max_lifetime(*version) - TTL_MARGIN if version else timedelta.max
    if MIN_TTL <= ttl <= top:
        return ttl
    allowed = f"at least {format_duration(MIN_TTL)}"
    if version:
        allowed = (
            f"{' '.join(version)} allows {format_duration(MIN_TTL)} to {format_duration(top)} (its "
            f"maximum {format_duration(top + TTL_MARGIN)} minus {format_duration(TTL_MARGIN)}: Zoho "
            "replaces a longer expiry by a 1-2 hour default)"
        )
    raise ValueError(f"ttl {value} is out of range: {allowed}")


def _condition(value: object, version: Version | None) -> str:
    if version and (version[0] != "crm" or _version_number(version[1]) < CONDITION_SINCE):
        raise ValueError(f"needs CRM v6 or later, not {' '.join(version)}")
    if not isinstance(value, list) or not value or not all(isinstance(item, dict) for item in value):
        raise ValueError("must be a non-empty array of tables (Zoho's notification_condition objects)")
    try:
        return cast(str, canonical_json(value))
    except TypeError:  # a TOML date-time: JSON has none
        raise ValueError("must hold only strings, numbers, booleans, arrays and tables") from None


# -- the issue collector -----------------------------------------------------------------------


@dataclass
class _Scope:
    """Issues found so far, and the table being read: ``get`` turns a ValueError into an issue."""

    found: list[ConfigIssue]
    path: str = ""
    channel_id: str | None = None

    def at(self, path: str) -> _Scope:
        return _Scope(self.found, self._join(path))

    def _join(self, key: str) -> str:
        return ".".join(part for part in (self.path, key) if part)

    def add(self, key: str, message: str) -> None:
        self.found.append(ConfigIssue(self._join(key), message, self.channel_id))

    def get(self, table: Mapping[str, Any], key: str, parse: Callable[[Any], T], default: T) -> T:
        if key not in table:
            return default
        try:
            return parse(table[key])
        except ValueError as exc:
            self.add(key, str(exc))
            return default

    def require(self, table: Mapping[str, Any], key: str, parse: Callable[[Any], T]) -> T | None:
        if key not in table:
            self.add(key, "is required")
            return None
        return self.get(table, key, parse, None)

    def table(self, value: object, key: str, wanted: str) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        self.add(key, f"must be {wanted}, not {_type_name(value)}")
        return {}

    def unknown_keys(self, table: Mapping[str, Any], allowed: Sequence[str]) -> None:
        for key in table:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                guess = f"did you mean {hint[0]!r}? " if hint else ""
                self.add(key, f"unknown key {key!r}; {guess}valid keys: {', '.join(allowed)}")


# -- sections ----------------------------------------------------------------------------------


def _build(
    document: Mapping[str, Any],
    path: Path,
    resolve: Resolver,
    state_directory: str | None,
    outside: dict[str, Version | None] | None,
) -> tuple[list[ConfigIssue], DesiredState | None]:
    scope = _Scope([])
    scope.unknown_keys(document, TOP_KEYS)
    daemon = scope.table(document.get("daemon", {}), "daemon", "a table ([daemon])")
    base = Path(state_directory.split(":")[0]) if state_directory else path.absolute().parent
    policy = _daemon(scope.at("daemon"), daemon)
    where = scope.at("daemon")
    default: Target = base / DEFAULT_DATABASE
    db = where.get(daemon, "database", lambda v: target.parse(resolve(_text(v)), base), default)
    metrics = where.get(daemon, "metrics", _address, None)
    concurrency = where.get(daemon, "concurrency", _concurrency, DEFAULT_CONCURRENCY)
    instance = where.get(daemon, "instance", _instance_name, None)
    lease = where.get(daemon, "lease", _lease, DEFAULT_LEASE)
    accounts, versions = _accounts(scope, document.get("accounts", {}), resolve, outside is None)
    known = versions if outside is None else ChainMap(versions, outside)  # no copy per file
    channels = _channels(scope, document.get("channels", []), known, versions or known, resolve)
    if scope.found:
        return scope.found, None
    state = DesiredState(
        path, db, policy, MappingProxyType(accounts), channels,
        metrics=metrics, concurrency=concurrency, instance=instance, lease=lease,
    )  # fmt: skip
    return [], state


def _lease(value: object) -> timedelta:
    lease = _positive_duration(value)
    if lease < MIN_LEASE:
        raise ValueError(f"must be at least {format_duration(MIN_LEASE)} (renewed every third of it)")
    return lease


def _instance_name(value: object) -> str:
    """Shown in logs and ``status``: an ESC or a newline in it would forge output."""
    text = _text(value)
    if not text or not text.isprintable():
        raise ValueError("must be a non-empty name without control characters")
    return text


def _daemon(scope: _Scope, table: Mapping[str, Any]) -> Policy:
    scope.unknown_keys(table, DAEMON_KEYS)
    base = Policy()
    policy = Policy(
        reconcile_every=scope.get(table, "reconcile_every", _positive_duration, base.reconcile_every),
        renew_window=scope.get(table, "renew_window", _renew_window, base.renew_window),
        retry_initial=scope.get(table, "retry_initial", _positive_duration, base.retry_initial),
        retry_max=scope.get(table, "retry_max", _positive_duration, base.retry_max),
        max_delete_fraction=scope.get(table, "max_delete_fraction", _fraction, base.max_delete_fraction),
        allow_empty=scope.get(table, "allow_empty", _flag, base.allow_empty),
    )
    if policy.retry_initial > policy.retry_max:
        scope.add(
            "retry_initial",
            f"{format_duration(policy.retry_initial)} is longer than retry_max "
            f"{format_duration(policy.retry_max)}; it must be at most that",
        )
    return policy


def _accounts(
    scope: _Scope, value: object, resolve: Resolver, required: bool
) -> tuple[dict[str, AccountSpec], dict[str, Version | None]]:
    """The valid accounts, and each declared account's version (None if it has no valid one): a
    channel is checked against its account's version even when the account has other problems.
    ``required``: a file alone must declare one; a file of a directory may leave it to the others."""
    tables = value if isinstance(value, dict) else {}
    if not tables and (required or not isinstance(value, dict)):
        scope.add("accounts", "at least one [accounts.NAME] table is required")
    accounts: dict[str, AccountSpec] = {}
    versions: dict[str, Version | None] = {}
    for name, item in tables.items():
        where = scope.at(f"accounts.{name if name.isprintable() else repr(name)}")
        if not name.isprintable():
            where.add("", "the account name must not contain control characters")
        table = where.table(item, "", "a table")
        versions[name] = _version_of(table)
        account = _account(where, name, table, versions[name], resolve)
        if account is not None:
            accounts[name] = account
    return accounts, versions


def _account(
    scope: _Scope, name: str, table: Mapping[str, Any], version: Version | None, resolve: Resolver
) -> AccountSpec | None:
    """``version`` is the table's (product, api_version) when that pair is valid."""
    before = len(scope.found)
    scope.unknown_keys(table, ACCOUNT_KEYS)
    product = scope.require(table, "product", _choice(get_args(Product), "product"))
    api_version = scope.require(table, "api_version", _text)
    if product and api_version and version is None:
        known = ", ".join(VERSIONS[cast(Product, product)])
        scope.add("api_version", f"{product} {api_version!r} is not supported (one of: {known})")
    region = scope.get(table, "region", _choice(tuple(REGIONS), "region"), "com")
    api_domain = scope.get(table, "api_domain", _base_url("api_domain"), None)
    accounts_url = scope.get(table, "accounts_url", _base_url("accounts_url"), None)
    creds = {key: scope.get(table, key, _secret(resolve), None) for key in CREDENTIAL_KEYS}
    _credentials_complete(scope, table)
    every = scope.get(table, "reconcile_every", _positive_duration, None)
    if len(scope.found) > before or version is None:
        return None
    endpoint = Endpoint.resolve(version[0], version[1], region, api_domain, accounts_url)
    return AccountSpec(
        name, endpoint.product, endpoint.version, endpoint, **creds, reconcile_every=every
    )


def _credentials_complete(scope: _Scope, table: Mapping[str, Any]) -> None:
    """Either a fixed access_token alone, or the three keys that let watchkeeper refresh one."""
    given = [key for key in REFRESH_KEYS if key in table]
    if "access_token" in table:
        if given:
            scope.add(
                "access_token",
                f"cannot be combined with {', '.join(given)}: give access_token alone, "
                "or client_id + client_secret + refresh_token",
            )
    elif not given:
        scope.add("", "no credentials: give client_id + client_secret + refresh_token, or access_token")
    else:
        for key in REFRESH_KEYS:
            if key not in table:
                scope.add(key, f"is required with {', '.join(given)} (or give access_token alone)")


def _channels(
    scope: _Scope,
    value: object,
    versions: Mapping[str, Version | None],
    own: Mapping[str, object],
    resolve: Resolver,
) -> tuple[ChannelSpec, ...]:
    """``versions``: every account a channel may name; ``own``: those it may leave unnamed when
    there is one (the file's own accounts, or all of them if the file declares none)."""
    if not isinstance(value, list):
        scope.add("channels", f"must be an array of tables ([[channels]]), not {_type_name(value)}")
        return ()
    specs: list[ChannelSpec] = []
    seen: dict[tuple[str, str], int] = {}
    for index, item in enumerate(value):
        where = scope.at(f"channels[{index}]")
        table = where.table(item, "", "a table ([[channels]])")
        where.channel_id = where.require(table, "channel_id", _channel_id)
        account = _channel_account(where, table, versions, own)
        if where.channel_id and account:
            first = seen.setdefault((account, where.channel_id), index)
            if first != index:
                where.add(
                    "channel_id", f"duplicate in account {account!r}: channels[{first}] has it too"
                )
        spec = _channel(where, table, account, versions.get(account) if account else None, resolve)
        if spec is not None:
            specs.append(spec)
    return tuple(specs)


def _channel(
    scope: _Scope,
    table: Mapping[str, Any],
    account: str | None,
    version: Version | None,
    resolve: Resolver,
) -> ChannelSpec | None:
    """``version`` is None when ``account`` is missing, unknown or has no valid version."""
    before = len(scope.found)
    scope.unknown_keys(table, CHANNEL_KEYS)
    secret = _secret(resolve)
    events = _events(scope, table)
    notify_url = scope.require(table, "notify_url", lambda value: _notify_url(secret(value)))
    token = scope.get(table, "token", lambda value: _token(secret(value)), None)
    ttl = scope.get(table, "ttl", lambda value: _ttl(value, version), None)
    label = scope.get(table, "name", _label, None)
    related = scope.get(table, "notify_on_related_action", _flag, False)
    affected = scope.get(table, "return_affected_field_values", _flag, False)
    backfill = scope.get(table, "backfill", _flag, False)
    condition = scope.get(
        table, "notification_condition", lambda value: _condition(value, version), None
    )
    channel_id = scope.channel_id
    if len(scope.found) > before or not (account and version and channel_id and notify_url):
        return None
    return ChannelSpec(
        account=account,
        channel_id=channel_id,
        events=events,
        notify_url=notify_url,
        ttl=max_lifetime(*version) - TTL_MARGIN if ttl is None else ttl,
        name=label,
        token=token,
        notify_on_related_action=related,
        return_affected_field_values=affected,
        notification_condition=condition,
        backfill=backfill,
    )


def _channel_account(
    scope: _Scope, table: Mapping[str, Any], names: Mapping[str, object], own: Mapping[str, object]
) -> str | None:
    """Optional when ``own`` is a single account; with none, ``accounts`` already carries the error.
    Mappings, not lists: a directory's 10,000 accounts are looked up, never scanned."""

    def known(value: object) -> str:
        text = _text(value)
        return text if text in names else _choice(list(names), "account")(text)

    if "account" in table:
        return scope.get(table, "account", known, None) if names else None
    if len(own) > 1:
        scope.add("account", f"is required when there are several accounts (one of: {_few(list(own))})")
    return next(iter(own)) if len(own) == 1 else None


def _events(scope: _Scope, table: Mapping[str, Any]) -> frozenset[Event]:
    value = table.get("events")
    if not isinstance(value, list) or not value:
        wanted = 'a non-empty array of "Module.op" strings, like ["Deals.all"]'
        scope.add("events", f"is required: {wanted}" if value is None else f"must be {wanted}")
        return frozenset()
    events: set[Event] = set()
    for index, item in enumerate(value):
        try:
            events |= parse_event(_text(item))
        except ValueError as exc:
            scope.add(f"events[{index}]", str(exc))
    return shared_events(frozenset(events))
