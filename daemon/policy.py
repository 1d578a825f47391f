"""PURE: when to renew, how long to back off, when a channel is at risk.

Nothing here reads the clock or does I/O; randomness comes in as an ``random.Random`` so that
tests (and the soak harness) are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True, slots=True)
class Policy:
    """The tunables of DESIGN.md section 2 ``[daemon]`` that decide timing and guards."""

    reconcile_every: timedelta = timedelta(minutes=30)
    renew_window: tuple[float, float] = (0.60, 0.70)
    retry_initial: timedelta = timedelta(seconds=30)
    retry_max: timedelta = timedelta(minutes=15)
    max_delete_fraction: float = 0.25
    allow_empty: bool = False
    batch_fraction: float = 0.10
    """A due renewal takes along the account's channels due within this fraction of their lifetime."""
    emergency_fraction: float = 0.05
    """Under this fraction of the lifetime left, renew at once (channel.at_risk)."""
    terminal_retry: timedelta = timedelta(hours=1)
    """A terminal failure is retried after a reload, or after this long."""
