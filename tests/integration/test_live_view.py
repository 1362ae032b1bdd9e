"""GET /admin/events/{id}/live, what `couponctl watch` polls: the report, the sale's moments,
this host's answers by outcome and issue latency buckets (summed over its workers)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
from redis.asyncio import Redis

from harness.api import Api, burst
from harness.invariants import wait_stored


async def live(api: Api, event_id: int) -> dict:
    reply = await api.request("GET", f"/admin/events/{event_id}/live", admin=True)
    assert reply.status == 200, reply
    return reply.body


async def test_the_live_view_counts_every_answer_by_outcome_over_both_workers(
    api: Api, pg: asyncpg.Pool, redis: Redis
) -> None:
    event_id = await api.open_event(50)
    before = await live(api, event_id)
    assert before["first_issued_at"] is None and before["sold_out_at"] is None
    assert (
        before["report"]["issued_redis"] == 0 and before["checks"]["redis"] and before["checks"]["postgres"]
    )
    assert before["workers"] == 2

    issued = await burst(api, event_id, [f"u{n}" for n in range(60)])  # 50 issued, 10 sold out
    again = await burst(api, event_id, [f"u{n}" for n in range(5)])  # sold out (from memory) or 409
    await wait_stored(pg, redis, event_id)
    await asyncio.sleep(0.5)  # each worker writes its counts a few times a second (Tally.FLUSH_S)
    after = await live(api, event_id)

    answered = {
        outcome: after["answers"][outcome] - before["answers"][outcome] for outcome in before["answers"]
    }
    assert answered["issued"] == sum(r.status == 201 for r in issued) == 50
    assert answered["sold_out"] + answered["already_issued"] == 15
    assert sum(answered.values()) == 65
    buckets = after["issue_seconds"]["buckets"]
    assert buckets[-1][0] == "+Inf" and [count for _, count in buckets] == sorted(
        count for _, count in buckets
    )
    assert buckets[-1][1] == after["issue_seconds"]["count"] >= before["issue_seconds"]["count"] + 65
    assert {r.status for r in again} <= {409, 410}

    report = after["report"]
    assert (report["issued_redis"], report["rows_stored"], report["drift"]) == (50, 50, 0)
    first = datetime.fromisoformat(after["first_issued_at"].replace("Z", "+00:00"))
    sold_out = datetime.fromisoformat(after["sold_out_at"].replace("Z", "+00:00"))
    stored = await pg.fetchrow(
        "SELECT min(issued_at) AS first, max(issued_at) AS last FROM coupon_issues WHERE event_id = $1",
        event_id,
    )
    assert (first, sold_out) == (stored["first"], stored["last"])
    assert first <= sold_out <= datetime.now(UTC)


async def test_rows_stored_is_exact_when_rows_arrive_out_of_order(api: Api, pg: asyncpg.Pool) -> None:
    """The report counts only rows above an ordinal up to which all are stored: a gap (a
    worker's buffer not yet written) must not be skipped over."""
    event_id = await api.create(20)

    async def store(*ordinals: int) -> None:
        await pg.executemany(
            "INSERT INTO coupon_issues (event_id, user_id, ordinal, issued_at) VALUES ($1, $2, $3, now())",
            [(event_id, f"user{ordinal}", ordinal) for ordinal in ordinals],
        )

    async def rows_stored() -> set[int]:
        # Both workers answer in turn, each with its own memory of the complete prefix.
        return {(await api.stats(event_id)).body["rows_stored"] for _ in range(6)}

    assert await rows_stored() == {0}
    await store(1, 2, 3, 5, 6)
    assert await rows_stored() == {5}
    await store(4, 9)
    assert await rows_stored() == {7}
    await store(7, 8, 10, 11, 12)
    assert await rows_stored() == {12}
    assert await pg.fetchval("SELECT count(*) FROM coupon_issues WHERE event_id = $1", event_id) == 12


async def test_the_live_view_of_an_unknown_event_is_404_and_needs_the_token(api: Api) -> None:
    reply = await api.request("GET", f"/admin/events/{2**62}/live", admin=True)
    assert (reply.status, reply.code) == (404, "event_not_found")
    reply = await api.request("GET", "/admin/events/1/live")
    assert (reply.status, reply.code) == (401, "unauthorized")
