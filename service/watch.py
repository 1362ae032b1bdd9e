"""`couponctl watch`: one event's sale, live in the terminal, over the admin API only.

Polls ``GET /admin/events/{id}/live`` a few times a second. The service gives cumulative
counters (answers by outcome, the issue route's latency buckets, summed over its workers);
rates and quantiles over the last seconds are their differences between polls, computed
here, so watching costs the issue path nothing. An outage of Redis, PostgreSQL or the
service itself is shown, never fatal; Ctrl-C ends it with exit status 0.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .client import AdminClient, ApiError

WINDOW_S = 3.0  # rates and quantiles over this many seconds
SETTLE_S = 10.0  # --until-sold-out waits at most this long for the last rows to be stored
OUTCOMES = (
    ("issued", "issued"),
    ("already_issued", "already issued"),
    ("sold_out", "sold out"),
    ("not_open", "not open"),
    ("unavailable", "unavailable"),
)


@dataclass
class _Sample:
    at: float  # time.monotonic()
    answers: dict[str, int]
    buckets: list[tuple[float, int]]  # (upper bound, cumulative count)


@dataclass
class WatchState:
    """What the view shows: the last live answer, the samples of the last seconds, and the
    failure of the last poll, if it failed."""

    event_id: int
    url: str
    live: dict[str, Any] | None = None
    failure: str | None = None
    failing_since: float | None = None
    samples: deque[_Sample] = field(default_factory=deque)

    def observe(self, live: dict[str, Any], now: float) -> None:
        self.live, self.failure, self.failing_since = live, None, None
        answers = {name: int(count) for name, count in live["answers"].items()}
        buckets = [
            (math.inf if bound == "+Inf" else float(bound), int(count))
            for bound, count in live["issue_seconds"]["buckets"]
        ]
        if self.samples and any(answers.get(k, 0) < v for k, v in self.samples[-1].answers.items()):
            self.samples.clear()  # the service restarted: its counters began again
        self.samples.append(_Sample(now, answers, buckets))
        while len(self.samples) > 2 and now - self.samples[1].at >= WINDOW_S:
            self.samples.popleft()

    def failed(self, line: str, now: float) -> None:
        self.failure = line
        if self.failing_since is None:
            self.failing_since = now

    def rates(self) -> dict[str, float] | None:
        """Answers per second by outcome over the window, or None before two samples."""
        if len(self.samples) < 2:
            return None
        first, last = self.samples[0], self.samples[-1]
        elapsed = last.at - first.at
        if elapsed <= 0:
            return None
        return {
            name: (last.answers.get(name, 0) - first.answers.get(name, 0)) / elapsed for name, _ in OUTCOMES
        }

    def quantile(self, q: float) -> float | None:
        """The issue route's q-quantile (seconds) over the window, interpolated within its
        bucket as Prometheus's histogram_quantile does; None with no answers in the window."""
        if len(self.samples) < 2:
            return None
        first, last = self.samples[0], self.samples[-1]
        before = dict(first.buckets)
        counts = [(bound, count - before.get(bound, 0)) for bound, count in last.buckets]
        return bucket_quantile(q, counts)


def bucket_quantile(q: float, buckets: list[tuple[float, int]]) -> float | None:
    """histogram_quantile over cumulative (upper bound, count) buckets sorted by bound."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bound: that bound, as Prometheus says
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def _moment(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.2f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _check(ok: bool | None) -> Text:
    if ok is None:
        return Text("unknown", style="yellow")
    return Text("ready", style="green") if ok else Text("DOWN", style="bold red")


def render(state: WatchState, now: float) -> RenderableType:
    live = state.live
    title = Text(f"event {state.event_id}", style="bold")
    if live is not None:
        report = live["report"]
        title.append(f"  {report['name']}  ", style="bold")
        title.append(report["status"], style="green" if report["status"] == "open" else "yellow")
        if report.get("redis_status") not in (None, report["status"]):
            title.append(f" (Redis: {report['redis_status']})", style="yellow")
    title.append(f"   {state.url}", style="dim")
    lines: list[RenderableType] = [title]
    if state.failure is not None:
        since = now - (state.failing_since or now)
        lines.append(Text(f"SERVICE: {state.failure} (for {since:.0f} s; retrying)", style="bold red"))
    if live is None:
        lines.append(Text("waiting for the first answer...", style="dim"))
        return Group(*lines)
    report = live["report"]
    quantity, issued = report["quantity"], report["issued_redis"]
    note = "" if issued is None else f"  {100 * issued / quantity:.1f}%"
    if issued is None and report["status"] == "closed":
        # Closing stored every issue Redis held, then deleted its keys: the rows are the count.
        issued, note = report["rows_stored"], "  (stored)"
    elif issued is None:
        note = "  (Redis cannot say)"
    bar = Table.grid(padding=(0, 2))
    bar.add_column(style="dim", min_width=11)
    bar.add_row(
        "issued",
        ProgressBar(total=quantity, completed=issued or 0, width=40),
        f"{_count(issued)} / {quantity:,}{note}",
    )
    lines.append(bar)

    figures = Table.grid(padding=(0, 2))
    figures.add_column(style="dim")
    figures.add_column()
    rates = state.rates()
    answers = Table.grid(padding=(0, 2))
    for _ in OUTCOMES:
        answers.add_column(justify="right")
    answers.add_row(*(Text(label, style="dim") for _, label in OUTCOMES))
    answers.add_row(*("-" if rates is None else f"{rates[name]:,.0f}" for name, _ in OUTCOMES))
    figures.add_row("answers/s", answers)
    figures.add_row("issue route", f"p50 {_ms(state.quantile(0.5))}  p99 {_ms(state.quantile(0.99))}")
    drift = "-" if report["drift"] is None and report["status"] == "closed" else _count(report["drift"])
    figures.add_row(
        "rows", f"stored {report['rows_stored']:,}  buffered {report['rows_buffered']:,}  drift {drift}"
    )
    checks = live["checks"] if state.failure is None else {}
    readiness = Text()
    readiness.append("Redis ")
    if checks.get("redis") and not (checks.get("scripts") and checks.get("verified")):
        # It answers, but decides nothing until verified against PostgreSQL (after a restart).
        readiness.append("verifying", style="yellow")
    else:
        readiness.append_text(_check(checks.get("redis")))
    readiness.append("   PostgreSQL ")
    readiness.append_text(_check(checks.get("postgres")))
    figures.add_row("readiness", readiness)
    first, sold_out = _moment(live["first_issued_at"]), _moment(live["sold_out_at"])
    figures.add_row("first issue", "-" if first is None else first.strftime("%H:%M:%S.%f")[:-3] + " UTC")
    if sold_out is not None:
        took = "" if first is None else f", {(sold_out - first).total_seconds():.3f} s after the first issue"
        figures.add_row("sold out", Text(sold_out.strftime("%H:%M:%S.%f")[:-3] + " UTC" + took, style="bold"))
    elif issued is not None and issued >= quantity:
        figures.add_row("sold out", "yes (its moment shows once the last coupon is stored)")
    else:
        figures.add_row("sold out", "-")
    lines.append(figures)
    lines.append(
        Text(
            f"answers/s, p50, p99: the last {WINDOW_S:g} s, this host's workers, all events",
            style="dim",
        )
    )
    lines.append(Text(f"as of {live['now'][11:23]} UTC · Ctrl-C stops", style="dim"))
    return Group(*lines)


def _finished(state: WatchState, until_sold_out: bool, sold_out_seen: float | None, now: float) -> bool:
    live = state.live
    if live is None or state.failure is not None:
        return False
    report = live["report"]
    if report["status"] == "closed":
        return True
    if not until_sold_out or sold_out_seen is None:
        return False
    settled = report["drift"] == 0 and live["sold_out_at"] is not None
    return settled or now - sold_out_seen >= SETTLE_S


def watch(client: AdminClient, event_id: int, interval_s: float, until_sold_out: bool) -> int:
    """Watch until Ctrl-C, the event closes, or (``until_sold_out``) it sold out and every
    coupon is stored. The first poll must succeed (a wrong URL, token or event id ends it
    with one line); later failures are shown until the service answers again."""
    path = f"/admin/events/{event_id}/live"
    timeout_s = max(2.0, 4 * interval_s)
    state = WatchState(event_id, client.url)
    sold_out_seen: float | None = None
    try:
        state.observe(client.call("GET", path, timeout_s=timeout_s), time.monotonic())
        with Live(render(state, time.monotonic()), auto_refresh=False, transient=False) as screen:
            while True:
                started = time.monotonic()
                try:
                    state.observe(client.call("GET", path, timeout_s=timeout_s), started)
                except ApiError as exc:
                    if exc.status in (401, 403, 404):
                        raise  # not an outage: the token or the event is wrong
                    state.failed(str(exc), started)
                now = time.monotonic()
                live = state.live
                if sold_out_seen is None and live is not None and state.failure is None:
                    issued = live["report"]["issued_redis"]
                    if issued is not None and issued >= live["report"]["quantity"]:
                        sold_out_seen = now
                screen.update(render(state, now), refresh=True)
                if _finished(state, until_sold_out, sold_out_seen, now):
                    return 0
                time.sleep(max(0.0, interval_s - (time.monotonic() - started)))
    except KeyboardInterrupt:
        return 0
