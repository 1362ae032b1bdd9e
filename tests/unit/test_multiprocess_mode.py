"""A worker imports the service already in multiprocess mode, with its process id cached
before the first metric is made; the metrics package imports nothing else of the service."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Run in a fresh interpreter: prometheus-client chooses its mode once, at import.
_WORKER = """
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
