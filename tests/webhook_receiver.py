"""A local webhook receiver for tests: records every POST, answers 500 to the first `failures`."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from worker.security.secret_box import generate_key

SECRET_KEY = generate_key()
# What a worker needs to deliver here: plain http to 127.0.0.1 on a random port, and a key for the secrets.
RECEIVER_ENV = {
    "FINPULSE_WEBHOOK_ALLOW_PRIVATE": "true",
    "FINPULSE_WEBHOOK_ALLOW_HTTP": "true",
    "FINPULSE_WEBHOOK_ALLOWED_PORTS": "1024-65535",
    "FINPULSE_SECRET_KEYS": SECRET_KEY,
}


class Receiver:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                self.send_response(500 if len(receiver.requests) <= receiver.failures else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
