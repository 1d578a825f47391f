"""The shipped Prometheus alert rules, checked and unit-tested with ``promtool`` (Debian package
``prometheus``; .ci/run installs it). Skipped only outside CI when promtool is missing: in CI
($CI set, as test_systemd.py reads it) a missing promtool fails."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "daemon" / "watchkeeper" / "monitoring" / "alerts.yml"
RULE_TESTS = ROOT / "tests" / "fixtures" / "alerts" / "alerts_test.yml"
ALERTS = {
    "WatchkeeperDown",
    "WatchkeeperChannelLapsed",
    "WatchkeeperChannelAtRisk",
    "WatchkeeperExpiryNear",
    "WatchkeeperAuthFailing",
    "WatchkeeperConfigNotApplied",
    "WatchkeeperLoopStalled",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI: .ci/run installs the prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return found


def run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)


def test_the_rules_file_is_valid(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_the_rules_pass_their_unit_tests(promtool: str) -> None:
    result = run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_shipped_and_tested_firing() -> None:
    shipped = set(re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.MULTILINE))
    assert shipped == ALERTS
    tests = RULE_TESTS.read_text()
    for alert in ALERTS:
        block = re.search(rf"alertname: {alert}\n\s*exp_alerts:\n\s*- exp_labels", tests)
        assert block, f"no promtool case where {alert} fires"


def test_the_unit_tests_catch_a_broken_threshold(promtool: str, tmp_path: Path) -> None:
    """The promtool cases can fail: with the expiry rule off by a factor, they do."""
    text = RULES.read_text()
    broken = text.replace(
        "watchkeeper_channel_renewal_timestamp_seconds) / 6",
        "watchkeeper_channel_renewal_timestamp_seconds) / 12",
    )
    assert broken != text
    folder = tmp_path / "daemon" / "watchkeeper" / "monitoring"
    folder.mkdir(parents=True)
    (folder / "alerts.yml").write_text(broken)
    cases = tmp_path / "tests" / "fixtures" / "alerts"
    cases.mkdir(parents=True)
    (cases / "alerts_test.yml").write_text(RULE_TESTS.read_text())
    result = run(promtool, "test", "rules", str(cases / "alerts_test.yml"))
    assert result.returncode != 0
    assert "WatchkeeperExpiryNear" in result.stdout + result.stderr
