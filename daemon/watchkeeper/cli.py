"""``watchkeeper``: argument parsing and one function per command; no business logic.

Exit codes (DESIGN.md section 4): validate 0 / 78; plan 0 in sync, 2 changes pending, 1 error;
apply 0 all done, 1 something failed. Results go to stdout, log lines to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watchkeeper import __version__, logs, report
from watchkeeper.config import ConfigError, DesiredState, parse_duration
from watchkeeper.secrets import SecretRefError
from watchkeeper.statedir import load, state_files
from watchkeeper.store.errors import StoreError
from watchkeeper.store.target import PostgresTarget, Target
from watchkeeper.zoho.errors import ZohoError

if TYPE_CHECKING:
    from watchkeeper.engine import Engine
    from watchkeeper.store import Gap, Store

EX_OK, EX_ERROR, EX_PENDING, EX_CONFIG = 0, 1, 2, 78
DESCRIPTION = "Keeps Zoho CRM and Bigin instant-notification channels alive."


def _state_path(args: argparse.Namespace) -> Path:
    return Path(args.state or os.environ.get("WATCHKEEPER_STATE") or "state/channels.toml")


def _db_override(args: argparse.Namespace) -> Target | None:
    """``--db`` or ``$WATCHKEEPER_DB``: a SQLite path or a postgresql:// URL, given literally or as
    a secret reference (env:, file:, credential:); its password goes to the log redactor."""
    from watchkeeper.secrets import resolve
    from watchkeeper.store import target

    explicit = args.db or os.environ.get("WATCHKEEPER_DB")
    if not explicit:
        return None
    found = target.parse(resolve(explicit, environ=os.environ, base_dir=Path()), Path())
    logs.REDACTOR.add(target.secrets(found))
    return found


@dataclass(frozen=True)
class Session:
    """What every command starts from: the validated state and the database it names."""

    state: DesiredState
    db: Target

    def store(self) -> AbstractContextManager[Store]:
        from watchkeeper.runtime import open_store

        return open_store(self.state, self.db)

    @contextmanager
    def reader(self) -> Iterator[Store | None]:
        """The store opened read-only (``status`` and ``gaps`` work on a file they cannot write);
        None when no database exists yet, which reads as an empty one and creates nothing."""
        from watchkeeper.runtime import open_store

        if isinstance(self.db, Path) and not self.db.exists():
            yield None
            return
        with open_store(self.state, self.db, readonly=True) as store:
            yield store

    def engine(self) -> AbstractContextManager[Engine]:
        from watchkeeper.runtime import open_engine

        return open_engine(self.state, self.db)


def _session(args: argparse.Namespace) -> Session | None:
    """The state loaded (its problems printed, one a line, every file's for a directory) and the
    database resolved."""
    from watchkeeper.runtime import database_path

    try:
        state = load(_state_path(args))
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"error: {issue}", file=sys.stderr)
        return None
    return Session(state, database_path(state, _db_override(args)))


def _emit(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    print(json.dumps(doc, indent=2) if args.json else text)


def cmd_validate(args: argparse.Namespace) -> int:
    session = _session(args)
    if session is None:
        return EX_CONFIG
    state, path = session.state, _state_path(args)
    counts = f"{len(state.accounts)} account(s), {len(state.channels)} channel(s)"
    if path.is_dir():
        counts = f"{len(state_files(path))} file(s), {counts}"
    print(f"{path}: valid ({counts})")
    return EX_OK


def cmd_plan(args: argparse.Namespace) -> int:
    session = _session(args)
    if session is None:
        return EX_ERROR
    state = session.state
    try:
        with session.engine() as engine:
            result = engine.preview(datetime.now(UTC))
    except ZohoError as exc:
        print(f"error: listing failed: {exc}", file=sys.stderr)
        return EX_ERROR
    names = {(c.account, c.channel_id): c.name for c in state.channels}
    doc = report.plan_json(result, names)
    _emit(args, doc, report.plan_text(doc))
    return EX_OK if doc["in_sync"] else EX_PENDING


def cmd_apply(args: argparse.Namespace) -> int:
    from watchkeeper.lock import InstanceLock, LockHeld
    from watchkeeper.runtime import confirm_deletes

    session = _session(args)
    if session is None:
        return EX_ERROR
    if isinstance(session.db, PostgresTarget):
        return _apply_shared(args, session)
    try:
        lock = InstanceLock(session.db).acquire("apply")
    except LockHeld as exc:
        if not (args.allow_mass_delete and exc.pid and exc.role == "run"):
            print(
                f"error: {exc}; a running daemon applies the state file itself when it is saved "
                "(or on `systemctl reload watchkeeper`)",
                file=sys.stderr,
            )
            return EX_ERROR
        with session.store() as store:
            keys = confirm_deletes(session.state, store, datetime.now(UTC))
        os.kill(exc.pid, signal.SIGHUP)
        print(f"confirmed {len(keys)} deletion(s); the daemon (pid {exc.pid}) applies them next pass")
        return EX_OK
    try:
        with session.engine() as engine:
            return _apply_pass(args, engine)
    finally:
        lock.release()


def _apply_shared(args: argparse.Namespace, session: Session) -> int:
    """``apply`` on a shared database: only while no daemon runs on it (they apply the state file
    themselves), and as an instance of its own, under the leases like any other (alone, it may
    create or upgrade the schema, as ``run`` does)."""
    from watchkeeper.runtime import instance_name, open_engine, open_store

    instance = instance_name(session.state)
    with open_store(session.state, session.db, migrate="alone", instance=instance) as store:
        live = store.live_instances()
    if live:
        print(
            f"error: instances {', '.join(live)} run on {session.db}: they apply the state file "
            "themselves when it is saved (or on `systemctl reload watchkeeper`)",
            file=sys.stderr,
        )
        return EX_ERROR
    with open_engine(session.state, session.db) as engine:
        try:
            return _apply_pass(args, engine)
        finally:
            engine.release_leases()


def _apply_pass(args: argparse.Namespace, engine: Engine) -> int:
    """One listing pass (with the mass-delete confirmation when asked), and its report."""
    confirmed = engine.undesired() if args.allow_mass_delete else frozenset()
    result = engine.run_pass(datetime.now(UTC), listing=True, confirmed=confirmed)
    doc = report.apply_json(result)
    _emit(args, doc, report.apply_text(doc))
    return EX_OK if result.ok else EX_ERROR


def cmd_status(args: argparse.Namespace) -> int:
    session = _session(args)
    if session is None:
        return EX_ERROR
    accounts = None
    with session.reader() as store:
        rows, foreign = (store.status_rows(), store.foreign()) if store else ([], [])
        now = datetime.now(UTC)
        if store is not None and store.shared:  # several instances: who serves which account
            accounts = report.accounts_rows(sorted(session.state.accounts), store.leases(), now)
    _emit(
        args,
        report.status_json(rows, foreign, accounts),
        report.status_text(rows, foreign, now, accounts),
    )
    return EX_OK


def cmd_gaps(args: argparse.Namespace) -> int:
    session = _session(args)
    if session is None:
        return EX_ERROR
    since = _since(args.since)
    with session.reader() as store:
        gaps = store.gaps(since=since, channel_id=args.channel) if store else []
        backfills = store.backfill_states() if store else {}
    now = datetime.now(UTC)
    _emit(args, report.gaps_json(gaps, backfills), report.gaps_text(gaps, backfills, now))
    return EX_OK


def cmd_backfill(args: argparse.Namespace) -> int:
    """Backfill closed gaps now. While a daemon runs, the request is recorded for it (SIGHUP) as
    ``apply --allow-mass-delete`` does; ``--dry-run`` asks Zoho and sends nothing, ever."""
    from watchkeeper.lock import InstanceLock, LockHeld

    session = _session(args)
    if session is None:
        return EX_ERROR
    since, now = _since(args.since), datetime.now(UTC)
    if args.dry_run:
        with session.engine() as engine:
            gaps = _closed(engine.store, since, args.channel)
            try:
                found = list(engine.backfills.preview(gaps))
            except ZohoError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EX_ERROR
        unknown = sorted({g.channel_id for g, n in found if n is None})
        for channel_id in unknown:
            print(f"warning: channel {channel_id} is not in the state file: skipped", file=sys.stderr)
        notes = [(g, n) for g, n in found if n is not None]
        _emit(args, report.backfill_json(notes), report.backfill_text(notes))
        return EX_ERROR if unknown else EX_OK
    if isinstance(session.db, PostgresTarget):  # the instances holding the accounts run them
        with session.store() as store:
            count = store.request_backfill((g.id for g in _closed(store, since, args.channel)), now)
        print(f"requested {count} backfill(s); the instances run them when they next take or reload")
        return EX_OK
    try:
        lock = InstanceLock(session.db).acquire("backfill")
    except LockHeld as exc:
        if not (exc.pid and exc.role == "run"):
            print(f"error: {exc}", file=sys.stderr)
            return EX_ERROR
        with session.store() as store:
            count = store.request_backfill((g.id for g in _closed(store, since, args.channel)), now)
        os.kill(exc.pid, signal.SIGHUP)
        print(f"requested {count} backfill(s); the daemon (pid {exc.pid}) runs them next pass")
        return EX_OK
    try:
        with session.engine() as engine:
            ids = [g.id for g in _closed(engine.store, since, args.channel)]
            engine.store.request_backfill(ids, now)
            engine.run_backfills(now)
            states = engine.store.backfill_states()
            gaps = [g for g in engine.store.gaps(since=since, channel_id=args.channel) if g.id in ids]
    finally:
        lock.release()
    mine = {g.id: states[g.id] for g in gaps if g.id in states}
    _emit(args, report.gaps_json(gaps, mine), report.gaps_text(gaps, mine, now))
    return EX_OK if all(state == "done" for state, _ in mine.values()) else EX_ERROR


def _since(text: str | None) -> datetime | None:
    if not text:
        return None
    since = datetime.fromisoformat(text)
    return since.replace(tzinfo=UTC) if since.tzinfo is None else since.astimezone(UTC)


def _closed(store: Store, since: datetime | None, channel: str | None) -> list[Gap]:
    return [g for g in store.gaps(since=since, channel_id=channel) if g.end is not None]


def cmd_run(args: argparse.Namespace) -> int:
    from watchkeeper.service import Service

    return Service(_state_path(args), _db_override(args)).run()


def cmd_migrate(args: argparse.Namespace) -> int:
    """Bring the database's schema to this watchkeeper's head revision (SQLite or PostgreSQL)."""
    from watchkeeper.runtime import open_store
    from watchkeeper.store import migrate

    session = _session(args)
    if session is None:
        return EX_ERROR
    with open_store(session.state, session.db, migrate="always"):
        pass
    print(f"{session.db}: schema at revision {migrate.head()}")
    return EX_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from watchkeeper.demo import demo

    return demo(duration=args.duration, channels=args.channels, ttl=args.ttl)


def cmd_emulate(args: argparse.Namespace) -> int:
    from watchkeeper.emulator import serve

    serve(args.host, args.port, default_lifetime=args.default_lifetime)
    return EX_OK


def _lifetime(text: str) -> timedelta:
    try:
        delta = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if delta <= timedelta(0):
        raise argparse.ArgumentTypeError(f"{text!r} must be longer than 0s")
    return delta


def _iso(text: str) -> str:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 instant: {text!r}") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="watchkeeper", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"watchkeeper {__version__}")
    parser.add_argument(
        "--state",
        help="state file, or a directory of *.toml files "
        "(default $WATCHKEEPER_STATE, else state/channels.toml)",
    )
    parser.add_argument(
        "--db",
        help="SQLite file or postgresql:// URL, or a secret reference to one "
        "(default $WATCHKEEPER_DB, else [daemon].database)",
    )
    parser.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    parser.add_argument(
        "--log-level", type=str.lower, choices=["debug", "info", "warning", "error"], default="info"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("validate", help="check the state file (exit 0 valid, 78 invalid)").set_defaults(
        func=cmd_validate
    )
    p = sub.add_parser("plan", help="what apply would do (exit 0 in sync, 2 changes pending, 1 error)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("apply", help="one reconcile pass (exit 0 all done, 1 something failed)")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--allow-mass-delete", action="store_true", help="confirm deletions the guards refused"
    )
    p.set_defaults(func=cmd_apply)
    p = sub.add_parser("status", help="one row per channel: state, expiry, next renewal, failures")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("gaps", help="windows in which a channel was not live (to backfill)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--since", type=_iso, help="only gaps open or ended after this instant")
    p.add_argument("--channel", help="only this channel id")
    p.set_defaults(func=cmd_gaps)
    p = sub.add_parser("backfill", help="redeliver what changed during closed gaps (exit 0 all done)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--since", type=_iso, help="only gaps ended after this instant")
    p.add_argument("--channel", help="only this channel id")
    p.add_argument("--dry-run", action="store_true", help="print what would be sent; send nothing")
    p.set_defaults(func=cmd_backfill)
    p = sub.add_parser("migrate", help="bring the database's schema to this version (both backends)")
    p.set_defaults(func=cmd_migrate)
    p = sub.add_parser("run", help="the daemon, in the foreground (systemd runs this)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser(
        "demo", help="the emulator, a webhook receiver and the daemon on short-lived channels"
    )
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--ttl", default="30s", help="channel lifetime asked for (at least 10s)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("emulate", help="run the local Zoho emulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8950)
    p.add_argument(
        "--default-lifetime",
        type=_lifetime,
        default=timedelta(hours=1),
        metavar="DURATION",
        help="what Zoho grants when no or a disliked expiry is asked (docs 1h, recordings 2h)",
    )
    p.set_defaults(func=cmd_emulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    one_shot = args.command not in ("emulate", "run", "demo")
    # The demo is for people: readable even when piped (`--log-format json` still overrides).
    fmt: logs.LogFormat = args.log_format
    if args.command == "demo" and fmt == "auto":
        fmt = "console"
    logs.configure(fmt, args.log_level, sys.stderr if one_shot else sys.stdout)
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except (StoreError, SecretRefError) as exc:  # corrupt, newer, read-only, missing, unreachable:
        # the message says which, naming the file or the host and database (never a password)
        print(f"error: {logs.REDACTOR.redact_text(str(exc))}", file=sys.stderr)
        return EX_ERROR
    except BrokenPipeError:
        # `watchkeeper status --json | head`: the reader has gone, so there is nobody to tell.
        # Point stdout at /dev/null so that the flush at exit does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_ERROR
    return code


if __name__ == "__main__":
    sys.exit(main())
