"""PostgreSQL queries for events and the issues stored for them (never on the issue path)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from .events import EventSpec


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    name: str
    quantity: int
    starts_at: datetime
    ends_at: datetime | None
    status: str
    coupon: dict[str, Any] | None


_EVENT_BY_ID = """
SELECT e.id, e.name, e.quantity, e.starts_at, e.ends_at, e.status, c.details AS coupon
FROM events e LEFT JOIN coupons c ON c.id = e.coupon_id
WHERE e.id = $1
"""


def _event(row: asyncpg.Record) -> EventRow:
    coupon = row["coupon"]
    return EventRow(
        id=row["id"],
        name=row["name"],
        quantity=row["quantity"],
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        status=row["status"],
        coupon=orjson.loads(coupon) if coupon is not None else None,
    )


async def create_event(pool: asyncpg.Pool, spec: EventSpec, starts_at: datetime) -> EventRow:
    async with pool.acquire() as conn, conn.transaction():
        coupon_id = None
        if spec.coupon is not None:
            coupon_id = await conn.fetchval(
                "INSERT INTO coupons (name, details) VALUES ($1, $2::jsonb) RETURNING id",
                spec.coupon.get("name", spec.name),
                orjson.dumps(spec.coupon).decode(),
            )
        event_id = await conn.fetchval(
            """INSERT INTO events (name, coupon_id, quantity, starts_at, ends_at)
               VALUES ($1, $2, $3, $4, $5) RETURNING id""",
            spec.name,
            coupon_id,
            spec.quantity,
            starts_at,
            spec.ends_at,
        )
        row = await conn.fetchrow(
            _EVENT_BY_ID,
            event_id,
        )
    return _event(row)


async def event(pool: asyncpg.Pool, event_id: int) -> EventRow | None:
    row = await pool.fetchrow(
        _EVENT_BY_ID,
        event_id,
    )
    return None if row is None else _event(row)


async def list_events(
    pool: asyncpg.Pool, *, status: str | None, before_id: int | None, limit: int
) -> list[EventRow]:
    """Events newest first (by id: an identity column, so a later event has a larger id),
    at most ``limit``, with ids below ``before_id`` if given, of one status if given."""
    rows = await pool.fetch(
        "SELECT e.id, e.name, e.quantity, e.starts_at, e.ends_at, e.status, c.details AS coupon"
        " FROM events e LEFT JOIN coupons c ON c.id = e.coupon_id"
        " WHERE ($1::text IS NULL OR e.status = $1) AND ($2::bigint IS NULL OR e.id < $2)"
        " ORDER BY e.id DESC LIMIT $3",
        status,
        before_id,
        limit,
    )
    return [_event(row) for row in rows]


async def set_status(pool: asyncpg.Pool, event_id: int, status: str) -> None:
    await pool.execute("UPDATE events SET status = $2, updated_at = now() WHERE id = $1", event_id, status)


async def live_events(pool: asyncpg.Pool) -> list[EventRow]:
    """Every event not closed: the ones Redis may hold state for."""
    rows = await pool.fetch(
        "SELECT e.id, e.name, e.quantity, e.starts_at, e.ends_at, e.status, c.details AS coupon"
        " FROM events e LEFT JOIN coupons c ON c.id = e.coupon_id WHERE e.status <> 'closed' ORDER BY e.id"
    )
    return [_event(row) for row in rows]


async def open_events(pool: asyncpg.Pool, limit: int) -> list[tuple[int, int]]:
    """(id, quantity) of the most recent open events, at most ``limit``."""
    rows = await pool.fetch(
        "SELECT id, quantity FROM events WHERE status = 'open' ORDER BY id DESC LIMIT $1", limit
    )
    return [(row["id"], row["quantity"]) for row in rows]


async def issue_counts(pool: asyncpg.Pool, event_ids: list[int]) -> dict[int, int]:
    rows = await pool.fetch(
        "SELECT event_id, count(*) AS n FROM coupon_issues"
        " WHERE event_id = ANY($1::bigint[]) GROUP BY event_id",
        event_ids,
    )
    return {row["event_id"]: row["n"] for row in rows}


async def issue_count(pool: asyncpg.Pool, event_id: int) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM coupon_issues WHERE event_id = $1", event_id)
    return count


_STORED_AFTER = """
WITH tail AS (
    SELECT ordinal, ordinal - $2::bigint - row_number() OVER (ORDER BY ordinal) AS gap
    FROM coupon_issues WHERE event_id = $1 AND ordinal > $2::bigint
)
SELECT
    ($2::bigint = 0 OR EXISTS (SELECT 1 FROM coupon_issues WHERE event_id = $1 AND ordinal = $2::bigint))
        AS known_stored,
    (SELECT count(*) FROM tail) AS stored,
    (SELECT coalesce(max(ordinal), $2::bigint) FROM tail WHERE gap = 0) AS complete
"""


async def issue_count_after(pool: asyncpg.Pool, event_id: int, complete: int) -> tuple[int, int] | None:
    """Given that ordinals 1..``complete`` of the event are all stored: (the stored issues with
    higher ordinals, the highest ordinal up to which all are stored now). Reads only the rows
    above ``complete``. None if ordinal ``complete`` is not stored (the premise is stale)."""
    row = await pool.fetchrow(_STORED_AFTER, event_id, complete)
    if not row["known_stored"]:
        return None
    return row["stored"], row["complete"]


async def issue_count_through(pool: asyncpg.Pool, event_id: int, ordinal: int) -> int:
    """Stored issues of the event with ordinals 1..``ordinal`` (an index-only count)."""
    count: int = await pool.fetchval(
        "SELECT count(*) FROM coupon_issues WHERE event_id = $1 AND ordinal <= $2", event_id, ordinal
    )
    return count


async def issued_at_of(pool: asyncpg.Pool, event_id: int, ordinals: Sequence[int]) -> dict[int, datetime]:
    """ordinal -> issued_at of the stored issues among ``ordinals`` (index lookups)."""
    rows = await pool.fetch(
        "SELECT ordinal, issued_at FROM coupon_issues WHERE event_id = $1 AND ordinal = ANY($2::bigint[])",
        event_id,
        list(ordinals),
    )
    return {row["ordinal"]: row["issued_at"] for row in rows}


async def issue_ordinals(pool: asyncpg.Pool, event_id: int) -> dict[str, int]:
    """user -> ordinal of every stored issue of the event."""
    rows = await pool.fetch("SELECT user_id, ordinal FROM coupon_issues WHERE event_id = $1", event_id)
    return {row["user_id"]: row["ordinal"] for row in rows}


async def issue(pool: asyncpg.Pool, event_id: int, user_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT ordinal, issued_at FROM coupon_issues WHERE event_id = $1 AND user_id = $2",
        event_id,
        user_id,
    )


async def issue_records(pool: asyncpg.Pool, event_id: int) -> Sequence[asyncpg.Record]:
    records: Sequence[asyncpg.Record] = await pool.fetch(
        "SELECT user_id, ordinal, issued_at FROM coupon_issues WHERE event_id = $1 ORDER BY ordinal",
        event_id,
    )
    return records
