"""Flushes a worker's buffer to PostgreSQL by size or age, retrying with backoff."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence

import asyncpg

from . import sink
from .buffer import Buffer
from .sink import POSTGRES_FAILURES

logger = logging.getLogger(__name__)

_FIRST_RETRY_S = 0.05


async def create_pool(database_url: str, *, max_size: int = 2) -> asyncpg.Pool:
    """The writer's own connections, each with its staging table made once.

    min_size=0: a worker starts even while PostgreSQL is down; the buffer holds meanwhile.
    """
    return await asyncpg.create_pool(
        database_url, min_size=0, max_size=max_size, init=sink.prepare_connection, command_timeout=60
    )


class Writer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        buffer: Buffer,
        *,
        flush_batch_rows: int,
        flush_interval_s: float,
        retry_max_s: float,
        on_flush: Callable[[int, float], None] | None = None,
        on_failure: Callable[[], None] | None = None,
        on_refused: Callable[[Sequence[sink.Refusal]], None] | None = None,
    ) -> None:
        """``on_flush(rows, seconds)`` after each stored batch; ``on_failure()`` after each
        failed write (both for metrics); ``on_refused(refusals)`` when PostgreSQL would not
        store some rows of a batch as issues (they are kept in refused_issues): Redis and
        PostgreSQL disagree about those events."""
        if flush_batch_rows < 1:
            raise ValueError(f"flush_batch_rows must be positive, got {flush_batch_rows}")
        if flush_interval_s <= 0:
            raise ValueError(f"flush_interval_s must be positive, got {flush_interval_s}")
        self._pool = pool
        self._buffer = buffer
        self._batch_rows = flush_batch_rows
        self._interval_s = flush_interval_s
        self._retry_max_s = retry_max_s
        self._on_flush = on_flush
        self._on_failure = on_failure
        self._on_refused = on_refused
        self._wakeup = asyncio.Event()
        # One flush at a time: two would take the same oldest rows.
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.failures = 0
        self.last_error: str | None = None

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("writer already started")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="issue-writer")

    def notify(self) -> None:
        """Called after rows were added: a full batch is flushed without waiting for the tick."""
        if len(self._buffer) >= self._batch_rows:
            self._wakeup.set()

    async def flush(self) -> int:
        """Write the oldest batch; raises if PostgreSQL refused it (the rows stay)."""
        async with self._flushing:
            records = self._buffer.oldest(self._batch_rows)
            if not records:
                return 0
            started = time.perf_counter()
            try:
                async with self._pool.acquire() as conn:
                    written = await sink.write(conn, records)
            except BaseException:
                if self._on_failure is not None:
                    self._on_failure()
                raise
            self._buffer.mark_stored(len(records))
            if written.refused and self._on_refused is not None:
                self._on_refused(written.refused)
            if self._on_flush is not None:
                self._on_flush(len(records), time.perf_counter() - started)
            return len(records)

    async def _run(self) -> None:
        backoff_s = _FIRST_RETRY_S
        while not self._closing:
            if len(self._buffer) < self._batch_rows:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), self._interval_s)
                except TimeoutError:
                    pass
            self._wakeup.clear()
            try:
                while len(self._buffer) and not self._closing:
                    await self.flush()
                    if len(self._buffer) < self._batch_rows:
                        break
                backoff_s = _FIRST_RETRY_S
            except POSTGRES_FAILURES as exc:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "flush failed (%s); %d rows kept, retrying in %.2fs",
                    self.last_error,
                    len(self._buffer),
                    backoff_s,
                )
                await asyncio.sleep(backoff_s * random.uniform(0.5, 1.0))
                backoff_s = min(backoff_s * 2, self._retry_max_s)

    async def close(self, timeout_s: float) -> None:
        """Stop the loop, then drain every buffered row, retrying until the timeout."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await asyncio.shield(self._task)
        try:
            await asyncio.shield(self._drain(timeout_s))
        except TimeoutError:
            logger.error(
                "drain overran its %.1fs budget: %d rows not stored (reconcile from Redis recovers them)",
                timeout_s,
                len(self._buffer),
            )

    async def _drain(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        backoff_s = _FIRST_RETRY_S
        while len(self._buffer):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError()
            try:
                await asyncio.wait_for(self.flush(), remaining)
            except POSTGRES_FAILURES as exc:  # out of budget: the loop raises TimeoutError next
                logger.warning("drain flush failed (%s); %d rows left", exc, len(self._buffer))
                await asyncio.sleep(min(backoff_s, max(0.0, deadline - time.monotonic())))
                backoff_s = min(backoff_s * 2, self._retry_max_s)
