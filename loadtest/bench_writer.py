"""Writer benchmark: store N issue rows through the real Writer and time the flushes.

    python loadtest/bench_writer.py [--rows 100000] [--batch 5000]

Creates a throw-away event in DATABASE_URL's database, fills a Buffer with N decided
issues, flushes it with Writer.flush() batch by batch (COPY into staging + INSERT … ON
CONFLICT), and prints the flush time and rows/s; then checks every row is stored once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import asyncpg

from batcher import Buffer, IssueRecord, Writer, create_pool
from service.config import StorageSettings


async def run(rows: int, batch: int, database_url: str) -> int:
    pg = await asyncpg.connect(database_url)
    event_id = await pg.fetchval(
        "INSERT INTO events (name, quantity, starts_at) VALUES ('writer bench', $1, now()) RETURNING id", rows
    )
    pool = await create_pool(database_url, max_size=1)
    buffer = Buffer(rows)
    writer = Writer(pool, buffer, flush_batch_rows=batch, flush_interval_s=3600, retry_max_s=1)
    now_us = time.time_ns() // 1000
    buffer.reserve(rows)
    buffer.commit((IssueRecord(event_id, f"bench-{n}", n, now_us) for n in range(1, rows + 1)), reserved=rows)
    async with pool.acquire():
        pass  # open the connection (and its staging table) outside the timing
    started = time.perf_counter()
    flushes = 0
    while len(buffer):
        await writer.flush()
        flushes += 1
    elapsed = time.perf_counter() - started
    stored = await pg.fetchval("SELECT count(*) FROM coupon_issues WHERE event_id = $1", event_id)
    await pool.close()
    await pg.close()
    print(
        f"bench_writer: {rows:,} rows in {flushes} flushes of ≤{batch:,}: {elapsed:.3f} s of flush time, "
        f"{rows / elapsed:,.0f} rows/s; stored {stored:,} (event {event_id})"
    )
    return 0 if stored == rows else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=int(os.environ.get("FLUSH_BATCH_ROWS", 5000)))
    args = parser.parse_args()
    return asyncio.run(run(args.rows, args.batch, StorageSettings.from_env().database_url))


if __name__ == "__main__":
    sys.exit(main())
