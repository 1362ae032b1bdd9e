"""Periodic repair: issues Redis recorded but PostgreSQL lacks are written, one worker at a time.

A worker killed with rows in its buffer loses them from memory, but Redis keeps each
decision's record until the event's keys expire; these passes write them back without an
operator (docs/design.md, "Reconcile"). The first pass of a worker writes every record made
before it started; later passes, every ``reconcile_interval_s``, write records older than
``reconcile_min_age_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Protocol

import asyncpg

from . import store
from .errors import ForeignState
from .failures import DEPENDENCY_FAILURES, LOCK_RELEASE_FAILURES
from .keys import Keyspace
from .lifecycle import Recorded
from .metrics import counted
from .redis_events import RedisEventState
from .store import EventRow

logger = logging.getLogger(__name__)

_RETRY_S = 1.0
_LOCK_S = 10.0


class Store(Protocol):
    """What a pass reads of PostgreSQL."""

    async def live_events(self) -> list[EventRow]: ...

    async def issue_count_through(self, event_id: int, ordinal: int) -> int: ...


class PostgresStore:
    """The Store on the service's pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def live_events(self) -> list[EventRow]:
        return await store.live_events(self._pool)

    async def issue_count_through(self, event_id: int, ordinal: int) -> int:
        return await store.issue_count_through(self._pool, event_id, ordinal)


class Lease(Protocol):
    """The reconcile lock, taken without waiting (a redis-py Lock)."""

    async def acquire(self) -> bool: ...

    def reacquire(self) -> Awaitable[bool]: ...

    async def release(self) -> None: ...


class Events(Protocol):
    """What a pass asks of Redis (service/redis_events.py)."""

    keys: Keyspace

    def lock(self, name: str, timeout_s: float) -> Lease: ...

    async def state(self, event_id: int) -> RedisEventState: ...


class Repairs(Protocol):
    """What a pass asks of the lifecycle (service/lifecycle.py)."""

    def refuse_impossible(self, event: EventRow, state: RedisEventState, where: str) -> None: ...

    async def store_recorded(self, event: EventRow, *, issued_before_us: int | None = None) -> Recorded: ...


class Reconciler:
    """One worker's passes over every live event, and what it remembers between them.

    Most passes find nothing to do, and should cost little doing so:

    - ``settled``: per event, the Redis record count at which PostgreSQL was last found
      holding every record. While Redis still holds exactly that many, nothing can be
      missing: one Redis read.
    - ``checked``: per event, the last ordinal Redis had handed out at the previous pass.
      Those issues are at least a pass old; if PostgreSQL holds every ordinal up to it,
      whatever else is missing is younger and still in a live writer's buffer: one count
      over an index. Only otherwise are all the records read (mid-sale, 100,000 records
      held a worker's event loop long enough to show in the p99, docs/performance.md).
      An event first seen gets that count a pass later, unless the pass reads everything.
    """

    def __init__(self, stored: Store, events: Events, lifecycle: Repairs) -> None:
        self._stored = stored
        self._events = events
        self._lifecycle = lifecycle
        self.settled: dict[int, int] = {}
        self.checked: dict[int, int] = {}

    async def pass_once(self, *, issued_before_us: int, read_all: bool = False) -> int | None:
        """Reconcile every live event; the rows written, or None if another worker holds
        the lock. ``read_all``: no count stands in for reading what is missing."""
        # A short lock, renewed per event: a worker killed while holding it blocks the
        # others for seconds, not minutes.
        lock = self._events.lock(self._events.keys.reconcile_lock, _LOCK_S)
        if not await lock.acquire():
            return None
        try:
            written = 0
            live = await self._stored.live_events()
            for event in live:
                try:
                    written += await self._event(event, issued_before_us, read_all)
                except ForeignState:
                    self.settled.pop(event.id, None)  # logged and counted where it was found
                await lock.reacquire()
            ids = {event.id for event in live}
            for remembered in (self.settled, self.checked):
                for gone in set(remembered) - ids:
                    del remembered[gone]
            return written
        finally:
            try:
                await lock.release()
            except LOCK_RELEASE_FAILURES:
                logger.warning("reconcile lock lapsed before release")

    async def _event(self, event: EventRow, issued_before_us: int, read_all: bool) -> int:
        state = await self._events.state(event.id)
        if state.records == 0 and state.issued == 0:
            return 0
        self._lifecycle.refuse_impossible(event, state, "reconcile")
        checked_through, self.checked[event.id] = self.checked.get(event.id, 0), state.issued
        if state.records == self.settled.get(event.id):
            return 0
        if not read_all:
            through = min(checked_through, state.issued)
            if through == 0 or await self._stored.issue_count_through(event.id, through) == through:
                self.settled.pop(event.id, None)  # not known whole: looked at again next pass
                return 0
        recorded = await self._lifecycle.store_recorded(event, issued_before_us=issued_before_us)
        if recorded.whole:
            self.settled[event.id] = recorded.records
        else:
            self.settled.pop(event.id, None)
        return recorded.written

    async def run(self, *, interval_s: float, min_age_s: float) -> None:
        """Pass after pass until cancelled. The first pass writes every record made before
        this worker started: a killed predecessor's rows are stored at once, while rows
        issued since (still in live buffers) are left to their writers. A busy lock or a
        failure retries soon rather than a full interval later, so that first pass is not
        skipped."""
        started = False
        started_at_us = _now_us()
        while True:
            try:
                written = await self.pass_once(
                    issued_before_us=_now_us() - int(min_age_s * 1e6) if started else started_at_us,
                    read_all=not started,
                )
            except DEPENDENCY_FAILURES as exc:
                logger.warning("reconcile failed (%s: %s); retrying", type(exc).__name__, exc)
                counted.reconcile_failures.inc()
                written = None
            if written:
                counted.reconciled_rows.inc(written)
            if written is not None:
                started = True
            await asyncio.sleep(interval_s if started else min(interval_s, _RETRY_S))


def _now_us() -> int:
    return time.time_ns() // 1000
