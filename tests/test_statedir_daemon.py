"""`watchkeeper run` as a process on a state directory, against the emulator (real clock, channels
of 20 s): files added, broken, duplicated and removed while it runs, and a restart with a file
that never validated."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from watchkeeper.emulator import Emulator

from tests.daemon_process import DaemonProcess, start
from tests.statefiles import SECRETS, Chan, write_state

pytestmark = pytest.mark.slow

TTL = "20s"
DAEMON = '[daemon]\nreconcile_every = "10s"\nretry_initial = "1s"\nretry_max = "4s"\n'


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator() as emulator:
        for org in ("acme", "beta", "gamma"):
            emulator.add_org(org)
        yield emulator


def customer(directory: Path, url: str, account: str, ids: list[str], *, plain: bool = False) -> Path:
    """One customer's file, written as provisioning code should: a hidden temporary, renamed.
    ``plain``: channels without secrets, which the store keeps faithfully, so that a channel whose
    deletion is held is renewed even by a process that never read its spec."""
    temporary = directory / f".{account}.toml.tmp"
    chans = [Chan(i, ttl=TTL) for i in ids]
    if plain:
        chans = [Chan(i, ttl=TTL, token=False, notify_url="https://hooks.example.com/zoho") for i in ids]
    write_state(temporary, url, chans, daemon=None, accounts=[account])
    return temporary.replace(directory / f"{account}.toml")


@pytest.fixture
def directory(tmp_path: Path, emu: Emulator) -> Path:
    root = tmp_path / "channels.d"
    root.mkdir()
    (root / "00-daemon.toml").write_text(DAEMON)
    customer(root, emu.url, "acme", ["7000", "7001"])
    customer(root, emu.url, "beta", ["7100"])
    return root


def deletes(emu: Emulator) -> list[tuple[str, ...]]:
    return [c.channel_ids for c in emu.calls if c.method == "DELETE"]


def assert_no_secrets(daemon: DaemonProcess) -> None:
    printed = "\n".join(daemon.lines)
    for secret in SECRETS:
        assert secret not in printed


def test_files_added_broken_and_duplicated_while_running(
    directory: Path, emu: Emulator, daemons: list[DaemonProcess]
) -> None:
    daemon = start(daemons, directory)
    for cid in ("7000", "7001", "7100"):
        daemon.wait_event("channel.created", channel_id=cid, timeout=20)

    # A new customer's file: its channels are created, no signal needed.
    customer(directory, emu.url, "gamma", ["7200"])
    daemon.wait_event("channel.created", channel_id="7200", timeout=15)

    # beta.toml broken, acme.toml changed at the same time: acme's change applies, beta's last
    # good version stays in force (its channel renewed, not deleted).
    mark = len(daemon.events)
    beta = directory / "beta.toml"
    beta.write_text(beta.read_text().replace('"Deals.all"', '"Deals.every"'))
    customer(directory, emu.url, "acme", ["7000"])
    invalid = daemon.wait_event("config.invalid", timeout=15, after=mark)
    assert invalid["applied"] is True
    (error,) = invalid["errors"]
    assert error.startswith(f"{beta}: channels[0].events[1] (channel 7100): ")
    daemon.wait_event("channel.deleted", channel_id="7001", timeout=15, after=mark)
    daemon.wait_renewed("7100", timeout=30, after=mark)
    assert "7100" in emu.channels("beta")

    # gamma's account declared in a second file (a move begun): an error naming both files,
    # nothing deleted; then the first file goes, and the channel stays where it was.
    mark = len(daemon.events)
    copy = directory / "gamma-copy.toml"
    write_state(copy, emu.url, [Chan("7200", ttl=TTL)], daemon=None, accounts=["gamma"])
    invalid = daemon.wait_event("config.invalid", timeout=15, after=mark)
    duplicates = [e for e in invalid["errors"] if "also declared in" in e]
    assert len(duplicates) == 2  # the account and its channel
    assert all(str(copy) in e and str(directory / "gamma.toml") in e for e in duplicates)
    time.sleep(4)
    (directory / "gamma.toml").unlink()
    daemon.wait_event("config.loaded", timeout=15, after=len(daemon.events))
    daemon.wait_renewed("7200", timeout=30, after=mark)
    assert deletes(emu) == [("7001",)]
    assert set(emu.channels("gamma")) == {"7200"}
    assert set(emu.channels("beta")) == {"7100"}
    assert daemon.count("config.refused") == 0

    assert daemon.stop() == 0
    assert_no_secrets(daemon)


def test_a_restart_with_a_file_that_never_validated_deletes_nothing(
    directory: Path, emu: Emulator, daemons: list[DaemonProcess]
) -> None:
    acme = [str(7000 + i) for i in range(5)]
    customer(directory, emu.url, "acme", acme, plain=True)  # see customer()
    first = start(daemons, directory)
    for cid in (*acme, "7100"):
        first.wait_event("channel.created", channel_id=cid, timeout=20)
    assert first.stop() == 0

    # While it is down: beta.toml broken, 7001 dropped from acme.toml.
    (directory / "beta.toml").write_text("[accounts.beta\n")
    # 1 of acme's 5: the mass-delete guard alone would let it go.
    customer(directory, emu.url, "acme", [c for c in acme if c != "7001"], plain=True)
    second = start(daemons, directory)
    second.wait_datagram("READY=1", timeout=15)
    invalid = second.wait_event("config.invalid", timeout=10)
    assert invalid["errors"][0].startswith(f"{directory / 'beta.toml'}:1:")
    refused = second.wait_event("config.refused", timeout=15, reason="unknown_file")
    assert refused["channels"] == ["7001"]
    assert "beta.toml" in refused["message"]
    second.wait_renewed("7001", timeout=30)  # kept alive meanwhile
    assert deletes(emu) == []

    # beta.toml fixed: the hold ends, and 7001 goes; beta's channel (whose account the daemon did
    # not know meanwhile) is kept again.
    customer(directory, emu.url, "beta", ["7100"])
    second.wait_event("channel.deleted", channel_id="7001", timeout=20)
    assert deletes(emu) == [("7001",)]
    second.wait_for(lambda: "7100" in emu.channels("beta"), 20, "beta's channel live")
    assert second.stop() == 0
    assert_no_secrets(second)


def test_a_broken_daemon_file_at_start_exits_78(directory: Path, daemons: list[DaemonProcess]) -> None:
    (directory / "00-daemon.toml").write_text(DAEMON.replace('"4s"', '"soon"'))
    daemon = start(daemons, directory)
    assert daemon.proc.wait(30) == 78
    event = daemon.wait_event("config.invalid", timeout=5)
    assert event["applied"] is False
    assert any(e.startswith(f"{directory / '00-daemon.toml'}: daemon: ") for e in event["errors"])
