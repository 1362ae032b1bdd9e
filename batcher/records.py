"""One coupon issue as the writer stores it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class IssueRecord:
    event_id: int
    user_id: str
    ordinal: int
    issued_at_us: int

    def row(self) -> tuple[int, str, int, datetime]:
        seconds, micros = divmod(self.issued_at_us, 1_000_000)
        moment = datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)
        return (self.event_id, self.user_id, self.ordinal, moment)
