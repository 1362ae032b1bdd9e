"""Checks of the invariants (docs/design.md), read from Redis and PostgreSQL themselves."""

from __future__ import annotations

import asyncio
import time

import asyncpg
from redis.asyncio import Redis

from service.keys import Keyspace, stored_namespace


async def keyspace(pg: asyncpg.Pool) -> Keyspace:
    """The keys of the deployment whose database ``pg`` is (its namespace is stored there)."""
    return Keyspace(await stored_namespace(pg))


async def wait_stored(pg: asyncpg.Pool, redis: Redis, event_id: int, timeout_s: float = 15.0) -> int:
    """Wait until PostgreSQL holds as many rows as Redis issued; returns that count."""
    deadline = time.monotonic() + timeout_s
    keys = (await keyspace(pg)).event(event_id)
    while True:
        issued = int(await redis.get(keys.seq) or 0)
        rows = await pg.fetchval("SELECT count(*) FROM coupon_issues WHERE event_id = $1", event_id)
        if rows == issued:
            return int(rows)
        if time.monotonic() > deadline:
            raise AssertionError(f"event {event_id}: {rows} rows stored, {issued} issued in Redis")
        await asyncio.sleep(0.05)


async def assert_invariants(
    pg: asyncpg.Pool, event_id: int, quantity: int, *, redis: Redis | None = None
) -> list[asyncpg.Record]:
    """I1-I3 over PostgreSQL's rows, and the same set in Redis where it still holds state."""
    rows = await pg.fetch(
        "SELECT user_id, ordinal FROM coupon_issues WHERE event_id = $1 ORDER BY ordinal", event_id
    )
    assert len(rows) <= quantity, f"over-issue: {len(rows)} rows for quantity {quantity}"
    users = [row["user_id"] for row in rows]
    assert len(set(users)) == len(users), "a user holds two coupons"
    assert [row["ordinal"] for row in rows] == list(range(1, len(rows) + 1)), "ordinals are not 1..n"
    if redis is not None:
        keys = (await keyspace(pg)).event(event_id)
        records = {str(user): str(value) for user, value in (await redis.hgetall(keys.users)).items()}
        seq = int(await redis.get(keys.seq) or 0)
        assert seq == len(records) == len(rows), f"redis seq {seq}, records {len(records)}, rows {len(rows)}"
        assert {user: int(value.split(":")[0]) for user, value in records.items()} == {
            row["user_id"]: row["ordinal"] for row in rows
        }
    return list(rows)
