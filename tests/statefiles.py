"""Builds state files that point at an emulator, for the engine, CLI and daemon tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from watchkeeper.emulator import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_ORG,
    DEFAULT_REFRESH_TOKEN,
)

HOOK_TOKEN = "hook-token-SECRET-0123456789"
"""Channel verification token used by test channels: must never show up in any output."""
URL_SECRET = "urlsecretvalue42"
"""A notify_url query value: must never show up in any output either."""


@dataclass
class Chan:
    channel_id: str
    events: list[str] = field(default_factory=lambda: ["Contacts.create", "Deals.all"])
    ttl: str = "1h"
    name: str | None = None
    token: bool = True
    notify_url: str = f"https://hooks.example.com/zoho?key={URL_SECRET}"
    account: str | None = None
    """Needed only when the state file has several accounts (see ``write_state(accounts=...)``)."""
    backfill: bool = False

    def toml(self) -> str:
        lines = ["[[channels]]"]
        if self.account:
            lines.append(f'account = "{self.account}"')
        lines += [
            f'channel_id = "{self.channel_id}"',
            f"events = [{', '.join(repr(e).replace(chr(39), chr(34)) for e in self.events)}]",
            f'notify_url = "{self.notify_url}"',
            f'ttl = "{self.ttl}"',
        ]
        if self.name:
            lines.append(f'name = "{self.name}"')
        if self.token:
            lines.append('token = "env:WK_TEST_HOOK_TOKEN"')
        if self.backfill:
            lines.append("backfill = true")
        return "\n".join(lines)


def write_state(
    path: Path,
    url: str,
    channels: Iterable[Chan],
    *,
    api_version: str = "v8",
    daemon: str | None = "",
    accounts: Sequence[str] | Mapping[str, str] = ("main",),
) -> Path:
    """A state file with one account ``main`` on the emulator at ``url`` (or the named ``accounts``:
    ``main`` logs in as the emulator's default org, any other as the org of the same name, which
    the test adds with ``emu.add_org(name)``; a mapping gives each name more TOML lines for its
    table, e.g. ``{"main": 'reconcile_every = "4h"'}``). ``daemon`` None: no ``[daemon]`` table (a
    file of a state directory that leaves it to another)."""
    text = "" if daemon is None else f'[daemon]\ndatabase = "watchkeeper.db"\n{daemon}\n'
    more = accounts if isinstance(accounts, Mapping) else dict.fromkeys(accounts, "")
    text += "".join(_account(name, url, api_version, lines) for name, lines in more.items())
    text += "\n\n".join(c.toml() for c in channels) + "\n"
    path.write_text(text)
    return path


def org_of(account: str) -> str:
    """The emulator org a ``write_state`` account logs in as."""
    return DEFAULT_ORG if account == "main" else account


def _account(name: str, url: str, api_version: str, more: str) -> str:
    refresh_token = (
        "env:WK_TEST_REFRESH_TOKEN" if name == "main" else f"{DEFAULT_REFRESH_TOKEN}-{org_of(name)}"
    )
    return f"""
[accounts.{name}]
product = "crm"
api_version = "{api_version}"
api_domain = "{url}"
accounts_url = "{url}"
client_id = "{DEFAULT_CLIENT_ID}"
client_secret = "env:WK_TEST_CLIENT_SECRET"
refresh_token = "{refresh_token}"
{more}
"""


def env() -> dict[str, str]:
    """The environment the state files above resolve their secrets from."""
    return {
        "WK_TEST_HOOK_TOKEN": HOOK_TOKEN,
        "WK_TEST_CLIENT_SECRET": DEFAULT_CLIENT_SECRET,
        "WK_TEST_REFRESH_TOKEN": DEFAULT_REFRESH_TOKEN,
    }


SECRETS = (HOOK_TOKEN, URL_SECRET, DEFAULT_CLIENT_SECRET, DEFAULT_REFRESH_TOKEN)
