"""Whether this worker can serve issues now: what `GET /ready` answers and the admin live
view shows."""

from __future__ import annotations

import asyncio
import logging

from .failures import POSTGRES_FAILURES, REDIS_FAILURES
from .runtime import Worker

logger = logging.getLogger(__name__)


async def readiness(ctx: Worker, *, read_eviction: bool = True) -> dict[str, bool]:
    """Redis answers with the scripts loaded, has been verified against PostgreSQL since it
    last changed, and cannot evict keys (or an operator accepted that it may); PostgreSQL
    answers. Each check is bounded by REDIS_TIMEOUT_MS (PostgreSQL's by a second at least).

    ``read_eviction=False`` takes the eviction policy as the worker's periodic check last
    read it, rather than reading and parsing Redis's INFO again (most of this check's CPU):
    for a view polled a few times a second."""
    timeout_s = ctx.settings.redis_timeout_s
    checks = {"redis": False, "scripts": False, "verified": False, "noeviction": False, "postgres": False}
    try:
        loaded = await asyncio.wait_for(ctx.redis.scripts_loaded(), timeout_s)
        checks["redis"] = True
        if not loaded:
            await asyncio.wait_for(ctx.redis.load_scripts(), timeout_s)
        checks["scripts"] = True
        # Every Redis that decides was verified against PostgreSQL since it last changed.
        checks["verified"] = ctx.trust.refusal is None and not ctx.trust.untrusted
        if read_eviction:
            await asyncio.wait_for(ctx.eviction.check(), timeout_s)
        checks["noeviction"] = ctx.eviction.unsafe is None
    except REDIS_FAILURES as exc:
        logger.debug("not ready: Redis: %s", type(exc).__name__)
    try:
        await asyncio.wait_for(ctx.pool.fetchval("SELECT 1"), max(timeout_s, 1.0))
        checks["postgres"] = True
    except POSTGRES_FAILURES as exc:
        logger.debug("not ready: PostgreSQL: %s", type(exc).__name__)
    return checks
