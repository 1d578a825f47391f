"""``watchkeeper backfill`` end to end: the CLI on the real clock against the emulator (whose clock
a test moves into a past gap to change records there), a receiver on 127.0.0.1, a real SQLite
file, and, for the daemon-running case, a process holding the lock that counts its SIGHUPs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from watchkeeper.cli import main
from watchkeeper.emulator import Emulator
from watchkeeper.store import Store

from tests.helpers import SimClock
from tests.receiver import Receiver
from tests.statefiles import SECRETS, URL_SECRET, Chan, env, write_state

HOUR = timedelta(hours=1)


@pytest.fixture(autouse=True)
def _secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WATCHKEEPER_DB", raising=False)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)


@pytest.fixture
def clock() -> SimClock:
    return SimClock(datetime.now(UTC))


@pytest.fixture
def emu(clock: SimClock) -> Iterator[Emulator]:
    with Emulator(clock=clock) as emulator:
        yield emulator


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as hook:
        yield hook


@pytest.fixture
def setup(tmp_path: Path, emu: Emulator, clock: SimClock, receiver: Receiver) -> tuple[Path, Path]:
    """A channel without ``backfill`` whose closed gap, three to two hours ago, saw two changes."""
    url = receiver.url(f"key={URL_SECRET}")
    state = write_state(tmp_path / "channels.toml", emu.url, [Chan("1001", notify_url=url)])
    db = tmp_path / "watchkeeper.db"
    now = clock()
    with Store(db) as store:
        store.open_gap("main", "1001", now - 3 * HOUR, "expired")
        store.close_gap("main", "1001", now - 2 * HOUR)
    clock.set(now - 150 * timedelta(minutes=1))
    emu.simulate_record_change("Deals", "create", ["41"])
    emu.simulate_record_change("Contacts", "create", ["42"])
    clock.set(now)
    return state, db


def run(capsys: pytest.CaptureFixture[str], state: Path, *args: str) -> tuple[int, str]:
    code = main(["--state", str(state), "backfill", *args])
    out, err = capsys.readouterr()
    for secret in SECRETS:
        assert secret not in out
        assert secret not in err
    return code, out


def test_dry_run_prints_what_would_be_sent_and_sends_nothing(
    capsys: pytest.CaptureFixture[str], setup: tuple[Path, Path], receiver: Receiver
) -> None:
    state, db = setup
    code, out = run(capsys, state, "--dry-run", "--json")
    assert code == 0
    rows = json.loads(out)["notifications"]
    assert [(r["module"], r["operation"], r["ids"]) for r in rows] == [
        ("Contacts", "insert", ["42"]),
        ("Deals", "insert", ["41"]),
    ]
    assert set(rows[0]) == {
        "account",
        "channel_id",
        "module",
        "operation",
        "ids",
        "gap_start",
        "gap_end",
    }
    assert receiver.bodies == []
    with Store(db) as store:
        assert store.backfill_states() == {}


def test_backfill_redelivers_a_closed_gap_of_a_channel_without_automatic_backfill(
    capsys: pytest.CaptureFixture[str], setup: tuple[Path, Path], receiver: Receiver
) -> None:
    state, _ = setup
    code, out = run(capsys, state, "--json")
    assert code == 0
    (gap,) = json.loads(out)["gaps"]
    assert (gap["backfill"], gap["recovered"]) == ("done", 2)
    assert sorted(tuple(b["ids"]) for b in receiver.backfilled()) == [("41",), ("42",)]
    assert main(["--state", str(state), "gaps", "--json"]) == 0
    (shown,) = json.loads(capsys.readouterr().out)["gaps"]
    assert (shown["backfill"], shown["recovered"]) == ("done", 2)


def test_a_refusing_receiver_makes_it_exit_1_and_leaves_it_pending(
    capsys: pytest.CaptureFixture[str], setup: tuple[Path, Path], receiver: Receiver
) -> None:
    state, _ = setup
    receiver.status = 500
    code, out = run(capsys, state, "--json")
    assert code == 1
    (gap,) = json.loads(out)["gaps"]
    assert gap["backfill"] == "pending"


HOLDER = """
import signal, sys, time
from pathlib import Path
from watchkeeper.lock import InstanceLock
lock = InstanceLock(Path(sys.argv[1])).acquire("run")
out = Path(sys.argv[2])
signal.signal(signal.SIGHUP, lambda *_: out.write_text("hup"))
print("ready", flush=True)
time.sleep(30)
"""


def test_while_a_daemon_runs_the_request_is_recorded_and_it_gets_sighup(
    capsys: pytest.CaptureFixture[str], setup: tuple[Path, Path], receiver: Receiver, tmp_path: Path
) -> None:
    state, db = setup
    flag = tmp_path / "hup"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db), str(flag)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        code, out = run(capsys, state)
        assert code == 0
        assert "requested 1 backfill" in out
        deadline = time.monotonic() + 5
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert flag.read_text() == "hup"
    finally:
        holder.kill()
        holder.wait()
    assert receiver.bodies == []  # the daemon does it, not the command
    with Store(db) as store:
        assert list(store.backfill_states().values()) == [("pending", 0)]


def test_backfill_appears_in_help() -> None:
    result: Any = subprocess.run(
        [sys.executable, "-m", "watchkeeper", "backfill", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for option in ("--since", "--channel", "--dry-run", "--json"):
        assert option in result.stdout
