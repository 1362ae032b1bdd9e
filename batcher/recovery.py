"""Writes the issues a decision record holds but PostgreSQL lacks (a lost buffer's rows)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection, Iterable, Sequence

import asyncpg

from . import sink
from .records import IssueRecord

_CHUNK = 5000


async def stored_users(pool: asyncpg.Pool, event_id: int) -> set[str]:
    rows = await pool.fetch("SELECT user_id FROM coupon_issues WHERE event_id = $1", event_id)
    return {row["user_id"] for row in rows}


async def write_missing(
    pool: asyncpg.Pool,
    event_id: int,
    records: AsyncIterable[IssueRecord] | Iterable[IssueRecord],
    *,
    stored: Collection[str] | None = None,
    older_than_us: int | None = None,
    on_refused: Callable[[Sequence[sink.Refusal]], None] | None = None,
) -> int:
    """Store every record PostgreSQL lacks (optionally only those issued before a moment).

    The sink ignores rows already stored, so a record also still buffered in a live
    worker is harmless here; the age bound only spares work on rows about to be flushed.
    """
    if stored is None:
        stored = await stored_users(pool, event_id)
    missing: list[IssueRecord] = []
    written = 0
    async for record in _each(records):
        if record.user_id in stored:
            continue
        if older_than_us is not None and record.issued_at_us >= older_than_us:
            continue
        missing.append(record)
        if len(missing) >= _CHUNK:
            written += await _write(pool, missing, on_refused)
            missing = []
    if missing:
        written += await _write(pool, missing, on_refused)
    return written


async def _write(
    pool: asyncpg.Pool,
    records: list[IssueRecord],
    on_refused: Callable[[Sequence[sink.Refusal]], None] | None,
) -> int:
    async with pool.acquire() as conn:
        await sink.prepare_connection(conn)
        written = await sink.write(conn, records)
    if written.refused and on_refused is not None:
        on_refused(written.refused)
    return written.inserted


async def _each(records: AsyncIterable[IssueRecord] | Iterable[IssueRecord]) -> AsyncIterator[IssueRecord]:
    if isinstance(records, AsyncIterable):
        async for record in records:
            yield record
    else:
        for record in records:
            yield record
