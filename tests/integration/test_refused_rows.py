"""A row PostgreSQL refuses means Redis and PostgreSQL disagree: the event is put on hold
and verified, the refused issue is kept, and nothing more is issued from the disagreement."""

from __future__ import annotations

import asyncio
import time

import asyncpg
from redis.asyncio import Redis

from harness.api import Api
from harness.invariants import keyspace, wait_stored


async def _until(check: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_refused_row_puts_its_event_on_hold_keeps_the_issue_and_counts_it(
    api: Api, pg: asyncpg.Pool, redis: Redis
) -> None:
    event_id = await api.open_event(10)
    assert (await api.issue(event_id, "a")).body["ordinal"] == 1
    await wait_stored(pg, redis, event_id)
    # PostgreSQL holds ordinal 2 for someone this Redis never served: the two disagree.
    await pg.execute(
        "INSERT INTO coupon_issues (event_id, user_id, ordinal, issued_at) VALUES ($1, 'ghost', 2, now())",
        event_id,
    )
    served = await api.issue(event_id, "b")
    assert (served.status, served.body["ordinal"]) == (201, 2)

    async def kept() -> bool:
        row = await pg.fetchrow(
            "SELECT ordinal, reason FROM refused_issues WHERE event_id = $1 AND user_id = 'b'", event_id
        )
        return row is not None and tuple(row) == (2, "conflict")

    await _until(kept)

    async def held() -> bool:
        # Asked as a user already served: 409 until the hold lands, so the probe itself
        # never adds a row (a new user could be issued just before it).
        return (await api.issue(event_id, "a")).status == 503

    await _until(held)
    # On hold for good: it cannot be squared with PostgreSQL without an operator.
    await asyncio.sleep(1.5)
    assert (await api.issue(event_id, "d")).code == "unavailable"
    assert await pg.fetchval("SELECT count(*) FROM coupon_issues WHERE event_id = $1", event_id) == 2
    assert (await api.sync(event_id)).code == "foreign_state"
    metrics = (await api.request("GET", "/metrics")).body.decode()
    refused = [
        line
        for line in metrics.splitlines()
        if line.startswith('coupon_rows_refused_total{reason="conflict"}')
    ]
    assert refused and float(refused[0].split()[-1]) >= 1
    assert any(
        line.startswith("coupon_suspect_events_total") and float(line.split()[-1]) >= 1
        for line in metrics.splitlines()
    )

    # Out of the shared service's way: its reconcile would refuse this event on every pass.
    keys = (await keyspace(pg)).event(event_id)
    await redis.delete(keys.meta, keys.seq, keys.users)
    await pg.execute("UPDATE events SET status = 'closed' WHERE id = $1", event_id)
