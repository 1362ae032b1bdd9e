"""Two hosts share a Redis that comes back older while one of them still buffers rows.

Host A cannot reach PostgreSQL (its role may not log in), so the rows it answered 201 stay
in its buffer; Redis then restarts from a snapshot taken before them. The verification of
that Redis, on whichever host runs it, must wait for host A's buffer (published in Redis by
A's beacon) before it rebuilds, so nothing A answered is handed out again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from harness.api import Api, answered, burst
from harness.invariants import assert_invariants, wait_stored
from harness.redis_server import RedisServer
from harness.service_process import ServiceProcess

pytestmark = pytest.mark.slow

ROLE = "coupon_host_a"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, aof=False).start()
    yield server
    server.kill()


@pytest.fixture
async def host_a_role(pg: asyncpg.Pool) -> AsyncIterator[str]:
    """A PostgreSQL role of host A's own, so its link to PostgreSQL can be cut alone."""
    await pg.execute(f"DROP ROLE IF EXISTS {ROLE}")
    await pg.execute(f"CREATE ROLE {ROLE} LOGIN SUPERUSER")
    yield ROLE
    # Host A's sessions own their staging tables until they end: the test stops host A.
    for _ in range(50):
        await pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", ROLE)
        try:
            await pg.execute(f"DROP ROLE IF EXISTS {ROLE}")
            return
        except asyncpg.DependentObjectsStillExistError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"role {ROLE} still owns objects")


async def test_a_redis_back_older_waits_for_another_hosts_buffer_and_hands_none_of_it_out_again(
    private_redis: RedisServer,
    host_a_role: str,
    start_service: Callable[..., ServiceProcess],
    http: aiohttp.ClientSession,
    pg: asyncpg.Pool,
    database_url: str,
) -> None:
    server = private_redis
    redis = Redis.from_url(server.url, decode_responses=True)
    host_a_url = database_url.replace("postgres@", f"{host_a_role}@", 1)
    host_a_process = start_service(REDIS_URL=server.url, DATABASE_URL=host_a_url, FLUSH_RETRY_MAX_S="0.5")
    host_a = Api(host_a_process.url, http)
    host_b = Api(start_service(REDIS_URL=server.url).url, http)
    event_id = await host_b.open_event(1000)
    early = await burst(host_b, event_id, [f"e{n}" for n in range(20)])
    assert all(reply.status == 201 for reply in early)
    await wait_stored(pg, redis, event_id)
    await redis.save()  # the snapshot Redis comes back to: it knows e0..e19 only

    # Host A loses PostgreSQL; what it answers now stays in its buffer (and in Redis).
    await pg.execute(f"ALTER ROLE {host_a_role} NOLOGIN")
    await pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", host_a_role)
    buffered = await burst(host_a, event_id, [f"a{n}" for n in range(100)])
    assert all(reply.status == 201 for reply in buffered), {reply.status for reply in buffered}
    await asyncio.sleep(0.5)
    assert await pg.fetchval("SELECT count(*) FROM coupon_issues WHERE event_id = $1", event_id) == 20

    server.kill()
    server.start()
    await redis.aclose()
    redis = Redis.from_url(server.url, decode_responses=True)

    async def give_back_postgres() -> float:
        await asyncio.sleep(3.0)
        await pg.execute(f"ALTER ROLE {host_a_role} LOGIN")
        return time.monotonic()

    returned = asyncio.create_task(give_back_postgres())
    first = await answered(host_b, event_id, "b0", timeout_s=40)
    answered_at = time.monotonic()
    returned_at = await returned
    # Host B decided nothing until host A's buffer was stored, and then after all of it.
    assert answered_at > returned_at
    assert first.status == 201 and first.body["ordinal"] == 121, first
    # Each worker resumes once it has seen the Redis verified (at most a second apart).
    again = [
        await answered(host_b, event_id, user, timeout_s=10)
        for user in [*(f"a{n}" for n in range(100)), "e0"]
    ]
    assert {reply.code for reply in again} == {"already_issued"}

    await wait_stored(pg, redis, event_id, timeout_s=30)
    rows = await assert_invariants(pg, event_id, 1000, redis=redis)
    stored = {row["user_id"]: row["ordinal"] for row in rows}
    for reply in [*early, *buffered, first]:
        assert stored[reply.body["user_id"]] == reply.body["ordinal"]
    await redis.aclose()
    host_a_process.stop()
