"""Deployments sharing one Redis database never touch each other's events.

Each deployment has a database of its own, so event ids restart at 1 in each; the
namespace the database was created with keeps their keys apart, and a database dropped
and re-created gets a new one, so it never adopts what its predecessor left in Redis.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from harness.api import Api, burst
from harness.database import fresh_database
from harness.invariants import assert_invariants, keyspace, wait_stored
from harness.service_process import ServiceProcess

DATABASES = {
    "a": "postgresql://postgres@127.0.0.1:5432/coupons_ns_a",
    "b": "postgresql://postgres@127.0.0.1:5432/coupons_ns_b",
}
SHARED_REDIS_URL = "redis://127.0.0.1:6379/12"  # this module's own database of the shared Redis


@pytest.fixture
async def shared_redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(SHARED_REDIS_URL, decode_responses=True)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
def deploy(service_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[str], ServiceProcess]]:
    """Start the deployment's service (its own database, the shared Redis database)."""
    started: list[ServiceProcess] = []

    def start(name: str) -> ServiceProcess:
        env = {**service_env, "DATABASE_URL": DATABASES[name], "REDIS_URL": SHARED_REDIS_URL}
        process = ServiceProcess(env, tmp_path / f"service-{name}-{len(started)}.log")
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


@pytest.fixture
async def pools() -> AsyncIterator[Callable[[str], Any]]:
    opened: list[asyncpg.Pool] = []

    async def pool(name: str) -> asyncpg.Pool:
        made = await asyncpg.create_pool(DATABASES[name], min_size=1, max_size=2)
        opened.append(made)
        return made

    yield pool
    for made in opened:
        await made.close()


def _served(replies: list[Any]) -> dict[str, int]:
    statuses = Counter(reply.status for reply in replies)
    assert set(statuses) <= {201, 410}, statuses
    return {reply.body["user_id"]: reply.body["ordinal"] for reply in replies if reply.status == 201}


async def _counts(api: Api) -> tuple[int, int, int]:
    stats = await api.stats(1)
    assert stats.status == 200, stats
    return stats.body["issued_redis"], stats.body["remaining"], stats.body["rows_stored"]


async def test_two_deployments_on_one_redis_database_each_sell_exactly_their_own_event_1(
    deploy: Callable[[str], ServiceProcess],
    pools: Callable[[str], Any],
    shared_redis: Redis,
    http: aiohttp.ClientSession,
) -> None:
    for url in DATABASES.values():
        await fresh_database(url)
    pg_a, pg_b = await pools("a"), await pools("b")
    api_a, api_b = Api(deploy("a").url, http), Api(deploy("b").url, http)
    keys_a, keys_b = (await keyspace(pg_a)).event(1), (await keyspace(pg_b)).event(1)
    assert keys_a.seq != keys_b.seq

    assert await api_a.open_event(50) == 1
    assert await api_b.open_event(10) == 1
    assert await _counts(api_a) == (0, 50, 0)
    assert await _counts(api_b) == (0, 10, 0)
    # One user, a coupon from each: two deployments, two events.
    assert (await api_a.issue(1, "u0")).body["ordinal"] == 1
    assert (await api_b.issue(1, "u0")).body["ordinal"] == 1

    users = [f"u{n}" for n in range(1, 80)]
    served_a = {"u0": 1, **_served(await burst(api_a, 1, users))}
    assert len(served_a) == 50
    await wait_stored(pg_a, shared_redis, 1)
    assert await _counts(api_a) == (50, 0, 50)
    assert await _counts(api_b) == (1, 9, 1)  # A's sale moved nothing of B's

    served_b = {"u0": 1, **_served(await burst(api_b, 1, users))}
    assert len(served_b) == 10
    await wait_stored(pg_b, shared_redis, 1)
    assert await _counts(api_b) == (10, 0, 10)
    assert await _counts(api_a) == (50, 0, 50)  # nor B's of A's

    rows_a = await assert_invariants(pg_a, 1, 50, redis=shared_redis)
    rows_b = await assert_invariants(pg_b, 1, 10, redis=shared_redis)
    assert {row["user_id"]: row["ordinal"] for row in rows_a} == served_a
    assert {row["user_id"]: row["ordinal"] for row in rows_b} == served_b
    assert int(await shared_redis.get(keys_a.seq)) == 50 and int(await shared_redis.get(keys_b.seq)) == 10
    # Sold out in each, and each one's users are its own.
    assert (await api_a.issue(1, "late")).code == "sold_out"
    assert (await api_b.issue(1, "late")).code == "sold_out"
    # A user may hold a coupon of each: both namespaces record them, each with its own ordinal.
    both = set(served_a) & set(served_b)
    assert "u0" in both
    for user in both:
        assert await shared_redis.hexists(keys_a.users, user) and await shared_redis.hexists(
            keys_b.users, user
        )


async def test_a_database_recreated_under_a_running_redis_starts_its_event_1_with_full_stock(
    deploy: Callable[[str], ServiceProcess],
    pools: Callable[[str], Any],
    shared_redis: Redis,
    http: aiohttp.ClientSession,
) -> None:
    await fresh_database(DATABASES["b"])
    old_pg = await pools("b")
    old = deploy("b")
    old_api = Api(old.url, http)
    assert await old_api.open_event(10) == 1
    sold = _served(await burst(old_api, 1, [f"u{n}" for n in range(15)]))
    assert len(sold) == 10
    await wait_stored(old_pg, shared_redis, 1)
    old_keys = (await keyspace(old_pg)).event(1)
    await old_pg.close()
    old.stop()

    # The database goes; Redis keeps the old event 1's keys (sold out, 10 records).
    await fresh_database(DATABASES["b"])
    assert int(await shared_redis.get(old_keys.seq)) == 10
    pg = await pools("b")
    keys = (await keyspace(pg)).event(1)
    assert keys.seq != old_keys.seq
    api = Api(deploy("b").url, http)

    assert await api.create(5) == 1
    opened = await api.open(1)
    assert opened.status == 200, opened
    assert (opened.body["remaining"], opened.body["issued_redis"], opened.body["rows_stored"]) == (5, 0, 0)
    served = _served(await burst(api, 1, [f"u{n}" for n in range(12)]))  # the old buyers too
    assert len(served) == 5
    await wait_stored(pg, shared_redis, 1)
    rows = await assert_invariants(pg, 1, 5, redis=shared_redis)
    assert {row["user_id"]: row["ordinal"] for row in rows} == served
    assert await _counts(api) == (5, 0, 5)
    # The predecessor's keys were left as they were, not adopted, not overwritten.
    assert int(await shared_redis.get(old_keys.seq)) == 10
    assert await shared_redis.hlen(old_keys.users) == 10
