"""The pure lease decisions (DESIGN.md section 8), table-driven: no database, no clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

import pytest
from watchkeeper import leases
from watchkeeper.config import AccountSpec, DesiredState
from watchkeeper.leases import Held, Timing
from watchkeeper.policy import Policy
from watchkeeper.values import Board, InstanceBeat, LeaseState
from watchkeeper.zoho.regions import Endpoint

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(seconds=30)
EARLIER = NOW - timedelta(seconds=1)
ACCOUNTS = [f"acc{i:02}" for i in range(10)]


def beat(name: str, digest: str = "d", expires: datetime = LATER) -> InstanceBeat:
    return InstanceBeat(name, expires, digest)


def board(holders: dict[str, tuple[str | None, datetime]], *beats: InstanceBeat) -> Board:
    rows = {a: LeaseState(a, h, 1, until) for a, (h, until) in holders.items()}
    return Board(NOW, rows, list(beats))


@pytest.mark.parametrize(
    ("accounts", "live", "share"),
    [(10, 1, 10), (10, 2, 5), (10, 3, 4), (30, 3, 10), (30, 2, 15), (1, 3, 1), (0, 2, 0), (5, 0, 5)],
)
def test_the_share_is_the_ceiling_of_accounts_over_live_instances(
    accounts: int, live: int, share: int
) -> None:
    assert leases.share(accounts, live) == share


CASES = [
    # (what the board says, instance "a" takes how many, releases how many)
    ("alone, nothing leased: take all", {}, [beat("a")], 10, 0),
    ("a second live instance halves the share", {}, [beat("a"), beat("b")], 5, 0),
    ("a dead instance's beat does not count", {}, [beat("a"), beat("b", expires=EARLIER)], 10, 0),
    ("not yet beaten itself: still counted once", {}, [beat("b")], 5, 0),
    (
        "holding all while b joins: hand back the excess",
        {acc: ("a", LATER) for acc in ACCOUNTS},
        [beat("a"), beat("b")],
        0,
        5,
    ),
    (
        "b's expired leases are free; b is dead",
        {acc: ("b", EARLIER) for acc in ACCOUNTS},
        [beat("a"), beat("b", expires=EARLIER)],
        10,
        0,
    ),
    (
        "b holds its share live: a takes the free rest only",
        {acc: ("b", LATER) for acc in ACCOUNTS[:5]},
        [beat("a"), beat("b")],
        5,
        0,
    ),
    (
        "released rows (holder NULL) are free",
        {acc: (None, LATER) for acc in ACCOUNTS},
        [beat("a")],
        10,
        0,
    ),
    (
        "already at the share: take nothing",
        {acc: ("a", LATER) for acc in ACCOUNTS[:4]} | {acc: ("c", LATER) for acc in ACCOUNTS[4:8]},
        [beat("a"), beat("b"), beat("c")],
        0,
        0,
    ),
]


@pytest.mark.parametrize(
    ("why", "holders", "beats", "takes", "releases"), CASES, ids=[c[0] for c in CASES]
)
def test_decide(
    why: str,
    holders: dict[str, tuple[str | None, datetime]],
    beats: list[InstanceBeat],
    takes: int,
    releases: int,
) -> None:
    moves = leases.decide("a", "d", ACCOUNTS, board(holders, *beats))
    assert (len(moves.take), len(moves.release)) == (takes, releases), why
    assert set(moves.take).isdisjoint(moves.release)
    for account in moves.take:
        assert leases.is_free(board(holders).leases.get(account), NOW)


def test_two_instances_prefer_different_free_accounts() -> None:
    """Each tries the free accounts in an order of its own, so starting together they collide
    on few rows (each row is still taken by one only: the database decides)."""
    empty = board({}, beat("a"), beat("b"))
    a, b = leases.decide("a", "d", ACCOUNTS, empty), leases.decide("b", "d", ACCOUNTS, empty)
    assert len(set(a.take) & set(b.take)) < 5


DEFAULTS = Policy()


def state_of(*accounts: AccountSpec, policy: Policy = DEFAULTS) -> DesiredState:
    named = MappingProxyType({a.name: a for a in accounts})
    return DesiredState(Path("channels.toml"), Path("wk.db"), policy, named, ())


ACME = AccountSpec("acme", "crm", "v8", Endpoint.resolve("crm", "v8"), access_token="at")
HOURS = timedelta(hours=1)

DIGESTS = [
    # (case, a state, another: whether their digests differ)
    ("the same state", state_of(ACME), state_of(ACME), False),
    ("credentials never enter", state_of(ACME), state_of(replace(ACME, access_token="at2")), False),
    (
        "[daemon] never enters",
        state_of(ACME),
        state_of(ACME, policy=Policy(reconcile_every=HOURS)),
        False,
    ),
    ("an own interval set", state_of(ACME), state_of(replace(ACME, reconcile_every=HOURS)), True),
    (
        "an own interval changed",
        state_of(replace(ACME, reconcile_every=HOURS)),
        state_of(replace(ACME, reconcile_every=4 * HOURS)),
        True,
    ),
    (
        "an own interval equal to the daemon's still enters",
        state_of(ACME, policy=Policy(reconcile_every=HOURS)),
        state_of(replace(ACME, reconcile_every=HOURS), policy=Policy(reconcile_every=HOURS)),
        True,
    ),
    (
        "another region",
        state_of(ACME),
        state_of(replace(ACME, endpoint=Endpoint.resolve("crm", "v8", "eu"))),
        True,
    ),
]


@pytest.mark.parametrize(
    ("one", "other", "differ"), [c[1:] for c in DIGESTS], ids=[c[0] for c in DIGESTS]
)
def test_the_digest_follows_the_account_keys_instances_must_agree_on(
    one: DesiredState, other: DesiredState, differ: bool
) -> None:
    assert (leases.digest(one) != leases.digest(other)) is differ


def test_a_state_without_own_intervals_keeps_the_digest_it_had() -> None:
    """What the version before the per-account ``reconcile_every`` computes for this state: in a
    rolling upgrade, instances of both versions do not see each other diverge."""
    assert leases.digest(state_of(ACME)) == "24c71006045ffc72"


def test_live_instances_with_another_digest_are_diverged() -> None:
    seen = board({}, beat("a", "mine"), beat("b", "mine"), beat("c", "other"), beat("d", "x", EARLIER))
    assert leases.decide("a", "mine", ACCOUNTS, seen).diverged == ("c",)


TIMING = Timing(timedelta(seconds=60))


@pytest.mark.parametrize(
    ("held", "now", "allowed"),
    [
        (None, NOW, False),
        (Held(1, NOW + timedelta(seconds=60)), NOW, True),
        (Held(1, NOW + timedelta(seconds=21)), NOW, True),
        (Held(1, NOW + timedelta(seconds=20)), NOW, False),  # the margin: lease/3 before the end
        (Held(1, NOW - timedelta(seconds=1)), NOW, False),
    ],
)
def test_a_unit_may_call_zoho_only_with_more_than_the_margin_left(
    held: Held | None, now: datetime, allowed: bool
) -> None:
    assert leases.may_call(held, now, TIMING) is allowed


@pytest.mark.parametrize(
    ("last", "now", "due"),
    [
        (None, NOW, True),
        (NOW, NOW + timedelta(seconds=19), False),
        (NOW, NOW + timedelta(seconds=20), True),  # every lease/3
    ],
)
def test_a_cycle_is_due_every_third_of_the_lease(
    last: datetime | None, now: datetime, due: bool
) -> None:
    assert leases.cycle_due(last, now, TIMING) is due


def test_lost_are_the_held_leases_not_renewed_at_their_epoch() -> None:
    held = {"x": Held(3, LATER), "y": Held(1, LATER), "z": Held(2, LATER)}
    renewed = {"x": LeaseState("x", "a", 3, LATER), "y": LeaseState("y", "a", 2, LATER)}
    assert leases.lost(held, renewed) == ["y", "z"]


def test_status_names_a_holder_only_while_its_lease_is_live() -> None:
    from watchkeeper import report

    rows = report.accounts_rows(
        ["a", "b", "c"],
        [LeaseState("a", "host-a", 3, LATER), LeaseState("b", None, 2, NOW),
         LeaseState("c", "host-b", 1, EARLIER)],
        NOW,
    )  # fmt: skip
    assert [(r["account"], r["holder"]) for r in rows] == [("a", "host-a"), ("b", None), ("c", None)]
    assert rows[0]["lease_expires_at"] == "2030-01-01T12:00:30Z"
    text = report.status_text([], [], NOW, rows)
    assert "host-a" in text
    assert "host-b" not in text
