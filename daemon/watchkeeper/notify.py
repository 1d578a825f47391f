"""systemd's notification protocol (sd_notify) in plain Python, without libsystemd.

One datagram per message on the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a path, or an abstract
name written with a leading ``@``). Without that variable every call is a no-op, so the daemon
behaves the same outside systemd. Sending never raises: a notification that cannot be delivered
must not take the daemon down. ``STOPPING=1`` is final: whatever thread tries to send after it
(a pass finishing late, the watchdog) sends nothing, so systemd never sees a STATUS after the stop.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = _watchdog_interval(env)
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        with self._lock:
            return not self._stopped and self._send(lines)

    def _send(self, lines: tuple[str, ...]) -> bool:
        if not self.address:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        """systemd >= 253 wants the monotonic time with it, to tell this reload from an older one."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """The last message: nothing is sent after it."""
        with self._lock:
            self._stopped = True
            return self._send(("STOPPING=1",))

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, when the watchdog is meant for this process."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None
