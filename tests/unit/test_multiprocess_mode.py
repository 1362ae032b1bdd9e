"""A worker imports the service already in multiprocess mode, with its process id cached
before the first metric is made; the metrics package imports nothing else of the service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Run in a fresh interpreter: prometheus-client chooses its mode once, at import.
_WORKER = """
import json
import os
import service.app  # everything a worker imports, the metrics with it
from service.metrics import counted

counted.rows_written.inc()
# prometheus-client 0.2x reads the process id through the function its value class closes over.
check = type(counted.rows_written._value)._MmapedValue__check_for_pid_change
reads = dict(zip(check.__code__.co_freevars, check.__closure__))["process_identifier"].cell_contents
print(os.getpid(), reads is os.getpid, reads() == os.getpid())
"""

_METRICS_ALONE = """
import sys
import service.metrics.counted, service.metrics.exposition, service.metrics.tally
print(" ".join(sorted(name for name in sys.modules if name.startswith("service"))))
"""


def _python(code: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_worker_files_its_samples_under_its_pid_and_caches_it(tmp_path: Path) -> None:
    pid, reads_getpid_each_time, reads_its_pid = _python(
        _WORKER, PROMETHEUS_MULTIPROC_DIR=str(tmp_path)
    ).split()
    assert (tmp_path / f"counter_{pid}.db").exists()
    assert reads_getpid_each_time == "False" and reads_its_pid == "True"


def test_the_metrics_package_imports_nothing_else_of_the_service() -> None:
    modules = _python(_METRICS_ALONE).split()
    assert modules and all(name == "service" or name.startswith("service.metrics") for name in modules)


_WORKER_ANSWERS = """
import sys
from service.metrics import counted
from service.metrics.tally import tally

for n in range(int(sys.argv[1])):
    tally.inc(counted.issue_requests.labels(("issued", "sold_out", "already_issued")[n % 3]))
    tally.observe(counted.issue_duration, 0.0003 * (n % 40))
tally.flush()
"""

_SUMMED_AND_SCRAPED = """
import json
from prometheus_client import CollectorRegistry, multiprocess
from service.metrics import counted, exposition

names = ("coupon_issue_requests", "coupon_issue_duration_seconds")
summed = exposition.summed(names)
mine = {f"{name}|{json.dumps(dict(pairs), sort_keys=True)}": value for (name, pairs), value in summed.items()}
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
scraped = {}
for family in registry.collect():
    if family.name in names:
        below = 0.0
        for sample in family.samples:
            value = sample.value
            if sample.name.endswith("_bucket"):  # scraped cumulative; summed keeps each bucket's own
                value, below = value - below, value
            if not sample.name.endswith(("_count", "_created")):
                scraped[f"{sample.name}|{json.dumps(sample.labels, sort_keys=True)}"] = value
print(json.dumps([mine, scraped]))
"""


def test_summed_answers_match_what_a_scrape_merges_over_the_workers(tmp_path: Path) -> None:
    for answers in ("300", "71"):  # two workers' files
        subprocess.run(
            [sys.executable, "-c", _WORKER_ANSWERS, answers],
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
            check=True,
            timeout=60,
        )
    mine, scraped = json.loads(_python(_SUMMED_AND_SCRAPED, PROMETHEUS_MULTIPROC_DIR=str(tmp_path)))
    assert {key: value for key, value in mine.items() if value} == {
        key: value for key, value in scraped.items() if value
    }
    assert mine['coupon_issue_requests_total|{"outcome": "issued"}'] == 100 + 24
    assert (
        sum(value for key, value in mine.items() if key.startswith("coupon_issue_duration_seconds_bucket"))
        == 371
    )
