"""Periodic repair: issues Redis recorded but PostgreSQL lacks are written, one worker at a time.

A worker killed with rows in its buffer loses them from memory, but Redis keeps each
decision's record until the event's keys expire; this loop writes them back without an
operator (docs/design.md, "Reconcile"). It runs at start with no age bound and then every
``reconcile_interval_s`` for records older than ``reconcile_min_age_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
from redis.exceptions import LockError, RedisClusterException, RedisError

from . import metrics, store
from .decision import EventStore
from .errors import ForeignState
from .lifecycle import Lifecycle

logger = logging.getLogger(__name__)

_RETRY_S = 1.0
_LOCK_S = 10.0


async def reconcile_all(
    pool: asyncpg.Pool,
    events: EventStore,
    lifecycle: Lifecycle,
    *,
    issued_before_us: int,
    settled: dict[int, int] | None = None,
    checked: dict[int, int] | None = None,
    read_all: bool = False,
) -> int | None:
    """Reconcile every live event; None if another worker holds the lock.

    ``settled`` remembers, per event, the Redis record count at which it was last found
    consistent, so an event nobody issued from since costs one Redis read, not a count
    over its rows in PostgreSQL. ``checked`` (periodic passes) remembers the last ordinal
    each event had at the previous pass: an event mid-sale is then checked by one count up
    to it (``Lifecycle.reconcile``); an event first seen gets that check a pass later.
    ``read_all`` skips that check for this pass (and still fills ``checked``).
    """
    settled = {} if settled is None else settled
    # A short lock, renewed per event: a worker killed while holding it blocks the
    # others for seconds, not minutes.
    lock = events.lock(events.keys.reconcile_lock, _LOCK_S)
    if not await lock.acquire():
        return None
    try:
        written = 0
        events_live = await store.live_events(pool)
        live = [event.id for event in events_live]
        for event in events_live:
            event_id = event.id
            try:
                result = await lifecycle.reconcile(
                    event,
                    issued_before_us=issued_before_us,
                    settled_records=settled.get(event_id),
                    checked_through=None if checked is None or read_all else checked.get(event_id, 0),
                )
            except ForeignState:
                # Logged and counted where it was found; the other events go on.
                settled.pop(event_id, None)
                await lock.reacquire()
                continue
            if result.consistent:
                settled[event_id] = result.records
            else:
                settled.pop(event_id, None)
            if checked is not None:
                checked[event_id] = result.issued
            written += result.written
            await lock.reacquire()
        for remembered in (settled, checked or {}):
            for gone in set(remembered) - set(live):
                del remembered[gone]
        return written
    finally:
        try:
            await lock.release()
        except (LockError, RedisError):
            logger.warning("reconcile lock lapsed before release")


async def run_periodically(
    pool: asyncpg.Pool,
    events: EventStore,
    lifecycle: Lifecycle,
    *,
    interval_s: float,
    min_age_s: float,
) -> None:
    # The first pass writes every record made before this worker started: a killed
    # predecessor's rows are stored at once, while rows issued since (still in live
    # buffers) are left to their writers. A busy lock or a failure retries soon rather
    # than a full interval later, so that first pass is not skipped.
    started = False
    started_at_us = _now_us()
    settled: dict[int, int] = {}
    checked: dict[int, int] = {}
    while True:
        try:
            written = await reconcile_all(
                pool,
                events,
                lifecycle,
                issued_before_us=_now_us() - int(min_age_s * 1e6) if started else started_at_us,
                settled=settled,
                checked=checked,
                # The first pass reads everything: a killed predecessor's rows go in at once.
                read_all=not started,
            )
        except (
            TimeoutError,
            RedisError,
            RedisClusterException,
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
        ) as exc:
            logger.warning("reconcile failed (%s: %s); retrying", type(exc).__name__, exc)
            metrics.reconcile_failures.inc()
            written = None
        if written:
            metrics.reconciled_rows.inc(written)
        if written is not None:
            started = True
        await asyncio.sleep(interval_s if started else min(interval_s, _RETRY_S))


def _now_us() -> int:
    return time.time_ns() // 1000
