"""make profile: where a worker's time goes on each route, closed loop (wrk) and, for the issue
route, the open model (k6 at PROFILE_OPEN_RATE): py-spy's samples of one worker, grouped into
the service's own code, Sanic, the event loop and the drivers, with the hottest frames; then
`strace -c` on the same worker for the system calls per answer.

    python -m loadtest.profile [--routes health,issue,event,user_issue] [--seconds 5]

The service runs one worker under the share of `make bench`'s load that each of its two
workers gets (half its connections, half its open-model rate), so every answer counted is
the profiled worker's. py-spy and strace attach to it for ``--seconds`` each while the load
runs (one after the other: both use ptrace). strace slows the worker it traces, so its counts
are per answer, never rates.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.service_process import ServiceProcess
from loadtest import cpu
from loadtest.bench import READER, TOKEN, _call, open_event
from loadtest.generators import K6_SCRIPT, WRK_ISSUE, k6_binary, k6_env

# A frame's file (py-spy names it from its package: "sanic/http/http1.py") says whose code it is.
OWNERS = {
    "service": "service",
    "batcher": "service",
    "sanic": "Sanic",
    "sanic_routing": "Sanic",
    "redis": "redis-py",
    "asyncpg": "asyncpg",
    "asyncio": "event loop",
    "uvloop": "event loop",
    "prometheus_client": "prometheus-client",
}
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


@dataclass(frozen=True)
class Profile:
    samples: int
    # Samples whose innermost frame is of an owner (its "self" time).
    by_owner: dict[str, int]
    # Samples with any frame of the service's own code on the stack.
    service_inclusive: int
    hottest: list[tuple[str, int]]


def owner_of(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return "other"
    path = match["file"]
    if "/" not in path and not path.endswith(".py"):
        return "Sanic"  # Sanic compiles its hottest functions from source text ("send", "handle_request")
    return OWNERS.get(path.split("/", 1)[0], "other")


def read_profile(raw: Path, top: int = 12) -> Profile:
    """py-spy's raw output: one ``frame;frame;...;innermost count`` line per distinct stack."""
    by_owner: collections.Counter[str] = collections.Counter()
    hottest: collections.Counter[str] = collections.Counter()
    samples = service = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        innermost = frames[-1]
        by_owner[owner_of(innermost)] += count
        hottest[innermost] += count
        if any(owner_of(frame) == "service" for frame in frames):
            service += count
    return Profile(samples, dict(by_owner), service, hottest.most_common(top))


def py_spy(pid: int, seconds: float, out: Path) -> None:
    binary = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if binary is None:
        raise SystemExit("profile: py-spy is missing; install it with: pip install py-spy")
    command = [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250"]
    command += ["--format", "raw", "--output", str(out), "--nonblocking"]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
    )


def strace_counts(pid: int, seconds: float, out: Path) -> dict[str, int]:
    if shutil.which("strace") is None:
        raise SystemExit("profile: strace is missing; install it with: apt-get install -y strace")
    subprocess.run(
        ["timeout", "--signal=INT", str(seconds), "strace", "-c", "-f", "-p", str(pid), "-o", str(out)],
        capture_output=True,
    )
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        fields = line.split()
        # "% time  seconds  usecs/call  calls  [errors]  syscall"
        if len(fields) >= 5 and fields[3].isdigit() and fields[-1] != "total":
            counts[fields[-1]] = int(fields[3])
    return counts


def answers(url: str) -> float:
    """Every answer the service gave so far (all routes), from /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("coupon_http_requests_total{")
    )


def during(load: Callable[[], object], measure: Callable[[], None], warm_up_s: float = 2.0) -> None:
    """Runs ``load`` in a thread and ``measure`` once it has warmed up."""
    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(warm_up_s)
    try:
        measure()
    finally:
        thread.join()


def report(label: str, profile: Profile, syscalls: dict[str, int], answered: float) -> None:
    def say(text: str) -> None:
        print(f"profile: {label}: {text}", flush=True)

    total = max(profile.samples, 1)
    owners = ", ".join(f"{owner} {count / total:.0%}" for owner, count in _sorted(profile.by_owner.items()))
    say(f"{profile.samples} samples of one worker; innermost frame: {owners}")
    say(f"frames of the service's own code on the stack: {profile.service_inclusive / total:.0%} of samples")
    for frame, count in profile.hottest:
        say(f"  {count / total:5.1%}  {frame}")
    if answered <= 0:
        say("no answers counted in the strace window")
        return
    per = {name: calls / answered for name, calls in syscalls.items() if calls / answered >= 0.05}
    line = ", ".join(f"{name} {value:.2f}" for name, value in _sorted(per.items()))
    say(f"system calls per answer (one worker, {answered:,.0f} answers): {line}")


def _sorted(items: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    return sorted(items, key=lambda item: -item[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make profile", description=__doc__)
    parser.add_argument("--routes", default="health,issue,event,user_issue")
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("PROFILE_SECONDS", "5")))
    parser.add_argument("--connections", type=int, default=int(os.environ.get("PROFILE_CONNECTIONS", "32")))
    parser.add_argument("--open-rate", type=int, default=int(os.environ.get("PROFILE_OPEN_RATE", "1400")))
    args = parser.parse_args(argv)
    routes = args.routes.split(",")
    logs = Path(tempfile.mkdtemp(prefix="coupon-profile."))
    print(f'profile: CPU yardstick, python -m timeit "sum(range(1000))": {cpu.yardstick_us():.1f} µs')
    service = ServiceProcess(
        {"ADMIN_TOKEN": TOKEN, "WORKERS": "1", "LOG_LEVEL": "WARNING"}, logs / "service.log"
    )
    service.start()
    try:
        event = open_event(service.url, f"profile {time.time():.0f}")
        _call(f"{service.url}/events/{event}/issue", "POST", {"user_id": READER})
        worker = service.worker_pids()[0]
        load_s = 2 * args.seconds + 4
        paths = {
            "health": "/health",
            "issue": f"/events/{event}/issue",
            "event": f"/events/{event}",
            "user_issue": f"/events/{event}/issues/{READER}",
        }
        plans: list[tuple[str, Callable[[], object]]] = []
        for route in routes:
            if route not in paths:
                raise SystemExit(f"profile: unknown route {route!r}; routes: {', '.join(paths)}")
            command = ["wrk", "-t1", f"-c{args.connections}", f"-d{load_s:.0f}s", service.url + paths[route]]
            if route == "issue":
                command[4:4] = ["-s", str(WRK_ISSUE)]
                command += ["--", f"profile-{route}"]
            plans.append((f"{route}, closed loop (wrk -t1 -c{args.connections})", _runner(command, logs)))
        if "issue" in routes:
            k6 = [
                str(k6_binary()),
                "run",
                "--quiet",
                "-e",
                f"BASE_URL={service.url}",
                "-e",
                f"EVENT_ID={event}",
            ]
            k6 += ["-e", f"RATE={args.open_rate}", "-e", f"DURATION={load_s:.0f}s", "-e", "P99_MS=1000000"]
            k6 += ["-e", f"USER_PREFIX=profile-open-{event}", str(K6_SCRIPT)]
            plans.append((f"issue, open model (k6 {args.open_rate}/s)", _runner(k6, logs, k6_env())))
        for label, load in plans:
            raw, traced = logs / "py-spy.txt", logs / "strace.txt"
            found: dict[str, object] = {}

            def measure(raw: Path = raw, traced: Path = traced, found: dict[str, object] = found) -> None:
                py_spy(worker, args.seconds, raw)
                before = answers(service.url)
                found["syscalls"] = strace_counts(worker, args.seconds, traced)
                found["answered"] = answers(service.url) - before

            during(load, measure)
            syscalls = found["syscalls"]
            answered = found["answered"]
            assert isinstance(syscalls, dict) and isinstance(answered, float)
            report(label, read_profile(raw), syscalls, answered)
    finally:
        service.stop()
    print(f"profile: done; the raw samples and logs are in {logs}")
    return 0


def _runner(command: list[str], logs: Path, env: dict[str, str] | None = None) -> Callable[[], object]:
    def run() -> object:
        with open(logs / "load.log", "ab") as log:
            return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    return run


if __name__ == "__main__":
    raise SystemExit(main())
