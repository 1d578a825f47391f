"""watchkeeper.config: the state file -> validated desired state, every problem at once, no leak."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from watchkeeper.config import (
    ACCOUNT_KEYS,
    CHANNEL_KEYS,
    DAEMON_KEYS,
    ConfigError,
    ConfigIssue,
    format_duration,
    load,
    parse_duration,
)
from watchkeeper.policy import Policy
from watchkeeper.secrets import url_secrets
from watchkeeper.store.target import PostgresTarget

EXAMPLE = Path(__file__).resolve().parent.parent / "state" / "channels.toml"

MARK = "S3CRET"
"""Every secret value in these tests contains it, so one check covers them all."""

ENV = {
    "CID": "1000.client-id",
    "CSECRET": f"{MARK}-client-secret",
    "RTOKEN": f"{MARK}-refresh-token",
    "ATOKEN": f"{MARK}-access-token",
    "HOOK": f"{MARK}-hook-token",
    "LONGHOOK": f"{MARK}-" + "x" * 54,
    "BADURL": f"http://hooks.example.com/zoho?key={MARK}-query",
    "EMPTY": "",
}

EXAMPLE_ENV = {
    "ZOHO_CLIENT_ID": "1000.main-client",
    "ZOHO_CLIENT_SECRET": f"{MARK}-main-secret",
    "ZOHO_REFRESH_TOKEN": f"{MARK}-main-refresh",
    "ZOHO_HOOK_TOKEN": f"{MARK}-main-hook",
    "ZOHO_SUPPORT_HOOK_URL": f"https://hooks.example.com/support?key={MARK}-support-key",
    "BIGIN_CLIENT_ID": "1000.bigin-client",
    "BIGIN_CLIENT_SECRET": f"{MARK}-bigin-secret",
    "BIGIN_REFRESH_TOKEN": f"{MARK}-bigin-refresh",
    "BIGIN_HOOK_TOKEN": f"{MARK}-bigin-hook",
}

CID = "1000000068001"


def account(name: str = "main", /, **keys: str | None) -> str:
    """An [accounts.NAME] block: valid by default; a key set to None is left out."""
    values: dict[str, str | None] = {
        "product": '"crm"',
        "api_version": '"v8"',
        "client_id": '"env:CID"',
        "client_secret": '"env:CSECRET"',
        "refresh_token": '"env:RTOKEN"',
        **keys,
    }
    lines = [f"{key} = {value}" for key, value in values.items() if value is not None]
    return "\n".join([f"\n[accounts.{name}]", *lines, ""])


def channel(**keys: str | None) -> str:
    """A [[channels]] block: valid by default; a key set to None is left out."""
    values: dict[str, str | None] = {
        "channel_id": f'"{CID}"',
        "events": '["Deals.all"]',
        "notify_url": f'"https://hooks.example.com/zoho?key={MARK}-query"',
        "token": '"env:HOOK"',
        **keys,
    }
    lines = [f"{key} = {value}" for key, value in values.items() if value is not None]
    return "\n".join(["\n[[channels]]", *lines, ""])


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "channels.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(path, environ=ENV if environ is None else environ)
    return info.value


def assert_no_secret(err: ConfigError) -> None:
    assert MARK not in str(err) + repr(err.issues)


# -- the example ----------------------------------------------------------------------------------


def test_the_example_loads_with_its_variables_set() -> None:
    state = load(EXAMPLE, environ=EXAMPLE_ENV)

    assert set(state.accounts) == {"main", "bigin"}
    main, bigin = state.accounts["main"], state.accounts["bigin"]
    assert (main.product, main.api_version, main.endpoint.api_domain) == (
        "crm",
        "v8",
        "https://www.zohoapis.eu",
    )
    assert main.endpoint.accounts_url == "https://accounts.zoho.eu"
    assert main.client_secret == EXAMPLE_ENV["ZOHO_CLIENT_SECRET"]
    assert (bigin.product, bigin.api_version, bigin.endpoint.watch_path) == (
        "bigin",
        "v2",
        "/bigin/v2/actions/watch",
    )
    assert state.database == EXAMPLE.parent / "watchkeeper.db"

    sales, support, pipelines = state.channels
    assert (sales.account, sales.channel_id, sales.name) == ("main", "1000000068001", "sales-sync")
    assert sales.events == {
        ("Contacts", "create"),
        ("Deals", "create"),
        ("Deals", "edit"),
        ("Deals", "delete"),
    }
    assert sales.ttl == timedelta(days=6)
    assert sales.token == EXAMPLE_ENV["ZOHO_HOOK_TOKEN"]
    assert (sales.notify_on_related_action, sales.return_affected_field_values) == (False, True)
    assert (sales.backfill, support.backfill, pipelines.backfill) == (True, False, False)
    condition = json.loads(sales.notification_condition or "null")
    assert condition[0]["module"]["api_name"] == "Deals"
    assert [g["field"]["api_name"] for g in condition[0]["field_selection"]["group"]] == [
        "Stage",
        "Amount",
    ]
    assert support.channel_id == "1000000068002"  # written as a TOML integer
    assert support.notify_url == EXAMPLE_ENV["ZOHO_SUPPORT_HOOK_URL"]
    assert support.ttl == timedelta(days=6, hours=23, minutes=55)  # the default on CRM v4+
    assert (support.token, support.notification_condition) == (None, None)
    assert (pipelines.account, pipelines.ttl) == ("bigin", timedelta(hours=23))


def test_the_example_names_every_unset_reference_and_no_value() -> None:
    err = load_error(EXAMPLE, environ={})
    assert sorted(str(issue) for issue in err.issues) == sorted(
        f"{EXAMPLE}: {path}: env:{var} is not set"
        for path, var in [
            ("accounts.main.client_id", "ZOHO_CLIENT_ID"),
            ("accounts.main.client_secret", "ZOHO_CLIENT_SECRET"),
            ("accounts.main.refresh_token", "ZOHO_REFRESH_TOKEN"),
            ("accounts.bigin.client_id", "BIGIN_CLIENT_ID"),
            ("accounts.bigin.client_secret", "BIGIN_CLIENT_SECRET"),
            ("accounts.bigin.refresh_token", "BIGIN_REFRESH_TOKEN"),
            ("channels[0].token (channel 1000000068001)", "ZOHO_HOOK_TOKEN"),
            ("channels[1].notify_url (channel 1000000068002)", "ZOHO_SUPPORT_HOOK_URL"),
            ("channels[2].token (channel 2000000000001)", "BIGIN_HOOK_TOKEN"),
        ]
    )


@pytest.mark.parametrize("key", DAEMON_KEYS + ACCOUNT_KEYS + CHANNEL_KEYS)
def test_the_example_documents_every_key(key: str) -> None:
    """Each key is used, or shown commented out where it would conflict (access_token, api_domain)."""
    text = EXAMPLE.read_text(encoding="utf-8")
    assert re.search(rf"^(#\s*)?{key}\s*=|^\[\[channels\.{key}\]\]", text, re.MULTILINE)


# -- one validation error each --------------------------------------------------------------------

TWO_ACCOUNTS = account() + account("bigin", product='"bigin"', api_version='"v2"')
BIGIN_V1 = {"product": '"bigin"', "api_version": '"v1"'}
HTTP_URL = f'"http://hooks.example.com/z?key={MARK}-q"'

DAEMON_ERRORS = [
    # (id, [daemon] line, key, part of the message): path daemon.KEY
    ("unknown-key", 'retry_mx = "1m"', "retry_mx", "did you mean 'retry_max'"),
    ("duration", 'reconcile_every = "30 min"', "reconcile_every", "like 90s, 15m, 23h, 1d or 1h30m"),
    ("duration-type", "retry_max = 900", "retry_max", "not an integer"),
    ("duration-zero", 'retry_initial = "0s"', "retry_initial", "longer than 0s"),
    ("window-order", "renew_window = [0.7, 0.6]", "renew_window", "0 < a <= b < 1"),
    ("window-zero", "renew_window = [0, 0.5]", "renew_window", "0 < a <= b < 1"),
    ("window-one", "renew_window = [0.5, 1.0]", "renew_window", "0 < a <= b < 1"),
    ("window-length", "renew_window = [0.5]", "renew_window", "two fractions"),
    ("window-type", 'renew_window = ["a", 1]', "renew_window", "must be a number"),
    ("retry-order", 'retry_initial = "20m"', "retry_initial", "longer than retry_max 15m"),
    ("delete-fraction", "max_delete_fraction = 1.5", "max_delete_fraction", "between 0 and 1"),
    ("delete-type", "max_delete_fraction = true", "max_delete_fraction", "must be a number"),
    ("allow-empty", 'allow_empty = "yes"', "allow_empty", "true or false"),
    ("database-type", "database = 1", "database", "non-empty string"),
    ("concurrency-zero", "concurrency = 0", "concurrency", "between 1 and 64"),
    ("concurrency-huge", "concurrency = 100000", "concurrency", "between 1 and 64"),
    ("concurrency-type", "concurrency = 2.5", "concurrency", "whole number"),
    ("concurrency-bool", "concurrency = true", "concurrency", "whole number"),
]

Overrides = dict[str, str | None]

ACCOUNT_ERRORS: list[tuple[str, Overrides, str, str]] = [
    # (id, [accounts.main] keys over a valid CRM v8 account, key, part of the message)
    ("unknown-key", {"client_secrt": f'"{MARK}"'}, "client_secrt", "did you mean 'client_secret'"),
    ("product-missing", {"product": None}, "product", "is required"),
    ("product-unknown", {"product": '"crmm"'}, "product", "did you mean 'crm'"),
    ("version-missing", {"api_version": None}, "api_version", "is required"),
    ("version-product", {**BIGIN_V1, "api_version": '"v3"'}, "api_version", "(one of: v1, v2)"),
    ("region", {"region": '"us"'}, "region", "one of: com, eu, in"),
    ("api-domain-http", {"api_domain": '"http://zohoapis.com"'}, "api_domain", "https"),
    ("accounts-url", {"accounts_url": '"ftp://zoho.com"'}, "accounts_url", "not an http(s) URL"),
    ("some-credentials", {"refresh_token": None}, "refresh_token", "is required with client_id"),
    ("access-and-refresh", {"access_token": '"env:ATOKEN"'}, "access_token", "cannot be combined"),
    ("secret-type", {"client_secret": "[1, 2]"}, "client_secret", "not an array"),
    ("secret-empty", {"refresh_token": '""'}, "refresh_token", "not empty"),
    ("env-empty", {"client_secret": '"env:EMPTY"'}, "client_secret", "env:EMPTY is empty"),
    ("ref-no-name", {"client_secret": '"env:"'}, "client_secret", "env: names nothing"),
    (
        "credential-no-dir",
        {"client_secret": '"credential:z"'},
        "client_secret",
        "$CREDENTIALS_DIRECTORY",
    ),
    ("reconcile-format", {"reconcile_every": '"20 h"'}, "reconcile_every", "like 90s, 15m, 23h"),
    ("reconcile-zero", {"reconcile_every": '"0s"'}, "reconcile_every", "longer than 0s"),
    ("reconcile-type", {"reconcile_every": "72000"}, "reconcile_every", "not an integer"),
    ("reconcile-typo", {"reconcile_evry": '"20h"'}, "reconcile_evry", "'reconcile_every'"),
]

CHANNEL_ERRORS: list[tuple[str, Overrides, str, str]] = [
    # (id, [[channels]] keys over a valid channel of a CRM v8 account, key, part of the message)
    ("unknown-key", {"tokn": '"x"'}, "tokn", "did you mean 'token'"),
    ("events-missing", {"events": None}, "events", "is required"),
    ("events-empty", {"events": "[]"}, "events", "must be a non-empty array"),
    ("events-type", {"events": '"Deals.all"'}, "events", "must be a non-empty array"),
    ("event-op", {"events": '["Deals.all", "Deals.al"]'}, "events[1]", "create, edit, delete, all"),
    ("event-shape", {"events": '["Leads.edit", "Deals"]'}, "events[1]", "is not Module.op"),
    ("event-type", {"events": '["Deals.all", 7]'}, "events[1]", "not an integer"),
    ("url-missing", {"notify_url": None}, "notify_url", "is required"),
    ("url-http", {"notify_url": HTTP_URL}, "notify_url", "plain http only for loopback"),
    ("url-scheme", {"notify_url": f'"ftp://h.example.com/?k={MARK}"'}, "notify_url", "an https URL"),
    ("url-no-host", {"notify_url": f'"https:///z?key={MARK}"'}, "notify_url", "with a host"),
    ("url-space", {"notify_url": f'"https://h.example.com/?k={MARK} q"'}, "notify_url", "spaces"),
    ("url-ipv6", {"notify_url": f'"https://[::1/?k={MARK}"'}, "notify_url", "is not a URL"),
    ("url-from-env", {"notify_url": '"env:BADURL"'}, "notify_url", "plain http only for loopback"),
    ("token-long", {"token": '"env:LONGHOOK"'}, "token", "61 characters long once resolved"),
    ("token-long-literal", {"token": f'"{MARK}{"y" * 45}"'}, "token", "Zoho accepts at most 50"),
    ("token-unset", {"token": '"env:ZOHO_HOOK_TOKEN"'}, "token", "env:ZOHO_HOOK_TOKEN is not set"),
    ("token-file-missing", {"token": '"file:secrets/hook"'}, "token", "file:secrets/hook: cannot read"),
    ("ttl-short", {"ttl": '"9s"'}, "ttl", "crm v8 allows 10s to 6d23h55m"),
    ("ttl-long", {"ttl": '"7d"'}, "ttl", "crm v8 allows 10s to 6d23h55m"),
    ("ttl-format", {"ttl": '"1 day"'}, "ttl", "is not a duration"),
    ("related-type", {"notify_on_related_action": '"no"'}, "notify_on_related_action", "true or false"),
    ("backfill-type", {"backfill": '"yes"'}, "backfill", "true or false"),
    ("reconcile-per-account", {"reconcile_every": '"4h"'}, "reconcile_every", "unknown key"),
    ("affected-type", {"return_affected_field_values": "1"}, "return_affected_field_values", "true or"),
    ("condition-shape", {"notification_condition": '"Stage"'}, "notification_condition", "of tables"),
    (
        "condition-date",
        {"notification_condition": "[{at = 2024-01-01}]"},
        "notification_condition",
        "only",
    ),
    ("name-type", {"name": "0"}, "name", "not an integer"),
    ("id-letters", {"channel_id": '"12a"'}, "channel_id", "fit a signed 64-bit integer"),
    ("id-too-big", {"channel_id": str(2**63)}, "channel_id", "fit a signed 64-bit integer"),
    ("id-negative", {"channel_id": "-5"}, "channel_id", "fit a signed 64-bit integer"),
    ("id-type", {"channel_id": "true"}, "channel_id", "not a boolean"),
    ("id-missing", {"channel_id": None}, "channel_id", "is required"),
]

OTHER_ERRORS = [
    # (id, file text, issue path, channel id, part of the message)
    ("top-unknown-key", "[deamon]\n" + account(), "deamon", None, "did you mean 'daemon'"),
    ("daemon-type", 'daemon = "x"\n' + account(), "daemon", None, "must be a table"),
    ("no-accounts", channel(), "accounts", None, "at least one [accounts.NAME]"),
    ("account-type", "accounts.main = 1\n", "accounts.main", None, "must be a table"),
    (
        "no-credentials",
        account(client_id=None, client_secret=None, refresh_token=None),
        "accounts.main",
        None,
        "or access_token",
    ),
    ("channels-type", account() + '[channels]\nchannel_id = "1"\n', "channels", None, "array of tables"),
    ("channel-type", "channels = [1]\n" + account(), "channels[0]", None, "must be a table"),
    ("account-required", TWO_ACCOUNTS + channel(), "channels[0].account", CID, "one of: main, bigin"),
    (
        "account-unknown",
        TWO_ACCOUNTS + channel(account='"mian"'),
        "channels[0].account",
        CID,
        "mean 'main'",
    ),
    (
        "duplicate-id",
        account() + channel() + channel(),
        "channels[1].channel_id",
        CID,
        "channels[0] has it too",
    ),
    (
        "duplicate-int-id",
        account() + channel() + channel(channel_id=CID),
        "channels[1].channel_id",
        CID,
        "'main'",
    ),
    (
        "ttl-v2.1",
        account(api_version='"v2.1"') + channel(ttl='"1d"'),
        "channels[0].ttl",
        CID,
        "10s to 23h55m",
    ),
    (
        "ttl-bigin",
        account(**BIGIN_V1) + channel(ttl='"23h56m"'),
        "channels[0].ttl",
        CID,
        "bigin v1 allows",
    ),
    (
        "ttl-bad-account",
        account(region='"us"') + channel(ttl='"7d"'),
        "channels[0].ttl",
        CID,
        "6d23h55m",
    ),
    ("ttl-no-account", TWO_ACCOUNTS + channel(ttl='"5s"'), "channels[0].ttl", CID, "at least 10s"),
    (
        "condition-v5",
        account(api_version='"v5"') + channel(notification_condition="[{}]"),
        "channels[0].notification_condition",
        CID,
        "CRM v6 or later, not crm v5",
    ),
    (
        "condition-bigin",
        account(**BIGIN_V1) + channel(notification_condition="[{}]"),
        "channels[0].notification_condition",
        CID,
        "not bigin v1",
    ),
]

ERRORS = [
    *(
        (f"daemon-{id_}", f"[daemon]\n{line}\n" + account(), f"daemon.{key}", None, part)
        for id_, line, key, part in DAEMON_ERRORS
    ),
    *(
        (f"account-{id_}", account(**keys), f"accounts.main.{key}", None, part)
        for id_, keys, key, part in ACCOUNT_ERRORS
    ),
    *(
        (
            f"channel-{id_}",
            account() + channel(**keys),
            f"channels[0].{key}",
            None if key == "channel_id" else CID,
            part,
        )
        for id_, keys, key, part in CHANNEL_ERRORS
    ),
    *OTHER_ERRORS,
]


@pytest.mark.parametrize(
    ("text", "path", "channel_id", "fragment"),
    [case[1:] for case in ERRORS],
    ids=[case[0] for case in ERRORS],
)
def test_each_error_names_its_path_channel_and_what_is_valid(
    tmp_path: Path, text: str, path: str, channel_id: str | None, fragment: str
) -> None:
    err = load_error(write(tmp_path, text))

    matching = [issue for issue in err.issues if issue.path == path]
    assert matching, f"no issue at {path}: {err}"
    issue = next((i for i in matching if fragment in i.message), matching[0])
    assert fragment in issue.message
    assert issue.channel_id == channel_id
    where = f"{path} (channel {channel_id})" if channel_id else path
    assert f"{tmp_path / 'channels.toml'}: {where}: {issue.message}" in str(err).splitlines()
    assert_no_secret(err)


def test_an_issue_reads_file_path_channel_message() -> None:
    issue = ConfigIssue(
        "channels[2].events[1]", "event 'Deals.al' is not Module.op", CID, file="channels.toml"
    )
    assert (
        str(issue)
        == f"channels.toml: channels[2].events[1] (channel {CID}): event 'Deals.al' is not Module.op"
    )
    assert str(ConfigIssue("", "TOML syntax error: Invalid value", line=3, column=9, file="x.toml")) == (
        "x.toml:3:9: TOML syntax error: Invalid value"
    )


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        (account() + channel(token=f'"{MARK}-unterminated'), 13, 29),
        ("[daemon]\nallow_empty = tru\n", 2, 15),
        ("[accounts.main]\nproduct = [\n", 3, 1),  # "end of document": no position from tomllib
    ],
    ids=["unterminated-secret", "bad-value", "end-of-document"],
)
def test_a_syntax_error_gives_line_and_column_and_no_secret(
    tmp_path: Path, text: str, line: int, column: int
) -> None:
    err = load_error(write(tmp_path, text))

    (issue,) = err.issues
    assert (issue.line, issue.column) == (line, column)
    assert str(err).startswith(f"{tmp_path / 'channels.toml'}:{line}:{column}: TOML syntax error: ")
    assert "(at " not in issue.message
    assert_no_secret(err)


@pytest.mark.parametrize("value", ["987654321", "true", "2024-01-01"])
def test_a_secret_of_the_wrong_type_is_not_echoed(tmp_path: Path, value: str) -> None:
    err = load_error(write(tmp_path, account(client_secret=value)))
    (issue,) = err.issues
    assert issue.path == "accounts.main.client_secret"
    assert issue.message.startswith("must be a non-empty string, not ")
    assert value not in str(err)


def test_the_unreadable_and_the_undecodable_file(tmp_path: Path) -> None:
    missing = load_error(tmp_path / "nope.toml")
    assert (
        str(missing)
        == f"{tmp_path / 'nope.toml'}: cannot read the state file (No such file or directory)"
    )
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[daemon]\ndatabase = "caf\xe9.db"\n')
    assert str(load_error(path)) == f"{path}:2:16: not UTF-8 text"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        '[daemon]\nreconcile_every = "soon"\n'
        + account(region='"mars"')
        + channel(events='["Deals.al"]', ttl='"8d"')
        + channel(channel_id='"1000000068002"', token='"env:NOPE"', notify_url='"http://example.com/"')
    )
    err = load_error(write(tmp_path, text))

    assert [(issue.path, issue.channel_id) for issue in err.issues] == [
        ("daemon.reconcile_every", None),
        ("accounts.main.region", None),
        ("channels[0].events[0]", CID),
        ("channels[0].ttl", CID),
        ("channels[1].notify_url", "1000000068002"),
        ("channels[1].token", "1000000068002"),
    ]
    assert len(str(err).splitlines()) == 6
    assert_no_secret(err)


# -- what is accepted -----------------------------------------------------------------------------


def test_channel_defaults_and_normalisation(tmp_path: Path) -> None:
    text = (
        account()
        + channel(channel_id="7", token=None)
        + channel(channel_id='"007"', events='["Deals.edit"]')
    )
    with pytest.raises(ConfigError, match=r"channels\[1\]\.channel_id \(channel 7\): duplicate"):
        load(write(tmp_path, text), environ=ENV)

    state = load(write(tmp_path, account() + channel(channel_id='"0042"', token=None)), environ=ENV)
    (spec,) = state.channels
    assert (spec.account, spec.channel_id, spec.token, spec.name) == ("main", "42", None, None)
    assert spec.ttl == timedelta(days=6, hours=23, minutes=55)
    assert (spec.notify_on_related_action, spec.return_affected_field_values) == (False, False)
    assert spec.backfill is False
    assert spec.notification_condition is None
    assert state.policy == Policy()


def test_the_same_channel_id_in_two_accounts_is_fine(tmp_path: Path) -> None:
    text = TWO_ACCOUNTS + channel(account='"main"') + channel(account='"bigin"', ttl='"23h55m"')
    state = load(write(tmp_path, text), environ=ENV)
    assert [(c.account, c.channel_id, c.ttl) for c in state.channels] == [
        ("main", CID, timedelta(days=6, hours=23, minutes=55)),
        ("bigin", CID, timedelta(hours=23, minutes=55)),
    ]


@pytest.mark.parametrize(
    ("version", "ttl", "expected"),
    [
        ("v8", "10s", timedelta(seconds=10)),
        ("v8", "6d23h55m", timedelta(days=6, hours=23, minutes=55)),
        ("v4", "1h30m", timedelta(hours=1, minutes=30)),
        ("v3", "23h55m", timedelta(hours=23, minutes=55)),
    ],
)
def test_ttl_bounds_are_inclusive(tmp_path: Path, version: str, ttl: str, expected: timedelta) -> None:
    state = load(
        write(tmp_path, account(api_version=f'"{version}"') + channel(ttl=f'"{ttl}"')), environ=ENV
    )
    assert state.channels[0].ttl == expected


def test_daemon_section_fills_the_policy(tmp_path: Path) -> None:
    daemon = (
        '[daemon]\nreconcile_every = "10m"\nrenew_window = [0.5, 0.5]\nretry_initial = "15m"\n'
        'retry_max = "15m"\nmax_delete_fraction = 1\nallow_empty = true\n'
    )
    policy = load(write(tmp_path, daemon + account()), environ=ENV).policy
    assert (policy.reconcile_every, policy.renew_window) == (timedelta(minutes=10), (0.5, 0.5))
    assert (policy.retry_initial, policy.retry_max) == (timedelta(minutes=15), timedelta(minutes=15))
    assert (policy.max_delete_fraction, policy.allow_empty) == (1.0, True)


@pytest.mark.parametrize(
    ("daemon", "own", "expected"),
    [
        pytest.param("", None, timedelta(minutes=30), id="neither-the-default"),
        pytest.param('reconcile_every = "10m"', None, timedelta(minutes=10), id="daemons"),
        pytest.param("", '"20h"', timedelta(hours=20), id="own"),
        pytest.param('reconcile_every = "10m"', '"4h"', timedelta(hours=4), id="own-over-daemons"),
        pytest.param("", '"1d12h"', timedelta(hours=36), id="own-longer-than-a-day"),
        pytest.param("", '"90s"', timedelta(seconds=90), id="own-shorter"),
    ],
)
def test_an_accounts_own_reconcile_every_overrides_the_daemons(
    tmp_path: Path, daemon: str, own: str | None, expected: timedelta
) -> None:
    text = f"[daemon]\n{daemon}\n" + account(reconcile_every=own) + account("other")
    state = load(write(tmp_path, text), environ=ENV)
    assert state.accounts["main"].reconcile_every == (None if own is None else expected)
    assert state.reconcile_every("main") == expected
    assert state.reconcile_every("other") == state.policy.reconcile_every  # the key is per account


def test_concurrency_defaults_to_eight(tmp_path: Path) -> None:
    assert load(write(tmp_path, account()), environ=ENV).concurrency == 8
    state = load(write(tmp_path, "[daemon]\nconcurrency = 3\n" + account()), environ=ENV)
    assert state.concurrency == 3


def test_loopback_http_and_explicit_hosts_are_accepted(tmp_path: Path) -> None:
    urls = ["http://127.0.0.1:9000/hook", "http://localhost/hook", "http://[::1]:9/h"]
    text = account(api_domain='"http://127.0.0.1:8080/"', accounts_url='"http://localhost:8080"')
    text += "".join(channel(channel_id=str(n), notify_url=f'"{url}"') for n, url in enumerate(urls))
    state = load(write(tmp_path, text), environ=ENV)
    endpoint = state.accounts["main"].endpoint
    assert (endpoint.api_domain, endpoint.accounts_url) == (
        "http://127.0.0.1:8080",
        "http://localhost:8080",
    )
    assert [c.notify_url for c in state.channels] == urls


def test_access_token_alone_and_a_single_account_need_no_account_key(tmp_path: Path) -> None:
    text = (
        account(client_id=None, client_secret=None, refresh_token=None, access_token='"env:ATOKEN"')
        + channel()
    )
    state = load(write(tmp_path, text), environ=ENV)
    acc = state.accounts["main"]
    assert (acc.access_token, acc.client_id, acc.refresh_token) == (ENV["ATOKEN"], None, None)
    assert state.channels[0].account == "main"


def test_notification_condition_on_crm_v6_is_canonical_json(tmp_path: Path) -> None:
    condition = '[{type = "field_selection", module = {id = "1", api_name = "Deals"}}]'
    state = load(
        write(tmp_path, account(api_version='"v6"') + channel(notification_condition=condition)),
        environ=ENV,
    )
    assert state.channels[0].notification_condition == (
        '[{"module":{"api_name":"Deals","id":"1"},"type":"field_selection"}]'
    )


def test_without_environ_the_process_environment_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    state = load(write(tmp_path, account() + channel()))
    assert state.channels[0].token == ENV["HOOK"]


def test_channels_with_equal_values_share_one_object(tmp_path: Path) -> None:
    """A fleet of channels naming the same events, URL, token and ttl holds each once in memory."""
    text = account() + "".join(
        channel(channel_id=f'"{100 + i}"', events=events, ttl='"1d"')
        for i, events in enumerate(['["Deals.all", "Contacts.edit"]', '["Contacts.edit", "Deals.all"]'])
    )
    first, second = load(write(tmp_path, text), environ=ENV).channels
    assert first.events is second.events
    assert first.notify_url is second.notify_url
    assert first.token is second.token
    assert first.ttl is second.ttl


# -- durations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("23h", timedelta(hours=23)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("6d23h55m", timedelta(days=6, hours=23, minutes=55)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("0s", timedelta(0)),
        ("007m", timedelta(minutes=7)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "5", "1.5h", "1h 30m", " 1h", "30m1h", "1h1h", "h", "1w", "-5m", "1H", "١٢m", "999999999999d"],
)
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(days=6, hours=23, minutes=55), "6d23h55m"),
        (timedelta(seconds=3661), "1h1m1s"),
    ],
)
def test_format_duration_inverts_parse(delta: timedelta, text: str) -> None:
    assert format_duration(delta) == text
    assert parse_duration(text) == delta


# -- paths and references -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("database", "state_directory", "expected"),
    [
        (None, None, "{folder}/watchkeeper.db"),
        (None, "/var/lib/watchkeeper", "/var/lib/watchkeeper/watchkeeper.db"),
        ('"data/wk.db"', None, "{folder}/data/wk.db"),
        ('"data/wk.db"', "/var/lib/watchkeeper", "/var/lib/watchkeeper/data/wk.db"),
        ('"/srv/wk.db"', "/var/lib/watchkeeper", "/srv/wk.db"),
        (None, "/var/lib/a:/var/lib/b", "/var/lib/a/watchkeeper.db"),
    ],
)
def test_database_path(
    tmp_path: Path, database: str | None, state_directory: str | None, expected: str
) -> None:
    daemon = f"[daemon]\ndatabase = {database}\n" if database else ""
    environ = {**ENV, "STATE_DIRECTORY": state_directory} if state_directory else ENV
    state = load(write(tmp_path, daemon + account()), environ=environ)
    assert state.database == Path(expected.format(folder=tmp_path))
    assert state.path == tmp_path / "channels.toml"


DB_PASSWORD = "db-pass-4f81c0a2"


def test_a_postgresql_url_from_a_secret_reference_is_a_target_whose_password_is_a_secret(
    tmp_path: Path,
) -> None:
    daemon = '[daemon]\ndatabase = "env:WK_DB"\ninstance = "host-a"\nlease = "30s"\n'
    url = f"postgresql://wk:{DB_PASSWORD}@db.example.com:6432/watchkeeper"
    state = load(write(tmp_path, daemon + account()), environ={**ENV, "WK_DB": url})
    assert isinstance(state.database, PostgresTarget)
    assert (state.database.host, state.database.port, state.database.dbname) == (
        "db.example.com", 6432, "watchkeeper",
    )  # fmt: skip
    assert str(state.database) == "postgresql://wk@db.example.com:6432/watchkeeper"
    assert DB_PASSWORD in state.secrets()
    assert DB_PASSWORD not in repr(state)
    assert (state.instance, state.lease) == ("host-a", timedelta(seconds=30))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (f'"postgresql://wk:{DB_PASSWORD}@:5432/db"', "needs a host"),
        (f'"postgresql://wk:{DB_PASSWORD}@db.example.com:5432/"', "needs one database name"),
        (f'"postgresql://wk:{DB_PASSWORD}@db.example.com:99999/db"', "not a valid postgresql:// URL"),
    ],
)
def test_a_bad_postgresql_url_is_named_without_its_password(
    tmp_path: Path, value: str, message: str
) -> None:
    err = str(load_error(write(tmp_path, f"[daemon]\ndatabase = {value}\n" + account())))
    assert "daemon.database" in err
    assert message in err
    assert DB_PASSWORD not in err


@pytest.mark.parametrize(("value", "message"), [('"2s"', "at least 3s"), ('""', "non-empty")])
def test_lease_and_instance_are_checked(tmp_path: Path, value: str, message: str) -> None:
    key = "lease" if "s" in value else "instance"
    err = str(load_error(write(tmp_path, f"[daemon]\n{key} = {value}\n" + account())))
    assert f"daemon.{key}" in err
    assert message in err


def test_credential_reads_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "zoho-client-secret").write_text(f"{MARK}-from-credential\n")
    path = write(tmp_path, account(client_secret='"credential:zoho-client-secret"'))

    state = load(path, environ={**ENV, "CREDENTIALS_DIRECTORY": str(creds)})
    assert state.accounts["main"].client_secret == f"{MARK}-from-credential"

    err = load_error(
        write(tmp_path, account(client_secret='"credential:other"')),
        {**ENV, "CREDENTIALS_DIRECTORY": str(creds)},
    )
    assert str(err) == (
        f"{path}: accounts.main.client_secret: credential:other: cannot read {creds / 'other'} "
        "(No such file or directory)"
    )
    err = load_error(
        write(tmp_path, account(client_secret='"credential:../zoho-client-secret"')),
        {**ENV, "CREDENTIALS_DIRECTORY": str(creds)},
    )
    assert "without '/'" in str(err)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"tok\n", "tok"),
        (b"tok", "tok"),
        (b"tok\r\n", "tok"),
        (b"tok\n\n", "tok\n"),  # only one newline is dropped
    ],
)
def test_file_reference_is_relative_to_the_state_file(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "hook").write_bytes(content)
    state = load(write(tmp_path, account() + channel(token='"file:secrets/hook"')), environ=ENV)
    assert state.channels[0].token == expected


def test_an_empty_or_undecodable_secret_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"\n")
    (tmp_path / "binary").write_bytes(b"\xff" + MARK.encode())
    text = account(client_secret='"file:empty"', refresh_token='"file:binary"')
    err = load_error(write(tmp_path, text))
    assert [issue.message for issue in err.issues] == [
        "file:empty is empty",
        f"file:binary: {tmp_path / 'binary'} is not UTF-8 text",
    ]
    assert_no_secret(err)


# -- secrets --------------------------------------------------------------------------------------


def test_secrets_holds_every_secret_value_and_nothing_else(tmp_path: Path) -> None:
    text = (
        account()
        + account(
            "bigin",
            product='"bigin"',
            api_version='"v2"',
            client_id=None,
            client_secret=None,
            refresh_token=None,
            access_token='"env:ATOKEN"',
        )
        + channel(
            account='"main"',
            notify_url=f'"https://user:pw-{MARK}@h.example.com/z?a={MARK}-1&b=x%2F{MARK}&flag{MARK}"',
        )
        + channel(account='"bigin"', token=None, notify_url='"https://u:pw@h.example.com/p?v=1"')
    )
    state = load(write(tmp_path, text), environ=ENV)
    assert state.secrets() == {
        ENV["CSECRET"],
        ENV["RTOKEN"],
        ENV["ATOKEN"],
        ENV["HOOK"],
        f"pw-{MARK}",
        f"{MARK}-1",
        f"x%2F{MARK}",
        f"x/{MARK}",
        f"flag{MARK}",
        "pw",  # a password, however short; the short query value "1" is left to the URL rule
    }


def test_the_example_secrets_include_query_values_and_tokens() -> None:
    state = load(EXAMPLE, environ=EXAMPLE_ENV)
    secrets = state.secrets()
    assert f"{MARK}-support-key" in secrets
    # ?source=zcrm: a short query value is masked inside URLs only (see DesiredState.secrets)
    assert "zcrm" not in secrets
    expected = {v for k, v in EXAMPLE_ENV.items() if "CLIENT_ID" not in k and "URL" not in k}
    assert expected <= secrets
    assert "1000.main-client" not in secrets  # a client id identifies, it does not authenticate


def test_reprs_show_no_secret() -> None:
    state = load(EXAMPLE, environ=EXAMPLE_ENV)
    assert MARK not in repr(state)
    assert MARK not in repr(state.accounts["main"])


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://h.example.com/z", set()),
        ("https://h.example.com/z?a=1&b=&c", {"1", "c"}),
        ("https://h.example.com/z?k=a+b%21", {"a+b%21", "a b!"}),
        ("https://u:p@h.example.com/", {"p"}),
        ("https://[::1/", {"https://[::1/"}),  # unparseable: the whole URL
    ],
)
def test_url_secrets(url: str, expected: set[str]) -> None:
    assert url_secrets(url) == expected


@pytest.mark.parametrize(
    "text",
    ["x = " + "[" * 100_000, "x = " + "[" * 100_000 + "]" * 100_000, "x = " + "{a = " * 50_000],
    ids=["open-arrays", "closed-arrays", "inline-tables"],
)
def test_deep_nesting_is_an_issue_naming_the_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    (issue,) = load_error(path).issues
    assert issue.file == str(path)
    assert "nested too deeply" in issue.message


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (account() + channel(name='"ok\\u001b[2Jforged"'), "channels[0].name"),
        (account() + channel(name='"two\\nlines"'), "channels[0].name"),
        (account('"ma\\u001bin"') + channel(), "accounts.'ma\\x1bin'"),
    ],
    ids=["escape-in-name", "newline-in-name", "escape-in-account"],
)
def test_names_with_control_characters_are_refused(tmp_path: Path, text: str, path: str) -> None:
    err = load_error(write(tmp_path, text))
    assert path in [issue.path for issue in err.issues], err
    assert "\x1b" not in str(err)
    assert "control characters" in str(err)
