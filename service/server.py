"""`coupon-service`: serves the API with WORKERS processes on HOST:PORT."""

from __future__ import annotations

import asyncio
import atexit
import sys
from functools import partial

import asyncpg
import redis
import redis.cluster
from sanic import Sanic
from sanic.worker.loader import AppLoader

from . import eviction, manager_signals
from .app import create_app
from .config import ConfigError, Settings
from .draining import DrainingHttpProtocol
from .failures import POSTGRES_FAILURES, REDIS_FAILURES
from .keys import stored_namespace
from .metrics import exposition

# PostgreSQL failed, or the database is not migrated (no deployment row).
_NAMESPACE_UNREADABLE: tuple[type[BaseException], ...] = (*POSTGRES_FAILURES, LookupError)


def main() -> None:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"coupon-service: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    namespace = _namespace(settings)
    _refuse_evicting_redis(settings)
    made = exposition.prepare_directory()  # before the workers spawn: they inherit the variable
    atexit.register(exposition.remove_directory, made)
    loader = AppLoader(factory=partial(create_app, settings, namespace))
    app = loader.load()
    app.prepare(
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        access_log=False,
        motd=False,
        backlog=4096,
        protocol=DrainingHttpProtocol,
    )
    manager_signals.install()
    Sanic.serve(primary=app, app_loader=loader)


def _namespace(settings: Settings) -> str:
    """The deployment's Redis namespace: REDIS_KEY_PREFIX, or the one the database holds."""
    if settings.redis_key_prefix:
        return settings.redis_key_prefix

    async def read() -> str:
        conn = await asyncpg.connect(settings.database_url, timeout=10)
        try:
            return await stored_namespace(conn)
        finally:
            await conn.close()

    try:
        return asyncio.run(read())
    except _NAMESPACE_UNREADABLE as exc:
        _stop(
            f"cannot read the deployment's Redis namespace from DATABASE_URL ({type(exc).__name__}: {exc});"
            " start PostgreSQL and run `couponctl migrate`, or pin one with REDIS_KEY_PREFIX"
        )
        raise AssertionError("unreachable") from None


def _refuse_evicting_redis(settings: Settings) -> None:
    """Stop the start on a Redis that may evict keys, unless REDIS_ALLOW_EVICTION says otherwise.

    A Redis that cannot be reached now is not refused: the workers check it again every
    second and answer 503 while it is unsafe.
    """
    client: redis.Redis | redis.RedisCluster
    try:
        if settings.redis_cluster:
            seeds = [redis.cluster.ClusterNode(h, p) for h, p in settings.redis_cluster_nodes]
            client = redis.RedisCluster(
                startup_nodes=seeds,
                socket_timeout=5,
                socket_connect_timeout=5,
            )
        else:
            client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        reports = eviction.read_blocking(client)
        client.close()
    except REDIS_FAILURES as exc:
        print(f"coupon-service: Redis not checked at start ({type(exc).__name__}); workers check it later")
        return
    for report in reports:
        if report.safe:
            continue
        if not settings.redis_allow_eviction:
            _stop(f"REDIS_ALLOW_EVICTION is not set and {eviction.refusal(report)}")
        print(
            f"coupon-service: WARNING: REDIS_ALLOW_EVICTION=true: Redis {report.node} runs with "
            f"maxmemory-policy {report.policy}; evicted event keys can cost coupons served twice",
            file=sys.stderr,
        )


def _stop(message: str) -> None:
    print(f"coupon-service: {message}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    main()
