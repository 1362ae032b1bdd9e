from __future__ import annotations

import asyncio

import pytest

from batcher import Buffer, BufferFull, IssueRecord
from service.coalescer import Coalescer


async def test_requests_of_one_loop_turn_share_one_decision() -> None:
    calls: list[tuple[int, list[str]]] = []

    async def decide(event_id: int, users: list[str]) -> list[str]:
        calls.append((event_id, users))
        return [f"{event_id}:{user}" for user in users]

    coalescer: Coalescer[str] = Coalescer(decide, max_batch=100, max_inflight=2)
    futures = [coalescer.submit(1, f"u{n}") for n in range(5)] + [coalescer.submit(2, "v")]
    assert await asyncio.gather(*futures) == ["1:u0", "1:u1", "1:u2", "1:u3", "1:u4", "2:v"]
    assert calls == [(1, ["u0", "u1", "u2", "u3", "u4"]), (2, ["v"])]


async def test_batches_are_bounded_and_inflight_decisions_too() -> None:
    running = 0
    most = 0
    sizes: list[int] = []

    async def decide(event_id: int, users: list[str]) -> list[int]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        sizes.append(len(users))
        await asyncio.sleep(0.01)
        running -= 1
        return [1] * len(users)

    coalescer: Coalescer[int] = Coalescer(decide, max_batch=10, max_inflight=2)
    await asyncio.gather(*(coalescer.submit(7 + n % 3, str(n)) for n in range(95)))
    assert most == 2 and max(sizes) == 10 and sum(sizes) == 95


async def test_an_event_has_one_decision_in_flight_and_the_requests_meanwhile_share_the_next() -> None:
    release = asyncio.Event()
    calls: list[list[str]] = []

    async def decide(event_id: int, users: list[str]) -> list[int]:
        calls.append(users)
        await release.wait()
        return [1] * len(users)

    coalescer: Coalescer[int] = Coalescer(decide, max_batch=100, max_inflight=4)
    first = coalescer.submit(1, "a")
    await asyncio.sleep(0)  # the first decision leaves
    later = []
    for n in range(5):  # each in a loop turn of its own, all while "a" is being decided
        later.append(coalescer.submit(1, f"b{n}"))
        await asyncio.sleep(0)
    assert calls == [["a"]]
    release.set()
    assert await asyncio.gather(first, *later) == [1] * 6
    assert calls == [["a"], ["b0", "b1", "b2", "b3", "b4"]]


async def test_a_failed_decision_fails_every_request_of_its_batch() -> None:
    async def decide(event_id: int, users: list[str]) -> list[int]:
        raise ConnectionError("down")

    coalescer: Coalescer[int] = Coalescer(decide, max_batch=10, max_inflight=1)
    results = await asyncio.gather(*(coalescer.submit(1, str(n)) for n in range(3)), return_exceptions=True)
    assert all(isinstance(result, ConnectionError) for result in results)


def test_the_buffer_reserves_before_and_counts_watermarks() -> None:
    published: list[tuple[int, int]] = []
    buffer = Buffer(5, on_change=lambda accepted, stored: published.append((accepted, stored)))
    buffer.reserve(3)
    with pytest.raises(BufferFull):
        buffer.reserve(3)
    buffer.commit([IssueRecord(1, "a", 1, 0), IssueRecord(1, "b", 2, 0)], reserved=3)
    assert (len(buffer), buffer.reserved, buffer.accepted) == (2, 0, 2)
    assert [r.user_id for r in buffer.oldest(5)] == ["a", "b"]
    buffer.mark_stored(1)
    assert [r.user_id for r in buffer.oldest(5)] == ["b"]
    assert published == [(2, 0), (2, 1)]
    with pytest.raises(ValueError):
        buffer.commit([IssueRecord(1, "c", 3, 0)], reserved=0)
