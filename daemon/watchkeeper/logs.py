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
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, MutableMapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["auto", "json", "console"]

MASK = "***"
_QUERY_VALUE = re.compile(r"([?&][^=&\s#\"'?]+=)[^&\s#\"']+")
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_RUN = re.compile(r"[\w.~+/=-]{16,}")
"""A run of token characters long enough to be an access token (Zoho's look like 1000.<hex>.<hex>)."""
ROTATING_KEPT = 2
"""Access tokens masked per account: the current one and the one before (a line logged during a
refresh may still carry it); older ones have expired."""
MIN_SECRET = 6
"""Secrets this long or longer are masked wherever they occur, even inside a longer word. Shorter
ones are masked only as a whole token (neither preceded nor followed by a letter, digit or
underscore): a token ``1`` masks the standalone ``1`` of "1 change pending" but not the digits of
every instant, and ``crm`` masks "/crm/v8" but not "crmx"."""


class Redactor:
    """Masks known secret strings wherever they occur, in one regular-expression scan a string.

    The secrets are compiled into one pattern shaped as a trie (``ab(?:c|d(?:ef)?)``), so a scan
    costs about the same for 10,000 channel tokens as for five, and the longest secret wins where
    one is a prefix of another. The pattern is rebuilt lazily after new secrets arrive (about a
    second for 10,000 of them, once per reload or token refresh that brings a new one).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._stale = False
        self._rotating: dict[str, tuple[str, ...]] = {}
        self._holders: Counter[str] = Counter()
        """Each rotating token masked, with how many owners keep it (two accounts may share one)."""

    def add_rotating(self, owner: str, secret: str) -> None:
        """An access token of ``owner`` (an account): masked as a whole run of token characters,
        looked up in a dict rather than compiled into the pattern, so thousands of accounts
        refreshing every hour cost no recompilation, and only the last ROTATING_KEPT are kept.
        Constant time: a fleet's first pass adds one token per account."""
        with self._lock:
            before = self._rotating.get(owner, ())
            after = tuple(dict.fromkeys((secret, *before)))[:ROTATING_KEPT]
            self._rotating[owner] = after
            self._holders.update(set(after).difference(before))
            for gone in set(before).difference(after):
                self._holders[gone] -= 1
                if not self._holders[gone]:
                    del self._holders[gone]

    def add(self, secrets: Iterable[str | None]) -> None:
        with self._lock:
            new = {secret for secret in secrets if secret} - self._secrets
            if new:
                self._secrets |= new
                self._stale = True

    def clear(self) -> None:
        with self._lock:
            self._secrets.clear()
            self._pattern, self._stale = None, False
            self._rotating, self._holders = {}, Counter()

    def _compiled(self) -> re.Pattern[str] | None:
        if self._stale:
            with self._lock:
                if self._stale:
                    self._pattern, self._stale = _compile(self._secrets), False
        return self._pattern

    def redact_text(self, text: str) -> str:
        text = _QUERY_VALUE.sub(rf"\1{MASK}", text)
        pattern = self._compiled()
        if pattern is not None:
            text = pattern.sub(MASK, text)
        rotating = self._holders  # read without the lock: a dict lookup is atomic
        if rotating:
            text = _RUN.sub(lambda run: MASK if run.group(0) in rotating else run.group(0), text)
        return text

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


def _compile(secrets: Collection[str]) -> re.Pattern[str] | None:
    """The secrets of MIN_SECRET characters or more anywhere, then the shorter ones as tokens."""
    long = sorted(s for s in secrets if len(s) >= MIN_SECRET)
    short = sorted(s for s in secrets if len(s) < MIN_SECRET)
    if not (long or short):
        return None
    try:
        return re.compile(_alternatives(_trie(long), _trie(short)))
    except RecursionError:  # hundreds of secrets each a prefix of the next: a flat alternation
        return re.compile(_alternatives(*(_flat(group) for group in (long, short))))


def _alternatives(anywhere: str, tokens: str) -> str:
    parts = ([anywhere] if anywhere else []) + ([rf"(?<!\w)(?:{tokens})(?!\w)"] if tokens else [])
    return "|".join(parts)


def _flat(words: Sequence[str]) -> str:
    return "|".join(map(re.escape, sorted(words, key=len, reverse=True)))


def _trie(words: Iterable[str]) -> str:
    """One pattern matching any of ``words``, the longest where several match at one place; ""
    for none."""
    root: dict[str, Any] = {}
    for word in words:
        node = root
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}  # a word ends here

    def pattern(node: dict[str, Any]) -> str:
        literal = ""
        while len(node) == 1 and "" not in node:  # a chain without choices is one literal
            ((char, node),) = node.items()
            literal += char
        branches = [re.escape(char) + pattern(child) for char, child in node.items() if char]
        if not branches:
            return re.escape(literal)  # a leaf (or the root of no words: "")
        choice = branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"
        return re.escape(literal) + (f"(?:{choice})?" if "" in node else choice)

    return pattern(root)


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
