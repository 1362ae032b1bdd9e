"""The invariants (docs/design.md) read from Redis and PostgreSQL themselves: the tests assert
them, the load tools report each one broken."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TypeAlias

import asyncpg
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from service.keys import Keyspace, stored_namespace

Database: TypeAlias = asyncpg.Pool | asyncpg.Connection
RedisClient: TypeAlias = Redis | RedisCluster


async def keyspace(pg: Database) -> Keyspace:
    """The keys of the deployment whose database ``pg`` is (its namespace is stored there)."""
    return Keyspace(await stored_namespace(pg))


class NotStored(AssertionError):
    """PostgreSQL did not come to hold as many rows as Redis issued in time."""


async def wait_stored(pg: Database, redis: RedisClient, event_id: int, timeout_s: float = 15.0) -> int:
    """Wait until PostgreSQL holds as many rows as Redis issued; returns that count."""
    deadline = time.monotonic() + timeout_s
    keys = (await keyspace(pg)).event(event_id)
    while True:
        issued = int(await redis.get(keys.seq) or 0)
        rows = await pg.fetchval("SELECT count(*) FROM coupon_issues WHERE event_id = $1", event_id)
        if rows == issued:
            return int(rows)
        if time.monotonic() > deadline:
            raise NotStored(f"event {event_id}: {rows} rows stored, {issued} issued in Redis")
        await asyncio.sleep(0.05)


@dataclass
class Audit:
    """What an event's check read, and each invariant it found broken (none: all hold)."""

    quantity: int
    # PostgreSQL's rows (user_id, ordinal), by ordinal.
    rows: list[asyncpg.Record]
    # Redis's sequence; None where Redis holds no sequence for the event (closed, or lost).
    issued_redis: int | None
    records_redis: int
    breaches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaches

    @property
    def issued(self) -> int:
        return len(self.rows) if self.issued_redis is None else self.issued_redis

    @property
    def users(self) -> int:
        return len({row["user_id"] for row in self.rows})

    @property
    def over_issue(self) -> int:
        return max(0, self.issued - self.quantity, len(self.rows) - self.quantity)


async def audit(
    pg: Database,
    event_id: int,
    quantity: int,
    *,
    redis: RedisClient | None = None,
    asked: int | None = None,
) -> Audit:
    """I1-I3 over PostgreSQL's rows and, where Redis holds the event, Redis's records equal
    to them; with ``asked`` (distinct users who asked), issued == min(quantity, asked)."""
    rows = list(
        await pg.fetch(
            "SELECT user_id, ordinal FROM coupon_issues WHERE event_id = $1 ORDER BY ordinal", event_id
        )
    )
    records: dict[str, int] = {}
    issued_redis = None
    if redis is not None:
        keys = (await keyspace(pg)).event(event_id)
        seq = await redis.get(keys.seq)
        issued_redis = None if seq is None else int(seq)
        records = {
            _text(user): int(_text(value).split(":", 1)[0])
            for user, value in (await redis.hgetall(keys.users)).items()
        }
    found = Audit(quantity, rows, issued_redis, len(records))
    count, breaches = len(rows), found.breaches
    if found.over_issue:
        breaches.append(f"over-issue: {found.issued} issued, {count} rows for quantity {quantity}")
    held = issued_redis is not None or bool(records)
    if held and found.issued != count:
        breaches.append(f"rows != issued: {count} rows, {found.issued} issued in Redis")
    if found.users != count:
        breaches.append(f"a user holds two coupons: {count} rows, {found.users} users")
    ordinals = [row["ordinal"] for row in rows]
    if ordinals != list(range(1, count + 1)):
        breaches.append(
            f"ordinals are not 1..{count}: {len(set(ordinals))} distinct, {ordinals[0]}..{ordinals[-1]}"
        )
    if asked is not None and found.issued != min(quantity, asked):
        breaches.append(f"issued {found.issued} != min(quantity {quantity}, users who asked {asked})")
    if held:
        stored = {row["user_id"]: row["ordinal"] for row in rows}
        if len(records) != count:
            breaches.append(f"Redis holds {len(records)} records, PostgreSQL {count} rows")
        else:
            user = next((user for user, ordinal in records.items() if stored.get(user) != ordinal), None)
            if user is not None:
                breaches.append(f"user {user!r}: Redis and PostgreSQL disagree")
    return found


async def assert_invariants(
    pg: Database, event_id: int, quantity: int, *, redis: RedisClient | None = None
) -> list[asyncpg.Record]:
    """I1-I3 over PostgreSQL's rows and, with ``redis``, the same set in Redis, which must
    hold the event if PostgreSQL has rows of it; returns the rows."""
    found = await audit(pg, event_id, quantity, redis=redis)
    assert found.ok, f"event {event_id}: " + "; ".join(found.breaches)
    if redis is not None and found.issued_redis is None:
        assert not found.rows, f"event {event_id}: Redis holds nothing, PostgreSQL {len(found.rows)} rows"
    return found.rows


def _text(value: bytes | str) -> str:
    """A Redis reply as text, whether the client decodes replies or not."""
    return value.decode() if isinstance(value, bytes) else value
