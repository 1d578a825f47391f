"""The decision core, table-driven: every action kind and reason, the guards, ownership, batching.

Builders keep each case to what differs from a channel in sync: ``spec`` (desired), ``seen`` (the
listing shows it, matching the spec) and ``owned`` (the registry holds it, applied as desired,
granted 10h of which 5h are left, next renewal in 2h).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from freezegun import freeze_time
from watchkeeper.model import (
    ChannelSpec,
    ObservedChannel,
    RegistryEntry,
    canonical_json,
    parse_events,
    parse_instant,
    token_digest,
    url_digest,
)
from watchkeeper.planner import (
    ALWAYS,
    AccountView,
    Action,
    Due,
    Holds,
    Plan,
    Refusal,
    due,
    plan,
    plan_account,
)
from watchkeeper.policy import Policy

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
IST = timezone(timedelta(hours=5, minutes=30))
S = timedelta(seconds=1)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
LIFE = 10 * HOUR
POLICY = Policy()
URL = "https://hooks.example.com/zoho?source=crm"
CONDITION = [
    {
        "type": "field_selection",
        "module": {"api_name": "Deals", "id": "5725767000000002175"},
        "field_selection": {
            "group_operator": "or",
            "group": [{"field": {"api_name": "Stage", "id": "5725767000000002565"}}],
        },
    }
]
CONDITION_AS_LISTED = [
    {
        "type": "field_selection",
        "module": {"api_name": "Deals", "id": "5725767000000002175"},
        "field_selection": {
            "group_operator": "or",
            "group": [
                {
                    "field": {"api_name": "Stage", "id": "5725767000000002565"},
                    "group_operator": None,
                    "group": None,
                }
            ],
        },
    }
]


def spec(cid: str = "1001", account: str = "main", **kw: object) -> ChannelSpec:
    base: dict[str, object] = {
        "events": parse_events(["Contacts.create", "Deals.all"]),
        "notify_url": URL,
        "ttl": LIFE,
        "token": f"tok-{cid}",
    }
    base.update(kw)
    return ChannelSpec(account=account, channel_id=cid, **base)  # type: ignore[arg-type]


def test_a_specs_digests_are_of_its_token_and_url_and_leave_equality_alone() -> None:
    one, other = spec(), spec()
    assert one.digests() == (token_digest("main", "1001", "tok-1001"), url_digest("main", "1001", URL))
    assert one == other  # one keeps its digests, the other has none
    assert hash(one) == hash(other)
    assert replace(one, token="new").digests()[0] == token_digest("main", "1001", "new")
    assert replace(one, notify_url=URL + "&x=1").digests()[1] == url_digest("main", "1001", URL + "&x=1")


def seen(cid: str = "1001", *, expires: datetime = NOW + 5 * HOUR, **kw: object) -> ObservedChannel:
    """What the listing shows for ``spec(cid)``; flags not reported unless given."""
    desired = spec(cid)
    base: dict[str, object] = {"events": desired.events, "notify_url": URL, "token": desired.token}
    base.update(kw)
    return ObservedChannel(channel_id=cid, expires_at=expires, **base)  # type: ignore[arg-type]


def owned(
    cid: str = "1001", account: str = "main", *, was: ChannelSpec | None = None, **kw: object
) -> RegistryEntry:
    """A registry entry for ``was`` (default ``spec(cid, account)``) as last accepted by Zoho."""
    was = was or spec(cid, account)
    base: dict[str, object] = {
        "state": "active",
        "applied": replace(was, token=None),
        "applied_token_digest": token_digest(account, cid, was.token),
        "expires_at": NOW + 5 * HOUR,
        "lifetime": LIFE,
        "renew_at": NOW + 2 * HOUR,
    }
    base.update(kw)
    return RegistryEntry(account=account, channel_id=cid, **base)  # type: ignore[arg-type]


def act(
    kind: str,
    cid: str,
    reason: str,
    account: str = "main",
    drift: tuple[str, ...] = (),
    at_risk: bool = False,
) -> tuple[object, ...]:
    return (kind, account, cid, reason, drift, at_risk)


def summary(result: Plan) -> list[tuple[object, ...]]:
    return [(a.kind, a.account, a.channel_id, a.reason, a.drift, a.at_risk) for a in result.actions]


Listing = Mapping[str, Mapping[str, ObservedChannel] | None]


def listing(
    *channels: ObservedChannel, account: str = "main"
) -> dict[str, dict[str, ObservedChannel] | None]:
    return {account: {c.channel_id: c for c in channels}}


def registry(*entries: RegistryEntry) -> dict[tuple[str, str], RegistryEntry]:
    return {(e.account, e.channel_id): e for e in entries}


@dataclass(frozen=True)
class Case:
    desired: Sequence[ChannelSpec]
    observed: Listing
    owned: Sequence[RegistryEntry]
    expect: Sequence[tuple[object, ...]]
    policy: Policy = POLICY
    confirmed: frozenset[tuple[str, str]] = field(default_factory=frozenset)

    def run(self, now: datetime = NOW) -> Plan:
        return plan(
            self.desired,
            self.observed,
            registry(*self.owned),
            now,
            self.policy,
            Holds(self.confirmed),
        )


UNLISTED: Listing = {"main": None}

CASES = {
    # -- create --------------------------------------------------------------------------------
    "new": Case([spec()], listing(), [], [act("create", "1001", "new")]),
    "no-first-create-listing-failed": Case([spec()], UNLISTED, [], []),
    "no-first-create-account-not-listed": Case([spec()], {}, [], []),
    "vanished": Case([spec()], listing(), [owned()], [act("create", "1001", "vanished")]),
    "lapsed-by-our-expiry-unlisted": Case(
        [spec()],
        UNLISTED,
        [owned(expires_at=NOW - MIN, renew_at=NOW - 4 * HOUR)],
        [act("create", "1001", "lapsed")],
    ),
    "lapsed-by-our-expiry-listed-absent": Case(
        [spec()], listing(), [owned(expires_at=NOW)], [act("create", "1001", "lapsed")]
    ),
    "lapsed-state-unlisted": Case(
        [spec()], UNLISTED, [owned(state="lapsed")], [act("create", "1001", "lapsed")]
    ),
    "listed-but-expired": Case(
        [spec()], listing(seen(expires=NOW - S)), [owned()], [act("create", "1001", "lapsed")]
    ),
    "listed-but-expired-unowned-is-new": Case(
        [spec()], listing(seen(expires=NOW - S)), [], [act("create", "1001", "new")]
    ),
    "never-granted-unlisted": Case(
        [spec()],
        UNLISTED,
        [
            owned(
                state="pending", applied=None, applied_token_digest=None, expires_at=None, renew_at=None
            )
        ],
        [act("create", "1001", "new")],
    ),
    "never-granted-retry": Case(
        [spec()],
        listing(),
        [
            owned(
                state="failed",
                applied=None,
                applied_token_digest=None,
                expires_at=None,
                renew_at=None,
                failures=2,
            )
        ],
        [act("create", "1001", "retry")],
    ),
    # -- adopt ---------------------------------------------------------------------------------
    "adopt": Case([spec()], listing(seen()), [], [act("adopt", "1001", "found")]),
    "adopt-with-drift": Case(
        [spec()],
        listing(seen(notify_url="https://old.example.com/hook", token=None)),
        [],
        [act("adopt", "1001", "found", drift=("notify_url", "token"))],
    ),
    # -- renew ---------------------------------------------------------------------------------
    "in-sync": Case([spec()], listing(seen()), [owned()], []),
    "in-sync-unlisted": Case([spec()], UNLISTED, [owned()], []),
    "due": Case([spec()], UNLISTED, [owned(renew_at=NOW - S)], [act("renew", "1001", "due")]),
    "due-exactly-now": Case(
        [spec()], listing(seen()), [owned(renew_at=NOW)], [act("renew", "1001", "due")]
    ),
    "no-renew-at-known": Case([spec()], UNLISTED, [owned(renew_at=None)], [act("renew", "1001", "due")]),
    "at-risk-before-renew-at": Case(
        [spec()],
        UNLISTED,
        [owned(expires_at=NOW + 30 * MIN, renew_at=NOW + HOUR)],
        [act("renew", "1001", "at_risk", at_risk=True)],
    ),
    "not-yet-at-risk": Case(
        [spec()], UNLISTED, [owned(expires_at=NOW + 31 * MIN, renew_at=NOW + HOUR)], []
    ),
    "observed-expiry-beats-ours-at-risk": Case(
        [spec()],
        listing(seen(expires=NOW + 10 * MIN)),
        [owned()],
        [act("renew", "1001", "at_risk", at_risk=True)],
    ),
    "observed-expiry-beats-ours-live": Case(
        [spec()],
        listing(seen()),
        [owned(expires_at=NOW - MIN, renew_at=NOW - 4 * HOUR)],
        [act("renew", "1001", "due")],
    ),
    "observed-live-beats-lapsed-state": Case([spec()], listing(seen()), [owned(state="lapsed")], []),
    "lifetime-unknown-falls-back-to-ttl": Case(
        [spec(ttl=HOUR)],
        UNLISTED,
        [owned(lifetime=None, expires_at=NOW + 3 * MIN)],
        [act("renew", "1001", "at_risk", at_risk=True)],
    ),
    # -- batching ------------------------------------------------------------------------------
    "batch-within-a-tenth": Case(
        [spec("1"), spec("2"), spec("3"), spec("4"), spec("5", "other")],
        UNLISTED,
        [
            owned("1", renew_at=NOW - S),
            owned("2", renew_at=NOW + 60 * MIN),  # horizon: a tenth of 10h
            owned("3", renew_at=NOW + 61 * MIN),
            owned(
                "4", renew_at=NOW + 7 * MIN, lifetime=HOUR, expires_at=NOW + 30 * MIN
            ),  # horizon 6 min
            owned("5", "other", renew_at=NOW + MIN),  # another account's request
        ],
        [act("renew", "1", "due"), act("renew", "2", "batched")],
    ),
    "batch-own-lifetime": Case(
        [spec("1"), spec("4")],
        UNLISTED,
        [
            owned("1", renew_at=NOW - S),
            owned("4", renew_at=NOW + 6 * MIN, lifetime=HOUR, expires_at=NOW + 30 * MIN),
        ],
        [act("renew", "1", "due"), act("renew", "4", "batched")],
    ),
    "batch-after-at-risk": Case(
        [spec("1"), spec("2")],
        UNLISTED,
        [owned("1", expires_at=NOW + 5 * MIN), owned("2", renew_at=NOW + 30 * MIN)],
        [act("renew", "1", "at_risk", at_risk=True), act("renew", "2", "batched")],
    ),
    "no-batch-without-a-due-renewal": Case([spec("1")], UNLISTED, [owned("1", renew_at=NOW + MIN)], []),
    "repair-does-not-start-a-batch": Case(
        [spec("1", notify_url="https://new.example.com/"), spec("2")],
        UNLISTED,
        [owned("1"), owned("2", renew_at=NOW + MIN)],
        [act("repair", "1", "changed", drift=("notify_url",))],
    ),
    "held-back-not-batched": Case(
        [spec("1"), spec("2")],
        UNLISTED,
        [owned("1", renew_at=NOW - S), owned("2", renew_at=NOW + MIN, retry_at=NOW + 30 * S)],
        [act("renew", "1", "due")],
    ),
    # -- holding back --------------------------------------------------------------------------
    "held-back-due": Case(
        [spec()], UNLISTED, [owned(renew_at=NOW - S, retry_at=NOW + S, failures=1)], []
    ),
    "held-back-terminal-lapsed": Case(
        [spec()],
        listing(),
        [owned(expires_at=NOW - HOUR, retry_at=NOW + MIN, failures=1, terminal=True)],
        [],
    ),
    "retry-time-reached": Case(
        [spec()],
        UNLISTED,
        [owned(renew_at=NOW - MIN, retry_at=NOW, failures=3)],
        [act("renew", "1001", "due")],
    ),
    # -- repair --------------------------------------------------------------------------------
    "all-equals-its-expansion": Case(
        [spec(events=parse_events(["Deals.all", "Contacts.create"]))],
        listing(
            seen(events=parse_events(["Deals.delete", "Contacts.create", "Deals.create", "Deals.edit"]))
        ),
        [owned()],
        [],
    ),
    "missing-event": Case(
        [spec()],
        listing(seen(events=parse_events(["Contacts.create", "Deals.create", "Deals.edit"]))),
        [owned()],
        [act("repair", "1001", "drift", drift=("events",))],
    ),
    "notify-url": Case(
        [spec()],
        listing(seen(notify_url=URL + "&x=1")),
        [owned(renew_at=NOW - S)],
        [act("repair", "1001", "drift", drift=("notify_url",))],
    ),
    "zoho-shows-null-token": Case(
        [spec()],
        listing(seen(token=None)),
        [owned()],
        [act("repair", "1001", "drift", drift=("token",))],
    ),
    "token-set-behind-our-back": Case(
        [spec(token=None)],
        listing(seen(token="other")),
        [owned(was=spec(token=None))],
        [act("repair", "1001", "drift", drift=("token",))],
    ),
    "both-tokens-null": Case(
        [spec(token=None)], listing(seen(token=None)), [owned(was=spec(token=None))], []
    ),
    "flag-not-reported": Case(
        [spec(notify_on_related_action=True)],
        listing(seen(notify_on_related_action=None, return_affected_field_values=None)),
        [owned(was=spec(notify_on_related_action=True))],
        [],
    ),
    "flags-differ": Case(
        [spec(return_affected_field_values=True)],
        listing(seen(notify_on_related_action=False, return_affected_field_values=False)),
        [owned(was=spec(return_affected_field_values=True))],
        [act("repair", "1001", "drift", drift=("return_affected_field_values",))],
    ),
    "condition-echoed-with-null-leaves": Case(
        [spec(notification_condition=canonical_json(CONDITION))],
        listing(seen(notification_condition=json.dumps(CONDITION_AS_LISTED))),
        [owned(was=spec(notification_condition=canonical_json(CONDITION)))],
        [],
    ),
    "condition-dropped-on-zoho": Case(
        [spec(notification_condition=canonical_json(CONDITION))],
        listing(seen(notification_condition=None)),
        [owned(was=spec(notification_condition=canonical_json(CONDITION)))],
        [act("repair", "1001", "drift", drift=("notification_condition",))],
    ),
    "condition-empty-list-is-none": Case(
        [spec()], listing(seen(notification_condition="[]")), [owned()], []
    ),
    "state-file-changed-unlisted": Case(
        [spec(notify_url="https://new.example.com/hook")],
        UNLISTED,
        [owned()],
        [act("repair", "1001", "changed", drift=("notify_url",))],
    ),
    "token-changed-in-state-file": Case(
        [spec(token="rotated")],
        UNLISTED,
        [owned()],
        [act("repair", "1001", "changed", drift=("token",))],
    ),
    "name-and-ttl-are-not-drift": Case(
        [spec(name="sales", ttl=2 * HOUR)], listing(seen()), [owned()], []
    ),
    "drift-and-change-merge": Case(
        [spec(notify_url="https://new.example.com/hook")],
        listing(seen(events=parse_events(["Deals.all"]), notify_url="https://new.example.com/hook")),
        [owned()],
        [act("repair", "1001", "drift", drift=("events", "notify_url"))],
    ),
    "repair-beats-at-risk-renewal": Case(
        [spec()],
        listing(seen(token=None, expires=NOW + 10 * MIN)),
        [owned(renew_at=NOW - HOUR)],
        [act("repair", "1001", "drift", drift=("token",), at_risk=True)],
    ),
    # -- delete --------------------------------------------------------------------------------
    "undesired": Case(
        [spec("1"), spec("2"), spec("3")],
        UNLISTED,
        [owned("1"), owned("2"), owned("3"), owned("4")],
        [act("delete", "4", "undesired")],
    ),
    "undesired-already-gone": Case(
        [spec("1"), spec("2"), spec("3")],
        listing(seen("1"), seen("2"), seen("3")),
        [owned("1"), owned("2"), owned("3"), owned("4")],
        [act("delete", "4", "undesired")],
    ),
    "undesired-held-back": Case(
        [spec("1"), spec("2"), spec("3")],
        UNLISTED,
        [owned("1"), owned("2"), owned("3"), owned("4", retry_at=NOW + MIN, failures=1)],
        [],
    ),
    "mass-delete-fraction-is-global": Case(
        [spec(c, "b") for c in "345678"],
        {"a": None, "b": None},
        [owned("1", "a"), owned("2", "a"), *(owned(c, "b") for c in "345678")],
        [act("delete", "1", "undesired", "a"), act("delete", "2", "undesired", "a")],
    ),
    "mass-delete-confirmed": Case(
        [spec("1")],
        UNLISTED,
        [owned("1", renew_at=NOW - S), owned("2"), owned("3")],
        [act("delete", "2", "undesired"), act("delete", "3", "undesired"), act("renew", "1", "due")],
        confirmed=frozenset({("main", "2"), ("main", "3")}),
    ),
    "empty-allowed-and-fraction-allows": Case(
        [],
        UNLISTED,
        [owned("1"), owned("2")],
        [act("delete", "1", "undesired"), act("delete", "2", "undesired")],
        policy=Policy(allow_empty=True, max_delete_fraction=1.0),
    ),
    "empty-allowed-and-confirmed": Case(
        [],
        UNLISTED,
        [owned("1")],
        [act("delete", "1", "undesired")],
        policy=Policy(allow_empty=True),
        confirmed=frozenset({("main", "1")}),
    ),
    "empty-and-nothing-managed": Case([], {}, [], []),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_plan(case: Case) -> None:
    result = case.run()
    assert summary(result) == list(case.expect)
    assert result.refused == ()
    assert result.changes is bool(case.expect)
    for action in result.actions:
        assert (action.spec is None) is (action.kind == "delete")
        if action.spec is not None:
            assert (action.spec.account, action.spec.channel_id) == (action.account, action.channel_id)


@dataclass(frozen=True)
class Guarded:
    case: Case
    refused: Sequence[tuple[str, str | None, tuple[str, ...]]]


GUARDED = {
    "empty": Guarded(
        Case([], UNLISTED, [owned("1"), owned("2")], []),
        [("empty", "main", ("1", "2"))],
    ),
    "empty-even-if-confirmed": Guarded(
        Case([], UNLISTED, [owned("1")], [], confirmed=frozenset({("main", "1")})),
        [("empty", "main", ("1",))],
    ),
    "empty-allowed-still-mass": Guarded(
        Case([], UNLISTED, [owned("1"), owned("2")], [], policy=Policy(allow_empty=True)),
        [("mass_delete", "main", ("1", "2"))],
    ),
    "mass-delete-other-actions-go-on": Guarded(
        Case(
            [spec("1"), spec("9")],
            listing(seen("1")),
            [owned("1", renew_at=NOW - S), owned("2"), owned("3")],
            [act("create", "9", "new"), act("renew", "1", "due")],
        ),
        [("mass_delete", "main", ("2", "3"))],
    ),
    "mass-delete-partly-confirmed": Guarded(
        Case(
            [spec("1")],
            UNLISTED,
            [owned("1"), owned("2"), owned("3")],
            [],
            confirmed=frozenset({("main", "2")}),
        ),
        [("mass_delete", "main", ("2", "3"))],
    ),
    "mass-delete-confirmation-is-per-account": Guarded(
        Case(
            [spec("1")],
            {},
            [owned("1"), owned("2"), owned("2", "other")],
            [],
            confirmed=frozenset({("main", "2")}),
        ),
        [("mass_delete", "main", ("2",)), ("mass_delete", "other", ("2",))],
    ),
    "a-state-directory-file-never-validated-holds-even-one": Guarded(
        Case(
            [spec("1"), spec("2"), spec("3"), spec("4")],
            UNLISTED,
            [owned("1"), owned("2"), owned("3"), owned("4"), owned("5")],
            [],
            policy=Policy(deletions_held=("beta.toml",), max_delete_fraction=1.0),
        ),
        [("unknown_file", "main", ("5",))],
    ),
    "a-state-directory-hold-before-the-empty-guard": Guarded(
        Case(
            [], UNLISTED, [owned("1")], [], policy=Policy(deletions_held=("b.toml",), allow_empty=True)
        ),
        [("unknown_file", "main", ("1",))],
    ),
    "refusal-counts-held-back": Guarded(
        Case(
            [spec("1"), spec("2")],
            UNLISTED,
            [owned("1"), owned("2"), owned("3", retry_at=NOW + MIN), owned("4")],
            [],
        ),
        [("mass_delete", "main", ("3", "4"))],
    ),
}


@pytest.mark.parametrize("guarded", GUARDED.values(), ids=GUARDED.keys())
def test_guards_refuse_deletes(guarded: Guarded) -> None:
    result = guarded.case.run()
    assert summary(result) == list(guarded.case.expect)
    assert [(r.reason, r.account, r.channel_ids) for r in result.refused] == list(guarded.refused)
    assert all(r.message for r in result.refused)
    assert result.changes


def test_refusal_messages_say_what_to_do() -> None:
    empty = GUARDED["empty"].case.run().refused[0]
    mass = GUARDED["mass-delete-partly-confirmed"].case.run().refused[0]
    assert "allow_empty" in empty.message
    assert "--allow-mass-delete" in mass.message
    assert "2 of 3" in mass.message
    held = GUARDED["a-state-directory-file-never-validated-holds-even-one"].case.run().refused[0]
    assert "beta.toml" in held.message


def test_foreign_channels_are_reported_never_touched() -> None:
    observed: Listing = {
        "main": {"9999": seen("9999"), "1001": seen("1001"), "1002": seen("1002")},
        "other": {"1001": seen("1001")},  # our id, someone else's account
        "third": None,
    }
    policy = Policy(max_delete_fraction=1.0)
    result = plan([spec("1001"), spec("1003")], observed, registry(owned("1002")), NOW, policy)
    assert [(account, c.channel_id) for account, c in result.foreign] == [
        ("main", "9999"),
        ("other", "1001"),
    ]
    assert summary(result) == [
        act("adopt", "1001", "found"),
        act("create", "1003", "new"),
        act("delete", "1002", "undesired"),
    ]


def test_a_foreign_channel_is_never_in_an_action_random_scenarios() -> None:
    """Ownership as a property: over many random worlds no action names a foreign (account, id),
    no channel gets two actions, and the order is (account, kind, id)."""
    rng = random.Random(20260105)
    accounts, ids = ("main", "other"), [str(1000 + i) for i in range(8)]
    for _ in range(400):
        desired = [spec(c, a) for a in accounts for c in ids if rng.random() < 0.4]
        observed: dict[str, dict[str, ObservedChannel] | None] = {
            a: None
            if rng.random() < 0.3
            else {
                c: seen(
                    c,
                    expires=NOW + rng.choice([-MIN, 5 * MIN, 5 * HOUR]),
                    token=rng.choice([None, f"tok-{c}"]),
                )
                for c in ids
                if rng.random() < 0.5
            }
            for a in accounts
        }
        entries = [
            owned(c, a, renew_at=NOW + rng.choice([-HOUR, 20 * MIN, 3 * HOUR]))
            for a in accounts
            for c in ids
            if rng.random() < 0.4
        ]
        result = plan(
            desired, observed, registry(*entries), NOW, Policy(max_delete_fraction=rng.random())
        )
        foreign = {(a, c.channel_id) for a, c in result.foreign}
        touched = [(a.account, a.channel_id) for a in result.actions]
        assert not foreign & set(touched)
        assert len(touched) == len(set(touched))
        assert [(a.account, a.kind, a.channel_id) for a in result.actions] == sorted(
            (a.account, a.kind, a.channel_id) for a in result.actions
        )
        owned_keys = {(e.account, e.channel_id) for e in entries}
        wanted = {(s.account, s.channel_id) for s in desired}
        for a in result.actions:
            key = (a.account, a.channel_id)
            assert key in owned_keys or (a.kind in ("create", "adopt") and key in wanted)
            assert a.kind != "delete" or key not in wanted


R = LIFE / 10
"""The reach of a channel of ``LIFE``: the batch horizon."""


@pytest.mark.parametrize(
    ("entry", "expect"),
    [
        pytest.param(owned(), Due(NOW + 2 * HOUR, R), id="renew-at"),
        pytest.param(
            owned(renew_at=NOW + 6 * HOUR), Due(NOW + 4 * HOUR + 30 * MIN, R), id="emergency-first"
        ),
        pytest.param(owned(renew_at=NOW - MIN), Due(NOW - MIN, R), id="overdue"),
        pytest.param(
            owned(retry_at=NOW + 2 * MIN, renew_at=NOW - MIN),
            Due(NOW + 2 * MIN, R, held=True),
            id="held-back-until-its-retry",
        ),
        pytest.param(owned(retry_at=NOW - MIN), Due(NOW + 2 * HOUR, R), id="retry-passed"),
        pytest.param(owned(retry_at=NOW + HOUR), Due(NOW + 2 * HOUR, R), id="retry-before-its-renewal"),
        pytest.param(
            owned(retry_at=NOW + 2 * HOUR), Due(NOW + 2 * HOUR, R, held=True), id="retry-at-its-renewal"
        ),
        pytest.param(owned(renew_at=None), Due(ALWAYS, R), id="no-renew-at"),
        pytest.param(owned(expires_at=None, state="pending"), Due(ALWAYS, R), id="never-granted"),
        pytest.param(owned(state="lapsed"), Due(ALWAYS, R), id="lapsed"),
        pytest.param(
            owned(state="failed", expires_at=None, retry_at=NOW + MIN),
            Due(NOW + MIN, R, held=True),
            id="failed-create-waits-for-its-retry",
        ),
        pytest.param(
            owned(lifetime=None, renew_at=NOW + 7 * HOUR),
            Due(NOW + 4 * HOUR + 30 * MIN, R),
            id="lifetime-unknown-uses-the-ttl",
        ),
        pytest.param(owned(lifetime=HOUR), Due(NOW + 2 * HOUR, 6 * MIN), id="reach-of-its-lifetime"),
        pytest.param(
            owned(was=spec(events=parse_events(["Leads.create"]))), Due(ALWAYS, R), id="changed"
        ),
        pytest.param(owned(was=spec(token="old")), Due(ALWAYS, R), id="token-changed"),
    ],
)
def test_due(entry: RegistryEntry, expect: Due) -> None:
    assert due(spec(), entry, POLICY) == expect


def test_due_says_exactly_when_the_planner_acts() -> None:
    """What the engine indexes a channel by must agree with the planner both ways: an act that has
    come always has an action (or the engine would wake for nothing forever), one still to come
    never has (or a pass planning only what is due would miss it), and a channel taken along in a
    due renewal has its act within reach and is not held back until it."""
    rng = random.Random(7)
    offsets = [None, -HOUR, -S, timedelta(0), S, 20 * MIN, 45 * MIN, 2 * HOUR, 6 * HOUR]
    batched = 0
    for _ in range(5000):
        now = NOW + rng.choice([-HOUR, timedelta(0), 30 * MIN, 3 * HOUR])
        desired = spec(ttl=rng.choice([LIFE, HOUR]))
        entry = owned(
            was=rng.choice([desired, spec(token="old"), spec(events=parse_events(["Leads.create"]))]),
            state=rng.choice(["active", "at_risk", "lapsed", "failed", "pending"]),
            expires_at=_maybe(now, rng.choice(offsets)),
            renew_at=_maybe(now, rng.choice(offsets)),
            retry_at=_maybe(now, rng.choice(offsets)),
            lifetime=rng.choice([None, LIFE, HOUR]),
        )
        overdue = owned("2000", renew_at=now - MIN)  # a due renewal for the first to join
        view = AccountView("main", {"1001": desired, "2000": spec("2000")}, None, {})
        alone = plan_account(replace(view, entries={"1001": entry}), now, POLICY)
        joined = plan_account(replace(view, entries={"1001": entry, "2000": overdue}), now, POLICY)
        when = due(desired, entry, POLICY)
        assert bool(alone) == (when.act <= now), (entry, now)
        if any(a.channel_id == "1001" and a.reason == "batched" for a in joined):
            batched += 1
            assert when.act <= now + when.reach, (entry, now)
            assert not when.held, (entry, now)
    assert batched > 40


def _maybe(base: datetime, offset: timedelta | None) -> datetime | None:
    return None if offset is None else base + offset


@pytest.mark.parametrize(
    ("expiry_text", "at_risk"),
    [
        pytest.param("2026-01-05T18:00:00+05:30", True, id="ist-exactly-1/20-left"),
        pytest.param("2026-01-05T12:30:00+00:00", True, id="utc-exactly-1/20-left"),
        pytest.param("2026-01-05T12:30:00Z", True, id="z-exactly-1/20-left"),
        pytest.param("2026-01-05T18:01:00+05:30", False, id="ist-a-minute-more"),
        pytest.param("2026-01-05T12:31:00+00:00", False, id="utc-a-minute-more"),
    ],
)
@pytest.mark.parametrize("now", [NOW, NOW.astimezone(IST)], ids=["now-utc", "now-ist"])
def test_expiry_offsets_are_instants(expiry_text: str, at_risk: bool, now: datetime) -> None:
    observed = listing(seen(expires=parse_instant(expiry_text)))
    result = plan([spec()], observed, registry(owned()), now, POLICY)
    assert summary(result) == ([act("renew", "1001", "at_risk", at_risk=True)] if at_risk else [])


@freeze_time("2031-07-01 03:00:00")
def test_the_planner_never_reads_the_clock() -> None:
    """Under a wall clock six years off, the plan follows the ``now`` it is given."""
    result = plan(
        [spec("1"), spec("2")], UNLISTED, registry(owned("1", renew_at=NOW - S), owned("2")), NOW, POLICY
    )
    assert summary(result) == [act("renew", "1", "due")]


def test_actions_are_ordered_by_account_kind_id() -> None:
    desired = [spec("3", "b"), spec("1", "b"), spec("2", "a"), spec("5", "a")]
    entries = registry(
        owned("5", "a", renew_at=NOW - S), owned("4", "a"), owned("3", "b", renew_at=NOW - S)
    )
    policy = Policy(max_delete_fraction=1.0)
    result = plan(desired, {"a": {}, "b": {}}, entries, NOW, policy)
    assert [(a.account, a.kind, a.channel_id) for a in result.actions] == [
        ("a", "create", "2"),
        ("a", "create", "5"),
        ("a", "delete", "4"),
        ("b", "create", "1"),
        ("b", "create", "3"),
    ]


def test_drift_names_fields_never_values() -> None:
    secret = "s3cr3t-token-value"
    result = plan(
        [spec(token=secret)], listing(seen(token="old-secret")), registry(owned()), NOW, POLICY
    )
    (action,) = result.actions
    assert action.drift == ("token",)
    assert secret not in repr(action)
    assert "old-secret" not in repr(action)


def test_a_channel_desired_twice_is_a_bug() -> None:
    with pytest.raises(ValueError, match="desired twice"):
        plan([spec(), spec()], listing(), {}, NOW, POLICY)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        plan([spec()], listing(), {}, NOW.replace(tzinfo=None), POLICY)


def test_empty_plan_has_no_changes() -> None:
    assert plan([], {}, {}, NOW, POLICY) == Plan((), (), ())
    assert not Plan((), (), ()).changes
    assert Plan((), (), (Refusal("empty", "main", ("1",), "m"),)).changes
    assert Plan((Action("delete", "main", "1", None, "undesired"),), (), ()).changes
