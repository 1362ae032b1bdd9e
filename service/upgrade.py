"""Moves live events from the key layout without a namespace into the deployment's own.

Versions before the namespace kept an event at ``ev:{ID}:…``; this one reads
``coupon:<namespace>:ev:{ID}:…`` and would find an event opened by an older version
missing (503 until rebuilt). `couponctl upgrade-keys` moves each live event's legacy keys,
once, before the new version takes traffic:

1. The legacy keys are taken only if they are this database's: their quantity, start and
   end are the event's to the microsecond, and their records agree with PostgreSQL's rows
   (service/foreign.py). Another deployment's keys under the same ids are left alone.
2. The legacy event is put on hold (status ``syncing``): an older version still running
   answers 503 for it from then on, so the two layouts never both issue.
3. Its records are copied into the new keys, which are rebuilt as `sync` does (records
   PostgreSQL lacks are stored, seq at the highest ordinal either side holds).

Run again, it skips what it moved (the legacy hash keeps ``moved_to``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

from . import store
from .errors import ForeignState
from .foreign import refuse_foreign
from .keys import legacy_event_keys
from .lifecycle import Lifecycle
from .redis_events import RedisEvents

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Moved:
    event_id: int
    outcome: str  # moved, already moved, not ours, refused
    records: int = 0
    detail: str = ""

    def line(self) -> str:
        text = f"event {self.event_id}: {self.outcome}"
        if self.outcome == "moved":
            text += f" ({self.records} records)"
        return text + (f": {self.detail}" if self.detail else "")


async def upgrade_keys(pool: asyncpg.Pool, events: RedisEvents, lifecycle: Lifecycle) -> list[Moved]:
    """Move every live event that has legacy keys; one line of outcome per such event."""
    redis = events.redis
    results = []
    for row in await store.live_events(pool):
        if row.status != "open":
            continue  # only `open` wrote keys; a 'created' event with legacy keys is not ours
        legacy = legacy_event_keys(row.id)
        meta = {str(field): str(value) for field, value in (await redis.hgetall(legacy.meta)).items()}
        if not meta:
            continue
        if meta.get("moved_to"):
            results.append(Moved(row.id, "already moved", detail=f"to namespace {meta['moved_to']}"))
            continue
        times = lifecycle.times(row)
        fingerprint = (str(times.quantity), str(times.starts_at_us), str(times.ends_at_us))
        found = (meta.get("quantity"), meta.get("starts_at"), meta.get("ends_at"))
        if found != fingerprint:
            results.append(Moved(row.id, "not ours", detail=f"legacy keys hold quantity/start/end {found}"))
            continue
        async with lifecycle.locked(row.id):
            await redis.hset(legacy.meta, "status", "syncing")
            records = [
                (str(user), *_parse(str(value)))
                for user, value in (await redis.hgetall(legacy.users)).items()
            ]
            await events.hold(row.id, "syncing", times)
            try:
                # Checked before anything is written: the same checks as a rebuild's.
                stored = await store.issue_ordinals(pool, row.id)
                refuse_foreign(
                    event_id=row.id,
                    where="upgrade",
                    event_status=row.status,
                    quantity=row.quantity,
                    redis_quantity=int(meta["quantity"]),
                    issued=int(await redis.get(legacy.seq) or 0),
                    records=((user, ordinal) for user, ordinal, _ in records),
                    stored=stored,
                )
                await events.merge_records(row.id, records)
                await lifecycle.rebuild_held(row, row.status, times, "upgrade", legacy_moved=True)
            except ForeignState as exc:
                await redis.hset(legacy.meta, "status", meta.get("status", "open"))
                results.append(Moved(row.id, "refused", detail=str(exc)))
                continue
            await redis.hset(legacy.meta, "moved_to", events.keys.namespace)
        logger.info("event %d moved to namespace %s", row.id, events.keys.namespace)
        results.append(Moved(row.id, "moved", len(records)))
    return results


def _parse(value: str) -> tuple[int, int]:
    ordinal, _, issued_at_us = value.partition(":")
    return int(ordinal), int(issued_at_us)
