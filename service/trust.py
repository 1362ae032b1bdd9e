"""Decisions come only from a Redis this deployment has verified against PostgreSQL.

Redis can come back older than the one that answered: a restart that loads an RDB
snapshot, a failover to a replica that lagged, a restored backup, an AOF ``everysec`` after
a crash. Each is a different redis-server process with its own ``run_id``. The run id of the
Redis the deployment last verified is kept in that Redis (``Keyspace.verified``; on a
cluster, one mark per primary, in a slot it serves): a snapshot, a replica or a backup
carries an earlier process's run id there, never its own.

Every connection the service opens to Redis is admitted only if the Redis's run id is
that mark (on one Redis, ``INFO server`` and ``GET`` in one write; on a cluster primary, a
second round trip names its mark); otherwise it is refused (its callers answer 503) and a
verification starts (service/verify.py). On one Redis a watch also compares them every
second over connections that survive (the mark deleted, a FLUSHALL), stopping issuing at
once when they differ. No request pays a round trip for this.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from .failures import REDIS_FAILURES
from .keys import Keyspace, tag_for_slot
from .metrics import counted
from .redis_link import pack_command
from .tasks import cancel_all

logger = logging.getLogger(__name__)

WATCH_INTERVAL_S = 1.0
# After a failed verification (PostgreSQL down, buffers not drained), the next one starts
# no sooner than this: every refused connection asks for one.
RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class Target:
    """One Redis that decides: the single Redis, or one cluster primary."""

    name: str  # "redis", or the primary's host:port (as RedisLink.shard names it)
    mark: str  # the key holding the run id last verified
    lock: str  # held while one process verifies it
    run_id: str


Verify = Callable[[Target], Awaitable[None]]


class Unverified(RedisConnectionError):
    """The Redis answering is not the one this deployment verified; it decides nothing yet."""


def run_id_of(info: str) -> str:
    for line in info.splitlines():
        if line.startswith("run_id:"):
            return line.split(":", 1)[1].strip()
    raise RedisError("INFO server has no run_id")


def _pack(*commands: tuple[str, ...]) -> bytes:
    return b"".join(pack_command(command) for command in commands)


def _first_own_slot(myid: str, slots: list[Any]) -> int | None:
    """The lowest slot a cluster node serves as primary (CLUSTER SLOTS), or None."""
    own = [int(entry[0]) for entry in slots if len(entry) > 2 and str(entry[2][2]) == myid]
    return min(own, default=None)


class Trust:
    """This worker's gate on Redis connections, and its trigger for verifications."""

    def __init__(self, keys: Keyspace, *, cluster: bool = False) -> None:
        self._keys = keys
        self._cluster = cluster
        self._identity = _pack(("INFO", "server"), ("GET", keys.verified))
        self._node_identity = _pack(("INFO", "server"), ("CLUSTER", "MYID"), ("CLUSTER", "SLOTS"))
        self.verify: Verify | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._failed_at: dict[str, float] = {}
        # Set while the watch finds a Redis whose mark is not its run id (connections that
        # survived a FLUSHALL, say); issuing answers 503 while it is set (one Redis only).
        self.refusal: str | None = None
        # Cluster primaries not verified yet, by name: their events answer 503. A cluster's
        # connections are admitted whatever they find (the client discovers its slot map
        # over them), and decisions check this instead (RedisDecisions asks ``admit_shard``).
        self.untrusted: dict[str, str] = {}
        self._pending: dict[str, Target] = {}

    async def admit(self, connection: AbstractConnection) -> None:
        """redis-py's connect hook: the usual handshake, then the identity check."""
        await connection.on_connect()
        target, mark = await (self._node(connection) if self._cluster else self._single(connection))
        if target is not None and not self._trusted(target, mark):
            raise Unverified(
                f"Redis {target.name} ({target.run_id[:12]}) is being verified against PostgreSQL"
            )

    async def _single(self, connection: AbstractConnection) -> tuple[Target, str | None]:
        await connection.send_packed_command(self._identity, check_health=False)
        info = await connection.read_response()
        mark = await connection.read_response()
        target = Target("redis", self._keys.verified, self._keys.verify_lock, run_id_of(str(info)))
        return target, None if mark is None else str(mark)

    async def _node(self, connection: AbstractConnection) -> tuple[Target | None, str | None]:
        await connection.send_packed_command(self._node_identity, check_health=False)
        info = await connection.read_response()
        myid = await connection.read_response()
        slots = await connection.read_response()
        slot = _first_own_slot(str(myid), slots if isinstance(slots, list) else [])
        if slot is None:
            return None, None  # serves no slot: it decides nothing (a MOVED sends us on)
        mark_key, lock_key = self._keys.verified_on(tag_for_slot(slot))
        await connection.send_packed_command(_pack(("GET", mark_key)), check_health=False)
        mark = await connection.read_response()
        name = f"{getattr(connection, 'host', '?')}:{getattr(connection, 'port', '?')}"
        return Target(name, mark_key, lock_key, run_id_of(str(info))), None if mark is None else str(mark)

    def _trusted(self, target: Target, mark: str | None) -> bool:
        if mark == target.run_id:
            if self._cluster:
                self.untrusted.pop(target.name, None)
            else:
                self.refusal = None
            return True
        refusal = (
            f"Redis {target.name} ({target.run_id[:12]}) is being verified against PostgreSQL; retry shortly"
        )
        if self._cluster:
            self.untrusted[target.name] = refusal
            self._pending[target.name] = target
        else:
            self.refusal = refusal
        self.start_verification(target)
        return self._cluster  # a cluster connection is admitted; its decisions are not

    def admit_shard(self, shard: str) -> None:
        refusal = self.untrusted.get(shard)
        if refusal is not None:
            # A verification that failed is tried again, no more than once a second.
            self.start_verification(self._pending[shard])
            raise Unverified(refusal)

    def start_verification(self, target: Target) -> None:
        task = self._tasks.get(target.name)
        if self.verify is None or (task is not None and not task.done()):
            return
        if time.monotonic() - self._failed_at.get(target.name, -RETRY_S) < RETRY_S:
            return
        self._tasks[target.name] = asyncio.get_running_loop().create_task(
            self._verify(target), name=f"verify-redis-{target.name}"
        )

    async def _verify(self, target: Target) -> None:
        assert self.verify is not None
        try:
            await self.verify(target)
            # Verified, here or by another process.
            if self._cluster:
                self.untrusted.pop(target.name, None)
            else:
                self.refusal = None
        except Exception as exc:  # noqa: BLE001 - any failure: issuing stays stopped, the next try soon
            self._failed_at[target.name] = time.monotonic()
            counted.verifications.labels("failed").inc()
            logger.error(
                "verification of Redis %s (%s) failed (%s: %s); retrying",
                target.name,
                target.run_id[:12],
                type(exc).__name__,
                exc,
            )

    async def watch(self, client: Redis) -> None:
        """Every second (one Redis): is it still the verified one?"""
        while True:
            try:
                async with client.pipeline(transaction=False) as pipe:
                    pipe.info("server")
                    pipe.get(self._keys.verified)
                    info, mark = await pipe.execute()
                target = Target("redis", self._keys.verified, self._keys.verify_lock, str(info["run_id"]))
                self._trusted(target, mark)
            except REDIS_FAILURES as exc:
                logger.debug("Redis identity not read: %s", type(exc).__name__)
            await asyncio.sleep(WATCH_INTERVAL_S)

    async def close(self) -> None:
        await cancel_all(self._tasks.values())
