"""Carries out plans: one pass lists (when due), detects lapses, plans, calls Zoho, records.

The engine is the imperative shell around the planner. Everything it learns goes to the store
before and after each call, so a crash at any point leaves a state the next pass repairs:
a channel is entered in the registry (``pending``) before its first POST, which makes a crash
between the POST and the answer come back as a renewal of a channel we own, never as a
duplicate or an adoption of our own channel.

Instants in the registry and the gap ledger are on Zoho's clock (its reported expiries, our own
clock corrected by the skew measured from the ``Date`` header); ``now`` arguments are our clock.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from watchkeeper import logs, planner, policy
from watchkeeper.config import AccountSpec, DesiredState
from watchkeeper.model import (
    ChannelSpec,
    ItemResult,
    ObservedChannel,
    RegistryEntry,
    WatchItem,
    token_digest,
    url_digest,
)
from watchkeeper.planner import Action, Plan, Refusal
from watchkeeper.store import Store
from watchkeeper.zoho.client import WatchClient
from watchkeeper.zoho.errors import AuthError, RateLimited, TerminalError, TransientError, ZohoError

Key = tuple[str, str]
TERMINAL_ITEM_CODES = frozenset(
    {
        "INVALID_DATA",
        "MANDATORY_NOT_FOUND",
        "NO_PERMISSION",
        "OAUTH_SCOPE_MISMATCH",
        "NOT_ALLOWED",
        "EXPECTED_FIELD_MISSING",
        "AMBIGUITY_DURING_PROCESSING",
        "DEPENDENT_FIELD_MISSING",
    }
)
"""Item codes that say the channel's definition or the user's rights are wrong: retried only after a
reload or ``terminal_retry``. Any other refusal (INTERNAL_ERROR, or no answer for the item) is
retried with backoff, capped before the channel's expiry."""
MAX_RATE_LIMIT_PAUSE = timedelta(hours=1)
"""The longest a 429's Retry-After pauses an account: channels must not lapse on a server's whim."""
UNKNOWN_EXPIRY_CAP = timedelta(hours=1)
"""When Zoho reports no expiry for a success, assume no more than its documented default."""


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class PassReport:
    """What one pass did: the fields of the ``reconcile.finished`` log event."""

    listed: bool = False
    desired: int = 0
    active: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    foreign: int = 0
    refused: list[Refusal] = field(default_factory=list)
    list_failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.refused and not self.list_failed


class Engine:
    @property
    def state(self) -> DesiredState:
        return self._state

    @state.setter
    def state(self, state: DesiredState) -> None:
        self._state = state
        self._specs: dict[Key, ChannelSpec] = {(c.account, c.channel_id): c for c in state.channels}
        self._known.update(self._specs)

    def __init__(
        self,
        state: DesiredState,
        store: Store,
        clients: Mapping[str, WatchClient],
        *,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        connect: Callable[[AccountSpec], WatchClient] | None = None,
    ) -> None:
        self._known: dict[Key, ChannelSpec] = {}
        """Every spec this process was given: what keeps a channel alive whose deletion a guard
        refused (the state file no longer describes it, and the store never keeps tokens)."""
        self._retained: dict[Key, ChannelSpec] = {}
        self._refused: frozenset[Key] = frozenset()
        """Owned channels whose deletion a guard holds back: watched for lapses even when no spec
        is known to renew them with (after a restart, for a channel that had a token)."""
        self.state = state
        self.store = store
        self.clients = dict(clients)
        self._connect = connect
        """Builds the client of an account that a reload adds or changes."""
        self.clock = clock
        self.rng = rng or random.Random()
        self.log = logs.get_logger()
        self.registry: dict[Key, RegistryEntry] = store.registry()
        self._open: set[Key] = {(g.account, g.channel_id) for g in store.open_gaps()}
        """Channels with a gap open in the store."""
        self.next_reconcile = clock()
        self.paused: dict[str, datetime] = {}
        """account -> our-clock instant before which no watch request goes out (429, auth)."""
        self._foreign_seen: set[Key] = set()
        self._buffer: dict[datetime | None, list[RegistryEntry]] | None = None
        self.stopping = False
        """Set from another thread on SIGTERM: the pass makes no further call."""
        self._list_failures = 0
        """Listings failed in a row (any account): spaces the next attempt like a backoff."""
        intents = store.pending_intents()
        if intents:
            self.log.warning("engine.interrupted", calls=len(intents), note="listing before any change")

    @property
    def skew(self) -> timedelta:
        """Zoho's clock minus ours: the median over the accounts' measurements."""
        skews = sorted(client.skew for client in self.clients.values())
        return skews[len(skews) // 2] if skews else timedelta(0)

    # -- the two calls everything else is built from ---------------------------------------

    def next_due(self) -> datetime:
        """Our-clock instant at which something next needs doing."""
        now = self.clock()
        zoho_now = now + self.skew
        due = [self.next_reconcile]
        for account in self.state.accounts:
            entries = [e for k, e in self.registry.items() if k[0] == account and self._kept(k)]
            at = policy.next_due(entries, zoho_now, self.state.policy)
            if at is not None:
                local = at - self.skew
                due.append(max(local, self.paused.get(account, local)))
        return min(due)

    def run_due(self, now: datetime | None = None) -> PassReport:
        now = now or self.clock()
        return self.run_pass(now, listing=now >= self.next_reconcile)

    def reload(self, state: DesiredState) -> None:
        """A new desired state: retry what failed for good and reconcile at once.

        An account that is new or changed (region, version, credentials) gets a new client; one
        that is gone keeps its client, so that its channels can still be deleted."""
        if self._connect is not None:
            for name, account in state.accounts.items():
                if self.state.accounts.get(name) != account:
                    self.clients[name] = self._connect(account)
        self.state = state
        self.store.clear_retries()
        self.registry = self.store.registry()
        self.paused.clear()
        self.next_reconcile = self.clock()

    def undesired(self) -> frozenset[Key]:
        """Owned channels the state file no longer wants: what ``--allow-mass-delete`` confirms."""
        return frozenset(k for k in self.registry if k not in self._specs)

    # -- one pass ------------------------------------------------------------------------------

    def run_pass(
        self, now: datetime, *, listing: bool, confirmed: frozenset[Key] = frozenset()
    ) -> PassReport:
        report = PassReport(listed=listing, desired=len(self.state.channels))
        if listing:
            # Decided before anything can fail, so that a pass that fails is not due again at once.
            self.next_reconcile = policy.next_reconcile(now, self.state.policy, self.rng)
        observed: dict[str, dict[str, ObservedChannel] | None] = {}
        for account in self.state.accounts:
            observed[account] = None
            listed_at = None
            if listing and self._may_call(account, now):
                listed_at = self._list(account, now, report)
            # Zoho's time is taken after the listing: a freshly started engine learns the skew from
            # its Date header, and a channel that expired less than the skew ago must be judged
            # expired, not vanished.
            zoho_now = now + self.clients[account].skew
            if listed_at is not None:
                # An expired row is not a live channel, whether or not Zoho still lists it.
                observed[account] = {c: ch for c, ch in listed_at.items() if ch.expires_at > zoho_now}
            with self._batched_writes():
                listed = observed[account]
                if listed is not None:
                    self._absorb_listing(account, listed, zoho_now)
                self._detect_lapses(account, listed, zoho_now)
        if report.list_failed:
            # Zoho is failing: the listing doubles as the probe that it is back, so it is retried
            # on the channels' backoff scale rather than a whole reconcile period later.
            self._list_failures += 1
            tuning = self.state.policy
            delay = min(policy.backoff(self._list_failures, tuning, self.rng), tuning.probe_max)
            retry = now + min(tuning.reconcile_every, max(delay, tuning.retry_floor))
            self.next_reconcile = min(self.next_reconcile, retry)
        elif listing:
            self._list_failures = 0
        zoho_now = now + self.skew
        result = self.plan(observed, zoho_now, confirmed | self._confirmations())
        self._report_plan(result, observed, report)
        for account, client in self.clients.items():
            actions = [a for a in result.actions if a.account == account]
            if actions and self._may_call(account, now):
                self._execute(account, client, actions, now, report)
        report.active = sum(
            1 for k, e in self.registry.items() if e.state == "active" and self._desired(k)
        )
        self.log.info(
            "reconcile.finished",
            listed=listing,
            desired=report.desired,
            active=report.active,
            created=report.counts["create"],
            adopted=report.counts["adopt"],
            renewed=report.counts["renew"],
            repaired=report.counts["repair"],
            deleted=report.counts["delete"],
            failed=report.failed,
            foreign=report.foreign,
        )
        return report

    def _confirmations(self) -> frozenset[Key]:
        """Deletions confirmed while the daemon ran; a confirmation lapses once its channel is
        wanted again, so it cannot approve a later, different removal."""
        confirmed = self.store.confirmed_deletes()
        stale = [key for key in confirmed if key in self._specs]
        if stale:
            self.store.clear_confirmations(stale)
        return confirmed.difference(stale)

    def list_all(self) -> dict[str, dict[str, ObservedChannel] | None]:
        """Every account's listing (``watchkeeper plan``); raises on the first that fails."""
        return {account: self.clients[account].list() for account in self.state.accounts}

    def plan(
        self,
        observed: Mapping[str, Mapping[str, ObservedChannel] | None],
        zoho_now: datetime,
        confirmed: frozenset[Key] = frozenset(),
    ) -> Plan:
        """The planner over every account at once (its guards weigh all managed channels).

        Channels whose deletion a guard refused are kept alive with the last spec this process
        knew for them: a refusal exists to protect them, so letting them lapse would defeat it.
        """
        desired = list(self.state.channels)
        first = planner.plan(
            desired, observed, self.registry, zoho_now, self.state.policy, confirmed_deletes=confirmed
        )
        self._refused = frozenset(
            (r.account, c) for r in first.refused if r.account for c in r.channel_ids
        )
        self._retained = {k: spec for k in self._refused if (spec := self._last_spec(k)) is not None}
        if not self._retained:
            return first
        kept = planner.plan(
            desired + list(self._retained.values()),
            observed,
            self.registry,
            zoho_now,
            self.state.policy,
            confirmed_deletes=confirmed,
        )
        return Plan(kept.actions, kept.foreign, first.refused)

    def _last_spec(self, key: Key) -> ChannelSpec | None:
        """The spec to keep a refused channel alive with: the last one this process was given,
        else the one the store applied when it carried no token (the store never keeps tokens,
        and renewing without one would null it) and its notify_url is kept as written (no secret
        in it was masked)."""
        if key in self._known:
            return self._known[key]
        entry = self.registry.get(key)
        if entry is None or entry.applied is None or entry.applied_token_digest is not None:
            return None
        digest = entry.applied_url_digest
        if digest is not None and url_digest(*key, entry.applied.notify_url) != digest:
            return None
        return entry.applied

    def _list(
        self, account: str, now: datetime, report: PassReport
    ) -> dict[str, ObservedChannel] | None:
        try:
            listed = self.clients[account].list()
        except ZohoError as exc:
            report.list_failed.append(account)
            self._account_failure(account, "GET", exc, now, [])
            return None
        self._end_holds(account)
        return listed

    def _end_holds(self, account: str) -> None:
        """Zoho just answered this account: channels held back by a transient failure (an outage
        that is now over) are tried in this pass, not at the end of their backoff."""
        with self._batched_writes():
            for key, entry in self.registry.items():
                if key[0] == account and entry.retry_at is not None and not entry.terminal:
                    self._put(replace(entry, retry_at=None))

    def _paused(self, account: str, now: datetime) -> bool:
        return self.paused.get(account, now) > now

    def _report_plan(
        self,
        result: Plan,
        observed: Mapping[str, Mapping[str, ObservedChannel] | None],
        report: PassReport,
    ) -> None:
        for refusal in result.refused:
            self.log.error(
                "config.refused",
                account=refusal.account,
                reason=refusal.reason,
                channels=list(refusal.channel_ids),
                message=refusal.message,
            )
            with self._batched_writes():
                for channel_id in refusal.channel_ids:
                    self._update((refusal.account or "", channel_id), state="removing")
        report.refused.extend(result.refused)
        for account, listed in observed.items():
            if listed is not None:
                self.store.set_foreign(account, [c for acc, c in result.foreign if acc == account])
        for account, channel in result.foreign:
            report.foreign += 1
            if (account, channel.channel_id) not in self._foreign_seen:
                self._foreign_seen.add((account, channel.channel_id))
                self.log.info(
                    "channel.foreign",
                    account=account,
                    channel_id=channel.channel_id,
                    modules=channel.modules,
                )

    # -- listing and lapses ----------------------------------------------------------------

    def _absorb_listing(
        self, account: str, observed: Mapping[str, ObservedChannel], zoho_now: datetime
    ) -> None:
        """Zoho's listing is the truth about expiries; it also closes gaps it shows healed."""
        seen = [cid for (acc, cid) in self.registry if acc == account and cid in observed]
        self.store.mark_seen(account, seen, zoho_now)
        for channel_id in seen:
            key = (account, channel_id)
            entry = self.registry[key]
            live = observed[channel_id]
            if entry.expires_at != live.expires_at:
                self._update(key, expires_at=live.expires_at)
            if key in self._open:
                self._recovered(key, zoho_now)

    def _detect_lapses(
        self, account: str, observed: Mapping[str, ObservedChannel] | None, zoho_now: datetime
    ) -> None:
        """Open a gap for every desired owned channel known not to be live."""
        for key, entry in list(self.registry.items()):
            if key[0] != account or entry.expires_at is None or key in self._open:
                continue
            if not self._watched(key):
                continue
            expired = entry.expires_at <= zoho_now
            vanished = observed is not None and key[1] not in observed
            if not (expired or vanished):
                continue
            if expired:
                start, cause = entry.expires_at, "expired"
            else:
                start, cause = self.store.last_seen(*key) or zoho_now, "vanished"
            self._lapsed(key, start, cause)

    def _lapsed(self, key: Key, start: datetime, cause: str) -> None:
        gap = self.store.open_gap(key[0], key[1], start, cause)
        self._open.add(key)
        self._update(key, state="lapsed")
        self.log.error(
            "channel.lapsed",
            account=key[0],
            channel_id=key[1],
            name=self._name(key),
            start=gap.start,
            cause=cause,
        )

    def _recovered(self, key: Key, end: datetime) -> None:
        if key not in self._open:
            return
        self._open.discard(key)
        gap = self.store.close_gap(key[0], key[1], end)
        if gap is not None:
            self.log.warning(
                "channel.recovered",
                account=key[0],
                channel_id=key[1],
                name=self._name(key),
                start=gap.start,
                end=gap.end,
                cause=gap.cause,
            )

    # -- carrying out actions --------------------------------------------------------------

    def _execute(
        self,
        account: str,
        client: WatchClient,
        actions: Sequence[Action],
        now: datetime,
        report: PassReport,
    ) -> None:
        with self._batched_writes():
            for action in actions:
                self._announce(account, action)
        by_method: dict[str, list[Action]] = {"POST": [], "PUT": [], "PATCH": []}
        deletes: list[Action] = []
        for action in actions:
            if action.kind == "delete":
                deletes.append(action)
            else:
                by_method[_method(action)].append(action)
        recreate: list[Action] = []
        for method, batch in by_method.items():
            if batch and self._may_call(account, now):
                recreate += self._write(account, client, method, batch, now, report)
        if recreate and self._may_call(account, now):
            self._write(account, client, "POST", recreate, now, report)
        if deletes and self._may_call(account, now):
            self._delete(account, client, deletes, now, report)

    def _may_call(self, account: str, now: datetime) -> bool:
        """No call once a stop was asked for (SIGTERM finishes the call in flight, not the pass),
        nor to an account paused by a 429 or bad credentials."""
        return not self.stopping and not self._paused(account, now)

    def _announce(self, account: str, action: Action) -> None:
        """Warn about what is about to be fixed, once per channel and condition rather than on
        every retry: ``channel.at_risk`` (the state records it), ``channel.drift``."""
        key = (account, action.channel_id)
        entry = self.registry.get(key)
        if action.at_risk and entry is not None and entry.state not in ("at_risk", "lapsed"):
            self._put(replace(entry, state="at_risk"))
            self.log.warning(
                "channel.at_risk",
                account=account,
                channel_id=action.channel_id,
                name=self._name(key),
                expires_at=entry.expires_at,
            )
        if action.drift and (entry is None or entry.failures == 0):
            self.log.warning(
                "channel.drift",
                account=account,
                channel_id=action.channel_id,
                name=self._name(key),
                drift=list(action.drift),
                reason=action.reason,
            )

    def _write(
        self,
        account: str,
        client: WatchClient,
        method: str,
        actions: Sequence[Action],
        now: datetime,
        report: PassReport,
    ) -> list[Action]:
        """One POST/PUT/PATCH of a batch; returns the actions to re-create (gone from Zoho)."""
        requested_at = client.server_now()
        items = [WatchItem(_spec(a), requested_at + _spec(a).ttl) for a in actions]
        with self._batched_writes():
            for action in actions:
                if (account, action.channel_id) not in self.registry:
                    self._put(
                        RegistryEntry(account=account, channel_id=action.channel_id, state="pending")
                    )
        self.store.begin(account, [a.channel_id for a in actions], method, requested_at)
        call = {"POST": client.enable, "PUT": client.replace, "PATCH": client.update}[method]
        results: list[ItemResult]
        error: ZohoError | None = None
        try:
            results = call(items)
        except ZohoError as exc:
            error = exc
            results = list(getattr(exc, "completed", None) or [])
        granted_at = client.server_now()
        recreate: list[Action] = []
        done = {r.channel_id: r for r in results if _settled(r, method)}
        with self._batched_writes():
            for action, item in zip(actions, items, strict=True):
                result = done.get(action.channel_id)
                if result is None:
                    continue
                if result.ok:
                    self._succeeded(account, action, item, result, granted_at, report)
                elif result.not_found and method != "POST":
                    self._vanished(account, action, granted_at)
                    recreate.append(replace(action, kind="create", reason="vanished"))
                else:
                    self._rejected(account, action, result, now, report)
            self._unsettled(
                account, method, [a.channel_id for a in actions], done, results, error, now, report
            )
        # An accepted write shows the channel live as a listing does: should it vanish before the
        # next listing, its gap starts here, not at the listing that notices.
        self.store.mark_seen(account, [cid for cid, r in done.items() if r.ok], granted_at)
        self.store.done(account, [a.channel_id for a in actions])
        return recreate

    def _succeeded(
        self,
        account: str,
        action: Action,
        item: WatchItem,
        result: ItemResult,
        granted_at: datetime,
        report: PassReport,
    ) -> None:
        spec = item.spec
        key = (account, spec.channel_id)
        expires_at = result.expires_at or min(item.expires_at, granted_at + UNKNOWN_EXPIRY_CAP)
        lifetime = max(expires_at - granted_at, timedelta(seconds=1))
        previous = self.registry.get(key)
        was_clamped = (
            previous is not None
            and previous.lifetime is not None
            and policy.expiry_clamped(spec.ttl, previous.lifetime, self.state.policy)
        )
        if policy.expiry_clamped(spec.ttl, lifetime, self.state.policy) and not was_clamped:
            self.log.warning(
                "channel.expiry_clamped",
                account=account,
                channel_id=spec.channel_id,
                name=spec.name,
                requested=spec.ttl,
                granted=lifetime,
                expires_at=expires_at,
            )
        self._put(
            RegistryEntry(
                account=account,
                channel_id=spec.channel_id,
                state="active",
                applied=replace(spec, token=None),
                applied_token_digest=token_digest(account, spec.channel_id, spec.token),
                expires_at=expires_at,
                lifetime=lifetime,
                renew_at=policy.draw_renew_at(granted_at, expires_at, self.state.policy, self.rng),
            ),
            last_renewed_at=granted_at,
        )
        self._recovered(key, granted_at)
        event = {
            "create": "channel.created",
            "adopt": "channel.adopted",
            "renew": "channel.renewed",
        }.get(action.kind, "channel.repaired")
        fields: dict[str, Any] = {}
        if action.drift:
            fields["drift"] = list(action.drift)
        self.log.info(
            event,
            account=account,
            channel_id=spec.channel_id,
            name=spec.name,
            reason=action.reason,
            expires_at=expires_at,
            **fields,
        )
        report.counts[action.kind] += 1

    def _vanished(self, account: str, action: Action, zoho_now: datetime) -> None:
        key = (account, action.channel_id)
        entry = self.registry.get(key)
        if entry is None or key in self._open:
            return
        if entry.expires_at is not None and entry.expires_at <= zoho_now:
            self._lapsed(key, entry.expires_at, "expired")
        else:
            self._lapsed(key, self.store.last_seen(*key) or zoho_now, "vanished")

    def _rejected(
        self, account: str, action: Action, result: ItemResult, now: datetime, report: PassReport
    ) -> None:
        key = (account, action.channel_id)
        entry = self.registry.get(key) or RegistryEntry(
            account=account, channel_id=action.channel_id, state="pending"
        )
        failures = entry.failures + 1
        client = self.clients[account]
        retry_at = policy.next_retry(
            now + client.skew, failures, entry.expires_at, self.state.policy, self.rng, terminal=True
        )
        reason = " ".join(p for p in (result.code, result.api_name) if p)
        self._put(
            replace(
                entry,
                state="failed",
                failures=failures,
                retry_at=retry_at,
                last_error=reason,
                terminal=True,
            )
        )
        self.log.error(
            "channel.rejected",
            account=account,
            channel_id=action.channel_id,
            name=self._name(key),
            code=result.code,
            api_name=result.api_name,
            json_path=result.json_path,
            message=result.message,
        )
        report.failed += 1

    def _delete(
        self,
        account: str,
        client: WatchClient,
        actions: Sequence[Action],
        now: datetime,
        report: PassReport,
    ) -> None:
        ids = [a.channel_id for a in actions]
        for channel_id in ids:
            self._update((account, channel_id), state="removing")
        self.store.begin(account, ids, "DELETE", now + client.skew)
        error: ZohoError | None = None
        try:
            results = client.delete(ids)
        except ZohoError as exc:
            error = exc
            results = list(getattr(exc, "completed", None) or [])
        done = {r.channel_id: r for r in results if _settled(r, "DELETE")}
        for channel_id in ids:
            result = done.get(channel_id)
            if result is None:
                continue
            key = (account, channel_id)
            if result.ok:
                self._recovered(key, now + client.skew)
                self.store.remove(account, channel_id)
                self.registry.pop(key, None)
                self.log.info(
                    "channel.deleted", account=account, channel_id=channel_id, code=result.code
                )
                report.counts["delete"] += 1
            else:
                action = next(a for a in actions if a.channel_id == channel_id)
                self._rejected(account, action, result, now, report)
        self._unsettled(account, "DELETE", ids, done, results, error, now, report)
        self.store.done(account, ids)
        self.store.clear_confirmations([(account, cid) for cid in ids if cid in done and done[cid].ok])

    def _unsettled(
        self,
        account: str,
        method: str,
        ids: Sequence[str],
        done: Mapping[str, ItemResult],
        results: Sequence[ItemResult],
        error: ZohoError | None,
        now: datetime,
        report: PassReport,
    ) -> None:
        """Channels the request left undecided (it failed, Zoho said nothing of them, or refused
        them with a code retrying can fix) back off together."""
        pending = [cid for cid in ids if cid not in done]
        if not pending:
            return
        if error is None:
            codes = sorted({r.code for r in results if r.channel_id in pending} or {"no answer"})
            error = TransientError(f"{method}: {len(pending)} item(s) not done ({', '.join(codes)})")
        self._account_failure(account, method, error, now, pending)
        report.failed += len(pending)

    def _account_failure(
        self, account: str, method: str, exc: ZohoError, now: datetime, channel_ids: Iterable[str]
    ) -> None:
        """A whole request failed: back the channels off (never past their expiry), pause the
        account on 429 and on bad credentials.

        The backoff is drawn once for the request, not once per channel: the channels failed
        together, and separate retry times would bring each back in a request of its own (three
        2-hour outages at 1,000 channels made some 12,000 single-channel retries)."""
        client = self.clients[account]
        zoho_now = now + client.skew
        terminal = isinstance(exc, AuthError | TerminalError)
        earliest: datetime | None = None
        keys = [(account, channel_id) for channel_id in channel_ids]
        entries = [self.registry[key] for key in keys if key in self.registry]
        delay = timedelta(0)
        if entries and not terminal:
            streak = max(entry.failures for entry in entries) + 1
            delay = policy.backoff(streak, self.state.policy, self.rng)
        with self._batched_writes():
            for entry in entries:
                failures = entry.failures + 1
                retry_at = (
                    policy.next_retry(
                        zoho_now, failures, None, self.state.policy, self.rng, terminal=True
                    )
                    if terminal
                    else policy.retry_after(zoho_now, delay, entry.expires_at, self.state.policy)
                )
                earliest = retry_at if earliest is None else min(earliest, retry_at)
                self._put(
                    replace(
                        entry,
                        failures=failures,
                        retry_at=retry_at,
                        last_error=_describe(exc),
                        state="failed" if terminal else entry.state,
                        terminal=terminal,
                    )
                )
        if isinstance(exc, AuthError):
            self.paused[account] = now + self.state.policy.terminal_retry
            self.log.error("auth.failed", account=account, code=exc.code, error=str(exc))
        elif isinstance(exc, RateLimited):
            delay = min(
                timedelta(seconds=exc.retry_after)
                if exc.retry_after
                else self.state.policy.retry_initial,
                MAX_RATE_LIMIT_PAUSE,
            )
            self.paused[account] = now + delay
            self.log.warning(
                "api.rate_limited",
                account=account,
                method=method,
                retry_after=delay,
                next_attempt=now + delay,
            )
        else:
            self.log.warning(
                "api.retry",
                account=account,
                method=method,
                error=_describe(exc),
                next_attempt=(earliest - client.skew) if earliest else self.next_reconcile,
            )

    # -- registry write-through --------------------------------------------------------------

    def _put(self, entry: RegistryEntry, *, last_renewed_at: datetime | None = None) -> None:
        self.registry[(entry.account, entry.channel_id)] = entry
        if self._buffer is None:
            self.store.put(entry, last_renewed_at=last_renewed_at)
        else:
            self._buffer.setdefault(last_renewed_at, []).append(entry)

    @contextmanager
    def _batched_writes(self) -> Iterator[None]:
        """Registry writes of one answer go to SQLite in one transaction (10,000 single writes
        take seconds), and always before the next call goes out."""
        if self._buffer is not None:
            yield
            return
        self._buffer = {}
        try:
            yield
        finally:
            buffer, self._buffer = self._buffer, None
            for last_renewed_at, entries in buffer.items():
                self.store.put_many(entries, last_renewed_at=last_renewed_at)

    def _update(self, key: Key, **changes: Any) -> None:
        entry = self.registry.get(key)
        if entry is not None:
            self._put(replace(entry, **changes))

    def _desired(self, key: Key) -> bool:
        return key in self._specs

    def _kept(self, key: Key) -> bool:
        """A channel the engine renews: desired, or kept alive while its deletion is refused."""
        return key in self._specs or key in self._retained

    def _watched(self, key: Key) -> bool:
        """A channel whose lapses go to the gap ledger: kept, or refused deletion without a spec."""
        return self._kept(key) or key in self._refused

    def _name(self, key: Key) -> str | None:
        spec = self._specs.get(key) or self._known.get(key)
        return spec.name if spec else None


def _settled(result: ItemResult, method: str) -> bool:
    """Zoho decided this item for good: done, gone, or refused for a reason a retry cannot fix."""
    return result.ok or result.code in TERMINAL_ITEM_CODES or (result.not_found and method != "POST")


def _method(action: Action) -> str:
    if action.kind == "create":
        return "POST"
    if action.kind == "repair" or (action.kind == "adopt" and action.drift):
        return "PUT"
    return "PATCH"


def _spec(action: Action) -> ChannelSpec:
    assert action.spec is not None, "only delete actions carry no spec"
    return action.spec


def _describe(exc: ZohoError) -> str:
    parts = [type(exc).__name__]
    if exc.status:
        parts.append(str(exc.status))
    if exc.code:
        parts.append(exc.code)
    return " ".join(parts)
