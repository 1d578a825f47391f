"""Fault profiles, and their layout in time for one run.

A profile says what goes wrong and how often; ``Profile.schedule`` turns it into instants with a
seeded RNG, so that watchkeeper and the baselines face exactly the same faults at the same times.
All instants of a Schedule are on the harness's clock (ours); ``install`` moves the fault windows
onto the emulator's clock, which runs ``clock_skew`` ahead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from watchkeeper.emulator import Emulator, Fault

Key = tuple[str, str]
"""(account, channel_id)."""
ActionKind = Literal["restart", "change", "delete"]

QUIET_START = timedelta(hours=1)
"""No random fault in the first hour: the run starts from a clean creation of every channel."""


@dataclass(frozen=True, slots=True)
class Window:
    start: datetime
    end: datetime

    def overlaps(self, other: Window, margin: timedelta = timedelta(0)) -> bool:
        return self.start < other.end + margin and other.start < self.end + margin

    def shifted(self, delta: timedelta) -> Window:
        return Window(self.start + delta, self.end + delta)


@dataclass(frozen=True, slots=True)
class Action:
    """Something the harness does itself at ``at``: rebuild the engine, or touch a channel on Zoho
    behind the daemon's back."""

    at: datetime
    kind: ActionKind
    key: Key | None = None


@dataclass(frozen=True, slots=True)
class Schedule:
    """One run's faults, on our clock."""

    outages: tuple[Window, ...]
    bursts: tuple[Window, ...]
    default_only: Window | None
    actions: tuple[Action, ...]
    """Sorted by time."""

    def install(self, emu: Emulator, profile: Profile) -> None:
        """Put the faults into the emulator. Order matters: the first matching fault answers, so an
        outage wins over a burst, which wins over the random errors."""
        skew = profile.clock_skew
        for outage in self.outages:
            at = outage.shifted(skew)
            emu.add_fault(Fault(status=503, start=at.start, end=at.end, paths="any", body="html"))
        for burst in self.bursts:
            at = burst.shifted(skew)
            emu.add_fault(Fault(status=429, start=at.start, end=at.end, retry_after=profile.retry_after))
        if profile.server_errors:
            # half answered by the API itself (JSON), half by a proxy in front of it (an HTML page)
            half = profile.server_errors / 2
            emu.add_fault(Fault(status=500, fraction=half, paths="any"))
            emu.add_fault(Fault(status=502, fraction=half, paths="any", body="html"))
        if self.default_only is not None:
            at = self.default_only.shifted(skew)
            emu.grant_only_default(at.start, at.end)

    def outage_covering(self, zoho_instant: datetime, skew: timedelta) -> Window | None:
        """The outage (on Zoho's clock) during which ``zoho_instant`` falls, if any."""
        for outage in self.outages:
            at = outage.shifted(skew)
            if at.start <= zoho_instant <= at.end:
                return at
        return None


@dataclass(frozen=True, slots=True)
class Profile:
    """What goes wrong in a run. Durations are of simulated time."""

    name: str
    server_errors: float = 0.0
    """Fraction of all calls (API and OAuth) answered with a 5xx."""
    bursts_per_day: float = 0.0
    """429 bursts: every watch call in the window is answered 429 with Retry-After."""
    burst_length: timedelta = timedelta(minutes=10)
    retry_after: float = 60.0
    outages: int = 0
    """Windows in which every call (API and OAuth) gets a 503 page."""
    outage_length: timedelta = timedelta(hours=2)
    restarts: int = 0
    """The engine is closed and rebuilt from its database (a daemon restart)."""
    clock_skew: timedelta = timedelta(0)
    """Zoho's clock minus ours."""
    access_token_lifetime: timedelta = timedelta(hours=1)
    default_only: timedelta = timedelta(0)
    """Length of a window in which Zoho grants its 1-hour default whatever is asked. The default
    profile's is a day, so that every policy renews inside it at least once (Zoho's advice renews
    once a day): a window in which a policy renews nothing does not test it."""
    change_one: bool = False
    """One channel's events and notify_url changed on Zoho behind the daemon's back."""
    delete_one: bool = False
    """One channel deleted on Zoho behind the daemon's back."""

    def schedule(self, start: datetime, end: datetime, keys: list[Key], rng: random.Random) -> Schedule:
        """Lay the faults out over [start, end), the same for every policy.

        The default-only window falls at random; the first outage starts half-way through it, when
        a policy that follows the lifetimes Zoho grants holds 1-hour channels, so the outage
        outlasts what is left of them: the case where lapses cannot be avoided and the gap ledger
        has to be exact. The other outages fall at random, apart from it and from each other.
        """
        default_only = None
        outages: list[Window] = []
        if self.default_only:
            default_only = _place(rng, start + QUIET_START, end, self.default_only, [])
            if self.outages:
                first = default_only.start + self.default_only / 2
                outages.append(Window(first, first + self.outage_length))
        taken = [default_only] if default_only else []
        for _ in range(len(outages), self.outages):
            outages.append(_place(rng, start + QUIET_START, end, self.outage_length, [*taken, *outages]))
        bursts = [
            _place(rng, start + QUIET_START, end, self.burst_length, [])
            for _ in range(round(self.bursts_per_day * (end - start) / timedelta(days=1)))
        ]
        actions = [
            Action(_instant(rng, start + QUIET_START, end), "restart") for _ in range(self.restarts)
        ]
        if bursts and actions:
            # One burst greets the first restart, whose first pass lists at once: at least one
            # burst is certain to meet a call (one that meets none tests nothing).
            restart = min(a.at for a in actions)
            bursts[0] = Window(restart, restart + self.burst_length)
        victims = rng.sample(keys, k=min(len(keys), int(self.change_one) + int(self.delete_one)))
        if self.change_one:
            actions.append(Action(_instant(rng, start + QUIET_START, end), "change", victims.pop()))
        if self.delete_one:
            actions.append(Action(_instant(rng, start + QUIET_START, end), "delete", victims.pop()))
        return Schedule(
            outages=tuple(sorted(outages, key=lambda w: w.start)),
            bursts=tuple(sorted(bursts, key=lambda w: w.start)),
            default_only=default_only,
            actions=tuple(sorted(actions, key=lambda a: a.at)),
        )


def _instant(rng: random.Random, low: datetime, high: datetime) -> datetime:
    """A random whole second in [low, high): Zoho writes whole seconds, and so do operators."""
    seconds = int((high - low).total_seconds())
    return low + timedelta(seconds=rng.randrange(max(seconds, 1)))


def _place(
    rng: random.Random, low: datetime, high: datetime, length: timedelta, avoid: list[Window]
) -> Window:
    """A window of ``length`` inside [low, high) clear of ``avoid`` (by an hour) if one can be found."""
    window = Window(low, low + length)
    for _ in range(1000):
        at = _instant(rng, low, max(high - length, low + timedelta(seconds=1)))
        window = Window(at, at + length)
        if not any(window.overlaps(other, timedelta(hours=1)) for other in avoid):
            return window
    return window


PROFILES: dict[str, Profile] = {
    "default": Profile(
        "default",
        server_errors=0.02,
        bursts_per_day=2.0,
        outages=3,
        restarts=2,
        clock_skew=timedelta(minutes=5),
        access_token_lifetime=timedelta(hours=1),
        default_only=timedelta(days=1),
        change_one=True,
        delete_one=True,
    ),
    "none": Profile("none"),
}
"""``default`` is the issue's profile; ``none`` shows the steady state (what faults cost)."""
