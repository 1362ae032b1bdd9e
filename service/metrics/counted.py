"""What the service counts: every metric with its labels and buckets, made at import.
Labels never hold a user id: outcomes, routes, statuses, reasons and results."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

from .exposition import cache_process_id

# Sub-millisecond buckets: a decision normally takes a few hundred microseconds.
_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
_FLUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# Before the first metric below: in a worker (multiprocess mode) each keeps the value class
# it was made with, and that one must read the cached process id.
cache_process_id()

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
for _outcome in OUTCOMES:
    issue_requests.labels(_outcome)

lifecycle_operations = Counter(
    "coupon_lifecycle_operations",
    "Admin lifecycle operations (open, close, sync), by result",
    ["operation", "result"],
)


def count_refused(refusals: Iterable[tuple[int, str, int]]) -> None:
    """(event_id, reason, rows) of rows PostgreSQL would not store as issues."""
    for _event_id, reason, rows in refusals:
        rows_refused.labels(reason).inc(rows)
