"""The HTTP shell: reads a request, hands it to the Emulator, writes the answer.

Every HTTP method reaches the same dispatcher (Zoho answers unknown verbs such as COPY with a JSON
400, not a 501), connections are kept alive, and Nagle is off so a small answer is not held back
waiting for an ACK.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit

from watchkeeper.emulator import responses as r


class Dispatcher(Protocol):
    def dispatch(self, request: r.Request) -> r.Response: ...


class EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], dispatcher: Dispatcher) -> None:
        super().__init__(address, _Handler)
        self.dispatcher = dispatcher

    def stop(self) -> None:
        """Shut down without waiting out serve_forever's poll interval: throw-away connections wake
        its select() until the loop has seen the shutdown request."""
        closer = threading.Thread(target=self.shutdown)
        closer.start()
        host, port = self.server_address[:2]
        while closer.is_alive():
            with contextlib.suppress(OSError):
                socket.create_connection((str(host), int(port)), timeout=0.5).close()
            closer.join(0.01)
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: EmulatorServer

    def __getattr__(self, name: str) -> Callable[[], None]:
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        split = urlsplit(self.path)
        request = r.Request(
            method=self.command.upper(),
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        try:
            response = self.server.dispatcher.dispatch(request)
        except Exception:
            traceback.print_exc(file=sys.stderr)
            response = r.json_response(500, r.error("INTERNAL_ERROR"))
        if response.delay > 0:
            time.sleep(response.delay)
        self._write(response)

    def _write(self, response: r.Response) -> None:
        self.send_response_only(response.status)
        self.send_header("Server", "ZGS")
        for key, value in response.headers.items():
            self.send_header(key, value)
        if response.status != 204:
            if response.content_type is not None:
                self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if response.body and self.command != "HEAD" and response.status != 204:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: object) -> None:
        """Silent: request lines would carry notify_url query values and fill test output."""
