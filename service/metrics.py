"""Prometheus metrics, summed across Sanic's worker processes.

prometheus-client's multiprocess mode: every worker writes its samples to memory-mapped
files in ``PROMETHEUS_MULTIPROC_DIR``, and ``/metrics`` (served by whichever worker
answers) merges them. `coupon-service` points that variable at a directory it wipes at
start, before the workers spawn (``prepare_directory``), so a worker imports this module
already in multiprocess mode. Counters of a dead worker keep counting toward the sums;
gauges of a dead worker are dropped (``mark_dead``).

Labels never hold a user id: outcomes, route names, status codes, and for the per-event
gauges the ids of at most ``MAX_EVENTS`` open events.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import gc
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.values import MultiProcessValue, MutexValue

ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
MAX_EVENTS = 50

# Sub-millisecond buckets: a decision normally takes a few hundred microseconds.
_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
_FLUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _cache_process_id() -> None:
    """Multiprocess samples are filed by process id, which prometheus-client reads with
    ``os.getpid()`` on every increment: a system call, several per request (py-spy put it
    at 7% of a worker's time under ``make bench``). The id is read once here and again
    after a fork, which is the only way it changes."""
    pid = os.getpid()

    def after_fork() -> None:
        nonlocal pid
        pid = os.getpid()

    os.register_at_fork(after_in_child=after_fork)
    if values.ValueClass is not MutexValue:  # multiprocess mode: chosen before any metric
        values.ValueClass = MultiProcessValue(process_identifier=lambda: pid)  # type: ignore[no-untyped-call]


_cache_process_id()

OUTCOMES = ("issued", "already_issued", "sold_out", "not_open", "unavailable", "invalid", "error")

issue_requests = Counter("coupon_issue_requests", "Issue requests answered, by outcome", ["outcome"])
issue_duration = Histogram(
    "coupon_issue_duration_seconds",
    "Time to answer an issue request, from its arrival to its answer",
    buckets=_LATENCY_BUCKETS,
)
http_requests = Counter(
    "coupon_http_requests", "HTTP requests answered, by route name and status", ["route", "status"]
)
decide_duration = Histogram(
    "coupon_redis_decide_duration_seconds",
    "Duration of one batched decision (one Lua call) in Redis, as the worker sees it",
    buckets=_LATENCY_BUCKETS,
)
decide_batch = Histogram(
    "coupon_redis_decide_batch_size", "Requests decided by one Lua call", buckets=_BATCH_BUCKETS
)
decide_failures = Counter("coupon_redis_decide_failures", "Batched decisions that failed (503)")
decide_unreplicated = Counter(
    "coupon_redis_unreplicated_batches",
    "Batches decided but not confirmed by REDIS_WAIT_REPLICAS replicas in time (answered 503)",
)
breaker_rejections = Counter(
    "coupon_redis_breaker_rejections", "Batches answered 503 without Redis: the shard's circuit was open"
)
buffer_rows = Gauge(
    "coupon_buffer_rows", "Issues answered and not yet stored in PostgreSQL", multiprocess_mode="livesum"
)
flush_duration = Histogram(
    "coupon_flush_duration_seconds", "Duration of one write of a batch to PostgreSQL", buckets=_FLUSH_BUCKETS
)
rows_written = Counter("coupon_rows_written", "Issue rows written to PostgreSQL by the writers")
flush_failures = Counter("coupon_flush_failures", "Writes to PostgreSQL that failed and will be retried")
reconciled_rows = Counter(
    "coupon_reconciled_rows", "Issues recorded in Redis that reconcile wrote to PostgreSQL"
)
reconcile_failures = Counter("coupon_reconcile_failures", "Reconcile passes that failed")
foreign_state = Counter(
    "coupon_foreign_state_refusals",
    "Redis state refused because it cannot belong to the event (nothing was written), by where",
    ["where"],
)
broken_state = Counter(
    "coupon_redis_broken_state_batches",
    "Batches answered 503 because an event's Redis keys were not whole (evicted or deleted in part)",
)
rows_refused = Counter(
    "coupon_rows_refused",
    "Issue rows PostgreSQL refused to store as issues (kept in refused_issues), by reason",
    ["reason"],
)
redis_unsafe = Gauge(
    "coupon_redis_unsafe",
    "1 while a Redis this service decides on may evict keys (maxmemory-policy not noeviction)",
    multiprocess_mode="max",
)
redis_evicted_keys = Gauge(
    "coupon_redis_evicted_keys",
    "evicted_keys as the Redis this service decides on reports it (rising means lost keys)",
    multiprocess_mode="max",
)
verifications = Counter(
    "coupon_redis_verifications",
    "Verifications of a Redis this deployment did not know (restarted, failed over, restored), by"
    " result: current (nothing behind), rebuilt (some event was behind), failed (retried)",
    ["result"],
)
events_rebuilt = Counter(
    "coupon_events_rebuilt",
    "Events a verification found behind PostgreSQL in Redis and rebuilt (Redis came back older)",
)
verify_seconds = Gauge(
    "coupon_redis_verify_seconds",
    "How long the last verification this worker ran held issuing (seconds)",
    multiprocess_mode="max",
)
suspect_events = Counter(
    "coupon_suspect_events",
    "Events put on hold and verified because the writer found Redis and PostgreSQL disagree",
)
# Every label value a rule or dashboard reads exists from the start, at 0: increase() over
# a series that appears with its first increment would miss that increment.
for _where in ("open", "sync", "close", "reconcile", "verify", "upgrade"):
    foreign_state.labels(_where)
for _reason in ("over_quantity", "unknown_event", "conflict"):
    rows_refused.labels(_reason)
for _result in ("current", "rebuilt", "failed"):
    verifications.labels(_result)

lifecycle_operations = Counter(
    "coupon_lifecycle_operations",
    "Admin lifecycle operations (open, close, sync), by result",
    ["operation", "result"],
)


def count_refused(refusals: Iterable[tuple[int, str, int]]) -> None:
    """(event_id, reason, rows) of rows PostgreSQL would not store as issues."""
    for _event_id, reason, rows in refusals:
        rows_refused.labels(reason).inc(rows)


class Tally:
    """The hot path's samples, summed in this worker's memory and written to the shared
    files every ``FLUSH_S`` (and before this worker serves a scrape or stops).

    A multiprocess sample costs a lock and a write to a memory-mapped file per increment,
    about 0.65 µs for a counter and 1.4 µs for a histogram (two writes and a bucket
    search); an issue answer made four of them. Here an increment is a dict update, and a
    scrape sees other workers' counts at most ``FLUSH_S`` late. Gauges registered with
    ``gauge`` are read and set at each flush rather than on every change. Reaches into the
    histogram's bucket and sum values (prometheus-client 0.2x), which
    tests/unit/test_metrics.py checks against ``Histogram.observe``.
    """

    FLUSH_S = 0.25

    def __init__(self) -> None:
        self._pending: dict[object, float] = {}
        self._gauges: list[tuple[Gauge, Callable[[], float]]] = []

    def gauge(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """Set ``gauge`` to ``read()`` at every flush (instead of on every change)."""
        self._gauges.append((gauge, read))

    def inc(self, counter: Counter, amount: float = 1.0) -> None:
        key = counter._value
        pending = self._pending
        pending[key] = pending.get(key, 0.0) + amount

    def observe(self, histogram: Histogram, amount: float) -> None:
        pending = self._pending
        bucket = histogram._buckets[bisect.bisect_left(histogram._upper_bounds, amount)]
        pending[bucket] = pending.get(bucket, 0.0) + 1.0
        total = histogram._sum
        pending[total] = pending.get(total, 0.0) + amount

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for value, amount in pending.items():
            value.inc(amount)  # type: ignore[attr-defined]
        for gauge, read in self._gauges:
            gauge.set(read())

    async def flush_periodically(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.FLUSH_S)
                self.flush()
        finally:
            self.flush()


tally = Tally()


def prepare_directory() -> Path | None:
    """In the main process, before the workers spawn: an empty directory for the samples.

    An operator's ``PROMETHEUS_MULTIPROC_DIR`` is emptied (samples of an earlier run would
    be summed in); otherwise a private one is made. Returns the directory to remove at
    exit, if it was made here.
    """
    given = os.environ.get(ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return None
    made = Path(tempfile.mkdtemp(prefix="coupon-metrics-"))
    os.environ[ENV] = str(made)
    return made


def remove_directory(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(ENV))


def mark_dead(pid: int) -> None:
    """Drop a dead worker's gauges (its counters keep counting toward the sums)."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class _Snapshot(Collector):
    """Metric families computed before the scrape (collectors cannot await)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def event_families(states: list[tuple[int, int, int, int]]) -> list[Metric]:
    """Per open event (at most MAX_EVENTS): (event id, quantity, issued in Redis, rows stored)."""
    quantity = GaugeMetricFamily("coupon_event_quantity", "Coupons of the open event", labels=["event"])
    issued = GaugeMetricFamily(
        "coupon_event_issued", "Coupons issued in Redis for the open event", labels=["event"]
    )
    remaining = GaugeMetricFamily("coupon_event_remaining", "Coupons left to issue", labels=["event"])
    stored = GaugeMetricFamily(
        "coupon_event_stored_rows", "Issue rows of the open event stored in PostgreSQL", labels=["event"]
    )
    for event_id, total, count, rows in states[:MAX_EVENTS]:
        label = [str(event_id)]
        quantity.add_metric(label, total)
        issued.add_metric(label, count)
        remaining.add_metric(label, max(0, total - count))
        stored.add_metric(label, rows)
    return [quantity, issued, remaining, stored]


def exposition(extra: list[Metric]) -> bytes:
    """Every worker's samples merged, plus ``extra`` families, in the text format."""
    registry = CollectorRegistry()
    if multiprocess_enabled():
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:  # a single process (tests, an embedded app): its own default registry
        from prometheus_client import REGISTRY

        registry = REGISTRY
    tally.flush()
    snapshot = _Snapshot(extra)
    registry.register(snapshot)
    try:
        return generate_latest(registry)
    finally:
        registry.unregister(snapshot)


@functools.cache
def _worker_gauges() -> tuple[Gauge, Gauge, Gauge, Gauge]:
    """Made on first use, in a server worker only: a gauge without labels writes its
    sample at creation, and other processes Sanic spawns would show as idle workers."""
    return (
        Gauge(
            "coupon_worker_cpu_seconds", "CPU time used by the worker process", multiprocess_mode="liveall"
        ),
        Gauge(
            "coupon_worker_resident_memory_bytes",
            "Resident memory of the worker process",
            multiprocess_mode="liveall",
        ),
        Gauge(
            "coupon_worker_open_fds",
            "Open file descriptors of the worker process",
            multiprocess_mode="liveall",
        ),
        Gauge(
            "coupon_worker_gc_collections",
            "Garbage collections run by the worker process, by generation",
            ["generation"],
            multiprocess_mode="liveall",
        ),
    )


async def sample_process(interval_s: float = 5.0) -> None:
    """This worker's CPU, memory, descriptors and GC counts, every ``interval_s``."""
    cpu, memory, open_fds, collections = _worker_gauges()
    collector = ProcessCollector(registry=None)
    names = {
        "process_cpu_seconds": cpu,
        "process_resident_memory_bytes": memory,
        "process_open_fds": open_fds,
    }
    while True:
        for family in collector.collect():
            gauge = names.get(family.name)
            if gauge is not None and family.samples:
                gauge.set(family.samples[0].value)
        for generation, stats in enumerate(gc.get_stats()):
            collections.labels(str(generation)).set(stats["collections"])
        await asyncio.sleep(interval_s)
