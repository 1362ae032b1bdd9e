"""Redis comes back older than the one that answered: caught, verified, rebuilt, never trusted.

A restart that loads an older RDB snapshot, or an older data file restored by hand, gives
a Redis with a new run id whose events are behind PostgreSQL. The service must decide
nothing on it until it has been verified against PostgreSQL and the writers' buffers, and
rebuild what is behind, with no operator.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from harness.api import Api, Reply, answered, burst
from harness.invariants import assert_invariants, wait_stored
from harness.redis_server import RedisServer
from harness.service_process import ServiceProcess


class SteadyLoad:
    """Open-loop load: ``rate`` requests a second over several events, users drawn with
    repeats from a pool, so a user served before a restart asks again after it."""

    def __init__(self, api: Api, events: list[int], users: int, rate: int) -> None:
        self.api = api
        self.events = events
        self.users = [f"u{n}" for n in range(users)]
        self.rate = rate
        self.replies: list[tuple[float, int, Reply]] = []
        self.took: list[tuple[int, float]] = []
        self._stop = asyncio.Event()
        self._random = random.Random(16)

    async def _one(self, event_id: int, user: str) -> None:
        started = time.monotonic()
        try:
            reply = await self.api.issue(event_id, user)
        except aiohttp.ClientError as exc:
            reply = Reply(-1, repr(exc))
        self.replies.append((started, event_id, reply))
        self.took.append((reply.status, time.monotonic() - started))

    async def run(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        deadline = time.monotonic() + 120  # bounded whatever happens
        while not self._stop.is_set() and time.monotonic() < deadline:
            for _ in range(self.rate // 20):
                event_id = self._random.choice(self.events)
                user = self._random.choice(self.users)
                tasks.append(asyncio.create_task(self._one(event_id, user)))
            await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)

    def stop(self) -> None:
        self._stop.set()


def _summary(load: SteadyLoad, restarts: list[float]) -> str:
    """What the restarts cost, for the record: answers, pauses, latency."""
    answers = sorted(load.replies, key=lambda item: item[0])
    pauses = []
    for restarted_at in restarts:
        resumed = [at for at, _, reply in answers if at > restarted_at and reply.status == 201]
        pauses.append(resumed[0] - restarted_at if resumed else float("inf"))
    statuses = Counter(reply.status for _, _, reply in answers)

    def p99_ms(status: int | None) -> float:
        took = sorted(s for code, s in load.took if status is None or code == status)
        return round(1000 * took[int(0.99 * (len(took) - 1))], 1) if took else 0.0

    return (
        f"snapshot restarts: {len(answers)} answers {dict(statuses)}, "
        f"pauses after each restart (restart to first 201) {[round(p, 2) for p in pauses]} s, "
        f"p99 {p99_ms(None)} ms (201: {p99_ms(201)} ms, 503: {p99_ms(503)} ms)"
    )


def _check_answers(replies: list[Reply], rows: list[asyncpg.Record], quantity: int) -> None:
    issued = [(r.body["user_id"], r.body["ordinal"]) for r in replies if r.status == 201]
    assert len(issued) <= quantity, f"{len(issued)} answered 201 for {quantity} coupons"
    served = Counter(user for user, _ in issued)
    assert max(served.values(), default=0) <= 1, (
        f"served twice: {[u for u, n in served.items() if n > 1][:5]}"
    )
    stored = {row["user_id"]: row["ordinal"] for row in rows}
    # Every 201 is stored with the ordinal it announced.
    assert {user: stored.get(user) for user, _ in issued} == dict(issued)


@pytest.mark.slow
async def test_restarts_from_older_snapshots_under_load_keep_every_invariant(
    private_redis: Callable[..., RedisServer],
    redis_of: Callable[[RedisServer], Redis],
    start_service: Callable[..., ServiceProcess],
    http: aiohttp.ClientSession,
    pg: asyncpg.Pool,
) -> None:
    server = private_redis()
    redis = redis_of(server)
    service = start_service(REDIS_URL=server.url, REDIS_BREAKER_OPEN_MS="200")
    api = Api(service.url, http)
    quantities = {await api.open_event(600): 600, await api.open_event(20_000): 20_000}
    load = SteadyLoad(api, list(quantities), users=1500, rate=400)
    running = asyncio.create_task(load.run())
    restarts: list[float] = []
    for _ in range(3):
        await asyncio.sleep(1.0)
        await redis.save()  # the snapshot the restart comes back to
        await asyncio.sleep(1.0)  # issues after it: the restarted Redis has none of them
        server.kill()
        server.start()
        restarts.append(time.monotonic())
        redis = redis_of(server)  # the old client's connections died with the old process
        await asyncio.sleep(2.0)
    load.stop()
    await running

    replies = [reply for _, _, reply in load.replies]
    statuses = Counter(reply.status for reply in replies)
    print(_summary(load, restarts))
    assert set(statuses) <= {201, 409, 410, 503}, statuses
    for event_id, quantity in quantities.items():
        await wait_stored(pg, redis, event_id, timeout_s=30)
        rows = await assert_invariants(pg, event_id, quantity, redis=redis)
        _check_answers([reply for _, e, reply in load.replies if e == event_id], rows, quantity)
    # Issuing resumed after every restart, and the restarted Redis was found behind.
    for restarted_at in restarts:
        assert any(at > restarted_at and reply.status == 201 for at, _, reply in load.replies)
    metrics = (await api.request("GET", "/metrics")).body.decode()
    assert 'coupon_redis_verifications_total{result="rebuilt"}' in metrics
    assert (await api.request("GET", "/ready")).status == 200
    # Whoever was served asks again after everything: 409, never a second coupon.
    # One of the event that cannot sell out: a worker that saw the other sold out answers its
    # users 410 from memory for SOLD_OUT_CACHE_MS, served or not.
    served = next(r.body for r in replies if r.status == 201 and quantities[r.body["event_id"]] == 20_000)
    assert (await answered(api, served["event_id"], served["user_id"], timeout_s=20)).code == "already_issued"


async def test_an_older_data_file_restored_while_the_service_runs_is_rebuilt(
    private_redis: Callable[..., RedisServer],
    redis_of: Callable[[RedisServer], Redis],
    start_service: Callable[..., ServiceProcess],
    http: aiohttp.ClientSession,
    pg: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    server = private_redis()
    redis = redis_of(server)
    service = start_service(REDIS_URL=server.url, REDIS_BREAKER_OPEN_MS="200")
    api = Api(service.url, http)
    event_id = await api.open_event(300)
    first = await burst(api, event_id, [f"a{n}" for n in range(100)])
    assert all(reply.status == 201 for reply in first)
    await redis.save()
    older = tmp_path / "older.rdb"
    shutil.copy(server.snapshot, older)
    second = await burst(api, event_id, [f"b{n}" for n in range(100)])
    assert all(reply.status == 201 for reply in second)
    await wait_stored(pg, redis, event_id)

    # An operator restores yesterday's backup: stop, swap the file, start.
    server.kill()
    shutil.copy(older, server.snapshot)
    server.start()
    redis = redis_of(server)

    after = await answered(api, event_id, "c0", timeout_s=20)
    assert after.status == 201 and after.body["ordinal"] == 201
    # Each worker resumes once it has seen the Redis verified (at most a second apart).
    again = [await answered(api, event_id, f"b{n}", timeout_s=20) for n in range(100)]
    assert {reply.code for reply in again} == {"already_issued"}
    await wait_stored(pg, redis, event_id)
    rows = await assert_invariants(pg, event_id, 300, redis=redis)
    _check_answers([*first, *second, after], rows, 300)
    metrics = (await api.request("GET", "/metrics")).body.decode()
    assert 'coupon_redis_verifications_total{result="rebuilt"}' in metrics
