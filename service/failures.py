"""Which exceptions mean Redis or PostgreSQL failed, and the service error they become.

Callers catch these tuples, never a driver's exceptions of their own choosing, and the HTTP
layer turns them into one answer (``unavailable``): a dependency that cannot answer now is a
503 the client may retry, anything else is a bug (500, logged with its trace).
"""

from __future__ import annotations

import asyncpg
from redis.exceptions import LockError, RedisClusterException, RedisError

from batcher.sink import POSTGRES_FAILURES

from .errors import Unavailable

# Any failure of a Redis command: the server, the connection, the cluster's routing, or the
# bound on the call (every Redis call is bounded by REDIS_TIMEOUT_MS).
REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError, TimeoutError)

# Releasing a Redis lock: it lapsed (another holder may have it now) or Redis failed.
LOCK_RELEASE_FAILURES: tuple[type[BaseException], ...] = (LockError, *REDIS_FAILURES)

# PostgreSQL cannot answer now (down, restarting, shutting down, unreachable or too slow), as
# opposed to a query it refused, which is a bug.
POSTGRES_UNREACHABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)

# What a loop that must outlive any failure of either catches and retries.
DEPENDENCY_FAILURES: tuple[type[BaseException], ...] = REDIS_FAILURES + POSTGRES_FAILURES

__all__ = [
    "DEPENDENCY_FAILURES",
    "POSTGRES_FAILURES",
    "POSTGRES_UNREACHABLE",
    "REDIS_FAILURES",
    "unavailable",
]


def unavailable(exc: BaseException) -> Unavailable | None:
    """The 503 a dependency failure becomes, or None when ``exc`` is not one."""
    if isinstance(exc, REDIS_FAILURES + POSTGRES_UNREACHABLE):
        return Unavailable()
    return None
