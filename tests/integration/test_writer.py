"""The batched writer against a real PostgreSQL: size and age flushes, replay, retry, drain."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from batcher import Buffer, IssueRecord, Writer, sink
from batcher.recovery import write_missing


@pytest.fixture
async def event_id(pg: asyncpg.Pool) -> int:
    return int(
        await pg.fetchval(
            "INSERT INTO events (name, quantity, starts_at) VALUES ('writer', 1000000, now()) RETURNING id"
        )
    )


@pytest.fixture
async def writer_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    # A short lock_timeout turns a locked table into a failed flush within the test's time.
    pool = await asyncpg.create_pool(
        database_url,
        min_size=1,
        max_size=2,
        init=sink.prepare_connection,
        server_settings={"lock_timeout": "200ms"},
    )
    yield pool
    await pool.close()


def _records(event_id: int, count: int, start: int = 1) -> list[IssueRecord]:
    now_us = int(time.time() * 1e6)
    return [IssueRecord(event_id, f"w{n}", n, now_us) for n in range(start, start + count)]


async def _stored(pg: asyncpg.Pool, event_id: int) -> int:
    return int(await pg.fetchval("SELECT count(*) FROM coupon_issues WHERE event_id = $1", event_id))


async def _until(predicate, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_full_batch_is_flushed_at_once_and_the_rest_by_age(
    pg: asyncpg.Pool, writer_pool: asyncpg.Pool, event_id: int
) -> None:
    buffer = Buffer(10_000)
    writer = Writer(writer_pool, buffer, flush_batch_rows=1000, flush_interval_s=0.3, retry_max_s=1)
    writer.start()
    buffer.reserve(2500)
    buffer.commit(_records(event_id, 2500), reserved=2500)
    writer.notify()
    await _until(lambda: _stored_at_least(pg, event_id, 2000), timeout_s=0.25)
    await _until(lambda: _stored_at_least(pg, event_id, 2500), timeout_s=2)
    assert buffer.accepted == buffer.stored == 2500 and len(buffer) == 0
    await writer.close(5)


async def _stored_at_least(pg: asyncpg.Pool, event_id: int, count: int) -> bool:
    return await _stored(pg, event_id) >= count


async def test_writing_the_same_issues_twice_is_harmless(pg: asyncpg.Pool, event_id: int) -> None:
    records = _records(event_id, 100)
    async with pg.acquire() as conn:
        await sink.prepare_connection(conn)
        assert await sink.write(conn, records) == (100, ())
        assert await sink.write(conn, records) == (0, ())
        assert await sink.write(conn, records[:10] + _records(event_id, 5, start=101)) == (5, ())
    assert await _stored(pg, event_id) == 105


async def test_a_conflicting_issue_is_refused_kept_aside_and_logged(
    pg: asyncpg.Pool, event_id: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with pg.acquire() as conn:
        await sink.prepare_connection(conn)
        await sink.write(conn, _records(event_id, 3))
        with caplog.at_level(logging.ERROR, logger="batcher.sink"):
            # The same user with another ordinal: I2 broken upstream, never stored twice.
            written = await sink.write(conn, [IssueRecord(event_id, "w1", 99, 0)])
    assert written == (0, (sink.Refusal(event_id, "conflict", 1),))
    assert "conflict" in caplog.text
    assert await _stored(pg, event_id) == 3
    kept = await pg.fetch("SELECT user_id, ordinal, reason FROM refused_issues WHERE event_id = $1", event_id)
    assert [tuple(row) for row in kept] == [("w1", 99, "conflict")]


async def test_postgres_never_stores_an_ordinal_above_the_quantity(pg: asyncpg.Pool) -> None:
    event_id = await pg.fetchval(
        "INSERT INTO events (name, quantity, starts_at) VALUES ('last line', 3, now()) RETURNING id"
    )
    async with pg.acquire() as conn:
        await sink.prepare_connection(conn)
        written = await sink.write(conn, [*_records(event_id, 5), IssueRecord(event_id + 10_000, "x", 1, 0)])
    assert written.inserted == 3
    assert sorted(written.refused) == sorted(
        [sink.Refusal(event_id, "over_quantity", 2), sink.Refusal(event_id + 10_000, "unknown_event", 1)]
    )
    assert await _stored(pg, event_id) == 3
    assert await pg.fetchval("SELECT max(ordinal) FROM coupon_issues WHERE event_id = $1", event_id) == 3
    refused = await pg.fetch(
        "SELECT ordinal, reason FROM refused_issues WHERE event_id = $1 ORDER BY ordinal", event_id
    )
    assert [tuple(row) for row in refused] == [(4, "over_quantity"), (5, "over_quantity")]


async def test_a_failed_flush_keeps_its_rows_and_retries_until_stored(
    pg: asyncpg.Pool, writer_pool: asyncpg.Pool, event_id: int
) -> None:
    buffer = Buffer(10_000)
    writer = Writer(writer_pool, buffer, flush_batch_rows=100, flush_interval_s=0.05, retry_max_s=0.2)
    async with pg.acquire() as blocker, blocker.transaction():
        await blocker.execute("LOCK TABLE coupon_issues IN ACCESS EXCLUSIVE MODE")
        writer.start()
        buffer.reserve(250)
        buffer.commit(_records(event_id, 250), reserved=250)
        await _until(lambda: _true(writer.failures >= 2), timeout_s=5)
        assert len(buffer) == 250 and buffer.stored == 0
    await _until(lambda: _stored_at_least(pg, event_id, 250), timeout_s=5)
    assert len(buffer) == 0 and buffer.stored == 250
    await writer.close(5)


async def _true(value: bool) -> bool:
    return value


async def test_close_drains_every_row(pg: asyncpg.Pool, writer_pool: asyncpg.Pool, event_id: int) -> None:
    buffer = Buffer(100_000)
    writer = Writer(writer_pool, buffer, flush_batch_rows=50_000, flush_interval_s=60, retry_max_s=1)
    writer.start()
    buffer.reserve(12_345)
    buffer.commit(_records(event_id, 12_345), reserved=12_345)
    await asyncio.sleep(0.05)
    assert await _stored(pg, event_id) == 0
    await writer.close(10)
    assert await _stored(pg, event_id) == 12_345


async def test_recovery_writes_only_what_postgres_lacks(pg: asyncpg.Pool, event_id: int) -> None:
    records = _records(event_id, 40)
    async with pg.acquire() as conn:
        await sink.prepare_connection(conn)
        await sink.write(conn, records[:25])

    async def source() -> AsyncIterator[IssueRecord]:
        for record in records:
            yield record

    assert await write_missing(pg, event_id, source()) == 15
    assert await write_missing(pg, event_id, source()) == 0
    assert await _stored(pg, event_id) == 40
