"""Reconcile's passes and what it remembers between them, with Redis, PostgreSQL and the
lifecycle faked: which events cost one Redis read, which one count, which a full read."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.reconcile import Reconciler

from .fakes import FakeLifecycle, FakeRedisEvents, FakeStore, event_row

A, B = 1, 2
NOW_US = 10**15


def _reconciler(*event_ids: int) -> tuple[Reconciler, FakeRedisEvents, FakeStore, FakeLifecycle]:
    redis, store = FakeRedisEvents(), FakeStore(*(event_row(event_id) for event_id in event_ids))
    lifecycle = FakeLifecycle(redis, store)
    return Reconciler(store, redis, lifecycle), redis, store, lifecycle


async def test_a_pass_is_skipped_while_another_worker_holds_the_lock() -> None:
    reconciler, redis, store, lifecycle = _reconciler(A)
    redis.issue(A, 3)
    redis.lease.busy = True
    assert await reconciler.pass_once(issued_before_us=NOW_US, read_all=True) is None
    assert redis.locks == [(redis.keys.reconcile_lock, 10.0)]
    assert store.listings == 0 and redis.reads == [] and lifecycle.stored == []
    assert not redis.lease.released


async def test_the_lock_is_renewed_per_event_and_released_after_the_pass() -> None:
    reconciler, redis, _, _ = _reconciler(A, B)
    assert await reconciler.pass_once(issued_before_us=NOW_US) == 0
    assert redis.lease.renewals == 2 and redis.lease.released


async def test_a_failing_pass_still_releases_the_lock() -> None:
    reconciler, redis, _, lifecycle = _reconciler(A)
    redis.issue(A, 3)
    lifecycle.failure = ConnectionRefusedError("PostgreSQL is down")
    with pytest.raises(ConnectionRefusedError):
        await reconciler.pass_once(issued_before_us=NOW_US, read_all=True)
    assert redis.lease.released


async def test_a_lock_that_lapsed_before_its_release_does_not_fail_the_pass() -> None:
    reconciler, redis, _, _ = _reconciler(A)
    redis.issue(A, 3)
    redis.lease.lapsed = True
    assert await reconciler.pass_once(issued_before_us=NOW_US, read_all=True) == 3


async def test_an_event_without_issues_costs_one_redis_read() -> None:
    reconciler, redis, store, lifecycle = _reconciler(A)
    assert await reconciler.pass_once(issued_before_us=NOW_US, read_all=True) == 0
    assert redis.reads == [A] and store.counts == [] and lifecycle.stored == []
    assert reconciler.checked == {} and reconciler.settled == {}


async def test_what_a_full_read_finds_whole_is_settled_until_redis_moves_on() -> None:
    reconciler, redis, store, lifecycle = _reconciler(A)
    redis.issue(A, 7)  # decided, never stored: a worker died before its flush
    assert await reconciler.pass_once(issued_before_us=NOW_US, read_all=True) == 7
    assert lifecycle.stored == [(A, NOW_US)] and reconciler.settled == {A: 7}

    # Settled: one Redis read, no count, no full read.
    assert await reconciler.pass_once(issued_before_us=NOW_US, read_all=True) == 0
    assert len(lifecycle.stored) == 1 and store.counts == [] and redis.reads == [A, A]

    redis.issue(A, 2)
    assert await reconciler.pass_once(issued_before_us=NOW_US, read_all=True) == 2
    assert reconciler.settled == {A: 9} and store.stored[A] == set(range(1, 10))


async def test_records_left_to_their_writer_keep_the_event_unsettled() -> None:
    reconciler, redis, _, lifecycle = _reconciler(A)
    redis.issue(A, 4)
    lifecycle.young[A] = 1
    assert await reconciler.pass_once(issued_before_us=NOW_US, read_all=True) == 3
    assert A not in reconciler.settled
    lifecycle.young[A] = 0
    assert await reconciler.pass_once(issued_before_us=NOW_US, read_all=True) == 1
    assert reconciler.settled == {A: 4}


async def test_periodic_passes_check_mid_sale_events_by_one_count_and_still_catch_a_loss() -> None:
    reconciler, redis, store, lifecycle = _reconciler(A)

    # First sighting: nothing written (the rows may sit in a live writer's buffer), the last
    # ordinal remembered.
    redis.issue(A, 5)
    assert await reconciler.pass_once(issued_before_us=NOW_US) == 0
    assert reconciler.checked == {A: 5} and store.counts == [] and lifecycle.stored == []

    # A writer stored 1..5 meanwhile: one count of 1..5 finds them all; 6..8 are younger.
    store.stored[A] = set(range(1, 6))
    redis.issue(A, 3)
    assert await reconciler.pass_once(issued_before_us=NOW_US) == 0
    assert store.counts == [(A, 5)] and lifecycle.stored == [] and reconciler.checked == {A: 8}
    assert A not in reconciler.settled

    # 6..8 are a pass old and still missing: a loss, so the records are read and written.
    assert await reconciler.pass_once(issued_before_us=NOW_US) == 3
    assert store.counts[-1] == (A, 8) and lifecycle.stored == [(A, NOW_US)]
    assert reconciler.settled == {A: 8}


async def test_an_event_found_foreign_is_forgotten_and_the_pass_goes_on() -> None:
    reconciler, redis, _, lifecycle = _reconciler(A, B)
    redis.issue(A, 2)
    redis.issue(B, 2)
    await reconciler.pass_once(issued_before_us=NOW_US, read_all=True)
    assert reconciler.settled == {A: 2, B: 2}

    lifecycle.foreign.add(A)
    redis.issue(B, 1)
    assert await reconciler.pass_once(issued_before_us=NOW_US, read_all=True) == 1
    assert reconciler.settled == {B: 3}


async def test_events_no_longer_live_are_forgotten() -> None:
    reconciler, redis, store, _ = _reconciler(A, B)
    redis.issue(A, 2)
    redis.issue(B, 2)
    await reconciler.pass_once(issued_before_us=NOW_US, read_all=True)
    assert set(reconciler.settled) == set(reconciler.checked) == {A, B}
    store.events = [event for event in store.events if event.id == B]  # A was closed
    await reconciler.pass_once(issued_before_us=NOW_US, read_all=True)
    assert set(reconciler.settled) == set(reconciler.checked) == {B}


async def test_the_first_pass_reads_everything_even_after_a_busy_lock_and_a_failure() -> None:
    reconciler, redis, store, lifecycle = _reconciler(A)
    redis.issue(A, 5)
    redis.lease.busy = True
    started_us = time.time_ns() // 1000
    running = asyncio.create_task(reconciler.run(interval_s=0.001, min_age_s=60))
    try:
        while len(redis.locks) < 2:
            await asyncio.sleep(0.001)
        store.failure = ConnectionRefusedError("PostgreSQL is down")
        redis.lease.busy = False
        while len(redis.locks) < 4:
            await asyncio.sleep(0.001)
        store.failure = None
        while not lifecycle.stored:
            await asyncio.sleep(0.001)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    # Read at once, without a count, and bounded by when this worker started, not by age
    # (a periodic pass would leave the last minute's records alone).
    assert store.counts == [] and store.stored[A] == set(range(1, 6))
    (_, issued_before_us) = lifecycle.stored[0]
    assert issued_before_us is not None and started_us <= issued_before_us <= time.time_ns() // 1000
