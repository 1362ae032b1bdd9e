"""A Redis that may evict keys decides nothing; a full one under noeviction issues nothing.

Every event key has a TTL, so an evicting Redis (``volatile-*`` or ``allkeys-*``) can
forget who was served and serve them again (I2). The service refuses to start on one,
unless REDIS_ALLOW_EVICTION says an operator accepts it, stops issuing when the policy
changes under it, and under ``noeviction`` at maxmemory Redis refuses the issue script
whole: 503, nothing decided, until memory is freed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import aiohttp
import asyncpg
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from harness.api import Api, Reply, answered, burst
from harness.invariants import assert_invariants, keyspace, wait_stored
from harness.ports import free_port
from harness.redis_server import RedisServer
from harness.service_process import BIN, ServiceProcess

EVICTING = ("--maxmemory", "50mb", "--maxmemory-policy", "volatile-lru")


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"{what} within {timeout_s}s"
        await asyncio.sleep(0.1)


async def _resumed(api: Api, event_id: int, prefix: str, timeout_s: float = 5.0) -> list[Reply]:
    """Bursts of new users until one is answered 201 whole: every worker's view (and
    breaker) has caught up. Returns every reply, for the accounting."""
    replies: list[Reply] = []
    deadline = time.monotonic() + timeout_s
    for round_no in range(100):
        assert time.monotonic() < deadline, f"issuing did not resume within {timeout_s}s"
        this_round = await burst(api, event_id, [f"{prefix}{round_no}-{n}" for n in range(10)])
        replies += this_round
        assert all((reply.status, reply.code) in {(201, None), (503, "unavailable")} for reply in this_round)
        if all(reply.status == 201 for reply in this_round):
            return replies
        await asyncio.sleep(0.1)
    raise AssertionError("issuing did not resume")


def _ordinals(replies: list[Reply]) -> dict[str, int]:
    return {reply.body["user_id"]: reply.body["ordinal"] for reply in replies if reply.status == 201}


def test_the_service_refuses_to_start_on_a_redis_that_may_evict(
    private_redis: Callable[..., RedisServer], service_env: dict[str, str]
) -> None:
    server = private_redis(*EVICTING)
    env = {
        **os.environ,
        **service_env,
        "REDIS_URL": server.url,
        "PORT": str(free_port()),
        "HOST": "127.0.0.1",
    }
    env.pop("REDIS_ALLOW_EVICTION", None)
    proc = subprocess.Popen(
        [str(BIN / "coupon-service")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("the service started on an evicting Redis") from None
    assert proc.returncode == 2, stderr
    assert "maxmemory-policy volatile-lru" in stderr and "REDIS_ALLOW_EVICTION" in stderr
    # It stopped before writing anything there.
    client = SyncRedis.from_url(server.url)
    assert client.dbsize() == 0
    client.close()


async def test_redis_allow_eviction_starts_the_service_and_warns_at_start(
    private_redis: Callable[..., RedisServer],
    redis_of: Callable[[RedisServer], Redis],
    start_service: Callable[..., ServiceProcess],
    http: aiohttp.ClientSession,
    pg: asyncpg.Pool,
) -> None:
    server = private_redis(*EVICTING)
    service = start_service(REDIS_URL=server.url, REDIS_ALLOW_EVICTION="true")

    warning = next(line for line in service.log().splitlines() if "REDIS_ALLOW_EVICTION" in line)
    assert "WARNING" in warning and "volatile-lru" in warning
    api = Api(service.url, http)
    ready = await api.request("GET", "/ready")
    assert ready.status == 200 and ready.body["checks"]["noeviction"] is True
    event_id = await api.open_event(5)
    assert (await api.issue(event_id, "accepted-risk")).status == 201
    await wait_stored(pg, redis_of(server), event_id)
    await assert_invariants(pg, event_id, 5, redis=redis_of(server))


async def test_a_policy_turned_evicting_while_running_stops_issuing_until_it_is_noeviction_again(
    private_redis: Callable[..., RedisServer],
    redis_of: Callable[[RedisServer], Redis],
    start_service: Callable[..., ServiceProcess],
    http: aiohttp.ClientSession,
    pg: asyncpg.Pool,
) -> None:
    server = private_redis("--maxmemory-policy", "noeviction")
    redis = redis_of(server)
    service = start_service(REDIS_URL=server.url, REDIS_BREAKER_OPEN_MS="200")
    api = Api(service.url, http)
    event_id = await api.open_event(100)
    keys = (await keyspace(pg)).event(event_id)
    assert all(reply.status == 201 for reply in await burst(api, event_id, [f"e{n}" for n in range(5)]))

    await redis.config_set("maxmemory-policy", "allkeys-lru")

    async def not_ready() -> bool:
        reply = await api.request("GET", "/ready")
        return reply.status == 503 and reply.body["checks"]["noeviction"] is False

    await _until(not_ready, "/ready did not turn 503 with checks.noeviction false")
    await asyncio.sleep(1.5)  # every worker's watch (each second) has seen it
    stopped = await burst(api, event_id, [f"evicting{n}" for n in range(20)] + ["e0"])
    assert Counter((reply.status, reply.code) for reply in stopped) == {(503, "unavailable"): 21}
    assert int(await redis.get(keys.seq)) == 5 and await redis.hlen(keys.users) == 5

    await redis.config_set("maxmemory-policy", "noeviction")

    served = _ordinals(await _resumed(api, event_id, "after"))
    assert sorted(served.values()) == list(range(6, 6 + len(served)))
    assert (await answered(api, event_id, "e0", timeout_s=5)).code == "already_issued"
    assert (await api.request("GET", "/ready")).status == 200
    assert await wait_stored(pg, redis, event_id) == 5 + len(served)
    rows = await assert_invariants(pg, event_id, 100, redis=redis)
    assert {row["user_id"]: row["ordinal"] for row in rows if row["ordinal"] > 5} == served


async def test_a_full_redis_under_noeviction_answers_only_503_then_resumes_with_exact_counts(
    private_redis: Callable[..., RedisServer],
    redis_of: Callable[[RedisServer], Redis],
    start_service: Callable[..., ServiceProcess],
    http: aiohttp.ClientSession,
    pg: asyncpg.Pool,
) -> None:
    server = private_redis("--maxmemory", "20mb", "--maxmemory-policy", "noeviction")
    redis = redis_of(server)
    service = start_service(REDIS_URL=server.url, REDIS_BREAKER_OPEN_MS="200")
    api = Api(service.url, http)
    event_id = await api.open_event(200)
    keys = (await keyspace(pg)).event(event_id)
    early = [f"early{n}" for n in range(10)]
    assert all(reply.status == 201 for reply in await burst(api, event_id, early))
    await wait_stored(pg, redis, event_id)

    # Filler past maxmemory. Written with the limit lifted for a moment: filling up to a
    # refusal leaves used_memory just under the limit (the refused write's buffer is freed).
    await redis.config_set("maxmemory", "0")
    filler = "x" * 100_000
    for n in range(400):
        await redis.set(f"filler:{n}", filler)
        if n % 20 == 0 and (await redis.info("memory"))["used_memory"] > 24 * 2**20:
            break
    await redis.config_set("maxmemory", "20mb")
    memory = await redis.info("memory")
    assert memory["used_memory"] > memory["maxmemory"] == 20 * 2**20
    with pytest.raises(OutOfMemoryError):
        await redis.set("one-more", "x")

    full = await burst(api, event_id, [f"full{n}" for n in range(40)] + early)
    assert Counter((reply.status, reply.code) for reply in full) == {(503, "unavailable"): 50}
    assert int(await redis.get(keys.seq)) == 10 and await redis.hlen(keys.users) == 10

    await redis.config_set("maxmemory", "0")

    served = _ordinals(await _resumed(api, event_id, "freed"))
    assert sorted(served.values()) == list(range(11, 11 + len(served)))
    # The other worker resumes when its own breaker next probes (REDIS_BREAKER_OPEN_MS).
    again = [await answered(api, event_id, user, timeout_s=5) for user in early]
    assert Counter((reply.status, reply.code) for reply in again) == {(409, "already_issued"): 10}
    assert await wait_stored(pg, redis, event_id) == 10 + len(served)
    rows = await assert_invariants(pg, event_id, 200, redis=redis)
    assert {row["user_id"]: row["ordinal"] for row in rows if row["ordinal"] > 10} == served
