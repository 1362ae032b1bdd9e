"""Cluster benchmark: the issue route on 1 Redis primary vs 3, and the cost of REDIS_WAIT_REPLICAS.

    python -m loadtest.bench_cluster [--events 12] [--duration 5s] [--rounds 2]

Starts two native Redis Clusters side by side (1 primary + 1 replica; 3 primaries + 1
replica each), then for each setup below starts coupon-service (BENCH_WORKERS workers,
default 2) on it, opens ``--events`` events, and runs wrk closed-loop (-t1 -c64) with a new
user per request, round-robin over the events. Setups alternate for ``--rounds`` rounds so
machine noise hits each alike; the median rate and p99 are printed per setup, and every
issue must be stored exactly once (drift 0) or the run fails.

Setups: 1 primary; 3 primaries; 3 primaries with REDIS_WAIT_REPLICAS=1.
Reads DATABASE_URL (default: the local `coupons` database).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.ports import free_port  # noqa: E402
from harness.redis_cluster import RedisClusterServer  # noqa: E402
from service.config import StorageSettings  # noqa: E402

BIN = Path(sys.executable).parent
TOKEN = "bench-cluster-admin-token-0123456789"


@dataclass
class Setup:
    name: str
    cluster: RedisClusterServer
    env: dict[str, str]
    rates: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)


def _request(url: str, method: str = "GET", body: dict[str, object] | None = None) -> dict[str, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {TOKEN}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, object] = json.loads(response.read() or b"{}")
        return answer


def _start_service(
    setup: Setup, workers: int, database_url: str, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": "",
        "REDIS_CLUSTER_NODES": setup.cluster.seeds,
        "DATABASE_URL": database_url,
        "ADMIN_TOKEN": TOKEN,
        "WORKERS": str(workers),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
        **setup.env,
    }
    process = subprocess.Popen(
        [str(BIN / "coupon-service")],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ready = _request(url + "/ready")
            if ready.get("workers") == workers:
                return process, url
        except OSError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise SystemExit(f"bench-cluster: the service on {setup.name} did not become ready (log: {log})")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()


def _round(setup: Setup, args: argparse.Namespace, database_url: str, round_no: int, log: Path) -> None:
    process, url = _start_service(setup, args.workers, database_url, log)
    try:
        events = []
        for n in range(args.events):
            created = _request(
                url + "/admin/events", "POST", {"name": f"bench-cluster {n}", "quantity": 1_000_000_000}
            )
            _request(f"{url}/admin/events/{created['id']}/open", "POST")
            events.append(int(str(created["id"])))
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                "-c64",
                f"-d{args.duration}",
                "-s",
                str(ROOT / "loadtest" / "wrk" / "issue.lua"),
                f"{url}/events/{events[0]}/issue",
                "--",
                f"cl{os.getpid()}-{round_no}",
                ",".join(map(str, events)),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        rate = float(next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec:")))
        summary = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
        drift = _drained(url, events)
        if summary["non_2xx"] or summary["socket_errors"] or drift:
            raise SystemExit(f"bench-cluster: FAILED on {setup.name}: {summary}, drift {drift}")
        setup.rates.append(rate)
        setup.p99s.append(float(summary["p99_ms"]))
        p99 = summary["p99_ms"]
        print(f"bench-cluster: round {round_no}, {setup.name}: {rate:,.0f} req/s, p99 {p99:.1f} ms")
        for event_id in events:
            _request(f"{url}/admin/events/{event_id}/close", "POST")
    finally:
        _stop(process)


def _drained(url: str, events: list[int]) -> int:
    """Wait until every issue is stored; returns what is still not stored (0 when done)."""
    drift = 0
    for _ in range(150):
        drift = sum(int(str(_request(f"{url}/admin/events/{e}")["drift"])) for e in events)
        if drift == 0:
            return 0
        time.sleep(0.1)
    return drift


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=12)
    parser.add_argument("--duration", default=os.environ.get("BENCH_DURATION", "5s"))
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "2")))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("BENCH_WORKERS", "2")))
    args = parser.parse_args()
    database_url = StorageSettings.from_env().database_url
    if shutil.which("wrk") is None:
        raise SystemExit("bench-cluster: wrk is missing; install it with: apt-get install -y wrk")
    with tempfile.TemporaryDirectory(prefix="coupon-bench-cluster-") as folder:
        one = RedisClusterServer(Path(folder) / "one", primaries=1, replicas=1)
        three = RedisClusterServer(Path(folder) / "three", primaries=3, replicas=1)
        try:
            one.start()
            three.start()
            setups = [
                Setup("1 primary", one, {}),
                Setup("3 primaries", three, {}),
                Setup("3 primaries, REDIS_WAIT_REPLICAS=1", three, {"REDIS_WAIT_REPLICAS": "1"}),
            ]
            for round_no in range(1, args.rounds + 1):
                for setup in setups:
                    log = Path(folder) / f"service-{round_no}-{len(setup.rates)}.log"
                    _round(setup, args, database_url, round_no, log)
        finally:
            one.stop()
            three.stop()
    day = datetime.now(UTC).date().isoformat()
    print(
        f"bench-cluster: {day}, {args.workers} workers, wrk -t1 -c64, {args.events} events, "
        f"median of {args.rounds} x {args.duration}:"
    )
    base = statistics.median(setups[0].rates)
    for setup in setups:
        rate = statistics.median(setup.rates)
        print(
            f"bench-cluster:   {setup.name}: {rate:,.0f} req/s ({rate / base:.2f} of 1 primary), "
            f"p99 {statistics.median(setup.p99s):.1f} ms"
        )


if __name__ == "__main__":
    main()
