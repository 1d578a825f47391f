"""systemd/watchkeeper.service: checked statically by systemd-analyze, then run by a real systemd.

The machines this runs on (the dev box, CI) have systemd installed but not as PID 1. The real test
therefore starts a systemd *user* manager as root in private namespaces, as tooling-notes.md found
works: a private mount namespace with a tmpfs on /run (so /run/systemd/system can exist without
touching the host), a PID namespace (whatever happens, killing its first process kills every
process the test started), and a cgroup namespace rooted in a cgroup made for the test (a manager
starting at the root cgroup moves every process of the machine into its init.scope). The
manager's own log is collected on a fake journald socket; the daemon's stdout goes to a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import watchkeeper
from watchkeeper.emulator import Emulator

from tests.statefiles import SECRETS, Chan, env, write_state

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "watchkeeper.service"
PRODUCTION_EXE = "/opt/watchkeeper/venv/bin/watchkeeper"
PRODUCTION_ARGS = "--state /etc/watchkeeper/channels.toml run"


def _require(ok: object, why: str) -> None:
    """Skip where the check cannot run, but never in CI: there a missing tool is a failure."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must be able to run this: {why}")
    pytest.skip(why)


# -- the unit as text ----------------------------------------------------------------------------


def settings(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order (repeated keys stay repeated)."""
    found, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


def edited(
    text: str,
    *,
    drop: Iterable[str] = (),
    replace: Mapping[str, str] | None = None,
    add: Sequence[str] = (),
) -> str:
    """A copy of the unit with the assignments of the ``drop`` keys removed, the value of each
    ``replace`` key changed, and ``add`` lines put at the start of [Service]. Every key named must
    be there: an edit that silently matched nothing would test the wrong unit."""
    drop, replace = set(drop), dict(replace or {})
    seen: set[str] = set()
    out: list[str] = []
    for raw in text.splitlines():
        key = raw.partition("=")[0].strip() if "=" in raw and raw[:1] not in "#;[" else ""
        if key in drop:
            seen.add(key)
            continue
        if key in replace:
            seen.add(key)
            raw = f"{key}={replace[key]}"
        out.append(raw)
        if raw.strip() == "[Service]":
            out.extend(add)
    missing = (drop | set(replace)) - seen
    assert not missing, f"not in the unit: {sorted(missing)}"
    return "\n".join(out) + "\n"


def test_unit_declares_the_contract() -> None:
    """What DESIGN.md section 6 and the install guide rely on, which neither verify nor security
    would notice missing."""
    found = {(section, key): value for section, key, value in settings(UNIT.read_text())}
    expected = {
        ("Unit", "StartLimitIntervalSec"): "0",
        ("Service", "Type"): "notify",
        ("Service", "NotifyAccess"): "main",
        ("Service", "ExecStart"): f"{PRODUCTION_EXE} {PRODUCTION_ARGS}",
        ("Service", "ExecReload"): "/bin/kill -HUP $MAINPID",
        ("Service", "Restart"): "on-failure",
        ("Service", "RestartPreventExitStatus"): "78",
        ("Service", "DynamicUser"): "yes",
        ("Service", "StateDirectory"): "watchkeeper",
        ("Service", "StateDirectoryMode"): "0700",
        ("Service", "ConfigurationDirectory"): "watchkeeper",
        ("Service", "UMask"): "0077",
        ("Install", "WantedBy"): "multi-user.target",
    }
    assert {k: found.get(k) for k in expected} == expected
    for key in ("WatchdogSec", "RestartSec", "LoadCredential"):
        assert found.get(("Service", key)), f"{key}= is not set"


# -- systemd-analyze -----------------------------------------------------------------------------


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    _require(shutil.which("systemd-analyze"), "systemd-analyze is not installed")
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """verify returns 0 even for unknown keys and bad values, so stderr must be empty too. It also
    insists that ExecStart's program exists: the copy runs this checkout's daemon instead of
    /opt/watchkeeper/venv, and that is its only difference."""
    text = UNIT.read_text()
    local = edited(
        text,
        replace={"ExecStart": f"{sys.executable} -m watchkeeper {PRODUCTION_ARGS}"},
    )
    unit = tmp_path / "watchkeeper.service"
    unit.write_text(local)
    result = _analyze("verify", str(unit))
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")

    # The same check sees a typo: an empty stderr above means something.
    unit.write_text(edited(local, add=["NoNewPrivilegs=yes"]))
    typo = _analyze("verify", str(unit))
    assert typo.returncode == 0
    assert "Unknown key 'NoNewPrivilegs'" in typo.stderr


_ROW = re.compile(r"^✗ (\S+)\s+(.*?)\s+(\d+\.\d)$")


def test_systemd_analyze_security_exposure_below_2() -> None:
    result = _analyze("security", "--offline=true", "--threshold=19", "--no-pager", str(UNIT))
    overall = re.search(r"Overall exposure level for watchkeeper\.service: (\d+\.\d)", result.stdout)
    assert overall, result.stdout + result.stderr
    costs = sorted(
        ((float(m[3]), m[1], m[2]) for line in result.stdout.splitlines() if (m := _ROW.match(line))),
        reverse=True,
    )
    print(f"\nexposure {overall[1]} (threshold 1.9); what still costs:")
    for cost, name, why in costs:
        print(f"  {cost:.1f}  {name}  ({why})")
    assert result.returncode == 0, f"exposure {overall[1]} is not below 2.0"
    assert float(overall[1]) < 2.0


# -- a real systemd --------------------------------------------------------------------------------

STRIPPED = {
    "DynamicUser": "a user manager runs the daemon as a new uid but leaves StateDirectory root's",
    "LoadCredential": "a user manager leaves $CREDENTIALS_DIRECTORY empty; the secrets come by env",
}
"""What a root user manager outside a booted system cannot apply, and why (systemd 252). All the
rest of the unit is applied as written: PrivateUsers, CapabilityBoundingSet, ProtectKernelTunables
and the other sandboxing work there."""

HOMES = ("/root", "/home", "/run/user")


def stripped() -> dict[str, str]:
    """STRIPPED, and ProtectHome when this venv's interpreter lives where it hides (pyenv in
    /root): exec would fail with 203/EXEC. The unit's /opt venv uses /usr/bin/python3."""
    found = dict(STRIPPED)
    interpreter = Path(sys.executable).resolve()
    if any(interpreter.is_relative_to(home) for home in HOMES):
        found["ProtectHome"] = f"it hides this venv's interpreter, {interpreter}"
    return found


NS_DIR = "/run/watchkeeper-test"
NS_VENV = "/run/watchkeeper-venv"
NS_SRC = "/run/watchkeeper-src"
NS_RUNTIME = "/run/watchkeeper-runtime"
"""The manager's $XDG_RUNTIME_DIR (its notify socket): not /run/user, which ProtectHome= hides."""
SERVICE = "watchkeeper.service"
WATCHDOG_SEC, RESTART_SEC = 3, 1

NAMESPACE_SETUP = r"""
mount -n -t cgroup2 cgroup2 /sys/fs/cgroup
mount -n -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/systemd/system /run/systemd/journal "$NS_DIR" "$NS_VENV" "$NS_SRC"
mkdir -m 0700 "$NS_RUNTIME"
# What a booted system has in /run and the sandbox mounts over what it hides (ProtectHome= etc.).
mkdir -m 0755 /run/systemd/inaccessible
mkdir -m 0 /run/systemd/inaccessible/dir
install -m 0 /dev/null /run/systemd/inaccessible/reg
mkfifo -m 0 /run/systemd/inaccessible/fifo
mount -n --bind "$HOST_DIR" "$NS_DIR"
mount -n --bind "$HOST_DIR/journal" /run/systemd/journal
mount -n --bind "$HOST_VENV" "$NS_VENV"
mount -n --bind "$HOST_SRC" "$NS_SRC"
# Names resolve through the test's DNS server (a symlinked resolv.conf points into /run).
resolv=$(readlink -f /etc/resolv.conf)
mkdir -p "$(dirname "$resolv")" && touch "$resolv"
mount -n --bind "$HOST_DIR/resolv.conf" "$resolv"
# PrivateTmp's directories go here, not to the host's /tmp (the binds above are already in place).
mount -n -t tmpfs tmpfs /tmp
mount -n -t tmpfs tmpfs /var/tmp
export HOME="$NS_DIR/home" XDG_RUNTIME_DIR="$NS_RUNTIME"
export XDG_CONFIG_HOME="$NS_DIR/config" XDG_STATE_HOME="$NS_DIR/state"
/lib/systemd/systemd --user --log-target=journal --unit=watchkeeper-test.target &
wait
"""


class FakeJournal:
    """journald's native socket: the manager logs there (there is no journal, and its console is
    not ours). Keeps MESSAGE and the unit of each datagram."""

    def __init__(self, path: Path) -> None:
        self.messages: list[tuple[str, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.1)
        self._open = True
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while self._open:
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError:
                continue
            fields = dict(
                line.split("=", 1) for line in data.decode(errors="replace").split("\n") if "=" in line
            )
            self.messages.append(
                (fields.get("USER_UNIT") or fields.get("UNIT", ""), fields.get("MESSAGE", ""))
            )

    def about(self, unit: str) -> list[str]:
        return [message for u, message in list(self.messages) if u == unit]

    def close(self) -> None:
        self._open = False
        self._thread.join()
        self._sock.close()


class FakeDNS:
    """A DNS server for one name, so that the sandboxed daemon resolves its Zoho host the way it
    would in production: glibc, UDP to the nameserver in resolv.conf."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.queries: list[str] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Port 53 it must be (resolv.conf has no port); a loopback address of this process's own.
        self.address = f"127.53.{os.getpid() >> 8 & 255}.{os.getpid() & 255}"
        self._sock.bind((self.address, 53))
        self._sock.settimeout(0.1)
        self._open = True
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self._open:
            try:
                query, peer = self._sock.recvfrom(512)
            except TimeoutError:
                continue
            self._sock.sendto(self._answer(query), peer)

    def _answer(self, query: bytes) -> bytes:
        labels, end = [], 12
        while query[end]:
            labels.append(query[end + 1 : end + 1 + query[end]].decode())
            end += 1 + query[end]
        qtype = int.from_bytes(query[end + 1 : end + 3], "big")
        name = ".".join(labels)
        self.queries.append(name)
        known, a_record = name == self.name, name == self.name and qtype == 1
        flags = 0x8180 if known else 0x8183  # NOERROR / NXDOMAIN
        header = query[:2] + flags.to_bytes(2, "big") + b"\x00\x01" + bytes([0, a_record]) + bytes(4)
        answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04" + socket.inet_aton("127.0.0.1")
        return header + query[12 : end + 5] + (answer if a_record else b"")

    def close(self) -> None:
        self._open = False
        self._thread.join()
        self._sock.close()


def _cgroup2_dir() -> Path | None:
    """This process's cgroup in the host's cgroup2 hierarchy (mounted somewhere under /sys)."""
    mounts = [line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    roots = [m[4] for m in mounts if m[m.index("-") + 1] == "cgroup2"]
    mine = [line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines() if line[:3] == "0::"]
    if not roots or not mine:
        return None
    return Path(roots[0] + mine[0])


class UserManager:
    """A systemd user manager as root in private mount, PID and cgroup namespaces, with a DNS
    server of its own."""

    def __init__(self, host_dir: Path) -> None:
        for tool in ("unshare", "nsenter", "setpriv", "systemctl"):
            _require(shutil.which(tool), f"{tool} is not installed")
        _require(Path("/lib/systemd/systemd").exists(), "/lib/systemd/systemd is not installed")
        parent = _cgroup2_dir()
        _require(parent, "no cgroup2 hierarchy to contain the manager in")
        assert parent is not None
        self.host_dir = host_dir
        self.cgroup = parent / f"watchkeeper-systemd-test-{os.getpid()}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.journal = FakeJournal(host_dir / "journal" / "socket")
        try:
            self.dns = FakeDNS("zoho-emulator.localhost")
        except BaseException:
            self.journal.close()
            raise
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DBUS_")}
        self.env["XDG_RUNTIME_DIR"] = NS_RUNTIME

    def start(self) -> None:
        (self.host_dir / "resolv.conf").write_text(
            f"nameserver {self.dns.address}\noptions timeout:1 attempts:2\n"
        )
        for stale in self.cgroup.parent.glob("watchkeeper-systemd-test-*"):
            # Left by a test process killed outright (its processes died with it): empty.
            if not Path("/proc", stale.name.rpartition("-")[2]).exists():
                with contextlib.suppress(OSError):
                    _rmdir_tree(stale)
        self.cgroup.mkdir()
        env = {
            **os.environ,
            "HOST_DIR": str(self.host_dir),
            "HOST_VENV": sys.prefix,
            "HOST_SRC": str(Path(watchkeeper.__file__).resolve().parents[1]),
            "NS_DIR": NS_DIR,
            "NS_VENV": NS_VENV,
            "NS_SRC": NS_SRC,
            "NS_RUNTIME": NS_RUNTIME,
        }
        # Into the test's cgroup first; PDEATHSIG makes a killed pytest take everything along.
        enter_cgroup = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.cgroup)]
        unshare = ["unshare", "--mount", "--propagation", "private", "--mount-proc", "--cgroup"]
        unshare += ["--pid", "--fork", "--kill-child", "sh", "-ec", NAMESPACE_SETUP]
        with open(self.host_dir / "namespace.err", "wb") as err:
            self.proc = subprocess.Popen(
                [*enter_cgroup, "setpriv", "--pdeathsig", "KILL", *unshare],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.init_pid = self._init_pid()
        wait_for(lambda: self.systemctl("is-system-running").stdout.strip() == "running", 10, self.why)

    def _init_pid(self) -> int:
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.proc.poll() is None:
            text = children.read_text().split()
            if text:
                return int(text[0])
            time.sleep(0.01)
        raise AssertionError(f"the namespace did not start: {self.why()}")

    def systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return self._systemctl(*args)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"systemctl {' '.join(args)} hung\n{self.why()}") from None

    def _systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "nsenter",
                "-t",
                str(self.init_pid),
                "-m",
                "-p",
                "systemctl",
                "--user",
                "--no-pager",
                *args,
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=90,  # beyond the unit's TimeoutStartSec=60s
            check=False,
        )

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def host_pids(self, unit: str) -> list[int]:
        """The unit's processes as this (the host's) PID namespace numbers them."""
        procs = self.cgroup / "app.slice" / unit / "cgroup.procs"
        return [int(pid) for pid in procs.read_text().split()]

    def why(self) -> str:
        err = (self.host_dir / "namespace.err").read_text()
        log = "\n".join(f"  {unit or '-'}: {message}" for unit, message in self.journal.messages[-40:])
        return f"namespace stderr: {err!r}\nmanager log:\n{log}"

    def close(self) -> None:
        """Everything dies with the PID namespace; the manager is asked first so that it can
        remove its own cgroups."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.systemctl("exit")
                    self.proc.wait(timeout=10)
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.journal.close()
            self.dns.close()
            if self.cgroup.exists():
                _remove_cgroup(self.cgroup)


def assert_sandboxed(pids: list[int]) -> None:
    """The sandbox really applies to the daemon: a sample of what the unit asks for."""
    assert len(pids) == 1, pids
    proc = Path(f"/proc/{pids[0]}")
    status = dict(line.split(":\t", 1) for line in (proc / "status").read_text().splitlines())
    assert status["NoNewPrivs"].strip() == "1"  # NoNewPrivileges=
    assert status["Seccomp"].strip() == "2"  # SystemCallFilter=
    assert int(status["CapBnd"], 16) == 0  # CapabilityBoundingSet=
    assert (proc / "uid_map").read_text() != Path("/proc/self/uid_map").read_text()  # PrivateUsers=
    tmp = (proc / "root/tmp").stat()
    assert (tmp.st_dev, tmp.st_ino) != (os.stat("/tmp").st_dev, os.stat("/tmp").st_ino)  # PrivateTmp=
    mounts = {line.split()[4]: line.split()[5] for line in (proc / "mountinfo").read_text().splitlines()}
    assert "ro" in mounts["/"].split(",")  # ProtectSystem=strict


def _remove_cgroup(top: Path) -> None:
    deadline = time.monotonic() + 10
    while top.exists():
        try:
            _rmdir_tree(top)
        except OSError:  # EBUSY while the killed processes are still being reaped
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _rmdir_tree(top: Path) -> None:
    for path in sorted(top.glob("**/"), key=lambda p: len(p.parts), reverse=True):
        path.rmdir()


def wait_for(check: Callable[[], object], timeout: float, why: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s\n{why()}")
        time.sleep(0.1)


class DaemonLog:
    """The daemon's stdout and stderr (StandardOutput=append:), JSON lines and anything else."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.lines():
            if line.startswith("{"):
                event = json.loads(line)
                if name is None or event.get("event") == name:
                    found.append(event)
        return found


@pytest.fixture
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UserManager]:
    _require(os.geteuid() == 0, "needs root (mount and PID namespaces)")
    host_dir = tmp_path_factory.mktemp("sd")  # short: it holds a unix socket path
    for sub in ("journal", "home", "state", "config/systemd/user", "config/watchkeeper"):
        (host_dir / sub).mkdir(parents=True)
    (host_dir / "config/systemd/user/watchkeeper-test.target").write_text(
        "[Unit]\nDescription=Nothing but what the test starts\n"
    )
    mgr = UserManager(host_dir)
    try:
        mgr.start()
        yield mgr
    finally:
        mgr.close()


def test_under_a_real_systemd(manager: UserManager) -> None:
    host = manager.host_dir
    state = host / "config/watchkeeper/channels.toml"
    log = DaemonLog(host / "daemon.log")
    ns_python = Path(NS_VENV) / Path(sys.executable).relative_to(sys.prefix)
    secrets = [f'Environment="{name}={value}"' for name, value in env().items()]
    unit_text = UNIT.read_text()
    strip = stripped()
    (host / "config/systemd/user" / SERVICE).write_text(
        edited(
            unit_text,
            drop=strip,
            replace={
                "ExecStart": (
                    f"{ns_python} -m watchkeeper --state {NS_DIR}/{state.relative_to(host)} run"
                ),
                "WatchdogSec": f"{WATCHDOG_SEC}s",
                "RestartSec": f"{RESTART_SEC}s",
            },
            add=[
                f"Environment=PYTHONPATH={NS_SRC}",
                *secrets,
                f"StandardOutput=append:{NS_DIR}/daemon.log",
                "StandardError=inherit",
            ],
        )
    )
    print("\nstripped for the user manager:")
    for key, reason in strip.items():
        print(f"  {key}=  ({reason})")

    def why() -> str:
        status = manager.systemctl("status", SERVICE).stdout
        tail = "\n".join(log.lines()[-30:])
        return f"{status}\ndaemon log:\n{tail}\n{manager.why()}"

    dns = manager.dns
    with Emulator().start(host="127.0.0.1", port=0) as emu:
        url = emu.url.replace("127.0.0.1", dns.name)
        chans = [Chan("1000000000001", ttl="20s"), Chan("1000000000002", ttl="20s")]
        write_state(state, url, chans)

        # start returns only once READY=1 came: by then the database is open in StateDirectory
        # and the manager saw the unit become active well after the process started.
        started = manager.systemctl("start", SERVICE)
        assert started.returncode == 0, started.stderr + why()
        shown = manager.show(
            SERVICE,
            "ActiveState",
            "SubState",
            "MainPID",
            "ExecMainStartTimestampMonotonic",
            "ActiveEnterTimestampMonotonic",
        )
        assert (shown["ActiveState"], shown["SubState"]) == ("active", "running"), why()
        waited = int(shown["ActiveEnterTimestampMonotonic"]) - int(
            shown["ExecMainStartTimestampMonotonic"]
        )
        assert waited > 100_000, f"active {waited} µs after exec: Type=notify did not wait for READY=1"
        assert log.events("config.loaded"), why()
        assert (host / "config/watchkeeper/watchkeeper.db").exists(), "no database in StateDirectory"
        first_pid = shown["MainPID"]
        assert_sandboxed(manager.host_pids(SERVICE))

        # STATUS= reaches systemctl.
        status_re = re.compile(r"^2 active, 0 at risk, next renewal in \d+s$")
        wait_for(lambda: status_re.match(manager.show(SERVICE, "StatusText")["StatusText"]), 15, why)
        assert set(emu.channels()) == {c.channel_id for c in chans}
        assert dns.name in dns.queries, "the daemon did not resolve its host through DNS"
        print(manager.systemctl("status", SERVICE).stdout)

        # systemctl reload: SIGHUP, and the changed state file is applied by the same process.
        chans.append(Chan("1000000000003", ttl="20s"))
        write_state(state, url, chans)
        reloaded = manager.systemctl("reload", SERVICE)
        assert reloaded.returncode == 0, reloaded.stderr + why()
        wait_for(
            lambda: any(
                e.get("trigger") == "signal" and e["channels"] == 3 for e in log.events("config.loaded")
            ),
            10,
            why,
        )
        wait_for(lambda: len(emu.channels()) == 3, 10, why)
        status_3 = re.compile(r"^3 active, 0 at risk")
        wait_for(lambda: status_3.match(manager.show(SERVICE, "StatusText")["StatusText"]), 10, why)
        assert manager.show(SERVICE, "MainPID")["MainPID"] == first_pid

        # A hung daemon stops pinging the watchdog: SIGABRT (a Python stack dump), then a restart.
        frozen = manager.systemctl("kill", "--signal=SIGSTOP", "--kill-who=main", SERVICE)
        assert frozen.returncode == 0, frozen.stderr

        def restarted() -> bool:
            now = manager.show(SERVICE, "NRestarts", "ActiveState", "MainPID")
            fresh = now["MainPID"] not in ("0", first_pid)
            return now["NRestarts"] == "1" and now["ActiveState"] == "active" and fresh

        wait_for(restarted, WATCHDOG_SEC + RESTART_SEC + 15, why)
        assert any("Watchdog timeout" in m for m in manager.journal.about(SERVICE)), why()
        assert any("Fatal Python error: Aborted" in line for line in log.lines()), why()
        assert len(log.events("daemon.ready")) == 2

        # SIGTERM: STOPPING=1, exit 0.
        assert manager.systemctl("stop", SERVICE).returncode == 0, why()
        final = manager.show(SERVICE, "ActiveState", "Result", "ExecMainStatus")
        assert final == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, why()
        assert log.events("daemon.stopping")

        # An invalid state file: exit 78 at start, and no restart loop.
        state.write_text(state.read_text() + "\n[unknown_table]\n")
        failed = manager.systemctl("start", SERVICE)
        assert failed.returncode != 0
        props = ("ActiveState", "Result", "ExecMainStatus", "NRestarts")
        expect = {
            "ActiveState": "failed",
            "Result": "exit-code",
            "ExecMainStatus": "78",
            "NRestarts": "0",
        }
        assert manager.show(SERVICE, *props) == expect, why()
        time.sleep(RESTART_SEC * 2.5)
        assert manager.show(SERVICE, *props) == expect, why()
        restarts = [m for m in manager.journal.about(SERVICE) if "Scheduled restart" in m]
        assert len(restarts) == 1, why()  # the watchdog's, none since
        assert log.events("config.invalid"), why()

    text = "\n".join(log.lines())
    assert not [s for s in SECRETS if s in text], "a secret reached the daemon's output"
