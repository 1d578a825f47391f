"""Structured logs: JSON lines for machines, a readable rendering for people, and redaction that no
line can bypass.

Redaction is the last step before rendering, so every event, every exception text and every line
forwarded from the standard library (httpx, apscheduler) passes through it. It masks the query
values of any URL (``?key=***``), every secret the state file resolved, and every access token the
OAuth layer saw. Under journald (``$JOURNAL_STREAM`` set) each line carries the syslog priority
prefix ``<N>`` so that ``journalctl -p warning`` works.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Mapping, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["auto", "json", "console"]

MASK = "***"
_QUERY_VALUE = re.compile(r"([?&][^=&\s#\"'?]+=)[^&\s#\"']+")
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_PREFIX = 4
MIN_SECRET = 6
"""Shorter values are not masked outside URLs (whose query values are always masked): masking
``crm`` or ``1`` everywhere would make every line unreadable and protect nothing."""


class Redactor:
    """Masks known secret strings wherever they occur.

    Lookups go through an index of each secret's first characters, so the cost per string grows
    with its length, not with the number of secrets (10,000 channel tokens must not slow every
    log line down).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._index: dict[str, list[str]] = {}

    def add(self, secrets: Iterable[str | None]) -> None:
        with self._lock:
            for secret in secrets:
                if not secret or len(secret) < MIN_SECRET:
                    continue
                bucket = self._index.setdefault(secret[:_PREFIX], [])
                if secret not in bucket:
                    bucket.append(secret)
                    bucket.sort(key=len, reverse=True)

    def clear(self) -> None:
        with self._lock:
            self._index.clear()

    def redact_text(self, text: str) -> str:
        text = _QUERY_VALUE.sub(rf"\1{MASK}", text)
        index = self._index
        if not index:
            return text
        out: list[str] = []
        i = 0
        n = len(text)
        while i < n:
            bucket = index.get(text[i : i + _PREFIX])
            if bucket:
                hit = next((s for s in bucket if text.startswith(s, i)), None)
                if hit is not None:
                    out.append(MASK)
                    i += len(hit)
                    continue
            out.append(text[i])
            i += 1
        return "".join(out)

    def redact(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, Mapping):
            return {k: self.redact(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.redact(v) for v in value]
        return value

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event_dict.items():
            event_dict[key] = self.redact(value)
        return event_dict


REDACTOR = Redactor()
"""The process-wide redactor: config loading and the OAuth layer feed it."""


def _journal_prefix(renderer: Any) -> Any:
    def render(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        level = str(event_dict.get("level", "info"))
        return f"<{_PRIORITY.get(level, 6)}>{renderer(logger, method, event_dict)}"

    return render


def _plain_values(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Instants as UTC ISO 8601 and ``channel_id`` always a string, as in JSON output (DESIGN.md
    section 4), whatever the caller passed."""
    for key, value in event_dict.items():
        if isinstance(value, datetime):
            event_dict[key] = value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        elif isinstance(value, timedelta):
            event_dict[key] = value.total_seconds()
    if event_dict.get("channel_id") is not None:
        event_dict["channel_id"] = str(event_dict["channel_id"])
    head = {key: event_dict.pop(key) for key in ("timestamp", "level", "event") if key in event_dict}
    return head | dict(event_dict)


class _StdlibBridge(logging.Handler):
    """Sends standard-library records (httpx, apscheduler) through the structlog pipeline."""

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelname.lower()
        log = structlog.get_logger(record.name)
        fields: dict[str, Any] = {"logger": record.name}
        if record.exc_info:
            fields["exc_info"] = record.exc_info
        getattr(log, level if level in _LEVELS else "info")(record.getMessage(), **fields)


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    """Even a crash's traceback goes through redaction, never straight to stderr."""
    structlog.get_logger().critical("process.crashed", exc_info=(kind, exc, tb))


def _log_thread_uncaught(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    structlog.get_logger().critical(
        "thread.crashed",
        thread=args.thread.name if args.thread else None,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def configure(
    fmt: LogFormat = "auto",
    level: str = "info",
    stream: TextIO | None = None,
    *,
    journal: bool | None = None,
) -> None:
    """Set up structlog (and route the standard library through it) for this process."""
    stream = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    if journal is None:
        journal = bool(os.environ.get("JOURNAL_STREAM"))
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    if journal:
        renderer = _journal_prefix(renderer)
    threshold = _LEVELS[level.lower()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _plain_values,
            REDACTOR,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_uncaught
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StdlibBridge):
            root.removeHandler(handler)
    root.addHandler(_StdlibBridge())
    root.setLevel(max(threshold, logging.WARNING))


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger().bind(**bound) if bound else structlog.get_logger()
