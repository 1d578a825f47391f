"""The Emulator: one lock around the emulated Zoho, its faults and its call log, plus the server.

Every instant it takes or reports is on its own clock, ``clock() + clock_skew``: the clock Zoho's
expiries, the ``Date`` header, fault windows, calls and live intervals are all written in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import TracebackType
from typing import Any, TypedDict, Unpack

import httpx

from watchkeeper.emulator import admin, records, watch
from watchkeeper.emulator import responses as r
from watchkeeper.emulator.delivery import Delivery, RecordChange, deliver, payload
from watchkeeper.emulator.faults import Fault, FaultPlan
from watchkeeper.emulator.formats import PRODUCTS, Product, format_expiry, parse_events, utc
from watchkeeper.emulator.oauth import (
    TOKEN_PATH,
    authenticate,
    bearer,
    org_of_params,
    refresh,
    token_params,
)
from watchkeeper.emulator.options import OptionArgs, Options
from watchkeeper.emulator.records import Change, Deleted, Record, RecordOp, RecordStore
from watchkeeper.emulator.resources import resource_uri
from watchkeeper.emulator.server import EmulatorServer
from watchkeeper.emulator.state import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_ORG,
    DEFAULT_REFRESH_TOKEN,
    Call,
    Channel,
    ChannelStore,
    Org,
    ZohoState,
)

WATCH_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
_SECRET_PARAMS = frozenset({"refresh_token", "client_secret", "code"})


class Where(TypedDict, total=False):
    """Which store: the org (default ``org1``) and the product (default ``crm``)."""

    org: str
    product: Product


class ChannelChange(Where, total=False):
    """What ``change_channel`` changes; a key left out stays (``token=None`` clears the token)."""

    events: list[str]
    notify_url: str
    token: str | None
    expires_at: datetime


def _only(given: Mapping[str, object], known: frozenset[str]) -> None:
    """``**kwargs`` typed by a TypedDict still take any keyword at run time: refuse the others."""
    unknown = set(given) - known
    if unknown:
        raise TypeError(f"unexpected keyword arguments {sorted(unknown)} (known: {sorted(known)})")


def _real_clock() -> datetime:
    return datetime.now(UTC)


class Emulator:
    def __init__(
        self,
        clock: Callable[[], datetime] | None = None,
        *,
        tz_offset: timedelta = timedelta(hours=5, minutes=30),
        clock_skew: timedelta = timedelta(0),
        seed: int = 0,
        **options: Unpack[OptionArgs],
    ) -> None:
        """``options`` are the Options fields (``default_lifetime``, ``patch_unknown``, ...)."""
        self._options = Options(**options)
        self._lock = threading.RLock()
        self._clock = clock or _real_clock
        self._skew = clock_skew
        self._state = ZohoState(tz_offset)
        self._faults = FaultPlan(seed)
        self._calls: list[Call] = []
        self._default_windows: list[tuple[datetime, datetime]] = []
        self._server: EmulatorServer | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None
        self._callbacks: httpx.Client | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> Emulator:
        if self._server is not None:
            raise RuntimeError("emulator already started")
        server = EmulatorServer((host, port), self)
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host  # noqa: S104 (a wildcard bind)
        self._url = f"http://{shown}:{server.server_address[1]}"
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="zoho-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.stop()
        if thread is not None:
            thread.join(timeout=5)
        with self._lock:
            callbacks, self._callbacks = self._callbacks, None
        if callbacks is not None:
            callbacks.close()

    def __enter__(self) -> Emulator:
        return self if self._server is not None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, used as both api_domain and accounts_url."""
        if self._url is None:
            raise RuntimeError("emulator not started")
        return self._url

    # ---- clock -----------------------------------------------------------------------------

    def now(self) -> datetime:
        """Zoho's clock: the injected clock plus the skew."""
        return utc(self._clock()) + self._skew

    @property
    def clock_skew(self) -> timedelta:
        return self._skew

    def set_clock_skew(self, skew: timedelta) -> None:
        """Move Zoho's clock against the caller's (the ``Date`` header and every expiry follow)."""
        with self._lock:
            self._skew = skew

    # ---- options ---------------------------------------------------------------------------

    @property
    def options(self) -> Options:
        return self._options

    def set_options(self, **changes: Unpack[OptionArgs]) -> Options:
        """Switch to another plausible Zoho from the next request on."""
        with self._lock:
            self._options = replace(self._options, **changes)
            return self._options

    @property
    def default_lifetime(self) -> timedelta:
        return self._options.default_lifetime

    # ---- orgs and credentials --------------------------------------------------------------

    def add_org(
        self,
        org: str,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        refresh_token: str | None = None,
        tz_offset: timedelta | None = None,
    ) -> None:
        """Add an org (or change its credentials). Its refresh token defaults to
        ``emu-refresh-token-<org>``."""
        token = refresh_token or (
            DEFAULT_REFRESH_TOKEN if org == DEFAULT_ORG else f"{DEFAULT_REFRESH_TOKEN}-{org}"
        )
        with self._lock:
            self._state.add_org(org, client_id, client_secret, token, tz_offset)

    def issue_access_token(self, org: str = DEFAULT_ORG, *, lifetime: timedelta | None = None) -> str:
        """A valid access token without a refresh call (not counted against the refresh limit)."""
        with self._lock:
            return self._state.mint(
                self._state.org(org), self.now(), lifetime or self._options.access_token_lifetime
            )

    def access_tokens(self) -> list[str]:
        """Every access token minted so far: tests check none of them was ever printed."""
        with self._lock:
            return list(self._state.tokens)

    def refreshes(self, org: str = DEFAULT_ORG) -> int:
        """Token refreshes in the current rolling 10-minute window."""
        with self._lock:
            return self._state.org(org).refreshes(self.now())

    # ---- faults ----------------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.faults.clear()
            self._default_windows.clear()

    @property
    def faults(self) -> list[Fault]:
        with self._lock:
            return list(self._faults.faults)

    def grant_only_default(self, start: datetime, end: datetime) -> None:
        """During [start, end) every granted expiry is ``now + default_lifetime``."""
        with self._lock:
            self._default_windows.append((utc(start), utc(end)))

    # ---- behind the daemon's back ----------------------------------------------------------

    def _store(self, org: str, product: Product) -> ChannelStore:
        if product not in PRODUCTS:
            raise ValueError(f"product is one of {', '.join(PRODUCTS)}, not {product!r}")
        return self._state.org(org).stores[product]

    def add_foreign_channel(
        self,
        channel_id: str,
        events: list[str],
        notify_url: str,
        *,
        ttl: timedelta = timedelta(hours=6),
        token: str | None = None,
        **where: Unpack[Where],
    ) -> Channel:
        """A channel someone else subscribed (or any channel a test wants in place)."""
        _only(where, Where.__optional_keys__)
        if ttl <= timedelta(0):
            raise ValueError(f"ttl must be positive, not {ttl}")
        with self._lock:
            now = self.now()
            channel = Channel(
                channel_id=str(channel_id),
                events=parse_events(events),
                notify_url=notify_url,
                expires_at=(now + ttl).replace(microsecond=0),
                token=token,
            )
            return self._store(where.get("org", DEFAULT_ORG), where.get("product", "crm")).put(
                channel, now
            )

    def change_channel(self, channel_id: str, **change: Unpack[ChannelChange]) -> Channel:
        """Change a live channel the way another client (or Zoho itself) might."""
        _only(change, ChannelChange.__optional_keys__)
        org, product = change.get("org", DEFAULT_ORG), change.get("product", "crm")
        with self._lock:
            now = self.now()
            store = self._store(org, product)
            current = store.live(str(channel_id), now)
            if current is None:
                raise KeyError(f"channel {channel_id} is not live in org {org!r} on {product}")
            changed = replace(
                current,
                events=parse_events(change["events"]) if "events" in change else current.events,
                notify_url=change.get("notify_url", current.notify_url),
                token=change.get("token", current.token),
                expires_at=utc(change.get("expires_at", current.expires_at)).replace(microsecond=0),
            )
            if changed.expires_at <= now:
                store.remove(changed.channel_id, now)
                return changed
            return store.put(changed, now)

    def delete_channel(
        self, channel_id: str, org: str = DEFAULT_ORG, *, product: Product = "crm"
    ) -> bool:
        """Delete a channel behind the daemon's back; False when it was not live."""
        with self._lock:
            return self._store(org, product).remove(str(channel_id), self.now()) is not None

    # ---- observation -----------------------------------------------------------------------

    def channels(self, org: str = DEFAULT_ORG, *, product: Product = "crm") -> dict[str, Channel]:
        """The live channels, in listing order (immutable snapshots)."""
        with self._lock:
            now = self.now()
            store = self._store(org, product)
            return {ch.channel_id: ch for ch in store.channels.values() if ch.is_live(now)}

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def calls_since(self, start: int) -> list[Call]:
        """The calls from index ``start`` on: a poller copies what is new, not the whole log."""
        with self._lock:
            return self._calls[start:]

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def live_intervals(
        self,
        channel_id: str,
        org: str = DEFAULT_ORG,
        *,
        event: str | None = None,
        product: Product = "crm",
    ) -> list[tuple[datetime, datetime | None]]:
        """When the channel was live on Zoho (with ``event``, e.g. ``"Deals.edit"``, subscribed,
        when given): end None while still live, an expired channel's interval ends at its expiry, a
        renewal before expiry extends the interval, a re-creation after it starts a new one."""
        with self._lock:
            return self._store(org, product).intervals(str(channel_id), self.now(), event)

    def simulate_record_change(
        self,
        module: str,
        op: RecordOp,
        record_ids: list[str],
        org: str = DEFAULT_ORG,
        *,
        product: Product = "crm",
    ) -> list[Delivery]:
        """Change the records (the store the records APIs read), then POST Zoho's callback to
        every live channel subscribed to (module, op); the POSTs happen outside the lock, so a
        receiver may call the emulator back."""
        change = RecordChange(module, op, tuple(str(i) for i in record_ids))
        with self._lock:
            now = self.now()
            self._records(org, product).apply(module, op, change.record_ids, now)
            uri = resource_uri(self.url, product, module)
            targets = [
                (ch, payload(ch, change, now, uri))
                for ch in self._store(org, product).channels.values()
                if ch.is_live(now) and (module, op) in ch.events
            ]
            if self._callbacks is None:
                self._callbacks = httpx.Client()  # one client: its TLS setup is not free
            client = self._callbacks
        return deliver(client, targets)

    def _records(self, org: str, product: Product) -> RecordStore:
        self._store(org, product)  # validates both
        return self._state.org(org).records[product]

    def records(
        self, module: str, org: str = DEFAULT_ORG, *, product: Product = "crm"
    ) -> tuple[list[Record], list[Deleted]]:
        """The module's live records and its deleted ones, oldest first."""
        with self._lock:
            store = self._records(org, product)
            return list(store.live.get(module, {}).values()), list(store.deleted.get(module, []))

    def record_changes(self, org: str = DEFAULT_ORG, *, product: Product = "crm") -> list[Change]:
        """Every record change so far, one per record, in order: what a receiver should learn."""
        with self._lock:
            return list(self._records(org, product).changes)

    # ---- HTTP ------------------------------------------------------------------------------

    def dispatch(self, request: r.Request) -> r.Response:
        """Answer one HTTP request (called by the server thread)."""
        if request.path.startswith(admin.PREFIX):
            return admin.handle(self, request)
        with self._lock:
            now = self.now()
            if request.path == TOKEN_PATH:
                response, call = self._token(request, now)
            else:
                response, call = self._api(request, now)
            self._calls.append(call)
            reset = self._token_reset(request, now)
        response.headers.setdefault("Date", format_datetime(now.astimezone(UTC), usegmt=True))
        response.headers.setdefault("X-ACCESSTOKEN-RESET", reset)
        return response

    def _token(self, request: r.Request, now: datetime) -> tuple[r.Response, Call]:
        params = token_params(request.query, request.body)
        known = org_of_params(self._state, params)
        org: Org | None = known
        latency, fault = self._faults.pick("TOKEN", "token", known.name if known else None, now)
        if fault is not None:
            response = fault.response("token")
        else:
            lifetime = self._options.access_token_lifetime
            response, org = refresh(self._state, params, now, lifetime, self.url)
        response.delay = latency
        query = {k: ("***" if k in _SECRET_PARAMS else v) for k, v in request.query.items()}
        call = Call(now, "TOKEN", request.path, query, response.status, org.name if org else None, 0, ())
        return response, call

    def _api(self, request: r.Request, now: datetime) -> tuple[r.Response, Call]:
        token = bearer(request.headers)
        known = self._state.tokens.get(token) if token is not None else None
        org_name = known.org if known is not None else None
        if records.parse_path(request.path) is not None:
            return self._read_records(request, now, token, org_name)
        items, data = (None, None)
        if request.method in ("POST", "PUT", "PATCH"):
            items, data = watch.parse_body(request.body)
        latency, fault = self._faults.pick(request.method, "watch", org_name, now)
        if fault is not None:
            response = fault.response("watch", len(items or ()))
        else:
            response = self._watch(request, now, token, items, data)
        response.delay = latency
        if request.method == "DELETE":
            ids = tuple(watch.delete_ids(request.query))
        elif items is not None:
            ids = tuple(str(i["channel_id"]) for i in items if isinstance(i, dict) and "channel_id" in i)
        else:
            ids = tuple(filter(None, [request.query.get("channel_id")]))
        count = len(items) if items is not None else (len(ids) if request.method == "DELETE" else 0)
        call = Call(
            now,
            request.method,
            request.path,
            dict(request.query),
            response.status,
            org_name,
            count,
            ids,
            data,
            request.headers.get("user-agent"),
        )
        return response, call

    def _watch(
        self,
        request: r.Request,
        now: datetime,
        token: str | None,
        items: list[Any] | None,
        data: dict[str, Any] | None,
    ) -> r.Response:
        if request.method not in WATCH_METHODS:
            return r.json_response(400, r.error("INVALID_REQUEST_METHOD"))
        org = authenticate(self._state, token, now)
        if isinstance(org, r.Response):
            return org
        target = watch.parse_path(request.path)
        if target is None:
            return r.json_response(404, r.error("INVALID_URL_PATTERN"))
        ctx = watch.Context(
            now=now,
            offset=org.tz_offset,
            product=target[0],
            version=target[1],
            base_url=self.url,
            options=self._options,
            only_default=any(start <= now < end for start, end in self._default_windows),
        )
        store = org.stores[ctx.product]
        if request.method == "GET":
            return watch.list_channels(store, ctx, request.query)
        if request.method == "DELETE":
            return watch.delete(store, ctx, request.query)
        return watch.write(store, ctx, request.method, items, data)

    def _read_records(
        self, request: r.Request, now: datetime, token: str | None, org_name: str | None
    ) -> tuple[r.Response, Call]:
        latency, fault = self._faults.pick(request.method, "records", org_name, now)
        response = (
            fault.response("records") if fault is not None else self._answer_records(request, now, token)
        )
        response.delay = latency
        call = Call(
            now, request.method, request.path, dict(request.query), response.status, org_name, 0, ()
        )
        return response, call

    def _answer_records(self, request: r.Request, now: datetime, token: str | None) -> r.Response:
        target = records.parse_path(request.path)
        assert target is not None
        if request.method != "GET":
            return r.json_response(400, r.error("INVALID_REQUEST_METHOD"))
        org = authenticate(self._state, token, now)
        if isinstance(org, r.Response):
            return org
        product, version, module, deleted = target
        ctx = watch.Context(now, org.tz_offset, product, version, self.url, self._options, False)
        if not ctx.knows(module):
            return r.json_response(400, r.error("INVALID_MODULE", {"api_name": module}))
        query = records.Query(
            product,
            version,
            module,
            request.query,
            request.headers.get("if-modified-since"),
            now,
            org.tz_offset,
            self._options,
        )
        store = org.records[product]
        return records.list_deleted(store, query) if deleted else records.list_records(store, query)

    def _token_reset(self, request: r.Request, now: datetime) -> str:
        """``X-ACCESSTOKEN-RESET``: the presented access token's expiry (inferred from the seeds),
        else the current time, in the org's offset."""
        token = bearer(request.headers)
        known = self._state.tokens.get(token) if token is not None else None
        if known is None:
            return format_expiry(now, self._state.tz_offset)
        return format_expiry(known.expires_at, self._state.org(known.org).tz_offset)

    # ---- admin JSON helpers ----------------------------------------------------------------

    def describe(self, org: str = DEFAULT_ORG) -> dict[str, Any]:
        """Status for ``GET /__emulator/``: where it listens, the clock, the orgs."""
        with self._lock:
            by_product = {product: len(self.channels(org, product=product)) for product in PRODUCTS}
            return {
                "url": self.url,
                "now": self.now().isoformat(),
                "clock_skew_seconds": self._skew.total_seconds(),
                "orgs": sorted(self._state.orgs),
                "org": org,
                "live_channels": sum(by_product.values()),
                "live_channels_by_product": by_product,
                "calls": len(self._calls),
                "faults": len(self._faults.faults),
            }
