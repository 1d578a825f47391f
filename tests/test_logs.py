"""Structured logs: formats, journald priorities, and redaction nothing can bypass."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from watchkeeper import logs

SECRET = "s3cr3t-client-value-42"
TOKEN = "1000.0123456789abcdef0123456789abcdef.fedcba9876543210fedcba9876543210"


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.REDACTOR.clear()
    logs.REDACTOR.add([SECRET, TOKEN])
    yield stream
    logs.REDACTOR.clear()


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_lines_carry_timestamp_level_event_first(out: io.StringIO) -> None:
    logs.configure("json", "info", out, journal=False)
    logs.get_logger().info(
        "channel.created",
        channel_id=1000000068001,
        expires_at=datetime(2026, 1, 1, tzinfo=UTC),
        granted=timedelta(hours=1),
    )
    (line,) = lines(out)
    doc = json.loads(line)
    assert list(doc)[:3] == ["timestamp", "level", "event"]
    assert doc["timestamp"].endswith("Z")
    assert doc["channel_id"] == "1000000068001"
    assert doc["expires_at"] == "2026-01-01T00:00:00Z"
    assert doc["granted"] == 3600.0


def test_level_filter(out: io.StringIO) -> None:
    logs.configure("json", "warning", out, journal=False)
    log = logs.get_logger()
    log.info("quiet")
    log.warning("loud")
    assert [json.loads(line)["event"] for line in lines(out)] == ["loud"]


@pytest.mark.parametrize(
    ("level", "prefix"),
    [("debug", "<7>"), ("info", "<6>"), ("warning", "<4>"), ("error", "<3>"), ("critical", "<2>")],
)
def test_journald_priority_prefix(out: io.StringIO, level: str, prefix: str) -> None:
    logs.configure("json", "debug", out, journal=True)
    getattr(logs.get_logger(), level)("x")
    (line,) = lines(out)
    assert line.startswith(prefix + "{")


def test_journal_stream_variable_turns_the_prefix_on(
    out: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    logs.configure("json", "info", out)
    logs.get_logger().info("x")
    assert lines(out)[0].startswith("<6>")


def test_console_rendering_when_asked(out: io.StringIO) -> None:
    logs.configure("console", "info", out, journal=False)
    logs.get_logger().info("channel.renewed", channel_id="42")
    (line,) = lines(out)
    assert "channel.renewed" in line
    assert "channel_id=42" in line
    assert not line.startswith("{")


def test_auto_is_json_when_not_a_terminal(out: io.StringIO) -> None:
    logs.configure("auto", "info", out, journal=False)
    logs.get_logger().info("x")
    assert json.loads(lines(out)[0])["event"] == "x"


def test_secrets_and_query_values_are_masked_everywhere(out: io.StringIO) -> None:
    logs.configure("json", "info", out, journal=False)
    log = logs.get_logger()
    log.info(
        "channel.created",
        url="https://hooks.example.com/z?key=abcdef&source=crm#frag",
        note=f"token was {TOKEN}",
        nested={"deep": [f"x{SECRET}y", {"k": SECRET}]},
    )
    log.error(f"event text with {SECRET}")
    text = out.getvalue()
    assert SECRET not in text
    assert TOKEN not in text
    assert "abcdef" not in text
    first = json.loads(lines(out)[0])
    assert first["url"] == "https://hooks.example.com/z?key=***&source=***#frag"
    assert first["nested"] == {"deep": ["x***y", {"k": "***"}]}


def test_exceptions_and_stdlib_lines_are_redacted_too(out: io.StringIO) -> None:
    logs.configure("json", "info", out, journal=False)
    try:
        raise RuntimeError(f"boom with {SECRET}")
    except RuntimeError:
        logs.get_logger().exception("engine.failed")
    logging.getLogger("httpx").warning("HTTP Request: POST https://x/oauth?refresh_token=%s", SECRET)
    text = out.getvalue()
    assert SECRET not in text
    assert "boom with ***" in text
    assert json.loads(lines(out)[-1])["logger"] == "httpx"


def test_uncaught_exceptions_go_through_redaction(out: io.StringIO) -> None:
    logs.configure("json", "info", out, journal=False)
    try:
        raise ValueError(SECRET)
    except ValueError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)

    def crash() -> None:
        raise KeyError(TOKEN)

    thread = threading.Thread(target=crash, name="worker")
    thread.start()
    thread.join()
    events = [json.loads(line) for line in lines(out)]
    assert [e["event"] for e in events] == ["process.crashed", "thread.crashed"]
    assert events[1]["thread"] == "worker"
    assert SECRET not in out.getvalue()
    assert TOKEN not in out.getvalue()


def test_short_secrets_are_masked_as_whole_tokens_only(out: io.StringIO) -> None:
    """Zoho may echo a 3-character channel token back; a secret ``1`` must not turn every digit
    of every line into asterisks."""
    logs.REDACTOR.add(["crm", "1", "a.b"])
    logs.configure("json", "info", out, journal=False)
    logs.get_logger().info(
        "x",
        path="/crm/v8/actions/watch",
        count=1,
        text="1 crm crmx x1 10 2026-01-05T09:01:11Z",
        echo="{'token': 'crm', 'value': \"a.b\"} a.bc",
        value="1",
    )
    doc = json.loads(lines(out)[0])
    assert doc["path"] == "/***/v8/actions/watch"
    assert doc["count"] == 1
    assert doc["text"] == "*** *** crmx x1 10 2026-01-05T09:01:11Z"
    assert doc["echo"] == "{'token': '***', 'value': \"***\"} a.bc"
    assert doc["value"] == "***"


def test_many_secrets_and_prefixes_of_each_other() -> None:
    redactor = logs.Redactor()
    tokens = [f"tok{i:05d}-verification" for i in range(10_000)]
    redactor.add(tokens)
    assert redactor.redact_text(f"a {tokens[7]} b {tokens[9999]}x") == "a *** b ***x"
    chain = ["p" * n for n in range(6, 1200)]  # nested too deep for a trie: a flat alternation
    redactor.add(chain)
    assert redactor.redact_text("[" + "p" * 1199 + "]") == "[***]"


def test_redactor_matches_the_longest_secret_first() -> None:
    redactor = logs.Redactor()
    redactor.add(["abcdef", "abcdefghij"])
    assert redactor.redact_text("xx abcdefghij yy abcdefzz") == "xx *** yy ***zz"


def test_access_tokens_are_masked_without_recompiling_and_two_per_account_are_kept() -> None:
    """Thousands of accounts refresh every hour: their tokens go in a set looked up per run of
    token characters, not in the compiled pattern, and only an account's last two are kept."""
    redactor = logs.Redactor()
    redactor.add(["configured-secret"])
    first = f"1000.{'a' * 32}.{'b' * 32}"
    second, third = first.replace("a", "c"), first.replace("a", "d")
    redactor.add_rotating("main", first)
    redactor.add_rotating("other", second)
    line = f"Zoho-oauthtoken {first}, other {second}, configured-secret"
    assert redactor.redact_text(line) == "Zoho-oauthtoken ***, other ***, ***"
    pattern = redactor._compiled()
    redactor.add_rotating("main", second)
    redactor.add_rotating("main", third)
    assert redactor._compiled() is pattern  # no recompilation for a new token
    assert redactor.redact_text(third) == "***"
    assert redactor.redact_text(second) == "***"
    assert redactor.redact_text(first) == first  # expired: the third token ago
    redactor.add_rotating("main", first.replace("a", "e"))
    assert redactor.redact_text(second) == "***"  # "main" let it go, "other" still holds it
    assert redactor.redact_text(third) == "***"
