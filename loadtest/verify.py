"""Verify an event's invariants (harness/invariants.py) from Redis and PostgreSQL after a load run.

Checks: issued == min(quantity, distinct users who asked) (when --asked is given),
rows == issued, no user twice, ordinals exactly 1..issued, over-issue 0, and Redis's
records equal PostgreSQL's rows while Redis still holds the event. Exits 1 on any breach.

    python loadtest/verify.py --event-id 7 --asked 168000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, dataclass, field

import asyncpg
from redis.asyncio import Redis

from harness.invariants import audit
from service.config import StorageSettings


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
        found = await audit(pg, event_id, quantity, redis=redis, asked=asked)
    finally:
        await pg.close()
        await redis.aclose()
    ordinals = [row["ordinal"] for row in found.rows]
    return Verdict(
        event_id=event_id,
        quantity=quantity,
        asked=asked,
        issued_redis=found.issued_redis,
        rows=len(found.rows),
        distinct_users=found.users,
        min_ordinal=min(ordinals, default=None),
        max_ordinal=max(ordinals, default=None),
        over_issue=found.over_issue,
        breaches=found.breaches,
    )


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
    storage = StorageSettings.from_env()
    verdict = asyncio.run(
        verify(
            args.event_id, asked=args.asked, database_url=storage.database_url, redis_url=storage.redis_url
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
