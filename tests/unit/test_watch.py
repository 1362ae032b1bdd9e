"""What `couponctl watch` computes from the counters it polls: rates and quantiles over the
last seconds, as Prometheus would from the same samples."""

from __future__ import annotations

import math
from typing import Any

import pytest

from service.watch import WINDOW_S, WatchState, bucket_quantile, render

BOUNDS = (0.001, 0.01, 0.1, math.inf)


def live(answers: dict[str, int], buckets: tuple[int, ...]) -> dict[str, Any]:
    return {
        "report": {"name": "sale", "status": "open", "quantity": 100, "issued_redis": 10},
        "answers": answers,
        "issue_seconds": {
            "buckets": [["+Inf" if math.isinf(b) else b, n] for b, n in zip(BOUNDS, buckets, strict=True)],
            "count": buckets[-1],
            "sum": 0.0,
        },
    }


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.5, 0.001 + (0.01 - 0.001) * (50 - 10) / 80),
        (0.1, 0.001),
        (0.05, 0.0005),
        (0.99, 0.01 + 0.09 * 9 / 10),
    ],
)
def test_bucket_quantile_interpolates_within_the_bucket_as_prometheus_does(q: float, expected: float) -> None:
    assert bucket_quantile(q, [(0.001, 10), (0.01, 90), (0.1, 100), (math.inf, 100)]) == pytest.approx(
        expected
    )


def test_bucket_quantile_past_the_last_bound_is_that_bound_and_nothing_is_none() -> None:
    assert bucket_quantile(0.99, [(0.001, 0), (0.01, 1), (math.inf, 100)]) == 0.01
    assert bucket_quantile(0.5, [(0.001, 0), (math.inf, 0)]) is None


def test_rates_and_quantiles_cover_only_the_last_window_of_samples() -> None:
    state = WatchState(1, "http://x")
    state.observe(live({"issued": 0, "sold_out": 0}, (0, 0, 0, 0)), 100.0)
    assert state.rates() is None and state.quantile(0.5) is None
    # 1 s later: 300 issued, all answered within 1 ms.
    state.observe(live({"issued": 300, "sold_out": 0}, (300, 300, 300, 300)), 101.0)
    assert state.rates() == pytest.approx(
        {"issued": 300, "already_issued": 0, "sold_out": 0, "not_open": 0, "unavailable": 0}
    )
    assert state.quantile(0.99) <= 0.001
    # Polled every 0.5 s; then only slow sold-out answers: the fast ones have left the window.
    at = 101.0
    while at < 101.0 + WINDOW_S + 1:
        at += 0.5
        state.observe(live({"issued": 300, "sold_out": 0}, (300, 300, 300, 300)), at)
    state.observe(live({"issued": 300, "sold_out": 50}, (300, 300, 350, 350)), at + 0.5)
    rates = state.rates()
    assert rates is not None and rates["issued"] == 0
    assert 50 / (WINDOW_S + 0.5) <= rates["sold_out"] <= 50 / WINDOW_S
    quantile = state.quantile(0.5)
    assert quantile is not None and 0.01 < quantile <= 0.1


def test_counters_that_go_back_mean_a_restart_and_start_the_window_again() -> None:
    state = WatchState(1, "http://x")
    state.observe(live({"issued": 500}, (500, 500, 500, 500)), 10.0)
    state.observe(live({"issued": 3}, (3, 3, 3, 3)), 11.0)
    assert state.rates() is None  # one sample since the restart: no negative rate


def test_a_failed_poll_is_shown_with_the_last_figures() -> None:
    state = WatchState(7, "http://x")
    figures = live({"issued": 1}, (1, 1, 1, 1)) | {
        "first_issued_at": None,
        "sold_out_at": None,
        "checks": {"redis": True, "scripts": True, "verified": True, "postgres": True},
        "now": "2026-12-01T20:00:00.000000Z",
    }
    figures["report"] |= {"rows_stored": 10, "rows_buffered": 0, "drift": 0}
    state.observe(figures, 1.0)
    state.failed("cannot reach the service at http://x: refused", 2.0)
    from rich.console import Console

    console = Console(width=80, record=True)
    console.print(render(state, 5.0))
    text = console.export_text()
    assert "SERVICE: cannot reach the service at http://x: refused (for 3 s; retrying)" in text
    assert "10 / 100" in text and "Redis unknown" in text
