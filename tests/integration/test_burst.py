"""Thousands of requests in flight at once against 2 workers: exact counts, nothing twice."""

from __future__ import annotations

import random
from collections import Counter

import asyncpg
from redis.asyncio import Redis

from harness.api import Api, burst
from harness.invariants import assert_invariants, wait_stored


def _users_with_repeats(distinct: int, total: int, seed: int) -> list[object]:
    rng = random.Random(seed)
    users: list[object] = [f"u{n}" for n in range(distinct)]
    users += [rng.choice(users) for _ in range(total - distinct)]
    # Integer and text forms of one id are one user.
    users += [n for n in range(1, 51)] + [str(n) for n in range(1, 51)]
    rng.shuffle(users)
    return users


async def test_no_user_gets_two_coupons_and_stock_is_exact_under_burst(
    api: Api, pg: asyncpg.Pool, redis: Redis
) -> None:
    quantity = 1000
    event_id = await api.open_event(quantity)
    users = _users_with_repeats(distinct=2500, total=4000, seed=1)

    replies = await burst(api, event_id, users)

    statuses = Counter(reply.status for reply in replies)
    assert statuses[201] == quantity, (statuses, [r.body for r in replies if r.status == 503][:3])
    assert set(statuses) <= {201, 409, 410}, (statuses, [r.body for r in replies if r.status == 503][:3])
    issued_users = [reply.body["user_id"] for reply in replies if reply.status == 201]
    assert len(set(issued_users)) == quantity
    assert sorted(reply.body["ordinal"] for reply in replies if reply.status == 201) == list(
        range(1, quantity + 1)
    )
    await wait_stored(pg, redis, event_id)
    rows = await assert_invariants(pg, event_id, quantity, redis=redis)
    assert {row["user_id"]: row["ordinal"] for row in rows} == {
        reply.body["user_id"]: reply.body["ordinal"] for reply in replies if reply.status == 201
    }


async def test_more_stock_than_users_issues_one_to_each_distinct_user(
    api: Api, pg: asyncpg.Pool, redis: Redis
) -> None:
    event_id = await api.open_event(100_000)
    users = _users_with_repeats(distinct=2000, total=3000, seed=2)
    distinct = {str(user) for user in users}

    replies = await burst(api, event_id, users)

    statuses = Counter(reply.status for reply in replies)
    assert statuses[201] == len(distinct), statuses
    assert statuses[409] == len(users) - len(distinct), statuses
    await wait_stored(pg, redis, event_id)
    await assert_invariants(pg, event_id, 100_000, redis=redis)


async def test_bursts_on_several_events_at_once_keep_each_exact(
    api: Api, pg: asyncpg.Pool, redis: Redis
) -> None:
    import asyncio

    events = [await api.open_event(quantity) for quantity in (1, 50, 300)]
    users = _users_with_repeats(distinct=800, total=1000, seed=3)
    results = await asyncio.gather(*(burst(api, event_id, users) for event_id in events))
    for event_id, quantity, replies in zip(events, (1, 50, 300), results, strict=True):
        assert sum(reply.status == 201 for reply in replies) == quantity
        assert all(reply.status in (201, 409, 410) for reply in replies)
        await wait_stored(pg, redis, event_id)
        await assert_invariants(pg, event_id, quantity, redis=redis)
