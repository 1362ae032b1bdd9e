"""The event directory: PostgreSQL's status of events Redis lacks, asked once and cached briefly."""

from __future__ import annotations

import asyncio

import pytest

from service.directory import EventDirectory

from .fakes import FakeLookup


async def test_concurrent_lookups_of_one_event_share_one_query() -> None:
    lookup = FakeLookup({1: "closed"})
    lookup.gate = asyncio.Event()
    directory = EventDirectory(lookup, ttl_s=60, epoch=lambda: 0)
    waiting = [asyncio.create_task(directory.status(1)) for _ in range(5)]
    await lookup.started.wait()
    assert lookup.calls == [1]  # the query is under way, and only one
    lookup.gate.set()
    assert await asyncio.gather(*waiting) == ["closed"] * 5
    assert lookup.calls == [1]


async def test_an_answer_is_kept_for_its_ttl_including_no_such_event() -> None:
    lookup = FakeLookup({1: "created"})
    directory = EventDirectory(lookup, ttl_s=0.05, epoch=lambda: 0)
    assert (await directory.status(1), await directory.status(2)) == ("created", None)
    assert (await directory.status(1), await directory.status(2)) == ("created", None)
    assert lookup.calls == [1, 2]
    lookup.statuses[1] = "open"
    await asyncio.sleep(0.06)
    assert await directory.status(1) == "open"
    assert lookup.calls == [1, 2, 1]


async def test_a_lifecycle_operation_forces_a_new_lookup() -> None:
    epoch = [0]
    lookup = FakeLookup({1: "created"})
    directory = EventDirectory(lookup, ttl_s=60, epoch=lambda: epoch[0])
    assert await directory.status(1) == "created"
    lookup.statuses[1] = "open"
    epoch[0] += 1
    assert await directory.status(1) == "open"
    assert await directory.status(1) == "open"
    assert lookup.calls == [1, 1]


async def test_a_failed_lookup_is_not_cached() -> None:
    lookup = FakeLookup({1: "closed"})
    lookup.failure = ConnectionRefusedError("PostgreSQL is down")
    directory = EventDirectory(lookup, ttl_s=60, epoch=lambda: 0)
    with pytest.raises(ConnectionRefusedError):
        await directory.status(1)
    lookup.failure = None
    assert await directory.status(1) == "closed"
    assert lookup.calls == [1, 1]


async def test_the_cache_is_bounded_and_forgets_the_oldest_lookup_first() -> None:
    lookup = FakeLookup()
    directory = EventDirectory(lookup, ttl_s=60, epoch=lambda: 0, max_entries=2)
    for event_id in (1, 2, 3):
        await directory.status(event_id)
    await directory.status(3)
    await directory.status(2)
    assert lookup.calls == [1, 2, 3]  # 2 and 3 still cached
    await directory.status(1)
    assert lookup.calls == [1, 2, 3, 1]  # 1 was dropped when 3 came
