"""Slow and broken links (the `faulty` TCP chaos proxy) to Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
from faulty.core import FaultyProxy
from faulty.middlewares import DropMiddleware, LatencyMiddleware
from redis.asyncio import Redis

from tests.support.api import Api, Reply
from tests.support.invariants import assert_invariants, wait_stored
from tests.support.servers import ServiceProcess, free_port


def _through(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit(":", 1)[0] + f":{port}"))


def _proxy_to(url: str, default_port: int) -> FaultyProxy:
    target = urlsplit(url)
    proxy = FaultyProxy("127.0.0.1", free_port(), target.hostname or "127.0.0.1", target.port or default_port)
    proxy.add_ingress_rule(LatencyMiddleware(5, 40))
    proxy.add_egress_rule(LatencyMiddleware(5, 40))
    return proxy


@pytest.fixture
def proxies(database_url: str, redis_url: str) -> Iterator[tuple[FaultyProxy, FaultyProxy]]:
    """Both proxies on a thread and loop of their own: starting the service blocks the test's."""
    redis_proxy, pg_proxy = _proxy_to(redis_url, 6379), _proxy_to(database_url, 5432)
    # 3% of Redis's replies vanish: the decision was made, the answer never arrives, the
    # client times out (503) and drops the connection. Reconcile must store such issues.
    redis_proxy.add_ingress_rule(DropMiddleware(0.03))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    futures = [asyncio.run_coroutine_threadsafe(proxy.start(), loop) for proxy in (redis_proxy, pg_proxy)]
    time.sleep(0.2)
    yield redis_proxy, pg_proxy
    for proxy in (redis_proxy, pg_proxy):
        asyncio.run_coroutine_threadsafe(proxy.stop(), loop).result(5)
    for future in futures:
        future.cancel()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    # faulty leaves the writers of connections it dropped unclosed; collect them here,
    # where their ResourceWarnings are the proxy's and are ignored.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        loop.close()
        gc.collect()


@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
async def test_latency_and_lost_replies_lose_no_issue_and_answer_in_bounded_time(
    proxies: tuple[FaultyProxy, FaultyProxy],
    start_service: Callable[..., ServiceProcess],
    http: aiohttp.ClientSession,
    database_url: str,
    redis_url: str,
    pg: asyncpg.Pool,
    redis: Redis,
) -> None:
    redis_proxy, pg_proxy = proxies
    service = start_service(
        REDIS_URL=_through(redis_url, redis_proxy.listen_port),
        DATABASE_URL=_through(database_url, pg_proxy.listen_port),
        RECONCILE_INTERVAL_S="1",
        RECONCILE_MIN_AGE_S="2",
    )
    api = Api(service.url, http)
    quantity = 300
    event_id = await api.open_event(quantity)

    async def timed(user: str) -> tuple[Reply, float]:
        started = time.monotonic()
        try:
            reply = await api.issue(event_id, user)
        except aiohttp.ClientError as exc:
            reply = Reply(-1, repr(exc))
        return reply, time.monotonic() - started

    results: list[tuple[Reply, float]] = []
    for wave in range(8):  # waves of 100 concurrent requests, more users than coupons
        results += await asyncio.gather(*(timed(f"n{wave}-{n}") for n in range(100)))

    statuses = Counter(reply.status for reply, _ in results)
    assert set(statuses) <= {201, 410, 503}, statuses
    assert statuses[201] > 0
    assert max(seconds for _, seconds in results) < 3.0
    # Every 201 is stored; issues whose reply was lost are stored by reconcile.
    await wait_stored(pg, redis, event_id, timeout_s=30)
    rows = await assert_invariants(pg, event_id, quantity, redis=redis)
    stored = {row["user_id"]: row["ordinal"] for row in rows}
    answered = {reply.body["user_id"]: reply.body["ordinal"] for reply, _ in results if reply.status == 201}
    assert answered.items() <= stored.items()
    # Stopped while the proxies still stand, so its drain can reach PostgreSQL.
    assert service.stop() == 0
