"""A colour that turns bad right after a switch: /ready answers 200 READY_OK times (1), then
503. Started by ops/bluegreen/switch.sh in tests/deploy/test_switch.py to make it roll back."""

from __future__ import annotations

import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ready_left = int(os.environ.get("READY_OK", "1"))


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        global ready_left
        status = 200 if ready_left > 0 else 503
        if self.path == "/ready":
            ready_left -= 1
        body = b'{"status":"ready"}' if status == 200 else b'{"error":{"code":"unavailable","message":"x"}}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
