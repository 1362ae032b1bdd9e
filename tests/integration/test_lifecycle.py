"""Close, open again, sync and recovery: Redis rebuilt from PostgreSQL, nothing twice."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Callable

import aiohttp
import asyncpg
from redis.asyncio import Redis

from harness.api import Api, burst
from harness.invariants import assert_invariants, keyspace, wait_stored
from harness.service_process import ServiceProcess


async def _rows(pg: asyncpg.Pool, event_id: int) -> int:
    return int(await pg.fetchval("SELECT count(*) FROM coupon_issues WHERE event_id = $1", event_id))


async def test_close_stores_everything_deletes_the_keys_and_answers_403_closed(
    api: Api, pg: asyncpg.Pool, redis: Redis
) -> None:
    event_id = await api.open_event(10)
    replies = await burst(api, event_id, [f"c{n}" for n in range(6)])
    assert all(reply.status == 201 for reply in replies)

    closed = await api.close(event_id)

    assert closed.status == 200 and closed.body["status"] == "closed"
    assert closed.body["rows_stored"] == 6
    keys = (await keyspace(pg)).event(event_id)
    assert await redis.exists(keys.meta, keys.seq, keys.users) == 0
    reply = await api.issue(event_id, "late")
    assert (reply.status, reply.code) == (403, "closed")
    assert (await api.request("GET", f"/events/{event_id}")).body["status"] == "closed"
    await assert_invariants(pg, event_id, 10)
    assert (await api.close(event_id)).status == 200  # closing twice changes nothing
    assert await _rows(pg, event_id) == 6


async def test_reopen_after_close_keeps_who_was_served_and_the_stock(
    api: Api, pg: asyncpg.Pool, redis: Redis
) -> None:
    event_id = await api.open_event(5)
    for user in ("a", "b", "c"):
        assert (await api.issue(event_id, user)).status == 201
    await api.close(event_id)

    reopened = await api.open(event_id)

    assert reopened.status == 200 and reopened.body["remaining"] == 2
    assert (await api.issue(event_id, "a")).code == "already_issued"
    assert (await api.issue(event_id, "d")).body["ordinal"] == 4
    assert (await api.issue(event_id, "e")).body["ordinal"] == 5
    assert (await api.issue(event_id, "f")).code == "sold_out"
    await wait_stored(pg, redis, event_id)
    await assert_invariants(pg, event_id, 5, redis=redis)
    assert (await api.open(event_id)).status == 200  # opening twice changes nothing
    await assert_invariants(pg, event_id, 5, redis=redis)


async def test_sync_rebuilds_lost_redis_state_from_postgres(api: Api, pg: asyncpg.Pool, redis: Redis) -> None:
    event_id = await api.open_event(10)
    for user in range(1, 5):
        assert (await api.issue(event_id, user)).status == 201
    await wait_stored(pg, redis, event_id)
    keys = (await keyspace(pg)).event(event_id)
    await redis.delete(keys.meta, keys.seq, keys.users)  # as a restart without AOF leaves it
    await redis.script_flush()
    assert (await api.issue(event_id, 9)).code == "unavailable"

    # That answer also started an automatic rebuild: the operator's sync may find it busy.
    while (synced := await api.sync(event_id)).code == "busy":
        await asyncio.sleep(0.05)

    assert synced.status == 200 and synced.body["issued_redis"] == 4 and synced.body["remaining"] == 6
    assert (await api.issue(event_id, 1)).code == "already_issued"
    assert (await api.issue(event_id, 9)).body["ordinal"] == 5
    await wait_stored(pg, redis, event_id)
    await assert_invariants(pg, event_id, 10, redis=redis)
    assert (await api.sync(event_id)).body["issued_redis"] == 5  # idempotent


async def test_sync_under_burst_never_over_issues(api: Api, pg: asyncpg.Pool, redis: Redis) -> None:
    quantity = 500
    event_id = await api.open_event(quantity)
    users = [f"s{n}" for n in range(1500)]

    async def syncs() -> list[int]:
        statuses = []
        for _ in range(3):
            await asyncio.sleep(0.05)
            statuses.append((await api.sync(event_id)).status)
        return statuses

    replies, sync_statuses = await asyncio.gather(burst(api, event_id, users), syncs())

    assert all(status in (200, 409) for status in sync_statuses), sync_statuses
    statuses = Counter(reply.status for reply in replies)
    assert set(statuses) <= {201, 410, 503}, statuses
    assert statuses[201] <= quantity
    await wait_stored(pg, redis, event_id)
    rows = await assert_invariants(pg, event_id, quantity, redis=redis)
    # A 503 while syncing decided nothing, so PostgreSQL holds exactly the 201s.
    assert len(rows) == statuses[201]
    served = {reply.body["user_id"] for reply in replies if reply.status == 201}
    assert served <= {row["user_id"] for row in rows}
    # Those refused during the sync can come back and still get a coupon.
    again = await burst(api, event_id, users)
    assert sum(reply.status == 201 for reply in again) == quantity - len(rows)
    await wait_stored(pg, redis, event_id)
    await assert_invariants(pg, event_id, quantity, redis=redis)


async def test_script_flush_in_the_middle_of_a_burst_costs_nothing(
    api: Api, pg: asyncpg.Pool, redis: Redis
) -> None:
    quantity = 800
    event_id = await api.open_event(quantity)

    async def flush_scripts() -> None:
        for _ in range(5):
            await asyncio.sleep(0.02)
            await redis.script_flush()

    replies, _ = await asyncio.gather(burst(api, event_id, [f"f{n}" for n in range(2000)]), flush_scripts())

    statuses = Counter(reply.status for reply in replies)
    assert statuses == Counter({201: quantity, 410: 2000 - quantity}), statuses
    await wait_stored(pg, redis, event_id)
    await assert_invariants(pg, event_id, quantity, redis=redis)


async def test_sync_waits_for_buffered_rows_when_redis_lost_its_data(
    start_service: Callable[..., ServiceProcess], http: aiohttp.ClientSession, pg: asyncpg.Pool, redis: Redis
) -> None:
    # Rows sit in the workers' buffers for 2 s: Redis loses the event meanwhile, and the
    # rebuild must not forget the users those rows served.
    slow = start_service(FLUSH_INTERVAL_MS="2000", FLUSH_BATCH_ROWS="100000", WORKERS="2")
    api = Api(slow.url, http)
    event_id = await api.open_event(20)
    served = await burst(api, event_id, [f"b{n}" for n in range(8)])
    assert all(reply.status == 201 for reply in served)
    assert await _rows(pg, event_id) < 8
    keys = (await keyspace(pg)).event(event_id)
    await redis.delete(keys.meta, keys.seq, keys.users)

    synced = await api.sync(event_id)

    assert synced.status == 200 and synced.body["issued_redis"] == 8
    again = await burst(api, event_id, [f"b{n}" for n in range(12)])
    assert Counter(reply.status for reply in again) == Counter({409: 8, 201: 4})
    await wait_stored(pg, redis, event_id)
    await assert_invariants(pg, event_id, 20, redis=redis)


async def test_issues_whose_buffer_was_lost_are_recovered_at_start(
    start_service: Callable[..., ServiceProcess], http: aiohttp.ClientSession, pg: asyncpg.Pool, redis: Redis
) -> None:
    doomed = start_service(FLUSH_INTERVAL_MS="60000", FLUSH_BATCH_ROWS="100000")
    api = Api(doomed.url, http)
    event_id = await api.open_event(50)
    replies = await burst(api, event_id, [f"k{n}" for n in range(30)])
    assert all(reply.status == 201 for reply in replies)
    assert await _rows(pg, event_id) < 30  # see the graceful test: a late worker may write a few
    # Every buffer dies with its worker. The whole process group at once: killed one by one,
    # a worker's death makes the manager start a replacement that outlives the test.
    assert doomed.proc is not None
    os.killpg(doomed.proc.pid, signal.SIGKILL)
    doomed.proc.wait(10)

    start_service()  # its start-up reconcile writes what Redis recorded

    await wait_stored(pg, redis, event_id)
    rows = await assert_invariants(pg, event_id, 50, redis=redis)
    assert {row["user_id"]: row["ordinal"] for row in rows} == {
        reply.body["user_id"]: reply.body["ordinal"] for reply in replies
    }


async def test_graceful_shutdown_stores_every_buffered_row(
    start_service: Callable[..., ServiceProcess], http: aiohttp.ClientSession, pg: asyncpg.Pool
) -> None:
    service = start_service(FLUSH_INTERVAL_MS="60000", FLUSH_BATCH_ROWS="100000")
    api = Api(service.url, http)
    event_id = await api.open_event(1000)
    replies = await burst(api, event_id, [f"g{n}" for n in range(400)])
    assert all(reply.status == 201 for reply in replies)
    # Buffered, not stored (a worker that finished starting after the burst may already
    # have written a few through its start-up reconcile, which is harmless).
    assert await _rows(pg, event_id) < 400

    assert service.stop(signal.SIGTERM) == 0

    assert await _rows(pg, event_id) == 400
    await assert_invariants(pg, event_id, 1000)


async def test_a_full_buffer_answers_503_before_deciding_and_loses_nothing(
    start_service: Callable[..., ServiceProcess], http: aiohttp.ClientSession, pg: asyncpg.Pool, redis: Redis
) -> None:
    service = start_service(BUFFER_MAX_ROWS="20", FLUSH_BATCH_ROWS="10", ISSUE_BATCH_MAX="5")
    api = Api(service.url, http)
    event_id = await api.open_event(1000)
    keys = (await keyspace(pg)).event(event_id)
    blocker = await pg.acquire()
    try:
        transaction = blocker.transaction()
        await transaction.start()
        # Every flush now waits on the lock: the buffers fill and stay full.
        await blocker.execute("LOCK TABLE coupon_issues IN ACCESS EXCLUSIVE MODE")
        replies = [await api.issue(event_id, f"full{n}") for n in range(120)]
        statuses = Counter(reply.status for reply in replies)
        assert statuses[201] <= 40 and statuses[503] >= 80, statuses
        assert {reply.code for reply in replies if reply.status == 503} == {"unavailable"}
        # A 503 decided nothing: Redis issued exactly the 201s.
        assert int(await redis.get(keys.seq)) == statuses[201]
        await transaction.rollback()
    finally:
        await pg.release(blocker)
    await wait_stored(pg, redis, event_id)
    rows = await assert_invariants(pg, event_id, 1000, redis=redis)
    assert len(rows) == statuses[201]
    assert (await api.issue(event_id, "after")).status == 201
