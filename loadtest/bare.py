"""A bare Sanic app, the baseline `make bench` measures the service against: the same Sanic, the
same settings and worker count, the same JSON in and out, and nothing else (no Redis, no
PostgreSQL, no bookkeeping). What the service costs beyond it is what the service adds.

With ``BARE_REDIS_URL`` set it also answers ``POST /decided/events/{id}/issue``: the same
route after one call of the service's own issue script (lua/issue.lua) through redis-py on
keys of its own (``BARE_REDIS_PREFIX``), as the simplest app deciding in Redis would. That
is the floor of a Sanic app making one Redis round trip an answer, measured beside both.

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
import redis
from redis.asyncio import BlockingConnectionPool
from redis.asyncio import Redis as AsyncRedis
from sanic import HTTPResponse, Request, Sanic
from sanic.config import Config

import lua
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


def _issue_request(request: Request, event_id: str) -> tuple[int, object] | None:
    """(event id, user id) of an issue request, or None when it cannot be read."""
    try:
        return int(event_id), orjson.loads(request.body)["user_id"]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _bad_request() -> HTTPResponse:
    return _json({"error": {"code": "invalid_request", "message": "bad request"}}, 400)


def _iso(now_us: int) -> str:
    seconds, micros = divmod(now_us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


def _issued_at() -> str:
    return _iso(time.time_ns() // 1000)


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
        read = _issue_request(request, event_id)
        if read is None:
            return _bad_request()
        event, user = read
        return _json(
            {"event_id": event, "user_id": user, "ordinal": next(ordinals), "issued_at": _issued_at()}, 201
        )

    @app.get("/events/<event_id:str>")
    async def event(request: Request, event_id: str) -> HTTPResponse:
        return _json({"id": int(event_id), **_EVENT, "remaining": 999_000_000})

    redis_url = os.environ.get("BARE_REDIS_URL")
    if redis_url:
        _decided_route(app, redis_url, decision_keys(os.environ.get("BARE_REDIS_PREFIX", "bench-bare")))
    return app


def decision_keys(prefix: str) -> tuple[str, str, str]:
    """The decided route's event: meta, seq and users, as the issue script takes them."""
    return f"{prefix}:{{ev}}:meta", f"{prefix}:{{ev}}:seq", f"{prefix}:{{ev}}:users"


def open_decision_event(client: redis.Redis, prefix: str, ttl_s: int = 3600) -> None:
    """An open event for the decided route, with room for any run; its keys expire on their own."""
    meta, seq, _ = decision_keys(prefix)
    expire_at_ms = int(time.time() * 1000) + ttl_s * 1000
    fields = {"status": "open", "quantity": 10**12, "starts_at": 0, "ends_at": 0, "expire_at": expire_at_ms}
    client.hset(meta, mapping=fields)
    client.set(seq, 0)
    client.pexpireat(meta, expire_at_ms)
    client.pexpireat(seq, expire_at_ms)


def _decided_route(app: Sanic[Config, SimpleNamespace], redis_url: str, keys: tuple[str, str, str]) -> None:
    script = lua.source("issue")

    @app.before_server_start
    async def connect(app: Sanic[Config, SimpleNamespace], _: object) -> None:
        # A blocking pool: redis-py's plain one raises past its limit instead of waiting.
        app.ctx.redis = AsyncRedis(
            connection_pool=BlockingConnectionPool.from_url(redis_url, max_connections=64)
        )
        app.ctx.issue_sha = await app.ctx.redis.script_load(script)

    @app.after_server_stop
    async def disconnect(app: Sanic[Config, SimpleNamespace], _: object) -> None:
        await app.ctx.redis.aclose()

    @app.post("/decided/events/<event_id:str>/issue")
    async def decided_issue(request: Request, event_id: str) -> HTTPResponse:
        read = _issue_request(request, event_id)
        if read is None:
            return _bad_request()
        event, user = read
        now_us, outcome = await request.app.ctx.redis.evalsha(request.app.ctx.issue_sha, 3, *keys, 0, user)
        if outcome <= 0:
            return _json({"error": {"code": "refused", "message": f"outcome {outcome}"}}, 409)
        return _json({"event_id": event, "user_id": user, "ordinal": outcome, "issued_at": _iso(now_us)}, 201)


class BareApp:
    """The bare app as a process of its own on a free port, for the benchmark."""

    def __init__(self, workers: int, log_path: Path, redis_url: str | None = None) -> None:
        """With ``redis_url``, the decided route too, on an event of its own there."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.log_path = log_path
        self.redis_url = redis_url
        self.redis_prefix = f"bench-bare:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the bare app is not running")
        return self.proc.pid

    def start(self, timeout_s: float = 30.0) -> None:
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), "WORKERS": str(self.workers)}
        if self.redis_url:
            env.update(BARE_REDIS_URL=self.redis_url, BARE_REDIS_PREFIX=self.redis_prefix)
            with redis.Redis.from_url(self.redis_url, socket_timeout=5) as client:
                open_decision_event(client, self.redis_prefix)
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
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.redis_url:
            with redis.Redis.from_url(self.redis_url, socket_timeout=5) as client:
                client.delete(*decision_keys(self.redis_prefix))


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
