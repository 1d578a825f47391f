"""``watchkeeper run``: the engine on an APScheduler loop, under systemd or not.

Threads and who does what:
- the main thread waits for signals (a self-pipe, so no work happens inside a signal handler) and
  polls the state file; it touches the engine only through its thread-safe ``stopping`` flag and
  ``request_listing()``, so it can always answer SIGTERM;
- the scheduler's single ``default`` worker runs every engine pass and every reload, one at a
  time, so the engine is never used from two threads;
- a separate ``watchdog`` worker pings systemd only while both the main loop and the pass are
  making progress, so a hung pass or a stopped process gets the daemon killed and restarted.

Every pass re-arms a date job at the engine's next_due(), never more than ``max_sleep`` ahead: a
clock jump or a suspend costs at most that long; a jump also makes the next pass list every account,
so the skew against Zoho's clock is measured again.

Stopping never waits on a lock the worker needs (APScheduler's ``shutdown(wait=True)`` joins the
worker while holding the jobstore lock that ``add_job``/``modify_job`` in the worker want): once a
stop is requested nothing re-arms, the scheduler is shut down without waiting, and the pass in
flight gets ``grace`` seconds. A pass still stuck in a silent server after that is abandoned as a
SIGKILL would leave it (each batch of answers is its own transaction) and the process exits 0.
``daemon.stopping`` and ``STOPPING=1`` come last, after the worker has finished or been abandoned.

Reloads, by SIGHUP or by the file watcher, apply only a file that has stayed unchanged for
``settle`` seconds: an editor or script writing in steps never gets a half-written file applied. So
a channel that disappears from the file is deleted only once the file has settled without it. A
state directory is watched as a whole (a file added, removed or changed) and settles as a whole.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from watchkeeper import logs, statedir
from watchkeeper.config import DesiredState
from watchkeeper.engine import Engine
from watchkeeper.health import Health, ListenError
from watchkeeper.health import serve as serve_metrics
from watchkeeper.lock import InstanceLock, LockHeld
from watchkeeper.notify import Notifier
from watchkeeper.report import human_delta
from watchkeeper.runtime import database_path, instance_name, open_engine, open_store
from watchkeeper.statedir import Fingerprint, Loader
from watchkeeper.store.errors import StoreError
from watchkeeper.store.target import PostgresTarget, Target
from watchkeeper.units import Census

if TYPE_CHECKING:
    from watchkeeper.metrics import Meter

EX_OK, EX_FAILURE, EX_CONFIG = 0, 1, 78
STOP = 0
"""Byte written to the wake-up pipe by request_stop() (signal numbers are never 0)."""
CLOCK_JUMP = 5.0
"""Seconds the wall clock may move against the monotonic one before the schedule is redone."""
FAILED_PASS_DELAY = timedelta(seconds=5)
DATABASE_RETRY_MAX = 60.0
"""Seconds between attempts to reach a PostgreSQL database that did not answer at start, at most."""


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Timing:
    max_sleep: timedelta = timedelta(seconds=60)
    """The longest the loop sleeps before it looks at the clock again."""
    poll: float = 0.5
    """How often the main thread checks the state file (seconds)."""
    stuck_after: float = 600.0
    """A pass running longer than this is hung: stop feeding the watchdog (seconds)."""
    settle: float = 2.0
    """A changed state file is applied once it has stayed the same this long (seconds)."""
    grace: float = 5.0
    """After SIGTERM, how long the pass in flight may take before it is abandoned (seconds)."""


@dataclass
class ReloadGate:
    """When to reload: after SIGHUP or a change on disk, once the file has settled.

    No I/O: the main loop feeds it the file's fingerprint and the monotonic time.
    """

    settle: float
    applied: Fingerprint
    """The file as last applied (or found at start)."""
    seen: Fingerprint
    seen_at: float
    """When ``seen`` was first observed; the file has not changed since."""
    asked: bool = False
    """A SIGHUP is waiting for the file to settle."""

    @classmethod
    def start(cls, fingerprint: Fingerprint, now: float, settle: float) -> ReloadGate:
        return cls(settle, fingerprint, fingerprint, now - settle)

    def signal(self) -> None:
        self.asked = True

    def observe(self, current: Fingerprint, now: float) -> str | None:
        """The trigger of a reload due now (``signal`` or ``file``), or None."""
        if current != self.seen:
            self.seen, self.seen_at = current, now
        trigger = "signal" if self.asked else "file" if current != self.applied else None
        if trigger is None or now - self.seen_at < self.settle:
            return None
        self.applied, self.asked = current, False
        return trigger


def summary(engine: Engine, now: datetime) -> str:
    """The one-line ``STATUS=``: what an operator wants from ``systemctl status``. Sent after every
    pass, so it is made of the units' cached censuses: O(accounts) on an idle tick."""
    leased = engine.shell.leasing is not None
    held = (len(engine.served()), len(engine.state.accounts)) if leased else None
    return status_line(engine.memory.census(), engine.memory.skew(), now, held)


def status_line(
    counted: Census, skew: timedelta, now: datetime, held: tuple[int, int] | None = None
) -> str:
    """PURE: the ``STATUS=`` text of a census, ``skew`` (Zoho's clock minus ours) and, several
    instances sharing the accounts, (held, configured)."""
    states = counted.states
    parts = [f"{states['active']} active", f"{states['at_risk']} at risk"]
    if held is not None:
        parts.insert(0, f"holding {held[0]} of {held[1]} accounts")
    parts += [f"{states[s]} {s}" for s in ("lapsed", "failed", "pending") if states[s]]
    if counted.renew_at is not None:
        wait = max(counted.renew_at - skew - now, timedelta(0))
        parts.append(f"next renewal in {human_delta(wait)}")
    return ", ".join(parts)


def freeze_heap() -> None:
    """Once the first pass is over: what start-up built (modules, the desired state, the
    registry) lives as long as the process, so the cyclic GC stops going over it. Its full
    collections go over every tracked object, and at 10,000 channels they were a sixth of the
    engine's CPU (soak, 10,000 channels, 1 day: 187 -> 162 CPU s; idle RSS unchanged). Replaced
    entries are still freed (by reference counting: they hold no cycles)."""
    gc.collect()
    gc.freeze()


class Service:
    def __init__(
        self,
        state_path: Path,
        db: Target | None = None,
        *,
        notifier: Notifier | None = None,
        timing: Timing = Timing(),
    ) -> None:
        self.state_path = state_path
        self.states = Loader(state_path)
        """The state file, or the directory with each file's last good version (in memory)."""
        self.db = db
        self.notifier = notifier or Notifier()
        self.timing = timing
        self.log = logs.get_logger()
        self._engine: Engine | None = None
        self._meter: Meter | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._ready = False
        self._stop = False
        self._busy = False
        self._worker = threading.Condition()
        """Guards ``_stop`` and ``_busy``: a job starts and a tick is armed only while not stopping."""
        self._heartbeat = time.monotonic()
        self._pass_started: float | None = None
        self._pass_ended = time.monotonic()
        self._failed_passes = 0
        self.health = Health(alive=self.alive, state=None)
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)

    # -- entry point ---------------------------------------------------------------------------

    def run(self) -> int:
        try:
            return self._run()
        finally:
            gc.unfreeze()  # the demo and the tests go on in this process after the service
            os.close(self._wake_r)
            os.close(self._wake_w)
            self.notifier.close()

    def _run(self) -> int:
        fingerprint = statedir.fingerprint(self.state_path)  # before reading: a later write is a change
        state = self._load()
        if state is None:
            return EX_CONFIG
        db = database_path(state, self.db)
        lock = None
        if isinstance(db, PostgresTarget):  # several instances: leases divide the accounts
            if not self._await_database(state, db, instance_name(state)):
                return EX_OK
        else:  # SQLite: one instance, by the lock file
            try:
                lock = InstanceLock(db).acquire()
            except LockHeld as exc:
                self.log.error("daemon.locked", error=str(exc))
                return EX_FAILURE
        self.health.state = state
        try:
            with (
                serve_metrics(state, db, self.health) as meter,
                open_engine(state, db, meter=meter) as engine,
            ):
                self._engine, self._meter = engine, meter
                self._note_served(engine)
                self.log.info(
                    "config.loaded",
                    path=str(self.state_path),
                    accounts=len(state.accounts),
                    channels=len(state.channels),
                )
                return self._serve(engine, fingerprint)
        except StoreError as exc:  # corrupt, newer or read-only: the message names file and cure
            self.log.error("store.unusable", error=str(exc))
            return EX_FAILURE
        except ListenError as exc:
            self.log.error("metrics.listen_failed", address=str(state.metrics), error=str(exc))
            return EX_CONFIG
        finally:
            if lock is not None:
                lock.release()

    def _await_database(self, state: DesiredState, db: PostgresTarget, instance: str) -> bool:
        """Open the database once (upgrading its schema if no other instance is live), retrying
        with backoff while it cannot be used (not reached, or refusing us): exiting would have
        systemd restart the daemon into the same wall. Meanwhile systemd gets READY=1 and a STATUS=
        saying what is awaited (the daemon is up and acts as soon as it can; a start that blocked
        would be killed by TimeoutStartSec), and the watchdog is fed. False: stopped meanwhile."""
        attempt = 0
        while not self._stop:
            try:
                with open_store(state, db, migrate="alone", instance=instance):
                    return True
            except StoreError as exc:
                attempt += 1
                delay = min(2.0 ** min(attempt - 1, 16), DATABASE_RETRY_MAX)
                self.log.error("store.unavailable", error=str(exc), attempt=attempt, retry_in=delay)
                if attempt == 1:
                    self.notifier.ready()
                self.notifier.status(f"waiting for the database {db} (attempt {attempt})")
                self._sleep(delay)
        return False

    def _sleep(self, seconds: float) -> None:
        """Wait, feeding the watchdog; SIGTERM (its default action) still ends the process."""
        end = time.monotonic() + seconds
        step = self.notifier.watchdog_interval / 2 if self.notifier.watchdog_interval else 1.0
        while not self._stop and (left := end - time.monotonic()) > 0:
            self.notifier.watchdog()
            select.select([self._wake_r], [], [], min(left, step))

    def request_stop(self) -> None:
        """Stop as SIGTERM would (the demo's ``--duration``); safe from any thread."""
        self._stop_requested()
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, bytes([STOP]))

    # -- the loop ------------------------------------------------------------------------------

    def _stop_requested(self) -> None:
        with self._worker:
            self._stop = True

    def _serve(self, engine: Engine, fingerprint: Fingerprint) -> int:
        scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(1), "watchdog": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1},
        )
        self._scheduler = scheduler
        # Signals first: a SIGTERM during the first pass must already be heard.
        previous = {
            sig: signal.signal(sig, _noop) for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
        }
        old_fd = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        # The tick re-arms from the listener, which runs once the finished run is no longer
        # counted: re-adding a job from inside its own run can see the new run refused as "max
        # instances reached" and the one-shot job dropped for good.
        scheduler.add_listener(self._after_job, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        scheduler.start()
        self._arm(utcnow())
        if self.notifier.watchdog_interval:
            scheduler.add_job(
                self._feed_watchdog,
                "interval",
                seconds=self.notifier.watchdog_interval,
                executor="watchdog",
                id="watchdog",
            )
        try:
            self._main_loop(fingerprint)
        finally:
            finished = self._stop_worker(engine, scheduler)
            self._release_leases(engine)
            signal.set_wakeup_fd(old_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.log.info("daemon.stopping", **({} if finished else {"abandoned": True}))
            self.notifier.stopping()
        if not finished:
            _exit_now(EX_OK)  # the worker still uses the store and the HTTP client: leave them be
        return EX_OK

    def _release_leases(self, engine: Engine) -> None:
        """Several instances: hand every account back at once (a pass still in flight past the
        grace is fenced out of writing, and makes no call without its lease)."""
        try:
            engine.release_leases()
        except StoreError as exc:  # they expire by themselves within one lease
            self.log.warning("lease.release_failed", error=str(exc))

    def _stop_worker(self, engine: Engine, scheduler: BackgroundScheduler) -> bool:
        """Whether the job in flight finished within the grace."""
        self._stop_requested()
        engine.shell.stopping = True
        scheduler.shutdown(wait=False)
        with self._worker:
            return self._worker.wait_for(lambda: not self._busy, self.timing.grace)

    def _main_loop(self, fingerprint: Fingerprint) -> None:
        gate = ReloadGate.start(fingerprint, time.monotonic(), self.timing.settle)
        clock_offset = time.time() - time.monotonic()
        while not self._stop:
            self._heartbeat = time.monotonic()
            readable, _, _ = select.select([self._wake_r], [], [], self.timing.poll)
            if readable:
                for signum in _drain(self._wake_r):
                    if signum in (signal.SIGTERM, signal.SIGINT, STOP):
                        self._stop_requested()
                    elif signum == signal.SIGHUP:
                        gate.signal()
            if self._stop:
                return
            trigger = gate.observe(statedir.fingerprint(self.state_path), time.monotonic())
            if trigger is not None:
                self._request_reload(trigger)
            offset = time.time() - time.monotonic()
            if abs(offset - clock_offset) > CLOCK_JUMP:
                # The scheduler waits on wall-clock time: after a jump (NTP step, suspend) its
                # next run may be hours off, and the skew measured against Zoho is stale. Look
                # again now, listing.
                self.log.warning("clock.jumped", seconds=round(offset - clock_offset, 1))
                assert self._engine is not None
                self._engine.request_listing()
                self._wake_tick()
            clock_offset = offset

    def _arm(self, now: datetime, delay: timedelta | None = None) -> None:
        """The next pass: at the engine's next_due() (or after ``delay``), never more than
        max_sleep away."""
        assert self._engine is not None
        assert self._scheduler is not None
        due = now + delay if delay is not None else self._engine.next_due()
        when = max(now, min(due, now + self.timing.max_sleep))
        with self._worker:
            if not self._stop:
                self._scheduler.add_job(
                    self._tick, "date", run_date=when, id="tick", replace_existing=True
                )

    def _wake_tick(self) -> None:
        assert self._scheduler is not None
        with self._worker, contextlib.suppress(JobLookupError):
            # No job: a pass is running and re-arms after.
            if not self._stop:
                self._scheduler.modify_job("tick", next_run_time=utcnow())

    def _after_job(self, event: JobExecutionEvent) -> None:
        if event.job_id != "tick" or self._stop:
            return
        now = utcnow()
        if event.exception is None and not self._failed_passes:
            self._arm(now)
        else:
            # A failing pass must not run again at once: wait, longer each time, up to max_sleep.
            self._arm(
                now, min(FAILED_PASS_DELAY * 2 ** min(self._failed_passes, 8), self.timing.max_sleep)
            )

    @contextlib.contextmanager
    def _job(self) -> Iterator[bool]:
        """Whether the job may run (not once a stop was requested); marks the worker busy."""
        with self._worker:
            self._busy = not self._stop
        if not self._busy:
            yield False
            return
        try:
            yield True
        finally:
            with self._worker:
                self._busy = False
                self._worker.notify_all()

    def _tick(self) -> None:
        with self._job() as allowed:
            if allowed:
                self._pass()

    def _note_served(self, engine: Engine) -> None:
        """For the lease and auth gauges: what the engine serves, read between passes (by the
        thread that changes it); what the meter heard of the others will be stale when they
        come back."""
        served = frozenset(unit.name for unit in engine.served())
        self.health.served = served
        if self._meter is not None:
            self._meter.forget_all_but(served)

    def _pass(self) -> None:
        engine = self._engine
        assert engine is not None
        self._pass_started = time.monotonic()
        first = not self._ready
        if first:
            self._ready = True
            # Logged first, so that whoever `systemctl start` releases finds the line already there.
            self.log.info("daemon.ready", pid=os.getpid(), channels=len(engine.state.channels))
            self.notifier.ready()
        try:
            engine.run_due(utcnow())
            self.health.last_pass = time.time()
            self._note_served(engine)
            self._failed_passes = 0
        except Exception:
            # A bug must not end the keeping of every other channel: log it and try again.
            self._failed_passes += 1
            self.log.exception("engine.failed", consecutive=self._failed_passes)
        finally:
            self._pass_started = None
            self._pass_ended = time.monotonic()
        self.notifier.status(summary(engine, utcnow()))
        if first:
            freeze_heap()

    def _feed_watchdog(self) -> None:
        if self.alive():
            self.notifier.watchdog()

    def alive(self) -> bool:
        """The watchdog's rule, and /livez's: the main loop ticks and the passes come. Safe from
        any thread."""
        now = time.monotonic()
        if now - self._heartbeat > max(10.0, 4 * self.timing.poll):
            return False  # the main loop is stuck
        started = self._pass_started
        if started is not None and now - started > self.timing.stuck_after:
            return False  # a pass is hung
        # No pass for far longer than the loop ever sleeps: the schedule is lost.
        return (
            started is not None
            or now - self._pass_ended <= 2 * self.timing.max_sleep.total_seconds() + 30
        )

    # -- reload --------------------------------------------------------------------------------

    def _request_reload(self, trigger: str) -> None:
        """Reloads run on the pass worker, after the pass in flight: never two engine users."""
        assert self._scheduler is not None
        with self._worker:
            if not self._stop:
                self._scheduler.add_job(self._reload, args=[trigger], id="reload", replace_existing=True)

    def _reload(self, trigger: str) -> None:
        with self._job() as allowed:
            if allowed:
                self._apply(trigger)

    def _apply(self, trigger: str) -> None:
        engine = self._engine
        assert engine is not None
        self.notifier.reloading()
        try:
            self.health.reload_ok = False
            state = self._load()
            if state is not None:
                if database_path(state, self.db) != database_path(engine.state, self.db):
                    self.log.warning(
                        "config.database_unchanged", note="a new database path needs a restart"
                    )
                engine.reload(state)
                self.health.state, self.health.reload_ok = state, True
                self._note_served(engine)
                self.log.info(
                    "config.loaded",
                    path=str(self.state_path),
                    trigger=trigger,
                    accounts=len(state.accounts),
                    channels=len(state.channels),
                )
        except Exception:
            self.log.exception("config.reload_failed", trigger=trigger)
        finally:
            # systemd waits for READY=1 after RELOADING=1, whatever became of the reload.
            self.notifier.ready(summary(engine, utcnow()))
            self._wake_tick()

    def _load(self) -> DesiredState | None:
        """The desired state, or None, after logging every problem as ``config.invalid``: a file
        alone is applied whole or not at all; a directory's valid files apply, the others keep
        their last good version."""
        merged = self.states.load(self._engine.state if self._engine else None)
        if merged.issues:
            self.log.error(
                "config.invalid",
                path=str(self.state_path),
                errors=[str(issue) for issue in merged.issues],
                applied=merged.state is not None,
            )
        if merged.state is not None:
            logs.REDACTOR.add(merged.state.secrets())
        return merged.state


def _noop(signum: int, frame: Any) -> None:
    """Signals are read from the wake-up pipe; the handler only has to exist."""


def _drain(fd: int) -> list[int]:
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 512):
            data += chunk
    return list(data)


def _exit_now(code: int) -> None:
    """Exit without joining the worker, which is stuck in a call (its logs are flushed first)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
