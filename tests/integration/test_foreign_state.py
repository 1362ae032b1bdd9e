"""Redis state that cannot be the event's own is refused loudly, and nothing is written.

Each test plants state with raw Redis commands under the deployment's own keys, as a
dropped database's predecessor or another deployment (before namespaces) could have left
it, then asks the service to adopt it (open, sync, reconcile). The answer is 409
``foreign_state``; PostgreSQL gets no row (neither an issue nor a refused one), the event
stays on hold (503 to issuing), and the planted records are left where they were.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass

import asyncpg
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from harness.api import ADMIN_TOKEN, Api
from harness.invariants import keyspace
from service.config import Settings
from service.keys import EventKeys
from service.lifecycle import Lifecycle
from service.reconcile import PostgresStore, Reconciler
from service.redis_events import RedisEvents
from service.store import EventRow
from service.workers import WorkerBoard


@dataclass(frozen=True)
class Planted:
    """Redis state an event of ``quantity`` coupons cannot have made itself."""

    name: str
    quantity: int
    records: dict[str, int]  # user -> ordinal
    seq: int
    meta_quantity: int | None  # a meta hash planted with this quantity, or none planted
    problem: str  # what the refusal must name


CASES = [
    Planted(
        "more_records_than_quantity", 3, {f"f{n}": n for n in range(1, 6)}, 5, None, "for a quantity of 3"
    ),
    Planted("ordinal_above_quantity", 5, {"f1": 1, "f2": 2, "f3": 9}, 3, None, "ordinal 9, outside 1..5"),
    Planted("ordinal_zero", 5, {"f1": 0}, 1, None, "ordinal 0, outside 1..5"),
    Planted("two_users_one_ordinal", 5, {"f1": 1, "f2": 1}, 1, None, "ordinal 1 is held by two users"),
    Planted("meta_quantity_differs", 5, {"f1": 1}, 1, 99, "its quantity there is 99, PostgreSQL's is 5"),
]
NEVER_OPENED = Planted("records_for_an_event_never_opened", 5, {"f1": 1, "f2": 2}, 2, None, "never opened")


async def _plant(redis: Redis, keys: EventKeys, planted: Planted) -> None:
    now_us = time.time_ns() // 1000
    # One transaction: the shared service's reconcile never sees half of it.
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(
            keys.users, mapping={user: f"{ordinal}:{now_us}" for user, ordinal in planted.records.items()}
        )
        pipe.set(keys.seq, planted.seq)
        if planted.meta_quantity is not None:
            pipe.hset(
                keys.meta,
                mapping={"status": "open", "quantity": planted.meta_quantity, "starts_at": 0, "ends_at": 0},
            )
        await pipe.execute()


async def _planted_records(redis: Redis, keys: EventKeys) -> dict[str, int]:
    return {user: int(value.split(":")[0]) for user, value in (await redis.hgetall(keys.users)).items()}


async def _rows(pg: asyncpg.Pool, event_id: int) -> tuple[int, int]:
    issues = await pg.fetchval("SELECT count(*) FROM coupon_issues WHERE event_id = $1", event_id)
    refused = await pg.fetchval("SELECT count(*) FROM refused_issues WHERE event_id = $1", event_id)
    return int(issues), int(refused)


async def _retire(pg: asyncpg.Pool, redis: Redis, keys: EventKeys, event_id: int) -> None:
    """The event cannot be closed through the service (its state is refused): drop the
    planted keys and retire it by hand, so later passes over live events skip it."""
    await redis.delete(keys.meta, keys.seq, keys.users)
    await pg.execute("UPDATE events SET status = 'closed' WHERE id = $1", event_id)


async def _assert_refused_and_untouched(
    api: Api, pg: asyncpg.Pool, redis: Redis, keys: EventKeys, event_id: int, planted: Planted, reply: object
) -> None:
    assert getattr(reply, "status", None) == 409 and getattr(reply, "code", None) == "foreign_state", reply
    assert planted.problem in reply.body["error"]["message"]  # type: ignore[attr-defined]
    assert await _rows(pg, event_id) == (0, 0)
    # Left as found, on hold: never merged, never deleted, never resumed.
    assert await _planted_records(redis, keys) == planted.records
    assert int(await redis.get(keys.seq) or 0) == planted.seq
    assert await redis.hget(keys.meta, "status") == "syncing"
    for user in ("new-user", *planted.records):
        issued = await api.issue(event_id, user)
        assert (issued.status, issued.code) == (503, "unavailable"), issued
    assert int(await redis.get(keys.seq) or 0) == planted.seq
    assert await _rows(pg, event_id) == (0, 0)


@pytest.mark.parametrize("planted", [*CASES, NEVER_OPENED], ids=lambda p: p.name)
async def test_open_refuses_redis_state_that_cannot_be_the_events_and_writes_nothing(
    api: Api, pg: asyncpg.Pool, redis: Redis, planted: Planted
) -> None:
    event_id = await api.create(planted.quantity)
    keys = (await keyspace(pg)).event(event_id)
    await _plant(redis, keys, planted)
    try:
        reply = await api.open(event_id)

        await _assert_refused_and_untouched(api, pg, redis, keys, event_id, planted, reply)
        # PostgreSQL first is never reached: the event was not marked open.
        assert await pg.fetchval("SELECT status FROM events WHERE id = $1", event_id) == "created"
    finally:
        await _retire(pg, redis, keys, event_id)


@pytest.mark.parametrize("planted", CASES, ids=lambda p: p.name)
async def test_sync_of_an_open_event_refuses_foreign_state_and_writes_nothing(
    api: Api, pg: asyncpg.Pool, redis: Redis, planted: Planted
) -> None:
    event_id = await api.open_event(planted.quantity)
    keys = (await keyspace(pg)).event(event_id)
    await _plant(redis, keys, planted)
    try:
        reply = await api.sync(event_id)

        await _assert_refused_and_untouched(api, pg, redis, keys, event_id, planted, reply)
        assert await pg.fetchval("SELECT status FROM events WHERE id = $1", event_id) == "open"
        # Asked again, it refuses again: the hold is not a step towards adopting it.
        again = await api.sync(event_id)
        assert (again.status, again.code) == (409, "foreign_state")
        assert await _rows(pg, event_id) == (0, 0)
    finally:
        await _retire(pg, redis, keys, event_id)


def _refusals_in(metrics_text: str, where: str) -> float:
    pattern = rf'^coupon_foreign_state_refusals_total\{{where="{where}"\}} (\S+)$'
    found = re.search(pattern, metrics_text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_each_refusal_is_counted_in_metrics(api: Api, pg: asyncpg.Pool, redis: Redis) -> None:
    before = await api.request("GET", "/metrics")
    event_id = await api.create(5)
    keys = (await keyspace(pg)).event(event_id)
    await _plant(redis, keys, NEVER_OPENED)
    try:
        assert (await api.open(event_id)).code == "foreign_state"
        after = await api.request("GET", "/metrics")
    finally:
        await _retire(pg, redis, keys, event_id)
    assert before.status == after.status == 200
    assert _refusals_in(after.body.decode(), "open") == _refusals_in(before.body.decode(), "open") + 1


async def test_reconcile_refuses_an_out_of_range_record_writes_nothing_and_says_so(
    pg: asyncpg.Pool, redis: Redis, events: RedisEvents, caplog: pytest.LogCaptureFixture
) -> None:
    lifecycle = Lifecycle(pg, events, WorkerBoard.local(), Settings(admin_token=ADMIN_TOKEN))
    event_id = int(
        await pg.fetchval(
            "INSERT INTO events (name, quantity, starts_at, status)"
            " VALUES ('foreign', 5, now(), 'open') RETURNING id"
        )
    )
    row = EventRow(event_id, "foreign", 5, await pg.fetchval("SELECT now()"), None, "open", None)
    await events.finish_sync(event_id, "open", lifecycle.times(row), 0)
    keys = events.keys.event(event_id)
    await _plant(redis, keys, Planted("out_of_range", 5, {"f7": 7}, 1, None, ""))
    sample = ("coupon_foreign_state_refusals_total", {"where": "reconcile"})
    counted = REGISTRY.get_sample_value(*sample) or 0.0
    try:
        with caplog.at_level(logging.ERROR, logger="service.foreign"):
            written = None
            for _ in range(100):  # the shared service may hold the reconcile lock for a moment
                written = await Reconciler(PostgresStore(pg), events, lifecycle).pass_once(
                    issued_before_us=time.time_ns() // 1000 + 10**6, read_all=True
                )
                if written is not None:
                    break
                await asyncio.sleep(0.05)
        assert written is not None, "the reconcile lock stayed taken"
        assert await _rows(pg, event_id) == (0, 0)
        assert await _planted_records(redis, keys) == {"f7": 7}
        assert (REGISTRY.get_sample_value(*sample) or 0.0) >= counted + 1
        assert f"refused Redis state for event {event_id} (reconcile)" in caplog.text
        assert "ordinal 7, outside 1..5" in caplog.text
    finally:
        await _retire(pg, redis, keys, event_id)
