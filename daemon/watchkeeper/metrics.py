"""``[daemon].metrics``: Prometheus ``/metrics``, ``/livez`` and ``/readyz`` (DESIGN.md section 10).

Each value has one source, the one the logs and ``status`` already use, so nothing is counted
twice in different places:

- the channel, gap and token gauges are read at scrape time from the store (a read connection
  of the listener's own, as ``watchkeeper status`` reads it) and the desired state in force; a
  channel the state file no longer wants is not shown;
- the write and gap counters follow every Transition the engine records (``Meter.committed``,
  the hook the engine calls where it emits the log events of that Transition);
- the request counters and durations are taken on the HTTP transport every Zoho call goes through;
- the credentials gauge is set by both: refused where a Transition logs ``auth.failed``, accepted
  where an API request is answered with a 2xx;
- the pass, reload and lease gauges, /livez and /readyz come from the service (health.Health).

Labels hold account names, channel ids, channel names, states and HTTP methods and statuses:
never a URL, a token or any other value of the state file's secrets.
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from socketserver import ThreadingMixIn
from typing import Any, get_args
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from watchkeeper import __version__
from watchkeeper.config import Address, DesiredState
from watchkeeper.health import Health, ListenError
from watchkeeper.model import ChannelState
from watchkeeper.outcome import Transition
from watchkeeper.planner import Action
from watchkeeper.store import Gap, StatusRow, Store
from watchkeeper.store.target import Target
from watchkeeper.zoho.auth import REFRESH_PATH
from watchkeeper.zoho.client import DEFAULT_TIMEOUT

STATES: tuple[str, ...] = get_args(ChannelState)
SUCCESS_EVENTS = {
    "channel.created": "create",
    "channel.renewed": "renew",
    "channel.repaired": "repair",
    "channel.adopted": "adopt",
    "channel.deleted": "delete",
}
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Zoho answers in tenths of a second to a few seconds; a 100-item PATCH may take tens."""


# -- counters: what the engine records and what its HTTP client sends -----------------------------


def write_results(change: Transition, actions: Sequence[Action]) -> Tally[tuple[str, str]]:
    """PURE: (action, result) per channel a request carried, read off the Transition that records
    its answer: ok where the success was logged, rejected where ``channel.rejected`` was, failed
    where the answer left the channel to retry (or found it gone); a channel the request did not
    reach (a stop was asked for) is not counted."""
    ok = {e.fields.get("channel_id") for e in change.events if e.event in SUCCESS_EVENTS}
    rejected = {e.fields.get("channel_id") for e in change.events if e.event == "channel.rejected"}
    counts: Tally[tuple[str, str]] = Tally()
    for action in actions:
        cid = action.channel_id
        if cid in ok:
            counts[action.kind, "ok"] += 1
        elif cid in rejected:
            counts[action.kind, "rejected"] += 1
        elif cid in change.entries:
            counts[action.kind, "failed"] += 1
    return counts


class Meter:
    """The counters. Thread-safe: the engine's worker and the HTTP transport feed them while the
    listener reads them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.writes = Counter(
            "watchkeeper_channel_writes",
            "Channel writes Zoho answered, by action and result.",
            ["account", "action", "result"],
            registry=registry,
        )
        self.gaps = Counter(
            "watchkeeper_gaps", "Gaps opened (a channel lapsed), by cause.", ["account", "cause"],
            registry=registry,
        )  # fmt: skip
        self.gap_seconds = Counter(
            "watchkeeper_gap_seconds",
            "Length of the gaps closed (a channel recovered), in seconds.",
            ["account"],
            registry=registry,
        )
        self.requests = Counter(
            "watchkeeper_zoho_requests",
            "HTTP requests to Zoho (API and OAuth), by HTTP status, or error when none came back.",
            ["account", "method", "status"],
            registry=registry,
        )
        self.durations = Histogram(
            "watchkeeper_zoho_request_duration_seconds",
            "Time from sending a request to Zoho to its answer's headers.",
            ["method"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.backfill = Counter(
            "watchkeeper_backfill_records",
            "Records redelivered from gaps, by the operation of their notification.",
            ["account", "operation"],
            registry=registry,
        )
        self.refused: set[str] = set()
        """The accounts whose credentials Zoho refused, and which it has answered no API request
        of since."""

    def committed(self, change: Transition, actions: Sequence[Action]) -> None:
        """The engine recorded ``change`` (answering ``actions``, if it answers a request)."""
        account = change.account
        if any(event.event == "auth.failed" for event in change.events):
            self.refused.add(account)
        for opened in change.opened:
            self.gaps.labels(account, opened.cause).inc()
        for closed in change.closed:
            self.gap_seconds.labels(account).inc((closed.end - closed.start).total_seconds())
        for (action, result), count in write_results(change, actions).items():
            self.writes.labels(account, action, result).inc(count)

    def forget_all_but(self, accounts: frozenset[str]) -> None:
        """Drop what was heard of accounts this instance no longer serves: another instance may
        mend them meanwhile. Called between passes, when no worker writes."""
        self.refused &= accounts

    def backfilled(self, account: str, operation: str, records: int) -> None:
        """A receiver took a backfill notification of ``records`` ids."""
        self.backfill.labels(account, operation).inc(records)

    def http(self, transport: httpx.BaseTransport, account: str) -> httpx.Client:
        """An account's HTTP client: its own counters, the shared transport's connections."""
        return httpx.Client(timeout=DEFAULT_TIMEOUT, transport=_Metered(transport, account, self))


def accepts_credentials(path: str, status: int) -> bool:
    """PURE: an API request answered with a 2xx was let in. Not a token refresh (``accounts_url``
    may have a path of its own): Zoho answers a refused one with 200 and an ``error`` body, which
    the engine logs as ``auth.failed``."""
    return 200 <= status < 300 and not path.endswith(REFRESH_PATH)


class _Metered(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport, account: str, meter: Meter) -> None:
        self._inner = inner
        self._account = account
        self._meter = meter

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        status = "error"
        started = time.perf_counter()
        try:
            response = self._inner.handle_request(request)
            status = str(response.status_code)
            if accepts_credentials(request.url.path, response.status_code):
                self._meter.refused.discard(self._account)
            return response
        finally:
            self._meter.requests.labels(self._account, request.method, status).inc()
            self._meter.durations.labels(request.method).observe(time.perf_counter() - started)

    def close(self) -> None:
        """The shared transport is closed once, by whoever opened it (runtime.open_engine)."""


# -- gauges: read at scrape time ------------------------------------------------------------------

CHANNEL_GAUGES = (
    (
        "watchkeeper_channel_expiry_timestamp_seconds",
        "When the channel expires at Zoho (Unix time, Zoho's clock).",
    ),
    (
        "watchkeeper_channel_renewal_timestamp_seconds",
        "When the channel is next renewed, as status shows it (Unix time, Zoho's clock).",
    ),
    ("watchkeeper_channel_state", "1 for the channel's current state, 0 for the others."),
)


def _label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def channel_text(names: Mapping[tuple[str, str], str], rows: Iterable[StatusRow]) -> str:
    """PURE: the three per-channel gauges in the Prometheus text format (0.0.4), for the channels
    the state file wants (``names``: their names there) among the rows ``status`` shows.

    Rendered here rather than by prometheus_client, whose per-sample formatting takes 50 to 90 ms
    for the 8,000 series of 1,000 channels; the tests parse the result with its parser."""
    expiry, renewal, state = (name for name, _ in CHANNEL_GAUGES)
    out: dict[str, list[str]] = {
        name: [f"# HELP {name} {text}", f"# TYPE {name} gauge"] for name, text in CHANNEL_GAUGES
    }
    expiries, renewals, states = out[expiry], out[renewal], out[state]
    for row in rows:
        name = names.get((row.account, row.channel_id))
        if name is None:
            continue
        labels = f'account="{_label(row.account)}",channel_id="{row.channel_id}",name="{_label(name)}"'
        if row.expires_at is not None:
            expiries.append(f"{expiry}{{{labels}}} {row.expires_at.timestamp()!r}")
        if row.next_renewal_at is not None:
            renewals.append(f"{renewal}{{{labels}}} {row.next_renewal_at.timestamp()!r}")
        states.extend(
            f'{state}{{{labels},state="{value}"}} {"1.0" if row.state == value else "0.0"}'
            for value in STATES
        )
    return "\n".join(line for lines in out.values() for line in lines) + "\n"


def account_families(
    state: DesiredState,
    open_gaps: Iterable[Gap],
    token_expiry: Mapping[str, datetime | None],
    served: Collection[str],
    refused: Collection[str],
) -> list[Metric]:
    """PURE: the per-account gauges, from the gaps ``gaps`` shows, the cached access tokens, the
    accounts this instance serves and the credentials Zoho refused. An account another instance
    serves is not failing here: what this instance last heard of it may be stale."""
    accounts = sorted(state.accounts)
    gaps = GaugeMetricFamily(
        "watchkeeper_gaps_open", "Gaps not closed yet (channels lapsed now).", labels=["account"]
    )
    per_account = Tally(gap.account for gap in open_gaps)
    for account in sorted(set(accounts) | set(per_account)):
        gaps.add_metric([account], per_account[account])
    token = GaugeMetricFamily(
        "watchkeeper_oauth_token_expiry_timestamp_seconds",
        "When the account's cached OAuth access token expires (Unix time).",
        labels=["account"],
    )
    lease = GaugeMetricFamily(
        "watchkeeper_account_lease_held",
        "1 when this instance serves the account (SQLite: one instance serves them all).",
        labels=["account"],
    )
    failing = GaugeMetricFamily(
        "watchkeeper_account_auth_failing",
        "1 while Zoho refuses the account's credentials (auth.failed, no API answer since).",
        labels=["account"],
    )
    for account in accounts:
        expires = token_expiry.get(account)
        if expires is not None:
            token.add_metric([account], expires.timestamp())
        held = account in served
        lease.add_metric([account], 1.0 if held else 0.0)
        failing.add_metric([account], 1.0 if held and account in refused else 0.0)
    return [gaps, token, lease, failing]


def service_families(health: Health) -> list[Metric]:
    """PURE: the loop's gauges; no pass timestamp before the first pass has finished."""
    last_pass = GaugeMetricFamily(
        "watchkeeper_last_pass_timestamp_seconds", "When the last pass finished (Unix time)."
    )
    if health.last_pass is not None:
        last_pass.add_metric([], health.last_pass)
    reload_ok = GaugeMetricFamily(
        "watchkeeper_config_last_reload_successful",
        "1 when the last reload applied the state file, 0 when it was not applied.",
        value=1.0 if health.reload_ok else 0.0,
    )
    build = GaugeMetricFamily(
        "watchkeeper_build_info", "Always 1; the version is the label.", labels=["version"]
    )
    build.add_metric([__version__], 1.0)
    return [last_pass, reload_ok, build]


class Scraper:
    """One exposition per scrape: the counters and the small gauges through prometheus_client,
    then the per-channel gauges; the store is read under a lock (scrapes may overlap, and a Store
    takes one caller at a time)."""

    def __init__(self, registry: CollectorRegistry, store: Store, health: Health, meter: Meter) -> None:
        self._registry = registry
        self._store = store
        self._health = health
        self._meter = meter
        self._lock = threading.Lock()
        registry.register(self)

    def collect(self) -> Iterable[Metric]:
        """The registry's collector (no ``describe``: registering must not query the database)."""
        state = self._health.state
        if state is not None:
            with self._lock:
                gaps = self._store.open_gaps()
                tokens = {account: self._token_expiry(account) for account in state.accounts}
            refused = frozenset(self._meter.refused)  # a copy: the engine's threads write it
            yield from account_families(state, gaps, tokens, self._health.served, refused)
        yield from service_families(self._health)

    def exposition(self) -> bytes:
        text = generate_latest(self._registry)
        state = self._health.state
        if state is None:
            return text
        names = {(c.account, c.channel_id): c.name or "" for c in state.channels}
        with self._lock:
            rows = self._store.status_rows()
        return text + channel_text(names, rows).encode()

    def _token_expiry(self, account: str) -> datetime | None:
        token = self._store.token_cache(account).load()
        return None if token is None else token.expires_at


# -- the listener ---------------------------------------------------------------------------------


def health_app(health: Health, scraper: Scraper) -> WSGIApplication:
    """/metrics (always the text format 0.0.4, gzipped when asked), /livez and /readyz."""
    checks: dict[str, Callable[[], bool]] = {
        "/livez": lambda: health.alive(),
        "/readyz": lambda: health.ready,
    }

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body = scraper.exposition()
            headers = [("Content-Type", CONTENT_TYPE_LATEST)]
            if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
                body = gzip.compress(body, compresslevel=1)
                headers.append(("Content-Encoding", "gzip"))
            start_response("200 OK", headers)
            return [body]
        if path not in checks:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics, /livez or /readyz\n"]
        ok = checks[path]()
        start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
        return [b"ok\n" if ok else b"not ok\n"]

    return app


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


def _server_class(address: Address) -> type[WSGIServer]:
    try:
        family = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {address}: {exc.strerror}") from None

    class Server(ThreadingMixIn, WSGIServer):
        address_family = family
        daemon_threads = True

    return Server


@contextmanager
def serve(address: Address, db: Target, health: Health) -> Iterator[Meter]:
    """Listen on ``address`` until the block ends; ListenError (naming the address) if it cannot."""
    registry = CollectorRegistry()
    meter = Meter(registry)
    store = Store(db)
    try:
        server = make_server(
            address.host,
            address.port,
            health_app(health, Scraper(registry, store, health, meter)),
            server_class=_server_class(address),
            handler_class=_Quiet,
        )
    except BaseException as exc:
        store.close()
        if isinstance(exc, OSError):
            raise ListenError(f"cannot listen on {address}: {exc.strerror or exc}") from None
        raise
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    try:
        yield meter
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        store.close()
