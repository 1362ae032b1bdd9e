"""Verify an event's invariants from Redis and PostgreSQL after a load run.

Checks: issued == min(quantity, distinct users who asked) (when --asked is given),
rows == issued, no user twice, ordinals exactly 1..issued, over-issue 0, and Redis's
records equal PostgreSQL's rows while Redis still holds the event. Exits 1 on any breach.

    python loadtest/verify.py --event-id 7 --asked 168000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import asdict, dataclass, field

import asyncpg
from redis.asyncio import Redis

from service.config import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL
from service.keys import Keyspace, stored_namespace


@dataclass
class Verdict:
    event_id: int
    quantity: int
    asked: int | None
    issued_redis: int | None
    rows: int
    distinct_users: int
    min_ordinal: int | None
    max_ordinal: int | None
    over_issue: int
    breaches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaches


async def verify(event_id: int, *, asked: int | None, database_url: str, redis_url: str) -> Verdict:
    pg = await asyncpg.connect(database_url)
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        quantity = await pg.fetchval("SELECT quantity FROM events WHERE id = $1", event_id)
        if quantity is None:
            raise SystemExit(f"verify: no event {event_id} in PostgreSQL")
        stats = await pg.fetchrow(
            """SELECT count(*) AS rows, count(DISTINCT user_id) AS users,
                      count(DISTINCT ordinal) AS ordinals, min(ordinal) AS lo, max(ordinal) AS hi
               FROM coupon_issues WHERE event_id = $1""",
            event_id,
        )
        # The service's keys carry the namespace its database was created with.
        keys = Keyspace(await stored_namespace(pg)).event(event_id)
        seq = await redis.get(keys.seq)
        issued_redis = None if seq is None else int(seq)
        rows = stats["rows"]
        issued = issued_redis if issued_redis is not None else rows
        verdict = Verdict(
            event_id=event_id,
            quantity=quantity,
            asked=asked,
            issued_redis=issued_redis,
            rows=rows,
            distinct_users=stats["users"],
            min_ordinal=stats["lo"],
            max_ordinal=stats["hi"],
            over_issue=max(0, issued - quantity, rows - quantity),
        )
        breaches = verdict.breaches
        if verdict.over_issue:
            breaches.append(f"over-issue: {issued} issued, {rows} rows for quantity {quantity}")
        if issued_redis is not None and issued_redis != rows:
            breaches.append(f"rows != issued: {rows} rows, {issued_redis} issued in Redis")
        if stats["users"] != rows:
            breaches.append(f"a user holds two coupons: {rows} rows, {stats['users']} users")
        if rows and (stats["ordinals"] != rows or stats["lo"] != 1 or stats["hi"] != rows):
            breaches.append(
                f"ordinals are not 1..{rows}: {stats['ordinals']} distinct, {stats['lo']}..{stats['hi']}"
            )
        if asked is not None and issued != min(quantity, asked):
            breaches.append(f"issued {issued} != min(quantity {quantity}, users who asked {asked})")
        if issued_redis is not None:
            records = await redis.hlen(keys.users)
            if records != rows:
                breaches.append(f"Redis holds {records} records, PostgreSQL {rows} rows")
            else:
                stored = {
                    r["user_id"]: r["ordinal"]
                    for r in await pg.fetch(
                        "SELECT user_id, ordinal FROM coupon_issues WHERE event_id = $1", event_id
                    )
                }
                async for user, value in redis.hscan_iter(keys.users, count=10_000):
                    if stored.get(user) != int(value.split(":", 1)[0]):
                        breaches.append(f"user {user!r}: Redis and PostgreSQL disagree")
                        break
        return verdict
    finally:
        await pg.close()
        await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--event-id", type=int, required=True)
    parser.add_argument(
        "--asked", type=int, help="distinct users who asked (checks issued == min(quantity, asked))"
    )
    parser.add_argument("--json", action="store_true", help="print the verdict as one JSON line")
    args = parser.parse_args(argv)
    verdict = asyncio.run(
        verify(
            args.event_id,
            asked=args.asked,
            database_url=os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
            redis_url=os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
        )
    )
    if args.json:
        print(json.dumps({**asdict(verdict), "ok": verdict.ok}))
    for breach in verdict.breaches:
        print(f"verify: BREACH: {breach}", file=sys.stderr)
    print(
        f"verify: event {verdict.event_id}: {'OK' if verdict.ok else 'FAILED'}: quantity {verdict.quantity}, "
        f"issued {verdict.rows if verdict.issued_redis is None else verdict.issued_redis}, "
        f"rows {verdict.rows}, "
        f"over-issue {verdict.over_issue}, duplicates {verdict.rows - verdict.distinct_users}"
    )
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
