"""The soak as a measuring tool for fleets: it ticks like the service, and ``--json`` is JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.soak.__main__ import main
from tests.soak.harness import MAX_SLEEP, Params, run_watchkeeper


def test_the_soak_ticks_at_least_every_max_sleep_like_the_service(tmp_path: Path) -> None:
    """A day with nothing due but a few listings and renewals: the engine still runs every
    minute, and those idle ticks are counted with their CPU."""
    result = run_watchkeeper(Params(channels=10, days=1, profile="none"), tmp_path)
    assert result.idle is not None
    minutes = 24 * 60
    busy = len({c.at.replace(second=0, microsecond=0) for c in result.calls})
    assert minutes - busy - 2 <= result.idle.ticks <= minutes
    assert result.idle.cpu_seconds > 0
    assert MAX_SLEEP.total_seconds() == 60


def test_json_output_is_nothing_but_the_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        ["--channels", "4", "--accounts", "2", "--days", "0.2", "--json", "--workdir", str(tmp_path)]
    )
    out, err = capsys.readouterr()
    report = json.loads(out)  # the whole of stdout
    assert status == 0
    assert report["watchkeeper"]["idle"]["ticks"] > 0
    assert set(report["baselines"]) == {"fixed", "zoho-advice"}
    assert "datetime.datetime(" not in out + err
