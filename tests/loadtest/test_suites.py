"""Seconds-long runs of the load suites and the verifier, so none of them can rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
import redis
from redis.asyncio import Redis

from harness.invariants import keyspace
from loadtest.verify import verify

ROOT = Path(__file__).resolve().parents[2]


def _run(
    tmp_path: Path, service_env: dict[str, str], *args: str
) -> tuple[subprocess.CompletedProcess[str], dict]:
    env = {**os.environ, **service_env}
    done = subprocess.run(
        [sys.executable, str(ROOT / "loadtest" / "run.py"), "--results", str(tmp_path), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    runs = list(tmp_path.iterdir())
    assert len(runs) == 1, done.stdout + done.stderr
    results = (
        json.loads((runs[0] / "results.json").read_text()) if (runs[0] / "results.json").exists() else {}
    )
    return done, {"dir": runs[0], **results}


@pytest.mark.slow
def test_k6_suite_runs_verifies_and_reports(tmp_path: Path, service_env: dict[str, str]) -> None:
    done, results = _run(
        tmp_path,
        service_env,
        *("--rate", "400", "--duration", "3s", "--quantity", "600", "--p99-ms", "500", "--read-rate", "300"),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The readers' requests (READ_RATE) are counted apart from the issue route's.
    assert results["issued"] == 600 and results["sold_out"] == results["requests"] - 600
    assert results["reads"] > 0
    assert results["failed"] == 0 and results["other"] == 0 and results["passed"] is True
    report = (results["dir"] / "results.md").read_text()
    assert "Verdict: **PASS**" in report and "| over-issue | 0 |" in report
    assert "## CPU split over the run" in report
    for processes in ("generator (k6)", "service (its workers", "Redis", "PostgreSQL", "the whole machine"):
        assert f"| {processes}" in report, report
    assert "The generator (k6) took" in report
    assert "| readers: GET /events/{id} (p99 ms) |" in report
    assert (results["dir"] / "chart.png").stat().st_size > 10_000


@pytest.mark.slow
def test_k6_opening_spike_answers_everyone(tmp_path: Path, service_env: dict[str, str]) -> None:
    done, results = _run(
        tmp_path,
        service_env,
        "--scenario",
        "spike",
        "--spike-vus",
        "800",
        "--quantity",
        "300",
        "--p99-ms",
        "5000",
        "--no-chart",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert results["requests"] == 800 and results["issued"] == 300 and results["sold_out"] == 500


@pytest.mark.slow
def test_locust_suite_runs_verifies_and_reports(tmp_path: Path, service_env: dict[str, str]) -> None:
    done, results = _run(
        tmp_path,
        service_env,
        "--tool",
        "locust",
        "--rate",
        "200",
        "--duration",
        "4s",
        "--quantity",
        "300",
        "--users",
        "20",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert results["issued"] == 300 and results["other"] == 0 and results["passed"] is True
    assert results["requests"] == results["issued"] + results["sold_out"]


@pytest.mark.slow
def test_bench_measures_the_service_against_bare_sanic(service_env: dict[str, str], redis_url: str) -> None:
    env = {
        **os.environ,
        **service_env,
        "BENCH_DURATION": "1s",
        "BENCH_ROUNDS": "1",
        "BENCH_OPEN_DURATION": "2s",
        "BENCH_OPEN_RATE": "200",
    }
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.bench"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-3000:]
    for ratio in (
        "ratio GET /health ÷ bare GET: ",
        "ratio POST /events/{id}/issue ÷ bare POST: ",
        "ratio GET /events/{id} ÷ bare GET: ",
        "ratio GET /events/{id}/issues/{user} ÷ bare GET: ",
        "ratio CPU per issue answer, service (workers + Redis + PostgreSQL) ÷ bare POST: ",
    ):
        assert f"bench: {ratio}" in out, out
    floor = "bench: the bare app with one Redis decision an answer (the issue script through redis-py)"
    assert floor in out, out
    for run in ("bare POST", "service /issue", "bare POST + Redis decision"):
        assert f"bench: {run}: CPU split (cores): k6 " in out, out
        assert f"bench: {run}: The generator (k6) took" in out, out
    assert out.count("CPU yardstick") == 2 and "| measure | service | bare Sanic | ratio | target |" in out
    assert "bench: every 201 stored" in out.splitlines()[-1]
    # The bare app's decision event is its own, and gone with it.
    with redis.Redis.from_url(redis_url) as client:
        assert client.keys("bench-bare:*") == []


async def test_the_verifier_finds_each_kind_of_breach(
    pg: asyncpg.Pool, redis: Redis, database_url: str, redis_url: str
) -> None:
    event_id = await pg.fetchval(
        "INSERT INTO events (name, quantity, starts_at, status)"
        " VALUES ('broken', 3, now(), 'open') RETURNING id"
    )
    keys = (await keyspace(pg)).event(event_id)
    rows = [("a", 1), ("b", 2), ("c", 4), ("d", 5)]  # a gap in the ordinals and one over quantity
    await pg.executemany(
        "INSERT INTO coupon_issues (event_id, user_id, ordinal, issued_at) VALUES ($1, $2, $3, now())",
        [(event_id, user, ordinal) for user, ordinal in rows],
    )
    await redis.set(keys.seq, 4)
    await redis.hset(keys.users, mapping={"a": "1:0", "b": "2:0", "c": "3:0", "d": "5:0"})

    verdict = await verify(event_id, asked=10, database_url=database_url, redis_url=redis_url)

    text = " | ".join(verdict.breaches)
    assert not verdict.ok
    assert "over-issue" in text and "ordinals are not 1..4" in text
    assert "issued 4 != min(quantity 3" in text and "disagree" in text


async def test_the_verifier_passes_a_clean_event(
    pg: asyncpg.Pool, redis: Redis, database_url: str, redis_url: str
) -> None:
    event_id = await pg.fetchval(
        "INSERT INTO events (name, quantity, starts_at, status)"
        " VALUES ('clean', 5, now(), 'open') RETURNING id"
    )
    await pg.executemany(
        "INSERT INTO coupon_issues (event_id, user_id, ordinal, issued_at) VALUES ($1, $2, $3, now())",
        [(event_id, "a", 1), (event_id, "b", 2)],
    )
    keys = (await keyspace(pg)).event(event_id)
    await redis.set(keys.seq, 2)
    await redis.hset(keys.users, mapping={"a": "1:0", "b": "2:0"})
    verdict = await verify(event_id, asked=2, database_url=database_url, redis_url=redis_url)
    assert verdict.ok, verdict.breaches
