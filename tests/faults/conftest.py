"""Private servers for the tests that break them: never the shared ones."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from harness.redis_server import RedisServer


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start a redis-server of the test's own (``aof``: append-only, fsync always; ``extra``:
    more redis-server arguments); every one started is killed at the end."""
    started: list[RedisServer] = []

    def start(*extra: str, aof: bool = False) -> RedisServer:
        server = RedisServer(tmp_path, aof=aof, extra=extra).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
async def redis_of() -> AsyncIterator[Callable[[RedisServer], Redis]]:
    """A client of a private server; every one made is closed at the end."""
    clients: list[Redis] = []

    def make(server: RedisServer) -> Redis:
        client = Redis.from_url(server.url, decode_responses=True)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()
