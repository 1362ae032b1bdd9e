"""Periodic repair: issues Redis recorded but PostgreSQL lacks are written, one worker at a time.

A worker killed with rows in its buffer loses them from memory, but Redis keeps each
decision's record until the event's keys expire; this loop writes them back without an
operator (DESIGN.md, "Reconcile"). It runs at start with no age bound and then every
``reconcile_interval_s`` for records older than ``reconcile_min_age_s``.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from redis.exceptions import RedisError

from . import store
from .decision import EventStore
from .keys import RECONCILE_LOCK
from .lifecycle import Lifecycle

logger = logging.getLogger(__name__)


async def reconcile_all(pool: asyncpg.Pool, events: EventStore, lifecycle: Lifecycle, *, min_age_s: float, lock_s: float) -> int | None:
    """Reconcile every live event; None if another worker holds the lock."""
    lock = events.lock(RECONCILE_LOCK, lock_s)
    if not await lock.acquire():
        return None
    try:
        written = 0
        for event_id in await store.live_event_ids(pool):
            written += await lifecycle.reconcile(event_id, min_age_s=min_age_s)
        return written
    finally:
        try:
            await lock.release()
        except RedisError:
            logger.warning("reconcile lock lapsed before release")


async def run_periodically(
    pool: asyncpg.Pool,
    events: EventStore,
    lifecycle: Lifecycle,
    *,
    interval_s: float,
    min_age_s: float,
) -> None:
    first = True
    while True:
        try:
            await reconcile_all(
                pool,
                events,
                lifecycle,
                min_age_s=0.0 if first else min_age_s,
                lock_s=max(60.0, interval_s),
            )
            first = False
        except (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError) as exc:
            logger.warning("reconcile failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, interval_s)
        await asyncio.sleep(interval_s)
