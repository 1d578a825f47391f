"""The single-instance lock beside the database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from watchkeeper.lock import InstanceLock, LockHeld


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    db = tmp_path / "state" / "watchkeeper.db"
    with InstanceLock(db) as lock:
        assert lock.path == tmp_path / "state" / "watchkeeper.db.lock"
        assert InstanceLock(db).holder() == (os.getpid(), "run")
        with pytest.raises(LockHeld) as caught:
            InstanceLock(db).acquire()
        assert caught.value.pid == os.getpid()
        assert f"pid {os.getpid()}" in str(caught.value)
    assert InstanceLock(db).holder() == (None, None)
    lock = InstanceLock(db).acquire("apply")
    try:
        with pytest.raises(LockHeld) as caught:
            InstanceLock(db).acquire()
    finally:
        lock.release()
    assert caught.value.role == "apply"
    assert "a watchkeeper apply is running" in str(caught.value)


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    db = tmp_path / "watchkeeper.db"
    code = (
        "import sys; from pathlib import Path; from watchkeeper.lock import InstanceLock; "
        f"InstanceLock(Path({str(db)!r})).acquire(); sys.exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)
    assert InstanceLock(db).holder() == (None, None)
    InstanceLock(db).acquire().release()
    assert oct(db.with_name(db.name + ".lock").stat().st_mode & 0o777) == "0o600"


def test_the_lock_is_the_real_files_whatever_the_name(tmp_path: Path) -> None:
    """Two daemons must not run on one database reached through a symlink (or ``..``)."""
    (tmp_path / "data").mkdir()
    db = tmp_path / "data" / "watchkeeper.db"
    db.touch()
    (tmp_path / "link.db").symlink_to(db)
    (tmp_path / "dir").symlink_to(tmp_path / "data")
    with InstanceLock(db):
        for alias in (tmp_path / "link.db", tmp_path / "dir" / "watchkeeper.db"):
            with pytest.raises(LockHeld):
                InstanceLock(alias).acquire()
