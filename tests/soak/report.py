"""PURE: the figures of a soak run, from what the emulator saw, and their table and JSON forms.

Coverage and the true gaps come from the emulator's live intervals; the daemon's gap ledger is
checked against them. A true gap is explained when it starts inside an outage (the outage outlasted
what was left of the channel's lifetime: nothing could renew it) or at the instant the profile
deleted the channel behind the daemon's back; any other gap is a lapse watchkeeper should have
prevented.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tests.soak.harness import Idle, RunResult
from tests.soak.profile import Key, Schedule

TOLERANCE = 1.0
"""Seconds within which a ledger gap must match the truth at both ends."""
API_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
WRITES = ("POST", "PUT", "PATCH")
Interval = tuple[datetime, datetime | None]
LedgerGap = tuple[datetime, datetime | None, str]


@dataclass(frozen=True, slots=True)
class Hole:
    """A window in which a channel was not live on Zoho; end None: still down at the end."""

    start: datetime
    end: datetime | None
    cause: str
    """outage | deleted | unexplained."""


@dataclass(frozen=True, slots=True)
class Match:
    hole: Hole
    gap: LedgerGap
    start_error: float
    """Ledger minus truth, seconds (inf when one end is open and the other is not)."""
    end_error: float

    @property
    def ok(self) -> bool:
        """Within TOLERANCE at both ends; for a deletion the ledger may start earlier (at the
        last listing that showed the channel: the daemon cannot know the instant), never later."""
        if self.hole.cause == "deleted":
            start_ok = self.start_error <= TOLERANCE
        else:
            start_ok = abs(self.start_error) <= TOLERANCE
        return start_ok and abs(self.end_error) <= TOLERANCE


@dataclass(frozen=True, slots=True)
class LedgerCheck:
    matches: tuple[Match, ...]
    missed: tuple[Hole, ...]
    extra: tuple[LedgerGap, ...]

    @property
    def ok(self) -> bool:
        return not self.missed and not self.extra and all(m.ok for m in self.matches)


def holes(intervals: Sequence[Interval], end: datetime) -> list[tuple[datetime, datetime | None]]:
    """The windows between live intervals, and a last one when the channel is down at ``end``."""
    out: list[tuple[datetime, datetime | None]] = []
    for (_, before_end), (after_start, _) in itertools.pairwise(intervals):
        assert before_end is not None, "only the last interval may still be open"
        out.append((before_end, after_start))
    if intervals and intervals[-1][1] is not None and intervals[-1][1] < end:
        out.append((intervals[-1][1], None))
    return out


def coverage(intervals: Sequence[Interval], end: datetime) -> float:
    """Live time over the time since the channel first went live (0 when it never did)."""
    if not intervals:
        return 0.0
    first = intervals[0][0]
    span = (end - first).total_seconds()
    if span <= 0:
        return 1.0
    live = sum(
        (min(stop or end, end) - start).total_seconds() for start, stop in intervals if start < end
    )
    return live / span


def classify(start: datetime, schedule: Schedule, skew: timedelta, deleted_at: datetime | None) -> str:
    if deleted_at is not None and abs((start - deleted_at).total_seconds()) <= TOLERANCE:
        return "deleted"
    if schedule.outage_covering(start, skew) is not None:
        return "outage"
    return "unexplained"


def true_holes(result: RunResult, key: Key) -> list[Hole]:
    skew = result.params.fault_profile.clock_skew
    deleted_at = result.deleted[1] if result.deleted and result.deleted[0] == key else None
    return [
        Hole(start, end, classify(start, result.schedule, skew, deleted_at))
        for start, end in holes(result.intervals[key], result.end)
    ]


def check_ledger(truth: Sequence[Hole], ledger: Sequence[LedgerGap]) -> LedgerCheck:
    """Pair each true gap with the first unused ledger gap overlapping it (within TOLERANCE)."""
    slack = timedelta(seconds=TOLERANCE)
    unused = list(ledger)
    matches: list[Match] = []
    missed: list[Hole] = []
    for hole in truth:
        found = next(
            (
                gap
                for gap in unused
                if (hole.end is None or gap[0] <= hole.end + slack)
                and (gap[1] is None or gap[1] + slack >= hole.start)
            ),
            None,
        )
        if found is None:
            missed.append(hole)
            continue
        unused.remove(found)
        matches.append(Match(hole, found, _error(found[0], hole.start), _error(found[1], hole.end)))
    return LedgerCheck(tuple(matches), tuple(missed), tuple(unused))


def _error(ledger: datetime | None, truth: datetime | None) -> float:
    if ledger is None and truth is None:
        return 0.0
    if ledger is None or truth is None:
        return float("inf")
    return (ledger - truth).total_seconds()


def summarize(result: RunResult) -> dict[str, Any]:
    """Every figure of one run, JSON-ready."""
    params = result.params
    days = (result.end - result.start) / timedelta(days=1)
    channel_days = len(result.channels) * days
    per_channel: dict[str, float] = {}
    down: list[dict[str, Any]] = []
    causes: Counter[str] = Counter()
    live_total = span_total = 0.0
    checks: list[tuple[Key, LedgerCheck]] = []
    for key in result.channels:
        intervals = result.intervals[key]
        share = coverage(intervals, result.end)
        per_channel[f"{key[0]}/{key[1]}"] = 100 * share
        if intervals:
            span = (result.end - intervals[0][0]).total_seconds()
            live_total += share * span
            span_total += span
        truth = true_holes(result, key)
        for hole in truth:
            causes[hole.cause] += 1
            down.append(
                {
                    "account": key[0],
                    "channel_id": key[1],
                    "start": hole.start.isoformat(),
                    "end": None if hole.end is None else hole.end.isoformat(),
                    "cause": hole.cause,
                }
            )
        if result.ledger is not None:
            checks.append((key, check_ledger(truth, result.ledger.get(key, []))))
    api = [c for c in result.calls if c.method in API_METHODS and not c.records]
    tokens = [c for c in result.calls if c.method == "TOKEN"]
    refreshed = [c for c in tokens if c.status == 200]
    recoveries = _recoveries(result)
    by_method = Counter(c.method for c in api)
    writes = [c.items for c in api if c.method in WRITES]
    below = sorted(k for k, v in per_channel.items() if v < 100)
    summary: dict[str, Any] = {
        "name": result.name,
        "params": {
            "channels": params.channels,
            "modules": params.modules,
            "accounts": params.accounts,
            "days": params.days,
            "ttl": params.ttl,
            "profile": params.profile,
            "seed": params.seed,
            "reconcile_every": params.reconcile_every,
            "account_reconcile": params.account_reconcile,
        },
        "coverage": {
            "overall_pct": 100 * live_total / span_total if span_total else 0.0,
            "min_pct": min(per_channel.values()),
            "channels_below_100": below,
            "gaps_by_cause": dict(causes),
            "per_channel_pct": per_channel,
        },
        "true_gaps": down,
        "calls": {
            "per_channel_day": len(api) / channel_days,
            "by_method_per_channel_day": {m: by_method[m] / channel_days for m in API_METHODS},
            "by_method": {m: by_method[m] for m in API_METHODS},
            "failed": sum(1 for c in result.calls if c.status >= 400),
            "all_with_tokens": len(result.calls),
        },
        "token_requests_per_day": len(tokens) / days,
        "token_refreshes_per_day": len(refreshed) / days,
        "max_token_refreshes_in_10_min": _max_in_window(
            [c.at for c in refreshed], timedelta(minutes=10)
        ),
        "slowest_recovery_after_outage_s": max(recoveries, default=None),
        "largest_batch": max(writes, default=0),
        "renewal_lead_s": {
            "count": len(result.leads),
            "min": min(result.leads, default=None),
            "median": statistics.median(result.leads) if result.leads else None,
        },
        "cpu_s_per_day": result.cpu_seconds / days,
        "wall_s": result.wall_seconds,
        "events": dict(sorted(result.events.items())),
        "faults": _faults(result),
    }
    if result.ledger is not None:
        summary["ledger"] = _ledger_summary(checks)
    if result.lost is not None:
        summary["lost_events"] = result.lost.to_json()
        summary["backfill"] = _backfill_cost(result)
    if result.idle is not None:
        summary["idle"] = _idle_summary(result.idle, days)
    return summary


def _idle_summary(idle: Idle, days: float) -> dict[str, Any]:
    """What the ticks that made no call cost: the daemon wakes at least every minute."""
    return {
        "ticks": idle.ticks,
        "cpu_s_per_hour": idle.cpu_seconds / (24 * days) if days else 0.0,
        "cpu_ms_per_tick": 1000 * idle.cpu_seconds / idle.ticks if idle.ticks else None,
    }


def _backfill_cost(result: RunResult) -> dict[str, Any]:
    """What the backfill cost Zoho: records reads per closed gap, by kind and status."""
    reads = [c for c in result.calls if c.records]
    closed = sum(1 for gaps in (result.ledger or {}).values() for _, end, _ in gaps if end is not None)
    kinds = Counter(f"GET {c.records}" for c in reads)
    return {
        "closed_gaps": closed,
        "calls": len(reads),
        "calls_per_gap": len(reads) / closed if closed else None,
        "by_kind": dict(sorted(kinds.items())),
        "by_kind_per_gap": {k: v / closed for k, v in sorted(kinds.items())} if closed else {},
        "failed": sum(1 for c in reads if c.status >= 400),
        "events": {e: result.events.get(e, 0) for e in ("backfill.failed", "backfill.retry")},
    }


def _recoveries(result: RunResult) -> list[float]:
    """Seconds from the end of an outage to the re-creation of each channel it made lapse."""
    skew = result.params.fault_profile.clock_skew
    out: list[float] = []
    for key in result.channels:
        for hole in true_holes(result, key):
            outage = result.schedule.outage_covering(hole.start, skew)
            if hole.cause == "outage" and outage is not None:
                end = hole.end or result.end
                out.append(max((end - outage.end).total_seconds(), 0.0))
    return out


def _ledger_summary(checks: list[tuple[Key, LedgerCheck]]) -> dict[str, Any]:
    matches = [m for _, c in checks for m in c.matches]
    exact = [m for m in matches if m.hole.cause != "deleted"]
    deleted = [m for m in matches if m.hole.cause == "deleted"]
    return {
        "ok": all(c.ok for _, c in checks),
        "true_gaps": sum(len(c.matches) + len(c.missed) for _, c in checks),
        "recorded": sum(len(c.matches) + len(c.extra) for _, c in checks),
        "matched": len(matches),
        "missed": [
            {"channel": f"{k[0]}/{k[1]}", "start": h.start.isoformat(), "cause": h.cause}
            for k, c in checks
            for h in c.missed
        ],
        "extra": [
            {"channel": f"{k[0]}/{k[1]}", "start": g[0].isoformat(), "cause": g[2]}
            for k, c in checks
            for g in c.extra
        ],
        "mismatched": [
            {
                "channel": f"{k[0]}/{k[1]}",
                "cause": m.hole.cause,
                "start_error_s": m.start_error,
                "end_error_s": m.end_error,
            }
            for k, c in checks
            for m in c.matches
            if not m.ok
        ],
        "max_abs_start_error_s": max((abs(m.start_error) for m in exact), default=0.0),
        "max_abs_end_error_s": max((abs(m.end_error) for m in matches), default=0.0),
        "deleted_start_early_s": [-m.start_error for m in deleted],
    }


def _faults(result: RunResult) -> dict[str, Any]:
    schedule = result.schedule
    return {
        "outages": [(w.start.isoformat(), w.end.isoformat()) for w in schedule.outages],
        "rate_limit_bursts": len(schedule.bursts),
        "default_only": None
        if schedule.default_only is None
        else (schedule.default_only.start.isoformat(), schedule.default_only.end.isoformat()),
        "actions": [(a.at.isoformat(), a.kind, a.key and a.key[1]) for a in schedule.actions],
        "hits": result.fault_hits,
    }


def _max_in_window(instants: list[datetime], window: timedelta) -> int:
    instants = sorted(instants)
    best = low = 0
    for high, at in enumerate(instants):
        while at - instants[low] >= window:
            low += 1
        best = max(best, high - low + 1)
    return best


RENEWALS_PER_CHANNEL_DAY = 0.02
"""Target: PATCH requests per channel-day (at 1,000 channels with ttl 23h)."""
FEWER_CALLS_THAN_FIXED = 20.0
"""Target: the fixed-period baseline makes this many times more calls (API and token) or more."""


def targets(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets for watchkeeper (the first summary), met or not. ``correct`` (no lapse
    that an outage does not explain, and a ledger that matches the truth) is what the command's
    exit status and CI check; the cost targets are reported, not enforced."""
    ours = summaries[0]
    unexplained = ours["coverage"]["gaps_by_cause"].get("unexplained", 0)
    ledger_ok = bool(ours.get("ledger", {}).get("ok"))
    patch = ours["calls"]["by_method_per_channel_day"]["PATCH"]
    fixed = next((s for s in summaries[1:] if s["name"] == "fixed"), None)
    ratio = (
        fixed["calls"]["all_with_tokens"] / ours["calls"]["all_with_tokens"]
        if fixed and ours["calls"]["all_with_tokens"]
        else None
    )
    lost = ours.get("lost_events")
    no_loss = None if lost is None else lost["lost_with_backfill"] == 0
    return {
        "correct": unexplained == 0 and ledger_ok and no_loss is not False,
        "no_change_lost_with_backfill": no_loss,
        "no_unexplained_gap": unexplained == 0,
        "ledger_within_1s": ledger_ok,
        "renewals_per_channel_day": patch,
        "renewals_target_met": patch <= RENEWALS_PER_CHANNEL_DAY,
        "fewer_calls_than_fixed": ratio,
        "fewer_calls_target_met": None if ratio is None else ratio >= FEWER_CALLS_THAN_FIXED,
    }


# -- rendering ----------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _met(flag: bool | None) -> str:
    return "(met)" if flag else "(NOT met)"


def _ratio(base: float | None, ours: float | None) -> str:
    """How many times watchkeeper's figure the baseline's is (blank for rows without a ratio)."""
    if base is None or ours is None:
        return ""
    return f"{base / ours:.1f}x" if ours else "-"


def rows(summary: dict[str, Any]) -> list[tuple[str, str, float | None]]:
    """(label, shown value, value for ratios) in table order."""
    calls = summary["calls"]
    per_day = calls["by_method_per_channel_day"]
    lead = summary["renewal_lead_s"]
    cov = summary["coverage"]
    out: list[tuple[str, str, float | None]] = [
        ("coverage, overall", f"{cov['overall_pct']:.3f}%", None),
        ("coverage, worst channel", f"{cov['min_pct']:.3f}%", None),
        ("channels under 100%", str(len(cov["channels_below_100"])), None),
    ]
    labels = {
        "outage": "  gaps an outage explains",
        "deleted": "  gaps: deleted behind its back",
        "unexplained": "  gaps: other lapses",
    }
    out += [(label, str(cov["gaps_by_cause"].get(c, 0)), None) for c, label in labels.items()]
    out.append(("API calls / channel-day", f"{calls['per_channel_day']:.4f}", calls["per_channel_day"]))
    out += [(f"  {method}", f"{per_day[method]:.4f}", None) for method in API_METHODS]
    all_calls = calls["all_with_tokens"]
    out += [
        ("all calls (API + token)", str(all_calls), float(all_calls)),
        ("failed calls", str(calls["failed"]), None),
        ("token requests / day", f"{summary['token_requests_per_day']:.1f}", None),
        ("token refreshes granted / day", f"{summary['token_refreshes_per_day']:.1f}", None),
        ("  most granted in 10 min (Zoho: 10)", str(summary["max_token_refreshes_in_10_min"]), None),
        (
            "slowest recovery after an outage",
            _duration(summary["slowest_recovery_after_outage_s"]),
            None,
        ),
        ("largest batch (items)", str(summary["largest_batch"]), None),
        ("renewal lead before expiry, min", _duration(lead["min"]), None),
        ("renewal lead before expiry, median", _duration(lead["median"]), None),
        ("CPU s / simulated day", f"{summary['cpu_s_per_day']:.2f}", None),
        *_idle_rows(summary.get("idle")),
        ("wall s", f"{summary['wall_s']:.1f}", None),
    ]
    return out


def _idle_rows(idle: dict[str, Any] | None) -> list[tuple[str, str, float | None]]:
    """The same rows for every column (a baseline has no ticks: "-")."""
    per_tick = None if idle is None else idle["cpu_ms_per_tick"]
    return [
        ("  idle ticks (no call)", "-" if idle is None else str(idle["ticks"]), None),
        ("  idle CPU s / hour", "-" if idle is None else f"{idle['cpu_s_per_hour']:.3f}", None),
        ("  idle CPU ms / tick", "-" if per_tick is None else f"{per_tick:.3f}", None),
    ]


def lost_table(summary: dict[str, Any]) -> list[str]:
    """The lost-events table and the backfill's cost, for a run that changed records."""
    lost, cost = summary.get("lost_events"), summary.get("backfill")
    if lost is None or cost is None:
        return []
    rows = [
        ("record changes x subscribed channels", lost["changes_made"]),
        ("delivered live", lost["delivered_live"]),
        ("lost without backfill (made in a gap)", lost["lost_without_backfill"]),
        ("lost with backfill", lost["lost_with_backfill"]),
        ("  channels losing any", lost["channels_losing_with_backfill"]),
        ("duplicates delivered", lost["duplicates"]),
        ("lost to drift (live, changed behind its back)", lost["lost_to_drift"]),
    ]
    width = max(len(label) for label, _ in rows) + 2
    per_gap = cost["calls_per_gap"]
    kinds = ", ".join(f"{k} {v:.1f}" for k, v in cost["by_kind_per_gap"].items()) or "-"
    return [
        "",
        "lost events:",
        *(f"  {label:<{width}}{value:>10}" for label, value in rows),
        f"backfill cost: {cost['calls']} records calls for {cost['closed_gaps']} closed gaps"
        + (f" = {per_gap:.1f} a gap ({kinds}); {cost['failed']} failed" if per_gap is not None else ""),
    ]


def table(summaries: Sequence[dict[str, Any]], goals: dict[str, Any]) -> str:
    """watchkeeper's column first, then each baseline and how many times more it costs."""
    ours, *others = summaries
    params = ours["params"]
    head = (
        f"soak: {params['channels']} channels x {params['modules']} modules, "
        f"{params['accounts']} account(s), {params['days']:g} days, ttl {params['ttl']}, "
        f"profile {params['profile']}, seed {params['seed']}"
        + (f", reconcile_every {params['reconcile_every']}" if params["reconcile_every"] else "")
        + (f", each account's {params['account_reconcile']}" if params["account_reconcile"] else "")
    )
    columns = [s["name"] for s in summaries] + [f"{s['name']} / wk" for s in others]
    all_rows = [rows(s) for s in summaries]
    width = max(len(label) for label, _, _ in all_rows[0]) + 2
    cell = max(14, *(len(c) + 2 for c in columns))
    lines = [head, "", " " * width + "".join(f"{c:>{cell}}" for c in columns)]
    for i, (label, shown, value) in enumerate(all_rows[0]):
        cells = [shown] + [r[i][1] for r in all_rows[1:]]
        cells += [_ratio(r[i][2], value) for r in all_rows[1:]]
        lines.append(f"{label:<{width}}" + "".join(f"{c:>{cell}}" for c in cells))
    ledger = ours.get("ledger")
    if ledger is not None:
        early = ledger["deleted_start_early_s"]
        lines += [
            "",
            f"gap ledger vs emulator truth: {'OK' if ledger['ok'] else 'MISMATCH'} - "
            f"{ledger['true_gaps']} true, {ledger['recorded']} recorded, {len(ledger['missed'])} "
            f"missed, {len(ledger['extra'])} extra, {len(ledger['mismatched'])} off by more than "
            f"{TOLERANCE:g} s",
            f"  max |start error| {ledger['max_abs_start_error_s']:.3f} s (outage gaps), "
            f"max |end error| {ledger['max_abs_end_error_s']:.3f} s",
        ]
        if early:
            lines.append(
                "  deleted behind its back: the ledger starts "
                + ", ".join(_duration(s) for s in early)
                + " before the deletion (the last listing that showed the channel)"
            )
    lines += lost_table(ours)
    events = ours.get("events") or {}
    if events:
        shown = ", ".join(f"{name} {count}" for name, count in events.items())
        lines += ["", f"watchkeeper warnings and errors: {shown}"]
    faults = ours["faults"]
    lines += [
        "",
        "targets: "
        + "; ".join(
            [
                f"coverage 100% but for outages {_met(goals['no_unexplained_gap'])}",
                f"no change lost with backfill {_met(goals['no_change_lost_with_backfill'])}",
                f"ledger within {TOLERANCE:g} s {_met(goals['ledger_within_1s'])}",
                f"PATCH/channel-day {goals['renewals_per_channel_day']:.4f} <= "
                f"{RENEWALS_PER_CHANNEL_DAY} {_met(goals['renewals_target_met'])}",
                "calls vs fixed "
                + (
                    "-"
                    if goals["fewer_calls_than_fixed"] is None
                    else f"{goals['fewer_calls_than_fixed']:.1f}x fewer >= {FEWER_CALLS_THAN_FIXED:g}x "
                    f"{_met(goals['fewer_calls_target_met'])}"
                ),
            ]
        ),
    ]
    lines += [
        "faults in watchkeeper's run: "
        + (", ".join(f"{k} {v}" for k, v in faults["hits"].items()) or "no")
        + f" calls hit; {len(faults['outages'])} outages, {faults['rate_limit_bursts']} 429 bursts, "
        + f"{sum(1 for a in faults['actions'] if a[1] == 'restart')} restarts"
    ]
    return "\n".join(lines)
