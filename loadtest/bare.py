"""A bare Sanic app, the baseline `make bench` measures the service against: the same Sanic, the
same settings and worker count, the same JSON in and out, and nothing else (no Redis, no
PostgreSQL, no bookkeeping). What the service costs beyond it is what the service adds.

    HOST=127.0.0.1 PORT=8100 WORKERS=2 python -m loadtest.bare
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import orjson
from sanic import HTTPResponse, Request, Sanic
from sanic.config import Config

from harness.ports import free_port

# The service's own settings (service/app.py, service/server.py, service/config.py defaults),
# so that what differs between the two is the service's work, not Sanic's configuration.
REQUEST_MAX_BYTES = 16_384
BACKLOG = 4096

_JSON = "application/json"
# GET /events/{id} answers a body of the service's shape and size: the event `make bench` opens.
_EVENT = {
    "name": "bench 2026-12-01T00:00:00Z",
    "status": "open",
    "quantity": 1_000_000_000,
    "starts_at": "2026-12-01T00:00:00.000000Z",
    "ends_at": None,
    "coupon": None,
}


def _json(body: object, status: int = 200) -> HTTPResponse:
    return HTTPResponse(orjson.dumps(body), status=status, content_type=_JSON)


def _issued_at() -> str:
    now_us = time.time_ns() // 1000
    seconds, micros = divmod(now_us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


def create_app() -> Sanic[Config, SimpleNamespace]:
    app = Sanic("bench_bare", configure_logging=False)
    app.config.update(
        REQUEST_MAX_SIZE=REQUEST_MAX_BYTES,
        ACCESS_LOG=False,
        NOISY_EXCEPTIONS=False,
        FALLBACK_ERROR_FORMAT="json",
    )
    ordinals = itertools.count(1)

    @app.get("/health")
    async def health(request: Request) -> HTTPResponse:
        return _json({"status": "ok"})

    @app.post("/events/<event_id:str>/issue")
    async def issue(request: Request, event_id: str) -> HTTPResponse:
        try:
            user = orjson.loads(request.body)["user_id"]
            event = int(event_id)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return _json({"error": {"code": "invalid_request", "message": "bad request"}}, 400)
        return _json(
            {"event_id": event, "user_id": user, "ordinal": next(ordinals), "issued_at": _issued_at()}, 201
        )

    @app.get("/events/<event_id:str>")
    async def event(request: Request, event_id: str) -> HTTPResponse:
        return _json({"id": int(event_id), **_EVENT, "remaining": 999_000_000})

    return app


class BareApp:
    """The bare app as a process of its own on a free port, for the benchmark."""

    def __init__(self, workers: int, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the bare app is not running")
        return self.proc.pid

    def start(self, timeout_s: float = 30.0) -> None:
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), "WORKERS": str(self.workers)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "loadtest.bare"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Sanic stops its workers with killpg: a process group of its own.
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the bare app exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    # Both workers share the socket; give the later one time to start too.
                    time.sleep(0.5)
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the bare app did not answer in {timeout_s}s; see {self.log_path}")

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def main() -> None:
    from functools import partial

    from sanic.worker.loader import AppLoader

    loader = AppLoader(factory=partial(create_app))
    app = loader.load()
    app.prepare(
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8100")),
        workers=int(os.environ.get("WORKERS", "2")),
        access_log=False,
        motd=False,
        backlog=BACKLOG,
    )
    Sanic.serve(primary=app, app_loader=loader)


if __name__ == "__main__":
    main()
