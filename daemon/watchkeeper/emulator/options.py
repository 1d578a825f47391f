"""The switches between plausible Zohos: where the docs and the recordings disagree or say nothing,
the emulator can play each answer, so the daemon's tests can run under all of them.

The defaults are what the recordings show, or what the docs say when nothing was recorded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import timedelta
from typing import Any, Literal, TypedDict, cast, get_args

PatchUnknown = Literal["error", "create", "invalid_data"]
"""A PATCH or PUT of a channel Zoho does not know (UNCONFIRMED): ``error`` answers the item with
NOT_SUBSCRIBED, ``create`` subscribes it as a POST would, ``invalid_data`` answers INVALID_DATA with
``api_name`` ``channel_id``."""
PatchEvents = Literal["replace", "merge"]
"""Whether a PATCH's ``events`` replace the channel's or add to them (UNCONFIRMED)."""
BadExpiry = Literal["default", "refuse"]
"""A ``channel_expiry`` Zoho cannot read or that has passed: ``default`` grants the default lifetime,
as recorded (zoho-api.md 2.1: "Past expiry is not rejected (silently defaulted). [S1]"), ``refuse``
answers the item with INVALID_DATA ``api_name`` ``channel_expiry``."""
RecordsEmpty = Literal["204", "304"]
"""What a records query that carried If-Modified-Since and matched nothing answers (UNCONFIRMED)."""
PageTokens = Literal["v5+", "all", "none"]
"""Which versions hand out ``next_page_token`` on records pages (documented for v7/v8; earlier
versions UNCONFIRMED): CRM v5 and later, every version, or none (``page`` stops at 2,000)."""
UnknownModules = Literal["accept", "refuse"]
"""An event on a module the product does not have (catalog.MODULES plus ``custom_modules``):
``refuse`` answers the item with INVALID_DATA ``api_name`` ``events``."""


class OptionArgs(TypedDict, total=False):
    """Options as keyword arguments of the Emulator."""

    default_lifetime: timedelta
    access_token_lifetime: timedelta
    max_items: int
    patch_unknown: PatchUnknown
    patch_events: PatchEvents
    bad_expiry: BadExpiry
    unknown_modules: UnknownModules
    custom_modules: frozenset[str]
    forbidden_modules: frozenset[str]
    expired_listed_for: timedelta
    records_empty: RecordsEmpty
    page_tokens: PageTokens


@dataclass(frozen=True, slots=True)
class Options:
    default_lifetime: timedelta = timedelta(hours=1)
    """What Zoho grants when no expiry, or one it dislikes, is asked: 1 h in the docs, 2 h in
    every recording (zoho-api.md 2.1)."""
    access_token_lifetime: timedelta = timedelta(hours=1)
    max_items: int = 100
    """Channels per POST/PUT/PATCH (Kaizen #14; the v8 OAS says 50)."""
    patch_unknown: PatchUnknown = "error"
    patch_events: PatchEvents = "replace"
    bad_expiry: BadExpiry = "default"
    unknown_modules: UnknownModules = "accept"
    custom_modules: frozenset[str] = frozenset()
    """The org's custom module API names, known to ``unknown_modules="refuse"``."""
    forbidden_modules: frozenset[str] = frozenset()
    """Modules the integration user may not subscribe to: Zoho refuses the item with INVALID_DATA
    (the CRM v3 PATCH doc lists it for a missing module permission)."""
    expired_listed_for: timedelta = timedelta(0)
    """How long GET still lists a channel after its expiry (0: it vanishes at once; UNCONFIRMED)."""
    records_empty: RecordsEmpty = "204"
    page_tokens: PageTokens = "v5+"

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} is one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        for name in ("default_lifetime", "access_token_lifetime"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
        if self.expired_listed_for < timedelta(0):
            raise ValueError(f"expired_listed_for must not be negative, not {self.expired_listed_for}")
        if isinstance(self.max_items, bool) or not isinstance(self.max_items, int) or self.max_items < 1:
            raise ValueError(f"max_items must be a positive integer, not {self.max_items!r}")
        for name in ("custom_modules", "forbidden_modules"):
            object.__setattr__(self, name, frozenset(getattr(self, name)))

    def to_json(self) -> dict[str, Any]:
        """Durations in seconds, module sets as sorted lists."""
        return {name: _to_json(value) for name, value in asdict(self).items()}


_CHOICES: dict[str, tuple[str, ...]] = {
    "patch_unknown": get_args(PatchUnknown),
    "patch_events": get_args(PatchEvents),
    "bad_expiry": get_args(BadExpiry),
    "unknown_modules": get_args(UnknownModules),
    "records_empty": get_args(RecordsEmpty),
    "page_tokens": get_args(PageTokens),
}
_NAMES = frozenset(f.name for f in fields(Options))


def options_from_json(current: Options, data: dict[str, Any]) -> OptionArgs:
    """Changes to ``current`` written in JSON (durations in seconds, module sets as lists); an
    unknown name raises KeyError, a value of the wrong type TypeError."""
    unknown = set(data) - _NAMES
    if unknown:
        raise KeyError(f"unknown options {sorted(unknown)} (known: {', '.join(sorted(_NAMES))})")
    return cast(
        OptionArgs, {name: _from_json(name, getattr(current, name), v) for name, v in data.items()}
    )


def _to_json(value: object) -> Any:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, frozenset):
        return sorted(value)
    return value


def _from_json(name: str, current: object, value: Any) -> Any:
    """``value`` in the type of the option it replaces."""
    if isinstance(current, timedelta):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{name} is a number of seconds, not {value!r}")
        return timedelta(seconds=value)
    if isinstance(current, frozenset):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"{name} is a list of module names, not {value!r}")
        return frozenset(value)
    return value
