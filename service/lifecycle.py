"""Event lifecycle for operators: create, open, close, sync, and the admin view of an event."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
from redis.exceptions import LockError, RedisError

from batcher import IssueRecord
from batcher.recovery import write_missing

from . import store
from .config import Settings
from .decision import EventStore, EventTimes
from .errors import Busy, EventNotFound, Unavailable
from .keys import event_keys, expire_at_ms
from .store import EventRow
from .timefmt import iso, now_utc, to_us
from .validation import EventSpec
from .workers import WorkerBoard

logger = logging.getLogger(__name__)

# Long enough for a rebuild of a large event; the lock lapses if its holder dies.
_LOCK_TTL_S = 120.0


@dataclass(frozen=True)
class EventReport:
    row: EventRow
    redis_status: str | None
    issued_redis: int | None
    records_redis: int | None
    rows_stored: int
    rows_buffered: int

    def as_json(self) -> dict[str, Any]:
        row = self.row
        issued = self.issued_redis
        return {
            "id": row.id,
            "name": row.name,
            "status": row.status,
            "redis_status": self.redis_status,
            "quantity": row.quantity,
            "starts_at": iso(row.starts_at),
            "ends_at": iso(row.ends_at),
            "coupon": row.coupon,
            "issued_redis": issued,
            "remaining": None if issued is None else max(0, row.quantity - issued),
            "records_redis": self.records_redis,
            "rows_stored": self.rows_stored,
            "rows_buffered": self.rows_buffered,
            # Issued in Redis but not yet stored: buffered rows, or rows reconcile will write.
            "drift": None if issued is None else issued - self.rows_stored,
        }


@dataclass(frozen=True)
class Reconciled:
    records: int  # Redis's records of the event
    stored: int  # PostgreSQL's rows before the pass (-1: not counted, see reconcile)
    written: int  # rows the pass added
    issued: int = 0  # the last ordinal Redis had handed out when the pass looked

    @property
    def consistent(self) -> bool:
        return self.stored + self.written == self.records


class Lifecycle:
    def __init__(
        self, pool: asyncpg.Pool, events: EventStore, board: WorkerBoard, settings: Settings
    ) -> None:
        self._pool = pool
        self._events = events
        self._board = board
        self._settings = settings

    def times(self, row: EventRow) -> EventTimes:
        ends_at_us = to_us(row.ends_at) if row.ends_at else 0
        return EventTimes(
            quantity=row.quantity,
            starts_at_us=to_us(row.starts_at),
            ends_at_us=ends_at_us,
            expire_at_ms=expire_at_ms(
                ends_at_us, to_us(now_utc()), self._settings.key_ttl_grace_s, self._settings.open_ended_ttl_s
            ),
        )

    async def create(self, spec: EventSpec) -> EventRow:
        # Redis learns of the event when it is opened; until then the issue path finds no
        # state and the directory answers 403 not_started.
        return await store.create_event(self._pool, spec, spec.starts_at or now_utc())

    async def open(self, event_id: int) -> EventReport:
        return await self._rebuild(await self._row(event_id), "open")

    async def sync(self, event_id: int) -> EventReport:
        row = await self._row(event_id)
        if row.status == "closed":
            return await self._close(row)
        return await self._rebuild(row, row.status)

    async def close(self, event_id: int) -> EventReport:
        return await self._close(await self._row(event_id))

    async def report(self, event_id: int) -> EventReport:
        row = await self._row(event_id)
        try:
            state = await self._events.state(event_id)
        except RedisError:
            state = None
        return EventReport(
            row=row,
            redis_status=state.status if state else None,
            issued_redis=state.issued if state and state.status else None,
            records_redis=state.records if state and state.status else None,
            rows_stored=await store.issue_count(self._pool, event_id),
            rows_buffered=self._board.buffered_rows(),
        )

    async def reconcile(
        self,
        event_id: int,
        *,
        issued_before_us: int | None = None,
        settled_records: int | None = None,
        checked_through: int | None = None,
    ) -> Reconciled:
        """Store what Redis recorded for the event (before a moment, if given) that PostgreSQL lacks.

        ``settled_records``: a count of Redis records at which the event was last seen
        consistent; if Redis still holds exactly that many, nothing can be missing and
        PostgreSQL is not asked.

        ``checked_through`` (the periodic pass): the last ordinal Redis had handed out at
        the previous pass. Those issues are at least a pass old; if PostgreSQL holds every
        ordinal up to it, whatever else is missing is younger and still in a live writer's
        buffer, and one count over an index settles it. Only otherwise are all of Redis's
        records and PostgreSQL's users read, which mid-sale (100,000 records) held a
        worker's event loop long enough to show in the p99 (docs/performance.md).
        """
        state = await self._events.state(event_id)
        if state.records == 0 or state.records == settled_records:
            return Reconciled(state.records, state.records, 0, state.issued)
        if checked_through is not None:
            through = min(checked_through, state.issued)
            if through == 0 or await store.issue_count_through(self._pool, event_id, through) == through:
                return Reconciled(state.records, -1, 0, state.issued)
        # PostgreSQL only ever holds issues Redis decided, and a rebuild merges them back,
        # so while Redis holds the event equal counts mean equal sets.
        stored = await store.issue_count(self._pool, event_id)
        if stored == state.records:
            return Reconciled(state.records, stored, 0, state.issued)
        written = await write_missing(
            self._pool, event_id, self._redis_records(event_id), older_than_us=issued_before_us
        )
        if written:
            logger.warning(
                "reconcile stored %d issues of event %d missing from PostgreSQL", written, event_id
            )
        return Reconciled(state.records, stored, written, state.issued)

    async def _redis_records(self, event_id: int) -> AsyncIterator[IssueRecord]:
        async for user, ordinal, issued_at_us in self._events.records(event_id):
            yield IssueRecord(event_id, user, ordinal, issued_at_us)

    async def _row(self, event_id: int) -> EventRow:
        row = await store.event(self._pool, event_id)
        if row is None:
            raise EventNotFound()
        return row

    async def _rebuild(self, row: EventRow, status: str) -> EventReport:
        """Hold the event, let every buffer store its rows, then rebuild Redis from PostgreSQL.

        Redis's records and PostgreSQL's rows are merged, never replaced: whichever side
        holds an issue, the rebuilt state keeps it, so no user or ordinal is handed out
        twice (I1-I3). Waiting for the buffers covers Redis having lost its data, when the
        rows still in workers' memory are the only other copy.
        """
        times = self.times(row)
        async with self._locked(row.id):
            previous = await self._events.hold(row.id, "syncing", times)
            self._board.bump_epoch()
            try:
                try:
                    await self._board.wait_stored(self._settings.sync_timeout_s)
                except TimeoutError as exc:
                    raise Unavailable(f"sync gave up: {exc}; is PostgreSQL reachable?") from None
                await self.reconcile(row.id)
                rows = await store.issue_records(self._pool, row.id)
                state = await self._events.state(row.id)
                if state.records != len(rows):
                    await self._events.merge_records(
                        row.id, [(r["user_id"], r["ordinal"], to_us(r["issued_at"])) for r in rows]
                    )
                max_ordinal = max((r["ordinal"] for r in rows), default=0)
                await self._events.finish_sync(row.id, status, times, max_ordinal)
                if row.status != status:
                    await store.set_status(self._pool, row.id, status)
            except BaseException:
                if previous and previous != "syncing":
                    await asyncio.shield(self._restore(row.id, previous))
                raise
            finally:
                self._board.bump_epoch()
        logger.info("event %d rebuilt in Redis with status %s", row.id, status)
        return await self.report(row.id)

    async def _restore(self, event_id: int, status: str) -> None:
        try:
            await self._events.set_status(event_id, status)
        except RedisError:
            logger.exception("could not restore event %d to %s; run sync again", event_id, status)

    async def _close(self, row: EventRow) -> EventReport:
        """Stop issuing at once, store what Redis holds, then delete the event's keys."""
        async with self._locked(row.id):
            await self._events.hold(row.id, "closed", self.times(row))
            self._board.bump_epoch()
            try:
                await self._board.wait_stored(self._settings.sync_timeout_s)
            except TimeoutError:
                logger.warning("closing event %d with rows still buffered; reconcile stores them", row.id)
            await self.reconcile(row.id)
            if row.status != "closed":
                await store.set_status(self._pool, row.id, "closed")
            await self._events.delete(row.id)
            self._board.bump_epoch()
        logger.info("event %d closed", row.id)
        return await self.report(row.id)

    def _locked(self, event_id: int) -> _EventLock:
        return _EventLock(self._events, event_keys(event_id).lock)


class _EventLock:
    def __init__(self, events: EventStore, name: str) -> None:
        self._lock = events.lock(name, _LOCK_TTL_S)

    async def __aenter__(self) -> None:
        try:
            acquired = await self._lock.acquire()
        except RedisError as exc:
            raise Unavailable("Redis is unreachable") from exc
        if not acquired:
            raise Busy()

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self._lock.release()
        except (LockError, RedisError):
            logger.warning("event lock %s lapsed before release", self._lock.name)
