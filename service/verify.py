"""Verifies a Redis the deployment does not know against PostgreSQL, rebuilding what is behind.

One process at a time per Redis (a lock in it); the others wait for its mark. For every
open event: put it on hold (503 ``unavailable``), wait until every writer (this host's
workers, and other hosts through their beacons) has stored the rows it held, then compare
the event's Redis state with PostgreSQL. Redis behind in any way (a stored issue it lacks,
a seq below the highest stored ordinal) is rebuilt as `sync` does; either way the event
resumes. State that cannot be the event's keeps it on hold and is refused loudly
(service/foreign.py). Last, the Redis's run id becomes the mark (service/trust.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable

import asyncpg
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.cluster import PRIMARY

from . import store
from .errors import ForeignState
from .failures import LOCK_RELEASE_FAILURES, REDIS_FAILURES
from .keys import Keyspace
from .lifecycle import Lifecycle
from .metrics import counted
from .redis_events import RedisEvents
from .trust import Target
from .workers import WorkerBoard

logger = logging.getLogger(__name__)

BEACON_S = 0.1
# A writer whose beacon is older than this has stopped (its process died): its buffered
# rows are gone from memory, and only what Redis recorded of them can be recovered.
_STALE_S = 3.0
_FORGET_S = 600.0
_POLL_S = 0.02


class Verifier:
    def __init__(
        self,
        pool: asyncpg.Pool,
        events: RedisEvents,
        lifecycle: Lifecycle,
        board: WorkerBoard,
        *,
        timeout_s: float,
    ) -> None:
        """``events`` and ``lifecycle`` talk to Redis over connections the trust gate does
        not check (the verification itself must reach an unverified Redis)."""
        self._pool = pool
        self._events = events
        self._keys: Keyspace = events.keys
        self._lifecycle = lifecycle
        self._board = board
        self._timeout_s = timeout_s

    async def __call__(self, target: Target) -> None:
        client = self._events.redis
        if isinstance(client, RedisCluster):
            # A verification follows a failover: the slot map from before it names the dead
            # primary for the very slots this one now serves.
            await client.initialize()  # once per client (its parser needs it)
            await client.nodes_manager.initialize()
        lock = client.lock(target.lock, timeout=self._timeout_s + 30, blocking=False)
        deadline = time.monotonic() + self._timeout_s + 30
        while not await lock.acquire():
            if await client.get(target.mark) == target.run_id:
                return  # another process verified it
            if time.monotonic() > deadline:
                raise TimeoutError("another process has held the verification lock too long")
            await asyncio.sleep(_POLL_S * 5)
        try:
            if await client.get(target.mark) == target.run_id:
                return
            if await self._run_id(target) != target.run_id:
                return  # it changed again; the next connection finds out which it is now
            await self._verify(client, target)
        finally:
            try:
                await lock.release()
            except LOCK_RELEASE_FAILURES:
                logger.warning("verification lock lapsed before release")

    async def _run_id(self, target: Target) -> str | None:
        client = self._events.redis
        if not isinstance(client, RedisCluster):
            return str((await client.info("server"))["run_id"])
        node = client.get_node(node_name=target.name)
        if node is None or node.server_type != PRIMARY:
            return None
        return str((await client.info("server", target_nodes=node))["run_id"])

    async def _verify(self, client: Redis | RedisCluster, target: Target) -> None:
        started = time.monotonic()
        since_ms = time.time_ns() // 1_000_000
        live = [
            row
            for row in await store.live_events(self._pool)
            # On a cluster only the events this primary serves pause.
            if row.status == "open" and (target.name == "redis" or self._events.shard(row.id) == target.name)
        ]
        times = {row.id: self._lifecycle.times(row) for row in live}
        for row in live:
            await self._events.hold(row.id, "syncing", times[row.id])
        self._board.bump_epoch()
        try:
            await self._board.wait_stored(self._timeout_s)
            await wait_for_writers(client, self._keys, since_ms=since_ms, timeout_s=self._timeout_s)
            rebuilt, refused = [], []
            for row in live:
                try:
                    if await self._lifecycle.rebuild_held(row, "open", times[row.id], "verify"):
                        rebuilt.append(row.id)
                except ForeignState:
                    refused.append(row.id)  # logged and counted where found; it stays on hold
            await client.set(target.mark, target.run_id)
        finally:
            self._board.bump_epoch()
        paused_s = time.monotonic() - started
        counted.verifications.labels("rebuilt" if rebuilt else "current").inc()
        counted.events_rebuilt.inc(len(rebuilt))
        counted.verify_seconds.set(paused_s)
        log = logger.warning if rebuilt or refused else logger.info
        log(
            "Redis %s (%s) verified against PostgreSQL in %.3f s: %d open events, %d behind and"
            " rebuilt %s, %d refused %s",
            target.name,
            target.run_id[:12],
            paused_s,
            len(live),
            len(rebuilt),
            rebuilt[:10],
            len(refused),
            refused[:10],
        )


def _entries(raw: dict[bytes | str, bytes | str]) -> dict[str, tuple[int, int, int]]:
    found = {}
    for name, value in raw.items():
        try:
            accepted, stored, at_ms = (int(part) for part in str(value).split(":"))
        except ValueError:
            continue
        found[str(name)] = (accepted, stored, at_ms)
    return found


async def wait_for_writers(
    client: Redis | RedisCluster, keys: Keyspace, *, since_ms: int, timeout_s: float
) -> None:
    """Return once every writer that published since ``since_ms`` has stored what it had
    accepted by then (on every host); a writer that stops publishing is given up on."""
    await asyncio.sleep(2 * BEACON_S + 0.05)  # every live writer has published since
    deadline = time.monotonic() + timeout_s
    first = _entries(await client.hgetall(keys.writers))
    targets = {name: accepted for name, (accepted, stored, at_ms) in first.items() if at_ms >= since_ms}
    stale = [name for name, (_, _, at_ms) in first.items() if at_ms < since_ms - _FORGET_S * 1000]
    if stale:
        await client.hdel(keys.writers, *stale)
    while targets:
        now_ms = time.time_ns() // 1_000_000
        current = _entries(await client.hgetall(keys.writers))
        for name, accepted in list(targets.items()):
            entry = current.get(name)
            if entry is None or entry[1] >= accepted:
                del targets[name]
            elif entry[2] < now_ms - _STALE_S * 1000:
                logger.error(
                    "writer %s stopped with %d rows buffered; what Redis kept is recovered",
                    name,
                    accepted - entry[1],
                )
                del targets[name]
        if not targets:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"writers {sorted(targets)[:5]} still hold rows after {timeout_s:.1f}s")
        await asyncio.sleep(_POLL_S)


def writer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def publish_periodically(
    client: Redis | RedisCluster, keys: Keyspace, watermarks: Callable[[], tuple[int, int]]
) -> None:
    """This writer's beacon: its buffer's watermarks (rows accepted, rows stored), every
    BEACON_S, so a verification on any host can wait for them."""
    name = writer_name()
    try:
        while True:
            accepted, stored = watermarks()
            try:
                await client.hset(keys.writers, name, f"{accepted}:{stored}:{time.time_ns() // 1_000_000}")
            except REDIS_FAILURES as exc:
                logger.debug("beacon not published: %s", type(exc).__name__)
            await asyncio.sleep(BEACON_S)
    finally:
        # Best effort: a beacon left behind ages out (_STALE_S).
        with contextlib.suppress(asyncio.CancelledError, *REDIS_FAILURES):
            await asyncio.shield(client.hdel(keys.writers, name))
