"""The read routes a sale's clients poll answer from Redis and the worker's cache: with
PostgreSQL stopped, a live event's page and its users' coupons are still served, and an
admin operation on this host is seen at once despite the cache."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from redis.asyncio import Redis

from harness.api import Api, burst
from harness.postgres_server import PostgresServer
from harness.service_process import ServiceProcess
from service.schema import create_database, migrate


@pytest.fixture
async def own_redis(redis_url: str) -> AsyncIterator[str]:
    """A Redis db of its own: the private PostgreSQL numbers its events from 1 again."""
    url = redis_url.rsplit("/", 1)[0] + "/12"
    client = Redis.from_url(url, decode_responses=True)
    await client.flushdb()
    yield url
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def private_postgres() -> AsyncIterator[PostgresServer]:
    server = PostgresServer().start()
    url = server.url("coupons")
    await create_database(url)
    await migrate(url)
    try:
        yield server
    finally:
        server.remove()


async def test_a_live_events_reads_need_no_postgresql_and_an_admin_close_is_seen_at_once(
    private_postgres: PostgresServer,
    own_redis: str,
    start_service: Callable[..., ServiceProcess],
    http: aiohttp.ClientSession,
) -> None:
    service = start_service(
        DATABASE_URL=private_postgres.url("coupons"), REDIS_URL=own_redis, EVENT_CACHE_MS="60000"
    )
    api = Api(service.url, http)

    # A close on this host clears every worker's copy of the row at once, not after a minute.
    closing = await api.open_event(10)
    assert (await api.request("GET", f"/events/{closing}")).body["status"] == "open"
    assert (await api.close(closing)).status == 200
    for _ in range(4):  # both workers
        assert (await api.request("GET", f"/events/{closing}")).body["status"] == "closed"

    live = await api.open_event(5)
    issued = await burst(api, live, ["a", "b", "c"])
    assert all(reply.status == 201 for reply in issued)
    for _ in range(4):  # every worker has read the row
        assert (await api.request("GET", f"/events/{live}")).body["remaining"] == 2

    private_postgres.stop("immediate")
    pages = [await api.request("GET", f"/events/{live}") for _ in range(50)]
    assert {(page.status, page.body["status"], page.body["remaining"]) for page in pages} == {
        (200, "open", 2)
    }
    mine = await api.request("GET", f"/events/{live}/issues/b")
    assert mine.status == 200 and mine.body["ordinal"] in (1, 2, 3)
    assert (await api.request("GET", f"/events/{live}/issues/nobody")).body["error"][
        "code"
    ] == "issue_not_found"
    # Issuing goes on too (its rows wait in the buffer), and the page follows it.
    assert (await api.issue(live, "d")).status == 201
    assert (await api.request("GET", f"/events/{live}")).body["remaining"] == 1
    # An event the worker never read cannot be answered without PostgreSQL: 503, not a guess.
    assert (await api.request("GET", "/events/999")).status == 503
    private_postgres.start()
