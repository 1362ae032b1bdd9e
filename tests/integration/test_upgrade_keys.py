"""`couponctl upgrade-keys`: an event a version without namespaces left live is moved, once.

The event is planted as the old version would have left it mid-sale: its keys at
``ev:{ID}:…`` (no namespace), 30 users issued there by the same issue script, only 20 of
them stored (a buffer not yet flushed when the old version stopped). Another deployment's
legacy keys sit under the id of a second event of ours, with a different quantity.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
from redis.asyncio import Redis

from harness.api import ADMIN_TOKEN, Api, Reply
from harness.invariants import assert_invariants, keyspace, wait_stored
from harness.service_process import ServiceProcess
from lua import source
from service import store
from service.config import Settings
from service.keys import legacy_event_keys
from service.lifecycle import Lifecycle
from service.redis_events import RedisEvents
from service.redis_link import RedisLink
from service.workers import WorkerBoard

COUPONCTL = Path(sys.executable).parent / "couponctl"


def _upgrade(service: ServiceProcess) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": service.env["DATABASE_URL"], "REDIS_URL": service.env["REDIS_URL"]}
    env.pop("REDIS_KEY_PREFIX", None)
    return subprocess.run(
        [str(COUPONCTL), "upgrade-keys"], env=env, capture_output=True, text=True, timeout=60, check=False
    )


async def _plant_legacy(redis: Redis, event_id: int, times: list[int], users: list[str]) -> list[int]:
    """Legacy keys for the event (meta: quantity, starts_at, ends_at, expire_at) and the
    users issued on them by the issue script; returns their outcomes."""
    quantity, starts_at_us, ends_at_us, expire_at_ms = times
    legacy = legacy_event_keys(event_id)
    await redis.hset(
        legacy.meta,
        mapping={
            "status": "open",
            "quantity": quantity,
            "starts_at": starts_at_us,
            "ends_at": ends_at_us,
            "expire_at": expire_at_ms,
        },
    )
    await redis.set(legacy.seq, 0)  # as an older version's open left it
    if not users:
        return []
    reply = await redis.eval(source("issue"), 3, legacy.meta, legacy.seq, legacy.users, 0, *users)  # type: ignore[misc]
    return [int(outcome) for outcome in reply[1:]]


async def _answered(api: Api, event_id: int, user: str, timeout_s: float = 5.0) -> Reply:
    deadline = time.monotonic() + timeout_s
    while True:
        reply = await api.issue(event_id, user)
        if reply.status != 503 or time.monotonic() > deadline:
            return reply
        await asyncio.sleep(0.05)


async def test_upgrade_keys_moves_a_live_legacy_event_stores_its_issues_and_leaves_others_alone(
    service: ServiceProcess, api: Api, pg: asyncpg.Pool, redis: Redis
) -> None:
    events = RedisEvents(RedisLink(redis), await keyspace(pg))
    lifecycle = Lifecycle(pg, events, WorkerBoard.local(), Settings(admin_token=ADMIN_TOKEN))
    ours = await api.open_event(50)
    theirs = await api.open_event(10)
    keys = events.keys.event(ours)
    legacy, foreign = legacy_event_keys(ours), legacy_event_keys(theirs)
    try:
        row = await store.event(pg, ours)
        assert row is not None
        # As the old version left it: no namespaced keys, the sale on the legacy ones.
        await redis.delete(keys.meta, keys.seq, keys.users)
        users = [f"old{n}" for n in range(30)]
        assert await _plant_legacy(redis, ours, lifecycle.times(row).args(), users) == list(range(1, 31))
        # Another deployment's event 'theirs': same id, another quantity.
        await _plant_legacy(redis, theirs, [77, 0, 0, int(time.time() * 1000) + 600_000], ["x1", "x2"])
        records = {user: value.split(":") for user, value in (await redis.hgetall(legacy.users)).items()}
        flushed = sorted(records.items(), key=lambda item: int(item[1][0]))[:20]
        await pg.executemany(
            "INSERT INTO coupon_issues (event_id, user_id, ordinal, issued_at)"
            " VALUES ($1, $2, $3, timestamptz 'epoch' + $4 * interval '1 microsecond')",
            [(ours, user, int(ordinal), int(at_us)) for user, (ordinal, at_us) in flushed],
        )
        # Before the upgrade this version cannot see the event: 503, never a fresh stock.
        before = await api.issue(ours, "early")
        assert (before.status, before.code) == (503, "unavailable")

        first = _upgrade(service)

        assert first.returncode == 0, first.stderr
        assert f"couponctl: event {ours}: moved (30 records)" in first.stdout
        assert f"couponctl: event {theirs}: not ours" in first.stdout
        moved = await redis.hgetall(legacy.meta)
        assert moved["status"] == "syncing" and moved["moved_to"] == events.keys.namespace
        # The other deployment's keys are untouched.
        assert (await redis.hgetall(foreign.meta))["status"] == "open"
        assert await redis.hlen(foreign.users) == 2 and int(await redis.get(foreign.seq)) == 2
        assert int(await redis.get(events.keys.event(theirs).seq) or 0) == 0
        stored = {
            r["user_id"]: r["ordinal"]
            for r in await pg.fetch("SELECT user_id, ordinal FROM coupon_issues WHERE event_id = $1", ours)
        }
        assert stored == {user: int(ordinal) for user, (ordinal, _) in records.items()}
        assert int(await redis.get(keys.seq)) == 30 and await redis.hlen(keys.users) == 30

        after = await _answered(api, ours, "new0")
        assert (after.status, after.body["ordinal"]) == (201, 31), after
        for user in ("old0", "old29"):
            again = await api.issue(ours, user)
            assert (again.status, again.code) == (409, "already_issued")
        assert (await api.issue(theirs, "x1")).status == 201  # ours, in our namespace

        second = _upgrade(service)
        assert second.returncode == 0, second.stderr
        assert f"couponctl: event {ours}: already moved" in second.stdout
        assert f"event {ours}: moved" not in second.stdout
        assert await wait_stored(pg, redis, ours) == 31
        await assert_invariants(pg, ours, 50, redis=redis)
    finally:
        await redis.delete(*legacy[:3], *foreign[:3])
