"""One worker's running parts: started in order, stopped in the reverse order.

Start-up and tear-down are written together: each part registers its own close on an
``AsyncExitStack`` right after it starts, so the stop order is the start order reversed by
construction, and a start that fails half-way closes what it had started. What the stop
must respect falls out of the start order: the periodic tasks stop first; the coalescer
waits for the decisions in flight, then the writer drains the buffer; the beacon that tells
other hosts about that buffer stops only after the drain; connections close last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import asyncpg
from redis.asyncio import Redis
from sanic import Request

from batcher import Buffer, Writer
from batcher import create_pool as create_writer_pool
from batcher.sink import Refusal

from . import store
from .auth import TokenVerifier
from .breaker import CircuitBreaker
from .config import Settings
from .directory import EventDirectory
from .eviction import EvictionWatch
from .issuing import Issuer, SoldOutFlags
from .keys import Keyspace
from .lifecycle import Lifecycle, SuspectEvents
from .metrics import counted, exposition
from .metrics.tally import tally
from .reconcile import PostgresStore, Reconciler
from .redis_decisions import RedisDecisions
from .redis_events import RedisEvents
from .redis_link import Client, RedisLink, connect, connect_cluster
from .tasks import cancel_and_wait
from .trust import Trust
from .verify import Verifier, publish_periodically
from .workers import WorkerBoard, replace_failed_siblings

logger = logging.getLogger(__name__)

# Connections beyond the issue path's: admin operations, reads, reconcile.
_EXTRA_REDIS_CONNECTIONS = 8
_PG_POOL_MAX = 8
_GUARD_REDIS_CONNECTIONS = 4


@dataclass
class Worker:
    """What a route may use of its worker."""

    settings: Settings
    verifier: TokenVerifier | None  # user authentication, when configured
    board: WorkerBoard
    pool: asyncpg.Pool
    redis: RedisLink
    events: RedisEvents
    directory: EventDirectory  # events as PostgreSQL holds them, cached briefly
    trust: Trust
    eviction: EvictionWatch
    issuer: Issuer
    lifecycle: Lifecycle


def worker_of(request: Request) -> Worker:
    worker: Worker = request.app.ctx.worker
    return worker


@contextlib.asynccontextmanager
async def running(
    settings: Settings, namespace: str, verifier: TokenVerifier | None, shared: Any, multiplexer: Any
) -> AsyncIterator[Worker]:
    """Start a worker's parts (``shared``: Sanic's shared context; ``multiplexer``: its
    worker manager, or None outside Sanic's manager) and stop them on exit."""
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(exposition.mark_dead, os.getpid())
        stack.callback(tally.flush)
        # min_size=0: the worker starts even while PostgreSQL is down; issuing does not need it.
        pool = await asyncpg.create_pool(
            settings.database_url, min_size=0, max_size=_PG_POOL_MAX, command_timeout=60
        )
        stack.push_async_callback(pool.close)
        writer_pool = await create_writer_pool(settings.database_url)
        stack.push_async_callback(writer_pool.close)
        board = WorkerBoard(shared.board_cells, shared.board_lock, shared.board_epoch)
        board.claim(os.getpid())
        stack.callback(board.release)

        keys = Keyspace(namespace)
        trust = Trust(keys, cluster=settings.redis_cluster)
        redis = _decisions_client(settings, trust)
        stack.push_async_callback(redis.aclose)
        link = RedisLink(redis)
        events = RedisEvents(link, keys, other_calls=_EXTRA_REDIS_CONNECTIONS, read_lane=True)
        stack.push_async_callback(events.close)
        decisions = RedisDecisions(
            link,
            keys,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
            issue_lane=settings.issue_inflight_max,
            admit=trust.admit_shard if settings.redis_cluster else None,
        )
        stack.push_async_callback(decisions.close)
        # Connections the trust gate does not check: the verification of a Redis, the watch
        # of its identity and the writers' beacons must reach a Redis not yet verified. One
        # retry: a connection left from before a restart fails once, and all they send is
        # idempotent.
        guard_redis = _guard_client(settings)
        stack.push_async_callback(guard_redis.aclose)
        guard_events = RedisEvents(RedisLink(guard_redis), keys)
        trust.verify = Verifier(
            pool,
            guard_events,
            Lifecycle(pool, guard_events, board, settings),
            board,
            timeout_s=settings.sync_timeout_s,
        )
        stack.push_async_callback(trust.close)
        try:
            await link.load_scripts()
            await decisions.warm()
            await events.warm()
        except Exception as exc:  # noqa: BLE001 - NOSCRIPT recovery loads them later
            logger.warning("scripts not loaded at start (%s); they load on first use", type(exc).__name__)

        eviction = EvictionWatch(redis, allowed=settings.redis_allow_eviction)
        buffer = Buffer(settings.buffer_max_rows, on_change=board.publish)
        tally.gauge(counted.buffer_rows, lambda: buffer.accepted - buffer.stored)
        # Before the writer, so it stops after the writer has drained: a verification
        # elsewhere waits for this buffer while it drains.
        _task(
            stack,
            publish_periodically(guard_redis, keys, lambda: (buffer.accepted, buffer.stored)),
            "writer-beacon",
        )
        lifecycle = Lifecycle(pool, events, board, settings)
        suspects = SuspectEvents(lifecycle)
        writer = Writer(
            writer_pool,
            buffer,
            flush_batch_rows=settings.flush_batch_rows,
            flush_interval_s=settings.flush_interval_s,
            retry_max_s=settings.flush_retry_max_s,
            on_flush=_flushed,
            on_failure=counted.flush_failures.inc,
            on_refused=partial(_refused, suspects),
        )
        writer.start()
        stack.push_async_callback(writer.close, settings.graceful_timeout_s)
        stack.push_async_callback(suspects.close)
        directory = EventDirectory(
            lambda event_id: store.event(pool, event_id),
            ttl_s=settings.event_cache_s,
            epoch=lambda: board.epoch,
        )
        issuer = Issuer(
            decisions,
            buffer,
            writer,
            directory,
            eviction,
            trust,
            lambda event_id: suspects.verify(event_id, "its Redis keys are not whole"),
            SoldOutFlags(settings.sold_out_cache_s, lambda: board.epoch),
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
        stack.push_async_callback(issuer.coalescer.close)

        if multiplexer is not None:
            _task(stack, replace_failed_siblings(multiplexer), "supervise")
        _task(stack, exposition.sample_process(), "sample-process")
        _task(stack, tally.flush_periodically(), "metrics-tally")
        _task(stack, eviction.run(), "eviction-watch")
        if isinstance(guard_redis, Redis):
            # One Redis only: a cluster's failover always means new connections, each
            # admitted by the gate.
            _task(stack, trust.watch(guard_redis), "trust-watch")
        reconciler = Reconciler(PostgresStore(pool), events, lifecycle)
        _task(
            stack,
            reconciler.run(interval_s=settings.reconcile_interval_s, min_age_s=settings.reconcile_min_age_s),
            "reconcile",
        )
        yield Worker(
            settings, verifier, board, pool, link, events, directory, trust, eviction, issuer, lifecycle
        )


def _decisions_client(settings: Settings, trust: Trust) -> Client:
    connections = settings.issue_inflight_max + _EXTRA_REDIS_CONNECTIONS
    if settings.redis_cluster:
        return connect_cluster(
            settings.redis_cluster_nodes,
            max_connections=connections,
            timeout_s=settings.redis_timeout_s,
            on_connect=trust.admit,
        )
    return connect(
        settings.redis_url,
        max_connections=connections,
        timeout_s=settings.redis_timeout_s,
        on_connect=trust.admit,
    )


def _guard_client(settings: Settings) -> Client:
    timeout_s = max(settings.redis_timeout_s, 1.0)
    if settings.redis_cluster:
        return connect_cluster(
            settings.redis_cluster_nodes,
            max_connections=_GUARD_REDIS_CONNECTIONS,
            timeout_s=timeout_s,
            retries=1,
        )
    return connect(
        settings.redis_url, max_connections=_GUARD_REDIS_CONNECTIONS, timeout_s=timeout_s, retries=1
    )


def _task(stack: contextlib.AsyncExitStack, work: Coroutine[Any, Any, None], name: str) -> None:
    """Run ``work`` until the worker stops; the stop cancels it and waits for it."""
    task = asyncio.get_running_loop().create_task(work, name=name)
    stack.push_async_callback(cancel_and_wait, task)


def _refused(suspects: SuspectEvents, refusals: Sequence[Refusal]) -> None:
    """PostgreSQL would not store some issues: Redis and PostgreSQL disagree about those
    events, so each is put on hold and verified (kept on hold if it cannot be squared)."""
    counted.count_refused(refusals)
    for refusal in refusals:
        if refusal.reason != "unknown_event":
            suspects.verify(refusal.event_id, f"PostgreSQL refused {refusal.rows} rows ({refusal.reason})")


def _flushed(rows: int, seconds: float) -> None:
    counted.rows_written.inc(rows)
    counted.flush_duration.observe(seconds)
