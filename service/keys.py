"""Every Redis key the service uses, built in one place.

An event's keys share the hash tag ``{ID}`` so one script call touches one slot
(Redis Cluster keeps them on one shard and the script stays atomic).
"""

from __future__ import annotations

from typing import NamedTuple

RECONCILE_LOCK = "coupon:lock:reconcile"


class EventKeys(NamedTuple):
    meta: str  # hash: status, quantity, starts_at, ends_at (µs), expire_at (ms)
    seq: str  # the last ordinal handed out
    users: str  # hash: user id -> "ordinal:issued_at_us"
    lock: str  # held while a lifecycle operation (open, close, sync) runs


def event_keys(event_id: int) -> EventKeys:
    tag = f"ev:{{{event_id}}}"
    return EventKeys(f"{tag}:meta", f"{tag}:seq", f"{tag}:users", f"{tag}:lock")


def expire_at_ms(ends_at_us: int, now_us: int, grace_s: int, open_ended_s: int) -> int:
    """When an event's keys expire: past its end, or a long while from now if open-ended."""
    if ends_at_us:
        return ends_at_us // 1000 + grace_s * 1000
    return now_us // 1000 + open_ended_s * 1000
