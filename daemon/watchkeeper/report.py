"""PURE: what the one-shot commands print — aligned tables for people, JSON shapes for machines.

The JSON shapes are public interface (DESIGN.md section 4): ``channel_id`` always a string, times
ISO 8601 in UTC, ``end`` null while a gap is open. Text output shows every control character
escaped (``\x1b``, ``\n``): a name, an account or a server's error message must not move the
cursor, recolour the terminal or forge a table row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from watchkeeper.backfill_plan import Notification
from watchkeeper.planner import Plan, Refusal
from watchkeeper.values import Gap, LeaseState, StatusRow


def iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.isoformat().replace("+00:00", "Z")


def human_delta(delta: timedelta) -> str:
    """``41m``, ``6d23h``, ``-5m`` (in the past): two units at most, enough to read at a glance."""
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
        if len(parts) == 2:
            break
    return sign + "".join(parts)


def printable(text: str) -> str:
    """``text`` with each non-printable character written as Python writes it in a repr."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in (list(headers), *rows)
    ]
    return "\n".join(lines)


def refusals_json(refused: Sequence[Refusal]) -> list[dict[str, Any]]:
    return [
        {
            "account": r.account,
            "reason": r.reason,
            "channel_ids": list(r.channel_ids),
            "message": r.message,
        }
        for r in refused
    ]


# -- plan ------------------------------------------------------------------------------------


def plan_json(plan: Plan, names: dict[tuple[str, str], str | None]) -> dict[str, Any]:
    return {
        "in_sync": not plan.changes,
        "actions": [
            {
                "account": a.account,
                "channel_id": a.channel_id,
                "name": names.get((a.account, a.channel_id)),
                "kind": a.kind,
                "reason": a.reason,
                "drift": list(a.drift),
                "at_risk": a.at_risk,
            }
            for a in plan.actions
        ],
        "foreign": [
            {"account": account, "channel_id": c.channel_id, "modules": c.modules}
            for account, c in plan.foreign
        ],
        "refused": refusals_json(plan.refused),
    }


def plan_text(doc: dict[str, Any]) -> str:
    rows = [
        [a["account"], a["channel_id"], a["name"] or "", a["kind"], a["reason"], ",".join(a["drift"])]
        for a in doc["actions"]
    ]
    out = [table(["ACCOUNT", "CHANNEL", "NAME", "ACTION", "REASON", "DRIFT"], rows)] if rows else []
    out += [f"refused: {printable(r['message'])}" for r in doc["refused"]]
    count = len(doc["actions"])
    summary = "in sync" if doc["in_sync"] else f"{count} change{'s' if count != 1 else ''} pending"
    if doc["foreign"]:
        summary += f"; {len(doc['foreign'])} foreign channel(s) left alone"
    out.append(summary)
    return "\n".join(out)


# -- apply -----------------------------------------------------------------------------------


@dataclass
class PassReport:
    """What one pass did: the fields of the ``reconcile.finished`` log event and of ``apply --json``."""

    listed: bool = False
    desired: int = 0
    active: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    foreign: int = 0
    refused: list[Refusal] = field(default_factory=list)
    list_failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.refused and not self.list_failed

    def merge(self, part: PassReport) -> None:
        """Add one account's share of the pass."""
        self.listed |= part.listed
        self.counts.update(part.counts)
        self.failed += part.failed
        self.foreign += part.foreign
        self.list_failed += part.list_failed


def finished_fields(report: PassReport) -> dict[str, Any]:
    """The ``reconcile.finished`` event's fields."""
    return {"listed": report.listed, **_tally(report)}


def apply_json(report: PassReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        **_tally(report),
        "list_failed": report.list_failed,
        "refused": refusals_json(report.refused),
    }


def _tally(report: PassReport) -> dict[str, Any]:
    return {
        "desired": report.desired,
        "active": report.active,
        "created": report.counts["create"],
        "adopted": report.counts["adopt"],
        "renewed": report.counts["renew"],
        "repaired": report.counts["repair"],
        "deleted": report.counts["delete"],
        "failed": report.failed,
        "foreign": report.foreign,
    }


def apply_text(doc: dict[str, Any]) -> str:
    keys = ("created", "adopted", "renewed", "repaired", "deleted", "failed")
    line = ", ".join(f"{doc[k]} {k}" for k in keys)
    out = [f"{doc['active']}/{doc['desired']} active; {line}; {doc['foreign']} foreign"]
    out += [f"refused: {printable(r['message'])}" for r in doc["refused"]]
    out += [f"listing failed for account {printable(a)}" for a in doc["list_failed"]]
    return "\n".join(out)


# -- status ----------------------------------------------------------------------------------


def accounts_rows(
    accounts: Sequence[str], leases: Sequence[LeaseState], now: datetime
) -> list[dict[str, Any]]:
    """Who serves each account (several instances on PostgreSQL): the holder while its lease is
    live by ``now``, else None; the lease's expiry as the database recorded it."""
    by_account = {lease.account: lease for lease in leases}
    out = []
    for account in accounts:
        lease = by_account.get(account)
        live = lease is not None and lease.holder is not None and lease.expires_at > now
        out.append({
            "account": account,
            "holder": lease.holder if live and lease is not None else None,
            "lease_expires_at": iso(lease.expires_at) if lease is not None and lease.holder else None,
        })  # fmt: skip
    return out


def status_json(
    rows: Sequence[StatusRow],
    foreign: Sequence[tuple[str, str, list[str]]],
    accounts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``accounts`` (who holds each account's lease) only on a shared database."""
    doc = {
        "channels": [
            {
                "account": r.account,
                "channel_id": r.channel_id,
                "name": r.name,
                "state": r.state,
                "expires_at": iso(r.expires_at),
                "next_renewal_at": iso(r.next_renewal_at),
                "last_renewed_at": iso(r.last_renewed_at),
                "failures": r.failures,
                "last_error": r.last_error,
            }
            for r in rows
        ],
        "foreign": [{"account": a, "channel_id": c, "modules": m} for a, c, m in foreign],
    }
    if accounts is not None:
        doc["accounts"] = accounts
    return doc


def status_text(
    rows: Sequence[StatusRow],
    foreign: Sequence[tuple[str, str, list[str]]],
    now: datetime,
    accounts: list[dict[str, Any]] | None = None,
) -> str:
    def until(dt: datetime | None) -> str:
        return "-" if dt is None else human_delta(dt - now)

    body = [
        [
            r.account,
            r.channel_id,
            r.name or "",
            r.state,
            until(r.expires_at),
            until(r.next_renewal_at),
            str(r.failures),
            r.last_error or "",
        ]
        for r in rows
    ]
    headers = [
        "ACCOUNT",
        "CHANNEL",
        "NAME",
        "STATE",
        "EXPIRES IN",
        "RENEWS IN",
        "FAILURES",
        "LAST ERROR",
    ]
    out = [table(headers, body) if body else "no channels yet (run `watchkeeper apply`)"]
    if foreign:
        out.append("")
        out.append(
            table(
                ["ACCOUNT", "FOREIGN CHANNEL", "MODULES"], [[a, c, ",".join(m)] for a, c, m in foreign]
            )
        )
    if accounts is not None:

        def left(a: dict[str, Any]) -> str:
            end = a["lease_expires_at"]
            return "-" if a["holder"] is None else human_delta(datetime.fromisoformat(end) - now)

        held = [[a["account"], a["holder"] or "(none)", left(a)] for a in accounts]
        out.append("")
        out.append(table(["ACCOUNT", "HOLDER", "LEASE EXPIRES IN"], held))
    return "\n".join(out)


# -- gaps ------------------------------------------------------------------------------------


Backfills = Mapping[int, tuple[str, int]]
"""gap id -> (backfill state, records redelivered), as the store reports them."""


def gaps_json(gaps: Sequence[Gap], backfills: Backfills) -> dict[str, Any]:
    """``backfill`` is null while neither automatic nor requested; ``recovered`` counts the
    records redelivered."""
    return {
        "gaps": [
            {
                "account": g.account,
                "channel_id": g.channel_id,
                "start": iso(g.start),
                "end": iso(g.end),
                "cause": g.cause,
                "backfill": backfills[g.id][0] if g.id in backfills else None,
                "recovered": backfills[g.id][1] if g.id in backfills else 0,
            }
            for g in gaps
        ]
    }


def gaps_text(gaps: Sequence[Gap], backfills: Backfills, now: datetime) -> str:
    if not gaps:
        return "no gaps"
    rows = [
        [
            g.account,
            g.channel_id,
            iso(g.start) or "",
            iso(g.end) or "open",
            human_delta((g.end or now) - g.start),
            g.cause,
            backfills[g.id][0] if g.id in backfills else "-",
            str(backfills[g.id][1]) if g.id in backfills else "-",
        ]
        for g in gaps
    ]
    head = ["ACCOUNT", "CHANNEL", "START", "END", "LENGTH", "CAUSE", "BACKFILL", "RECOVERED"]
    return table(head, rows)


# -- backfill --------------------------------------------------------------------------------


def backfill_json(previewed: Sequence[tuple[Gap, Notification]]) -> dict[str, Any]:
    """``backfill --dry-run --json``: what would be sent, one row per notification."""
    return {
        "notifications": [
            {
                "account": g.account,
                "channel_id": g.channel_id,
                "module": n.module,
                "operation": n.operation,
                "ids": list(n.ids),
                "gap_start": iso(g.start),
                "gap_end": iso(g.end),
            }
            for g, n in previewed
        ]
    }


def backfill_text(previewed: Sequence[tuple[Gap, Notification]]) -> str:
    if not previewed:
        return "nothing to redeliver"
    rows = [
        [g.account, g.channel_id, iso(g.start) or "", n.module, n.operation, str(len(n.ids))]
        for g, n in previewed
    ]
    return table(["ACCOUNT", "CHANNEL", "GAP START", "MODULE", "OPERATION", "IDS"], rows)
