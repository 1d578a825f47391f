"""``[daemon].metrics``: the key, the exposition, /livez and /readyz, and a running daemon scraped
against the emulator's truth and ``status --json``."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from watchkeeper.config import Address, ConfigError, load
from watchkeeper.emulator import Emulator, Fault
from watchkeeper.health import Health, ListenError
from watchkeeper.metrics import (
    Meter,
    accepts_credentials,
    account_families,
    channel_text,
    serve,
    write_results,
)
from watchkeeper.model import RegistryEntry, parse_instant
from watchkeeper.outcome import LogEvent, Transition
from watchkeeper.planner import Action
from watchkeeper.store import StatusRow, Store

from tests.daemon_process import DaemonProcess, watchkeeper
from tests.ports import free_port
from tests.statefiles import SECRETS, Chan, env, write_state

FAST = 'reconcile_every = "10s"\nretry_initial = "1s"\nretry_max = "4s"'
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """The whole exposition through prometheus_client's parser: family types, and every sample."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = s.value
    return types, samples


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for n, labels in samples if n == name]


# -- the state-file key ----------------------------------------------------------------------------


def state_with(tmp_path: Path, line: str) -> Path:
    return write_state(tmp_path / "channels.toml", "http://127.0.0.1:9", [Chan("1")], daemon=line)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ('"127.0.0.1:9464"', Address("127.0.0.1", 9464)),
        ('"[::1]:1"', Address("::1", 1)),
        ('"localhost:65535"', Address("localhost", 65535)),
    ],
)
def test_the_metrics_key_reads_host_and_port(tmp_path: Path, text: str, address: Address) -> None:
    state = load(state_with(tmp_path, f"metrics = {text}"), environ=env())
    assert state.metrics == address
    assert str(state.metrics) == text.strip('"')


def test_no_metrics_key_means_no_address(tmp_path: Path) -> None:
    assert load(state_with(tmp_path, ""), environ=env()).metrics is None


@pytest.mark.parametrize(
    "text", ['"127.0.0.1"', '"127.0.0.1:0"', '"127.0.0.1:65536"', '"::1:9464"', '":9464"', "9464"]
)
def test_a_bad_metrics_address_is_an_error_naming_the_key(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(state_with(tmp_path, f"metrics = {text}"), environ=env())
    (issue,) = caught.value.issues
    assert issue.path == "daemon.metrics"
    assert "host:port" in issue.message
    assert "1 to 65535" in issue.message


# -- pure parts ------------------------------------------------------------------------------------


def row(channel_id: str, state: str = "active", account: str = "main") -> StatusRow:
    at = datetime(2030, 1, 1, tzinfo=UTC)
    return StatusRow(
        account,
        channel_id,
        None,
        state,
        at,
        at - timedelta(minutes=20),
        None,
        0,
        None,  # type: ignore[arg-type]
    )


def test_channel_gauges_show_wanted_channels_only_and_escape_names() -> None:
    odd = 'a "quoted" \\ name\nwith a newline'
    names = {("main", "1"): odd, ("main", "2"): ""}
    text = channel_text(names, [row("1"), row("2", "lapsed"), row("3")])
    types, samples = parse(text)
    assert types["watchkeeper_channel_state"] == "gauge"
    states = series(samples, "watchkeeper_channel_state")
    assert {s["channel_id"] for s in states} == {"1", "2"}  # 3 is no longer wanted
    assert len(states) == 12  # six states each
    one = {"account": "main", "channel_id": "1", "name": odd}
    assert value(samples, "watchkeeper_channel_state", **one, state="active") == 1.0
    assert value(samples, "watchkeeper_channel_state", **one, state="lapsed") == 0.0
    two = {"account": "main", "channel_id": "2", "name": ""}
    assert value(samples, "watchkeeper_channel_state", **two, state="lapsed") == 1.0
    expiry = datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert value(samples, "watchkeeper_channel_expiry_timestamp_seconds", **one) == expiry
    assert value(samples, "watchkeeper_channel_renewal_timestamp_seconds", **one) == expiry - 1200


def entry(channel_id: str, state: str = "active") -> RegistryEntry:
    return RegistryEntry(account="main", channel_id=channel_id, state=state)  # type: ignore[arg-type]


def action(channel_id: str, kind: str) -> Action:
    return Action(kind=kind, account="main", channel_id=channel_id, spec=None, reason="test")  # type: ignore[arg-type]


def test_write_results_read_ok_rejected_failed_and_skip_the_unsent() -> None:
    change = Transition(
        "main",
        entries={"1": entry("1"), "2": entry("2", "failed"), "3": entry("3"), "5": entry("5")},
        events=[
            LogEvent("debug", "channel.renewed", {"channel_id": "1"}),
            LogEvent("error", "channel.rejected", {"channel_id": "2", "code": "INVALID_DATA"}),
            LogEvent("warning", "api.retry", {"method": "PATCH"}),
            LogEvent("info", "channel.repaired", {"channel_id": "5"}),
        ],
    )
    actions = [
        action("1", "renew"),
        action("2", "renew"),
        action("3", "adopt"),  # answered, left to retry: failed
        action("4", "renew"),  # never sent (a stop was asked for): not counted
        action("5", "repair"),
    ]
    assert write_results(change, actions) == {
        ("renew", "ok"): 1,
        ("renew", "rejected"): 1,
        ("adopt", "failed"): 1,
        ("repair", "ok"): 1,
    }
    deleted = Transition(
        "main", removed=["9"], events=[LogEvent("info", "channel.deleted", {"channel_id": "9"})]
    )
    assert write_results(deleted, [action("9", "delete")]) == {("delete", "ok"): 1}


def test_a_request_that_gets_no_answer_counts_as_error() -> None:
    meter = Meter(CollectorRegistry())
    with meter.http(httpx.HTTPTransport(), "main") as http, pytest.raises(httpx.ConnectError):
        http.get(f"http://127.0.0.1:{free_port()}/crm/v8/actions/watch")
    assert meter.requests.labels("main", "GET", "error")._value.get() == 1
    assert meter.durations.labels("GET")._sum.get() > 0


@pytest.mark.parametrize(
    ("path", "status", "accepted"),
    [
        ("/crm/v8/actions/watch", 200, True),
        ("/crm/v8/actions/watch", 204, True),  # an empty listing
        ("/bigin/v2/Deals", 304, False),  # not modified: says nothing either way
        ("/crm/v8/actions/watch", 401, False),
        ("/crm/v8/actions/watch", 500, False),
        ("/oauth/v2/token", 200, False),  # a refused refresh is a 200 too
        ("/proxy/oauth/v2/token", 200, False),  # accounts_url with a path
    ],
)
def test_what_says_zoho_accepted_the_credentials(path: str, status: int, accepted: bool) -> None:
    assert accepts_credentials(path, status) is accepted


def gauge(families: list[Metric], name: str) -> dict[str, float]:
    (family,) = [f for f in families if f.name == name]
    return {sample.labels["account"]: sample.value for sample in family.samples}


def test_the_lease_and_auth_gauges_follow_what_this_instance_serves(tmp_path: Path) -> None:
    path = write_state(tmp_path / "s.toml", "http://127.0.0.1:9", [], accounts=("main", "other"))
    state = load(path, environ=env())
    families = account_families(state, [], {}, frozenset({"main"}), {"main", "other"})
    assert gauge(families, "watchkeeper_account_lease_held") == {"main": 1.0, "other": 0.0}
    # Another instance serves "other": what this one last heard of it may be stale.
    assert gauge(families, "watchkeeper_account_auth_failing") == {"main": 1.0, "other": 0.0}
    families = account_families(state, [], {}, frozenset({"main", "other"}), set())
    assert gauge(families, "watchkeeper_account_auth_failing") == {"main": 0.0, "other": 0.0}


def test_an_auth_failure_sets_the_gauge_and_an_answered_api_request_clears_it(
    emu: Emulator,
) -> None:
    meter = Meter(CollectorRegistry())
    failed = Transition("main", events=[LogEvent("error", "auth.failed", {"code": "invalid_code"})])
    meter.committed(failed, [])
    meter.committed(Transition("other"), [])  # no word on credentials: nothing known
    assert meter.refused == {"main"}
    with meter.http(httpx.HTTPTransport(), "main") as http:
        token = emu.issue_access_token("org1")
        http.get(emu.url + "/crm/v8/actions/watch")  # no token: 401
        assert meter.refused == {"main"}
        answer = http.get(
            emu.url + "/crm/v8/actions/watch", headers={"Authorization": f"Zoho-oauthtoken {token}"}
        )
    assert answer.status_code in (200, 204)
    assert meter.refused == set()
    meter.committed(failed, [])
    assert meter.refused == {"main"}
    meter.forget_all_but(frozenset({"other"}))  # main's lease went to another instance
    assert meter.refused == set()


# -- the listener in-process -----------------------------------------------------------------------


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, Health, Store]]:
    state = load(state_with(tmp_path, ""), environ=env())
    health = Health(alive=lambda: True, state=state)
    address = Address("127.0.0.1", free_port())
    with serve(address, state.database, health), Store(state.database) as store:
        yield f"http://{address}", health, store


def test_readyz_waits_for_the_first_pass_and_livez_follows_the_loop(
    listener: tuple[str, Health, Store],
) -> None:
    url, health, _ = listener
    flag = {"alive": True}
    health.alive = lambda: flag["alive"]
    assert httpx.get(url + "/readyz").status_code == 503
    assert httpx.get(url + "/livez").status_code == 200
    health.last_pass = time.time()
    assert httpx.get(url + "/readyz").status_code == 200
    flag["alive"] = False
    assert httpx.get(url + "/livez").status_code == 503
    assert httpx.get(url + "/other").status_code == 404


def test_the_exposition_before_any_pass_and_after_a_failed_reload(
    listener: tuple[str, Health, Store],
) -> None:
    url, health, store = listener
    store.put(RegistryEntry(account="main", channel_id="1", state="pending"))
    types, samples = parse(httpx.get(url + "/metrics").text)
    assert types["watchkeeper_backfill_records"] == "counter"
    assert not series(samples, "watchkeeper_backfill_records_total")  # no backfill yet
    assert not series(samples, "watchkeeper_last_pass_timestamp_seconds")
    assert value(samples, "watchkeeper_config_last_reload_successful") == 1.0
    assert value(samples, "watchkeeper_account_lease_held", account="main") == 0.0  # not yet served
    assert value(samples, "watchkeeper_account_auth_failing", account="main") == 0.0
    assert value(samples, "watchkeeper_gaps_open", account="main") == 0.0
    labels = {"account": "main", "channel_id": "1", "name": ""}
    assert value(samples, "watchkeeper_channel_state", **labels, state="pending") == 1.0
    assert not series(samples, "watchkeeper_channel_expiry_timestamp_seconds")
    health.reload_ok = False
    health.served = frozenset({"main"})
    _, samples = parse(httpx.get(url + "/metrics").text)
    assert value(samples, "watchkeeper_config_last_reload_successful") == 0.0
    assert value(samples, "watchkeeper_account_lease_held", account="main") == 1.0


def test_a_taken_port_is_a_listen_error_naming_the_address(tmp_path: Path) -> None:
    state = load(state_with(tmp_path, ""), environ=env())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = Address("127.0.0.1", taken.getsockname()[1])
        with (
            pytest.raises(ListenError, match=f"cannot listen on {address}"),
            serve(address, state.database, Health(alive=lambda: True, state=state)),
        ):
            pass


# -- a running daemon ------------------------------------------------------------------------------


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.stop()


def scrape(port: int) -> tuple[str, dict[str, str], Samples]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return (text, *parse(text))


def status(state: Path) -> dict[tuple[str, str], dict[str, object]]:
    doc = json.loads(watchkeeper(state, "status", "--json", check=True).stdout)
    return {(c["account"], c["channel_id"]): c for c in doc["channels"]}


def listening_ports(pid: int) -> set[int]:
    """TCP ports the process listens on: its socket inodes matched against /proc/net/tcp{,6}."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.slow
def wait_writes(
    daemon: DaemonProcess, port: int, action: str, count: int, timeout: float, what: str
) -> None:
    """Until the daemon's /metrics counts ``count`` successful writes of ``action``."""

    def counted() -> bool:
        samples = scrape(port)[2]
        found = value(
            samples, "watchkeeper_channel_writes_total", account="main", action=action, result="ok"
        )
        return found == count

    daemon.wait_for(counted, timeout, what)


def test_a_scraped_daemon_agrees_with_the_emulator_and_status(
    tmp_path: Path, emu: Emulator, daemons: list[DaemonProcess]
) -> None:
    port = free_port()
    chans = [Chan(str(7000 + i), ttl="1h", name=f"m{i}") for i in range(3)]
    daemon_keys = f'{FAST}\nmetrics = "127.0.0.1:{port}"'
    state = write_state(tmp_path / "channels.toml", emu.url, chans, daemon=daemon_keys)
    daemon = DaemonProcess(state)
    daemons.append(daemon)
    daemon.wait_datagram("READY=1", timeout=15)
    wait_writes(daemon, port, "create", 3, 20, "three creations counted")
    assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    assert httpx.get(f"http://127.0.0.1:{port}/livez").status_code == 200

    text, types, samples = scrape(port)
    rows = status(state)
    truth = emu.channels()
    for chan in chans:
        labels = {"account": "main", "channel_id": chan.channel_id, "name": chan.name or ""}
        expiry = value(samples, "watchkeeper_channel_expiry_timestamp_seconds", **labels)
        assert expiry == truth[chan.channel_id].expires_at.timestamp()
        row = rows[("main", chan.channel_id)]
        assert expiry == parse_instant(str(row["expires_at"])).timestamp()
        renewal = value(samples, "watchkeeper_channel_renewal_timestamp_seconds", **labels)
        assert renewal == pytest.approx(parse_instant(str(row["next_renewal_at"])).timestamp(), abs=1e-5)
        assert value(samples, "watchkeeper_channel_state", **labels, state=str(row["state"])) == 1.0
        assert sum(value(samples, "watchkeeper_channel_state", **labels, state=s) or 0 for s in
                   ("pending", "active", "at_risk", "lapsed", "failed", "removing")) == 1.0  # fmt: skip
    expected_types = {
        "watchkeeper_channel_expiry_timestamp_seconds": "gauge",
        "watchkeeper_channel_renewal_timestamp_seconds": "gauge",
        "watchkeeper_channel_state": "gauge",
        "watchkeeper_channel_writes": "counter",
        "watchkeeper_gaps_open": "gauge",
        "watchkeeper_gaps": "counter",
        "watchkeeper_gap_seconds": "counter",
        "watchkeeper_zoho_requests": "counter",
        "watchkeeper_zoho_request_duration_seconds": "histogram",
        "watchkeeper_oauth_token_expiry_timestamp_seconds": "gauge",
        "watchkeeper_last_pass_timestamp_seconds": "gauge",
        "watchkeeper_config_last_reload_successful": "gauge",
        "watchkeeper_account_lease_held": "gauge",
        "watchkeeper_backfill_records": "counter",
        "watchkeeper_build_info": "gauge",
    }
    assert {name: types.get(name) for name in expected_types} == expected_types
    # Every request the emulator answered, counted once under its method and status.
    calls = emu.calls
    by_kind: dict[tuple[str, str], int] = {}
    for call in calls:
        method = "POST" if call.method == "TOKEN" else call.method
        by_kind[method, str(call.status)] = by_kind.get((method, str(call.status)), 0) + 1
    counted = {
        (s["method"], s["status"]): value(samples, "watchkeeper_zoho_requests_total", **s)
        for s in series(samples, "watchkeeper_zoho_requests_total")
    }
    assert counted == by_kind
    assert value(
        samples, "watchkeeper_zoho_request_duration_seconds_count", method="GET"
    ) == by_kind.get(("GET", "200"), 0) + by_kind.get(("GET", "204"), 0)
    last_pass = value(samples, "watchkeeper_last_pass_timestamp_seconds")
    assert last_pass is not None
    assert time.time() - last_pass < 70
    token_expiry = value(samples, "watchkeeper_oauth_token_expiry_timestamp_seconds", account="main")
    assert token_expiry is not None
    assert token_expiry > time.time()
    assert value(samples, "watchkeeper_build_info", version="0.1.0") == 1.0
    assert value(samples, "watchkeeper_gaps_open", account="main") == 0.0
    for secret in (*SECRETS, *emu.access_tokens()):
        assert secret not in text

    # A channel taken out of the state file leaves the gauges: at once, while a guard keeps it
    # alive (a third of the channels is more than max_delete_fraction), and once it is deleted.
    new = tmp_path / "new.toml"
    write_state(new, emu.url, chans[:2], daemon=daemon_keys)
    new.replace(state)
    mark = len(daemon.events)
    daemon.wait_event("config.refused", timeout=20, after=mark)
    _, _, samples = scrape(port)
    assert {s["channel_id"] for s in series(samples, "watchkeeper_channel_state")} == {"7000", "7001"}
    assert ("main", "7002") in status(state)  # status still shows it: it is still kept alive
    write_state(new, emu.url, chans[:2], daemon=f"{daemon_keys}\nmax_delete_fraction = 0.5")
    new.replace(state)
    daemon.wait_event("channel.deleted", channel_id="7002", timeout=20)
    wait_writes(daemon, port, "delete", 1, 10, "the deletion counted")
    _, _, samples = scrape(port)
    assert {s["channel_id"] for s in series(samples, "watchkeeper_channel_state")} == {"7000", "7001"}
    assert value(samples, "watchkeeper_config_last_reload_successful") == 1.0

    # A state file that does not validate: not applied, and the gauge says so.
    state.write_text(state.read_text().replace('"Deals.all"', '"Deals.everything"'))
    daemon.wait_for(
        lambda: value(scrape(port)[2], "watchkeeper_config_last_reload_successful") == 0.0,
        15,
        "reload 0",
    )
    assert daemon.stop() == 0


@pytest.mark.slow
def test_a_gap_shows_in_the_gauges_then_in_the_counters_as_gaps_reports_it(
    tmp_path: Path, emu: Emulator, daemons: list[DaemonProcess]
) -> None:
    port = free_port()
    daemon_keys = f'{FAST}\nmetrics = "127.0.0.1:{port}"'
    state = write_state(
        tmp_path / "channels.toml", emu.url, [Chan("8000", ttl="10s")], daemon=daemon_keys
    )
    daemon = DaemonProcess(state)
    daemons.append(daemon)
    daemon.wait_event("channel.created", channel_id="8000", timeout=20)
    emu.add_fault(Fault(status=503, paths="any", end=emu.now() + timedelta(seconds=16)))
    daemon.wait_event("channel.lapsed", channel_id="8000", timeout=30)
    labels = {"account": "main", "channel_id": "8000", "name": ""}
    _, _, samples = scrape(port)
    assert value(samples, "watchkeeper_channel_state", **labels, state="lapsed") == 1.0
    assert value(samples, "watchkeeper_gaps_open", account="main") == 1.0
    assert value(
        samples, "watchkeeper_zoho_requests_total", account="main", method="PATCH", status="503"
    )
    daemon.wait_event("channel.recovered", channel_id="8000", timeout=30)
    daemon.wait_for(
        lambda: value(scrape(port)[2], "watchkeeper_gaps_open", account="main") == 0.0, 10, "gap closed"
    )
    _, _, samples = scrape(port)
    (gap,) = json.loads(watchkeeper(state, "gaps", "--json", check=True).stdout)["gaps"]
    assert value(samples, "watchkeeper_gaps_total", account="main", cause=gap["cause"]) == 1.0
    length = (parse_instant(gap["end"]) - parse_instant(gap["start"])).total_seconds()
    assert value(samples, "watchkeeper_gap_seconds_total", account="main") == pytest.approx(length)
    truth = emu.live_intervals("8000")
    assert len(truth) == 2
    assert truth[0][1] is not None
    assert abs(length - (truth[1][0] - truth[0][1]).total_seconds()) <= 2
    expiry = value(samples, "watchkeeper_channel_expiry_timestamp_seconds", **labels)
    assert expiry == emu.channels()["8000"].expires_at.timestamp()
    assert daemon.stop() == 0


@pytest.mark.slow
def test_refused_credentials_raise_the_auth_gauge_until_zoho_answers_again(
    tmp_path: Path, emu: Emulator, daemons: list[DaemonProcess]
) -> None:
    port = free_port()
    emu.add_fault(Fault(status=200, paths="token", code="invalid_code"))
    daemon_keys = f'{FAST}\nmetrics = "127.0.0.1:{port}"'
    state = write_state(tmp_path / "channels.toml", emu.url, [Chan("9000")], daemon=daemon_keys)
    daemon = DaemonProcess(state)
    daemons.append(daemon)
    assert daemon.wait_event("auth.failed", timeout=20)["code"] == "invalid_code"

    def failing() -> float | None:
        return value(scrape(port)[2], "watchkeeper_account_auth_failing", account="main")

    daemon.wait_for(lambda: failing() == 1.0, 10, "the gauge at 1")
    emu.clear_faults()  # the operator mends the credentials and reloads
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("channel.created", channel_id="9000", timeout=20)
    daemon.wait_for(lambda: failing() == 0.0, 10, "the gauge back at 0")
    assert daemon.stop() == 0


@pytest.mark.slow
def test_a_taken_port_stops_the_daemon_with_78_and_the_address(
    tmp_path: Path, emu: Emulator, daemons: list[DaemonProcess]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = f'metrics = "127.0.0.1:{port}"'
        daemon = DaemonProcess(
            write_state(tmp_path / "channels.toml", emu.url, [Chan("1")], daemon=line)
        )
        daemons.append(daemon)
        assert daemon.proc.wait(30) == 78
    event = daemon.wait_event("metrics.listen_failed", timeout=5)
    assert event["address"] == f"127.0.0.1:{port}"
    assert f"127.0.0.1:{port}" in event["error"]
    assert not emu.calls  # no pass ran without its metrics


@pytest.mark.slow
def test_without_the_key_nothing_listens(
    tmp_path: Path, emu: Emulator, daemons: list[DaemonProcess]
) -> None:
    daemon = DaemonProcess(write_state(tmp_path / "channels.toml", emu.url, [Chan("1")]))
    daemons.append(daemon)
    daemon.wait_event("channel.created", channel_id="1", timeout=20)
    assert listening_ports(daemon.proc.pid) == set()
    assert daemon.stop() == 0


def test_backfilled_records_are_counted_by_operation() -> None:
    registry = CollectorRegistry()
    meter = Meter(registry)
    meter.backfilled("main", "update", 3)
    meter.backfilled("main", "update", 2)
    meter.backfilled("main", "delete", 1)

    def counted(operation: str) -> float | None:
        labels = {"account": "main", "operation": operation}
        return registry.get_sample_value("watchkeeper_backfill_records_total", labels)

    assert (counted("update"), counted("delete"), counted("insert")) == (5, 1, None)
