"""Events as PostgreSQL holds them, cached briefly per worker.

An event's row changes only through the admin API (create, open, close, sync), so a worker
keeps what it read for ``EVENT_CACHE_MS``; a lifecycle operation on this host bumps the
epoch and every worker here reads again at once, and on other hosts the entry lapses. The
issue path asks only when the issue script finds no state (closed, unknown, not yet opened,
or lost by Redis); the event route asks on every request and so never queries PostgreSQL
per request while an event is live. Lookups for one event share one query, and the cache
is bounded so a flood of made-up event ids cannot grow it without limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

from .store import EventRow

Lookup = Callable[[int], Coroutine[Any, Any, EventRow | None]]


class EventDirectory:
    def __init__(
        self,
        lookup: Lookup,
        *,
        ttl_s: float,
        epoch: Callable[[], int],
        max_entries: int = 10_000,
    ) -> None:
        self._lookup = lookup
        self._ttl_s = ttl_s
        self._epoch = epoch
        self._max_entries = max_entries
        self._entries: OrderedDict[int, tuple[float, int, asyncio.Task[EventRow | None]]] = OrderedDict()

    async def status(self, event_id: int) -> str | None:
        """The event's status in PostgreSQL ('created', 'open', 'closed'), or None."""
        row = await self.event(event_id)
        return None if row is None else row.status

    async def event(self, event_id: int) -> EventRow | None:
        """The event's row, or None when there is no such event."""
        now = time.monotonic()
        entry = self._entries.get(event_id)
        if entry is not None:
            expires, epoch, task = entry
            if now < expires and epoch == self._epoch():
                if not task.done():  # a lookup under way: share it
                    return await asyncio.shield(task)
                if not task.cancelled() and task.exception() is None:  # the common case: cached
                    return task.result()
        task = asyncio.get_running_loop().create_task(self._lookup(event_id))
        self._entries[event_id] = (now + self._ttl_s, self._epoch(), task)
        self._entries.move_to_end(event_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return await asyncio.shield(task)
