"""What /livez, /readyz and the loop's gauges read: written by the service's threads, read by the
listener's (plain attribute writes, so no lock is needed).

Kept apart from metrics.py so that a daemon without ``[daemon].metrics`` never imports
prometheus_client (its idle memory must not grow for a listener it does not run).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from watchkeeper.config import DesiredState
from watchkeeper.store.target import Target

if TYPE_CHECKING:
    from watchkeeper.metrics import Meter


class ListenError(Exception):
    """The metrics address cannot be listened on (taken, or not this host's)."""


@dataclass
class Health:
    alive: Callable[[], bool]
    """The watchdog's rule (Service.alive): the main loop ticks and no pass is hung or overdue."""
    state: DesiredState | None = None
    """The desired state in force: the channels the gauges show."""
    last_pass: float | None = None
    """Unix time at which the last pass returned; None before the first."""
    reload_ok: bool = True
    """Whether the last reload applied the state file (the one loaded at start is valid, or the
    daemon would not be running)."""
    served: frozenset[str] = frozenset()
    """The accounts this instance serves, as of the engine's opening, the last reload and the
    last completed pass: every account on SQLite, the leased ones on a shared database."""

    @property
    def ready(self) -> bool:
        """The state file is loaded and a first pass has finished."""
        return self.state is not None and self.last_pass is not None


def serve(state: DesiredState, db: Target, health: Health) -> AbstractContextManager[Meter | None]:
    """The listener ``[daemon].metrics`` asks for, yielding the counters the engine and its HTTP
    client feed; nothing at all when the key is absent. Raises ListenError on entry."""
    if state.metrics is None:
        return nullcontext()
    from watchkeeper import metrics

    return metrics.serve(state.metrics, db, health)
