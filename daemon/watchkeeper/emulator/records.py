"""The records an org holds, per product and module, and Zoho's two read APIs over them
(zoho-api.md section 9), for the backfill to query and for tests to know the full truth.

``GET /{product}/{v}/{Module}``: ``fields`` mandatory, ``per_page`` at most 200, ``sort_by`` id,
Created_Time or Modified_Time (default id), ``sort_order`` (default desc), ``If-Modified-Since``
(records modified after it), ``page`` up to 10 (2,000 records) and beyond that ``page_token`` from
``info.next_page_token``, bound to the query and alive 24 h. ``GET /{...}/{Module}/deleted``:
``type`` all, recycle or permanent, ``page``/``per_page``, ``If-Modified-Since``, newest first
(UNCONFIRMED). Both answer 204 when nothing matches.

UNCONFIRMED and switchable (Options): ``records_empty`` answers an empty query that carried
If-Modified-Since with 304 instead of 204; ``page_tokens`` says which versions hand out page tokens
(``"v5+"``, the default: CRM v5 and later; ``"all"``; ``"none"``).

Times are whole seconds, like Zoho's. An edit of a record the store never saw created it at the
store's origin (the first instant it was used), so an edit is never mistaken for an insert.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from watchkeeper.emulator import responses as r
from watchkeeper.emulator.catalog import MAX_LIFETIME
from watchkeeper.emulator.formats import Product, format_expiry, parse_expiry
from watchkeeper.emulator.options import Options

RecordOp = Literal["create", "edit", "delete"]

_PATH_RE = re.compile(r"^/(crm|bigin)/(v\d+(?:\.\d+)?)/([A-Za-z][A-Za-z0-9_]*)(/deleted)?/?$")
MAX_PER_PAGE = 200
DISCRETE_PAGES = 10
MAX_RECORDS = 100_000
TOKEN_LIFETIME = timedelta(hours=24)
SORT_FIELDS = {"id": "id", "Created_Time": "created", "Modified_Time": "modified"}
DELETED_TYPES = frozenset({"all", "recycle", "permanent"})


@dataclass(frozen=True, slots=True)
class Record:
    id: str
    created: datetime
    modified: datetime


@dataclass(frozen=True, slots=True)
class Deleted:
    id: str
    deleted: datetime
    type: str = "recycle"


@dataclass(frozen=True, slots=True)
class Change:
    """One record change, as it happened: the truth a test compares deliveries against."""

    at: datetime
    module: str
    op: RecordOp
    record_id: str


@dataclass(frozen=True, slots=True)
class _Token:
    bound: tuple[str, ...]
    """The query it continues (module, fields, sort, since, per_page)."""
    offset: int
    expires: datetime


@dataclass(slots=True)
class RecordStore:
    """One org's records on one product."""

    live: dict[str, dict[str, Record]] = field(default_factory=dict)
    deleted: dict[str, list[Deleted]] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    origin: datetime | None = None
    tokens: dict[str, _Token] = field(default_factory=dict)

    def apply(self, module: str, op: RecordOp, ids: tuple[str, ...], now: datetime) -> None:
        at = now.replace(microsecond=0)
        self.origin = self.origin or at
        records = self.live.setdefault(module, {})
        for record_id in ids:
            self.changes.append(Change(at, module, op, record_id))
            if op == "delete":
                records.pop(record_id, None)
                self.deleted.setdefault(module, []).append(Deleted(record_id, at))
            elif op == "create" or record_id not in records:
                created = at if op == "create" else self.origin
                records[record_id] = Record(record_id, created, at)
            else:
                records[record_id] = Record(record_id, records[record_id].created, at)


def parse_path(path: str) -> tuple[Product, str, str, bool] | None:
    """(product, version, module, deleted) of a records URL, else None."""
    match = _PATH_RE.match(path)
    if match is None or match.group(3) == "actions":
        return None
    product: Product = "crm" if match.group(1) == "crm" else "bigin"
    if match.group(2) not in MAX_LIFETIME[product]:
        return None
    return product, match.group(2), match.group(3), match.group(4) is not None


@dataclass(frozen=True, slots=True)
class Query:
    """One records request, as the Emulator hands it over."""

    product: Product
    version: str
    module: str
    params: dict[str, str]
    since_header: str | None
    now: datetime
    offset: timedelta
    options: Options

    @property
    def tokens_served(self) -> bool:
        mode = self.options.page_tokens
        if mode != "v5+":
            return mode == "all"
        return self.product == "crm" and float(self.version[1:]) >= 5


class _Refused(Exception):
    def __init__(self, code: str, details: dict[str, Any]) -> None:
        super().__init__(code)
        self.response = r.json_response(400, r.error(code, details))


def list_records(store: RecordStore, q: Query) -> r.Response:
    try:
        since = _since(q)
        if not q.params.get("fields"):
            raise _Refused("REQUIRED_PARAM_MISSING", {"param": "fields"})
        per_page = _int(q.params, "per_page", MAX_PER_PAGE, MAX_PER_PAGE)
        sort_by = q.params.get("sort_by", "id")
        order = q.params.get("sort_order", "desc")
        if sort_by not in SORT_FIELDS or order not in ("asc", "desc"):
            raise _Refused(
                "INVALID_DATA", {"param": "sort_by" if sort_by not in SORT_FIELDS else "sort_order"}
            )
        bound = (q.module, q.params["fields"], sort_by, order, q.since_header or "", str(per_page))
        first, page = _start(store, q, bound, per_page)
    except _Refused as exc:
        return exc.response
    attr = SORT_FIELDS[sort_by]
    rows = [
        rec for rec in store.live.get(q.module, {}).values() if since is None or rec.modified > since
    ]
    rows.sort(key=lambda rec: (int(rec.id) if attr == "id" else getattr(rec, attr), int(rec.id)))
    if order == "desc":
        rows.reverse()
    chunk = rows[first : first + per_page]
    if not chunk:
        return _empty(q)
    more = first + per_page < min(len(rows), MAX_RECORDS)
    token = expiry = None
    if more and q.tokens_served:
        token = secrets.token_hex(16)
        store.tokens[token] = _Token(bound, first + per_page, q.now + TOKEN_LIFETIME)
        expiry = format_expiry(q.now + TOKEN_LIFETIME, q.offset)
    info = {
        "per_page": per_page,
        "count": len(chunk),
        "page": page,
        "more_records": more,
        "next_page_token": token,
        "previous_page_token": None,
        "page_token_expiry": expiry,
        "sort_by": sort_by,
        "sort_order": order,
    }
    data = [
        {
            "id": rec.id,
            "Created_Time": format_expiry(rec.created, q.offset),
            "Modified_Time": format_expiry(rec.modified, q.offset),
        }
        for rec in chunk
    ]
    return r.json_response(200, {"data": data, "info": info})


def list_deleted(store: RecordStore, q: Query) -> r.Response:
    try:
        since = _since(q)
        kind = q.params.get("type", "all")
        if kind not in DELETED_TYPES:
            raise _Refused("INVALID_DATA", {"param": "type"})
        per_page = _int(q.params, "per_page", MAX_PER_PAGE, MAX_PER_PAGE)
        page = _int(q.params, "page", 1, None)
    except _Refused as exc:
        return exc.response
    rows = [
        d
        for d in reversed(store.deleted.get(q.module, []))
        if (since is None or d.deleted > since) and kind in ("all", d.type)
    ]
    first = (page - 1) * per_page
    chunk = rows[first : first + per_page]
    if not chunk:
        return _empty(q)
    user = {"name": "Emulated User", "id": "4150868000000225013"}
    data = [
        {
            "id": d.id,
            "display_name": f"record {d.id}",
            "type": d.type,
            "deleted_by": user,
            "created_by": user,
            "deleted_time": format_expiry(d.deleted, q.offset),
        }
        for d in chunk
    ]
    info = {
        "per_page": per_page,
        "count": len(chunk),
        "page": page,
        "more_records": first + per_page < len(rows),
    }
    return r.json_response(200, {"data": data, "info": info})


def _empty(q: Query) -> r.Response:
    if q.since_header is not None and q.options.records_empty == "304":
        return r.Response(304, b"", None)
    return r.no_content()


def _since(q: Query) -> datetime | None:
    if q.since_header is None:
        return None
    since = parse_expiry(q.since_header.strip())
    if since is None:
        raise _Refused("INVALID_DATA", {"header": "If-Modified-Since"})
    return since


def _start(store: RecordStore, q: Query, bound: tuple[str, ...], per_page: int) -> tuple[int, int]:
    """(index of the first row, page number) from ``page`` or ``page_token``."""
    text = q.params.get("page_token")
    if text is None:
        page = _int(q.params, "page", 1, None)
        if page > DISCRETE_PAGES:
            raise _Refused("DISCRETE_PAGINATION_LIMIT_EXCEEDED", {"limit": DISCRETE_PAGES * per_page})
        return (page - 1) * per_page, page
    token = store.tokens.get(text) if q.tokens_served else None
    if token is None:
        raise _Refused("INVALID_DATA", {"param": "page_token"})
    if token.expires <= q.now:
        raise _Refused("EXPIRED_VALUE", {"param": "page_token"})
    if token.bound != bound:
        raise _Refused("TOKEN_BOUND_DATA_MISMATCH", {"param": "page_token"})
    if token.offset >= MAX_RECORDS:
        raise _Refused("PAGINATION_LIMIT_EXCEEDED", {"limit": MAX_RECORDS})
    return token.offset, token.offset // per_page + 1


def _int(params: dict[str, str], name: str, default: int, cap: int | None) -> int:
    text = params.get(name)
    if text is None or text == "":
        return default
    if not text.isascii() or not text.isdigit() or int(text) < 1 or len(text) > 9:
        raise _Refused("INVALID_DATA", {"param": name})
    return min(int(text), cap) if cap is not None else int(text)
