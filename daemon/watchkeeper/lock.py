"""The single-instance lock: ``<database>.lock`` beside the database, holding its owner's pid and
role (``run`` or ``apply``).

An ``flock`` dies with its process, so a crash never leaves a stale lock behind; the pid and role
inside only tell ``apply --allow-mass-delete`` whether there is a daemon to send SIGHUP to.

The lock belongs to the real file: the database path is resolved (symlinks, ``..``) first, so a
second name for the same database (systemd's /var/lib/watchkeeper is a symlink under
DynamicUser=yes) finds the same lock. A hard link is a second real name and is not recognised.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class LockHeld(Exception):
    def __init__(self, path: Path, pid: int | None, role: str | None) -> None:
        owner = f"pid {pid}" if pid else "another process"
        what = {"run": "a watchkeeper daemon", "apply": "a watchkeeper apply"}.get(
            role or "", "watchkeeper"
        )
        super().__init__(f"{path} is held by {owner}: {what} is running on this database")
        self.pid = pid
        self.role = role


class InstanceLock:
    def __init__(self, database: Path) -> None:
        real = database.resolve()
        self.path = real.with_name(real.name + ".lock")
        self._fd: int | None = None

    def acquire(self, role: str = "run") -> InstanceLock:
        """Take the lock or raise LockHeld naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(self.path, *self.holder()) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {role}\n".encode())
        self._fd = fd
        return self

    def holder(self) -> tuple[int | None, str | None]:
        """(pid, role) written by the current holder; (None, None) when nobody holds the lock."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None, None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pid, _, role = os.read(fd, 64).decode(errors="replace").strip().partition(" ")
                return (int(pid) if pid.isdigit() else None), (role or None)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None, None
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> InstanceLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
