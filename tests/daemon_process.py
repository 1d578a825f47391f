"""`watchkeeper run` as a real process: its JSON log lines and its sd_notify datagrams, collected
by threads so a test can wait for them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.statefiles import env as secrets_env


class DaemonProcess:
    def __init__(
        self,
        state: Path,
        *,
        extra_env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = ("run",),
        watchdog_usec: int | None = 4_000_000,
    ) -> None:
        self.state = state
        self.lines: list[str] = []
        """Every stdout line as printed."""
        self.events: list[dict[str, Any]] = []
        self.datagrams: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        name = f"watchkeeper-test-{uuid.uuid4().hex}"
        self._notify.bind("\0" + name)
        self._notify.settimeout(0.2)
        self._closed = False
        env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "WATCHDOG_USEC")}
        env.update({**secrets_env(), "NOTIFY_SOCKET": "@" + name, **(extra_env or {})})
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "watchkeeper", "--state", str(state), "--log-format", "json", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.started = time.monotonic()
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_notify, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            body = line[3:] if line[:1] == "<" and line[2:3] == ">" else line
            with self._changed:
                self.lines.append(line)
                self.events.append(json.loads(body))
                self._changed.notify_all()

    def _read_notify(self) -> None:
        while not self._closed:
            try:
                data = self._notify.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._changed:
                self.datagrams.append((time.monotonic(), data.decode()))
                self._changed.notify_all()

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = predicate()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not result):
                    if self.proc.poll() is not None:
                        result = predicate()
                        if result:
                            return result
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what}; last events: "
                        f"{[e.get('event') for e in self.events[-15:]]}"
                    )
                self._changed.wait(min(left, 0.5))

    def wait_event(
        self, name: str, timeout: float = 30, after: int = 0, **fields: Any
    ) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next(
                (
                    e
                    for e in self.events[after:]
                    if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
                ),
                None,
            )

        event: dict[str, Any] = self.wait_for(found, timeout, f"event {name} {fields}")
        return event

    def renewed(self, after: int = 0, **fields: Any) -> list[str]:
        """The channels renewed since event ``after``, one id a renewal, as the ``channels.renewed``
        lines (with these ``fields``) name them. A test's requests are smaller than the ids a line
        names, so each line must name every channel it counts."""
        ids: list[str] = []
        for e in self.events[after:]:
            if e.get("event") == "channels.renewed" and all(e.get(k) == v for k, v in fields.items()):
                assert len(e["channel_ids"]) == e["count"], e
                ids.extend(e["channel_ids"])
        return ids

    def wait_renewed(
        self, channel_id: str | None = None, timeout: float = 30, after: int = 0, **fields: Any
    ) -> None:
        """Until a ``channels.renewed`` line after event ``after`` names ``channel_id`` (any
        channel, if None)."""

        def found() -> bool:
            ids = self.renewed(after, **fields)
            return channel_id in ids if channel_id is not None else bool(ids)

        self.wait_for(found, timeout, f"a renewal of {channel_id or 'a channel'} {fields}")

    def wait_datagram(self, prefix: str, timeout: float = 30, after: int = 0) -> str:
        def found() -> str | None:
            return next((d for _, d in self.datagrams[after:] if d.startswith(prefix)), None)

        datagram: str = self.wait_for(found, timeout, f"datagram {prefix}")
        return datagram

    def count(self, name: str) -> int:
        return sum(1 for e in self.events if e.get("event") == name)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._closed = True
        for thread in self._threads:
            thread.join(timeout=5)
        self._notify.close()
        return code

    @property
    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read() if self.proc.poll() is not None else ""


def watchkeeper(state: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """A one-shot `watchkeeper --state STATE ARGS...` as a process, with the test secrets set."""
    return subprocess.run(
        [sys.executable, "-m", "watchkeeper", "--state", str(state), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **secrets_env()},
        check=check,
    )


def start(daemons: list[DaemonProcess], state: Path, **kwargs: Any) -> DaemonProcess:
    """A daemon on ``state``, stopped by the ``daemons`` fixture when the test ends."""
    daemon = DaemonProcess(state, **kwargs)
    daemons.append(daemon)
    return daemon
