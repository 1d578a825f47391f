"""``watchkeeper demo``: the whole job on one machine with no Zoho account.

The emulator plays Zoho, a tiny HTTP server plays the operator's webhook receiver, and the real
daemon (the same Service that systemd runs) keeps a few short-lived channels alive. Every few
seconds a record change is simulated in the emulator, and the receiver logs what arrives, so the
output shows creations, renewals and notifications flowing through channels that would otherwise
have expired several times over.

Then Zoho goes down for longer than a channel lives: the channels lapse (``channel.lapsed``) while
records keep changing, come back when Zoho does (``channel.recovered``: the gap), and a minute
after the gap (its margin) the backfill redelivers what changed meanwhile: ``backfill.finished``,
and the receiver logs the recovered notifications with ``backfill`` set.
"""

from __future__ import annotations

import json
import tempfile
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from watchkeeper import logs
from watchkeeper.config import parse_duration
from watchkeeper.emulator import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_REFRESH_TOKEN,
    Emulator,
    Fault,
)
from watchkeeper.notify import Notifier
from watchkeeper.service import Service

MODULES = ("Contacts", "Deals", "Leads")
CHANGE_EVERY = 7.0
"""Seconds between simulated record changes."""
OUTAGE_AFTER = 20.0
"""Seconds of normal operation before Zoho goes down."""


class _Receiver(BaseHTTPRequestHandler):
    """The operator's webhook endpoint: logs each notification Zoho (the emulator) delivers."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            payload = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            payload = {}
        backfill: Any = payload.get("backfill")
        logs.get_logger().info(
            "demo.notification_received",
            channel_id=payload.get("channel_id"),
            module=payload.get("module"),
            operation=payload.get("operation"),
            ids=payload.get("ids"),
            backfill=backfill if isinstance(backfill, dict) else None,
        )
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the structured line above says it all."""


def state_file(folder: Path, api: str, receiver: str, channels: int, ttl: str) -> Path:
    """A state file on the emulator: ``channels`` channels, one module each in turn."""
    blocks = [
        f"""
[[channels]]
channel_id = "{1000000068001 + i}"
name = "demo-{MODULES[i % len(MODULES)].lower()}"
events = ["{MODULES[i % len(MODULES)]}.all"]
notify_url = "{receiver}/zoho?source=demo"
token = "demo-verification-token-{i}"
ttl = "{ttl}"
backfill = true
"""
        for i in range(channels)
    ]
    path = folder / "channels.toml"
    path.write_text(
        f"""# Written by `watchkeeper demo`: an account on the local emulator.
[daemon]
database = "demo.db"
reconcile_every = "1m"

[accounts.demo]
product = "crm"
api_version = "v8"
api_domain = "{api}"
accounts_url = "{api}"
client_id = "{DEFAULT_CLIENT_ID}"
client_secret = "{DEFAULT_CLIENT_SECRET}"
refresh_token = "{DEFAULT_REFRESH_TOKEN}"
"""
        + "".join(blocks)
    )
    return path


def demo(duration: float | None = None, channels: int = 3, ttl: str = "30s") -> int:
    log = logs.get_logger()
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, name="demo-receiver", daemon=True).start()
    receiver_url = f"http://127.0.0.1:{receiver.server_address[1]}"
    stop = threading.Event()
    with Emulator() as emu, tempfile.TemporaryDirectory(prefix="watchkeeper-demo-") as tmp:
        path = state_file(Path(tmp), emu.url, receiver_url, channels, ttl)
        log.info(
            "demo.started",
            zoho=emu.url,
            receiver=receiver_url,
            state=str(path),
            channels=channels,
            ttl=ttl,
        )
        service = Service(path, notifier=Notifier({}))

        outage = max(2 * parse_duration(ttl), timedelta(seconds=45))

        def record_changes() -> None:
            n = 0
            down = False
            while not stop.wait(CHANGE_EVERY):
                if not down and n * CHANGE_EVERY >= OUTAGE_AFTER:
                    down = True
                    now = emu.now()
                    emu.add_fault(Fault(status=503, start=now, end=now + outage, paths="any"))
                    log.info("demo.outage", seconds=outage.total_seconds(), note="Zoho is down")
                n += 1
                module = MODULES[n % len(MODULES)]
                op: Literal["create", "edit"] = "edit" if n % 2 else "create"
                delivered = emu.simulate_record_change(module, op, [f"{5725767000000 + n}"])
                log.info("demo.record_changed", module=module, op=op, deliveries=len(delivered))

        threading.Thread(target=record_changes, name="demo-changes", daemon=True).start()
        timer = threading.Timer(duration, service.request_stop) if duration else None
        if timer:
            timer.start()
        try:
            return service.run()
        finally:
            stop.set()
            if timer:
                timer.cancel()
            receiver.shutdown()
            receiver.server_close()
