"""The ``/__emulator/`` JSON endpoints: the Python admin API over HTTP, for curl and the demo.

Channel tokens and notify_url query values are shown as ``***``: the demo prints these answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from watchkeeper.emulator import responses as r
from watchkeeper.emulator.faults import Fault
from watchkeeper.emulator.formats import PRODUCTS, Product
from watchkeeper.emulator.options import options_from_json
from watchkeeper.emulator.state import DEFAULT_ORG, Call, Channel

if TYPE_CHECKING:
    from watchkeeper.emulator.emulator import ChannelChange, Emulator

PREFIX = "/__emulator/"


@dataclass(frozen=True, slots=True)
class _Args:
    query: dict[str, str]
    body: dict[str, Any]
    ident: str | None

    @property
    def org(self) -> str:
        return str(self.body.get("org") or self.query.get("org") or DEFAULT_ORG)

    @property
    def product(self) -> Product:
        """``crm`` unless the body or the query names ``bigin``: each product has its own store."""
        name = str(self.body.get("product") or self.query.get("product") or "crm")
        for product in PRODUCTS:
            if name == product:
                return product
        raise ValueError(f"product is one of {', '.join(PRODUCTS)}, not {name!r}")


def handle(emu: Emulator, request: r.Request) -> r.Response:
    parts = request.path[len(PREFIX) :].strip("/").split("/")
    resource = parts[0]
    ident = "/".join(parts[1:]) or None
    route = _ROUTES.get((request.method, resource + ("/*" if ident else "")))
    if route is None:
        known = any(res.split("/")[0] == resource for _, res in _ROUTES)
        return r.json_response(405 if known else 404, {"error": f"no {request.method} {request.path}"})
    try:
        body = json.loads(request.body) if request.body.strip() else {}
        if not isinstance(body, dict):
            raise ValueError("the request body must be a JSON object")
        return r.json_response(200, route(emu, _Args(request.query, body, ident)))
    except (KeyError, ValueError, TypeError) as exc:
        return r.json_response(400, {"error": f"{type(exc).__name__}: {exc}"})


def _redact_url(url: str) -> str:
    base, sep, query = url.partition("?")
    if not sep:
        return url
    pairs = [p.partition("=") for p in query.split("&") if p]
    return base + "?" + "&".join(f"{k}={'***' if eq else ''}" for k, eq, _ in pairs)


def channel_json(channel: Channel) -> dict[str, Any]:
    return {
        "channel_id": channel.channel_id,
        "events": channel.event_names,
        "notify_url": _redact_url(channel.notify_url),
        "token": None if channel.token is None else "***",
        "expires_at": channel.expires_at.isoformat(),
        "created_at": None if channel.created_at is None else channel.created_at.isoformat(),
    }


def _call_json(call: Call) -> dict[str, Any]:
    return {
        "at": call.at.isoformat(),
        "method": call.method,
        "path": call.path,
        "status": call.status,
        "org": call.org,
        "items": call.items,
        "channel_ids": list(call.channel_ids),
    }


def _instant(value: Any) -> datetime:
    dt = datetime.fromisoformat(str(value))
    if dt.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset")
    return dt


def _index(emu: Emulator, a: _Args) -> Any:
    return {**emu.describe(a.org), "endpoints": sorted(f"{m} {PREFIX}{res}" for m, res in _ROUTES)}


def _channels(emu: Emulator, a: _Args) -> Any:
    channels = emu.channels(a.org, product=a.product).values()
    return {"channels": [channel_json(ch) for ch in channels]}


def _add_channel(emu: Emulator, a: _Args) -> Any:
    channel = emu.add_foreign_channel(
        str(a.body["channel_id"]),
        list(a.body["events"]),
        str(a.body["notify_url"]),
        ttl=timedelta(seconds=float(a.body.get("ttl_seconds", 6 * 3600))),
        token=a.body.get("token"),
        org=a.org,
        product=a.product,
    )
    return {"channel": channel_json(channel)}


def _change_channel(emu: Emulator, a: _Args) -> Any:
    assert a.ident is not None
    change: ChannelChange = {"org": a.org, "product": a.product}
    if a.body.get("events") is not None:
        change["events"] = [str(e) for e in a.body["events"]]
    if a.body.get("notify_url") is not None:
        change["notify_url"] = str(a.body["notify_url"])
    if "token" in a.body:
        change["token"] = None if a.body["token"] is None else str(a.body["token"])
    if a.body.get("expires_at") is not None:
        change["expires_at"] = _instant(a.body["expires_at"])
    return {"channel": channel_json(emu.change_channel(a.ident, **change))}


def _delete_channel(emu: Emulator, a: _Args) -> Any:
    assert a.ident is not None
    return {"deleted": emu.delete_channel(a.ident, org=a.org, product=a.product)}


def _faults(emu: Emulator, a: _Args) -> Any:
    return {"faults": [f.to_json() for f in emu.faults]}


def _add_fault(emu: Emulator, a: _Args) -> Any:
    return {"fault": emu.add_fault(Fault.from_json(a.body)).to_json()}


def _clear_faults(emu: Emulator, a: _Args) -> Any:
    emu.clear_faults()
    return {"faults": []}


def _calls(emu: Emulator, a: _Args) -> Any:
    return {"calls": [_call_json(c) for c in emu.calls]}


def _clear_calls(emu: Emulator, a: _Args) -> Any:
    emu.clear_calls()
    return {"calls": []}


def _live_intervals(emu: Emulator, a: _Args) -> Any:
    channel_id = a.query.get("channel_id") or a.body["channel_id"]
    intervals = emu.live_intervals(
        str(channel_id), org=a.org, event=a.query.get("event"), product=a.product
    )
    return {
        "intervals": [
            [start.isoformat(), None if end is None else end.isoformat()] for start, end in intervals
        ]
    }


def _record_change(emu: Emulator, a: _Args) -> Any:
    deliveries = emu.simulate_record_change(
        str(a.body["module"]),
        a.body["op"],
        [str(i) for i in a.body["record_ids"]],
        org=a.org,
        product=a.product,
    )
    return {
        "deliveries": [
            {
                "channel_id": d.channel_id,
                "notify_url": _redact_url(d.notify_url),
                "status": d.status,
                "error": d.error,
            }
            for d in deliveries
        ]
    }


def _records(emu: Emulator, a: _Args) -> Any:
    module = str(a.query.get("module") or a.body["module"])
    live, deleted = emu.records(module, org=a.org, product=a.product)
    return {
        "records": [
            {"id": x.id, "created_time": x.created.isoformat(), "modified_time": x.modified.isoformat()}
            for x in live
        ],
        "deleted": [
            {"id": d.id, "deleted_time": d.deleted.isoformat(), "type": d.type} for d in deleted
        ],
    }


def _clock(emu: Emulator, a: _Args) -> Any:
    return {"now": emu.now().isoformat(), "skew_seconds": emu.clock_skew.total_seconds()}


def _set_clock(emu: Emulator, a: _Args) -> Any:
    emu.set_clock_skew(timedelta(seconds=float(a.body["skew_seconds"])))
    return _clock(emu, a)


def _refreshes(emu: Emulator, a: _Args) -> Any:
    return {"refreshes": emu.refreshes(a.org)}


def _grant_only_default(emu: Emulator, a: _Args) -> Any:
    emu.grant_only_default(_instant(a.body["start"]), _instant(a.body["end"]))
    return {"ok": True}


def _access_token(emu: Emulator, a: _Args) -> Any:
    return {"access_token": emu.issue_access_token(a.org)}


def _options(emu: Emulator, a: _Args) -> Any:
    return {"options": emu.options.to_json()}


def _set_options(emu: Emulator, a: _Args) -> Any:
    return {"options": emu.set_options(**options_from_json(emu.options, a.body)).to_json()}


_ROUTES: dict[tuple[str, str], Callable[[Emulator, _Args], Any]] = {
    ("GET", ""): _index,
    ("GET", "channels"): _channels,
    ("POST", "channels"): _add_channel,
    ("PATCH", "channels/*"): _change_channel,
    ("DELETE", "channels/*"): _delete_channel,
    ("GET", "faults"): _faults,
    ("POST", "faults"): _add_fault,
    ("DELETE", "faults"): _clear_faults,
    ("GET", "calls"): _calls,
    ("DELETE", "calls"): _clear_calls,
    ("GET", "live_intervals"): _live_intervals,
    ("POST", "record_change"): _record_change,
    ("GET", "records"): _records,
    ("GET", "clock"): _clock,
    ("POST", "clock"): _set_clock,
    ("GET", "refreshes"): _refreshes,
    ("POST", "grant_only_default"): _grant_only_default,
    ("POST", "access_token"): _access_token,
    ("GET", "options"): _options,
    ("PATCH", "options"): _set_options,
}
