"""A worker's bounded FIFO of issues decided but not yet stored.

Room is reserved before a decision is asked of Redis, so a full buffer turns into a 503
before anything is issued, never into a dropped row (I5). Two watermarks count rows
accepted and rows stored since start; the rows stored are always the oldest (FIFO), so
"stored >= accepted at time T" means every row accepted by T is in PostgreSQL.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from .records import IssueRecord


class BufferFull(Exception):
    pass


class Buffer:
    def __init__(
        self,
        max_rows: int,
        on_change: Callable[[int, int], None] | None = None,
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be positive, got {max_rows}")
        self.max_rows = max_rows
        self._rows: deque[IssueRecord] = deque()
        self._reserved = 0
        self.accepted = 0
        self.stored = 0
        self._on_change = on_change

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def reserved(self) -> int:
        return self._reserved

    def reserve(self, rows: int) -> None:
        if len(self._rows) + self._reserved + rows > self.max_rows:
            raise BufferFull(f"{len(self._rows)} rows buffered, {self._reserved} reserved")
        self._reserved += rows

    def release(self, rows: int) -> None:
        if rows > self._reserved:
            raise ValueError(f"releasing {rows} rows but only {self._reserved} are reserved")
        self._reserved -= rows

    def commit(self, records: Iterable[IssueRecord], reserved: int) -> None:
        """Add decided issues, giving back the reservation they were decided under."""
        batch = list(records)
        if len(batch) > reserved:
            raise ValueError(f"committing {len(batch)} rows under a reservation of {reserved}")
        self.release(reserved)
        self._rows.extend(batch)
        self.accepted += len(batch)
        self._publish()

    def oldest(self, rows: int) -> list[IssueRecord]:
        count = min(rows, len(self._rows))
        return [self._rows[i] for i in range(count)]

    def mark_stored(self, rows: int) -> None:
        if rows > len(self._rows):
            raise ValueError(f"marking {rows} rows stored but only {len(self._rows)} are buffered")
        for _ in range(rows):
            self._rows.popleft()
        self.stored += rows
        self._publish()

    def _publish(self) -> None:
        if self._on_change is not None:
            self._on_change(self.accepted, self.stored)
