"""A Redis that may evict keys is not one the service decides on.

Every event key carries a TTL, so under a ``volatile-*`` policy (or any ``allkeys-*``) a
full Redis drops an event's record of who was served, and users are served twice. The
policy is read through ``INFO memory`` (managed Redis often disables ``CONFIG``) on every
Redis that decides: at start (a refusal to start), in ``/ready`` and periodically (issuing
answers 503 while it is unsafe). REDIS_ALLOW_EVICTION lets an operator accept the risk
explicitly; the service then says so at every start.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import redis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from .failures import REDIS_FAILURES
from .metrics import counted

logger = logging.getLogger(__name__)

SAFE_POLICY = "noeviction"
CHECK_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class MemoryReport:
    """What one Redis (or one cluster primary) says of its memory."""

    node: str
    policy: str
    evicted_keys: int

    @property
    def safe(self) -> bool:
        return self.policy == SAFE_POLICY


def refusal(report: MemoryReport) -> str:
    return (
        f"Redis {report.node} may evict keys (maxmemory-policy {report.policy}): coupons could be "
        f"lost or served twice. Set maxmemory-policy {SAFE_POLICY} (redis.conf, or CONFIG SET "
        "maxmemory-policy noeviction), or set REDIS_ALLOW_EVICTION=true to accept that risk"
    )


def _report(node: str, info: dict[str, object]) -> MemoryReport:
    return MemoryReport(
        node, str(info.get("maxmemory_policy", "unknown")), int(str(info.get("evicted_keys", 0)))
    )


def _per_node(replies: dict[str, object]) -> list[MemoryReport]:
    # A cluster's reply is keyed by node, unless one node answered: then it is that reply.
    if "maxmemory_policy" in replies:
        return [_report("primary", replies)]
    return [_report(str(node), info) for node, info in replies.items() if isinstance(info, dict)]


async def read(client: Redis | RedisCluster) -> list[MemoryReport]:
    """The memory policy and evictions of every Redis that decides (each cluster primary)."""
    if isinstance(client, RedisCluster):
        return _per_node(await client.info("memory", "stats", target_nodes=RedisCluster.PRIMARIES))
    return [_report("redis", await client.info("memory", "stats"))]


def read_blocking(client: redis.Redis | redis.RedisCluster) -> list[MemoryReport]:
    """The same, for the start-up check in the main process (no event loop yet)."""
    if isinstance(client, redis.RedisCluster):
        return _per_node(client.info("memory", "stats", target_nodes=redis.RedisCluster.PRIMARIES))
    kwargs = client.get_connection_kwargs()
    node = f"at {kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
    return [_report(node, client.info("memory", "stats"))]


class EvictionWatch:
    """This worker's view of whether its Redis may evict, refreshed every second."""

    def __init__(self, client: Redis | RedisCluster, *, allowed: bool) -> None:
        self._client = client
        self._allowed = allowed
        # Until the first reading, trust what the start-up check found.
        self.unsafe: str | None = None
        self._evicted: dict[str, int] = {}

    async def check(self) -> None:
        reports = await read(self._client)
        unsafe = [report for report in reports if not report.safe]
        counted.redis_unsafe.set(1 if unsafe else 0)
        counted.redis_evicted_keys.set(sum(report.evicted_keys for report in reports))
        for report in reports:
            before = self._evicted.get(report.node)
            if before is not None and report.evicted_keys > before:
                logger.error(
                    "Redis %s evicted %d keys: events may have lost state",
                    report.node,
                    report.evicted_keys - before,
                )
            self._evicted[report.node] = report.evicted_keys
        message = None if self._allowed or not unsafe else refusal(unsafe[0])
        if message and message != self.unsafe:
            logger.error("issuing stops: %s", message)
        elif self.unsafe and not message:
            logger.warning("Redis no longer evicts keys; issuing resumes")
        self.unsafe = message

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except REDIS_FAILURES as exc:
                logger.debug("eviction policy not read: %s", type(exc).__name__)
            await asyncio.sleep(CHECK_INTERVAL_S)
