"""The chaos measurement's short version (``python -m tests.chaos --short``): three instances on one
PostgreSQL, instances SIGKILLed and restarted, the database stopped once. Only what must hold
however busy the machine is gets asserted (one caller per account at any moment, no renewal sent
twice); coverage and failover times are measured figures, reported by the full run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import chaos
from tests.pg_server import PgServer

pytestmark = pytest.mark.slow


def test_a_short_chaos_run_never_has_two_instances_calling_for_one_account(
    tmp_path: Path, pg_server: PgServer
) -> None:
    """``pg_server`` only for its rule: the binaries must be there in CI (chaos starts its own)."""
    settings = chaos.Settings(duration=120.0, accounts=12, seed=7)
    figures = chaos.run(settings, tmp_path, log=lambda _message: None)
    assert figures.kills >= 2
    assert len(figures.outage) == 2  # the database was stopped and started again
    assert figures.most_concurrent_callers == 1
    assert figures.double_renewals_2s == 0
    assert figures.failover_max is not None  # every killed instance's accounts were taken again
