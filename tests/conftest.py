"""Real Redis and PostgreSQL for every test that talks to them: a test database and Redis db,
never mocks; the unit tests (tests/unit) need neither."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from harness.api import ADMIN_TOKEN, Api, connector
from harness.database import fresh_database
from harness.invariants import keyspace
from harness.service_process import ServiceProcess
from service.redis_decisions import RedisDecisions
from service.redis_events import RedisEvents
from service.redis_link import RedisLink

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/coupons_test")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session")
def database_url() -> str:
    asyncio.run(fresh_database(TEST_DATABASE_URL))
    return TEST_DATABASE_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    async def flush() -> None:
        client = Redis.from_url(TEST_REDIS_URL)
        await client.flushdb()
        await client.aclose()

    asyncio.run(flush())
    return TEST_REDIS_URL


@pytest.fixture(scope="session")
def service_env(database_url: str, redis_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "WORKERS": "2",
        "LOG_LEVEL": "WARNING",
        "GRACEFUL_TIMEOUT_S": "20",
    }


@pytest.fixture(scope="session")
def start_service(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ServiceProcess]]:
    """Start a service with extra settings; every one started is stopped at the end."""
    started: list[ServiceProcess] = []
    logs = tmp_path_factory.mktemp("service-logs")

    def start(**env: str) -> ServiceProcess:
        process = ServiceProcess({**service_env, **env}, Path(logs) / f"service-{len(started)}.log")
        started.append(process)
        return process.start()

    start.started = started  # type: ignore[attr-defined]
    yield start
    for process in started:
        process.stop()


@pytest.fixture(autouse=True)
def _stop_the_services_a_test_started(request: pytest.FixtureRequest) -> Iterator[None]:
    """A service a test (or its function-scoped fixtures) started stops with the test: left
    running, each holds PostgreSQL connections and keeps retrying servers the test killed.
    Services of session and module fixtures are set up before this and are left alone.
    A test that cannot start one (tests/unit) needs no server for this."""
    if "start_service" not in request.fixturenames:
        yield
        return
    start_service: Callable[..., ServiceProcess] = request.getfixturevalue("start_service")
    started: list[ServiceProcess] = start_service.started  # type: ignore[attr-defined]
    before = len(started)
    yield
    for process in started[before:]:
        process.stop()


@pytest.fixture(scope="session")
def service(start_service: Callable[..., ServiceProcess]) -> ServiceProcess:
    """The shared service (2 workers) most tests talk to; each test makes its own event."""
    return start_service()


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        connector=connector(), timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        yield session


@pytest.fixture(scope="session")
def api(service: ServiceProcess, http: aiohttp.ClientSession) -> Api:
    return Api(service.url, http)


@pytest.fixture(scope="session")
async def pg(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def events(pg: asyncpg.Pool, redis: Redis) -> RedisEvents:
    """The event operations on the shared Redis, in the test database's namespace."""
    link = RedisLink(redis)
    await link.load_scripts()
    return RedisEvents(link, await keyspace(pg))


@pytest.fixture
async def decisions(events: RedisEvents) -> AsyncIterator[RedisDecisions]:
    """Issue decisions on the same connection and scripts as ``events``."""
    decisions = RedisDecisions(events.link, events.keys)
    yield decisions
    await decisions.close()
