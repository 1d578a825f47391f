"""Zoho's records APIs, read for backfill: what changed in a module since an instant.

``modified`` asks ``GET /{product}/{version}/{Module}`` for the records modified since a window's
start, oldest first, and stops at the first one modified after its end (If-Modified-Since has no
upper bound). ``page`` reaches only the first 2,000 records (pages 1-10); beyond, Zoho's
``next_page_token`` is followed where the version offers one, and where it does not the query
starts again from the last modification read (records repeated at that second are dropped by id),
so every version reaches every record. ``deleted`` pages through ``/{Module}/deleted?type=all``.

A 204 and a 304 both mean no records (whether If-Modified-Since can answer 304 is UNCONFIRMED).
Calls go through the account's Session, so they share the watch client's token, skew estimate and
error classes: a 429 is RateLimited, bad credentials an AuthError, and a token without read scope
for the module a MissingScope naming the scope to grant. Every row is hostile until parsed: a
row without a readable id or instant makes the page a TransientError naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from watchkeeper.model import format_instant, parse_instant
from watchkeeper.zoho.errors import AuthError, TerminalError, TransientError
from watchkeeper.zoho.session import SCOPE_MISMATCH, Session
from watchkeeper.zoho.wire import json_object, page_info, text

PER_PAGE = 200
DISCRETE_PAGES = 10
"""Pages ``page`` alone reaches (2,000 records)."""
MAX_CALLS = 600
"""Calls one query may make: 120,000 records, past Zoho's own 100,000 limit, so a server that
keeps saying ``more_records`` cannot loop forever."""
FIELDS = "Created_Time,Modified_Time"


@dataclass(frozen=True, slots=True)
class Record:
    id: str
    created_time: datetime
    modified_time: datetime


@dataclass(frozen=True, slots=True)
class DeletedRecord:
    id: str
    deleted_time: datetime


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[Any]
    more: bool
    next_token: str | None


class MissingScope(AuthError):
    """The token may watch the module but not read it: terminal for backfill, harmless to renewals."""

    def __init__(self, message: str, *, scope: str, status: int | None = None) -> None:
        super().__init__(message, code=SCOPE_MISMATCH, status=status)
        self.scope = scope


def read_scope(product: str, module: str) -> str:
    """What to grant, as Zoho spells its scopes."""
    if product == "bigin":
        return "ZohoBigin.modules.READ"
    return f"ZohoCRM.modules.READ or ZohoCRM.modules.{module.lower()}.READ"


class RecordsClient:
    """One account's records reads. Thread-safe as its Session is."""

    def __init__(self, session: Session) -> None:
        self._session = session
        endpoint = session.endpoint
        self._product = endpoint.product
        self._base = f"/{endpoint.product}/{endpoint.version}"

    def __repr__(self) -> str:
        return f"RecordsClient({self._session.base_url + self._base!r})"

    def resource_uri(self, module: str) -> str:
        """The module's URL, as Zoho's notifications carry it in ``resource_uri``."""
        return self._session.base_url + self._module_path(module)

    def modified(self, module: str, since: datetime, until: datetime) -> list[Record]:
        """Records modified at or after ``since`` (to the second) up to the first one after
        ``until``, oldest first, each id once."""
        path = self._module_path(module)
        params: dict[str, Any] = {
            "fields": FIELDS,
            "sort_by": "Modified_Time",
            "sort_order": "asc",
            "per_page": PER_PAGE,
        }
        found: dict[str, Record] = {}
        start, page, token = since, 1, None
        for _ in range(MAX_CALLS):
            where = f"GET {path} (page {page})"
            paging = {"page_token": token} if token else {"page": page}
            body = self._get(module, path, params | paging, start)
            listed = records_page(body, where)
            last: Record | None = None
            for n, row in enumerate(listed.rows):
                last = parse_record(row, f"{where} data[{n}]")
                if last.modified_time > until:
                    return list(found.values())
                found.setdefault(last.id, last)
            if not listed.more or last is None:
                return list(found.values())
            if token or page >= DISCRETE_PAGES:
                if listed.next_token:
                    token = listed.next_token
                    continue
                # start again a second before the last one read: If-Modified-Since may exclude
                # its own second, and the records it repeats are dropped by id
                restart = last.modified_time - timedelta(seconds=1)
                if restart <= start:
                    raise TerminalError(f"{where}: over 2,000 records modified in two seconds")
                start, page, token = restart, 1, None
            else:
                page += 1
        raise TransientError(f"GET {path}: still more_records after {MAX_CALLS} calls")

    def deleted(self, module: str, since: datetime) -> list[DeletedRecord]:
        """Records deleted (recycled or for good) since ``since``, as far as Zoho lists them."""
        path = self._module_path(module) + "/deleted"
        rows: dict[str, DeletedRecord] = {}
        for page in range(1, MAX_CALLS + 1):
            where = f"GET {path} (page {page})"
            params = {"type": "all", "per_page": PER_PAGE, "page": page}
            listed = records_page(self._get(module, path, params, since), where)
            for n, row in enumerate(listed.rows):
                record = parse_deleted(row, f"{where} data[{n}]")
                rows.setdefault(record.id, record)
            if not listed.more or not listed.rows:
                return list(rows.values())
        raise TransientError(f"GET {path}: still more_records after {MAX_CALLS} calls")

    def _module_path(self, module: str) -> str:
        return f"{self._base}/{quote(module, safe='')}"

    def _get(
        self, module: str, path: str, params: dict[str, Any], since: datetime
    ) -> dict[str, Any] | None:
        headers = {"If-Modified-Since": format_instant(since)}
        try:
            answer = self._session.call("GET", path, params=params, headers=headers)
        except AuthError as exc:
            if exc.code == SCOPE_MISMATCH:
                scope = read_scope(self._product, module)
                raise MissingScope(
                    f"GET {path}: HTTP {exc.status} {SCOPE_MISMATCH}: the token cannot read "
                    f"{module} (grant {scope})",
                    scope=scope,
                    status=exc.status,
                ) from None
            raise
        status, where = answer.status, f"GET {path}: HTTP {answer.status}"
        if status in (204, 304):
            return None
        if 300 <= status < 400:
            raise TransientError(f"{where} unexpected status", status=status)
        body = json_object(answer.content, where, status)
        if status < 300:
            return body
        code = text(body.get("code"))[:100] or "UNKNOWN"
        if code == SCOPE_MISMATCH:  # some versions answer it with 403
            scope = read_scope(self._product, module)
            raise MissingScope(
                f"{where} {code}: the token cannot read {module} (grant {scope})",
                scope=scope,
                status=status,
            )
        message = text(body.get("message"))[:200]
        raise TerminalError(f"{where} {code}: {message}", code=code, status=status)


# -- the codec (pure) ------------------------------------------------------------------------------


def records_page(body: dict[str, Any] | None, where: str) -> Page:
    """One page -> its rows, whether more follow, and the token to the next (None for a 204)."""
    if body is None:
        return Page([], False, None)
    rows = body.get("data")
    if not isinstance(rows, list):
        raise TransientError(f"{where}: answer has no data list")
    info, more = page_info(body, where)
    token = info.get("next_page_token")
    if token is not None and (not isinstance(token, str) or not 0 < len(token) <= 1000):
        raise TransientError(f"{where}: info.next_page_token is not a usable string")
    return Page(rows, more and bool(rows), token)


def parse_record(row: object, where: str) -> Record:
    fields = _row(row, where)
    return Record(
        _record_id(fields, where),
        _instant(fields, "Created_Time", where),
        _instant(fields, "Modified_Time", where),
    )


def parse_deleted(row: object, where: str) -> DeletedRecord:
    fields = _row(row, where)
    return DeletedRecord(_record_id(fields, where), _instant(fields, "deleted_time", where))


def _row(row: object, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise TransientError(f"{where} is not an object")
    return row


def _record_id(row: dict[str, Any], where: str) -> str:
    value = text(row.get("id"))
    if not value.isascii() or not value.isdigit() or len(value) > 19:
        raise TransientError(f"{where}.id is not a record id")
    return value


def _instant(row: dict[str, Any], key: str, where: str) -> datetime:
    value = row.get(key)
    try:
        if isinstance(value, str) and len(value) <= 40:
            return parse_instant(value)
    except (ValueError, OverflowError):
        pass
    raise TransientError(f"{where}.{key} is not an instant with an offset")
