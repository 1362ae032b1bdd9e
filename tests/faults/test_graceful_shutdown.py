"""A stop signal under load (to the manager, or to the whole process group as Ctrl-C and
systemd send it): requests in flight are answered, every buffered row is stored."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import asyncpg
import psutil
import pytest
from faulty.middlewares import LatencyMiddleware
from redis.asyncio import Redis

from harness.api import Api, Reply
from harness.invariants import assert_invariants, keyspace
from harness.proxy import proxy_to, running, through
from harness.service_process import ServiceProcess

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning"),
]

RATE = 300  # new users per second, open loop
SIGTERM_AT_S = 1.5
LOAD_S = 2.5


@pytest.mark.parametrize(
    ("to", "sig"),
    [("manager", signal.SIGTERM), ("process group", signal.SIGTERM), ("process group", signal.SIGINT)],
    ids=["SIGTERM to the manager", "SIGTERM to the group", "SIGINT to the group (Ctrl-C)"],
)
async def test_sigterm_under_load_answers_in_flight_requests_and_stores_every_row(
    to: str,
    sig: signal.Signals,
    start_service: Callable[..., ServiceProcess],
    http: aiohttp.ClientSession,
    redis_url: str,
    pg: asyncpg.Pool,
    redis: Redis,
) -> None:
    # Redis 50-100 ms away each way, so that requests are mid-decision when the signal
    # lands; rows stay buffered (no timed flush), so only the drain can store them.
    redis_proxy = proxy_to(redis_url, 6379)
    redis_proxy.add_ingress_rule(LatencyMiddleware(50, 100))
    redis_proxy.add_egress_rule(LatencyMiddleware(50, 100))
    with running(redis_proxy):
        service = start_service(
            REDIS_URL=through(redis_url, redis_proxy),
            REDIS_TIMEOUT_MS="3000",
            FLUSH_INTERVAL_MS="60000",
            FLUSH_BATCH_ROWS="100000",
        )
        assert service.proc is not None
        api = Api(service.url, http)
        quantity = 500
        event_id = await api.open_event(quantity)
        await asyncio.to_thread(service.settle)  # the signal must land on a settled service

        sent: list[tuple[float, asyncio.Task[tuple[Reply, float]]]] = []
        sigterm_at = 0.0

        async def timed(user: str) -> tuple[Reply, float]:
            try:
                reply = await api.issue(event_id, user)
            except aiohttp.ClientError as exc:
                reply = Reply(-1, repr(exc))
            return reply, time.monotonic()

        started = time.monotonic()
        n = 0
        while (now := time.monotonic()) - started < LOAD_S:
            if not sigterm_at and now - started >= SIGTERM_AT_S:
                rows_at_sigterm = await pg.fetchval(
                    "SELECT count(*) FROM coupon_issues WHERE event_id = $1", event_id
                )
                if to == "manager":
                    os.kill(service.proc.pid, sig)
                else:
                    # Every process of the service at once, as Ctrl-C in a terminal,
                    # systemd's default KillMode (control-group), `timeout` and
                    # `kill -TERM -PGID` send it.
                    os.killpg(service.proc.pid, sig)
                sigterm_at = time.monotonic()
            for _ in range(RATE // 50):
                sent.append((time.monotonic(), asyncio.create_task(timed(f"t{n}"))))
                n += 1
            await asyncio.sleep(0.02)
        results = [(at, *(await task)) for at, task in sent]
        exit_code = await asyncio.to_thread(service.proc.wait, 60)
        stopped_after_s = time.monotonic() - sigterm_at

    assert exit_code == 0
    # Idle keep-alive connections do not hold the stop until GRACEFUL_TIMEOUT_S (20 s).
    assert stopped_after_s < 10, stopped_after_s
    statuses = Counter(reply.status for _, reply, _ in results)
    # Refused after the signal: the connection (new ones), or 503 for a request that reached
    # the worker on a kept-alive connection once its drain had begun (decided nothing).
    assert set(statuses) <= {201, 410, 503, -1}, statuses
    late = [(at, reply) for at, reply, _ in results if reply.status == 503]
    assert all(at > sigterm_at and reply.code == "unavailable" for at, reply in late), late
    early = [reply for at, reply, _ in results if at < sigterm_at - 0.2]
    assert early and all(reply.status in (201, 410) for reply in early), Counter(r.status for r in early)
    in_flight = [r for at, r, answered in results if at < sigterm_at < answered and r.status == 201]
    assert in_flight, "no request was in flight when the signal landed"

    # The process has exited: its drain stored every row it had answered 201 for.
    issued_201 = {
        reply.body["user_id"]: reply.body["ordinal"] for _, reply, _ in results if reply.status == 201
    }
    assert rows_at_sigterm < len(issued_201)
    rows = await assert_invariants(pg, event_id, quantity, redis=redis)
    assert {row["user_id"]: row["ordinal"] for row in rows} == issued_201
    assert int(await redis.get((await keyspace(pg)).event(event_id).seq)) == len(issued_201)


@pytest.mark.parametrize("after_ready_s", [None, 0.0, 0.3, 0.8])
def test_sigterm_during_or_just_after_start_up_stops_every_process(
    service_env: dict[str, str], tmp_path: Path, after_ready_s: float | None
) -> None:
    """One SIGTERM, sent as soon as the manager has started a worker (before every worker
    has acknowledged its start: None), or soon after the service is ready, stops the
    service with exit 0 and leaves no process behind. Sanic's own handler re-queued a
    signal sent during start-up for ever, could crash the manager (exit 1) mid-call, and
    one worker could wait for ever on a task that lost its cancellation
    (docs/reliability.md, "SIGTERM right after start")."""
    service = ServiceProcess(service_env, tmp_path / "service.log")
    service.launch()
    assert service.proc is not None
    deadline = time.monotonic() + 30
    if after_ready_s is None:
        while not service.worker_pids():
            assert time.monotonic() < deadline and service.proc.poll() is None, service.log()
            time.sleep(0.01)
    else:
        service.wait_ready()
        time.sleep(after_ready_s)
    family = [psutil.Process(service.proc.pid), *psutil.Process(service.proc.pid).children(recursive=True)]
    service.proc.send_signal(signal.SIGTERM)
    try:
        code = service.proc.wait(30)
    except subprocess.TimeoutExpired:
        service.stop(timeout_s=1)  # its stacks go into the log
        raise AssertionError(f"not stopped 30 s after one SIGTERM:\n{service.log()}") from None
    assert code == 0, service.log()
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, alive
