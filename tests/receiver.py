"""A notify_url receiver on 127.0.0.1 that keeps every JSON body it is sent, answering with the
status a test sets (or what a function of the body says), for the backfill tests and the soak."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

Answer = Callable[[dict[str, Any]], int]


class Receiver:
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.answer: Answer | None = None
        """When set, decides the status of each delivery from its body."""
        self.bodies: list[dict[str, Any]] = []
        """Every body received, accepted or not, in arrival order."""
        self.accepted: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                status = receiver._take(body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                """Silent: request lines carry notify_url query values."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _take(self, body: dict[str, Any]) -> int:
        with self._lock:
            status = self.answer(body) if self.answer is not None else self.status
            self.bodies.append(body)
            if 200 <= status < 300:
                self.accepted.append(body)
            return status

    def url(self, query: str = "", path: str = "hook") -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}/{path}" + (f"?{query}" if query else "")

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def backfilled(self) -> list[dict[str, Any]]:
        """Accepted bodies that carry the ``backfill`` key."""
        with self._lock:
            return [b for b in self.accepted if "backfill" in b]
