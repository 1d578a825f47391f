"""Test helpers shared across the suite."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from watchkeeper.model import utc

SIM_START = datetime(2026, 1, 5, 9, 0, 0, tzinfo=UTC)
"""Where a SimClock starts unless told otherwise: a fixed Monday morning, so runs are repeatable."""


class SimClock:
    """A settable aware-UTC clock. Pass ``clock=sim_clock`` (it is callable) or ``clock=sim_clock.now``
    to anything taking an injectable clock; time moves only when a test moves it."""

    def __init__(self, start: datetime = SIM_START) -> None:
        self._lock = threading.Lock()
        self._now = utc(start)

    def now(self) -> datetime:
        with self._lock:
            return self._now

    __call__ = now

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._now += delta
            return self._now

    def sleep(self, seconds: float) -> None:
        """A ``time.sleep`` for code under test: the simulated time passes, not the real one."""
        self.advance(timedelta(seconds=seconds))

    def set(self, dt: datetime) -> datetime:
        with self._lock:
            self._now = utc(dt)
            return self._now
