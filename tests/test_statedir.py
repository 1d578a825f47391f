"""A state directory (DESIGN.md section 11): the pure merge of its files with their last good
versions, reading a directory, and ``validate`` on one. The daemon on a directory is in
test_statedir_daemon.py."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from watchkeeper.cli import main
from watchkeeper.config import AccountSpec, ConfigError, ConfigIssue, DesiredState
from watchkeeper.model import ChannelSpec, parse_event
from watchkeeper.policy import Policy
from watchkeeper.statedir import Loader, Merged, Part, Source, is_state_file, load, merge
from watchkeeper.zoho.regions import Endpoint

from tests.statefiles import SECRETS, Chan, env, write_state

DIRECTORY = Path("/etc/watchkeeper/channels.d")
DATABASE = Path("/var/lib/watchkeeper/watchkeeper.db")

# -- the pure merge, table-driven ----------------------------------------------------------------
#
# A file's content is written {"accounts": {name: tag}, "channels": {(account, id): tag},
# "daemon": minutes}: the tags tell versions apart (an account's client_id, a channel's name,
# the daemon's reconcile_every), so a case can say which version of each item is in force.

Content = Mapping[str, Any]


def desired(content: Content, path: Path = DIRECTORY) -> DesiredState:
    endpoint = Endpoint.resolve("crm", "v8")
    accounts = {
        name: AccountSpec(name, "crm", "v8", endpoint, client_id=tag, access_token="at")
        for name, tag in content.get("accounts", {}).items()
    }
    channels = tuple(
        ChannelSpec(
            account=account,
            channel_id=channel_id,
            events=parse_event("Deals.all"),
            notify_url="https://hooks.example.com/zoho",
            ttl=timedelta(hours=1),
            name=tag,
        )
        for (account, channel_id), tag in content.get("channels", {}).items()
    )
    policy = Policy(reconcile_every=timedelta(minutes=content.get("daemon", 30)))
    return DesiredState(path, DATABASE, policy, MappingProxyType(accounts), channels)


def part(content: Content) -> Part:
    return Part(desired(content), daemon="daemon" in content)


def valid(file: str, content: Content) -> Source:
    return Source(file, part(content), (), "daemon" in content)


def broken(file: str, *, daemon: bool = False) -> Source:
    """A file that does not validate now; ``daemon``: it has [daemon] or cannot be parsed."""
    return Source(file, None, (ConfigIssue("channels[0].token", "is too long", file=file),), daemon)


def shown(merged: Merged) -> dict[str, Any] | None:
    """What a case checks: each item's tag, the daemon's minutes, the files holding deletions."""
    state = merged.state
    if state is None:
        return None
    return {
        "accounts": {name: spec.client_id for name, spec in state.accounts.items()},
        "channels": {(c.account, c.channel_id): c.name for c in state.channels},
        "daemon": state.policy.reconcile_every // timedelta(minutes=1),
        "held": state.policy.deletions_held,
    }


ACME = {"accounts": {"acme": "a1"}, "channels": {("acme", "1"): "c1"}}
BETA = {"accounts": {"beta": "b1"}, "channels": {("beta", "2"): "c1"}}
DAEMON = {"daemon": 5}

CASES: list[tuple[str, list[Source], dict[str, Content], Content | None, Content | None, list[str]]] = [
    # (id, sources now, last good versions, state in force, expected, words of each issue)
    (
        "files-add-up",
        [valid("00-daemon.toml", DAEMON), valid("acme.toml", ACME), valid("beta.toml", BETA)],
        {},
        None,
        {
            **DAEMON,
            "accounts": {"acme": "a1", "beta": "b1"},
            "channels": {("acme", "1"): "c1", ("beta", "2"): "c1"},
        },
        [],
    ),
    (
        "a-channel-names-another-files-account",
        [valid("acme.toml", ACME), valid("more.toml", {"channels": {("acme", "9"): "c1"}})],
        {},
        None,
        {"accounts": {"acme": "a1"}, "channels": {("acme", "1"): "c1", ("acme", "9"): "c1"}},
        [],
    ),
    (
        "a-broken-file-keeps-its-last-good-version",
        [valid("acme.toml", ACME), broken("beta.toml")],
        {"beta.toml": BETA},
        None,
        {
            "accounts": {"acme": "a1", "beta": "b1"},
            "channels": {("acme", "1"): "c1", ("beta", "2"): "c1"},
        },
        ["beta.toml", "channels[0].token"],
    ),
    (
        "a-file-that-never-validated-holds-every-deletion",
        [valid("acme.toml", ACME), broken("beta.toml")],
        {},
        None,
        {**ACME, "held": ("beta.toml",)},
        ["beta.toml", "channels[0].token"],
    ),
    (
        "a-removed-file-is-gone",
        [valid("acme.toml", ACME)],
        {"acme.toml": ACME, "beta.toml": BETA},
        {"accounts": {"acme": "a1", "beta": "b1"}},
        ACME,
        [],
    ),
    (
        "an-account-in-two-files-keeps-its-definition-in-force",
        [
            valid("acme.toml", {"accounts": {"acme": "a2"}, "channels": {("acme", "1"): "c1"}}),
            valid("copy.toml", {"accounts": {"acme": "a3"}}),
        ],
        {},
        {"accounts": {"acme": "a1"}},
        {"accounts": {"acme": "a1"}, "channels": {("acme", "1"): "c1"}},
        ["acme.toml", "accounts.acme", "also declared in copy.toml", "in force stays"],
    ),
    (
        "a-new-account-in-two-files-is-not-applied",
        [
            valid("acme.toml", ACME),
            valid("copy.toml", {"accounts": {"acme": "a3"}}),
            valid("beta.toml", BETA),
        ],
        {},
        {"accounts": {"beta": "b1"}},
        BETA,
        # and its channel, whose account is then in force nowhere:
        [
            "acme.toml",
            "accounts.acme",
            "also declared in copy.toml",
            "not applied",
            "channel 1",
            "'acme' is not in force",
        ],
    ),
    (
        "a-channel-in-two-files-keeps-its-definition-in-force",
        [
            valid("acme.toml", {**ACME, "channels": {("acme", "1"): "c2"}}),
            valid("copy.toml", {"channels": {("acme", "1"): "c3"}}),
        ],
        {},
        ACME,
        ACME,
        ["acme.toml", "channel 1", "also declared in copy.toml", "in force stays"],
    ),
    (
        "a-new-channel-in-two-files-is-not-applied",
        [valid("acme.toml", ACME), valid("copy.toml", {"channels": {("acme", "1"): "c3"}})],
        {},
        None,
        {"accounts": {"acme": "a1"}, "channels": {}},
        ["acme.toml", "channel 1", "also declared in copy.toml", "not applied"],
    ),
    (
        "daemon-in-two-files-keeps-the-settings-in-force",
        [valid("00-daemon.toml", DAEMON), valid("acme.toml", {**ACME, "daemon": 7})],
        {},
        {"daemon": 10},
        {**ACME, "daemon": 10},
        ["00-daemon.toml", "[daemon] is also in acme.toml", "settings in force stay"],
    ),
    (
        "daemon-in-two-files-at-start-cannot-start",
        [valid("00-daemon.toml", DAEMON), valid("acme.toml", {**ACME, "daemon": 7})],
        {},
        None,
        None,
        ["00-daemon.toml", "[daemon] is also in acme.toml", "cannot start"],
    ),
    (
        "the-daemon-file-broken-at-start-cannot-start",
        [broken("00-daemon.toml", daemon=True), valid("acme.toml", ACME)],
        {},
        None,
        None,
        ["00-daemon.toml", "channels[0].token", "00-daemon.toml", "may hold [daemon]"],
    ),
    (
        "the-daemon-file-broken-keeps-its-last-good-settings",
        [broken("00-daemon.toml", daemon=True), valid("acme.toml", ACME)],
        {"00-daemon.toml": DAEMON},
        None,
        {**ACME, **DAEMON},
        ["00-daemon.toml", "channels[0].token"],
    ),
    (
        "an-unreadable-file-beside-the-daemon-file-starts",
        [valid("00-daemon.toml", DAEMON), valid("acme.toml", ACME), broken("beta.toml", daemon=True)],
        {},
        None,
        {**ACME, **DAEMON, "held": ("beta.toml",)},
        ["beta.toml", "channels[0].token"],
    ),
    (
        "a-held-over-channel-whose-account-left-is-not-applied",
        [broken("more.toml"), valid("beta.toml", BETA)],
        {"more.toml": {"channels": {("acme", "9"): "c1"}}},
        {"accounts": {"acme": "a1", "beta": "b1"}},
        BETA,
        ["more.toml", "channels[0].token", "more.toml", "channel 9", "'acme' is not in force"],
    ),
    ("an-empty-directory", [], {}, None, None, ["channels.d", "holds no *.toml file"]),
    (
        "only-broken-files",
        [broken("acme.toml")],
        {},
        ACME,
        None,
        ["acme.toml", "channels[0].token", "channels.d", "no valid account"],
    ),
]


@pytest.mark.parametrize(
    ("sources", "good", "previous", "expected", "words"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_merge(
    sources: list[Source],
    good: dict[str, Content],
    previous: Content | None,
    expected: Content | None,
    words: list[str],
) -> None:
    merged = merge(
        DIRECTORY,
        sources,
        {file: part(content) for file, content in good.items()},
        desired(previous) if previous is not None else None,
    )
    if expected is None:
        assert shown(merged) is None
    else:
        assert shown(merged) == {
            "accounts": expected.get("accounts", {}),
            "channels": expected.get("channels", {}),
            "daemon": expected.get("daemon", 30),
            "held": expected.get("held", ()),
        }
        assert merged.state is not None
        assert merged.state.path == DIRECTORY
    text = "\n".join(map(str, merged.issues))
    position = 0
    for word in words:  # in this order: each issue names its file first
        found = text.find(word, position)
        assert found >= 0, f"{word!r} not after position {position} in:\n{text}"
        position = found + len(word)
    assert bool(words) == bool(merged.issues)
    # The new last good versions: each present file's version in force, removed ones dropped.
    chosen = {s.file: s.part or (part(good[s.file]) if s.file in good else None) for s in sources}
    assert dict(merged.good) == {f: p for f, p in chosen.items() if p is not None}


@pytest.mark.parametrize(
    ("name", "counts"),
    [
        ("acme.toml", True),
        ("00-daemon.toml", True),
        (".acme.toml", False),
        (".#acme.toml", False),
        ("acme.toml~", False),
        (".acme.toml.swp", False),
        (".acme.toml.tmp", False),
        ("acme.toml.tmp", False),
        ("acme.TOML", False),
        ("README", False),
    ],
)
def test_which_files_count(name: str, counts: bool) -> None:
    assert is_state_file(name) is counts


# -- reading a directory -------------------------------------------------------------------------

URL = "http://127.0.0.1:9"


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    root = tmp_path / "channels.d"
    root.mkdir()
    (root / "00-daemon.toml").write_text('[daemon]\nreconcile_every = "10m"\n')
    write_state(root / "acme.toml", URL, [Chan("100"), Chan("101")], daemon=None, accounts=["acme"])
    write_state(root / "beta.toml", URL, [Chan("200")], daemon=None, accounts=["beta"])
    # Names provisioning code and editors leave behind: never read (these would not validate).
    for junk in (".acme.toml.tmp", ".#beta.toml", "beta.toml~", ".beta.toml.swp", "notes.txt"):
        (root / junk).write_text("this is not TOML = = =")
    (root / "sub.toml").mkdir()
    return root


def test_a_directory_is_one_desired_state(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    (directory / "more.toml").write_text(Chan("300", account="acme").toml())  # another's account
    state = load(directory, environ=env())
    assert state.path == directory
    assert list(state.accounts) == ["acme", "beta"]
    assert [(c.account, c.channel_id) for c in state.channels] == [
        ("acme", "100"),
        ("acme", "101"),
        ("beta", "200"),
        ("acme", "300"),
    ]
    assert state.policy.reconcile_every == timedelta(minutes=10)
    assert state.policy.deletions_held == ()
    assert state.database == directory / "watchkeeper.db"  # beside the files, as for one file
    assert load(directory, environ={**env(), "STATE_DIRECTORY": "/var/lib/wk"}).database == Path(
        "/var/lib/wk/watchkeeper.db"
    )


def test_an_accounts_own_reconcile_every_holds_in_its_file_and_the_others_take_the_daemons(
    directory: Path,
) -> None:
    """The ``[daemon]`` value is in another file: an account without its own resolves to it."""
    own = {"acme": 'reconcile_every = "20h"'}
    write_state(directory / "acme.toml", URL, [Chan("100")], daemon=None, accounts=own)
    state = load(directory, environ=env())
    assert state.accounts["acme"].reconcile_every == timedelta(hours=20)
    assert (state.reconcile_every("acme"), state.reconcile_every("beta")) == (
        timedelta(hours=20),
        timedelta(minutes=10),
    )


def test_every_files_errors_name_the_file_and_the_key(directory: Path) -> None:
    (directory / "acme.toml").write_text(
        (directory / "acme.toml")
        .read_text()
        .replace('token = "env:WK_TEST_HOOK_TOKEN"', 'token = "' + "x" * 51 + '"', 1)
    )
    (directory / "beta.toml").write_text("[accounts.beta\n")
    (directory / "copy.toml").write_text((directory / "00-daemon.toml").read_text())
    with pytest.raises(ConfigError) as caught:
        load(directory, environ=env())
    lines = str(caught.value).splitlines()
    assert f"{directory / 'acme.toml'}: channels[0].token (channel 100): is 51 characters" in lines[0]
    assert lines[1].startswith(f"{directory / 'beta.toml'}:1:")
    assert (
        f"{directory / '00-daemon.toml'}: daemon: [daemon] is also in {directory / 'copy.toml'}"
        in lines[2]
    )


def test_the_loader_keeps_each_files_last_good_version(directory: Path) -> None:
    loader = Loader(directory, environ=env())
    first = loader.load(None)
    assert first.state is not None
    assert not first.issues
    (directory / "beta.toml").write_text("[accounts.beta\n")  # broken: its last good stays
    write_state(
        directory / "gamma.toml",
        URL,
        [Chan("300", token=False, events=["Nope"])],
        daemon=None,
        accounts=["gamma"],
    )
    second = loader.load(first.state)
    assert second.state is not None
    assert [c.channel_id for c in second.state.channels] == ["100", "101", "200"]
    assert second.state.policy.deletions_held == ("gamma.toml",)
    assert [issue.file for issue in second.issues] == [
        str(directory / "beta.toml"),
        str(directory / "gamma.toml"),
    ]
    (directory / "beta.toml").unlink()  # removed: gone, last good version and all
    third = loader.load(second.state)
    assert third.state is not None
    assert [c.channel_id for c in third.state.channels] == ["100", "101"]


def test_a_single_file_loads_as_before(tmp_path: Path) -> None:
    path = write_state(tmp_path / "channels.toml", URL, [Chan("1")])
    merged = Loader(path, environ=env()).load(None)
    assert merged.state is not None
    assert merged.state.path == path
    assert not merged.good
    path.write_text("[daemon\n")
    broken_file = Loader(path, environ=env()).load(merged.state)
    assert broken_file.state is None
    assert broken_file.issues[0].file == str(path)


# -- validate ------------------------------------------------------------------------------------


def test_validate_a_directory(
    directory: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env().items():
        monkeypatch.setenv(key, value)
    assert main(["--state", str(directory), "validate"]) == 0
    out, _ = capsys.readouterr()
    assert out == f"{directory}: valid (3 file(s), 2 account(s), 3 channel(s))\n"

    (directory / "beta.toml").write_text(
        (directory / "beta.toml").read_text().replace("Deals.all", "Deals.every")
    )
    (directory / "more.toml").write_text(Chan("300", account="nobody").toml())
    assert main(["--state", str(directory), "validate"]) == 78
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(
        f"error: {directory / 'beta.toml'}: channels[0].events[1] (channel 200): "
    )
    assert lines[1].startswith(f"error: {directory / 'more.toml'}: channels[0].account (channel 300): ")
    assert "account 'nobody' is unknown" in lines[1]
    for secret in SECRETS:
        assert secret not in err


def test_the_example_directory_validates() -> None:
    example = Path(__file__).resolve().parent.parent / "state" / "channels.d"
    names = ("ZOHO_CLIENT_ID", "ZOHO_CLIENT_SECRET", "ACME_REFRESH_TOKEN", "GLOBEX_REFRESH_TOKEN")
    state = load(example, environ={name: f"{name.lower()}-value" for name in names})
    assert list(state.accounts) == ["acme", "globex"]
    assert [(c.account, c.name) for c in state.channels] == [
        ("acme", "acme-deals"),
        ("globex", "globex-contacts"),
    ]
    assert state.database == example / "watchkeeper.db"
