"""Zero downtime, shown natively: nginx (Debian's) in front of blue and green `coupon-service`
processes on real Redis and PostgreSQL, k6 loading the issue route through nginx, and
ops/bluegreen/switch.sh moving the traffic blue -> green -> blue during the load.

    python -m loadtest.blue_green [--rate 1200] [--duration 30s] [--quantity 30000]

Passes when every request got 201, 409 or 410 (no 5xx, no connection error), both switches
finished during the load, each colour served traffic, the invariants hold (issued ==
min(quantity, users who asked), rows == issued, one coupon per user, ordinals 1..issued) and
every issue is stored. Reads DATABASE_URL and REDIS_URL (use a database and Redis db of its
own: it writes an event there). The last line is `requests=N failed=N switches=N`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.durations import seconds
from harness.ports import free_port
from harness.service_process import BIN
from loadtest.verify import Verdict, verify
from service.config import StorageSettings

ROOT = Path(__file__).resolve().parents[1]
SWITCH = ROOT / "ops" / "bluegreen" / "switch.sh"
RENDER = ROOT / "ops" / "bluegreen" / "native-nginx.sh"
ADMIN_TOKEN = "deploy-test-admin-token-0123456789"
# The test's load comes from one address: the per-IP issue limit must not be what it measures
# (0: rendered without it; tests/deploy/test_nginx.py shows the limit itself).
NO_ISSUE_LIMIT = 0


@dataclass
class Outcome:
    event_id: int = 0
    quantity: int = 0
    requests: int = 0
    failed: int = 0
    dropped: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    switches: int = 0
    switch_s: list[float] = field(default_factory=list)
    achieved_rps: float = 0.0
    served_by: dict[str, int] = field(default_factory=dict)
    issued: int | None = None
    rows: int = 0
    breaches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaches


class Stack:
    """nginx and the two colours under one folder; `close()` stops whatever still runs."""

    def __init__(
        self, work_dir: Path, env: dict[str, str], say: Callable[[str], None], *, blue_port: int = 0
    ) -> None:
        self.prefix = work_dir / "nginx"
        self.say = say
        self.nginx_port, self.green_port = free_port(), free_port()
        self.blue_port = blue_port or free_port()
        self.nginx_url = f"http://127.0.0.1:{self.nginx_port}"
        self.env = {
            **os.environ,
            **env,
            "DEPLOY_MODE": "native",
            "NGINX_PREFIX": str(self.prefix),
            "BLUE_PORT": str(self.blue_port),
            "GREEN_PORT": str(self.green_port),
            "START_COMMAND": str(BIN / "coupon-service"),
        }
        self.nginx_args = [
            "nginx",
            "-p",
            f"{self.prefix}/",
            "-c",
            str(self.prefix / "conf" / "nginx.conf"),
            "-e",
            str(self.prefix / "logs" / "error.log"),
        ]

    def colour_url(self, colour: str) -> str:
        return f"http://127.0.0.1:{self.blue_port if colour == 'blue' else self.green_port}"

    def start_nginx(self, issue_rate: int = NO_ISSUE_LIMIT, issue_burst: int = 20) -> None:
        subprocess.run(
            [str(RENDER), str(self.prefix), str(self.nginx_port), str(issue_rate), str(issue_burst)],
            env=self.env,
            check=True,
            capture_output=True,
        )
        subprocess.run(self.nginx_args, check=True)
        self.say(f"nginx on {self.nginx_url} (prefix {self.prefix})")

    def switch(self, colour: str, **env: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(SWITCH), colour], env={**self.env, **env}, capture_output=True, text=True, timeout=240
        )
        for line in (done.stdout + done.stderr).splitlines():
            self.say(f"  {line}")
        return done

    def admin(self, colour: str, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            self.colour_url(colour) + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {self.env['ADMIN_TOKEN']}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def upstream_counts(self) -> Counter[str]:
        """Requests per colour, from nginx's access log."""
        ports = {f"127.0.0.1:{self.blue_port}": "blue", f"127.0.0.1:{self.green_port}": "green"}
        counts: Counter[str] = Counter()
        log = self.prefix / "logs" / "access.log"
        if log.exists():
            for line in log.read_text().splitlines():
                upstream = json.loads(line).get("upstream", "")
                counts[ports.get(upstream, upstream or "nginx")] += 1
        return counts

    def close(self) -> None:
        for colour in ("blue", "green"):
            pidfile = self.prefix / "run" / f"{colour}.pid"
            if pidfile.exists():
                _stop(int(pidfile.read_text()))
        pidfile = self.prefix / "logs" / "nginx.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text())
            # SIGQUIT itself, not `nginx -s quit`: that re-reads the configuration, which a
            # test may have broken on purpose.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
            if not _wait_gone(pid, 10):
                os.kill(pid, signal.SIGKILL)


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not _wait_gone(pid, 60):
        os.kill(pid, signal.SIGKILL)


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, ValueError):
            return True
        time.sleep(0.1)
    return False


def start_k6(
    base_url: str, event_id: int, rate: int, duration: str, work_dir: Path, *, pre_vus: int = 100
) -> subprocess.Popen[bytes]:
    """k6 (loadtest/k6/issue.js) at `rate` issue requests a second, each from a new user, at
    `base_url` (nginx), with `pre_vus` VUs made up front (k6 skips a request while it makes
    one more); its summary goes to work_dir/summary.json (read_k6)."""
    command = [
        str(BIN / "k6"),
        "run",
        "--quiet",
        "--summary-export",
        str(work_dir / "summary.json"),
        "-e",
        f"BASE_URL={base_url}",
        "-e",
        f"EVENT_ID={event_id}",
        "-e",
        f"RATE={rate}",
        "-e",
        f"DURATION={duration}",
        "-e",
        f"PRE_VUS={pre_vus}",
        "-e",
        "MAX_VUS=1000",
        # Latency is not what this test gates on; the switch costs CPU on a 2-core machine.
        "-e",
        "P99_MS=60000",
        "-e",
        f"USER_PREFIX=deploy-{event_id}",
        str(ROOT / "loadtest" / "k6" / "issue.js"),
    ]
    env = {**os.environ, "K6_NO_USAGE_REPORT": "true"}
    with open(work_dir / "k6.log", "wb") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def read_k6(work_dir: Path, outcome: Outcome) -> None:
    metrics = json.loads((work_dir / "summary.json").read_text())["metrics"]
    outcome.requests = int(metrics.get("http_reqs", {}).get("count", 0))
    # http_req_failed counts every answer but 201/409/410 (issue.js) and every connection error.
    outcome.failed = int(metrics.get("http_req_failed", {}).get("passes", 0))
    outcome.dropped = int(metrics.get("dropped_iterations", {}).get("count", 0))
    outcome.statuses = {
        name: int(metrics.get(name, {}).get("count", 0))
        for name in ("issued", "sold_out", "duplicate", "other")
    }


def run(
    *,
    database_url: str,
    redis_url: str,
    rate: int = 1200,
    duration: str = "30s",
    quantity: int = 30_000,
    workers: int = 1,
    work_dir: Path,
    say: Callable[[str], None] = print,
) -> Outcome:
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "ADMIN_TOKEN": os.environ.get("ADMIN_TOKEN") or ADMIN_TOKEN,
        "WORKERS": str(workers),
        "LOG_LEVEL": "WARNING",
        "GRACEFUL_TIMEOUT_S": "20",
        "CHECKS": "3",
        "CHECK_INTERVAL_S": "1",
    }
    outcome = Outcome(quantity=quantity)
    breaches = outcome.breaches
    stack = Stack(work_dir, env, say)
    try:
        stack.start_nginx()
        say("first deploy: blue")
        if stack.switch("blue").returncode != 0:
            breaches.append("the first deploy (switch.sh blue) failed")
            return outcome
        event = stack.admin(
            "blue", "POST", "/admin/events", {"name": "blue/green deploy test", "quantity": quantity}
        )
        outcome.event_id = int(event["id"])
        stack.admin("blue", "POST", f"/admin/events/{outcome.event_id}/open")
        say(
            f"event {outcome.event_id} open with {quantity:,} coupons; "
            f"k6: {rate} req/s for {duration} through nginx"
        )

        load_s = seconds(duration)
        k6 = start_k6(stack.nginx_url, outcome.event_id, rate, duration, work_dir)
        started = time.monotonic()
        time.sleep(min(5.0, load_s / 6))
        for colour in ("green", "blue"):
            say(f"switch to {colour} under load (t={time.monotonic() - started:.1f}s)")
            begun = time.monotonic()
            done = stack.switch(colour)
            outcome.switch_s.append(time.monotonic() - begun)
            if done.returncode != 0:
                breaches.append(f"switch to {colour} failed (exit {done.returncode})")
                break
            if k6.poll() is not None:
                breaches.append(f"the switch to {colour} ended after the load did: lengthen --duration")
                break
            outcome.switches += 1
            time.sleep(1.0)
        code = k6.wait(timeout=load_s + 120)
        elapsed = time.monotonic() - started
        read_k6(work_dir, outcome)
        outcome.achieved_rps = outcome.requests / load_s
        say(f"k6 done after {elapsed:.1f}s (exit {code}): {outcome.requests:,} requests, {outcome.statuses}")

        repeat = stack.switch("blue")
        if repeat.returncode != 0 or "nothing to do" not in repeat.stdout:
            breaches.append("switching to the active colour again was not a no-op")

        outcome.served_by = dict(stack.upstream_counts())
        for colour in ("blue", "green"):
            if not outcome.served_by.get(colour):
                breaches.append(f"{colour} served no request: the switch did not move the traffic")
        if outcome.failed or outcome.statuses.get("other"):
            breaches.append(
                f"{outcome.failed} failed requests, {outcome.statuses.get('other')} not 201/409/410"
            )
        if outcome.dropped:
            say(f"note: k6 dropped {outcome.dropped} iterations (no VU free): not sent, not counted")
        if outcome.achieved_rps < 1000:
            breaches.append(
                f"achieved {outcome.achieved_rps:.0f} req/s, below the 1,000 req/s this test must hold"
            )

        # Green was drained by the second switch: its buffer must be in PostgreSQL already.
        # Blue is still up; give its writer a moment, then every check reads the stores.
        verdict = asyncio.run(_settle_and_verify(outcome, database_url, redis_url))
        outcome.issued = verdict.issued_redis
        outcome.rows = verdict.rows
        breaches.extend(verdict.breaches)
        stack.admin("blue", "POST", f"/admin/events/{outcome.event_id}/close")
        return outcome
    finally:
        stack.close()


async def _settle_and_verify(outcome: Outcome, database_url: str, redis_url: str) -> Verdict:
    deadline = time.monotonic() + 30
    while True:
        verdict = await verify(
            outcome.event_id, asked=outcome.requests, database_url=database_url, redis_url=redis_url
        )
        if verdict.ok or time.monotonic() > deadline:
            return verdict
        await asyncio.sleep(0.2)


def _storage() -> StorageSettings:
    """DATABASE_URL and REDIS_URL, else a database and a Redis db of the run's own: it writes
    an event there."""
    given = {name: value for name, value in os.environ.items() if value.strip()}
    return StorageSettings.from_env(
        {
            "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/coupons_deploy",
            "REDIS_URL": "redis://127.0.0.1:6379/14",
            **given,
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=int(os.environ.get("RATE", 1200)), help="offered req/s")
    parser.add_argument("--duration", default=os.environ.get("DURATION", "30s"))
    parser.add_argument("--quantity", type=int, default=int(os.environ.get("QUANTITY", 30_000)))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", 1)), help="per colour")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, nginx prefix)")
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        print(f"deploy-test: {message}", flush=True)

    from service.schema import create_database, migrate

    storage = _storage()
    asyncio.run(create_database(storage.database_url))
    asyncio.run(migrate(storage.database_url))
    work_dir = Path(tempfile.mkdtemp(prefix="coupon-deploy-"))
    outcome = run(
        database_url=storage.database_url,
        redis_url=storage.redis_url,
        rate=args.rate,
        duration=args.duration,
        quantity=args.quantity,
        workers=args.workers,
        work_dir=work_dir,
        say=say,
    )
    for breach in outcome.breaches:
        say(f"BREACH: {breach}")
    say(
        f"{'PASS' if outcome.ok else 'FAIL'}: event {outcome.event_id}, {outcome.achieved_rps:,.0f} req/s, "
        f"answers {outcome.statuses}, served by {outcome.served_by}, "
        f"switches took {', '.join(f'{s:.1f}s' for s in outcome.switch_s)}, "
        f"issued {outcome.issued}, rows {outcome.rows}, quantity {outcome.quantity}"
    )
    say(f"work folder: {work_dir}" if args.keep or not outcome.ok else "work folder removed")
    if outcome.ok and not args.keep:
        subprocess.run(["rm", "-rf", str(work_dir)], check=False)
    print(f"requests={outcome.requests} failed={outcome.failed} switches={outcome.switches}")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
