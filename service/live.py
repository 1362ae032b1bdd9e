"""What an operator watching a sale reads (`couponctl list`, `couponctl watch`): the list of
events, and one event's live figures. Counters only, diffed by the client between polls:
nothing here adds work to the issue path, which already counts its answers (metrics/)."""

from __future__ import annotations

import math
from typing import Any

import asyncpg

from . import store
from .failures import REDIS_FAILURES
from .lifecycle import Lifecycle
from .metrics import counted, exposition
from .redis_events import RedisEvents
from .timefmt import iso
from .validation import EventListing, cursor_of


async def event_list(pool: asyncpg.Pool, events: RedisEvents, listing: EventListing) -> dict[str, Any]:
    """A page of events newest first, with the cursor of the next page (None at the end).

    Ids come from an identity column, so an event created while a client pages has a larger
    id than any listed and never shifts the pages after the first. ``remaining`` is Redis's
    (one batched read for the page), or null where Redis holds no state of the event or
    cannot be read: a Redis failure does not fail the list."""
    rows = await store.list_events(
        pool, status=listing.status, before_id=listing.before_id, limit=listing.limit + 1
    )
    more, rows = len(rows) > listing.limit, rows[: listing.limit]
    try:
        issued = await events.issued_of([row.id for row in rows])
    except REDIS_FAILURES:
        issued = {}
    items = []
    for row in rows:
        count = issued.get(row.id)
        if count is not None:
            remaining: int | None = max(0, row.quantity - count)
        else:  # Redis learns of an event when it opens: before that, nothing is issued
            remaining = row.quantity if row.status == "created" else None
        items.append(
            {
                "id": row.id,
                "name": row.name,
                "status": row.status,
                "quantity": row.quantity,
                "remaining": remaining,
                "starts_at": iso(row.starts_at),
                "ends_at": iso(row.ends_at),
            }
        )
    return {"events": items, "next_cursor": cursor_of(rows[-1].id) if more and rows else None}


# As service/metrics/counted.py names them.
_ISSUE_REQUESTS = "coupon_issue_requests"
_ISSUE_DURATION = "coupon_issue_duration_seconds"


async def event_live(pool: asyncpg.Pool, lifecycle: Lifecycle, event_id: int) -> dict[str, Any]:
    """The event's report, when its first coupon and its last were issued (as stored), and
    this host's issue answers by outcome and issue-route latency buckets, cumulative and
    summed over its workers (every event's: the issue path counts no event label)."""
    report = (await lifecycle.report(event_id)).as_json()
    quantity = report["quantity"]
    moments = await store.issued_at_of(pool, event_id, sorted({1, quantity}))
    answers = dict.fromkeys(counted.OUTCOMES, 0)
    own_counts: dict[float, float] = {}
    seconds_sum = 0.0
    for (sample, labels), value in exposition.summed((_ISSUE_REQUESTS, _ISSUE_DURATION)).items():
        if sample == f"{_ISSUE_REQUESTS}_total":
            answers[dict(labels)["outcome"]] = int(value)
        elif sample == f"{_ISSUE_DURATION}_bucket":
            own_counts[float(dict(labels)["le"])] = value
        elif sample == f"{_ISSUE_DURATION}_sum":
            seconds_sum = value
    buckets: list[list[float | str]] = []
    total = 0
    for bound in sorted(own_counts):  # cumulative, as a scrape shows them
        total += int(own_counts[bound])
        buckets.append(["+Inf" if math.isinf(bound) else bound, total])
    return {
        "report": report,
        "first_issued_at": iso(moments.get(1)),
        "sold_out_at": iso(moments.get(quantity)),
        "answers": answers,
        "issue_seconds": {"buckets": buckets, "count": total, "sum": seconds_sum},
    }
