"""OAuth refresh flow and fixed tokens, against the emulator's accounts server over real HTTP."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import httpx
import pytest
from watchkeeper.model import AccessToken
from watchkeeper.zoho.auth import (
    MAX_TOKEN_LIFETIME,
    REFRESH_BLOCK,
    Credentials,
    OAuth,
    StaticToken,
    refresh_due,
    refresh_point,
    refresh_spread,
)
from watchkeeper.zoho.errors import AuthError, RateLimited, RefreshFailed, TransientError
from watchkeeper.zoho.exchange import Limits

from tests.helpers import SimClock

if TYPE_CHECKING:
    from watchkeeper.emulator import Emulator

CLIENT_ID = "emu-client-id"
CLIENT_SECRET = "emu-client-secret"
REFRESH_TOKEN = "emu-refresh-token"
SECRETS = (CLIENT_SECRET, REFRESH_TOKEN)


class MemoryCache:
    """A TokenCache as the store implements it, kept in memory."""

    def __init__(self) -> None:
        self.saved: list[AccessToken] = []

    def load(self) -> AccessToken | None:
        return self.saved[-1] if self.saved else None

    def save(self, token: AccessToken) -> None:
        self.saved.append(token)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


def oauth_for(
    emu: Emulator,
    http: httpx.Client,
    clock: SimClock,
    *,
    client_secret: str = CLIENT_SECRET,
    refresh_token: str = REFRESH_TOKEN,
    **kwargs: object,
) -> OAuth:
    return OAuth(
        Credentials(emu.url, CLIENT_ID, client_secret, refresh_token),
        http=http,
        clock=clock,
        **kwargs,  # type: ignore[arg-type]
    )


def refreshes(emu: Emulator) -> int:
    return sum(1 for call in emu.calls if call.method == "TOKEN")


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    for text in (str(exc), repr(exc), str(exc.args)):
        for secret in secrets:
            assert secret not in text


T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("lifetime", "spread", "due_after"),
    [
        # Zoho's hour: from 75 % (45 min) to 5 minutes before expiry (55 min)
        (timedelta(hours=1), 0.0, timedelta(minutes=45)),
        (timedelta(hours=1), 0.5, timedelta(minutes=50)),
        (timedelta(hours=1), 1.0, timedelta(minutes=55)),
        # a short-lived token: from 75 % to 90 % of its life (5 min before expiry would be earlier)
        (timedelta(minutes=10), 0.0, timedelta(minutes=7, seconds=30)),
        (timedelta(minutes=10), 1.0, timedelta(minutes=9)),
        (timedelta(minutes=4), 0.5, timedelta(minutes=3, seconds=18)),
        # a day (the longest believed): up to 5 minutes before expiry
        (timedelta(days=1), 0.0, timedelta(hours=18)),
        (timedelta(days=1), 1.0, timedelta(hours=23, minutes=55)),
    ],
)
def test_refresh_point_spreads_over_the_last_quarter_of_the_lifetime(
    lifetime: timedelta, spread: float, due_after: timedelta
) -> None:
    assert refresh_point(T0, T0 + lifetime, spread) == T0 + due_after


def test_each_token_draws_its_own_refresh_spread_once() -> None:
    """From the token's value: the same every time it is asked (and in every process), and spread
    evenly over tokens, so accounts whose tokens were issued together refresh apart."""
    values = [f"1000.{n:032x}.{n * 7919:032x}" for n in range(2000)]
    spreads = [refresh_spread(v) for v in values]
    assert spreads == [refresh_spread(v) for v in values]
    assert all(0.0 <= s < 1.0 for s in spreads)
    tenths = Counter(int(s * 10) for s in spreads)
    assert sorted(tenths) == list(range(10))
    assert all(150 <= n <= 250 for n in tenths.values())  # 200 each if even


@pytest.mark.parametrize(
    "emulator",
    [{"access_token_lifetime": timedelta(hours=1)}, {"access_token_lifetime": timedelta(minutes=10)}],
    indirect=True,
)
def test_token_is_cached_until_its_refresh_point(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock
) -> None:
    cache = MemoryCache()
    auth = oauth_for(emulator, http, sim_clock, cache=cache)
    first = auth.token()
    assert auth.api_domain == emulator.url
    due = refresh_due(cache.saved[0])
    sim_clock.advance(due - sim_clock.now() - timedelta(seconds=1))
    assert auth.token() == first
    assert refreshes(emulator) == 1
    sim_clock.advance(timedelta(seconds=1))
    second = auth.token()
    assert second != first
    assert refreshes(emulator) == 2


def test_cache_lets_a_restarted_daemon_skip_the_refresh(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock
) -> None:
    cache = MemoryCache()
    refreshed: list[AccessToken] = []
    first = oauth_for(emulator, http, sim_clock, cache=cache, on_refresh=refreshed.append).token()
    assert [t.value for t in cache.saved] == [first] == [t.value for t in refreshed]
    assert cache.saved[0].expires_at - cache.saved[0].issued_at == timedelta(hours=1)

    assert oauth_for(emulator, http, sim_clock, cache=cache).token() == first
    assert refreshes(emulator) == 1

    sim_clock.advance(timedelta(hours=2))  # the cached token has expired: a new process refreshes
    assert oauth_for(emulator, http, sim_clock, cache=cache).token() != first
    assert refreshes(emulator) == 2
    assert len(cache.saved) == 2


def test_concurrent_callers_share_one_refresh(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock
) -> None:
    from watchkeeper.emulator import Fault

    emulator.add_fault(Fault(status=None, paths="token", latency=0.2))  # a slow accounts server
    auth = oauth_for(emulator, http, sim_clock)
    start = threading.Barrier(8)
    got: list[str] = []

    def call() -> None:
        start.wait()
        got.append(auth.token())

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 8
    assert len(set(got)) == 1
    assert refreshes(emulator) == 1


def test_a_token_another_instance_refreshed_into_the_shared_cache_is_used_not_refreshed(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock
) -> None:
    """Several instances share the store's cache: one that held the account earlier has a token of
    its own that is due; the current holder refreshed since. No second refresh (Zoho allows ten
    per ten minutes per refresh token)."""
    cache = MemoryCache()
    old_holder, new_holder = (oauth_for(emulator, http, sim_clock, cache=cache) for _ in range(2))
    first = old_holder.token()
    sim_clock.advance(timedelta(minutes=56))  # first is due for refresh (5 min before expiry)
    second = new_holder.token()
    assert second != first
    assert refreshes(emulator) == 2
    assert old_holder.token() == second  # read back from the cache, not refreshed a third time
    assert refreshes(emulator) == 2


def test_a_rejected_token_is_not_believed_from_the_cache(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock
) -> None:
    cache = MemoryCache()
    auth = oauth_for(emulator, http, sim_clock, cache=cache)
    first = auth.token()
    auth.invalidate(first)
    assert auth.token() != first
    assert refreshes(emulator) == 2


def test_invalidate_drops_only_the_rejected_token(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock
) -> None:
    auth = oauth_for(emulator, http, sim_clock)
    first = auth.token()
    auth.invalidate("some-older-token")
    assert auth.token() == first
    auth.invalidate(first)
    assert auth.token() != first
    assert refreshes(emulator) == 2


@pytest.mark.parametrize(
    ("secret", "refresh_token", "code"),
    [
        ("wrong-client-secret", REFRESH_TOKEN, "invalid_client"),
        (CLIENT_SECRET, "revoked-refresh-token", "invalid_code"),
    ],
)
def test_bad_credentials_are_terminal_and_never_quoted(
    emulator: Emulator,
    http: httpx.Client,
    sim_clock: SimClock,
    secret: str,
    refresh_token: str,
    code: str,
) -> None:
    auth = oauth_for(emulator, http, sim_clock, client_secret=secret, refresh_token=refresh_token)
    with pytest.raises(AuthError) as caught:
        auth.token()
    assert caught.value.code == code
    assert code in str(caught.value)
    assert_no_secret(caught.value, secret, refresh_token)


def test_refresh_allowance_exhausted_is_rate_limited_and_held_back_locally(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock
) -> None:
    auth = oauth_for(emulator, http, sim_clock)
    for _ in range(10):  # Zoho allows 10 refreshes per refresh token in 10 minutes
        auth.invalidate(auth.token())
    with pytest.raises(RateLimited) as caught:
        auth.token()
    assert caught.value.retry_after == 600
    assert_no_secret(caught.value, *SECRETS)
    assert refreshes(emulator) == 11

    sim_clock.advance(timedelta(minutes=5))
    with pytest.raises(RateLimited) as again:
        auth.token()
    assert again.value.retry_after == pytest.approx(300)
    assert refreshes(emulator) == 11  # not even asked

    sim_clock.advance(timedelta(minutes=5, seconds=1))
    auth.token()
    assert refreshes(emulator) == 12


def test_http_429_from_accounts_honours_retry_after(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock
) -> None:
    from watchkeeper.emulator import Fault

    emulator.add_fault(Fault(status=429, paths="token", retry_after=42, count=1))
    auth = oauth_for(emulator, http, sim_clock)
    with pytest.raises(RateLimited) as caught:
        auth.token()
    assert caught.value.retry_after == 42


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 500},
        {"status": 503, "body": "html"},
        {"status": 200, "body": "garbage"},
        {"status": 200, "body": "empty"},
        {"status": None, "latency": 1.0},
    ],
    ids=["500", "503-html", "200-garbage", "200-empty", "timeout"],
)
def test_server_trouble_is_transient(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock, fault: dict[str, object]
) -> None:
    from watchkeeper.emulator import Fault

    emulator.add_fault(Fault(paths="token", **fault))  # type: ignore[arg-type]
    auth = oauth_for(emulator, http, sim_clock, limits=Limits(timeout=httpx.Timeout(0.3)))
    with pytest.raises(TransientError) as caught:
        auth.token()
    assert type(caught.value) is RefreshFailed  # transient, and not retried in place
    assert_no_secret(caught.value, *SECRETS)


def test_failed_early_refresh_falls_back_on_the_still_valid_token(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock
) -> None:
    from watchkeeper.emulator import Fault

    auth = oauth_for(emulator, http, sim_clock)
    first = auth.token()
    emulator.add_fault(Fault(status=503, paths="token"))
    sim_clock.advance(timedelta(minutes=57))  # refresh due, token still valid for 3 minutes
    assert auth.token() == first
    sim_clock.advance(timedelta(minutes=3))
    with pytest.raises(TransientError):
        auth.token()


def _answering(
    payload: dict[str, object] | bytes, status: int = 200, headers: dict[str, str] | None = None
) -> httpx.Client:
    """For answer shapes the emulator never produces (older Zoho deployments, hostile numbers)."""
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()

    def answer(_: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(content))

    return httpx.Client(transport=httpx.MockTransport(answer))


def granted_lifetime(payload: dict[str, object], sim_clock: SimClock) -> timedelta:
    """The lifetime of the token a refresh answered with ``payload`` gets in the cache."""
    cache = MemoryCache()
    with _answering(payload) as http:
        OAuth(
            Credentials("https://accounts.zoho.com", "id", "s", "r"),
            http=http,
            clock=sim_clock,
            cache=cache,
        ).token()
    return cache.saved[0].expires_at - sim_clock.now()


@pytest.mark.parametrize(
    ("payload", "lifetime"),
    [
        ({"access_token": "t", "expires_in": 3600}, timedelta(hours=1)),
        ({"access_token": "t", "expires_in": 3600000}, timedelta(hours=1)),
        ({"access_token": "t", "expires_in": 1800000, "expires_in_sec": 1800}, timedelta(minutes=30)),
    ],
    ids=["seconds", "milliseconds", "expires_in_sec"],
)
def test_lifetime_forms(payload: dict[str, object], lifetime: timedelta, sim_clock: SimClock) -> None:
    assert granted_lifetime(payload, sim_clock) == lifetime


def test_error_without_access_token_names_only_the_code(sim_clock: SimClock) -> None:
    with _answering({"error": "invalid_scope"}, status=400) as http:
        auth = OAuth(
            Credentials("https://accounts.zoho.com", "id", "the-secret", "the-refresh"),
            http=http,
            clock=sim_clock,
        )
        with pytest.raises(AuthError, match="invalid_scope") as caught:
            auth.token()
    assert_no_secret(caught.value, "the-secret", "the-refresh")


def test_plain_http_accounts_url_is_refused_off_loopback(http: httpx.Client) -> None:
    with pytest.raises(ValueError, match="https"):
        OAuth(Credentials("http://accounts.zoho.com", "id", "s", "r"), http=http)


def test_static_token_dies_once_rejected() -> None:
    static = StaticToken("1000.fixed-access-token")
    assert static.token() == "1000.fixed-access-token"
    static.invalidate("1000.another-token")
    assert static.token() == "1000.fixed-access-token"
    static.invalidate("1000.fixed-access-token")
    with pytest.raises(AuthError) as caught:
        static.token()
    assert_no_secret(caught.value, "1000.fixed-access-token")
    assert "fixed-access-token" not in repr(static)


def test_access_token_repr_hides_the_value() -> None:
    now = datetime(2026, 1, 5, tzinfo=UTC)
    token = AccessToken("1000.secret-value", expires_at=now + timedelta(hours=1), issued_at=now)
    assert "secret-value" not in repr(token)
    assert "secret-value" not in str(token)


@pytest.mark.parametrize(
    "expires_in",
    [
        b"Infinity",
        b"-Infinity",
        b"NaN",
        b'"nan"',
        b'"inf"',
        b"true",
        b"false",
        b"[3600]",
        b"1" + b"0" * 400,
    ],
    ids=[
        "Infinity",
        "-Infinity",
        "NaN",
        "nan-string",
        "inf-string",
        "true",
        "false",
        "list",
        "huge-int",
    ],
)
def test_an_unusable_expires_in_is_transient_and_named(expires_in: bytes, sim_clock: SimClock) -> None:
    body = b'{"access_token": "the-access", "expires_in": ' + expires_in + b"}"
    with _answering(body) as http:
        auth = OAuth(
            Credentials("https://accounts.zoho.com", "id", "s", "r"), http=http, clock=sim_clock
        )
        with pytest.raises(TransientError, match="expires_in is not a finite number") as caught:
            auth.token()
    assert type(caught.value) is RefreshFailed  # transient, and not retried in place
    assert_no_secret(caught.value, "the-access")


@pytest.mark.parametrize(
    ("payload", "lifetime"),
    [
        ({"access_token": "t", "expires_in": 1e20}, MAX_TOKEN_LIFETIME),
        ({"access_token": "t", "expires_in": "3600"}, timedelta(hours=1)),
        ({"access_token": "t", "expires_in_sec": 1e300}, MAX_TOKEN_LIFETIME),
    ],
    ids=["1e20", "numeric-string", "expires_in_sec-1e300"],
)
def test_an_absurd_lifetime_is_cut_to_the_cap(
    payload: dict[str, object], lifetime: timedelta, sim_clock: SimClock
) -> None:
    assert granted_lifetime(payload, sim_clock) == lifetime


@pytest.mark.parametrize("value", [-5, 0, "-1"])
def test_a_lifetime_that_is_not_positive_is_transient(value: object, sim_clock: SimClock) -> None:
    with _answering({"access_token": "t", "expires_in": value}) as http:
        auth = OAuth(
            Credentials("https://accounts.zoho.com", "id", "s", "r"), http=http, clock=sim_clock
        )
        with pytest.raises(TransientError, match="expires_in is not positive"):
            auth.token()


@pytest.mark.parametrize("retry_after", ["999999999", "1e14", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_a_huge_retry_after_blocks_refreshes_ten_minutes_at_most(
    retry_after: str, sim_clock: SimClock
) -> None:
    with _answering(b"", status=429, headers={"Retry-After": retry_after}) as http:
        auth = OAuth(
            Credentials("https://accounts.zoho.com", "id", "s", "r"), http=http, clock=sim_clock
        )
        with pytest.raises(RateLimited) as caught:
            auth.token()
        assert caught.value.retry_after == REFRESH_BLOCK
        sim_clock.advance(timedelta(seconds=REFRESH_BLOCK - 1))
        with pytest.raises(RateLimited) as held:
            auth.token()
        assert held.value.retry_after == pytest.approx(1)


def test_clear_block_lets_the_next_refresh_through(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock
) -> None:
    from watchkeeper.emulator import Fault

    emulator.add_fault(Fault(status=429, paths="token", retry_after=300, count=1))
    auth = oauth_for(emulator, http, sim_clock)
    with pytest.raises(RateLimited):
        auth.token()
    with pytest.raises(RateLimited):
        auth.token()
    assert refreshes(emulator) == 1  # held back locally
    auth.clear_block()  # what a reload does
    assert auth.token()
    assert refreshes(emulator) == 2
