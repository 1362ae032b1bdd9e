"""What PostgreSQL says of an event whose state Redis lacks, cached briefly per worker.

Asked only when the issue script finds no state: the event is closed, unknown, not yet
opened, or Redis lost its data. Lookups for one event share one query, and the cache is
bounded so a flood of made-up event ids cannot grow it without limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

Lookup = Callable[[int], Coroutine[Any, Any, str | None]]


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
        self._entries: OrderedDict[int, tuple[float, int, asyncio.Task[str | None]]] = OrderedDict()

    async def status(self, event_id: int) -> str | None:
        """The event's status in PostgreSQL ('created', 'open', 'closed'), or None."""
        now = time.monotonic()
        entry = self._entries.get(event_id)
        if entry is not None:
            expires, epoch, task = entry
            if now < expires and epoch == self._epoch() and not (task.done() and task.exception()):
                return await asyncio.shield(task)
        task = asyncio.get_running_loop().create_task(self._lookup(event_id))
        self._entries[event_id] = (now + self._ttl_s, self._epoch(), task)
        self._entries.move_to_end(event_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return await asyncio.shield(task)
