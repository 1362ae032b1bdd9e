"""Builds the Sanic app and wires each worker's parts together at start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from functools import partial
from types import SimpleNamespace

import asyncpg
from redis.asyncio import Redis
from sanic import Sanic
from sanic.config import Config

from batcher import Buffer, Writer
from batcher import create_pool as create_writer_pool
from batcher.sink import Refusal

from . import instrument, logs, metrics, store
from .admin import admin
from .auth import TokenVerifier
from .breaker import CircuitBreaker
from .config import Settings
from .decision import EventStore, connect, connect_cluster
from .directory import EventDirectory
from .draining import close_idle_connections
from .eviction import EvictionWatch
from .http import handle
from .issuing import Issuer, SoldOutFlags
from .keys import Keyspace
from .lifecycle import Lifecycle, SuspectEvents
from .reconcile import run_periodically
from .routes import public
from .trust import Trust
from .verify import Verifier, publish_periodically
from .workers import WorkerBoard, replace_failed_siblings, shared_objects

logger = logging.getLogger(__name__)

App = Sanic[Config, SimpleNamespace]
APP_NAME = "coupon_service"
# Connections beyond the issue path's: admin operations, reads, reconcile.
_EXTRA_REDIS_CONNECTIONS = 8
_PG_POOL_MAX = 8
_GUARD_REDIS_CONNECTIONS = 4


def create_app(settings: Settings, namespace: str) -> App:
    """``namespace``: the deployment's Redis namespace, resolved once by the main process."""
    logs.configure(settings.log_level, settings.log_format)  # in every process: workers spawn
    app = Sanic(APP_NAME, configure_logging=False)
    app.config.update(
        REQUEST_MAX_SIZE=settings.request_max_bytes,
        GRACEFUL_SHUTDOWN_TIMEOUT=settings.graceful_timeout_s,
        ACCESS_LOG=False,
        NOISY_EXCEPTIONS=False,
        FALLBACK_ERROR_FORMAT="json",
    )
    app.ctx.settings = settings
    app.ctx.verifier = (
        TokenVerifier(secret=settings.auth_jwt_secret, public_key=settings.auth_jwt_public_key)
        if settings.auth_jwt_secret or settings.auth_jwt_public_key
        else None
    )
    app.blueprint(public)
    app.blueprint(admin)
    app.error_handler.add(Exception, handle)
    instrument.access_log_enabled = settings.access_log

    @app.main_process_start
    async def share(app: App) -> None:
        for name, value in shared_objects().items():
            setattr(app.shared_ctx, name, value)

    @app.before_server_start
    async def start_worker(app: App) -> None:
        await _start_worker(app, settings, namespace)

    @app.before_server_stop
    async def stop_accepting(app: App) -> None:
        app.ctx.closer = asyncio.get_running_loop().create_task(close_idle_connections(), name="close-idle")

    @app.after_server_stop
    async def stop_worker(app: App) -> None:
        # Sanic may run this listener a second time if a signal interrupts the first run
        # (uvloop); both runs wait for the one drain.
        if getattr(app.ctx, "stopping", None) is None:
            app.ctx.stopping = asyncio.get_running_loop().create_task(_stop_worker(app, settings))
        await asyncio.shield(app.ctx.stopping)

    return app


async def _start_worker(app: App, settings: Settings, namespace: str) -> None:
    ctx = app.ctx
    shared = app.shared_ctx
    ctx.board = WorkerBoard(shared.board_cells, shared.board_lock, shared.board_epoch)
    ctx.board.claim(os.getpid())
    # min_size=0: the worker starts even while PostgreSQL is down; issuing does not need it.
    ctx.pool = await asyncpg.create_pool(
        settings.database_url, min_size=0, max_size=_PG_POOL_MAX, command_timeout=60
    )
    connections = settings.issue_inflight_max + _EXTRA_REDIS_CONNECTIONS
    timeout_s = settings.redis_timeout_s
    keys = Keyspace(namespace)
    ctx.trust = Trust(keys, cluster=settings.redis_cluster)
    ctx.redis = (
        connect_cluster(
            settings.redis_cluster_nodes,
            max_connections=connections,
            timeout_s=timeout_s,
            on_connect=ctx.trust.admit,
        )
        if settings.redis_cluster
        else connect(
            settings.redis_url, max_connections=connections, timeout_s=timeout_s, on_connect=ctx.trust.admit
        )
    )
    ctx.events = EventStore(
        ctx.redis,
        keys,
        other_calls=_EXTRA_REDIS_CONNECTIONS,
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
        issue_lane=settings.issue_inflight_max,
        admit=ctx.trust.admit_shard if settings.redis_cluster else None,
    )
    # Connections the trust gate does not check: the verification of a Redis, the watch of
    # its identity and the writers' beacons must reach a Redis not yet verified. One retry:
    # a connection left from before a restart fails once, and all they send is idempotent.
    guard_timeout_s = max(timeout_s, 1.0)
    ctx.guard_redis = (
        connect_cluster(
            settings.redis_cluster_nodes,
            max_connections=_GUARD_REDIS_CONNECTIONS,
            timeout_s=guard_timeout_s,
            retries=1,
        )
        if settings.redis_cluster
        else connect(
            settings.redis_url, max_connections=_GUARD_REDIS_CONNECTIONS, timeout_s=guard_timeout_s, retries=1
        )
    )
    guard_events = EventStore(ctx.guard_redis, keys)
    ctx.trust.verify = Verifier(
        ctx.pool,
        guard_events,
        Lifecycle(ctx.pool, guard_events, ctx.board, settings),
        ctx.board,
        timeout_s=settings.sync_timeout_s,
    )
    try:
        await ctx.events.load_scripts()
        await ctx.events.warm()
    except Exception as exc:  # noqa: BLE001 - NOSCRIPT recovery loads them later
        logger.warning("scripts not loaded at start (%s); they load on first use", type(exc).__name__)
    ctx.eviction = EvictionWatch(ctx.redis, allowed=settings.redis_allow_eviction)
    ctx.buffer = Buffer(settings.buffer_max_rows, on_change=partial(_buffer_changed, ctx.board))
    metrics.tally.gauge(metrics.buffer_rows, lambda: ctx.buffer.accepted - ctx.buffer.stored)
    ctx.writer_pool = await create_writer_pool(settings.database_url)
    ctx.writer = Writer(
        ctx.writer_pool,
        ctx.buffer,
        flush_batch_rows=settings.flush_batch_rows,
        flush_interval_s=settings.flush_interval_s,
        retry_max_s=settings.flush_retry_max_s,
        on_flush=_flushed,
        on_failure=metrics.flush_failures.inc,
        on_refused=lambda refusals: _refused(ctx, refusals),
    )
    ctx.writer.start()
    ctx.directory = EventDirectory(
        lambda event_id: store.event_status(ctx.pool, event_id),
        ttl_s=max(settings.sold_out_cache_s, 0.1),
        epoch=lambda: ctx.board.epoch,
    )
    ctx.issuer = Issuer(
        ctx.events,
        ctx.buffer,
        ctx.writer,
        ctx.directory,
        ctx.eviction,
        ctx.trust,
        lambda event_id: ctx.suspects.verify(event_id, "its Redis keys are not whole"),
        SoldOutFlags(settings.sold_out_cache_s, lambda: ctx.board.epoch),
        partial(
            CircuitBreaker,
            failures_to_open=settings.redis_breaker_failures,
            open_s=settings.redis_breaker_open_ms / 1000,
        ),
        max_batch=settings.issue_batch_max,
        max_inflight=settings.issue_inflight_max,
        # Less a clock-skew allowance between this host and Redis's (a tenth, ≤ 50 ms).
        decide_within_s=settings.redis_timeout_s - min(0.05, settings.redis_timeout_s / 10),
    )
    ctx.lifecycle = Lifecycle(ctx.pool, ctx.events, ctx.board, settings)
    ctx.suspects = SuspectEvents(ctx.lifecycle)
    multiplexer = getattr(app, "multiplexer", None)
    ctx.supervisor = (
        asyncio.get_running_loop().create_task(replace_failed_siblings(multiplexer), name="supervise")
        if multiplexer is not None
        else None
    )
    loop = asyncio.get_running_loop()
    ctx.sampler = loop.create_task(metrics.sample_process(), name="sample-process")
    ctx.tally = loop.create_task(metrics.tally.flush_periodically(), name="metrics-tally")
    ctx.eviction_task = loop.create_task(ctx.eviction.run(), name="eviction-watch")
    # The watch of surviving connections is for one Redis: a cluster's failover always
    # means new connections, each admitted by the gate.
    ctx.trust_task = (
        loop.create_task(ctx.trust.watch(ctx.guard_redis), name="trust-watch")
        if isinstance(ctx.guard_redis, Redis)
        else None
    )
    ctx.beacon = loop.create_task(
        publish_periodically(ctx.guard_redis, keys, lambda: (ctx.buffer.accepted, ctx.buffer.stored)),
        name="writer-beacon",
    )
    ctx.reconciler = loop.create_task(
        run_periodically(
            ctx.pool,
            ctx.events,
            ctx.lifecycle,
            interval_s=settings.reconcile_interval_s,
            min_age_s=settings.reconcile_min_age_s,
        ),
        name="reconcile",
    )


async def _stop_worker(app: App, settings: Settings) -> None:
    """After in-flight requests are answered: store every buffered row, then close."""
    ctx = app.ctx
    tasks = (
        ctx.reconciler,
        ctx.supervisor,
        ctx.sampler,
        ctx.tally,
        ctx.eviction_task,
        ctx.trust_task,
        getattr(ctx, "closer", None),
    )
    for task in tasks:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    await ctx.issuer.coalescer.close()
    await ctx.writer.close(settings.graceful_timeout_s)
    # The beacon goes last: a verification elsewhere waits for this buffer while it drains.
    ctx.beacon.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ctx.beacon
    await ctx.trust.close()
    await ctx.suspects.close()
    ctx.board.release()
    await ctx.events.close()
    await ctx.redis.aclose()
    await ctx.guard_redis.aclose()
    await ctx.writer_pool.close()
    await ctx.pool.close()
    metrics.tally.flush()
    metrics.mark_dead(os.getpid())


def _refused(ctx: SimpleNamespace, refusals: Sequence[Refusal]) -> None:
    """PostgreSQL would not store some issues: Redis and PostgreSQL disagree about those
    events, so each is put on hold and verified (kept on hold if it cannot be squared)."""
    metrics.count_refused(refusals)
    for refusal in refusals:
        if refusal.reason != "unknown_event":
            ctx.suspects.verify(
                refusal.event_id, f"PostgreSQL refused {refusal.rows} rows ({refusal.reason})"
            )


def _buffer_changed(board: WorkerBoard, accepted: int, stored: int) -> None:
    board.publish(accepted, stored)


def _flushed(rows: int, seconds: float) -> None:
    metrics.rows_written.inc(rows)
    metrics.flush_duration.observe(seconds)
