"""The fleet benchmark's short mode: the real daemon on 30 accounts x 3 channels of 15 s, every call
200 ms late. What it checks is what must hold at any size (no lapse, every channel renewed, one
refresh per account and token lifetime at most); the timings are reported, not asserted."""

from __future__ import annotations

from pathlib import Path

from tests.bench.fleet_10k import Fleet, render, run


def test_a_small_fleet_with_slow_calls_is_kept_without_a_lapse(tmp_path: Path) -> None:
    report = run(Fleet(accounts=30, ttl="15s"), tmp_path)
    assert report["lapses"] == 0, render(report)
    assert report["renewed_channels"] == 90
    assert report["renewal_lead_fraction"]["count"] >= 90
    assert 30 <= report["token_refreshes"] <= 60  # 4-minute tokens: at most one more each
    assert report["calls"]["GET"] >= 30
