"""Slow and broken links (the `faulty` TCP chaos proxy) to Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import aiohttp
import asyncpg
import pytest
from faulty.core import FaultyProxy
from faulty.middlewares import DropMiddleware, LatencyMiddleware
from redis.asyncio import Redis

from harness.api import Api, Reply
from harness.invariants import assert_invariants, wait_stored
from harness.proxy import CutMiddleware, proxy_to, running, through
from harness.service_process import ServiceProcess

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning"),
]


def _slow(proxy: FaultyProxy) -> FaultyProxy:
    proxy.add_ingress_rule(LatencyMiddleware(5, 40))
    proxy.add_egress_rule(LatencyMiddleware(5, 40))
    return proxy


async def _waves_through_faults(
    redis_proxy: FaultyProxy,
    pg_proxy: FaultyProxy,
    start_service: Callable[..., ServiceProcess],
    http: aiohttp.ClientSession,
    database_url: str,
    redis_url: str,
    pg: asyncpg.Pool,
    redis: Redis,
    faults: Callable[[bool], None],
    enough: Callable[[Counter[int]], bool] = lambda statuses: True,
    quantity: int = 300,
) -> Counter[int]:
    """Waves of 100 concurrent requests (more users than coupons) through both proxies;
    checks bounded answers, and that every 201 and every issue whose reply was lost is
    stored (by the writer's retries or by reconcile), with I1-I3 intact."""
    with running(redis_proxy, pg_proxy):
        service = start_service(
            REDIS_URL=through(redis_url, redis_proxy),
            DATABASE_URL=through(database_url, pg_proxy),
            RECONCILE_INTERVAL_S="1",
            RECONCILE_MIN_AGE_S="2",
        )
        api = Api(service.url, http)
        event_id = await api.open_event(quantity)
        faults(True)  # the links break from here on

        async def timed(user: str) -> tuple[Reply, float]:
            started = time.monotonic()
            try:
                reply = await api.issue(event_id, user)
            except aiohttp.ClientError as exc:
                reply = Reply(-1, repr(exc))
            return reply, time.monotonic() - started

        results: list[tuple[Reply, float]] = []
        for wave in range(40):
            results += await asyncio.gather(*(timed(f"n{wave}-{n}") for n in range(100)))
            statuses = Counter(reply.status for reply, _ in results)
            if wave >= 7 and enough(statuses):
                break

        assert set(statuses) <= {201, 410, 503}, statuses
        assert statuses[201] > 0
        assert max(seconds for _, seconds in results) < 3.0
        faults(False)  # the links heal (still slow); what the faults left behind must land
        await wait_stored(pg, redis, event_id, timeout_s=30)
        rows = await assert_invariants(pg, event_id, quantity, redis=redis)
        stored = {row["user_id"]: row["ordinal"] for row in rows}
        answered = {r.body["user_id"]: r.body["ordinal"] for r, _ in results if r.status == 201}
        assert answered.items() <= stored.items()
        # Stopped while the proxies still stand, so its drain can reach PostgreSQL.
        assert service.stop() == 0
        return statuses


async def test_latency_and_lost_replies_lose_no_issue_and_answer_in_bounded_time(
    start_service: Callable[..., ServiceProcess],
    http: aiohttp.ClientSession,
    database_url: str,
    redis_url: str,
    pg: asyncpg.Pool,
    redis: Redis,
) -> None:
    redis_proxy, pg_proxy = _slow(proxy_to(redis_url, 6379)), _slow(proxy_to(database_url, 5432))
    # 3% of Redis's replies vanish: the decision was made, the answer never arrives, the
    # client times out (503) and drops the connection. Reconcile must store such issues.
    drop = DropMiddleware(0.0)
    redis_proxy.add_ingress_rule(drop)

    def faults(on: bool) -> None:
        drop.drop_rate = 0.03 if on else 0.0

    await _waves_through_faults(
        redis_proxy, pg_proxy, start_service, http, database_url, redis_url, pg, redis, faults
    )


async def test_connections_cut_mid_stream_lose_no_issue(
    start_service: Callable[..., ServiceProcess],
    http: aiohttp.ClientSession,
    database_url: str,
    redis_url: str,
    pg: asyncpg.Pool,
    redis: Redis,
) -> None:
    """Both links are reset at random, in either direction: a Redis reply cut after the
    script ran, a COPY cut before or after its commit reached the client."""
    redis_proxy, pg_proxy = _slow(proxy_to(redis_url, 6379)), _slow(proxy_to(database_url, 5432))
    cuts = tuple(CutMiddleware(0.0) for _ in range(4))
    redis_proxy.add_ingress_rule(cuts[0])
    redis_proxy.add_egress_rule(cuts[1])
    pg_proxy.add_ingress_rule(cuts[2])
    pg_proxy.add_egress_rule(cuts[3])

    def faults(on: bool) -> None:
        for cut in cuts:
            cut.cut_rate = 0.05 if on else 0.0

    statuses = await _waves_through_faults(
        redis_proxy,
        pg_proxy,
        start_service,
        http,
        database_url,
        redis_url,
        pg,
        redis,
        faults,
        # At least 8 waves, and until each link, both ways together, was cut twice and a
        # cut reached the issue path (the Redis link also carries the reconciler's and the
        # writer's calls, and one script call decides a whole batch, so a cut can miss it).
        enough=lambda statuses: (
            cuts[0].cuts + cuts[1].cuts >= 2 and cuts[2].cuts + cuts[3].cuts >= 2 and statuses[503] > 0
        ),
        quantity=4000,
    )
    counts = [cut.cuts for cut in cuts]
    assert counts[0] + counts[1] >= 2 and counts[2] + counts[3] >= 2, counts  # both links were cut
    assert statuses[503] > 0  # the cuts did reach the issue path
