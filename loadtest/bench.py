"""make bench: the service against a bare Sanic app (loadtest/bare.py) on the same machine, in one
run, as ratios that hold across hosts where absolute rates do not.

Closed loop (wrk): the bare app's GET /health and POST issue; the service's /health, POST
/events/{id}/issue, GET /events/{id} and GET /events/{id}/issues/{user}, each for
BENCH_DURATION, the targets alternating for BENCH_ROUNDS rounds so that a noisy neighbour hits
all alike; median rates and their ratios. Open model (k6, BENCH_OPEN_RATE req/s for
BENCH_OPEN_DURATION): the bare app's POST, then the service's issue route on a fresh event,
then the bare app's POST after one call of the service's issue script through redis-py (the
floor of any Sanic app making one Redis round trip an answer; not on a Redis cluster); CPU
per answer from /proc (the service's processes with Redis and PostgreSQL, against the bare
app's, then split into the workers and Redis + PostgreSQL) and what the generator took.
A CPU yardstick before and after, then a check that every 201 was stored, and a summary
table for docs/performance.md.

Settings (environment): BENCH_WORKERS (2, both apps), BENCH_ROUNDS (3), BENCH_DURATION (5s),
BENCH_CONNECTIONS (64), BENCH_THREADS (1), BENCH_OPEN_RATE (2800), BENCH_OPEN_DURATION (15s).
Uses the DATABASE_URL / REDIS_URL databases; other service settings pass through.

The ratios are reported against their targets, never judged: the command exits 1 only when a
201 was not stored, 2 when a tool failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sanic

from harness.durations import seconds
from harness.service_process import ServiceProcess
from loadtest import cpu, generators
from loadtest.bare import BareApp
from loadtest.generators import K6_THRESHOLDS_CROSSED, WRK_ISSUE
from loadtest.open_model import OpenRun, open_model
from service.config import StorageSettings

TOKEN = "bench-admin-token-0123456789"
QUANTITY = 1_000_000_000
READER = "bench-reader"

BARE_GET, BARE_POST = "bare GET /health", "bare POST /events/{id}/issue"
HEALTH, ISSUE = "GET /health", "POST /events/{id}/issue"
EVENT, USER_ISSUE = "GET /events/{id}", "GET /events/{id}/issues/{user}"
# (service route, bare route, target ratio): the closed-loop targets the service aims at.
CLOSED_RATIOS = (
    (HEALTH, BARE_GET, 0.9),
    (ISSUE, BARE_POST, 0.8),
    (EVENT, BARE_GET, 0.8),
    (USER_ISSUE, BARE_GET, 0.8),
)
CPU_TARGET = 1.25  # the service's CPU per issue answer in the open model ≤ 1.25 x the bare app's


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=int(env("BENCH_WORKERS", "2")))
    parser.add_argument("--rounds", type=int, default=int(env("BENCH_ROUNDS", "3")))
    parser.add_argument("--duration", default=env("BENCH_DURATION", "5s"), help="per wrk run")
    parser.add_argument("--connections", type=int, default=int(env("BENCH_CONNECTIONS", "64")))
    parser.add_argument("--threads", type=int, default=int(env("BENCH_THREADS", "1")))
    parser.add_argument("--open-rate", type=int, default=int(env("BENCH_OPEN_RATE", "2800")))
    parser.add_argument("--open-duration", default=env("BENCH_OPEN_DURATION", "15s"))
    args = parser.parse_args(argv)
    # A bad duration fails here, not minutes into the run.
    seconds(args.duration)
    seconds(args.open_duration)
    return args


def say(message: str) -> None:
    print(f"bench: {message}", flush=True)


def _call(url: str, method: str = "GET", body: Any = None) -> Any:
    request = urllib.request.Request(
        url,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def open_event(url: str, name: str) -> int:
    created = _call(f"{url}/admin/events", "POST", {"name": name, "quantity": QUANTITY})
    _call(f"{url}/admin/events/{created['id']}/open", "POST")
    return int(created["id"])


def closed_loop(args: argparse.Namespace, bare: str, service: str, event: int) -> dict[str, float]:
    targets = [
        (BARE_GET, f"{bare}/health", False),
        (HEALTH, f"{service}/health", False),
        (EVENT, f"{service}/events/{event}", False),
        (USER_ISSUE, f"{service}/events/{event}/issues/{READER}", False),
        (BARE_POST, f"{bare}/events/{event}/issue", True),
        (ISSUE, f"{service}/events/{event}/issue", True),
    ]
    rates: dict[str, list[float]] = {name: [] for name, _, _ in targets}
    for round_no in range(1, args.rounds + 1):
        # Each round runs the other way round: a drift in the machine's speed hits all alike.
        for name, url, posts in targets if round_no % 2 else reversed(targets):
            script = (WRK_ISSUE, f"r{round_no}") if posts else (None,)
            result = generators.wrk(url, args.duration, args.connections, args.threads, *script)
            rates[name].append(result.rate)
            trouble = ""
            if result.non_2xx or result.socket_errors:
                trouble = f"; {result.non_2xx:,} answers not 2xx, {result.socket_errors:,} socket errors"
            say(
                f"round {round_no}/{args.rounds} {name}: {result.rate:,.0f} req/s"
                f" (p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms){trouble}"
            )
    return {name: statistics.median(values) for name, values in rates.items()}


def verdict(ratio: float, target: float, at_least: bool) -> str:
    """The target and whether the ratio, as printed (two decimals), meets it."""
    shown = round(ratio, 2)
    met = shown >= target if at_least else shown <= target
    return f"{'≥' if at_least else '≤'} {target:g}: {'PASS' if met else 'below' if at_least else 'above'}"


def stored(url: str, event: int, timeout_s: float = 60.0) -> tuple[int | None, int]:
    """Redis's issued count and PostgreSQL's rows once the writer has caught up (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        report = _call(f"{url}/admin/events/{event}")
        if report["drift"] == 0 or time.monotonic() > deadline:
            return report["issued_redis"], int(report["rows_stored"])
        time.sleep(0.1)


def summary(
    args: argparse.Namespace,
    medians: dict[str, float],
    cpu_ratio: float,
    runs: tuple[OpenRun, OpenRun],
    sticks: tuple[float, float],
    decided: OpenRun | None = None,
) -> str:
    bare_run, service_run = runs
    lines = [
        f"Where it stands, {datetime.now(UTC):%Y-%m-%d} (`make bench`): yardstick {sticks[0]:.1f} /"
        f' {sticks[1]:.1f} µs (`python -m timeit "sum(range(1000))"`, before / after), {os.cpu_count()}'
        f" cores ({cpu.cpu_model()}), Sanic {sanic.__version__}, {args.workers} workers each; closed loop"
        f" wrk -t{args.threads} -c{args.connections}, median of {args.rounds} x {args.duration}; open model"
        f" k6 at {args.open_rate:,}/s for {args.open_duration}.",
        "",
        "| measure | service | bare Sanic | ratio | target |",
        "|---|---|---|---|---|",
    ]
    for route, bare_route, target in CLOSED_RATIOS:
        ratio = medians[route] / medians[bare_route]
        lines.append(
            f"| closed loop `{route}`, req/s | {medians[route]:,.0f} | {medians[bare_route]:,.0f}"
            f" ({bare_route.split(' ')[1]}) | {ratio:.2f} | {verdict(ratio, target, True)} |"
        )
    lines.append(
        "| open model, CPU µs per issue answer (service: workers + Redis + PostgreSQL)"
        f" | {service_run.us_per_answer:.0f} | {bare_run.us_per_answer:.0f}"
        f" | {cpu_ratio:.2f} | {verdict(cpu_ratio, CPU_TARGET, False)} |"
    )
    for name, part_us in cpu_parts(service_run):
        lines.append(f"| of which {name} | {part_us:.0f} | | {part_us / bare_run.us_per_answer:.2f} | |")
    if decided is not None:
        lines.append(
            "| open model, CPU µs per answer of the bare app with one Redis decision an answer (bare app"
            f" + Redis) | {decided.us_per_answer:.0f} | {bare_run.us_per_answer:.0f}"
            f" | {decided.us_per_answer / bare_run.us_per_answer:.2f} | floor: a round trip an answer |"
        )
    return "\n".join(lines)


def cpu_parts(run: OpenRun) -> list[tuple[str, float]]:
    """The service's CPU per answer split into what its own code controls (the workers) and
    what its dependencies cost (Redis and PostgreSQL together): the target on the sum leaves
    the workers only what the dependencies do not take."""
    answers = run.result.requests
    storage = tuple(name for name in run.served if name in cpu.STORAGE_GROUPS)
    own = tuple(name for name in run.served if name not in cpu.STORAGE_GROUPS)
    return [
        ("the workers", run.split.us_per(own, answers)),
        (" + ".join(storage), run.split.us_per(storage, answers)),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    storage = StorageSettings.from_env(os.environ)
    logs = Path(tempfile.mkdtemp(prefix="coupon-bench."))
    before = cpu.yardstick_us()
    say(f'CPU yardstick, python -m timeit "sum(range(1000))": {before:.1f} µs')
    say(f"{platform.node()}, {os.cpu_count()} cores ({cpu.cpu_model()}); logs in {logs}")
    # The bare app with one Redis decision an answer, where Redis is one server (not a cluster).
    bare = BareApp(args.workers, logs / "bare.log", None if storage.redis_cluster else storage.redis_url)
    service = ServiceProcess(
        {"ADMIN_TOKEN": TOKEN, "WORKERS": str(args.workers), "LOG_LEVEL": "WARNING"}, logs / "service.log"
    )
    try:
        bare.start()
        say(f"bare Sanic {sanic.__version__} app, {args.workers} workers, on {bare.url}")
        service.start()
        say(f"coupon-service, {args.workers} workers, on {service.url}")
        started = f"{datetime.now(UTC):%FT%TZ}"
        loop_event = open_event(service.url, f"bench {started}")
        _call(f"{service.url}/events/{loop_event}/issue", "POST", {"user_id": READER})
        say(f"event {loop_event} opened (quantity {QUANTITY:,}); {READER} holds a coupon of it")
        say(f"closed loop: wrk -t{args.threads} -c{args.connections}, {args.rounds} rounds x {args.duration}")
        medians = closed_loop(args, bare.url, service.url, loop_event)

        open_id = open_event(service.url, f"bench open model {started}")
        say(f"open model: k6 at {args.open_rate:,}/s for {args.open_duration}; service event {open_id}")
        groups = {
            "bare app": cpu.tree(bare.pid),
            "service": cpu.tree(service.proc.pid if service.proc else -1),
        }
        groups.update(cpu.storage_groups(storage))
        rate, duration = args.open_rate, args.open_duration
        runs = (
            open_model(
                "bare POST",
                bare.url,
                1,
                rate=rate,
                duration=duration,
                groups=groups,
                served=("bare app",),
                what="the bare app",
                logs=logs,
            ),
            open_model(
                "service /issue",
                service.url,
                open_id,
                rate=rate,
                duration=duration,
                groups=groups,
                served=("service", *cpu.STORAGE_GROUPS),
                what="the service (workers + Redis + PostgreSQL)",
                logs=logs,
            ),
        )
        decided = None
        if bare.redis_url:
            decided = open_model(
                "bare POST + Redis decision",
                f"{bare.url}/decided",
                1,
                rate=rate,
                duration=duration,
                groups=groups,
                served=("bare app", "Redis"),
                what="the bare app and Redis",
                logs=logs,
            )
        else:
            say("bare POST + Redis decision: not run (Redis is a cluster)")
        after = cpu.yardstick_us()
        say(f'CPU yardstick, python -m timeit "sum(range(1000))": {after:.1f} µs (before: {before:.1f})')

        lost = []
        for event in (loop_event, open_id):
            issued, rows = stored(service.url, event)
            say(f"event {event}: issued in Redis {'n/a' if issued is None else issued}, rows stored {rows}")
            if issued != rows:
                lost.append(f"event {event}: {issued} issued but {rows} stored")
            # Checked: close it so it stops costing Redis memory and reconcile passes.
            _call(f"{service.url}/admin/events/{event}/close", "POST")
    except (RuntimeError, OSError) as exc:  # ToolFailed, a server that did not start or answer
        say(f"FAILED: {exc}")
        return 2
    finally:
        service.stop(timeout_s=120)
        bare.stop()

    for route, bare_route, target in CLOSED_RATIOS:
        ratio = medians[route] / medians[bare_route]
        bare_name = bare_route.split(" ")[1]
        say(f"ratio {route} ÷ bare {bare_name}: {ratio:.2f} (target {verdict(ratio, target, True)})")
    bare_run, service_run = runs
    cpu_ratio = service_run.us_per_answer / bare_run.us_per_answer
    say(
        f"ratio CPU per issue answer, service (workers + Redis + PostgreSQL) ÷ bare POST: "
        f"{service_run.us_per_answer:.0f} ÷ {bare_run.us_per_answer:.0f} µs = {cpu_ratio:.2f} "
        f"(target {verdict(cpu_ratio, CPU_TARGET, False)})"
    )
    for name, part_us in cpu_parts(service_run):
        share = part_us / bare_run.us_per_answer
        say(f"  of which {name}: {part_us:.0f} µs, {share:.2f} times the bare app's answer")
    if decided is not None:
        say(
            "the bare app with one Redis decision an answer (the issue script through redis-py) ÷ bare POST: "
            f"{decided.us_per_answer:.0f} ÷ {bare_run.us_per_answer:.0f} µs = "
            f"{decided.us_per_answer / bare_run.us_per_answer:.2f}; the service against it: "
            f"{service_run.us_per_answer / decided.us_per_answer:.2f}"
        )
    print()
    print(summary(args, medians, cpu_ratio, runs, (before, after), decided))
    print()
    for run in (*runs, *([decided] if decided else [])):
        if run.result.failed or run.code not in (0, K6_THRESHOLDS_CROSSED):
            say(f"note: {run.label}: {run.result.failed:,} requests failed (k6 exited with {run.code})")
    if lost:
        say("FAILED: " + "; ".join(lost))
        return 1
    say("every 201 stored; the ratios above are measurements, not a verdict")
    return 0


if __name__ == "__main__":
    sys.exit(main())
