"""The issue script itself, on a real Redis: batches, order, window, holds, NOSCRIPT."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from harness.invariants import keyspace
from service.decision import EventStore, EventTimes, Outcome

_ids = itertools.count(9_000_000)


@pytest.fixture
async def events(pg: asyncpg.Pool, redis: Redis) -> AsyncIterator[EventStore]:
    store = EventStore(redis, await keyspace(pg))
    await store.load_scripts()
    yield store
    await store.close()


async def _now_us(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1_000_000 + int(micros)


async def _event(
    events: EventStore,
    quantity: int,
    *,
    starts_in_s: float = -60,
    ends_in_s: float | None = None,
    status: str = "open",
) -> int:
    event_id = next(_ids)
    now = await _now_us(events.redis)
    ends = 0 if ends_in_s is None else now + int(ends_in_s * 1e6)
    times = EventTimes(quantity, now + int(starts_in_s * 1e6), ends, now // 1000 + 3_600_000)
    await events.finish_sync(event_id, status, times, 0)
    return event_id


async def test_a_batch_is_decided_in_order_with_duplicates_inside_it(events: EventStore) -> None:
    event_id = await _event(events, 3)
    reply = await events.decide(event_id, ["a", "b", "a", "c", "d", "b"])
    assert reply[1:] == [1, 2, Outcome.ALREADY_ISSUED, 3, Outcome.SOLD_OUT, Outcome.ALREADY_ISSUED]
    keys = events.keys.event(event_id)
    assert await events.redis.get(keys.seq) == "3"
    assert sorted(await events.redis.hkeys(keys.users)) == ["a", "b", "c"]
    assert await events.redis.ttl(keys.users) > 0 and await events.redis.ttl(keys.seq) > 0


async def test_all_records_share_the_batch_time(events: EventStore) -> None:
    event_id = await _event(events, 10)
    reply = await events.decide(event_id, ["x", "y"])
    now_us = reply[0]
    assert abs(now_us - await _now_us(events.redis)) < 5_000_000
    assert await events.record(event_id, "x") == (1, now_us)
    assert await events.record(event_id, "y") == (2, now_us)


async def test_window_and_status_refusals(events: EventStore) -> None:
    later = await _event(events, 5, starts_in_s=3600)
    assert (await events.decide(later, ["a"]))[1:] == [Outcome.NOT_STARTED]
    over = await _event(events, 5, starts_in_s=-10, ends_in_s=-1)
    assert (await events.decide(over, ["a"]))[1:] == [Outcome.ENDED]
    created = await _event(events, 5, status="created")
    assert (await events.decide(created, ["a"]))[1:] == [Outcome.NOT_STARTED]
    assert (await events.decide(next(_ids), ["a", "b"]))[1:] == [Outcome.MISSING, Outcome.MISSING]


async def test_hold_stops_issuing_at_once_and_reports_the_previous_status(events: EventStore) -> None:
    event_id = await _event(events, 5)
    times = EventTimes(5, 0, 0, 0)
    assert await events.hold(event_id, "syncing", times) == "open"
    assert (await events.decide(event_id, ["a"]))[1:] == [Outcome.SYNCING]
    assert await events.hold(event_id, "closed", times) == "syncing"
    assert (await events.decide(event_id, ["a"]))[1:] == [Outcome.CLOSED]
    assert await events.hold(next(_ids), "syncing", times) is None


async def test_finish_sync_never_moves_seq_down_nor_overwrites_a_record(events: EventStore) -> None:
    event_id = await _event(events, 10)
    await events.decide(event_id, ["a", "b", "c"])
    now = await _now_us(events.redis)
    times = EventTimes(10, now - 1_000_000, 0, now // 1000 + 3_600_000)
    await events.merge_records(event_id, [("a", 9, 1), ("z", 4, now)])
    seq, records = await events.finish_sync(event_id, "open", times, max_ordinal=1)
    assert (seq, records) == (3, 4)
    assert (await events.record(event_id, "a"))[0] == 1
    # Four records for seq 3: ordinal 4 is z's, so the keys are not whole and nothing issues.
    assert (await events.decide(event_id, ["n"]))[1:] == [Outcome.BROKEN]
    # A rebuild passes the highest ordinal either side holds; then issuing goes on after it.
    assert await events.finish_sync(event_id, "open", times, max_ordinal=4) == (4, 4)
    assert (await events.decide(event_id, ["n"]))[1:] == [5]


async def test_noscript_is_recovered_by_reloading(events: EventStore) -> None:
    event_id = await _event(events, 5)
    await events.redis.script_flush()
    assert (await events.decide(event_id, ["a"]))[1:] == [1]
    assert (await events.hold(event_id, "syncing", EventTimes(5, 0, 0, 0))) == "open"


async def test_a_batch_reached_after_its_deadline_issues_nothing(events: EventStore) -> None:
    event_id = await _event(events, 5)
    past_us = await _now_us(events.redis) - 1_000
    assert (await events.decide(event_id, ["late", "later"], past_us))[1:] == [Outcome.EXPIRED] * 2
    assert not await events.redis.exists(events.keys.event(event_id).users)
    future_us = await _now_us(events.redis) + 5_000_000
    assert (await events.decide(event_id, ["late"], future_us))[1:] == [1]
