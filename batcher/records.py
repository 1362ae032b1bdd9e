"""One coupon issue as the writer stores it."""

from __future__ import annotations

from typing import NamedTuple


class IssueRecord(NamedTuple):
    """A tuple, so a batch goes to COPY as it is: no per-row conversion in Python."""

    event_id: int
    user_id: str
    ordinal: int
    issued_at_us: int  # µs since the epoch, from Redis TIME
