"""The compose stack for real: the images `make images` builds (docker/local/images.sh), the
stack of docker-compose.yml with docker/local/compose.local.yml, brought up with `--wait`
under a project name and port of its own, then, through the containerised nginx:

- a burst: exact counts, 410 once sold out, every row in the container's PostgreSQL, once;
- blue -> green -> blue with ops/bluegreen/switch.sh (compose mode) under k6 load at 1,000
  req/s or more (loadtest/blue_green.py's k6 run): no failed request, every issue stored;
- the image runs as non-root and its HEALTHCHECK goes healthy, unhealthy while Redis is
  stopped, and healthy again;
- Prometheus scrapes the service and both exporters, its rules loaded;
- each container's CPU and memory limits, read back from Docker, are the compose file's;
- `docker compose down -v` leaves no container, volume or network of the project.

Ends with `containers: requests=N failed=0 switches=2 rows=N` (rows: those of the event the
load issued). Skipped, saying why, only where Docker cannot run at all (images.sh exits 3).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import compose
import pytest
import yaml

from harness.api import Api, burst, connector
from harness.ports import free_port
from loadtest.blue_green import Outcome, read_k6, start_k6

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "docker" / "local" / "images.sh"
SWITCH = ROOT / "ops" / "bluegreen" / "switch.sh"
COMPOSE_BIN = Path(compose.__file__).parent / "docker-compose"
PROJECT_PREFIX = "coupontest"
IMAGE = "coupon-service:local"
# green's profile: without it `down` leaves the standby colour, if it runs, and the network.
DOWN = ("--profile", "green", "down", "-v", "--remove-orphans")
# Docker's healthchecks: every 5 s, unhealthy after 3 failures in a row.
HEALTH_TIMEOUT_S = 90

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    nginx_url: str
    work_dir: Path
    results: dict[str, int] = field(default_factory=dict)

    @property
    def compose(self) -> list[str]:
        return [
            str(COMPOSE_BIN),
            "-f",
            str(ROOT / "docker-compose.yml"),
            "-f",
            str(ROOT / "docker" / "local" / "compose.local.yml"),
            "-p",
            self.project,
        ]

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*self.compose, *args], env=self.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"docker compose {' '.join(args)}: exit {done.returncode}\n{done.stderr[-3000:]}"
            )
        return done

    def container(self, service: str) -> str:
        name = self.run("ps", "-a", "-q", service).stdout.strip()
        assert name, f"no container of {service}"
        return name

    def psql(self, sql: str) -> list[list[str]]:
        """Rows of a query run by psql inside the PostgreSQL container."""
        done = self.run("exec", "-T", "postgres", "psql", "-U", "coupons", "-d", "coupons", "-tAc", sql)
        return [line.split("|") for line in done.stdout.splitlines() if line]

    def wait_stored(self, event_id: int, issued: int) -> tuple[int, int, int]:
        """(rows, distinct users, highest ordinal) of the event once `issued` rows are stored,
        or after 30 s."""
        deadline = time.monotonic() + 30
        while True:
            ((rows, users, top),) = self.psql(
                "SELECT count(*), count(DISTINCT user_id), coalesce(max(ordinal), 0) "
                f"FROM coupon_issues WHERE event_id = {event_id}"
            )
            if int(rows) == issued or time.monotonic() > deadline:
                return int(rows), int(users), int(top)
            time.sleep(0.5)

    def couponctl(self, *args: str) -> str:
        # The admin API is not served through nginx: ask the colour itself, from inside it.
        return self.run("exec", "-T", "blue", "couponctl", "--url", "http://127.0.0.1:8000", *args).stdout

    def open_event(self, name: str, quantity: int) -> int:
        return int(self.couponctl("create", name, str(quantity), "--open", "--quiet").strip())

    def switch(self, colour: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SWITCH), colour], env=self.env, capture_output=True, text=True, timeout=300, cwd=ROOT
        )


def docker(*args: str, timeout: float = 60) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
    return done.stdout


def inspect(name: str) -> dict[str, Any]:
    return json.loads(docker("inspect", name))[0]  # type: ignore[no-any-return]


def health(name: str) -> str:
    return str(inspect(name)["State"].get("Health", {}).get("Status", "none"))


def wait_health(name: str, wanted: str, timeout_s: float = HEALTH_TIMEOUT_S) -> float:
    started = time.monotonic()
    while (status := health(name)) != wanted:
        assert time.monotonic() - started < timeout_s, (
            f"{name} still {status}, not {wanted}, after {timeout_s} s"
        )
        time.sleep(1)
    return time.monotonic() - started


def project_leftovers(project: str) -> dict[str, list[str]]:
    label = f"label=com.docker.compose.project={project}"
    return {
        "containers": docker("ps", "-a", "-q", "--filter", label).split(),
        "volumes": docker("volume", "ls", "-q", "--filter", label).split(),
        "networks": docker("network", "ls", "-q", "--filter", label).split(),
    }


def _images() -> bool:
    """Build what is missing (seconds when nothing changed); True if dockerd was started here.
    Exit 3 of images.sh: Docker cannot run on this machine at all, so the module is skipped."""
    answered = (
        bool(shutil.which("docker"))
        and subprocess.run(["docker", "version"], capture_output=True).returncode == 0
    )
    done = subprocess.run([str(IMAGES)], capture_output=True, text=True, timeout=1500, cwd=ROOT)
    if done.returncode == 3:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, (
        f"docker/local/images.sh failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return not answered


def _remove_leftover_stacks() -> None:
    """A run that was killed leaves its stack holding the stack's subnet: remove it."""
    label = "label=com.docker.compose.project"
    projects = {
        name
        for kind in ("ps -a", "network ls", "volume ls")
        for name in docker(
            *kind.split(), "--filter", label, "--format", '{{.Label "com.docker.compose.project"}}'
        ).split()
        if name.startswith(PROJECT_PREFIX)
    }
    for project in sorted(projects):
        leftovers = project_leftovers(project)
        for kind, command in (
            ("containers", "rm -f"),
            ("networks", "network rm"),
            ("volumes", "volume rm -f"),
        ):
            if leftovers[kind]:
                docker(*command.split(), *leftovers[kind])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    started_daemon = _images()
    _remove_leftover_stacks()
    work_dir = tmp_path_factory.mktemp("containers")
    (work_dir / "upstream").mkdir()
    # All the test's load comes from this host's one address: no per-IP issue limit (the
    # native deploy test renders nginx the same way); and no access log, which through
    # Docker's log driver costs a fifth of a CPU at this load on a 2-core machine.
    (work_dir / "no_issue_limit.conf").write_text("# no per-IP issue limit in this test\n")
    http_conf = (ROOT / "nginx" / "mode" / "http.conf").read_text()
    assert "access_log /dev/stdout coupon;" in http_conf
    (work_dir / "http.conf").write_text(
        http_conf.replace("access_log /dev/stdout coupon;", "access_log off;")
    )
    port = free_port()
    project = f"{PROJECT_PREFIX}{os.getpid()}"
    env = {
        **os.environ,
        "ADMIN_TOKEN": "containers-test-admin-token-0123456789",
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "NGINX_PORT": str(port),
        "UPSTREAM_DIR": str(work_dir / "upstream"),
        "ISSUE_LIMIT_CONF": str(work_dir / "no_issue_limit.conf"),
        "NGINX_HTTP_CONF": str(work_dir / "http.conf"),
        # One worker a colour, as the native deploy test runs them: more requests per decision.
        "WORKERS": "1",
        "MTU": subprocess.run(
            [str(IMAGES), "mtu"], capture_output=True, text=True, check=True
        ).stdout.strip(),
        "DEPLOY_MODE": "compose",
        "NGINX_URL": f"http://127.0.0.1:{port}",
        "READY_TIMEOUT_S": "90",
        "COUPON_TAG": "local",
    }
    result = Stack(project, env, f"http://127.0.0.1:{port}", work_dir)
    env["COMPOSE"] = shlex.join(result.compose)
    try:
        up = result.run("up", "-d", "--wait", "--wait-timeout", "240", timeout=300, check=False)
        if up.returncode != 0:
            logs = result.run("logs", "--no-color", "--tail", "30", check=False).stdout
            raise AssertionError(f"up --wait failed:\n{up.stderr[-3000:]}\n{logs[-6000:]}")
        yield result
    finally:
        subprocess.run(["docker", "rm", "-f", f"{project}-probe"], capture_output=True)
        result.run(*DOWN, "-t", "30", timeout=300, check=False)
        if started_daemon:
            subprocess.run([str(IMAGES), "stop"], capture_output=True, timeout=120)


async def test_burst_through_nginx_exact_counts_and_every_row_stored(stack: Stack) -> None:
    quantity = 500
    event_id = stack.open_event("containers burst", quantity)
    users = [f"burst-{n}" for n in range(1500)]
    async with aiohttp.ClientSession(
        connector=connector(500), timeout=aiohttp.ClientTimeout(total=60)
    ) as http:
        api = Api(stack.nginx_url, http)
        replies = await burst(api, event_id, users)
        statuses = Counter(reply.status for reply in replies)
        assert statuses[201] == quantity, statuses
        assert set(statuses) <= {201, 410}, (
            statuses,
            [r.body for r in replies if r.status not in (201, 410)][:3],
        )
        ordinals = sorted(reply.body["ordinal"] for reply in replies if reply.status == 201)
        assert ordinals == list(range(1, quantity + 1))
        late = await api.issue(event_id, "burst-late")
        assert (late.status, late.code) == (410, "sold_out"), late

    assert stack.wait_stored(event_id, quantity) == (quantity, quantity, quantity)
    stored = {
        user: int(ordinal)
        for user, ordinal in stack.psql(
            f"SELECT user_id, ordinal FROM coupon_issues WHERE event_id = {event_id}"
        )
    }
    assert stored == {
        reply.body["user_id"]: reply.body["ordinal"] for reply in replies if reply.status == 201
    }
    stack.results["burst_rows"] = len(stored)


def test_blue_green_blue_under_k6_load_no_request_fails(stack: Stack) -> None:
    rate, duration, quantity = 1100, "45s", 40_000
    event_id = stack.open_event("containers blue/green", quantity)
    outcome = Outcome(event_id=event_id, quantity=quantity)
    # VUs made up front: while the load moves to a colour that just started, answers slow down
    # for a moment and k6 needs more VUs at once than it can make without skipping requests.
    k6 = start_k6(stack.nginx_url, event_id, rate, duration, stack.work_dir, pre_vus=400)
    switch_log = []
    try:
        time.sleep(5)
        for colour in ("green", "blue"):
            done = stack.switch(colour)
            switch_log.append(done.stdout + done.stderr)
            assert done.returncode == 0, f"switch to {colour} failed:\n{switch_log[-1]}"
            assert k6.poll() is None, "the load ended before the switch did: lengthen the duration"
            outcome.switches += 1
            time.sleep(1)
        code = k6.wait(timeout=180)
    finally:
        if k6.poll() is None:
            k6.kill()
            k6.wait()
    read_k6(stack.work_dir, outcome)
    load_s = 45.0
    rps = outcome.requests / load_s
    k6_log = (stack.work_dir / "k6.log").read_text()[-2000:]
    assert outcome.failed == 0 and outcome.statuses["other"] == 0, (outcome.statuses, k6_log)
    assert code == 0, k6_log
    assert rps >= 1000, f"{rps:.0f} req/s achieved, below 1,000 (dropped {outcome.dropped}): {k6_log}"
    # Both colours took traffic: the issues each answered, as the stack's Prometheus scraped them.
    served = {
        colour: prometheus(
            stack, f'max_over_time(coupon_http_requests_total{{route="issue",instance="{colour}:8000"}}[5m])'
        )
        for colour in ("blue", "green")
    }
    assert all(served.values()), served
    assert not (Path(stack.env["UPSTREAM_DIR"]) / "active-green").exists(), "green is still marked active"

    issued = outcome.statuses["issued"]
    assert issued == min(quantity, outcome.requests), outcome.statuses
    assert stack.wait_stored(event_id, issued) == (issued, issued, issued)
    stack.results.update(
        requests=outcome.requests, failed=outcome.failed, switches=outcome.switches, rows=issued
    )


def test_image_runs_as_non_root_and_its_healthcheck_follows_redis(stack: Stack) -> None:
    config = inspect(IMAGE)["Config"]
    assert config["User"] == "10001:10001"
    assert any("/ready" in part for part in config["Healthcheck"]["Test"]), config["Healthcheck"]
    blue = stack.container("blue")
    assert stack.run("exec", "-T", "blue", "id", "-u").stdout.strip() == "10001"
    # The image's own HEALTHCHECK (compose gives blue its own, the same): a container of the
    # image as it is, on the stack's network.
    network = f"{stack.project}_default"
    probe = f"{stack.project}-probe"
    password = stack.env["POSTGRES_PASSWORD"]
    docker(
        "run", "-d", "--name", probe, "--network", network,
        "-e", "REDIS_URL=redis://redis:6379/0",
        "-e", f"DATABASE_URL=postgresql://coupons:{password}@postgres:5432/coupons",
        "-e", f"ADMIN_TOKEN={stack.env['ADMIN_TOKEN']}", "-e", "WORKERS=1",
        IMAGE,
    )  # fmt: skip
    assert docker("exec", probe, "id", "-u").strip() == "10001"
    wait_health(probe, "healthy")
    assert health(blue) == "healthy"

    stack.run("stop", "redis")
    try:
        wait_health(probe, "unhealthy")
        wait_health(blue, "unhealthy")
    finally:
        stack.run("start", "redis")
    wait_health(probe, "healthy")
    wait_health(blue, "healthy")
    docker("rm", "-f", probe)


def prometheus_api(stack: Stack, path: str) -> Any:
    """Prometheus's HTTP API, asked from inside its container (it publishes no port)."""
    body = stack.run("exec", "-T", "prometheus", "wget", "-qO-", f"http://127.0.0.1:9090{path}").stdout
    return json.loads(body)["data"]


def prometheus(stack: Stack, query: str) -> float:
    """The sum of an instant query's values (0 when it has none)."""
    result = prometheus_api(stack, "/api/v1/query?query=" + urllib.parse.quote(query))["result"]
    return sum(float(series["value"][1]) for series in result)


def test_prometheus_scrapes_the_service_and_both_exporters_with_its_rules(stack: Stack) -> None:
    def get(path: str) -> Any:
        return prometheus_api(stack, path)

    deadline = time.monotonic() + 60
    while True:
        targets = {
            (t["labels"]["job"], t["labels"]["instance"]): t["health"]
            for t in get("/api/v1/targets?state=active")["activeTargets"]
        }
        wanted = {
            ("coupon", "blue:8000"),
            ("redis", "redis-exporter:9121"),
            ("postgres", "postgres-exporter:9187"),
        }
        if all(targets.get(t) == "up" for t in wanted) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert all(targets.get(t) == "up" for t in wanted), targets
    # The exporters see their servers, not just themselves. Redis was stopped and started
    # again by the test before: its exporter's last scrape may predate the restart, so each
    # is asked until a scrape sees its server up.
    for query in ("redis_up", "pg_up"):
        deadline = time.monotonic() + 60
        while True:
            result = get(f"/api/v1/query?query={query}")["result"]
            if (result and result[0]["value"][1] == "1") or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert result and result[0]["value"][1] == "1", (query, result)

    loaded = {rule["name"] for group in get("/api/v1/rules")["groups"] for rule in group["rules"]}
    shipped = {
        rule.get("alert") or rule.get("record")
        for path in (ROOT / "ops" / "prometheus" / "rules").glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    }
    assert shipped and loaded == shipped


def _bytes(size: str | int) -> int:
    if isinstance(size, int) or size.isdigit():
        return int(size)
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    return (
        int(float(size[:-1].rstrip("bB")) * units[size[-1].lower()])
        if size[-1].lower() in units
        else int(size)
    )


def test_resource_limits_are_the_compose_files(stack: Stack) -> None:
    config = json.loads(stack.run("--profile", "green", "config", "--format", "json").stdout)
    checked = 0
    for line in stack.run("ps", "-a", "--format", "json").stdout.splitlines():
        entry = json.loads(line)
        limits = config["services"][entry["Service"]]["deploy"]["resources"]["limits"]
        host = inspect(entry["ID"])["HostConfig"]
        assert host["NanoCpus"] == round(float(limits["cpus"]) * 1e9), (
            entry["Service"],
            host["NanoCpus"],
            limits,
        )
        assert host["Memory"] == _bytes(limits["memory"]), (entry["Service"], host["Memory"], limits)
        checked += 1
    assert checked >= 8, checked


def test_down_leaves_nothing_of_the_project(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert project_leftovers(stack.project)["containers"], "the stack is not running"
    stack.run(*DOWN, "-t", "60", timeout=300)
    assert project_leftovers(stack.project) == {"containers": [], "volumes": [], "networks": []}
    results = stack.results
    with capsys.disabled():
        print(
            f"\ncontainers: requests={results.get('requests')} failed={results.get('failed')} "
            f"switches={results.get('switches')} rows={results.get('rows')}"
        )
