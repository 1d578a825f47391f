"""The soak in CI: 100 channels through 2 simulated days of the default fault profile, checked
against the emulator's truth; plus the report's measuring rules and the baselines' behaviour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.soak.baselines import run_baseline
from tests.soak.harness import Params, RunResult, run_watchkeeper
from tests.soak.profile import PROFILES
from tests.soak.report import Hole, check_ledger, coverage, holes, summarize, true_holes
from tests.statefiles import SECRETS

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
H = timedelta(hours=1)
S = timedelta(seconds=1)


@pytest.fixture(scope="module")
def soak_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("soak")


@pytest.fixture(scope="module")
def soak(soak_dir: Path) -> RunResult:
    return run_watchkeeper(Params(channels=100, days=2, profile="default", seed=1), soak_dir)


def test_no_channel_lapses_unless_an_outage_outlasted_its_lifetime(soak: RunResult) -> None:
    for key in soak.channels:
        truth = true_holes(soak, key)
        assert [h for h in truth if h.cause not in ("outage", "deleted")] == [], key
        if not truth:
            assert coverage(soak.intervals[key], soak.end) == 1.0, key
    # The profile bit: an outage outlasted some 1-hour lifetimes, and one channel was deleted.
    causes = {h.cause for key in soak.channels for h in true_holes(soak, key)}
    assert causes == {"outage", "deleted"}


def test_the_gap_ledger_matches_the_emulators_truth_within_a_second(soak: RunResult) -> None:
    assert soak.ledger is not None
    checked = 0
    for key in soak.channels:
        check = check_ledger(true_holes(soak, key), soak.ledger[key])
        assert check.missed == (), key
        assert check.extra == (), key
        for match in check.matches:
            assert match.ok, (key, match)
            checked += 1
    assert checked > 0


def test_every_fault_of_the_profile_happened(soak: RunResult) -> None:
    """So that the two tests above cannot pass on a run where nothing went wrong."""
    summary = summarize(soak)
    hits = soak.fault_hits
    assert hits["outage"] > 0
    assert hits["429 burst"] > 0
    assert hits["5xx"] > 0
    assert sum(1 for a in soak.schedule.actions if a.kind == "restart") == 2
    assert soak.deleted is not None
    assert soak.changed is not None
    assert summary["calls"]["by_method"]["PUT"] >= 1  # the changed channel was repaired
    events = soak.events
    assert events["channel.expiry_clamped"] > 0
    assert events["api.rate_limited"] > 0


def test_with_backfill_no_change_made_in_a_gap_is_lost_for_any_channel(soak: RunResult) -> None:
    lost = soak.lost
    assert lost is not None
    assert lost.in_gaps > 0  # the outages lapsed channels while records changed: a real test
    assert lost.live > 0
    assert {k: n for k, n in lost.per_channel_lost.items() if n} == {}
    assert lost.lost_with_backfill == 0
    summary = summarize(soak)
    assert summary["backfill"]["calls"] > 0
    assert summary["lost_events"]["duplicates"] == lost.duplicates  # reported, not a failure
    assert soak.events["backfill.failed"] == 0


def test_the_log_never_shows_a_secret(soak: RunResult, soak_dir: Path) -> None:
    text = (soak_dir / "watchkeeper.log").read_text()
    assert "channel.lapsed" in text
    for secret in SECRETS:
        assert secret not in text


# -- the measuring rules -----------------------------------------------------------------------


def test_holes_are_the_windows_between_live_intervals_and_the_open_end() -> None:
    intervals = [(T0, T0 + H), (T0 + 2 * H, T0 + 5 * H)]
    assert holes(intervals, T0 + 6 * H) == [(T0 + H, T0 + 2 * H), (T0 + 5 * H, None)]
    assert holes([(T0, None)], T0 + 6 * H) == []
    assert coverage(intervals, T0 + 6 * H) == pytest.approx(4 / 6)
    assert coverage([(T0, None)], T0 + 6 * H) == 1.0
    assert coverage([], T0) == 0.0


def test_the_ledger_must_match_both_ends_within_a_second() -> None:
    hole = Hole(T0, T0 + H, "outage")
    exact = check_ledger([hole], [(T0, T0 + H + 0.5 * S, "expired")])
    assert exact.ok
    late = check_ledger([hole], [(T0 + 2 * S, T0 + H, "expired")])
    assert not late.ok
    assert late.matches[0].start_error == 2.0
    missed = check_ledger([hole], [])
    assert missed.missed == (hole,)
    assert not missed.ok
    extra = check_ledger([], [(T0, T0 + H, "vanished")])
    assert len(extra.extra) == 1
    assert not extra.ok
    still_open = check_ledger([Hole(T0, None, "outage")], [(T0, T0 + H, "expired")])
    assert not still_open.ok


def test_a_deletion_gap_may_start_at_the_last_listing_not_after_the_deletion() -> None:
    deleted = Hole(T0, T0 + H, "deleted")
    assert check_ledger([deleted], [(T0 - 20 * 60 * S, T0 + H, "vanished")]).ok
    assert not check_ledger([deleted], [(T0 + 5 * S, T0 + H, "vanished")]).ok


# -- the baselines -----------------------------------------------------------------------------


def test_fixed_period_renews_each_channel_alone_every_half_ttl(tmp_path: Path) -> None:
    result = run_baseline("fixed", Params(channels=5, days=2, profile="none"), tmp_path)
    writes = [c for c in result.calls if c.method in ("POST", "PATCH")]
    assert {c.items for c in writes} == {1}
    # created at 0, renewed at 11.5 h, 23 h, 34.5 h and 46 h
    assert [c.method for c in writes].count("POST") == 5
    assert [c.method for c in writes].count("PATCH") == 20
    assert all(coverage(result.intervals[k], result.end) == 1.0 for k in result.channels)


def test_zoho_advice_re_enables_each_channel_by_post_every_23h55m(tmp_path: Path) -> None:
    result = run_baseline("zoho-advice", Params(channels=5, days=2, profile="none"), tmp_path)
    posts = [c for c in result.calls if c.method == "POST"]
    assert {c.items for c in posts} == {1}
    assert sorted({c.at - result.start for c in posts}) == [
        timedelta(0),
        timedelta(hours=23, minutes=55),
        timedelta(hours=47, minutes=50),
    ]
    assert len(posts) == 15
    assert "PATCH" not in {c.method for c in result.calls}


def test_the_default_profile_is_the_issues() -> None:
    profile = PROFILES["default"]
    assert profile.server_errors == 0.02
    assert (profile.outages, profile.outage_length, profile.restarts) == (3, 2 * H, 2)
    assert profile.clock_skew == timedelta(minutes=5)
    assert profile.access_token_lifetime == H
    assert profile.default_only > timedelta(0)
    assert profile.bursts_per_day > 0
    assert profile.change_one
    assert profile.delete_one
