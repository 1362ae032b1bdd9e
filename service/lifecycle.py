"""Event lifecycle for operators: create, open, close, sync, and the admin view of an event."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from batcher import IssueRecord
from batcher.recovery import write_missing

from . import store
from .config import Settings
from .errors import Busy, EventNotFound, ForeignState, ServiceError, Unavailable
from .events import EventSpec
from .failures import DEPENDENCY_FAILURES, LOCK_RELEASE_FAILURES, REDIS_FAILURES
from .foreign import refuse_foreign
from .keys import expire_at_ms, legacy_event_keys
from .metrics import counted
from .redis_events import EventTimes, RedisEvents, RedisEventState
from .store import EventRow
from .tasks import cancel_all
from .timefmt import iso, now_utc, to_us
from .workers import WorkerBoard

logger = logging.getLogger(__name__)

# What a verification of a suspect event retries on: its own refusals and any dependency failure.
_RETRIED: tuple[type[BaseException], ...] = (ServiceError, *DEPENDENCY_FAILURES)

# Long enough for a rebuild of a large event; the lock lapses if its holder dies.
_LOCK_TTL_S = 120.0
_SUSPECT_TRIES = 20
_COMPLETE_PREFIXES_MAX = 10_000
_SUSPECT_RETRY_S = 1.0


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
class Recorded:
    """What storing an event's Redis records found."""

    records: int  # Redis's records of the event
    issued: int  # the last ordinal Redis had handed out
    written: int  # rows stored now
    whole: bool  # PostgreSQL holds every record Redis has


class Lifecycle:
    def __init__(
        self, pool: asyncpg.Pool, events: RedisEvents, board: WorkerBoard, settings: Settings
    ) -> None:
        self._pool = pool
        self._events = events
        self._board = board
        self._settings = settings
        # Per event, an ordinal up to which every issue is stored: counting the rows above it
        # suffices (rows are never deleted), so a report polled during a sale (couponctl
        # watch) costs PostgreSQL the rows stored since the last poll, not all of them.
        self._complete: dict[int, int] = {}

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
        return await self._rebuild(await self._row(event_id), "open", "open")

    async def sync(self, event_id: int) -> EventReport:
        row = await self._row(event_id)
        if row.status == "closed":
            return await self._close(row)
        return await self._rebuild(row, row.status, "sync")

    async def close(self, event_id: int) -> EventReport:
        return await self._close(await self._row(event_id))

    async def report(self, event_id: int) -> EventReport:
        row = await self._row(event_id)
        try:
            state = await self._events.state(event_id)
        except REDIS_FAILURES:
            state = None
        return EventReport(
            row=row,
            redis_status=state.status if state else None,
            issued_redis=state.issued if state and state.status else None,
            records_redis=state.records if state and state.status else None,
            rows_stored=await self.rows_stored(event_id),
            rows_buffered=self._board.buffered_rows(),
        )

    async def rows_stored(self, event_id: int) -> int:
        """The event's rows in PostgreSQL, counted above the ordinal up to which all are stored."""
        complete = self._complete.get(event_id, 0)
        counted_after = await store.issue_count_after(self._pool, event_id, complete)
        if counted_after is None:  # not this database's event any more (re-created): all again
            complete, counted_after = 0, await store.issue_count_after(self._pool, event_id, 0)
        above, now_complete = counted_after or (0, 0)
        if len(self._complete) >= _COMPLETE_PREFIXES_MAX:
            self._complete.clear()
        self._complete[event_id] = now_complete
        return complete + above

    async def store_recorded(
        self, event: EventRow, *, issued_before_us: int | None = None, where: str = "reconcile"
    ) -> Recorded:
        """Store what Redis recorded for the event (before a moment, if given) that
        PostgreSQL lacks. Records that cannot be the event's own are refused (ForeignState)
        and nothing is written."""
        event_id = event.id
        state = await self._events.state(event_id)
        if state.records == 0 and state.issued == 0:
            return Recorded(0, 0, 0, True)
        self.refuse_impossible(event, state, where)
        # PostgreSQL only ever holds issues Redis decided, and a rebuild merges them back,
        # so while Redis holds the event equal counts mean equal sets.
        stored_count = await store.issue_count(self._pool, event_id)
        if stored_count == state.records:
            return Recorded(state.records, state.issued, 0, True)
        records = [IssueRecord(event_id, *record) async for record in self._events.records(event_id)]
        stored = await store.issue_ordinals(self._pool, event_id)
        self._refuse(event, state, records, stored, where)
        written = await write_missing(
            self._pool,
            event_id,
            records,
            stored=stored.keys(),
            older_than_us=issued_before_us,
            on_refused=counted.count_refused,
        )
        if written:
            logger.warning(
                "stored %d issues of event %d missing from PostgreSQL (%s)", written, event_id, where
            )
        return Recorded(state.records, state.issued, written, stored_count + written == state.records)

    def refuse_impossible(self, event: EventRow, state: RedisEventState, where: str) -> None:
        """The checks that need no record read: counts above the quantity, state for an
        event never opened (ForeignState)."""
        if event.status == "created" or state.records > event.quantity or state.issued > event.quantity:
            self._refuse(event, state, [], None, where)

    @staticmethod
    def _refuse(
        event: EventRow,
        state: RedisEventState,
        records: list[IssueRecord],
        stored: Mapping[str, int] | None,
        where: str,
    ) -> None:
        refuse_foreign(
            event_id=event.id,
            where=where,
            event_status=event.status,
            quantity=event.quantity,
            redis_quantity=state.quantity,
            issued=state.issued,
            records=((record.user_id, record.ordinal) for record in records),
            stored=stored,
        )

    async def _row(self, event_id: int) -> EventRow:
        row = await store.event(self._pool, event_id)
        if row is None:
            raise EventNotFound()
        return row

    async def _rebuild(self, row: EventRow, status: str, where: str) -> EventReport:
        """Hold the event, let every buffer store its rows, then rebuild Redis from PostgreSQL.

        Redis's records and PostgreSQL's rows are merged, never replaced: whichever side
        holds an issue, the rebuilt state keeps it, so no user or ordinal is handed out
        twice (I1-I3). Waiting for the buffers covers Redis having lost its data, when the
        rows still in workers' memory are the only other copy. Redis state that cannot be
        the event's own is refused before anything is written.
        """
        times = self.times(row)
        async with self.locked(row.id):
            previous = await self._events.hold(row.id, "syncing", times)
            self._board.bump_epoch()
            try:
                try:
                    await self._board.wait_stored(self._settings.sync_timeout_s)
                except TimeoutError as exc:
                    raise Unavailable(f"sync gave up: {exc}; is PostgreSQL reachable?") from None
                await self.rebuild_held(row, status, times, where)
            except ForeignState:
                raise  # it stays on hold: never resumed from state that cannot be its own
            except BaseException:
                if previous and previous != "syncing":
                    await asyncio.shield(self._restore(row.id, previous))
                raise
            finally:
                self._board.bump_epoch()
        logger.info("event %d rebuilt in Redis with status %s", row.id, status)
        return await self.report(row.id)

    async def rebuild_held(
        self, row: EventRow, status: str, times: EventTimes, where: str, *, legacy_moved: bool = False
    ) -> bool:
        """Rebuild an event on hold whose buffered rows are stored; resume it with ``status``.

        Returns whether Redis was behind PostgreSQL (a stored issue it lacked, or a seq
        below the highest stored ordinal) and so had to be rebuilt, not only resumed.
        An event a version without namespaces still holds (``legacy_event_keys``) is not
        rebuilt beside those keys, where both versions would issue it, unless the caller
        is moving them (``legacy_moved``).
        """
        if not legacy_moved and await self._unmoved_legacy(row, times):
            counted.foreign_state.labels(where).inc()
            logger.error("event %d still has keys of a version without namespaces; it stays on hold", row.id)
            raise ForeignState(
                f"event {row.id} is still kept where a version without namespaces keeps it; run "
                "`couponctl upgrade-keys` first (docs/reliability.md)"
            )
        state = await self._events.state(row.id)
        records = [IssueRecord(row.id, *record) async for record in self._events.records(row.id)]
        rows = await store.issue_records(self._pool, row.id)
        stored = {r["user_id"]: r["ordinal"] for r in rows}
        self._refuse(row, state, records, stored, where)
        in_redis = {record.user_id for record in records}
        # Decisions no writer stored (a worker died with them buffered): PostgreSQL first.
        await write_missing(
            self._pool, row.id, records, stored=stored.keys(), on_refused=counted.count_refused
        )
        lacking = [
            (r["user_id"], r["ordinal"], to_us(r["issued_at"])) for r in rows if r["user_id"] not in in_redis
        ]
        if lacking:
            await self._events.merge_records(row.id, lacking)
        highest = max([*stored.values(), *(record.ordinal for record in records)], default=0)
        behind = bool(lacking) or state.issued < highest
        if row.status != status:
            # PostgreSQL first: an event Redis holds as open is never 'created' there, so
            # records found for a 'created' event are always someone else's.
            await store.set_status(self._pool, row.id, status)
        await self._events.finish_sync(row.id, status, times, highest)
        return behind

    async def _unmoved_legacy(self, row: EventRow, times: EventTimes) -> bool:
        """Keys of this event (not another deployment's: quantity, start and end are its own)
        where a version without namespaces kept it, not yet moved by `couponctl upgrade-keys`."""
        if row.status == "created":
            return False
        raw = await self._events.redis.hgetall(legacy_event_keys(row.id).meta)
        meta = {str(field): str(value) for field, value in raw.items()}
        if not meta or meta.get("moved_to"):
            return False
        found = (meta.get("quantity"), meta.get("starts_at"), meta.get("ends_at"))
        return found == (str(times.quantity), str(times.starts_at_us), str(times.ends_at_us))

    async def _restore(self, event_id: int, status: str) -> None:
        try:
            await self._events.set_status(event_id, status)
        except REDIS_FAILURES:
            logger.exception("could not restore event %d to %s; run sync again", event_id, status)

    async def _close(self, row: EventRow) -> EventReport:
        """Stop issuing at once, store what Redis holds, then delete the event's keys."""
        async with self.locked(row.id):
            await self._events.hold(row.id, "closed", self.times(row))
            self._board.bump_epoch()
            try:
                await self._board.wait_stored(self._settings.sync_timeout_s)
            except TimeoutError:
                logger.warning("closing event %d with rows still buffered; reconcile stores them", row.id)
            await self.store_recorded(row, where="close")
            if row.status != "closed":
                await store.set_status(self._pool, row.id, "closed")
            await self._events.delete(row.id)
            self._board.bump_epoch()
        logger.info("event %d closed", row.id)
        return await self.report(row.id)

    def locked(self, event_id: int) -> _EventLock:
        return _EventLock(self._events, self._events.keys.event(event_id).lock)


class _EventLock:
    def __init__(self, events: RedisEvents, name: str) -> None:
        self._lock = events.lock(name, _LOCK_TTL_S)

    async def __aenter__(self) -> None:
        try:
            acquired = await self._lock.acquire()
        except REDIS_FAILURES as exc:
            raise Unavailable("Redis is unreachable") from exc
        if not acquired:
            raise Busy()

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self._lock.release()
        except LOCK_RELEASE_FAILURES:
            logger.warning("event lock %s lapsed before release", self._lock.name)


class SuspectEvents:
    """Events whose Redis state is in doubt (PostgreSQL refused a row Redis decided, or the
    issue script found the event's keys not whole): each is put on hold and verified as by
    `sync`, one at a time; one whose Redis state cannot be squared with PostgreSQL stays on
    hold (ForeignState, with its alert)."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle
        self._running: dict[int, asyncio.Task[None]] = {}
        self._started: dict[int, float] = {}

    def verify(self, event_id: int, why: str) -> None:
        task = self._running.get(event_id)
        if task is not None and not task.done():
            return
        now = time.monotonic()
        if now - self._started.get(event_id, -_SUSPECT_RETRY_S) < _SUSPECT_RETRY_S:
            return  # asked on every refused answer: one verification a second at most
        self._started[event_id] = now
        counted.suspect_events.inc()
        logger.error("event %d: %s; verifying it against PostgreSQL", event_id, why)
        self._running[event_id] = asyncio.get_running_loop().create_task(
            self._verify(event_id), name=f"verify-event-{event_id}"
        )

    async def _verify(self, event_id: int) -> None:
        for _ in range(_SUSPECT_TRIES):
            try:
                await self._lifecycle.sync(event_id)
                logger.warning("event %d verified against PostgreSQL after a refused row", event_id)
                return
            except ForeignState:
                return
            except _RETRIED as exc:
                logger.warning("verifying event %d failed (%s); retrying", event_id, type(exc).__name__)
                await asyncio.sleep(_SUSPECT_RETRY_S)

    async def close(self) -> None:
        await cancel_all(self._running.values())
