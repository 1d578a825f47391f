"""PURE: what an answer from Zoho means for the registry, the gap ledger, the account and the logs.

Each function turns one observation or one call's answer into a Transition: the entries to write,
the gaps opened or closed, the account's pause, the log events and the counts. The engine records
a Transition in one transaction and emits its events; nothing here does I/O or reads the clock.

Instants: ``zoho_now`` and everything in the registry are on Zoho's clock; ``now`` and the account
pause are on ours.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from watchkeeper import ledger, policy
from watchkeeper.model import (
    ChannelSpec,
    ItemResult,
    ObservedChannel,
    RegistryEntry,
    WatchItem,
    modules_of,
    url_digest,
)
from watchkeeper.planner import Action, Method
from watchkeeper.policy import Policy
from watchkeeper.zoho.errors import (
    AuthError,
    RateLimited,
    TerminalError,
    TransientError,
    ZohoError,
)
from watchkeeper.zoho.results import CallResult

Level = Literal["debug", "info", "warning", "error"]

TERMINAL_ITEM_CODES = frozenset(
    {
        "INVALID_DATA",
        "MANDATORY_NOT_FOUND",
        "NO_PERMISSION",
        "OAUTH_SCOPE_MISMATCH",
        "NOT_ALLOWED",
        "EXPECTED_FIELD_MISSING",
        "AMBIGUITY_DURING_PROCESSING",
        "DEPENDENT_FIELD_MISSING",
    }
)
"""Item codes that say the channel's definition or the user's rights are wrong: held back until a
reload or ``terminal_retry`` (capped by the emergency point). Any other refusal (INTERNAL_ERROR, or
no answer for the item) is retried with backoff, capped before the channel's expiry."""

_SUCCESS_EVENTS = {"create": "channel.created", "adopt": "channel.adopted", "renew": "channel.renewed"}
SUMMARY_IDS = 10
"""Channel ids a ``channels.renewed`` line names, the first of the request: the line stays a few
hundred bytes however many channels the request renewed (its ``count`` says how many)."""


@dataclass(frozen=True, slots=True)
class LogEvent:
    level: Level
    event: str
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Situation:
    """What every interpretation needs to know about the account at the moment of the answer."""

    account: str
    entries: Mapping[str, RegistryEntry]
    now: datetime
    """Our clock."""
    skew: timedelta
    """Zoho's clock minus ours."""
    policy: Policy
    rng: random.Random
    """Where the jitter of renewal times and backoffs comes from (seeded in tests and the soak)."""
    names: Mapping[str, str | None] = field(default_factory=dict)
    listed: frozenset[str] | None = None
    """Channel ids live in the account's latest listing; None before any listing succeeded."""
    last_seen: Mapping[str, datetime | None] = field(default_factory=dict)
    """When Zoho last showed each channel live, for the channels it may turn out to have lost:
    where a vanished channel's gap starts."""

    @property
    def zoho_now(self) -> datetime:
        return self.now + self.skew


@dataclass(frozen=True, slots=True)
class Request:
    """A POST, PUT or PATCH as sent: the actions and the items built from them, in order."""

    method: Method
    actions: Sequence[Action]
    items: Sequence[WatchItem]


@dataclass
class Transition:
    """What an answer changes. Built by the functions below and recorded by the engine as one
    transaction; ``entries`` holds the new version of every entry that changed."""

    account: str
    names: Mapping[str, str | None] = field(default_factory=dict)
    entries: dict[str, RegistryEntry] = field(default_factory=dict)
    renewed_at: dict[str, datetime] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    opened: list[ledger.GapOpened] = field(default_factory=list)
    closed: list[ledger.GapClosed] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    seen_at: datetime | None = None
    listed: bool = False
    """Zoho answered a listing: the account's registry now agrees with Zoho, so the journal of
    requests a crash interrupted has nothing left to tell."""
    pause_until: datetime | None = None
    """Our-clock instant before which no further request of the account goes out."""
    list_soon: bool = False
    """The account's next pass lists it: an answer raised a question only a listing settles."""
    rows_added: int | None = 0
    """How many rows (one per channel and module) this added to the account's listing on Zoho, as
    far as is known; None: unknown, or only a full listing settles a question, so the account's
    next look is a full listing rather than a tally of its row count."""
    recreate: list[Action] = field(default_factory=list)
    events: list[LogEvent] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    failed: int = 0

    def put(self, entry: RegistryEntry) -> None:
        self.entries[entry.channel_id] = entry

    def step(self, step: ledger.Step) -> None:
        self.put(step.entry)
        if step.opened is not None:
            self.opened.append(step.opened)
            self.log(
                "error",
                "channel.lapsed",
                channel_id=step.opened.channel_id,
                start=step.opened.start,
                cause=step.opened.cause,
            )
        if step.closed is not None:
            self.closed.append(step.closed)
            self.log(
                "warning",
                "channel.recovered",
                channel_id=step.closed.channel_id,
                start=step.closed.start,
                end=step.closed.end,
            )

    def log(self, level: Level, event: str, **fields: Any) -> None:
        """Channel events carry the channel's name from the state file, where it has one."""
        channel_id = fields.get("channel_id")
        if isinstance(channel_id, str):
            fields.setdefault("name", self.names.get(channel_id))
        self.events.append(LogEvent(level, event, {"account": self.account, **fields}))


# -- observing -------------------------------------------------------------------------------------


def observed(
    at: Situation,
    listing: Mapping[str, ObservedChannel] | None,
    watched: frozenset[str],
    *,
    expired: Iterable[str] | None = None,
    outage_over: bool = False,
) -> Transition:
    """A pass's look at the account: the ledger over every owned channel, and, when Zoho answered a
    listing, the end of the holds an outage put on them (so they are tried in this pass, not at
    the end of their backoff). ``listing`` already leaves out expired rows.

    ``expired``: without a listing (where it is required), the channels whose expiry may have
    passed (at least those not lapsed whose expiry did): the ledger changes no other entry then,
    so a pass without a listing does not look at each of an account's thousands of channels.

    ``outage_over``: the listing is the first Zoho answered after failed ones. The failures of the
    channels it frees were the outage's, so their streak starts again: one 5xx on the re-creation
    that follows backs off on the first step (``retry_initial``), not on the outage's (up to
    ``retry_max``, 15 minutes by default, for every channel of that request)."""
    out = Transition(at.account, at.names)
    live = dict(listing) if listing is not None else None
    if listing is None and expired is None:
        raise ValueError("a look without a listing needs the channels whose expiry came")
    for channel_id, entry in _observable(at, listing is not None, expired or ()):
        step = ledger.observe(
            entry, live, at.last_seen.get(channel_id), at.zoho_now, watched=channel_id in watched
        )
        current = step.entry
        if listing is not None and current.retry_at is not None and not current.terminal:
            failures = 0 if outage_over else current.failures
            current = replace(current, retry_at=None, failures=failures)
        if current != entry:
            out.step(replace(step, entry=current))
    if listing is not None:
        out.seen = sorted(cid for cid in at.entries if cid in listing)
        out.seen_at = at.zoho_now
        out.listed = True
    return out


def _observable(
    at: Situation, listed: bool, expired: Iterable[str]
) -> Iterable[tuple[str, RegistryEntry]]:
    """The entries the ledger may change: all of them after a listing; otherwise those of
    ``expired`` whose expiry passed and that are not lapsed yet (ledger.observe leaves the others
    as they are)."""
    if listed:
        return at.entries.items()
    now, entries = at.zoho_now, at.entries
    found = ((c, entries[c]) for c in sorted(expired) if c in entries)
    return ((c, e) for c, e in found if e.lapsed_since is None and _expired(e, now))


def _expired(entry: RegistryEntry, zoho_now: datetime) -> bool:
    return entry.expires_at is not None and entry.expires_at <= zoho_now


def listing_failed(at: Situation, exc: ZohoError, next_listing: datetime) -> Transition:
    """A listing Zoho did not answer: the account's pause, if the error asks for one, and its log
    (the next attempt is the next listing, on our clock)."""
    out = Transition(at.account, at.names)
    _pause_and_log(out, at, "GET", exc, next_listing + at.skew)
    return out


def records_failed(at: Situation, exc: AuthError | RateLimited) -> Transition:
    """A backfill's records read that Zoho answered with a 429 or refused the credentials of: the
    account pauses as for a watch call (a missing read scope never gets here: it fails the
    backfill alone)."""
    out = Transition(at.account, at.names)
    _pause_and_log(out, at, "GET", exc, None)
    return out


def planned(at: Situation, actions: Sequence[Action], refused: Iterable[str]) -> Transition:
    """Before anything is sent: what is about to be fixed is announced once per channel and
    condition rather than on every retry (``channel.at_risk``, whose state records it;
    ``channel.drift``), and channels a guard keeps are marked ``removing``."""
    out = Transition(at.account, at.names)
    for channel_id in refused:
        entry = at.entries.get(channel_id)
        if entry is not None and entry.state != "removing":
            out.put(replace(entry, state="removing"))
    for action in actions:
        entry = out.entries.get(action.channel_id) or at.entries.get(action.channel_id)
        if action.at_risk and entry is not None and entry.state not in ("at_risk", "lapsed"):
            out.put(replace(entry, state="at_risk"))
            out.log(
                "warning",
                "channel.at_risk",
                channel_id=action.channel_id,
                expires_at=entry.expires_at,
            )
        if action.drift and (entry is None or entry.failures == 0):
            out.log(
                "warning",
                "channel.drift",
                channel_id=action.channel_id,
                drift=list(action.drift),
                reason=action.reason,
            )
    return out


def sending(at: Situation, actions: Sequence[Action]) -> Transition:
    """A channel is entered in the registry (``pending``) before its first POST: a crash between
    the POST and its answer then comes back as a renewal of a channel we own, never as a
    duplicate or the adoption of our own channel. A channel being deleted is ``removing``."""
    out = Transition(at.account, at.names)
    for action in actions:
        entry = at.entries.get(action.channel_id)
        if entry is None:
            out.put(RegistryEntry(account=at.account, channel_id=action.channel_id, state="pending"))
        elif action.kind == "delete" and entry.state != "removing":
            out.put(replace(entry, state="removing"))
    return out


# -- answers ---------------------------------------------------------------------------------------


def written(at: Situation, request: Request, answer: CallResult, granted_at: datetime) -> Transition:
    """The answer to a POST, PUT or PATCH, item by item, then the request as a whole.
    ``granted_at`` is Zoho's time when the answer came: lifetimes are counted from it."""
    out = Transition(at.account, at.names)
    method = request.method
    answered = answer.answered
    unsettled: list[str] = []
    for action, item in zip(request.actions, request.items, strict=True):
        result = answered.get(action.channel_id)
        entry = at.entries.get(action.channel_id) or RegistryEntry(
            account=at.account, channel_id=action.channel_id, state="pending"
        )
        if result is None:
            if action.channel_id not in answer.unsent:
                unsettled.append(action.channel_id)
        elif result.ok:
            _succeeded(out, at, item, action, result, granted_at)
        elif result.not_found and method != "POST":
            out.step(ledger.gone(entry, at.last_seen.get(action.channel_id), granted_at))
            out.recreate.append(replace(action, kind="create", reason="vanished", drift=()))
        elif result.code in TERMINAL_ITEM_CODES:
            _rejected(out, at, method, entry, result)
        else:
            unsettled.append(action.channel_id)
    _renewals(out, request)
    out.seen = [cid for cid, result in answered.items() if result.ok]
    out.seen_at = granted_at
    _unsettled(out, at, method, unsettled, answer)
    out.rows_added = None if out.list_soon else _rows_added(at, request, answered, bool(unsettled))
    return out


def _rows_added(
    at: Situation, request: Request, answered: Mapping[str, ItemResult], unsettled: bool
) -> int | None:
    """What a write did to the account's row count: a PATCH (a renewal, an adoption) keeps its
    channels' modules, applied or not, and a settled POST of channels the last listing did not
    show adds one row per module of each one Zoho accepted. A PUT may change the modules, and a
    channel the listing showed may have rows left: unknown."""
    if request.method == "PATCH":
        return 0
    if request.method != "POST" or at.listed is None or unsettled:
        return None
    added = 0
    for action in request.actions:
        result = answered.get(action.channel_id)
        if result is None or not result.ok or action.spec is None:
            continue
        if action.channel_id in at.listed:
            return None
        added += len(modules_of(action.spec.events))
    return added


def deleted(at: Situation, answer: CallResult, ids: Sequence[str]) -> Transition:
    """The answer to a DELETE: a channel Zoho removed (or no longer had) leaves the registry and
    closes its gap, since nothing is desired of it any more."""
    out = Transition(at.account, at.names, rows_added=None)
    answered = answer.answered
    unsettled: list[str] = []
    for channel_id in ids:
        result = answered.get(channel_id)
        entry = at.entries.get(channel_id)
        if result is None or entry is None:
            if result is None and channel_id not in answer.unsent:
                unsettled.append(channel_id)
        elif result.ok:
            out.step(ledger.recover(entry, at.zoho_now))
            del out.entries[channel_id]
            out.removed.append(channel_id)
            out.log("info", "channel.deleted", channel_id=channel_id, code=result.code)
            out.counts["delete"] += 1
        elif result.code in TERMINAL_ITEM_CODES:
            _rejected(out, at, "DELETE", entry, result)
        else:
            unsettled.append(channel_id)
    _unsettled(out, at, "DELETE", unsettled, answer)
    return out


def _succeeded(
    out: Transition,
    at: Situation,
    item: WatchItem,
    action: Action,
    result: ItemResult,
    granted_at: datetime,
) -> None:
    spec = item.spec
    tuning = at.policy
    previous = at.entries.get(spec.channel_id) or RegistryEntry(at.account, spec.channel_id, "pending")
    expires_at = result.expires_at or min(item.expires_at, granted_at + tuning.unknown_expiry_cap)
    lifetime = max(expires_at - granted_at, timedelta(seconds=1))
    was_clamped = previous.lifetime is not None and policy.expiry_clamped(
        spec.ttl, previous.lifetime, tuning
    )
    if policy.expiry_clamped(spec.ttl, lifetime, tuning) and not was_clamped:
        out.log(
            "warning",
            "channel.expiry_clamped",
            channel_id=spec.channel_id,
            name=spec.name,
            requested=spec.ttl,
            granted=lifetime,
            expires_at=expires_at,
        )
    token, url = spec.digests()
    granted = RegistryEntry(
        account=at.account,
        channel_id=spec.channel_id,
        state="active",
        applied=replace(spec, token=None),
        applied_token_digest=token,
        applied_url_digest=url,
        expires_at=expires_at,
        lifetime=lifetime,
        renew_at=policy.draw_renew_at(granted_at, expires_at, tuning, at.rng),
        lapsed_since=previous.lapsed_since,
    )
    out.step(ledger.recover(granted, granted_at))
    out.renewed_at[spec.channel_id] = granted_at
    fields: dict[str, Any] = {"drift": list(action.drift)} if action.drift else {}
    out.log(
        "debug" if action.kind == "renew" and not action.at_risk else "info",
        _SUCCESS_EVENTS.get(action.kind, "channel.repaired"),
        channel_id=spec.channel_id,
        name=spec.name,
        reason=action.reason,
        expires_at=expires_at,
        **fields,
    )
    out.counts[action.kind] += 1


def _renewals(out: Transition, request: Request) -> None:
    """One ``channels.renewed`` line (info) for the request's renewals, whose own lines are debug:
    a routine renewal is most of a fleet's log otherwise (one line a channel every half lifetime).
    A renewal of a channel ``at_risk`` keeps its info line too: it answers a warning."""
    renewed = [
        a.channel_id for a in request.actions if a.kind == "renew" and a.channel_id in out.renewed_at
    ]
    if not renewed:
        return
    granted = [e for cid in renewed if (e := out.entries[cid].expires_at) is not None]
    out.log(
        "info",
        "channels.renewed",
        count=len(renewed),
        channel_ids=renewed[:SUMMARY_IDS],
        earliest_expires_at=min(granted),
    )


def _rejected(
    out: Transition, at: Situation, method: Method, entry: RegistryEntry, result: ItemResult
) -> None:
    """Zoho refused the item for a reason retrying will not fix: held back until a reload or
    ``terminal_retry``, but never past the channel's emergency point (an odd refusal of a channel
    Zoho accepted unchanged before must not cost a lapse). A refused PATCH or PUT may mean that
    Zoho no longer knows the channel (its answer for that is UNCONFIRMED), so the account is listed
    in full at once: the listing decides, and a channel it shows gone is re-created by POST."""
    tuning = at.policy
    wanted = at.zoho_now + tuning.terminal_retry
    out.put(
        replace(
            entry,
            state="failed",
            failures=entry.failures + 1,
            retry_at=policy.capped_hold(at.zoho_now, wanted, entry, tuning),
            last_error=" ".join(part for part in (result.code, result.api_name) if part),
            terminal=True,
        )
    )
    if method in ("PATCH", "PUT"):
        out.list_soon = True
    out.log(
        "error",
        "channel.rejected",
        channel_id=entry.channel_id,
        code=result.code,
        api_name=result.api_name,
        json_path=result.json_path,
        message=result.message,
    )
    out.failed += 1


def _unsettled(
    out: Transition, at: Situation, method: Method, channel_ids: Sequence[str], answer: CallResult
) -> None:
    """Channels the request left undecided (it failed, Zoho said nothing of them, or refused them
    with a code retrying can fix) back off together.

    The backoff is drawn once for the request, not once per channel: the channels failed
    together, and separate retry times would bring each back in a request of its own (three
    2-hour outages at 1,000 channels made some 12,000 single-channel retries)."""
    if not channel_ids:
        if answer.error is not None:
            _pause_and_log(out, at, method, answer.error, None)
        return
    error = answer.error or TransientError(_not_done(method, channel_ids, answer.results))
    reason = str(error)
    terminal = isinstance(error, AuthError | TerminalError)
    tuning = at.policy
    entries = [
        out.entries.get(cid) or at.entries[cid]
        for cid in channel_ids
        if cid in out.entries or cid in at.entries
    ]
    streak = max((entry.failures for entry in entries), default=0) + 1
    delay = policy.backoff(streak, tuning, at.rng)
    earliest: datetime | None = None
    for entry in entries:
        if terminal:
            wanted = at.zoho_now + tuning.terminal_retry
            retry_at = policy.capped_hold(at.zoho_now, wanted, entry, tuning)
        else:
            retry_at = policy.retry_after(at.zoho_now, delay, entry.expires_at, tuning)
        earliest = retry_at if earliest is None else min(earliest, retry_at)
        out.put(
            replace(
                entry,
                failures=entry.failures + 1,
                retry_at=retry_at,
                last_error=reason,
                state="failed" if terminal else entry.state,
                terminal=terminal,
            )
        )
    out.failed += len(channel_ids)
    _pause_and_log(out, at, method, error, earliest)


def _pause_and_log(
    out: Transition, at: Situation, method: str, error: ZohoError, earliest: datetime | None
) -> None:
    """Pause the account on 429 and on bad credentials (capped by its channels' emergency points),
    and say what happened; ``earliest`` is the first retry on Zoho's clock, when one is known."""
    tuning = at.policy
    entries = list(at.entries.values())
    if isinstance(error, AuthError):
        wanted = at.zoho_now + tuning.terminal_retry
        out.pause_until = policy.account_pause(at.zoho_now, wanted, entries, tuning) - at.skew
        out.log("error", "auth.failed", code=error.code, error=str(error))
    elif isinstance(error, RateLimited):
        wanted = at.zoho_now + policy.rate_limit_pause(error.retry_after, tuning)
        out.pause_until = policy.account_pause(at.zoho_now, wanted, entries, tuning) - at.skew
        out.log(
            "warning",
            "api.rate_limited",
            method=method,
            retry_after=out.pause_until - at.now,
            next_attempt=out.pause_until,
        )
    else:
        out.log(
            "warning",
            "api.retry",
            method=method,
            error=str(error),
            next_attempt=(earliest - at.skew) if earliest is not None else None,
        )


def _not_done(method: str, channel_ids: Sequence[str], results: Sequence[ItemResult]) -> str:
    pending = set(channel_ids)
    codes = sorted({r.code for r in results if r.channel_id in pending} or {"no answer"})
    return f"{method}: {len(channel_ids)} item(s) not done ({', '.join(codes)})"


def spec_for_retained(entry: RegistryEntry, known: ChannelSpec | None) -> ChannelSpec | None:
    """The spec to keep a channel alive with whose deletion a guard refused: the last one this
    process was given, else the one Zoho last accepted, if the store kept it faithfully (no token,
    which the store never keeps and renewing without would null, and a notify_url with nothing
    masked)."""
    if known is not None:
        return known
    applied = entry.applied
    if applied is None or entry.applied_token_digest is not None:
        return None
    faithful = entry.applied_url_digest is None or entry.applied_url_digest == url_digest(
        entry.account, entry.channel_id, applied.notify_url
    )
    return applied if faithful else None
