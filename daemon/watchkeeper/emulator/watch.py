"""The ``actions/watch`` API: what Zoho does with a GET, POST, PUT, PATCH or DELETE on one org.

Per-item rules follow the recordings (seeds 000/001) and zoho-api.md: items are checked in order,
mandatory keys first (a missing channel_id wins over a bad token), one error per item; any item
error makes the whole answer 202. Expiries Zoho dislikes (missing, unparsable, past, over the
version maximum) silently become ``now + default_lifetime`` unless ``Options.bad_expiry`` refuses the
unreadable and past ones. Each request works on one org's store for the product in its path.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from watchkeeper.emulator import responses as r
from watchkeeper.emulator.catalog import MAX_LIFETIME, MODULES
from watchkeeper.emulator.formats import (
    Event,
    EventError,
    Product,
    format_expiry,
    parse_event,
    parse_expiry,
)
from watchkeeper.emulator.options import Options
from watchkeeper.emulator.resources import module_events, modules_in_order, resource_id, resource_uri
from watchkeeper.emulator.state import Channel, ChannelStore

_PATH_RE = re.compile(r"^/(crm|bigin)/(v\d+(?:\.\d+)?)/actions/watch/?$")
_CHANNEL_ID_RE = re.compile(r"^\d{1,19}$")
MAX_PER_PAGE = 200


def parse_path(path: str) -> tuple[Product, str] | None:
    """(product, version) of a watch URL Zoho serves, else None (-> 404 INVALID_URL_PATTERN)."""
    match = _PATH_RE.match(path)
    if match is None:
        return None
    product: Product = "crm" if match.group(1) == "crm" else "bigin"
    version = match.group(2)
    return (product, version) if version in MAX_LIFETIME[product] else None


@dataclass(frozen=True, slots=True)
class Context:
    """Everything one watch request depends on besides the org."""

    now: datetime
    offset: timedelta
    """The org's UTC offset: Zoho writes expiries in the org's time zone."""
    product: Product
    version: str
    base_url: str
    options: Options
    only_default: bool
    """Inside a grant_only_default window: every granted expiry is the default."""

    @property
    def max_lifetime(self) -> timedelta:
        return MAX_LIFETIME[self.product][self.version]

    @property
    def number(self) -> float:
        return float(self.version[1:])

    @property
    def legacy_rows(self) -> bool:
        """CRM v2/v2.1 rows carry only the nine keys recorded in 2021."""
        return self.product == "crm" and self.number < 3

    @property
    def patch_needs_full(self) -> bool:
        """CRM v6+ documents notify_url and events as mandatory on PATCH."""
        return self.product == "crm" and self.number >= 6

    def knows(self, module: str) -> bool:
        return module in MODULES[self.product] or module in self.options.custom_modules

    def grant(self, requested: object, path: str) -> datetime:
        """The expiry Zoho grants for an item's ``channel_expiry``."""
        expiry = parse_expiry(requested)
        malformed = requested is not None and (expiry is None or expiry <= self.now)
        if malformed and self.options.bad_expiry == "refuse":
            raise ItemError(
                "INVALID_DATA",
                {"api_name": "channel_expiry", "json_path": f"{path}.channel_expiry"},
            )
        if self.only_default or expiry is None or malformed or expiry - self.now > self.max_lifetime:
            expiry = self.now + self.options.default_lifetime
        return expiry.replace(microsecond=0)


class ItemError(Exception):
    """One item refused; carries its error item."""

    def __init__(self, code: str, details: dict[str, Any]) -> None:
        super().__init__(code)
        self.item = r.error(code, details)


# ---- GET -------------------------------------------------------------------------------------


def list_channels(store: ChannelStore, ctx: Context, query: dict[str, str]) -> r.Response:
    try:
        page = _positive_int(query, "page", 1)
        per_page = min(_positive_int(query, "per_page", MAX_PER_PAGE), MAX_PER_PAGE)
    except ItemError as exc:
        return r.json_response(400, exc.item)
    rows = store.rows(ctx.now, ctx.options.expired_listed_for)
    module, channel_id = query.get("module"), query.get("channel_id")
    if module or channel_id:
        rows = [
            (ch, m)
            for ch, m in rows
            if (not module or m == module) and (not channel_id or ch.channel_id == channel_id)
        ]
    first = (page - 1) * per_page
    chunk = rows[first : first + per_page]
    if not chunk:
        return r.no_content()
    body = {
        "watch": [_row(ch, m, ctx) for ch, m in chunk],
        "info": {
            "per_page": per_page,
            "count": len(chunk),
            "page": page,
            "more_records": first + per_page < len(rows),
        },
    }
    return r.json_response(200, body)


def _positive_int(query: dict[str, str], name: str, default: int) -> int:
    text = query.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or int(text) < 1:
        raise ItemError("INVALID_DATA", {"param": name})
    return int(text)


def _row(channel: Channel, module: str, ctx: Context) -> dict[str, Any]:
    row: dict[str, Any] = {
        "notify_on_related_action": channel.notify_on_related_action,
        "channel_expiry": format_expiry(channel.expires_at, ctx.offset),
        "resource_uri": resource_uri(ctx.base_url, ctx.product, module),
        "resource_id": str(resource_id(module)),
        "notify_url": channel.notify_url,
        "resource_name": module,
        "channel_id": channel.channel_id,
        "events": module_events(channel.events, module),
        "token": channel.token,
    }
    if not ctx.legacy_rows:
        row["return_affected_field_values"] = channel.return_affected_field_values
        row["fields"] = None
        row["notification_condition"] = channel.notification_condition
    return row


# ---- POST / PUT / PATCH ----------------------------------------------------------------------


def parse_body(body: bytes) -> tuple[list[Any] | None, dict[str, Any] | None]:
    """(the watch items or None, the parsed JSON object or None) of a write request."""
    try:
        data = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    items = data.get("watch")
    return (items if isinstance(items, list) else None), data


def write(
    store: ChannelStore,
    ctx: Context,
    method: str,
    items: list[Any] | None,
    data: dict[str, Any] | None,
) -> r.Response:
    """POST, PUT or PATCH of a body already split by parse_body."""
    if data is None:
        return r.json_response(400, r.error("INVALID_DATA", {"expected_data_type": "jsonobject"}))
    if not items:
        return r.json_response(
            400, r.error("MANDATORY_NOT_FOUND", {"api_name": "watch", "json_path": "$.watch"})
        )
    if len(items) > ctx.options.max_items:
        return r.json_response(
            400, r.error("LIMIT_REACHED", {"limit": ctx.options.max_items, "api_name": "watch"})
        )
    results: list[dict[str, Any]] = []
    for index, raw in enumerate(items):
        try:
            results.append(_write_item(store, ctx, method, index, raw))
        except ItemError as exc:
            results.append(exc.item)
    if any(item["status"] != "success" for item in results):
        status = 202
    else:
        status = 201 if method == "POST" else 200
    return r.json_response(status, {"watch": results})


@dataclass(frozen=True, slots=True)
class _Item:
    """One write item that passed Zoho's checks."""

    path: str
    raw: dict[str, Any]
    channel_id: str
    events: frozenset[Event] | None
    expires_at: datetime
    delete_events: bool


def _write_item(store: ChannelStore, ctx: Context, method: str, index: int, raw: Any) -> dict[str, Any]:
    item = _checked(ctx, method, f"$.watch[{index}]", raw)
    current = store.live(item.channel_id, ctx.now)
    if current is not None and method == "PATCH":
        if item.delete_events:
            return _remove_events(store, ctx, current, item.events or frozenset())
        return _subscribed(store.put(_patched(current, item, ctx), ctx.now), ctx, r.UPDATED)
    if current is None and method != "POST":
        _unknown_channel(ctx, item)
    message = r.UPDATED if method == "PATCH" else r.SUBSCRIBED
    return _subscribed(store.put(_new_channel(item), ctx.now), ctx, message)


def _checked(ctx: Context, method: str, path: str, raw: Any) -> _Item:
    """The item's fields, checked in Zoho's order: mandatory keys first, then each value."""
    if not isinstance(raw, dict):
        raise ItemError("INVALID_DATA", {"expected_data_type": "jsonobject", "json_path": path})
    delete_events = method == "PATCH" and raw.get("_delete_events") is True
    _require(raw, _mandatory(ctx, method, delete_events), path)
    channel_id = _channel_id(raw["channel_id"], path)
    events = _events(raw.get("events"), path, ctx)
    _check_notify_url(raw.get("notify_url"), path)
    _check_token(raw.get("token"), path)
    _check_flags(raw, path)
    expires_at = ctx.grant(raw.get("channel_expiry"), path)
    return _Item(path, raw, channel_id, events, expires_at, delete_events)


def _unknown_channel(ctx: Context, item: _Item) -> None:
    """A PUT or PATCH of a channel Zoho does not know: refused, or (``create``) taken as a POST."""
    if ctx.options.patch_unknown == "invalid_data":
        raise ItemError(
            "INVALID_DATA", {"api_name": "channel_id", "json_path": f"{item.path}.channel_id"}
        )
    if ctx.options.patch_unknown == "error" or item.delete_events:
        raise ItemError("NOT_SUBSCRIBED", {"channel_id": item.channel_id})
    _require(item.raw, ("events", "notify_url"), item.path)


def _require(raw: dict[str, Any], keys: tuple[str, ...], path: str) -> None:
    for key in keys:
        if raw.get(key) in (None, "", []):
            raise ItemError("MANDATORY_NOT_FOUND", {"api_name": key, "json_path": f"{path}.{key}"})


def _mandatory(ctx: Context, method: str, delete_events: bool) -> tuple[str, ...]:
    if method == "PATCH":
        if delete_events:
            return ("channel_id", "events")
        return ("channel_id", "events", "notify_url") if ctx.patch_needs_full else ("channel_id",)
    return ("channel_id", "events", "notify_url")


def _channel_id(value: Any, path: str) -> str:
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not _CHANNEL_ID_RE.match(text) or int(text) >= 2**63:
        raise ItemError(
            "INVALID_DATA",
            {"expected_data_type": "long", "api_name": "channel_id", "json_path": f"{path}.channel_id"},
        )
    return text


def _events(value: Any, path: str, ctx: Context) -> frozenset[Event] | None:
    """The events named, each ``Module.op`` on a module the product has (with
    ``unknown_modules="refuse"``) and the user may subscribe to."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise ItemError("INVALID_DATA", {"api_name": "events", "json_path": f"{path}.events"})
    out: set[Event] = set()
    for j, text in enumerate(value):
        try:
            events = parse_event(text)
        except EventError:
            events = frozenset()
        unknown = ctx.options.unknown_modules == "refuse" and not all(ctx.knows(m) for m, _ in events)
        if not events or unknown:
            raise ItemError("INVALID_DATA", {"api_name": "events", "json_path": f"{path}.events[{j}]"})
        out |= events
    if any(module in ctx.options.forbidden_modules for module, _ in out):
        raise ItemError("INVALID_DATA", {"api_name": "events", "json_path": f"{path}.events"})
    return frozenset(out)


def _check_notify_url(value: Any, path: str) -> None:
    if value is not None and not (isinstance(value, str) and value.startswith(("https://", "http://"))):
        raise ItemError("INVALID_DATA", {"api_name": "notify_url", "json_path": f"{path}.notify_url"})


def _check_token(value: Any, path: str) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ItemError(
            "INVALID_DATA",
            {"expected_data_type": "string", "api_name": "token", "json_path": f"{path}.token"},
        )
    if len(value) > 50:
        raise ItemError(
            "INVALID_DATA", {"maximum_length": 50, "api_name": "token", "json_path": f"{path}.token"}
        )


def _check_flags(raw: dict[str, Any], path: str) -> None:
    for flag in ("notify_on_related_action", "return_affected_field_values"):
        if flag in raw and not isinstance(raw[flag], bool):
            raise ItemError(
                "INVALID_DATA",
                {"expected_data_type": "boolean", "api_name": flag, "json_path": f"{path}.{flag}"},
            )


def _new_channel(item: _Item) -> Channel:
    """POST and PUT: the item is the whole configuration; omitted settings take their defaults."""
    assert item.events is not None  # mandatory, checked by the caller
    raw = item.raw
    return Channel(
        channel_id=item.channel_id,
        events=item.events,
        notify_url=raw["notify_url"],
        expires_at=item.expires_at,
        token=raw.get("token"),
        notify_on_related_action=raw.get("notify_on_related_action", True),
        return_affected_field_values=raw.get("return_affected_field_values", False),
        notification_condition=raw.get("notification_condition"),
    )


def _patched(current: Channel, item: _Item, ctx: Context) -> Channel:
    """PATCH keeps what the item does not name, except the token: an omitted token becomes null,
    and an omitted expiry becomes the default."""
    events, raw = item.events, item.raw
    if events is not None and ctx.options.patch_events == "merge":
        events = current.events | events
    return replace(
        current,
        events=current.events if events is None else events,
        notify_url=raw.get("notify_url") or current.notify_url,
        expires_at=item.expires_at,
        token=raw.get("token"),
        notify_on_related_action=raw.get("notify_on_related_action", current.notify_on_related_action),
        return_affected_field_values=raw.get(
            "return_affected_field_values", current.return_affected_field_values
        ),
        notification_condition=raw.get("notification_condition", current.notification_condition),
    )


def _remove_events(
    store: ChannelStore, ctx: Context, current: Channel, events: frozenset[Event]
) -> dict[str, Any]:
    remaining = current.events - events
    if remaining:
        store.put(replace(current, events=remaining), ctx.now)
    else:
        store.remove(current.channel_id, ctx.now)
    touched = modules_in_order(events)
    return _success(ctx, current.channel_id, touched, current.expires_at, r.REMOVED)


def _subscribed(channel: Channel, ctx: Context, message: str) -> dict[str, Any]:
    return _success(ctx, channel.channel_id, channel.modules, channel.expires_at, message)


def _success(
    ctx: Context, channel_id: str, modules: tuple[str, ...], expires_at: datetime, message: str
) -> dict[str, Any]:
    """One item per channel, one ``details.events`` entry per module, keys in the recorded order."""
    expiry = format_expiry(expires_at, ctx.offset)
    events = [
        {
            "channel_expiry": expiry,
            "resource_uri": resource_uri(ctx.base_url, ctx.product, module),
            "resource_id": str(resource_id(module)),
            "resource_name": module,
            "channel_id": channel_id,
        }
        for module in modules
    ]
    return r.success(message, {"events": events})


# ---- DELETE ----------------------------------------------------------------------------------


def delete(store: ChannelStore, ctx: Context, query: dict[str, str]) -> r.Response:
    channel_ids = delete_ids(query)
    if not channel_ids:
        return r.json_response(400, r.error("REQUIRED_PARAM_MISSING", {"param": "channel_ids"}))
    results: list[dict[str, Any]] = []
    for channel_id in channel_ids:
        removed = store.remove(channel_id, ctx.now)
        if removed is None:
            results.append(r.error("NOT_SUBSCRIBED"))  # recorded without the channel id
            continue
        results.extend(
            r.success(
                r.UNSUBSCRIBED,
                {
                    "resource_uri": resource_uri(ctx.base_url, ctx.product, module),
                    "resource_id": str(resource_id(module)),
                    "channel_id": channel_id,
                },
            )
            for module in removed.modules
        )
    failed = any(item["status"] != "success" for item in results)
    return r.json_response(202 if failed else 200, {"watch": results})


def delete_ids(query: dict[str, str]) -> list[str]:
    return [part.strip() for part in query.get("channel_ids", "").split(",") if part.strip()]
