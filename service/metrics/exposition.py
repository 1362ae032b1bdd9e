"""How the samples reach ``/metrics``: prometheus-client's multiprocess mode, in which every
worker writes memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR`` and the worker answering a
scrape merges them, plus the per-event gauges and each worker's process figures."""

from __future__ import annotations

import asyncio
import functools
import gc
import glob
import json
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.values import MultiProcessValue, MutexValue

from .tally import tally

ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
MAX_EVENTS = 50


def cache_process_id() -> None:
    """Multiprocess samples are filed by process id, which prometheus-client reads with
    ``os.getpid()`` on every increment: a system call, several per request (py-spy put it
    at 7% of a worker's time under ``make bench``). The id is read once here and again
    after a fork, which is the only way it changes. Called before the first metric is made:
    each metric keeps the value class it was made with."""
    pid = os.getpid()

    def after_fork() -> None:
        nonlocal pid
        pid = os.getpid()

    os.register_at_fork(after_in_child=after_fork)
    if values.ValueClass is not MutexValue:  # multiprocess mode: chosen before any metric
        values.ValueClass = MultiProcessValue(process_identifier=lambda: pid)


def prepare_directory() -> Path | None:
    """In the main process, before the workers spawn: an empty directory for the samples.

    A worker inherits the variable, so it imports prometheus-client already in multiprocess
    mode (chosen once, at import, before any metric is made). An operator's
    ``PROMETHEUS_MULTIPROC_DIR`` is emptied (samples of an earlier run would be summed in);
    otherwise a private one is made. Returns the directory to remove at exit, if it was
    made here.
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
        multiprocess.mark_process_dead(pid)


class _Snapshot(Collector):
    """Metric families computed before the scrape (collectors cannot await)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def event_families(states: list[tuple[int, int, int, int]]) -> list[Metric]:
    """Per open event (at most MAX_EVENTS, labelled by event id only): (event id, quantity,
    issued in Redis, rows stored)."""
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


def render(extra: list[Metric]) -> bytes:
    """Every worker's samples merged, plus ``extra`` families, in the text format."""
    registry = CollectorRegistry()
    if multiprocess_enabled():
        multiprocess.MultiProcessCollector(registry)
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


Labels = tuple[tuple[str, str], ...]


def summed(names: tuple[str, ...]) -> dict[tuple[str, Labels], float]:
    """The samples of the counters and histograms named (as made, e.g.
    ``coupon_issue_requests``), summed over this host's workers as a scrape sums them, keyed
    by (sample name, sorted labels). Histogram buckets are as the files keep them: each
    bucket's own count, not cumulative. This worker's pending samples are written first;
    the others' are at most ``Tally.FLUSH_S`` late.

    What ``/metrics`` does for these alone: a scrape parses and merges every sample of every
    metric (about 3 ms of a worker's CPU here); this skips the others unparsed."""
    tally.flush()
    sums: dict[tuple[str, Labels], float] = defaultdict(float)
    if not multiprocess_enabled():  # a single process (tests, an embedded app)
        from prometheus_client import REGISTRY

        for family in REGISTRY.collect():
            if family.name in names:
                below = 0.0  # a registry's buckets are cumulative: each one's own count is kept
                for sample in family.samples:
                    value = sample.value
                    if sample.name.endswith("_bucket"):
                        value, below = value - below, value
                    sums[sample.name, tuple(sorted(sample.labels.items()))] += value
        return sums
    prefixes = tuple(f'["{name}"' for name in names)
    directory = os.environ[ENV]
    for path in (*glob.glob(f"{directory}/counter_*.db"), *glob.glob(f"{directory}/histogram_*.db")):
        for key, value, _timestamp, _position in MmapedDict.read_all_values_from_file(path):
            if key.startswith(prefixes):
                _metric, sample, labels, _help = json.loads(key)
                sums[sample, tuple(sorted(labels.items()))] += value
    return sums


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
