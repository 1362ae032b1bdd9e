"""PostgreSQL down for 30 s under load: issuing goes on, buffers hold, every row lands."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from harness.api import Api, Reply, burst
from harness.invariants import assert_invariants, keyspace, wait_stored
from harness.postgres_server import PostgresServer
from harness.service_process import ServiceProcess
from service.schema import create_database, migrate

pytestmark = pytest.mark.slow

OUTAGE_S = float(os.environ.get("PG_OUTAGE_S", "30"))


@pytest.fixture
async def own_redis(redis_url: str) -> AsyncIterator[tuple[str, Redis]]:
    """A Redis db of its own: the private PostgreSQL numbers its events from 1 again, and
    event keys are named by id, so sharing the session's db would mix two events 1."""
    url = redis_url.rsplit("/", 1)[0] + "/13"
    client = Redis.from_url(url, decode_responses=True)
    await client.flushdb()
    yield url, client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def private_postgres() -> AsyncIterator[tuple[PostgresServer, asyncpg.Pool]]:
    server = PostgresServer().start()
    url = server.url("coupons")
    await create_database(url)
    await migrate(url)
    pool = await asyncpg.create_pool(url, min_size=0, max_size=2)
    try:
        yield server, pool
    finally:
        await pool.close()
        server.remove()


async def _steady_load(api: Api, event_id: int, prefix: str, seconds: float, rate: int) -> list[Reply]:
    """Open-loop load: ``rate`` new users per second for ``seconds``."""
    replies: list[Reply] = []
    tasks = []
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < seconds:
        for _ in range(rate // 10):
            tasks.append(asyncio.create_task(api.issue(event_id, f"{prefix}{n}")))
            n += 1
        await asyncio.sleep(0.1)
    replies.extend(await asyncio.gather(*tasks))
    return replies


async def test_postgres_down_under_load_loses_nothing_and_a_full_buffer_answers_503(
    private_postgres: tuple[PostgresServer, asyncpg.Pool],
    own_redis: tuple[str, Redis],
    start_service: Callable[..., ServiceProcess],
    http: aiohttp.ClientSession,
) -> None:
    server, pg = private_postgres
    redis_url, redis = own_redis
    # One worker (so no guess at how connections spread), 4,000 rows of buffer: 30 s at
    # 100/s fits; the flood after it does not.
    service = start_service(
        DATABASE_URL=server.url("coupons"),
        REDIS_URL=redis_url,
        BUFFER_MAX_ROWS="4000",
        FLUSH_BATCH_ROWS="1000",
        FLUSH_RETRY_MAX_S="1",
        WORKERS="1",
    )
    api = Api(service.url, http)
    quantity = 100_000
    event_id = await api.open_event(quantity)
    keys = (await keyspace(pg)).event(event_id)  # read now: the database goes down below
    before = await burst(api, event_id, [f"before{n}" for n in range(200)])
    assert all(reply.status == 201 for reply in before)
    await wait_stored(pg, redis, event_id)

    server.stop("immediate")
    during = await _steady_load(api, event_id, "during", OUTAGE_S, rate=100)
    assert Counter(reply.status for reply in during) == Counter({201: len(during)}), "issuing stopped"
    ready = await api.request("GET", "/ready")
    assert ready.status == 503 and ready.body["checks"]["postgres"] is False
    # Past the buffers' bound: 503, and Redis decided nothing for those.
    flood = await burst(api, event_id, [f"flood{n}" for n in range(3000)])
    flood_statuses = Counter(reply.status for reply in flood)
    assert set(flood_statuses) <= {201, 503} and flood_statuses[503] > 0, flood_statuses
    answered = before + during + flood
    issued_201 = sum(reply.status == 201 for reply in answered)
    assert int(await redis.get(keys.seq)) == issued_201

    server.start()
    await wait_stored(pg, redis, event_id, timeout_s=60)
    rows = await assert_invariants(pg, event_id, quantity, redis=redis)
    stored = {row["user_id"]: row["ordinal"] for row in rows}
    assert {r.body["user_id"]: r.body["ordinal"] for r in answered if r.status == 201} == stored
    assert (await api.issue(event_id, "after")).status == 201
    await wait_stored(pg, redis, event_id)
