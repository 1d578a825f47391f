"""PURE: when to renew, how long to back off, when a channel is at risk.

Nothing here reads the clock or does I/O; randomness comes in as an ``random.Random`` so that
tests (and the soak harness) are reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from watchkeeper.model import RegistryEntry, utc


@dataclass(frozen=True, slots=True)
class Policy:
    """The tunables of DESIGN.md section 2 ``[daemon]`` that decide timing and guards."""

    reconcile_every: timedelta = timedelta(minutes=30)
    """How often an account is looked at, unless its own ``reconcile_every`` says otherwise
    (``DesiredState.reconcile_every``)."""
    renew_window: tuple[float, float] = (0.60, 0.70)
    retry_initial: timedelta = timedelta(seconds=30)
    retry_max: timedelta = timedelta(minutes=15)
    max_delete_fraction: float = 0.25
    allow_empty: bool = False
    deletions_held: tuple[str, ...] = ()
    """Files of a state directory that have never validated: what they declare is unknown, so no
    managed channel is deleted while there are any (watchkeeper.statedir)."""
    batch_fraction: float = 0.10
    """A due renewal takes along the account's channels due within this fraction of their lifetime."""
    emergency_fraction: float = 0.05
    """Under this fraction of the lifetime left, renew at once (channel.at_risk)."""
    terminal_retry: timedelta = timedelta(hours=1)
    """A terminal failure is retried after a reload, or after this long."""
    retry_margin: timedelta = timedelta(seconds=5)
    """A retry capped by the expiry is placed this far before it, so the request lands in time."""
    retry_floor: timedelta = timedelta(seconds=1)
    """The least a retry waits: a channel failing right at its expiry must not spin (under a frozen
    clock a zero wait would never let time move on)."""
    clamp_fraction: float = 0.90
    """Zoho granting under this fraction of the requested lifetime means it used its default."""
    probe_max: timedelta = timedelta(minutes=2)
    """After a failed listing, the next one comes within this: a failing listing costs one request,
    and it is the probe that ends an outage's holds (so lapsed channels come back at once)."""
    full_listing_every: timedelta = timedelta(hours=6)
    """An account whose listing takes several pages is listed in full this often; its other looks
    (every ``reconcile_every``) are one-page tallies of its row count (``tallies``)."""
    reconcile_jitter: float = 0.10
    """Listings are spread by this fraction either way so several daemons do not list in step."""
    max_rate_limit_pause: timedelta = timedelta(hours=1)
    """The longest a 429's Retry-After pauses an account: channels must not lapse on a server's whim."""
    unknown_expiry_cap: timedelta = timedelta(hours=1)
    """When Zoho reports no expiry for a success, assume no more than its documented default."""
    probe_every: timedelta = timedelta(minutes=1)
    """Past a channel's emergency point a pause or hold gives way to a probe this often, until the
    channel expires: Zoho recovering seconds later must not cost a lapse."""


def draw_renew_at(
    granted_at: datetime, expires_at: datetime, policy: Policy, rng: random.Random
) -> datetime:
    """A random point within ``renew_window`` of the lifetime Zoho granted (not the one requested:
    Zoho may have clamped it), drawn once per renewal and stored so a restart does not redraw it.
    A lifetime already over (clock skew, a slow answer) renews at once."""
    lifetime = utc(expires_at) - utc(granted_at)
    if lifetime <= timedelta(0):
        return utc(granted_at)
    low, high = policy.renew_window
    return utc(granted_at) + lifetime * rng.uniform(low, high)


def emergency_at(expires_at: datetime, lifetime: timedelta, policy: Policy) -> datetime:
    """From this instant on the channel is at risk and is renewed at once, whatever its renew_at."""
    return utc(expires_at) - lifetime * policy.emergency_fraction


def is_at_risk(expires_at: datetime, lifetime: timedelta, now: datetime, policy: Policy) -> bool:
    """At most ``emergency_fraction`` of the lifetime left. Inclusive, so that waking up exactly at
    ``emergency_at`` (what next_due returns) finds the renewal due instead of waking again."""
    return utc(now) >= emergency_at(expires_at, lifetime, policy)


def backoff(failures: int, policy: Policy, rng: random.Random) -> timedelta:
    """Full jitter: uniform over [0, min(retry_max, retry_initial * 2**(failures-1))], so a fleet
    failing together does not retry together. ``failures`` counts the failure just had (>= 1)."""
    if failures < 1:
        raise ValueError(f"failures must be at least 1, not {failures}")
    # The exponent is bounded so a long failure streak cannot overflow timedelta.
    cap = min(policy.retry_max, policy.retry_initial * (1 << min(failures - 1, 32)))
    return cap * rng.random()


def next_retry(
    now: datetime,
    failures: int,
    expires_at: datetime | None,
    policy: Policy,
    rng: random.Random,
    *,
    terminal: bool = False,
) -> datetime:
    """When a failed channel is next tried.

    Transient: now + backoff, but while the channel is still live the retry comes ``retry_margin``
    before its expiry at the latest, so backing off never lets it lapse. Never sooner than
    ``retry_floor`` (which may pass an expiry closer than that: nothing can be done in time then,
    and the lapse is repaired by re-creating). Terminal: retrying will not help, so wait
    ``terminal_retry`` (a reload retries sooner), expiry or not.
    """
    now = utc(now)
    if terminal:
        return now + policy.terminal_retry
    return retry_after(now, backoff(failures, policy, rng), expires_at, policy)


def retry_after(
    now: datetime, delay: timedelta, expires_at: datetime | None, policy: Policy
) -> datetime:
    """``now + delay`` under the caps of ``next_retry`` (expiry margin, floor). The engine draws one
    delay per failed request and applies it to every channel of that request, so a batch that
    failed together is retried together: one request, not one per channel."""
    now = utc(now)
    if expires_at is not None and utc(expires_at) > now:
        delay = min(delay, utc(expires_at) - policy.retry_margin - now)
    return now + max(delay, policy.retry_floor)


def batch_horizon(lifetime: timedelta, policy: Policy) -> timedelta:
    """How far ahead of its renew_at a channel may be renewed to join a due renewal of its account:
    a little lifetime traded for far fewer requests."""
    return lifetime * policy.batch_fraction


def expiry_clamped(requested: timedelta, granted: timedelta, policy: Policy) -> bool:
    """Zoho answered with far less than asked (it falls back to a 1-2 hour default for expiries it
    dislikes): worth a ``channel.expiry_clamped`` warning; the schedule follows what it granted."""
    return granted < requested * policy.clamp_fraction


def next_reconcile(now: datetime, every: timedelta, policy: Policy, rng: random.Random) -> datetime:
    """The account's next look: ``every`` (its own ``reconcile_every``, else ``[daemon]``'s) with
    ±``reconcile_jitter`` spread."""
    spread = policy.reconcile_jitter
    return utc(now) + every * rng.uniform(1 - spread, 1 + spread)


def tallies(rows: int | None, per_page: int, now: datetime, full_due: datetime | None) -> bool:
    """Whether a look at the account can be a tally of its row count (one page) rather than a full
    listing: the count of the last full listing is known (nothing written since can have moved
    it), that listing took more than one page (a one-page listing costs what a tally does and
    shows more), and the next full listing is not due (``full_due``, on our clock)."""
    if rows is None or rows <= per_page or full_due is None:
        return False
    return utc(now) < utc(full_due)


def capped_hold(now: datetime, wanted: datetime, entry: RegistryEntry, policy: Policy) -> datetime:
    """No pause or hold outlasts the emergency point of a channel it holds back: until then it
    lasts as ``wanted``; past it, the channel is probed every ``probe_every`` until it expires
    (after that there is nothing left to save, and ``wanted`` stands). Instants on Zoho's clock."""
    now, wanted = utc(now), utc(wanted)
    if entry.expires_at is None or entry.lifetime is None or utc(entry.expires_at) <= now:
        return wanted
    point = emergency_at(entry.expires_at, entry.lifetime, policy)
    if point > now:
        return min(wanted, point)
    return min(wanted, now + max(policy.probe_every, policy.retry_floor))


def account_pause(
    now: datetime, wanted: datetime, entries: Iterable[RegistryEntry], policy: Policy
) -> datetime:
    """``capped_hold`` over every channel of a paused account (a pause holds them all back)."""
    return min((capped_hold(now, wanted, entry, policy) for entry in entries), default=utc(wanted))


def rate_limit_pause(retry_after: float | None, policy: Policy) -> timedelta:
    """How long a 429 pauses the account: its Retry-After (or the first backoff step when it sent
    none), never more than ``max_rate_limit_pause``, whatever number the server wrote."""
    if retry_after is None or not 0 < retry_after < float("inf"):
        return min(policy.retry_initial, policy.max_rate_limit_pause)
    cap = policy.max_rate_limit_pause.total_seconds()
    return timedelta(seconds=min(retry_after, cap))


def listing_retry(
    now: datetime, failures: int, every: timedelta, policy: Policy, rng: random.Random
) -> datetime:
    """After ``failures`` listings of an account failed in a row, the next one comes on the backoff
    scale, within ``probe_max`` and never later than its regular look (``every``): a failing
    listing costs one request, and it is the probe that ends an outage's holds (so lapsed channels
    come back at once)."""
    delay = min(backoff(failures, policy, rng), policy.probe_max)
    return utc(now) + min(every, max(delay, policy.retry_floor))
