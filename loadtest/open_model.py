"""One open-model run for `make bench`: k6 offers a constant rate of issue requests, each from
a new user, and the run reports the answers and the CPU each group of processes spent."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.durations import seconds
from loadtest import cpu
from loadtest.generators import (
    K6_SCRIPT,
    K6_THRESHOLDS_CROSSED,
    K6Result,
    ToolFailed,
    k6_binary,
    k6_env,
    parse_k6_summary,
)

GENERATOR = "k6"


@dataclass(frozen=True)
class OpenRun:
    label: str
    code: int  # k6's exit code: 0, or 99 when the script's thresholds were crossed
    result: K6Result
    split: cpu.Split
    served: tuple[str, ...]  # the groups of processes that answered: what a request costs
    achieved: float  # answers per second of the planned duration

    @property
    def us_per_answer(self) -> float:
        return self.split.us_per(self.served, self.result.requests)


def open_model(
    label: str,
    url: str,
    event_id: int,
    *,
    rate: int,
    duration: str,
    groups: Mapping[str, cpu.Finder],
    served: tuple[str, ...],
    what: str,
    logs: Path,
) -> OpenRun:
    """``served``: the groups of processes that answer (``what`` names them for a reader)."""
    slug = label.replace(" ", "-").replace("/", "")
    summary, log = logs / f"k6-{slug}.json", logs / f"k6-{slug}.log"
    command = [
        str(k6_binary()),
        "run",
        "--quiet",
        "--summary-export",
        str(summary),
        "-e",
        f"BASE_URL={url}",
        "-e",
        f"EVENT_ID={event_id}",
        "-e",
        f"RATE={rate}",
        "-e",
        f"DURATION={duration}",
        # Latency is measured here, not judged: the threshold only marks the run.
        "-e",
        "P99_MS=1000000",
        "-e",
        f"USER_PREFIX=bench-{event_id}-{slug}",
        str(K6_SCRIPT),
    ]
    with open(log, "wb") as output, cpu.Meter(groups, generator=GENERATOR) as meter:
        code = subprocess.call(command, env=k6_env(), stdout=output, stderr=subprocess.STDOUT)
    if code not in (0, K6_THRESHOLDS_CROSSED):
        raise ToolFailed(f"k6 exited with {code} on {label}; see {log}")
    result = parse_k6_summary(summary)
    run = OpenRun(label, code, result, meter.split, served, result.requests / seconds(duration))

    def say(text: str) -> None:
        print(f"bench: {label}: {text}", flush=True)

    say(
        f"{run.achieved:,.0f} req/s achieved of {rate:,} offered, {result.dropped:,} dropped iterations,"
        f" {result.failed:,} failed, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms"
    )
    measured = [name for name in served if name in run.split.cpu_s]
    missing = [name for name in served if name not in run.split.cpu_s]
    say(
        f"CPU {run.us_per_answer:.0f} µs per answer ({' + '.join(measured)}"
        + (f"; not measured: {', '.join(missing)}, not on this machine" if missing else "")
        + ")"
    )
    say(f"CPU split (cores): {run.split.line()}")
    share = run.split.cpu_s[GENERATOR] / run.split.busy_s if run.split.busy_s else 0.0
    say(
        cpu.generator_sentence(run.split, GENERATOR, measured, what)
        + f" k6 took {share:.0%} of the machine's busy CPU."
    )
    return run
