"""A worker killed with kill -9 mid-load: replaced, and every 201 it answered is stored."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Callable

import aiohttp
import asyncpg
from redis.asyncio import Redis

from harness.api import Api, burst
from harness.invariants import assert_invariants, wait_stored
from harness.service_process import ServiceProcess


async def test_a_killed_worker_is_replaced_and_its_buffered_issues_are_stored(
    start_service: Callable[..., ServiceProcess], http: aiohttp.ClientSession, pg: asyncpg.Pool, redis: Redis
) -> None:
    # Rows stay buffered for 60 s: whatever the killed worker answered 201 is only in its
    # memory and in Redis's records when it dies.
    service = start_service(FLUSH_INTERVAL_MS="60000", FLUSH_BATCH_ROWS="100000")
    api = Api(service.url, http)
    quantity = 600
    event_id = await api.open_event(quantity)
    before = service.worker_pids()
    assert len(before) == 2

    async def kill_one_worker() -> None:
        await asyncio.sleep(0.05)
        os.kill(before[-1], signal.SIGKILL)

    replies, _ = await asyncio.gather(burst(api, event_id, [f"k{n}" for n in range(1500)]), kill_one_worker())

    statuses = Counter(reply.status for reply in replies)
    # Requests on the killed worker's connections fail at the transport (-1); none is a 5xx.
    assert set(statuses) <= {201, 410, -1}, statuses
    deadline = time.monotonic() + 15
    while len(service.worker_pids()) < 2 or before[-1] in service.worker_pids():
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        await asyncio.sleep(0.1)

    # Nothing flushes for 60 s, so only the replacement's start-up reconcile can bring
    # PostgreSQL level with Redis: it writes every record made before it started, the dead
    # worker's buffered rows among them.
    await wait_stored(pg, redis, event_id, timeout_s=20)
    answered = {reply.body["user_id"]: reply.body["ordinal"] for reply in replies if reply.status == 201}
    rows = await assert_invariants(pg, event_id, quantity, redis=redis)
    assert answered.items() <= {row["user_id"]: row["ordinal"] for row in rows}.items(), (
        "a 201 was not stored"
    )
    # A SIGTERM within moments of a worker's start is not acted on by Sanic's manager
    # (docs/reliability.md, "SIGTERM right after start"): the replacement must be serving.
    service.wait_ready()
    await asyncio.sleep(0.5)
    assert service.stop(signal.SIGTERM) == 0
    await assert_invariants(pg, event_id, quantity, redis=redis)
