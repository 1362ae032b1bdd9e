"""The periodic reconcile pass, driven directly against real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from harness.api import ADMIN_TOKEN
from service.config import Settings
from service.lifecycle import Lifecycle
from service.reconcile import PostgresStore, Reconciler
from service.redis_decisions import RedisDecisions
from service.redis_events import RedisEvents
from service.store import EventRow
from service.workers import WorkerBoard


async def _open_event(pg: asyncpg.Pool, lifecycle: Lifecycle, quantity: int) -> int:
    event_id = await pg.fetchval(
        "INSERT INTO events (name, quantity, starts_at, status)"
        " VALUES ('reconcile', $1, now(), 'open') RETURNING id",
        quantity,
    )
    row = EventRow(event_id, "reconcile", quantity, await pg.fetchval("SELECT now()"), None, "open", None)
    await lifecycle._events.finish_sync(event_id, "open", lifecycle.times(row), 0)
    return int(event_id)


async def _pass(reconciler: Reconciler, *, issued_before_us: int, read_all: bool = False) -> int:
    """One reconcile pass; the shared test service may hold the lock for a moment."""
    for _ in range(100):
        written = await reconciler.pass_once(issued_before_us=issued_before_us, read_all=read_all)
        if written is not None:
            return written
        await asyncio.sleep(0.05)
    raise AssertionError("the reconcile lock stayed taken")


async def _rows(pg: asyncpg.Pool, event_id: int) -> int:
    return int(await pg.fetchval("SELECT count(*) FROM coupon_issues WHERE event_id = $1", event_id))


async def test_decisions_no_worker_stored_are_written_then_the_event_settles(
    pg: asyncpg.Pool, events: RedisEvents, decisions: RedisDecisions
) -> None:
    lifecycle = Lifecycle(pg, events, WorkerBoard.local(), Settings(admin_token=ADMIN_TOKEN))
    event_id = await _open_event(pg, lifecycle, 100)
    # Decided in Redis, never buffered anywhere: a worker that died before its flush.
    await decisions.decide(event_id, [f"r{n}" for n in range(7)])
    reconciler = Reconciler(PostgresStore(pg), events, lifecycle)
    now_us = time.time_ns() // 1000 + 1_000_000

    # A worker's first pass reads everything (read_all): the records are written at once.
    await _pass(reconciler, issued_before_us=now_us, read_all=True)
    assert await _rows(pg, event_id) == 7 and reconciler.settled[event_id] == 7
    await _pass(reconciler, issued_before_us=now_us, read_all=True)  # settled: one Redis read
    assert await _rows(pg, event_id) == 7 and reconciler.settled[event_id] == 7

    await decisions.decide(event_id, ["r7", "r8"])  # Redis moved on: the event is looked at again
    await _pass(reconciler, issued_before_us=now_us, read_all=True)
    assert await _rows(pg, event_id) == 9 and reconciler.settled[event_id] == 9


async def test_records_younger_than_the_bound_are_left_to_their_writer(
    pg: asyncpg.Pool, events: RedisEvents, decisions: RedisDecisions
) -> None:
    lifecycle = Lifecycle(pg, events, WorkerBoard.local(), Settings(admin_token=ADMIN_TOKEN))
    event_id = await _open_event(pg, lifecycle, 100)
    await decisions.decide(event_id, ["young"])
    reconciler = Reconciler(PostgresStore(pg), events, lifecycle)
    long_ago_us = time.time_ns() // 1000 - 60_000_000

    await _pass(reconciler, issued_before_us=long_ago_us, read_all=True)
    assert await _rows(pg, event_id) == 0 and event_id not in reconciler.settled


async def test_periodic_passes_check_mid_sale_events_by_one_count_and_still_catch_a_loss(
    pg: asyncpg.Pool, events: RedisEvents, decisions: RedisDecisions
) -> None:
    lifecycle = Lifecycle(pg, events, WorkerBoard.local(), Settings(admin_token=ADMIN_TOKEN))
    event_id = await _open_event(pg, lifecycle, 100)
    reconciler = Reconciler(PostgresStore(pg), events, lifecycle)
    settled, checked = reconciler.settled, reconciler.checked
    old_enough_us = time.time_ns() // 1000 + 60_000_000  # every record counts as old here

    # A first periodic sighting of an event with unstored records writes nothing: they may
    # still sit in a live writer's buffer. The pass remembers the last ordinal (5).
    await decisions.decide(event_id, [f"p{n}" for n in range(5)])
    await _pass(reconciler, issued_before_us=old_enough_us)
    assert await _rows(pg, event_id) == 0 and checked[event_id] == 5 and event_id not in settled

    # The next pass counts ordinals 1..5 only: all missing, so it reads the records and
    # stores every old one, including the younger 6..8 (here all older than the bound).
    await decisions.decide(event_id, ["p5", "p6", "p7"])
    await _pass(reconciler, issued_before_us=old_enough_us)
    assert await _rows(pg, event_id) == 8 and checked[event_id] == 8 and settled[event_id] == 8

    # Ordinals 1..8 stored, 9 and 10 not (yet): one count, nothing read, nothing written.
    await decisions.decide(event_id, ["p8", "p9"])
    await _pass(reconciler, issued_before_us=old_enough_us)
    assert await _rows(pg, event_id) == 8 and checked[event_id] == 10 and event_id not in settled

    # A pass later 9 and 10 are a pass old and still missing: a loss, and it is written.
    await _pass(reconciler, issued_before_us=old_enough_us)
    assert await _rows(pg, event_id) == 10 and settled[event_id] == 10

    # read_all (a worker's first pass) writes at once, without waiting a pass.
    await decisions.decide(event_id, ["p10"])
    await _pass(reconciler, issued_before_us=old_enough_us, read_all=True)
    assert await _rows(pg, event_id) == 11 and checked[event_id] == 11
