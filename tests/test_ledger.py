"""watchkeeper.ledger: the gap rules, table-driven, no HTTP and no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from watchkeeper import ledger
from watchkeeper.model import ObservedChannel, RegistryEntry

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)


def entry(**kw: object) -> RegistryEntry:
    base: dict[str, object] = {
        "account": "main",
        "channel_id": "1",
        "state": "active",
        "expires_at": NOW + HOUR,
        "lifetime": 2 * HOUR,
        "renew_at": NOW + 30 * MIN,
    }
    base.update(kw)
    return RegistryEntry(**base)  # type: ignore[arg-type]


def row(expires_at: datetime = NOW + 3 * HOUR) -> dict[str, ObservedChannel]:
    return {"1": ObservedChannel("1", frozenset({("Deals", "edit")}), "https://x.example/", expires_at)}


LAPSED = {"state": "lapsed", "lapsed_since": NOW - HOUR}

# (id, entry, listing, last_seen, watched) -> (state, lapsed_since, opened (start, cause), closed end)
CASES = [
    ("live-listed-updates-expiry", entry(), row(), None, True, ("active", None, None, None)),
    ("unlisted-not-due", entry(), None, None, True, ("active", None, None, None)),
    (
        "unlisted-expired",
        entry(expires_at=NOW - MIN),
        None,
        None,
        True,
        ("lapsed", NOW - MIN, (NOW - MIN, "expired"), None),
    ),
    (
        "listing-omits-it",
        entry(),
        {},
        NOW - 10 * MIN,
        True,
        ("lapsed", NOW - 10 * MIN, (NOW - 10 * MIN, "vanished"), None),
    ),
    ("listing-omits-never-seen", entry(), {}, None, True, ("lapsed", NOW, (NOW, "vanished"), None)),
    (
        "listing-omits-an-expired-one",
        entry(expires_at=NOW - MIN),
        {},
        NOW - 10 * MIN,
        True,
        ("lapsed", NOW - MIN, (NOW - MIN, "expired"), None),
    ),
    ("not-watched", entry(expires_at=NOW - MIN), {}, None, False, ("active", None, None, None)),
    (
        "never-granted",
        entry(expires_at=None, state="pending"),
        {},
        None,
        True,
        ("pending", None, None, None),
    ),
    ("already-lapsed-stays", entry(**LAPSED), {}, None, True, ("lapsed", NOW - HOUR, None, None)),
    # The defect this module exists for: a listing that shows a lapsed channel live ends its gap
    # AND its lapsed state, together.
    ("lapsed-listed-recovers", entry(**LAPSED), row(), None, True, ("active", None, None, NOW)),
    (
        "recovery-never-before-start",
        entry(state="lapsed", lapsed_since=NOW + MIN),
        row(),
        None,
        True,
        ("active", None, None, NOW + MIN),
    ),
]


@pytest.mark.parametrize(
    ("given", "listing", "last_seen", "watched", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_observe(
    given: RegistryEntry,
    listing: dict[str, ObservedChannel] | None,
    last_seen: datetime | None,
    watched: bool,
    expected: tuple[str, datetime | None, tuple[datetime, str] | None, datetime | None],
) -> None:
    step = ledger.observe(given, listing, last_seen, NOW, watched=watched)
    state, lapsed_since, opened, closed = expected
    assert step.entry.state == state
    assert step.entry.lapsed_since == lapsed_since
    assert (step.opened.start, step.opened.cause) == opened if step.opened else opened is None
    assert step.closed.end == closed if step.closed else closed is None
    if listing:
        assert step.entry.expires_at == listing["1"].expires_at


def test_opening_a_gap_lifts_the_hold_of_a_refused_renewal() -> None:
    """The listing decides: a channel whose PATCH Zoho refused and that the listing shows gone is
    re-created at once, not after the terminal hold."""
    held = entry(state="failed", retry_at=NOW + HOUR, terminal=True, last_error="INVALID_DATA")
    step = ledger.observe(held, {}, NOW - MIN, NOW, watched=True)
    assert step.opened is not None
    assert (step.entry.retry_at, step.entry.terminal, step.entry.last_error) == (None, False, None)


@pytest.mark.parametrize(
    ("given", "cause", "start"),
    [
        pytest.param(entry(expires_at=NOW - MIN), "expired", NOW - MIN, id="expired"),
        pytest.param(entry(), "vanished", NOW - 5 * MIN, id="deleted-behind-our-back"),
    ],
)
def test_gone(given: RegistryEntry, cause: str, start: datetime) -> None:
    step = ledger.gone(given, NOW - 5 * MIN, NOW)
    assert step.opened is not None
    assert (step.opened.cause, step.opened.start) == (cause, start)


def test_recover_without_a_gap_changes_nothing() -> None:
    step = ledger.recover(entry(state="at_risk"), NOW)
    assert step == ledger.Step(entry(state="at_risk"))
