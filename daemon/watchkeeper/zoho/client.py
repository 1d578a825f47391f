"""The one place that talks to Zoho's ``actions/watch``: list (or tally its rows), write
(POST/PUT/PATCH) and delete.

A write or delete returns a CallResult: one ItemResult per channel of every chunk Zoho answered, in
request order, whatever the HTTP status (Zoho reports per-item failures inside 200/201/202/207 and
sometimes 400 envelopes), beside the error that stopped the call and the channels a stop left
unsent. Requests go in chunks of at most ``max_items`` channels; when Zoho refuses one as too large
the size is halved and remembered, because its documented limit is either 100 or 50.

What is raised rather than returned: RequestRefused, an item Zoho would reject, found before any
chunk is sent (so there is nothing partial to return), and every error of ``list``.

Zoho's clock is what channel expiries are measured on, so every answer's ``Date`` header refines
the estimate of its skew to ours (``server_now``). The codec is wire.py, the bounded exchange
(deadline, size cap) exchange.py, the skew estimate skew.py.

Messages and reprs never carry tokens, secrets or notify_url query values: they name the method,
the path, the status, Zoho's code and the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Literal, TypeVar

import httpx

from watchkeeper.model import ItemResult, ObservedChannel, WatchItem
from watchkeeper.zoho.auth import OAuth, StaticToken
from watchkeeper.zoho.errors import (
    RateLimited,
    RefreshFailed,
    RequestRefused,
    TerminalError,
    TransientError,
    ZohoError,
)
from watchkeeper.zoho.exchange import DEFAULT_LIMITS, DEFAULT_TIMEOUT, MAX_ITEMS, Answer, Limits
from watchkeeper.zoho.regions import Endpoint
from watchkeeper.zoho.results import CallResult
from watchkeeper.zoho.session import USER_AGENT, Session, utc_now
from watchkeeper.zoho.wire import (
    RowMerger,
    complains_about_count,
    item_body,
    json_object,
    listing_page,
    map_delete_results,
    map_write_results,
    text,
    watch_list,
)

__all__ = ["DEFAULT_TIMEOUT", "MAX_ITEMS", "USER_AGENT", "Limits", "WatchClient"]

MAX_CHANNEL_IDS_CHARS = 512
"""Longest ``channel_ids`` query value (the v8 OAS limit, UNCONFIRMED)."""
PER_PAGE = 200
MAX_LISTING_ROWS = 1_000_000
"""Rows (one per channel and module) past which a listing is a server inventing rows, not an org:
ten times the 50,000-channel account the benchmarks list (two modules a channel), 5,000 pages,
some 17 minutes of calls at 200 ms. Never reached by an org one daemon can keep alive, and it stops
a server that never ends before it fills memory."""

T = TypeVar("T")
WriteMethod = Literal["POST", "PUT", "PATCH"]
Send = Callable[[Sequence[Any]], list[ItemResult]]


def _never() -> bool:
    return False


class _TooManyItems(TerminalError):
    """A whole-request 400 that complains about the number of items: the batch gets halved."""


class WatchClient:
    """actions/watch for one account. Thread-safe for concurrent calls."""

    def __init__(
        self,
        endpoint: Endpoint,
        auth: OAuth | StaticToken,
        *,
        http: httpx.Client | None = None,
        clock: Callable[[], datetime] = utc_now,
        limits: Limits = DEFAULT_LIMITS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._path = endpoint.watch_path
        self.session = Session(endpoint, auth, http=http, clock=clock, limits=limits)
        """Shared with the account's records client: one token, one skew estimate, one pause."""
        self._retries = limits.retries
        self._sleep = sleep
        """Waits between the retries of a page or a chunk (a test's simulated clock moves instead)."""
        self._batch = {"write": limits.max_items, "delete": limits.max_items}
        self._failing = False
        """Zoho's latest call failed transiently (a 429 aside): until one is answered, a page or a
        chunk is tried once, not retried in place (see ``_retried``). Read once per page or chunk:
        calls racing on another thread change at most one's number of tries."""

    def __repr__(self) -> str:
        return f"WatchClient({self.session.base_url + self._path!r})"

    @property
    def skew(self) -> timedelta:
        """Zoho's clock minus ours (zero until an answer carried a plausible Date header)."""
        return self.session.skew

    def server_now(self) -> datetime:
        return self.session.server_now()

    def clear_block(self) -> None:
        """A reload lifts the token server's "too many requests" hold (see OAuth.clear_block)."""
        self.session.clear_block()

    def close(self) -> None:
        self.session.close()

    # -- listing ---------------------------------------------------------------------------------

    def list(self) -> dict[str, ObservedChannel]:
        """Every live channel, its per-module rows merged (events united, earliest expiry)."""
        return self.list_counted()[0]

    def list_counted(
        self, *, should_stop: Callable[[], bool] = _never
    ) -> tuple[dict[str, ObservedChannel], int]:
        """``list``, and how many rows Zoho listed (one per channel and module, expired rows it
        still shows included): what a later ``tally`` checks.

        A page that fails transiently is retried in place (``Limits.retries``), keeping the
        pages already fetched: all or nothing, a 500-page listing would almost never finish under
        2 % of 5xx. ``should_stop`` is asked around each wait, as for a chunk (see ``_retried``).
        A 429 or an auth error is raised at once (it pauses the account). Zoho ignoring
        ``page`` (a page whose every row came before) or a listing past MAX_LISTING_ROWS is a
        server bug: a TransientError, not an endless loop.
        """
        merger: RowMerger | None = None
        seen: set[object] = set()
        page = 1
        while True:
            page_rows, more = self._page(page, should_stop)
            keys = {_row_key(row) for row in page_rows}
            if page_rows and keys <= seen:
                where = f"GET {self._path} (page {page})"
                raise TransientError(f"{where}: every row repeats an earlier page")
            seen |= keys
            # Zoho's clock as the first page's Date header gave it: a listing takes minutes at
            # most, and a plausible expiry is within days of it.
            merger = merger or RowMerger(self.server_now())
            merger.add(page_rows)
            if not more:
                return merger.result(), merger.rows
            if merger.rows >= MAX_LISTING_ROWS:
                raise TransientError(
                    f"GET {self._path}: listing still had more_records after {merger.rows} rows"
                )
            page += 1

    def probe(self) -> None:
        """One row of one page, tried once: whether Zoho answers at all (raises what ``list``
        would). While an account's listings fail, this is what it costs, not a full listing."""
        body = self._request("GET", params={"per_page": 1, "page": 1})
        listing_page(body, f"GET {self._path} (probe)")

    def tally(self, rows: int, *, should_stop: Callable[[], bool] = _never) -> bool:
        """Whether Zoho still lists exactly ``rows`` rows, in one call: the page that holds the
        last of them must hold exactly its share and say that no more follow. A channel deleted,
        added or given other modules moves the count; a change that keeps it (another notify_url,
        a deletion and an addition of as many rows) is for the next full listing to see. The page
        is one the full listing fetches too, retried in place like it; errors are ``list``'s."""
        page = max(1, -(-rows // PER_PAGE))
        page_rows, more = self._page(page, should_stop)
        return not more and len(page_rows) == rows - (page - 1) * PER_PAGE

    def _page(self, page: int, should_stop: Callable[[], bool]) -> tuple[Sequence[Any], bool]:
        where = f"GET {self._path} (page {page})"
        params = {"per_page": PER_PAGE, "page": page}

        def call() -> tuple[list[Any], bool]:
            return listing_page(self._request("GET", params=params), where)

        return self._retried(call, should_stop)

    def _retried(self, call: Callable[[], T], should_stop: Callable[[], bool] = _never) -> T:
        """``call``, made again in place after each of ``Limits.retries`` delays while it fails
        transiently (a 5xx, a timeout), unless the call before it failed so too: while Zoho is
        down each attempt costs one call, as the probe does, not four (the account's backoff
        spaces them). A 429 or an auth error is raised at once: it pauses the account. So is a
        failed token refresh: each attempt may spend one of the 10 a refresh token has in 10
        minutes. ``should_stop`` is asked before each wait and after it: a stop, or a lease's margin,
        reached meanwhile sends nothing more."""
        delays = iter(() if self._failing else self._retries)
        while True:
            try:
                return call()
            except (RateLimited, RefreshFailed):
                raise
            except TransientError:
                delay = next(delays, None)
                if delay is None or should_stop():
                    raise
                self._sleep(delay)
                if should_stop():
                    raise

    # -- writes and deletes ----------------------------------------------------------------------

    def write(
        self,
        method: WriteMethod,
        items: Sequence[WatchItem],
        *,
        should_stop: Callable[[], bool] = _never,
    ) -> CallResult:
        """POST (enable), PUT (replace) or PATCH (update) ``items``.

        PATCH carries the full item too: some versions null an omitted token or require every
        field. ``should_stop`` is asked before each chunk: once it says so, the rest goes unsent.
        """
        bodies = [item_body(item) for item in items]
        ids = [body["channel_id"] for body in bodies]
        seen: set[str] = set()
        for channel_id in ids:
            if channel_id in seen:
                raise RequestRefused(f"channel {channel_id}: listed twice in one {method}")
            seen.add(channel_id)

        def send(chunk: Sequence[dict[str, Any]]) -> list[ItemResult]:
            answer = self._request(method, json_body={"watch": list(chunk)})
            watch = watch_list(answer, f"{method} {self._path}")
            return map_write_results([body["channel_id"] for body in chunk], watch, self.server_now())

        return self._batched("write", bodies, ids, send, should_stop)

    def delete(
        self, channel_ids: Sequence[str], *, should_stop: Callable[[], bool] = _never
    ) -> CallResult:
        ids = [str(channel_id) for channel_id in channel_ids]
        for channel_id in ids:
            if not channel_id or "," in channel_id or len(channel_id) > MAX_CHANNEL_IDS_CHARS:
                raise RequestRefused(f"DELETE {self._path}: channel id {channel_id!r} is not usable")

        def send(chunk: Sequence[str]) -> list[ItemResult]:
            answer = self._request("DELETE", params={"channel_ids": ",".join(chunk)})
            watch = watch_list(answer, f"DELETE {self._path}")
            return map_delete_results(chunk, watch, self.server_now())

        return self._batched("delete", ids, ids, send, should_stop)

    def _batched(
        self,
        kind: Literal["write", "delete"],
        units: Sequence[Any],
        ids: Sequence[str],
        send: Send,
        should_stop: Callable[[], bool],
    ) -> CallResult:
        """Send ``units`` (one per id in ``ids``) in chunks, stopping at the first failed one.

        A chunk that fails transiently is retried in place, as a listing page is: the channels of
        a failed chunk and of every chunk after it back off together, so at 100 chunks (10,000
        channels) 2 % of 5xx failed most renewals part-way, and each failure cost a pass and the
        rewrite of every channel left. Every write is safe to repeat: a PATCH or PUT sends the
        whole item, and a POST of a channel it did create is what a later retry would send too.
        A chunk Zoho calls too large is halved and resent; the smaller size is remembered only once
        it has worked, so one odd whole-request error cannot shrink every later batch.
        """
        done: list[ItemResult] = []
        sent = 0
        size = self._batch[kind]
        while sent < len(units):
            if should_stop():
                return CallResult(tuple(done), unsent=tuple(ids[sent:]))
            chunk = _take(kind, units[sent:], size)
            try:
                results = self._retried(partial(send, chunk), should_stop)
            except _TooManyItems as exc:
                if len(chunk) == 1:
                    return CallResult(tuple(done), error=exc)
                size = len(chunk) // 2
                continue
            except ZohoError as exc:
                return CallResult(tuple(done), error=exc)
            self._batch[kind] = size
            done.extend(results)
            sent += len(chunk)
        return CallResult(tuple(done))

    # -- one HTTP exchange -----------------------------------------------------------------------

    def _request(
        self,
        method: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """One call (the session handles 401, 429 and 5xx). None for 204."""
        writing = json_body is not None or method == "DELETE"
        try:
            answer = self.session.call(method, self._path, params=params, json_body=json_body)
            body = self._classify(method, answer, writing=writing)
        except RateLimited:
            raise
        except TransientError:
            self._failing = True
            raise
        except ZohoError:  # Zoho answered, if only to refuse
            self._failing = False
            raise
        self._failing = False
        return body

    def _classify(self, method: str, answer: Answer, *, writing: bool) -> dict[str, Any] | None:
        status = answer.status
        where = f"{method} {self._path}: HTTP {status}"
        if 300 <= status < 400:
            raise TransientError(
                f"{where} unexpected status", status=status, retry_after=self.session.retry_after(answer)
            )
        if status == 204:
            return None
        body = json_object(answer.content, where, status)
        if status < 300 or (writing and isinstance(body.get("watch"), list)):
            return body  # per-item answers, even inside a 4xx envelope
        code = text(body.get("code"))[:100] or "UNKNOWN"
        message = text(body.get("message"))[:200]
        error = _TooManyItems if status == 400 and complains_about_count(body) else TerminalError
        raise error(f"{where} {code}: {message}", code=code, status=status)


def _row_key(row: Any) -> object:
    """What makes a listing row the same row on another page: its channel and its events (as
    text: a hostile row may hold anything, hashable or not)."""
    if not isinstance(row, dict):
        return repr(row)
    return repr(row.get("channel_id")), repr(row.get("events"))


def _take(kind: str, rest: Sequence[Any], size: int) -> Sequence[Any]:
    """The next chunk; a delete's also keeps its joined ``channel_ids`` value short."""
    chunk = rest[:size]
    if kind == "delete":
        length = -1
        for n, channel_id in enumerate(chunk):
            length += len(str(channel_id)) + 1
            if length > MAX_CHANNEL_IDS_CHARS:
                return chunk[:n]
    return chunk
