"""What an event is, as an operator asks for one: the request's validation produces it,
the store writes it. Neither knows the other."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

# The statuses PostgreSQL stores (the events table's CHECK); what a shopper sees is derived.
EVENT_STATUSES = ("created", "open", "closed")


@dataclass(frozen=True)
class EventSpec:
    name: str
    quantity: int
    starts_at: datetime | None  # None: starts now
    ends_at: datetime | None  # None: open-ended
    coupon: dict[str, Any] | None
