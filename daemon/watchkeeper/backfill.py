"""Backfill's imperative shell: asks Zoho what changed in a gap, redelivers it to the channel's
notify_url, and records each step (DESIGN.md section 9). The decisions are backfill_plan's.

A job goes pending -> collected -> done or failed. Collecting asks the records APIs of every
subscribed module and stores every notification before the first is sent; each one is marked
once its receiver answered 2xx, so a crash resends at most the one in flight. A job waits until its
window's end has passed (Zoho's clock). Answers from Zoho count against the account like watch
calls: a 429 or bad credentials pause the account (``outcome.records_failed``), a missing read
scope fails the job alone (``scope``) and never touches renewals. A receiver's refusal is retried
with the channel backoff for a day (``receiver``); Zoho's own refusals fail it (``zoho``).

The engine runs this after every account's renewals, and ``interrupted`` stops it between two
requests as soon as a renewal or listing falls due, so a backfill never delays one.

Logs: never a channel token, never a notify_url query value (the URL is logged masked).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import httpx

from watchkeeper import __version__, backfill_plan, logs, outcome
from watchkeeper.backfill_plan import Notification, Window
from watchkeeper.model import ChannelSpec
from watchkeeper.outcome import Transition
from watchkeeper.secrets import mask_url
from watchkeeper.store import Backfill, Store
from watchkeeper.units import Unit
from watchkeeper.zoho.errors import AuthError, RateLimited, TransientError, ZohoError
from watchkeeper.zoho.exchange import Limits, Request, exchange
from watchkeeper.zoho.records import MissingScope, RecordsClient

RECEIVER_LIMITS = Limits(deadline=30.0, max_answer_bytes=64 * 1024)
"""A receiver's answer is only read for its status."""
USER_AGENT = f"watchkeeper/{__version__} (backfill)"


def collect(records: RecordsClient, spec: ChannelSpec, window: Window) -> list[Notification]:
    """Every notification of the window, module by module (Zoho's calls; raises ZohoError)."""
    out: list[Notification] = []
    for query in backfill_plan.queries(spec.events):
        modified = records.modified(query.module, window.start, window.end) if query.modified else []
        deleted = records.deleted(query.module, window.start) if query.deleted else []
        out.extend(backfill_plan.notifications(query.module, window, spec.events, modified, deleted))
    return out


@dataclass
class Progress:
    """What one account's backfill step leaves for the engine."""

    transitions: list[Transition] = field(default_factory=list)
    """Pauses (429, bad credentials) to commit like any answer's."""
    next_at: datetime | None = None
    """Our clock: when the account's backfill next has something to do."""

    def later(self, at: datetime) -> None:
        self.next_at = at if self.next_at is None else min(self.next_at, at)


@dataclass(frozen=True, slots=True)
class _Step:
    """One account's backfill step: what every job of it is advanced with."""

    unit: Unit
    at: outcome.Situation
    interrupted: Callable[[], bool]
    progress: Progress


class Backfiller:
    def __init__(
        self,
        store: Store,
        *,
        rng: random.Random,
        http: httpx.Client | None = None,
        limits: Limits = RECEIVER_LIMITS,
        on_delivered: Callable[[str, str, int], None] | None = None,
    ) -> None:
        self._store = store
        self._rng = rng
        self._on_delivered = on_delivered
        """Told (account, operation, records) of every notification a receiver took: the metrics."""
        self._owns_http = http is None
        self._http = httpx.Client(timeout=limits.timeout) if http is None else http
        self._limits = limits
        self.log = logs.get_logger()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def run(
        self,
        unit: Unit,
        at: outcome.Situation,
        specs: Mapping[str, ChannelSpec],
        interrupted: Callable[[], bool],
    ) -> Progress:
        """Advance every job of the account that is ready as far as it can go now."""
        step = _Step(unit, at, interrupted, Progress())
        progress = step.progress
        for job in self._store.pending_backfills(unit.name, ready_by=at.zoho_now):
            window = Window(job.gap.start, _end(job))
            if interrupted() or unit.paused(at.now):
                progress.later(at.now if unit.paused_until is None else max(at.now, unit.paused_until))
                return progress
            spec = specs.get(job.gap.channel_id)
            if spec is None:
                self._fail(
                    job, "receiver", "the channel is not in the state file: no notify_url or token"
                )
                continue
            count = job.notifications if job.collected else self._collect(step, job, spec, window)
            if count is not None:
                self._deliver(step, job, spec, window, count)
            if progress.transitions:  # the account is paused: nothing more of it now
                progress.later(at.now)
                return progress
        waiting = self._store.next_backfill_ready(unit.name, at.zoho_now)
        if waiting is not None:
            progress.later(waiting - at.skew)
        return progress

    def _collect(self, step: _Step, job: Backfill, spec: ChannelSpec, window: Window) -> int | None:
        """Ask Zoho and store every notification to send; how many, or None when it failed."""
        gap = job.gap
        modules = [q.module for q in backfill_plan.queries(spec.events)]
        self.log.info(
            "backfill.started",
            account=gap.account,
            channel_id=gap.channel_id,
            gap_id=gap.id,
            start=window.start,
            end=window.end,
            modules=modules,
        )
        try:
            notes = collect(RecordsClient(step.unit.client.session), spec, window)
        except MissingScope as exc:
            self._fail(job, "scope", str(exc))
            return None
        except (AuthError, RateLimited) as exc:
            step.progress.transitions.append(outcome.records_failed(step.at, exc))
            return None
        except TransientError as exc:
            self._retry(job, step.at, "zoho", str(exc), step.progress)
            return None
        except ZohoError as exc:
            self._fail(job, "zoho", str(exc))
            return None
        self._store.backfill_collected(gap.id, [(n.module, n.operation, n.ids) for n in notes])
        return len(notes)

    def _deliver(
        self, step: _Step, job: Backfill, spec: ChannelSpec, window: Window, count: int
    ) -> None:
        """POST the undelivered notifications in order, each marked once its receiver took it."""
        gap, at = job.gap, step.at
        resource = RecordsClient(step.unit.client.session)
        records = job.records if job.collected else 0
        for note in self._store.backfill_undelivered(gap.id):
            if step.interrupted():
                step.progress.later(at.now)
                return
            sent = backfill_plan.stored(note.module, note.operation, note.ids)
            body = backfill_plan.body(
                sent, spec, window, at.zoho_now, resource.resource_uri(note.module)
            )
            refused = self._post(spec.notify_url, body)
            if refused is not None:
                self._retry(job, at, "receiver", refused, step.progress)
                return
            self._store.backfill_delivered(gap.id, note.seq, len(note.ids), at.zoho_now)
            records += len(note.ids)
            if self._on_delivered is not None:
                self._on_delivered(gap.account, note.operation, len(note.ids))
        self._store.finish_backfill(gap.id, "done")
        self.log.info(
            "backfill.finished",
            account=gap.account,
            channel_id=gap.channel_id,
            gap_id=gap.id,
            start=window.start,
            end=window.end,
            records=records,
            notifications=count,
        )

    def _post(self, url: str, body: dict[str, object]) -> str | None:
        """POST one notification; None when the receiver took it, else why not (no secret)."""
        where = f"POST {mask_url(url)}"
        headers = {"User-Agent": USER_AGENT}
        try:
            answer = exchange(self._http, Request("POST", url, where, headers, None, body), self._limits)
        except TransientError as exc:
            return str(exc)
        if 200 <= answer.status < 300:
            return None
        return f"{where}: HTTP {answer.status}"

    def _retry(
        self, job: Backfill, at: outcome.Situation, reason: str, error: str, progress: Progress
    ) -> None:
        first = job.first_failure_at or at.zoho_now
        failures = job.failures + 1
        retry_at = backfill_plan.next_attempt(failures, first, at.zoho_now, at.policy, self._rng)
        if retry_at is None:
            self._fail(job, reason, error)
            return
        self._store.backfill_retry(job.gap.id, failures, first, retry_at, error)
        self.log.warning(
            "backfill.retry",
            account=job.gap.account,
            channel_id=job.gap.channel_id,
            gap_id=job.gap.id,
            reason=reason,
            error=error,
            next_attempt=retry_at - at.skew,
        )
        progress.later(retry_at - at.skew)

    def _fail(self, job: Backfill, reason: str, error: str) -> None:
        self._store.finish_backfill(job.gap.id, "failed", reason, error)
        self.log.error(
            "backfill.failed",
            account=job.gap.account,
            channel_id=job.gap.channel_id,
            gap_id=job.gap.id,
            reason=reason,
            error=error,
        )


def _end(job: Backfill) -> datetime:
    if job.gap.end is None:  # the store requests only closed gaps
        raise ValueError(f"gap {job.gap.id} is still open")
    return job.gap.end
