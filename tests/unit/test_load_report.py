"""The load report reads k6's CSV by its header: the columns follow the system tags asked for."""

from __future__ import annotations

import gzip
from pathlib import Path

from loadtest.report import k6_series


def test_the_series_and_the_last_201_come_from_the_named_columns(tmp_path: Path) -> None:
    path = tmp_path / "k6.csv.gz"
    rows = [
        "metric_name,timestamp,metric_value,name,scenario,status,extra_tags,metadata",
        "http_reqs,1000,1.000000,issue,constant,201,,",
        "http_req_duration,1000,5.0,issue,constant,201,,",
        "http_req_duration,1500,7.0,issue,constant,201,,",
        "http_req_duration,2100,3.0,issue,constant,410,,",
        "http_req_duration,2200,1.0,event,readers,200,,",  # a reader's: not the issue route's
    ]
    with gzip.open(path, "wt") as stream:
        stream.write("\n".join(rows) + "\n")
    series = k6_series(path)
    assert series.last_issued_ms == 1500
    assert series.last_response_ms == 2100
    assert series.seconds == [0, 1] and series.rate == [2, 1]


def test_a_running_service_is_found_by_the_port_it_listens_on() -> None:
    """`make loadtest BASE_URL=…` against a service on this machine measures its CPU too:
    the processes listening on the port, with their children."""
    import socket
    import subprocess
    import sys

    from loadtest import cpu

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = (
        "import socket, subprocess, sys, time\n"
        f"s = socket.create_server(('127.0.0.1', {port}))\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(30)\n"
    )
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        child = int(server.stdout.readline())
        finder = cpu.serving(port)
        assert finder is not None
        assert sorted(finder(cpu.snapshot())) == sorted([server.pid, child])
    finally:
        subprocess.run(["pkill", "-P", str(server.pid)], check=False)
        server.kill()
        server.wait()
        server.stdout.close()
    assert cpu.serving(port) is None


def test_the_bench_splits_the_service_cpu_into_its_workers_and_its_dependencies() -> None:
    """`make bench` shows what the service's own code takes per answer apart from what Redis
    and PostgreSQL take, each as a multiple of the bare app's answer."""
    from loadtest.bench import cpu_parts
    from loadtest.cpu import Split
    from loadtest.generators import K6Result
    from loadtest.open_model import OpenRun

    cpu_s = {"k6": 6.0, "service": 5.0, "Redis": 1.5, "PostgreSQL": 0.5}
    split = Split(wall_s=10.0, cpu_s=cpu_s, busy_s=13.0)
    result = K6Result(requests=20_000, failed=0, dropped=0, p50_ms=1.0, p99_ms=5.0, counts={})
    run = OpenRun("service /issue", 0, result, split, ("service", "Redis", "PostgreSQL"), 2000.0)
    assert cpu_parts(run) == [("the workers", 250.0), ("Redis + PostgreSQL", 100.0)]
    assert run.us_per_answer == 350.0


def test_a_row_stored_before_its_answer_arrived_is_said_in_words() -> None:
    """On a saturated machine the last 201 can reach the generator after its row was stored:
    the report says so instead of printing a bare negative lag."""
    from loadtest.run import stored_after

    assert stored_after(0.084, "last 201 response") == "0.084 s (last 201 response)"
    assert stored_after(-0.322, "last 201 response") == (
        "-0.322 s: stored 0.322 s before the last 201 response reached the generator"
    )
    assert stored_after(None, "last 201 response") == "n/a"
