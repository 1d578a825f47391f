"""``serve()``: the emulator in the foreground, for ``watchkeeper emulate`` and manual demos."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from watchkeeper.emulator.emulator import Emulator
from watchkeeper.emulator.state import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_ORG,
    DEFAULT_REFRESH_TOKEN,
)


def serve(host: str = "127.0.0.1", port: int = 8950, **kwargs: Any) -> None:
    """Run until SIGINT or SIGTERM. The credentials printed are the emulator's fixed ones, not
    secrets: anyone on the machine can read them from the source."""
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    emulator = Emulator(**kwargs).start(host, port)
    try:
        print(
            f"Zoho emulator listening on {emulator.url} (api_domain = accounts_url); org {DEFAULT_ORG}: "
            f"client_id={DEFAULT_CLIENT_ID} client_secret={DEFAULT_CLIENT_SECRET} "
            f"refresh_token={DEFAULT_REFRESH_TOKEN}; admin API at {emulator.url}/__emulator/",
            flush=True,
        )
        stop.wait()
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
