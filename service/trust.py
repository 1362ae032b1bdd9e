"""Decisions come only from a Redis this deployment has verified against PostgreSQL.

Redis can come back older than the one that answered: a restart that loads an RDB
snapshot, a failover to a replica that lagged, a restored backup, an AOF ``everysec`` after
a crash. Each is a new redis-server process with a new ``run_id``. The run id of the Redis
the deployment last verified is kept in that Redis (``Keyspace.verified``): a snapshot, a
replica or a backup carries an earlier process's run id there, never its own.

Every connection the service opens to Redis is admitted only if the Redis's run id is
that mark (one round trip per connection: ``INFO server`` and ``GET`` in one write);
otherwise it is refused (its callers answer 503) and a verification starts
(service/verify.py). A watch also compares them every second over connections that
survive (the mark deleted, a FLUSHALL), stopping issuing at once when they differ. No
request pays a round trip for this.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from . import metrics
from .keys import Keyspace

logger = logging.getLogger(__name__)

WATCH_INTERVAL_S = 1.0
# After a failed verification (PostgreSQL down, buffers not drained), the next one starts
# no sooner than this: every refused connection asks for one.
RETRY_S = 1.0

Verify = Callable[[str], Awaitable[None]]


class Unverified(RedisConnectionError):
    """The Redis answering is not the one this deployment verified; it decides nothing yet."""


def run_id_of(info: str) -> str:
    for line in info.splitlines():
        if line.startswith("run_id:"):
            return line.split(":", 1)[1].strip()
    raise RedisError("INFO server has no run_id")


class Trust:
    """This worker's gate on Redis connections, and its trigger for verifications."""

    def __init__(self, keys: Keyspace) -> None:
        self._keys = keys
        info: tuple[str, ...] = ("INFO", "server")
        mark: tuple[str, ...] = ("GET", keys.verified)
        self._identity_command = hiredis.pack_command(info) + hiredis.pack_command(mark)  # type: ignore[arg-type]
        self.verify: Verify | None = None
        self._task: asyncio.Task[None] | None = None
        self._failed_at = 0.0
        # Set while the watch finds a Redis whose mark is not its run id (connections that
        # survived a FLUSHALL, say); issuing answers 503 while it is set.
        self.refusal: str | None = None
        self.run_id: str | None = None

    async def admit(self, connection: AbstractConnection) -> None:
        """redis-py's connect hook: the usual handshake, then the identity check."""
        await connection.on_connect()
        await connection.send_packed_command(self._identity_command, check_health=False)
        info = await connection.read_response()
        mark = await connection.read_response()
        run_id = run_id_of(str(info))
        if not self._trusted(run_id, None if mark is None else str(mark)):
            raise Unverified(f"Redis {run_id[:12]} is being verified against PostgreSQL")

    def _trusted(self, run_id: str, mark: str | None) -> bool:
        if mark == run_id:
            if self.run_id != run_id:
                self.run_id = run_id
            self.refusal = None
            return True
        self.refusal = f"Redis {run_id[:12]} is being verified against PostgreSQL; retry shortly"
        self.start_verification(run_id)
        return False

    def start_verification(self, run_id: str) -> None:
        if self.verify is None or (self._task is not None and not self._task.done()):
            return
        if time.monotonic() - self._failed_at < RETRY_S:
            return
        self._task = asyncio.get_running_loop().create_task(self._verify(run_id), name="verify-redis")

    async def _verify(self, run_id: str) -> None:
        assert self.verify is not None
        try:
            await self.verify(run_id)
            self.refusal = None  # verified, here or by another process
        except Exception as exc:  # noqa: BLE001 - any failure: issuing stays stopped, the next try soon
            self._failed_at = time.monotonic()
            metrics.verifications.labels("failed").inc()
            logger.error(
                "verification of Redis %s failed (%s: %s); retrying", run_id[:12], type(exc).__name__, exc
            )

    async def watch(self, client: Redis) -> None:
        """Every second: is the Redis still the verified one?"""
        while True:
            try:
                async with client.pipeline(transaction=False) as pipe:
                    pipe.info("server")
                    pipe.get(self._keys.verified)
                    info, mark = await pipe.execute()
                self._trusted(str(info["run_id"]), mark)
            except (RedisError, OSError, TimeoutError) as exc:
                logger.debug("Redis identity not read: %s", type(exc).__name__)
            await asyncio.sleep(WATCH_INTERVAL_S)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
