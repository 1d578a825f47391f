"""The one-shot commands end to end: the CLI against the emulator (real clock, real HTTP, a real
SQLite file), exit codes and output shapes as DESIGN.md section 4 specifies them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from watchkeeper import report
from watchkeeper.cli import main
from watchkeeper.emulator import Emulator, Fault
from watchkeeper.store import StatusRow, Store

from tests.daemon_process import watchkeeper
from tests.statefiles import SECRETS, Chan, env, write_state


@pytest.fixture(autouse=True)
def _secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WATCHKEEPER_DB", raising=False)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)


@pytest.fixture
def live_emulator() -> Iterator[Emulator]:
    """An emulator on the real clock: the CLI reads the real clock too."""
    with Emulator() as emu:
        yield emu


class Run:
    def __init__(self, capsys: pytest.CaptureFixture[str], state: Path) -> None:
        self.capsys = capsys
        self.state = state

    def __call__(self, *args: str) -> tuple[int, str, str]:
        code = main(["--state", str(self.state), *args])
        out, err = self.capsys.readouterr()
        for secret in SECRETS:
            assert secret not in out
            assert secret not in err
        return code, out, err

    def json(self, *args: str) -> tuple[int, Any]:
        code, out, _ = self(*args, "--json")
        return code, json.loads(out)


@pytest.fixture
def state(tmp_path: Path, live_emulator: Emulator) -> Path:
    return write_state(
        tmp_path / "channels.toml", live_emulator.url, [Chan("1001", name="a"), Chan("1002")]
    )


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], state: Path) -> Run:
    return Run(capsys, state)


def rewrite(state: Path, emu: Emulator, chans: list[Chan], daemon: str = "") -> None:
    write_state(state, emu.url, chans, daemon=daemon)


def test_validate_ok_and_invalid(run: Run, state: Path) -> None:
    code, out, _ = run("validate")
    assert (code, "valid") == (0, out.split(": ")[1].split(" ")[0])
    state.write_text(state.read_text().replace('"Contacts.create"', '"Contacts.creat"'))
    code, out, err = run("validate")
    assert code == 78
    assert "channels[0].events[0]" in err
    assert "channel 1001" in err


def test_plan_then_apply_then_in_sync(run: Run, live_emulator: Emulator) -> None:
    code, doc = run.json("plan")
    assert code == 2
    assert [(a["kind"], a["channel_id"], a["reason"]) for a in doc["actions"]] == [
        ("create", "1001", "new"),
        ("create", "1002", "new"),
    ]
    assert doc["actions"][0]["name"] == "a"
    assert live_emulator.channels() == {}  # plan changes nothing

    code, doc = run.json("apply")
    assert code == 0
    assert (doc["created"], doc["failed"], doc["active"]) == (2, 0, 2)
    assert set(live_emulator.channels()) == {"1001", "1002"}

    code, out, _ = run("plan")
    assert code == 0
    assert "in sync" in out


def test_plan_exits_1_when_the_listing_fails(run: Run, live_emulator: Emulator) -> None:
    live_emulator.add_fault(Fault(status=503, methods=frozenset({"GET"})))
    code, _, err = run("plan")
    assert code == 1
    assert "listing failed" in err


def test_apply_adopts_repairs_and_leaves_foreign_alone(
    run: Run, live_emulator: Emulator, state: Path
) -> None:
    live_emulator.add_foreign_channel("1001", ["Contacts.create"], "https://old.example.com/")
    live_emulator.add_foreign_channel("5555", ["Leads.all"], "https://other.example.com/?k=v")
    code, doc = run.json("apply")
    assert code == 0
    assert (doc["adopted"], doc["created"], doc["foreign"]) == (1, 1, 1)
    code, status = run.json("status")
    assert code == 0
    assert [(c["channel_id"], c["state"]) for c in status["channels"]] == [
        ("1001", "active"),
        ("1002", "active"),
    ]
    assert status["foreign"] == [{"account": "main", "channel_id": "5555", "modules": ["Leads"]}]
    assert live_emulator.channels()["5555"].notify_url == "https://other.example.com/?k=v"

    live_emulator.change_channel("1002", notify_url="https://drifted.example.com/")
    code, doc = run.json("plan")
    assert code == 2
    assert [(a["kind"], a["drift"]) for a in doc["actions"]] == [("repair", ["notify_url"])]
    code, doc = run.json("apply")
    assert (code, doc["repaired"]) == (0, 1)


def test_status_table_is_aligned_and_readable(run: Run) -> None:
    run("apply")
    code, out, _ = run("status")
    assert code == 0
    header, *rows = out.strip().splitlines()
    assert header.split() == [
        "ACCOUNT",
        "CHANNEL",
        "NAME",
        "STATE",
        "EXPIRES",
        "IN",
        "RENEWS",
        "IN",
        "FAILURES",
        "LAST",
        "ERROR",
    ]
    assert len(rows) == 2
    assert rows[0].index("active") == header.index("STATE")
    assert "59m" in rows[0] or "1h" in rows[0]


def test_deleting_a_channel_and_the_mass_delete_guard(
    run: Run, live_emulator: Emulator, state: Path
) -> None:
    chans = [Chan(str(2000 + i)) for i in range(8)]
    rewrite(state, live_emulator, chans)
    assert run("apply")[0] == 0
    rewrite(state, live_emulator, chans[:6])  # 2 of 8 = 25%: allowed
    code, doc = run.json("apply")
    assert (code, doc["deleted"]) == (0, 2)
    rewrite(state, live_emulator, chans[:2])  # 4 of 6: refused
    code, doc = run.json("apply")
    assert code == 1
    assert doc["deleted"] == 0
    assert doc["refused"][0]["reason"] == "mass_delete"
    assert sorted(doc["refused"][0]["channel_ids"]) == ["2002", "2003", "2004", "2005"]
    assert len(live_emulator.channels()) == 6
    code, doc = run.json("apply", "--allow-mass-delete")
    assert (code, doc["deleted"]) == (0, 4)
    assert set(live_emulator.channels()) == {"2000", "2001"}


def test_an_empty_channel_list_deletes_nothing(run: Run, live_emulator: Emulator, state: Path) -> None:
    assert run("apply")[0] == 0
    rewrite(state, live_emulator, [])
    code, doc = run.json("apply")
    assert code == 1
    assert doc["refused"][0]["reason"] == "empty"
    assert set(live_emulator.channels()) == {"1001", "1002"}


def test_gaps_json_and_filters(run: Run, tmp_path: Path) -> None:
    run("apply")
    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    with Store(tmp_path / "watchkeeper.db") as store:
        store.open_gap("main", "1001", t0, "expired")
        store.close_gap("main", "1001", t0 + timedelta(minutes=7))
        store.open_gap("main", "1002", t0 + timedelta(days=1), "vanished")
        store.request_backfill([1, 2], t0)  # the open one cannot be backfilled yet
    code, doc = run.json("gaps")
    assert code == 0
    assert doc["gaps"] == [
        {
            "account": "main",
            "channel_id": "1001",
            "start": "2026-03-01T12:00:00Z",
            "end": "2026-03-01T12:07:00Z",
            "cause": "expired",
            "backfill": "pending",
            "recovered": 0,
        },
        {
            "account": "main",
            "channel_id": "1002",
            "start": "2026-03-02T12:00:00Z",
            "end": None,
            "cause": "vanished",
            "backfill": None,
            "recovered": 0,
        },
    ]
    _, doc = run.json("gaps", "--channel", "1001")
    assert [g["channel_id"] for g in doc["gaps"]] == ["1001"]
    _, doc = run.json("gaps", "--since", "2026-03-01T13:00:00+00:00")
    assert [g["channel_id"] for g in doc["gaps"]] == ["1002"]
    code, out, _ = run("gaps")
    assert "7m" in out
    assert "open" in out
    assert out.splitlines()[0].split()[-2:] == ["BACKFILL", "RECOVERED"]
    assert out.splitlines()[1].split()[-2:] == ["pending", "0"]


def test_commands_as_a_process_keep_results_and_logs_apart(state: Path) -> None:
    """stdout carries the result only; log lines (JSON, not a terminal) go to stderr."""
    proc = watchkeeper(state, "apply", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["created"] == 2
    events = [json.loads(line)["event"] for line in proc.stderr.splitlines()]
    assert events.count("channel.created") == 2
    assert "reconcile.finished" in events
    for secret in SECRETS:
        assert secret not in proc.stdout + proc.stderr


def test_a_reader_that_goes_away_ends_the_command_quietly(state: Path) -> None:
    """`watchkeeper status --json | head`: no traceback, no critical log line, exit 1."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "watchkeeper", "--state", str(state), "status", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env()},
    )
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the first byte
    _, err = proc.communicate(timeout=60)
    assert err.decode() == ""
    assert proc.returncode == 1


def test_validate_exits_78_on_a_deeply_nested_file(run: Run, state: Path) -> None:
    state.write_text("x = " + "[" * 100_000)
    code, _, err = run("validate")
    assert code == 78
    assert str(state) in err
    assert "nested too deeply" in err


def test_control_characters_print_escaped_and_forge_no_row() -> None:
    """Names and error texts come from the store, where an older state file or a hostile server
    may have put anything."""
    forged = "a\x1b[2J\nmain  9999  forged  active"
    row = StatusRow("main", "1001", forged, "active", None, None, None, 1, "bad\rline\u202e")
    text = report.status_text([row], [("main", "77", ["Deals\n\x1b[31m"])], datetime.now(UTC))
    assert "\x1b" not in text
    assert "\r" not in text
    assert "\u202e" not in text
    assert len(text.splitlines()) == 5  # header, one row, blank, header, one row
    assert "a\\x1b[2J\\nmain  9999" in text
    assert "Deals\\n\\x1b[31m" in text


def test_every_command_uses_the_database_chosen_by_db_then_env_then_state(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--db over $WATCHKEEPER_DB over [daemon].database, for apply and status alike."""
    code, doc = run.json("--db", str(tmp_path / "flag.db"), "apply")
    assert (code, doc["created"]) == (0, 2)
    monkeypatch.setenv("WATCHKEEPER_DB", str(tmp_path / "env.db"))
    assert run.json("status")[1]["channels"] == []
    assert len(run.json("--db", str(tmp_path / "flag.db"), "status")[1]["channels"]) == 2
    monkeypatch.delenv("WATCHKEEPER_DB")
    assert run.json("status")[1]["channels"] == []
    assert run.json("apply")[1]["created"] == 0  # adopted: flag.db is not the one it reads
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["flag.db", "watchkeeper.db"]


def test_an_unusable_database_is_one_clear_error(run: Run, tmp_path: Path) -> None:
    (tmp_path / "watchkeeper.db").write_bytes(b"not a database, just bytes " * 100)
    for command in ("status", "gaps", "apply", "plan"):
        code, out, err = run(command)
        assert code == 1, command
        assert out == ""
        assert err.startswith(f"error: {tmp_path / 'watchkeeper.db'}"), err
        assert "Traceback" not in err


def test_status_and_gaps_create_no_database(run: Run, tmp_path: Path) -> None:
    assert run("status")[:2] == (0, "no channels yet (run `watchkeeper apply`)\n")
    assert run.json("gaps") == (0, {"gaps": []})
    assert not (tmp_path / "watchkeeper.db").exists()
