"""Run a load suite end to end: start the service, open a fresh event, load it, wait for the
writer, verify the invariants, and write loadtest/results/<timestamp>-<tool>-<scenario>/.

    python loadtest/run.py                       # the original scenario with k6
    python loadtest/run.py --tool locust
    python loadtest/run.py --scenario spike      # 3,000 VUs fire at once at a fresh event
    python loadtest/run.py --rate 500 --duration 3s --quantity 1000   # a seconds-long run

Exits 0 only if the tool's thresholds passed and the verifier found no breach.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from redis.asyncio import Redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from harness import invariants  # noqa: E402
from harness.durations import seconds  # noqa: E402
from harness.service_process import BIN, ServiceProcess  # noqa: E402
from loadtest import cpu, report  # noqa: E402
from loadtest.generators import k6_binary, k6_env  # noqa: E402
from loadtest.verify import verify  # noqa: E402
from service.config import StorageSettings  # noqa: E402

DEV_TOKEN = "loadtest-admin-token-0123456789"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tool", choices=("k6", "locust"), default="k6")
    parser.add_argument("--scenario", choices=("constant", "spike"), default="constant")
    parser.add_argument(
        "--rate", type=int, default=int(os.environ.get("RATE", 2800)), help="offered requests/s"
    )
    parser.add_argument("--duration", default=os.environ.get("DURATION", "60s"), help="e.g. 60s, 2m")
    parser.add_argument("--quantity", type=int, default=int(os.environ.get("QUANTITY", 100_000)))
    parser.add_argument("--pre-vus", type=int, default=int(os.environ.get("PRE_VUS", 200)))
    parser.add_argument("--max-vus", type=int, default=int(os.environ.get("MAX_VUS", 3000)))
    parser.add_argument("--spike-vus", type=int, default=int(os.environ.get("SPIKE_VUS", 3000)))
    parser.add_argument(
        "--users", type=int, default=int(os.environ.get("LOCUST_USERS", 200)), help="Locust users"
    )
    parser.add_argument(
        "--read-rate",
        type=int,
        default=int(os.environ.get("READ_RATE", 0)),
        help="k6: also poll GET /events/{id} at this rate (a stampede of sale-page readers)",
    )
    parser.add_argument("--p99-ms", type=float, default=float(os.environ.get("P99_MS", 25)))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", 2)))
    parser.add_argument(
        "--base-url", default=os.environ.get("BASE_URL"), help="use a running service instead"
    )
    parser.add_argument(
        "--results", type=Path, default=Path(os.environ.get("RESULTS_DIR", ROOT / "loadtest/results"))
    )
    parser.add_argument("--no-chart", action="store_true")
    return parser.parse_args(argv)


def say(message: str) -> None:
    print(f"loadtest: {message}", flush=True)


class Service:
    """The service under load: our own process on a free port, or one already running."""

    def __init__(self, args: argparse.Namespace, run_dir: Path) -> None:
        self.token = os.environ.get("ADMIN_TOKEN") or DEV_TOKEN
        self.process: ServiceProcess | None = None
        if args.base_url:
            self.url = args.base_url.rstrip("/")
            return
        env = {
            "ADMIN_TOKEN": self.token,
            "WORKERS": str(args.workers),
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
        }
        self.process = ServiceProcess(env, run_dir / "service.log")
        self.url = self.process.url

    def start(self, timeout_s: float = 30) -> None:
        """Start our own and wait until every worker serves; a running one must be ready."""
        if self.process is None:
            self._wait_ready(timeout_s)
            return
        say(f"starting coupon-service ({self.process.env['WORKERS']} workers) on {self.url}")
        try:
            self.process.start(timeout_s)
        except RuntimeError as exc:
            problem = str(exc).splitlines()[0]
            raise SystemExit(f"loadtest: {problem}; see service.log in the results folder") from None

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"loadtest: {self.url} not ready after {timeout_s}s")

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    def cpu_groups(self, storage: StorageSettings) -> dict[str, cpu.Finder]:
        """The processes whose CPU a run reports: ours (not one running elsewhere), Redis, PostgreSQL."""
        proc = self.process.proc if self.process is not None else None
        found = cpu.tree(proc.pid) if proc is not None else self._running_here()
        groups = {} if found is None else {"service": found}
        return {**groups, **cpu.storage_groups(storage)}

    def _running_here(self) -> cpu.Finder | None:
        """A running service's processes, when it listens on this machine's loopback."""
        url = urlsplit(self.url)
        if url.hostname not in ("127.0.0.1", "localhost", "::1"):
            return None
        return cpu.serving(url.port or 80)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout_s=120)


def run_k6(args: argparse.Namespace, url: str, event_id: int, run_dir: Path) -> tuple[int, dict[str, Any]]:
    command = [
        str(k6_binary()),
        "run",
        "--summary-export",
        str(run_dir / "summary.json"),
        "--out",
        f"csv={run_dir / 'k6.csv.gz'}",
        # scenario: the issue scenario's dropped iterations are counted apart from the readers'
        # (READ_RATE); without the tag that sub-metric stays empty and reads 0.
        "--system-tags",
        "status,name,scenario",
        "-e",
        f"BASE_URL={url}",
        "-e",
        f"EVENT_ID={event_id}",
        "-e",
        f"RATE={args.rate}",
        "-e",
        f"DURATION={args.duration}",
        "-e",
        f"PRE_VUS={args.pre_vus}",
        "-e",
        f"MAX_VUS={args.max_vus}",
        "-e",
        f"SPIKE_VUS={args.spike_vus}",
        "-e",
        f"P99_MS={args.p99_ms}",
        "-e",
        f"SCENARIO={args.scenario}",
        "-e",
        f"READ_RATE={args.read_rate}",
        "-e",
        f"USER_PREFIX=k6-{event_id}",
        str(HERE / "k6" / "issue.js"),
    ]
    env = k6_env()
    say("running " + shlex.join([*command[:2], "…", command[-1]]) + f" (GOGC={env['GOGC']})")
    code = subprocess.call(command, env=env)
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = summary["metrics"]
    # The issue route's own figures; the readers' (READ_RATE) apart.
    duration = metrics.get("http_req_duration{name:issue}") or metrics.get("http_req_duration", {})
    requests = metrics.get("http_reqs{name:issue}") or metrics.get("http_reqs", {})
    dropped = metrics.get("dropped_iterations{scenario:constant}") or metrics.get("dropped_iterations", {})
    reads = metrics.get("http_req_duration{name:event}")
    counts = {
        name: int(metrics.get(name, {}).get("count", 0))
        for name in ("issued", "sold_out", "duplicate", "other")
    }
    return code, {
        "requests": int(requests.get("count", 0)),
        "failed": int(metrics.get("http_req_failed", {}).get("passes", 0)),
        "dropped": int(dropped.get("count", 0)),
        "reads": int(metrics.get("http_reqs{name:event}", {}).get("count", 0)) if reads else None,
        "read_p99": reads.get("p(99)") if reads else None,
        "p50": duration.get("med"),
        "p95": duration.get("p(95)"),
        "p99": duration.get("p(99)"),
        "max": duration.get("max"),
        "max_vus": int(metrics.get("vus_max", {}).get("max", 0)),
        **counts,
    }


def run_locust(
    args: argparse.Namespace, url: str, event_id: int, run_dir: Path
) -> tuple[int, dict[str, Any]]:
    locust = BIN / "locust"
    if not locust.exists():
        raise SystemExit("loadtest: locust is missing from .venv; run `make setup`")
    counts_path = run_dir / "counts.json"
    command = [
        str(locust),
        "-f",
        str(HERE / "locust" / "locustfile.py"),
        "--headless",
        "--host",
        url,
        "-u",
        str(args.users),
        "-r",
        str(args.users),
        "-t",
        args.duration,
        "--csv",
        str(run_dir / "locust"),
        "--csv-full-history",
        "--stop-timeout",
        "10",
        "--only-summary",
    ]
    env = {
        **os.environ,
        "RATE": str(args.rate),
        "EVENT_ID": str(event_id),
        "USER_PREFIX": f"locust-{event_id}",
        "COUNTS_PATH": str(counts_path),
    }
    say("running " + shlex.join(command[:3]) + " …")
    code = subprocess.call(command, env=env)
    counts = json.loads(counts_path.read_text())
    stats = {}
    import csv

    with open(run_dir / "locust_stats.csv", newline="") as stream:
        for row in csv.DictReader(stream):
            if row["Name"] == "Aggregated":
                stats = row
    # Locust's stats stop at the time limit while users finish in-flight requests during
    # --stop-timeout; the locustfile's own counts see every answer, so they are the record.
    requests = sum(counts.values())
    return code, {
        "requests": requests,
        "failed": int(stats.get("Failure Count", 0)),
        "dropped": None,
        "p50": float(stats.get("50%", "nan")),
        "p95": float(stats.get("95%", "nan")),
        "p99": float(stats.get("99%", "nan")),
        "max": float(stats.get("Max Response Time", "nan")),
        "max_vus": args.users,
        **counts,
    }


async def wait_stored(database_url: str, redis_url: str, event_id: int, timeout_s: float = 120) -> None:
    pg = await asyncpg.connect(database_url)
    redis = Redis.from_url(redis_url)
    try:
        await invariants.wait_stored(pg, redis, event_id, timeout_s)
    except invariants.NotStored as exc:
        say(f"the writer did not catch up in {timeout_s}s ({exc})")
    finally:
        await pg.close()
        await redis.aclose()


async def stored_facts(database_url: str, event_id: int) -> tuple[list[datetime], datetime | None]:
    pg = await asyncpg.connect(database_url)
    try:
        rows = await pg.fetch("SELECT issued_at FROM coupon_issues WHERE event_id = $1", event_id)
        last_stored = await pg.fetchval(
            "SELECT max(stored_at) FROM coupon_issues WHERE event_id = $1", event_id
        )
        return [row["issued_at"] for row in rows], last_stored
    finally:
        await pg.close()


def stored_after(lag_s: float | None, basis: str) -> str:
    """The writer's lag behind the last issue. Measured from the response as the generator
    saw it, it is negative when that response reached the generator after its row was
    stored (a saturated machine delays answers more than the writer): said in words."""
    if lag_s is None:
        return "n/a"
    if lag_s < 0:
        return f"{lag_s:.3f} s: stored {-lag_s:.3f} s before the {basis} reached the generator"
    return f"{lag_s:.3f} s ({basis})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The service started here reads the same environment.
    storage = StorageSettings.from_env()
    database_url, redis_url = storage.database_url, storage.redis_url
    started = datetime.now(UTC)
    run_dir = args.results / f"{started:%Y%m%dT%H%M%SZ}-{args.tool}-{args.scenario}"
    run_dir.mkdir(parents=True, exist_ok=True)
    service = Service(args, run_dir)
    try:
        service.start()
        event = service.admin(
            "POST", "/admin/events", {"name": f"loadtest {started:%FT%TZ}", "quantity": args.quantity}
        )
        service.admin("POST", f"/admin/events/{event['id']}/open")
        event_id = int(event["id"])
        offered = args.spike_vus if args.scenario == "spike" else args.rate
        plan = (
            f"{args.spike_vus} VUs at once"
            if args.scenario == "spike"
            else f"{args.rate} req/s for {args.duration}"
        )
        say(f"event {event_id} opened with {args.quantity:,} coupons; {args.tool}: {plan}")
        runner = run_k6 if args.tool == "k6" else run_locust
        with cpu.Meter(service.cpu_groups(storage), generator=args.tool) as meter:
            tool_code, result = runner(args, service.url, event_id, run_dir)
        tool_done = time.time()
        say("waiting for the writer to store every issue")
        asyncio.run(wait_stored(database_url, redis_url, event_id))
        verdict = asyncio.run(
            verify(event_id, asked=result["requests"], database_url=database_url, redis_url=redis_url)
        )
        issued_at, last_stored = asyncio.run(stored_facts(database_url, event_id))
        # Verified: close the event so it stops costing Redis memory and reconcile passes.
        service.admin("POST", f"/admin/events/{event_id}/close")
    finally:
        service.stop()

    if args.tool == "k6":
        series = report.k6_series(run_dir / "k6.csv.gz")
    else:
        series = report.locust_series(run_dir / "locust_stats_history.csv")
    # The last 201 the tool saw (k6 records statuses); else the last decision's time, which
    # precedes its answer by the response's own latency.
    if series.last_issued_ms:
        last_issue_s, lag_basis = series.last_issued_ms / 1000, "last 201 response"
    else:
        last_issue_s, lag_basis = (
            max((m.timestamp() for m in issued_at), default=tool_done),
            "last issue decided",
        )
    lag_s = (last_stored.timestamp() - last_issue_s) if last_stored else None
    run_s = seconds(args.duration) if args.scenario == "constant" else None
    achieved = result["requests"] / run_s if run_s else None
    passed = tool_code == 0 and verdict.ok and result["failed"] == 0 and result.get("other", 0) == 0
    table = {
        "tool / scenario": f"{args.tool} / {args.scenario}",
        "offered": f"{offered:,} req/s for {args.duration}" if run_s else f"{offered:,} requests at once",
        "achieved": f"{achieved:,.0f} req/s ({100 * achieved / args.rate:.1f}% of offered)"
        if achieved
        else "n/a",
        "requests": f"{result['requests']:,}",
        "failed requests": f"{result['failed']:,}",
        "dropped iterations": "n/a" if result["dropped"] is None else f"{result['dropped']:,}",
        "latency p50 / p95 / p99 / max (ms)": " / ".join(
            f"{result[k]:.2f}" if isinstance(result[k], (int, float)) else "n/a"
            for k in ("p50", "p95", "p99", "max")
        ),
        "issued / sold out / duplicate / other": (
            f"{result['issued']:,} / {result['sold_out']:,} / {result['duplicate']:,} / {result['other']:,}"
        ),
        "quantity": f"{args.quantity:,}",
        "issued in Redis": f"{verdict.issued_redis:,}" if verdict.issued_redis is not None else "n/a",
        "rows in PostgreSQL": f"{verdict.rows:,}",
        "over-issue": str(verdict.over_issue),
        "duplicate users": str(verdict.rows - verdict.distinct_users),
        "last 201 → last row stored": stored_after(lag_s, lag_basis),
        "VUs / users (max)": str(result["max_vus"]),
    }
    if result.get("reads") is not None:
        table["readers: GET /events/{id} (p99 ms)"] = (
            f"{result['reads']:,} at {args.read_rate:,}/s offered ({result['read_p99']:.2f})"
        )
    facts = {
        "started": f"{started:%Y-%m-%d %H:%M:%SZ}",
        "command": "python loadtest/run.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.node()}, {os.cpu_count()} cores ({cpu.cpu_model()}), {platform.platform()}; "
        f"service, load generator, Redis and PostgreSQL on the same cores",
        "table": table,
        "verdict": "PASS" if passed else "FAIL",
        "breaches": verdict.breaches + ([f"{args.tool} exited with {tool_code}"] if tool_code else []),
    }
    (run_dir / "results.md").write_text(
        report.results_markdown(facts, report.cpu_section(meter.split, args.tool, result["requests"]))
    )
    (run_dir / "results.json").write_text(
        json.dumps(
            {
                **result,
                "event_id": event_id,
                "lag_s": lag_s,
                "achieved": achieved,
                "passed": passed,
                "cpu_s": meter.split.cpu_s,
                "cpu_wall_s": meter.split.wall_s,
            },
            indent=2,
        )
    )
    if not args.no_chart:
        title = f"{args.tool} {args.scenario}: {plan}, {args.quantity:,} coupons"
        report.chart(
            series,
            report.issued_curve(issued_at, series.start_ms),
            args.quantity,
            title,
            run_dir / "chart.png",
        )
    for key in (
        "achieved",
        "latency p50 / p95 / p99 / max (ms)",
        "issued / sold out / duplicate / other",
        "rows in PostgreSQL",
        "over-issue",
        "last 201 → last row stored",
        *(["readers: GET /events/{id} (p99 ms)"] if result.get("reads") is not None else []),
    ):
        say(f"{key}: {table[key]}")
    say(cpu.generator_sentence(meter.split, args.tool, report.SERVED, report.SERVED_TEXT))
    say(f"{facts['verdict']}: results in {run_dir}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
