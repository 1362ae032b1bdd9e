"""Turns a load run's raw output into time series, a PNG chart and results.md."""

from __future__ import annotations

import csv
import gzip
import math
import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from loadtest import cpu

# What answers the requests: the service's processes, Redis and PostgreSQL.
SERVED = ("service", *cpu.STORAGE_GROUPS)
SERVED_TEXT = "the service (its workers, Redis and PostgreSQL)"


@dataclass
class Series:
    """Per-second request rate and latency percentiles (ms), seconds from the run's start."""

    seconds: list[float] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p95: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    start_ms: float = 0.0
    last_response_ms: float = 0.0
    last_issued_ms: float = 0.0  # the last 201 answer, where the tool records statuses


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def k6_series(csv_gz: Path) -> Series:
    """From k6's CSV output (timestamps in ms): one point per second of http_req_duration."""
    buckets: dict[int, list[float]] = defaultdict(list)
    first = math.inf
    last = last_issued = 0.0
    with gzip.open(csv_gz, "rt", newline="") as stream:
        rows = csv.reader(stream)
        header = next(rows, [])
        name_at = header.index("name") if "name" in header else None
        status_at = header.index("status")  # columns follow the system tags asked for
        for row in rows:
            if row[0] != "http_req_duration":
                continue
            if name_at is not None and row[name_at] == "event":
                continue  # a reader's request (READ_RATE): the series is the issue route's
            stamp = float(row[1])
            first = min(first, stamp)
            last = max(last, stamp)
            if row[status_at] == "201":
                last_issued = max(last_issued, stamp)
            buckets[int(stamp // 1000)].append(float(row[2]))
    series = Series(start_ms=first if buckets else 0.0, last_response_ms=last, last_issued_ms=last_issued)
    if not buckets:
        return series
    origin = min(buckets)
    for second in range(origin, max(buckets) + 1):
        values = sorted(buckets.get(second, []))
        series.seconds.append(second - origin)
        series.rate.append(len(values))
        series.p50.append(_percentile(values, 0.50))
        series.p95.append(_percentile(values, 0.95))
        series.p99.append(_percentile(values, 0.99))
    return series


def locust_series(history_csv: Path) -> Series:
    """From Locust's --csv stats history (aggregated rows, a few seconds apart)."""
    series = Series()
    with open(history_csv, newline="") as stream:
        rows = [row for row in csv.DictReader(stream) if row.get("Name") == "Aggregated"]
    if not rows:
        return series
    origin = float(rows[0]["Timestamp"])
    series.start_ms = origin * 1000
    for row in rows:
        stamp = float(row["Timestamp"])
        series.seconds.append(stamp - origin)
        series.rate.append(float(row["Requests/s"]))
        series.p50.append(_number(row.get("50%")))
        series.p95.append(_number(row.get("95%")))
        series.p99.append(_number(row.get("99%")))
        series.last_response_ms = stamp * 1000
    return series


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "", "N/A") else math.nan
    except ValueError:
        return math.nan


def issued_curve(issued_at: list[datetime], start_ms: float) -> tuple[list[float], list[int]]:
    """Cumulative coupons issued against seconds from the run's start (decision times)."""
    seconds = sorted(moment.timestamp() - start_ms / 1000 for moment in issued_at)
    if not seconds:
        return [], []
    # One point per 1/10 s keeps the line exact enough and the PNG small.
    xs: list[float] = []
    ys: list[int] = []
    step = 0.1
    edge = seconds[0]
    for count, second in enumerate(seconds, start=1):
        if second >= edge or count == len(seconds):
            xs.append(second)
            ys.append(count)
            edge = second + step
    return xs, ys


def chart(
    series: Series, issued: tuple[list[float], list[int]], quantity: int, title: str, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    top.plot(series.seconds, series.rate, color="tab:blue", label="requests/s")
    top.set_ylabel("requests/s")
    top.grid(alpha=0.3)
    latency = top.twinx()
    for values, name, style in (
        (series.p50, "p50", ":"),
        (series.p95, "p95", "--"),
        (series.p99, "p99", "-"),
    ):
        latency.plot(series.seconds, values, color="tab:red", linestyle=style, label=f"{name} ms")
    latency.set_ylabel("latency (ms)")
    handles = top.get_legend_handles_labels()[0] + latency.get_legend_handles_labels()[0]
    top.legend(handles, [h.get_label() for h in handles], loc="upper right", fontsize=8)
    top.set_title(title)
    bottom.plot(issued[0], issued[1], color="tab:green", label="issued")
    bottom.axhline(quantity, color="gray", linestyle="--", label=f"quantity {quantity:,}")
    bottom.set_ylabel("coupons issued")
    bottom.set_xlabel("seconds from the first response")
    bottom.grid(alpha=0.3)
    bottom.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cpu_section(split: cpu.Split, generator: str, answers: int) -> list[str]:
    """Where the machine's CPU went during the load: the generator, the service's workers,
    Redis, PostgreSQL and the rest, and whether the generator took more than the service."""
    lines = [
        "## CPU split over the run",
        "",
        f"CPU time from /proc over the {split.wall_s:.1f} s the {generator} run lasted; a core is one CPU"
        f" second per second ({os.cpu_count()} cores here).",
        "",
        "| processes | cores | CPU µs per answer |",
        "|---|---|---|",
    ]
    names = {
        generator: f"generator ({generator})",
        "service": "service (its workers and their manager)",
        "Redis": "Redis",
        "PostgreSQL": "PostgreSQL (every postgres process)",
    }
    for name, label in names.items():
        if name in split.cpu_s:
            lines.append(f"| {label} | {split.cores(name):.2f} | {split.us_per([name], answers):.0f} |")
        else:
            lines.append(f"| {label} | not measured (not started here or not on this machine) | |")
    other = split.other_s / split.wall_s if split.wall_s else 0.0
    busy = split.busy_s / split.wall_s if split.wall_s else 0.0
    lines += [f"| everything else | {other:.2f} | |", f"| the whole machine, busy | {busy:.2f} | |", ""]
    lines.append(cpu.generator_sentence(split, generator, SERVED, SERVED_TEXT))
    return lines


def results_markdown(facts: Mapping[str, object], cpu_lines: list[str]) -> str:
    lines = [f"# Load run {facts['started']}", ""]
    lines += [f"- command: `{facts['command']}`", f"- machine: {facts['machine']}", ""]
    lines += ["| measure | value |", "|---|---|"]
    table = facts["table"]
    if isinstance(table, Mapping):
        lines += [f"| {key} | {value} |" for key, value in table.items()]
    lines += ["", *cpu_lines]
    lines += ["", f"Verdict: **{facts['verdict']}**", ""]
    breaches = facts.get("breaches")
    if isinstance(breaches, list):
        lines += [f"- {breach}" for breach in breaches]
    lines += ["", "![requests, latency and issued over time](chart.png)", ""]
    return "\n".join(lines)
