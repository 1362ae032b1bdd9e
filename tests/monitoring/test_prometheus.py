"""A real Prometheus (Debian's package) scrapes a running service and the Redis and
PostgreSQL exporters; every dashboard panel and every alert rule is evaluated through its
HTTP API after a short load, and the Redis-unreachable alert fires when Redis is killed."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from harness.api import Api, burst
from harness.database import fresh_database
from harness.ports import free_port
from harness.redis_server import RedisServer
from harness.service_process import ServiceProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "ops" / "prometheus" / "rules").glob("*.yml"))
DASHBOARDS = sorted((ROOT / "ops" / "grafana" / "dashboards").glob("*.json"))
# Grafana's variables, as a dashboard's default view would fill them in.
VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "5m", "$event": ".+", "$pid": ".+"}
BINARIES = ("prometheus", "prometheus-redis-exporter", "prometheus-postgres-exporter")


@dataclass
class Stack:
    prometheus: str
    service: ServiceProcess
    redis: RedisServer


def _wait_http(url: str, timeout_s: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout_s}s")


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, start_service: Callable[..., ServiceProcess], database_url: str
) -> Iterator[Stack]:
    # A database of its own: the per-event gauges (and the over-issue alert) read every
    # open event, and other tests write rows for events they make up.
    database_url = database_url.rsplit("/", 1)[0] + "/coupons_monitoring"
    asyncio.run(fresh_database(database_url))
    missing = [name for name in BINARIES if shutil.which(name) is None]
    assert not missing, f"{missing} not installed: make tools (apt-get install -y {' '.join(missing)})"
    folder = tmp_path_factory.mktemp("monitoring")
    redis_server = RedisServer(folder, aof=False).start()
    service = start_service(REDIS_URL=redis_server.url, DATABASE_URL=database_url)
    ports = {name: free_port() for name in ("prometheus", "redis", "postgres")}
    processes = [
        subprocess.Popen(
            [
                "prometheus-redis-exporter",
                f"-redis.addr=redis://127.0.0.1:{redis_server.port}",
                f"-web.listen-address=127.0.0.1:{ports['redis']}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            ["prometheus-postgres-exporter", f"--web.listen-address=127.0.0.1:{ports['postgres']}"],
            env={"DATA_SOURCE_NAME": database_url + "?sslmode=disable", "PATH": "/usr/bin:/bin"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rule) for rule in RULES],
        "scrape_configs": [
            {"job_name": "coupon", "static_configs": [{"targets": [f"127.0.0.1:{service.port}"]}]},
            {"job_name": "redis", "static_configs": [{"targets": [f"127.0.0.1:{ports['redis']}"]}]},
            {"job_name": "postgres", "static_configs": [{"targets": [f"127.0.0.1:{ports['postgres']}"]}]},
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(folder / "prometheus.log", "wb")
    processes.append(
        subprocess.Popen(
            [
                "prometheus",
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    )
    log.close()
    url = f"http://127.0.0.1:{ports['prometheus']}"
    try:
        _wait_http(url + "/-/ready")
        yield Stack(url, service, redis_server)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        service.stop()
        redis_server.kill()


async def _query(http: aiohttp.ClientSession, stack: Stack, expr: str) -> dict[str, Any]:
    async with http.get(stack.prometheus + "/api/v1/query", params={"query": expr}) as response:
        body = await response.json()
    assert body["status"] == "success", (expr, body)
    return body["data"]  # type: ignore[no-any-return]


async def _wait_for(http: aiohttp.ClientSession, stack: Stack, expr: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not (await _query(http, stack, expr))["result"]:
        assert time.monotonic() < deadline, f"{expr} returned nothing in {timeout_s}s"
        await asyncio.sleep(0.5)


def _panel_queries() -> list[tuple[str, str]]:
    queries = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        panels = [p for row in dashboard["panels"] for p in [row, *row.get("panels", [])]]
        for panel in panels:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in VARIABLES.items():
                    expr = expr.replace(variable, value)
                queries.append((f"{path.stem}: {panel['title']}", expr))
    return queries


def _rules() -> list[dict[str, Any]]:
    groups = [group for path in RULES for group in yaml.safe_load(path.read_text())["groups"]]
    return [rule for group in groups for rule in group["rules"]]


_METRIC = re.compile(r"\b((?:coupon|redis|pg)_[a-z0-9_]+|up)\b(?!\s*\()")


async def test_every_panel_and_alert_expression_is_valid_and_has_data(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    assert len(DASHBOARDS) >= 2 and RULES
    api = Api(stack.service.url, http)
    # A short load with every kind of answer, then an admin sync.
    event_id = await api.open_event(400)
    for wave in range(6):
        await burst(api, event_id, [f"p{wave}-{n}" for n in range(150)] + [f"p0-{n}" for n in range(20)])
        await api.request("POST", f"/events/{event_id}/issue", raw=b"{broken")
        await asyncio.sleep(0.5)
    assert (await api.sync(event_id)).status == 200
    # Two scrapes after the load at least, so that rate() over it has data.
    await _wait_for(http, stack, f'coupon_event_stored_rows{{event="{event_id}"}} == 400', 30)
    await _wait_for(http, stack, 'count(up{job=~"coupon|redis|postgres"} == 1) == 3', 30)
    await asyncio.sleep(3)

    queries = _panel_queries()
    assert len(queries) >= 20, queries
    empty = [(title, expr) for title, expr in queries if not (await _query(http, stack, expr))["result"]]
    assert not empty, f"panels without data: {empty}"

    rules = _rules()
    assert {rule["alert"] for rule in rules} >= {
        "CouponServiceDown",
        "RedisUnreachable",
        "CouponErrorRatioHigh",
        "CouponLatencyP99High",
        "CouponBufferBacklogGrowing",
        "CouponDriftPastFlushWindow",
        "CouponOverIssued",
    }
    for rule in rules:
        await _query(http, stack, rule["expr"])  # valid PromQL, as Prometheus itself parses it
        for metric in set(_METRIC.findall(rule["expr"])):
            found = await _query(http, stack, f"count({metric})")
            assert found["result"], f"{rule['alert']}: no series {metric}"
    async with http.get(stack.prometheus + "/api/v1/rules") as response:
        loaded = await response.json()
    health = {r["name"]: r["health"] for g in loaded["data"]["groups"] for r in g["rules"]}
    assert set(health) == {rule["alert"] for rule in rules} and set(health.values()) == {"ok"}, health
    firing = (await _query(http, stack, 'ALERTS{alertstate="firing"}'))["result"]
    assert not firing, f"alerts firing on a healthy service: {firing}"


async def test_the_redis_unreachable_alert_fires_when_redis_is_killed(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    stack.redis.kill()
    await _wait_for(http, stack, 'ALERTS{alertname="RedisUnreachable", alertstate="firing"}', 60)
    api = Api(stack.service.url, http)
    assert (await api.request("GET", "/ready")).status == 503
