"""Redis killed under load: fast 503s, nothing issued, then back empty (sync) or with its data (AOF)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from harness.api import Api, answered, burst
from harness.invariants import assert_invariants, keyspace, wait_stored
from harness.redis_server import RedisServer
from harness.service_process import ServiceProcess
from service.redis_decisions import Outcome, RedisDecisions
from service.redis_events import EventTimes, RedisEvents
from service.redis_link import RedisLink, connect


async def test_redis_killed_mid_load_answers_503_fast_and_comes_back_empty_rebuilt_unasked(
    private_redis: Callable[..., RedisServer],
    redis_of: Callable[[RedisServer], Redis],
    start_service: Callable[..., ServiceProcess],
    http: aiohttp.ClientSession,
    pg: asyncpg.Pool,
) -> None:
    server = private_redis(aof=False)
    service = start_service(REDIS_URL=server.url, REDIS_BREAKER_OPEN_MS="200")
    api = Api(service.url, http)
    event_id = await api.open_event(500)
    served = await burst(api, event_id, [f"pre{n}" for n in range(40)])
    assert all(reply.status == 201 for reply in served)
    await wait_stored(pg, redis_of(server), event_id)

    # Kill Redis while a burst is in flight: every answer is a 201 or a 503, never a 5xx else.
    during, _ = await asyncio.gather(
        burst(api, event_id, [f"mid{n}" for n in range(300)]), asyncio.to_thread(server.kill)
    )
    assert set(Counter(reply.status for reply in during)) <= {201, 503}

    # Down: each answer is a 503 within 100 ms, and /ready says so.
    for n in range(30):
        started = time.monotonic()
        reply = await api.issue(event_id, f"down{n}")
        assert (reply.status, reply.code) == (503, "unavailable")
        assert time.monotonic() - started < 0.1
    ready = await api.request("GET", "/ready")
    assert ready.status == 503 and ready.body["checks"]["redis"] is False
    issued_201 = sum(reply.status == 201 for reply in served + during)
    await asyncio.sleep(0.5)  # the writer stores what was answered 201 before the kill
    stored = await pg.fetchval("SELECT count(*) FROM coupon_issues WHERE event_id = $1", event_id)
    assert stored == issued_201

    # Back, empty (no AOF): a Redis the service has not verified decides nothing, so never
    # "full stock"; it is verified against PostgreSQL and rebuilt with no operator.
    server.start()
    reply = await api.issue(event_id, "pre0")
    assert (reply.status, reply.code) == (503, "unavailable")
    assert (await answered(api, event_id, "pre0", timeout_s=20)).code == "already_issued"
    assert (await answered(api, event_id, "after", timeout_s=5)).body["ordinal"] == issued_201 + 1
    stats = await api.stats(event_id)
    assert stats.body["issued_redis"] == issued_201 + 1
    # A sync afterwards changes nothing: the rebuild was exact.
    synced = await api.sync(event_id)
    assert synced.status == 200 and synced.body["issued_redis"] == issued_201 + 1
    await wait_stored(pg, redis_of(server), event_id)
    await assert_invariants(pg, event_id, 500, redis=redis_of(server))
    assert (await api.request("GET", "/ready")).status == 200


async def test_redis_back_with_its_data_resumes_without_a_sync(
    private_redis: Callable[..., RedisServer],
    redis_of: Callable[[RedisServer], Redis],
    start_service: Callable[..., ServiceProcess],
    http: aiohttp.ClientSession,
    pg: asyncpg.Pool,
) -> None:
    server = private_redis(aof=True)
    service = start_service(REDIS_URL=server.url, REDIS_BREAKER_OPEN_MS="200")
    api = Api(service.url, http)
    event_id = await api.open_event(100)
    served = await burst(api, event_id, [f"a{n}" for n in range(25)])
    assert all(reply.status == 201 for reply in served)

    server.kill()
    assert (await api.issue(event_id, "while-down")).code == "unavailable"
    server.start()  # the same folder: the append-only file brings the event back

    assert (await answered(api, event_id, "after", timeout_s=5)).body["ordinal"] == 26
    for _ in range(4):  # both workers, whichever answers
        assert (await answered(api, event_id, "a0", timeout_s=5)).code == "already_issued"
    await wait_stored(pg, redis_of(server), event_id)
    await assert_invariants(pg, event_id, 100, redis=redis_of(server))


async def test_a_hung_redis_costs_fast_503s_and_the_batches_it_held_issue_nothing(
    private_redis: Callable[..., RedisServer],
    redis_of: Callable[[RedisServer], Redis],
    start_service: Callable[..., ServiceProcess],
    http: aiohttp.ClientSession,
    pg: asyncpg.Pool,
) -> None:
    server = private_redis(aof=False)
    service = start_service(REDIS_URL=server.url, REDIS_TIMEOUT_MS="100", REDIS_BREAKER_OPEN_MS="200")
    api = Api(service.url, http)
    event_id = await api.open_event(1000)
    served = await burst(api, event_id, [f"h{n}" for n in range(20)])
    assert all(reply.status == 201 for reply in served)

    server.pause()  # connections still open, commands queue in Redis's socket buffers
    try:
        stalled = await burst(api, event_id, [f"stalled{n}" for n in range(200)])
        assert {reply.status for reply in stalled} == {503}
        slowest = 0.0
        for n in range(20):
            started = time.monotonic()
            reply = await api.issue(event_id, f"hung{n}")
            slowest = max(slowest, time.monotonic() - started)
            assert (reply.status, reply.code) == (503, "unavailable")
        # Bounded by REDIS_TIMEOUT_MS while the breaker learns, then immediate.
        assert slowest < 0.3, slowest
    finally:
        server.resume()

    # Redis now runs what it had queued: those batches are past their deadline and
    # issue nothing, so no user answered 503 holds a coupon.
    await answered(api, event_id, "resumed", timeout_s=5)
    redis = redis_of(server)
    await wait_stored(pg, redis, event_id)
    rows = await assert_invariants(pg, event_id, 1000, redis=redis)
    assert {row["user_id"] for row in rows} == {f"h{n}" for n in range(20)} | {"resumed"}


async def test_the_issue_lane_reconnects_after_a_restart_and_never_reuses_a_broken_connection(
    private_redis: Callable[..., RedisServer],
    pg: asyncpg.Pool,
) -> None:
    server = private_redis(aof=True)
    link = RedisLink(connect(server.url, max_connections=4, timeout_s=0.5))
    events = RedisEvents(link, await keyspace(pg))
    decisions = RedisDecisions(link, events.keys, issue_lane=2)
    try:
        await link.load_scripts()
        await decisions.warm()
        now_us = time.time_ns() // 1000
        times = EventTimes(100, now_us - 1_000_000, 0, now_us // 1000 + 600_000)
        await events.finish_sync(7, "open", times, 0)
        assert (await decisions.decide(7, ["a", "b"]))[1:] == [1, 2]

        # Restarted while the lane sat idle: the event loop saw the peer close, so the next
        # batch goes on a fresh connection instead of failing (the state came back from AOF).
        server.kill()
        server.start()
        await asyncio.sleep(0.1)
        assert (await decisions.decide(7, ["c", "a"]))[1:] == [3, Outcome.ALREADY_ISSUED]

        # A batch cut off mid-reply (Redis paused past the 0.5 s timeout): its connection is
        # closed, not returned, so no later batch can read its late reply as its own, and
        # Redis, reaching it past its deadline, issues nothing.
        server.pause()
        with pytest.raises((TimeoutError, RedisError)):
            await decisions.decide(7, ["d"], deadline_us=time.time_ns() // 1000 + 200_000)
        server.resume()
        assert (await decisions.decide(7, ["e", "d"]))[1:] == [4, 5]
    finally:
        await decisions.close()
        await link.redis.aclose()
