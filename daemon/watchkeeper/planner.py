"""PURE: what to do, given what is desired, what Zoho shows, what we own, and the time.

``plan`` is the whole decision (DESIGN.md section 3); the engine only carries it out. It never reads
the clock nor does I/O, so tests and the soak harness can replay any situation exactly.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from watchkeeper.model import (
    ChannelSpec,
    ObservedChannel,
    RegistryEntry,
    canonical_json,
    utc,
)
from watchkeeper.policy import Policy, batch_horizon, emergency_at, is_at_risk

ActionKind = Literal["create", "adopt", "renew", "repair", "delete"]
Method = Literal["POST", "PUT", "PATCH", "DELETE"]
Key = tuple[str, str]
"""(account, channel_id): a channel id is only unique within its account."""

DRIFT_FIELDS: tuple[str, ...] = (
    "events",
    "notify_url",
    "token",
    "notify_on_related_action",
    "return_affected_field_values",
    "notification_condition",
)
"""The fields Zoho keeps per channel, in the order drift is reported. ``ttl`` and ``name`` are not
among them: a new ttl rides on the next renewal and a name is only a label in our logs."""


@dataclass(frozen=True, slots=True)
class Action:
    """One thing to do to one channel.

    ``reason``: create "new" / "retry" (never granted yet; "retry" after failures) / "lapsed" /
    "vanished"; adopt "found"; renew "due" / "at_risk" / "batched"; repair "drift" (the listing
    differs) / "changed" (the state file changed since it was applied); delete "undesired".
    """

    kind: ActionKind
    account: str
    channel_id: str
    spec: ChannelSpec | None = field(repr=False)
    """The desired spec; None for a delete. Out of repr: it carries the channel token."""
    reason: str
    drift: tuple[str, ...] = ()
    """Names (never values) of the fields that differ, in DRIFT_FIELDS order."""
    at_risk: bool = False

    @property
    def method(self) -> Method:
        """create = POST; repair, and adopting a drifted channel, = PUT with the full item; delete
        = DELETE; everything else renews by PATCH."""
        if self.kind == "create":
            return "POST"
        if self.kind == "delete":
            return "DELETE"
        if self.kind == "repair" or (self.kind == "adopt" and self.drift):
            return "PUT"
        return "PATCH"


METHOD_ORDER: tuple[Method, ...] = ("POST", "PUT", "PATCH", "DELETE")
"""The order an account's requests go out in: creations first (nothing is live without them),
deletions last."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Deletions held back by a guard, one per account so the ids are unambiguous."""

    reason: Literal["empty", "mass_delete", "unknown_file"]
    account: str | None
    channel_ids: tuple[str, ...]
    message: str


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...]
    foreign: tuple[tuple[str, ObservedChannel], ...]
    """(account, channel) live but neither owned nor desired: reported, never touched."""
    refused: tuple[Refusal, ...]

    @property
    def changes(self) -> bool:
        """Something is pending: an action, or deletions waiting for a confirmation."""
        return bool(self.actions or self.refused)

    @property
    def refused_keys(self) -> frozenset[Key]:
        return refused_keys(self.refused)


@dataclass(frozen=True, slots=True)
class Holds:
    """What overrides a deletion: the operator's confirmations, and the specs that keep alive a
    channel whose deletion a guard refused (the last spec known for it)."""

    confirmed: frozenset[Key] = frozenset()
    retained: Mapping[Key, ChannelSpec] = field(default_factory=dict)


ALWAYS = datetime.min.replace(tzinfo=UTC)
"""A ``Due`` instant that has always come: the channel needs the planner whatever the time."""


@dataclass(frozen=True, slots=True)
class Due:
    """When an owned channel next needs the planner on a pass without a listing, as long as neither
    its entry nor its spec changes (Zoho's clock): the engine keeps its channels indexed by these,
    so a pass plans only what is due and the next wake-up is a heap's top."""

    act: datetime
    """From this instant on the planner has an action for it (and before it, none)."""
    reach: timedelta
    """It may be taken along in a due renewal of its account only once ``act`` is this close."""
    held: bool = False
    """``act`` is the end of a hold (its retry_at): until then it is held back, so it joins no
    renewal whatever its reach (the index leaves it out of the look for channels within reach)."""


@dataclass(frozen=True, slots=True)
class AccountView:
    """Everything one account's plan depends on, besides the time and the policy."""

    account: str
    desired: Mapping[str, ChannelSpec]
    """By channel id."""
    listing: Mapping[str, ObservedChannel] | None
    """None: not listed this pass, so nothing is created for the first time."""
    entries: Mapping[str, RegistryEntry]
    refused: frozenset[str] = frozenset()
    """Owned channels whose deletion a guard holds back (see ``guard``)."""
    retained: Mapping[str, ChannelSpec] = field(default_factory=dict)
    """The refused ones to keep alive, with the spec to renew them with."""
    candidates: Collection[str] | None = None
    """Without a listing, the channels that can have an action (at least those whose ``due`` act
    has come, those within reach of a due renewal, and the owned ones no longer kept); the others
    are left out unplanned. None: every channel is planned (a listing may change any of them)."""


@dataclass(frozen=True, slots=True)
class _Idle:
    """A live channel with nothing due: it may still join a due renewal of its account."""

    spec: ChannelSpec
    renew_at: datetime
    lifetime: timedelta


def plan(
    desired: Sequence[ChannelSpec],
    observed: Mapping[str, Mapping[str, ObservedChannel] | None],
    registry: Mapping[Key, RegistryEntry],
    now: datetime,
    policy: Policy,
    holds: Holds = Holds(),
) -> Plan:
    """Decide every action of one pass: at most one per channel, sorted by (account, kind, id).

    ``observed`` maps an account to its listing by channel id; None (or a missing account) means
    not listed this pass, so nothing is created for the first time there. The mass-delete guard is
    global: it weighs the deletions against all managed channels, whatever their account.

    A channel whose deletion a guard refused is kept alive with its ``holds.retained`` spec, if
    there is one: a refusal exists to protect it, so letting it lapse would defeat it.
    """
    wanted = _index(desired)
    refused = guard(wanted.keys(), registry.keys(), policy, holds.confirmed)
    held = refused_keys(refused)
    accounts = sorted({key[0] for key in wanted} | {key[0] for key in registry} | set(observed))
    actions: list[Action] = []
    for account in accounts:
        view = AccountView(
            account,
            {cid: spec for (acc, cid), spec in wanted.items() if acc == account},
            observed.get(account),
            {cid: entry for (acc, cid), entry in registry.items() if acc == account},
            frozenset(cid for acc, cid in held if acc == account),
            {cid: spec for (acc, cid), spec in holds.retained.items() if acc == account},
        )
        actions += plan_account(view, now, policy)
    return Plan(tuple(actions), _foreign(observed, registry, wanted), refused)


def plan_account(view: AccountView, now: datetime, policy: Policy) -> list[Action]:
    """One account's actions, sorted by (kind, id). Channels refused deletion (the guard weighs
    every account at once) that have a retained spec are renewed like desired ones; the others are
    left alone."""
    now = utc(now)
    listing, entries, refused = view.listing, view.entries, view.refused
    actions: list[Action] = []
    idle: list[_Idle] = []
    for channel_id in _planned(view):
        spec = kept_spec(view, channel_id)
        entry = entries.get(channel_id)
        if spec is not None:
            outcome = _for_desired(spec, listing, entry, now, policy)
            if isinstance(outcome, Action):
                actions.append(outcome)
            elif outcome is not None:
                idle.append(outcome)
        elif entry is not None and channel_id not in refused and not _held_back(entry, now):
            actions.append(Action("delete", view.account, channel_id, None, "undesired"))
    actions += _batched(idle, actions, now, policy)
    actions.sort(key=lambda a: (a.kind, a.channel_id))
    return actions


def kept_spec(view: AccountView, channel_id: str) -> ChannelSpec | None:
    """The spec a channel is renewed with: desired, or retained while its deletion is refused."""
    if channel_id in view.refused and channel_id in view.retained:
        return view.retained[channel_id]
    return view.desired.get(channel_id)


def _planned(view: AccountView) -> Collection[str]:
    if view.candidates is not None:
        return view.candidates
    return view.desired.keys() | view.entries.keys() | (view.retained.keys() & view.refused)


def due(spec: ChannelSpec, entry: RegistryEntry, policy: Policy) -> Due:
    """PURE: ``Due`` of an owned channel kept with ``spec``, from exactly the conditions under
    which ``_for_desired`` acts without a listing: held back until its retry_at; otherwise at once
    when it was never granted, lapsed, has no renewal time or was changed in the state file since
    Zoho accepted it; else at its renew_at or its emergency point, whichever comes first. Joining
    a renewal takes a renew_at within the batch horizon and no hold, so such an act is within it,
    and one held back until its act joins nothing before."""
    lifetime = entry.lifetime or spec.ttl
    if (
        entry.expires_at is None
        or entry.renew_at is None
        or entry.state == "lapsed"
        or applied_drift(spec, entry)
    ):
        act = ALWAYS
    else:
        act = min(utc(entry.renew_at), emergency_at(entry.expires_at, lifetime, policy))
    reach = batch_horizon(lifetime, policy)
    if entry.retry_at is not None and utc(entry.retry_at) >= act:
        return Due(utc(entry.retry_at), reach, held=True)
    return Due(act, reach)


def observed_drift(spec: ChannelSpec, seen: ObservedChannel) -> tuple[str, ...]:
    """How the live channel differs from the desired one. Events compare as expanded sets (the
    listing reports ``Deals.all`` as three ops); a flag the listing does not report (None) is not
    drift; a null token Zoho shows while one is desired is."""
    return _diff(spec, seen, seen.notify_url != spec.notify_url, seen.token != spec.token)


def applied_drift(spec: ChannelSpec, entry: RegistryEntry) -> tuple[str, ...]:
    """How the state file changed since Zoho last accepted the channel, so a change is applied even
    on a pass that did not list. The token is compared by digest (the store never keeps it). No
    applied spec recorded means no evidence: nothing. The notify_url is compared by digest too
    where there is one (the store keeps the URL with its secrets masked)."""
    applied = entry.applied
    if applied is None:
        return ()
    token, url = spec.digests()
    if entry.applied_url_digest is not None:
        url_differs = url != entry.applied_url_digest
    else:
        url_differs = applied.notify_url != spec.notify_url
    token_differs = token != entry.applied_token_digest
    return _diff(spec, applied, url_differs, token_differs)


def same_condition(a: str | None, b: str | None) -> bool:
    """``notification_condition`` equality as Zoho echoes it: the listing adds null-valued keys on
    leaf nodes (``group_operator: null, group: null``), and an empty list is no condition."""
    return _normal_condition(a) == _normal_condition(b)


def _normal_condition(text: str | None) -> str | None:
    if text is None:
        return None
    value = _drop_nulls(json.loads(text))
    return canonical_json(value) if value not in (None, []) else None


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _diff(
    spec: ChannelSpec, other: ObservedChannel | ChannelSpec, url_differs: bool, token_differs: bool
) -> tuple[str, ...]:
    """The drifted field names; the URL and token comparisons come in decided (by value or by
    digest), the rest is compared here. A flag ``other`` does not report (None) is not drift."""
    related, affected = other.notify_on_related_action, other.return_affected_field_values
    differs = (
        other.events != spec.events,
        url_differs,
        token_differs,
        related is not None and related != spec.notify_on_related_action,
        affected is not None and affected != spec.return_affected_field_values,
        not same_condition(other.notification_condition, spec.notification_condition),
    )
    return tuple(name for name, differ in zip(DRIFT_FIELDS, differs, strict=True) if differ)


def _index(desired: Sequence[ChannelSpec]) -> dict[Key, ChannelSpec]:
    """Desired specs by key; a duplicate is a bug upstream (config validation refuses them)."""
    wanted: dict[Key, ChannelSpec] = {}
    for spec in desired:
        key = (spec.account, spec.channel_id)
        if key in wanted:
            raise ValueError(f"channel {spec.channel_id} of account {spec.account} is desired twice")
        wanted[key] = spec
    return wanted


def _held_back(entry: RegistryEntry, now: datetime) -> bool:
    """A failed channel waits for its retry_at; a transient one's never passes the expiry."""
    return entry.retry_at is not None and utc(entry.retry_at) > now


def _for_desired(
    spec: ChannelSpec,
    listing: Mapping[str, ObservedChannel] | None,
    entry: RegistryEntry | None,
    now: datetime,
    policy: Policy,
) -> Action | _Idle | None:
    account, channel_id = spec.account, spec.channel_id
    listed = listing.get(channel_id) if listing is not None else None
    seen = listed if listed is not None and listed.expires_at > now else None
    if entry is None:
        if listing is None:
            return None
        if seen is None:
            return Action("create", account, channel_id, spec, "new")
        return Action("adopt", account, channel_id, spec, "found", observed_drift(spec, seen))
    if _held_back(entry, now):
        return None
    lapse = _lapse(entry, listing, listed, now)
    if lapse is not None:
        return Action("create", account, channel_id, spec, lapse)
    expires_at = seen.expires_at if seen is not None else entry.expires_at
    assert expires_at is not None, "_lapse re-creates a channel with no known expiry"
    lifetime = entry.lifetime or spec.ttl
    at_risk = is_at_risk(expires_at, lifetime, now, policy)
    live_drift = observed_drift(spec, seen) if seen is not None else ()
    drift = set(live_drift) | set(applied_drift(spec, entry))
    if drift:
        fields = tuple(name for name in DRIFT_FIELDS if name in drift)
        reason = "drift" if live_drift else "changed"
        return Action("repair", account, channel_id, spec, reason, fields, at_risk)
    if at_risk:
        return Action("renew", account, channel_id, spec, "at_risk", at_risk=True)
    if entry.renew_at is None or utc(entry.renew_at) <= now:
        return Action("renew", account, channel_id, spec, "due")
    return _Idle(spec, utc(entry.renew_at), lifetime)


def _lapse(
    entry: RegistryEntry,
    listing: Mapping[str, ObservedChannel] | None,
    listed: ObservedChannel | None,
    now: datetime,
) -> str | None:
    """Why an owned channel is known not live (it is re-created), or None while it is believed live.

    A listing of the account decides when there is one (its expiry beats ours); without one, our
    own record does: a past expiry, or Zoho having said it no longer has the channel. A channel
    never granted at all (a create that failed) is created again whether listed or not.
    """
    expired = entry.expires_at is not None and utc(entry.expires_at) <= now
    if listing is not None:
        if listed is not None:
            return "lapsed" if listed.expires_at <= now else None
        if entry.expires_at is not None:
            return "lapsed" if expired else "vanished"
    if entry.expires_at is None:
        return "retry" if entry.failures else "new"
    if entry.state == "lapsed" or expired:
        return "lapsed"
    return None


def _batched(idle: list[_Idle], actions: list[Action], now: datetime, policy: Policy) -> list[Action]:
    """A due renewal of an account takes along its channels due within a tenth of their lifetime,
    so a fleet renews in a few full PATCH requests rather than one call per channel."""
    due_accounts = {a.account for a in actions if a.kind == "renew"}
    return [
        Action("renew", item.spec.account, item.spec.channel_id, item.spec, "batched")
        for item in idle
        if item.spec.account in due_accounts
        and item.renew_at - now <= batch_horizon(item.lifetime, policy)
    ]


def guard(
    desired: Iterable[Key],
    owned: Iterable[Key],
    policy: Policy,
    confirmed: frozenset[Key] = frozenset(),
) -> tuple[Refusal, ...]:
    """The two deletion guards of DESIGN.md section 3, over every account at once, after the hold
    of a state directory with a file that never validated (section 11). ``allow_empty``
    lifts only the empty-list guard: tearing everything down still needs the mass-delete
    confirmation (or a higher ``max_delete_fraction``)."""
    wanted = set(desired)
    managed_keys = list(owned)
    undesired = sorted(key for key in managed_keys if key not in wanted)
    return guard_undesired(undesired, len(managed_keys), len(wanted), policy, confirmed)


def guard_undesired(
    undesired: Sequence[Key],
    managed: int,
    desired: int,
    policy: Policy,
    confirmed: frozenset[Key] = frozenset(),
) -> tuple[Refusal, ...]:
    """``guard`` from what it counts: the owned channels no longer desired (sorted), how many are
    owned and how many desired (the engine keeps them counted per account: a pass need not go
    over every channel)."""
    if not undesired:
        return ()
    if policy.deletions_held:
        message = (
            f"refusing to delete {len(undesired)} managed channel(s) while "
            f"{', '.join(policy.deletions_held)} of the state directory never validated: the "
            "channels they declare are unknown (fix them, or remove them)"
        )
        return _refusals("unknown_file", undesired, message)
    if not desired and not policy.allow_empty:
        message = (
            f"the state file lists no channels: refusing to delete all {managed} managed channel(s) "
            "(set allow_empty = true in [daemon] to allow it)"
        )
        return _refusals("empty", undesired, message)
    if len(undesired) > policy.max_delete_fraction * managed and not set(undesired) <= confirmed:
        message = (
            f"refusing to delete {len(undesired)} of {managed} managed channel(s), more than "
            f"max_delete_fraction {policy.max_delete_fraction:g}: confirm with "
            "`watchkeeper apply --allow-mass-delete`"
        )
        return _refusals("mass_delete", undesired, message)
    return ()


def batches(actions: Iterable[Action]) -> list[tuple[Method, list[Action]]]:
    """The actions by request, in METHOD_ORDER (the client chunks each into 100s)."""
    by_method: dict[Method, list[Action]] = {method: [] for method in METHOD_ORDER}
    for action in actions:
        by_method[action.method].append(action)
    return [(method, chosen) for method, chosen in by_method.items() if chosen]


def refused_keys(refusals: Iterable[Refusal]) -> frozenset[Key]:
    """The channels whose deletion the refusals hold back."""
    return frozenset((r.account or "", c) for r in refusals for c in r.channel_ids)


def _refusals(
    reason: Literal["empty", "mass_delete", "unknown_file"], keys: Sequence[Key], message: str
) -> tuple[Refusal, ...]:
    by_account: dict[str, list[str]] = {}
    for account, channel_id in keys:
        by_account.setdefault(account, []).append(channel_id)
    return tuple(
        Refusal(reason, account, tuple(ids), message) for account, ids in sorted(by_account.items())
    )


def _foreign(
    observed: Mapping[str, Mapping[str, ObservedChannel] | None],
    registry: Mapping[Key, RegistryEntry],
    wanted: Mapping[Key, ChannelSpec],
) -> tuple[tuple[str, ObservedChannel], ...]:
    return tuple(
        (account, listing[channel_id])
        for account, listing in sorted(observed.items())
        if listing is not None
        for channel_id in sorted(listing)
        if (account, channel_id) not in registry and (account, channel_id) not in wanted
    )
