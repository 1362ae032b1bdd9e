"""Starts the real `coupon-service` as a subprocess on a free port, and stops it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from harness.ports import free_port

# The virtualenv's scripts: coupon-service, k6, locust.
BIN = Path(sys.executable).parent


# A SIGTERM within a few seconds of the start can leave a worker's shutdown hung (Sanic
# 25.12.1; docs/reliability.md, "SIGTERM right after start"): the harness stops a service
# only once it is this old.
SETTLE_S = 4.0


class ServiceProcess:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = int(env.get("PORT") or free_port())
        self.env = {**os.environ, **env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self, timeout_s: float = 30.0) -> ServiceProcess:
        self.launch()
        self.wait_ready(timeout_s)
        return self

    def launch(self) -> None:
        """Starts the process; `wait_ready` waits for its workers."""
        log = open(self.log_path, "ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [str(BIN / "coupon-service")],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Sanic kills its workers with killpg: the service gets a process group of its own.
            start_new_session=True,
        )
        log.close()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=2) as response:
                    # Every worker has started: a test's requests and signals reach a
                    # service that is up (a SIGTERM during start-up waits for it).
                    if json.loads(response.read())["workers"] >= int(self.env.get("WORKERS", "1")):
                        time.sleep(0.3)  # a worker acknowledges its start just after claiming
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"service not ready after {timeout_s}s:\n{self.log()}")

    def worker_pids(self) -> list[int]:
        if self.proc is None:
            return []
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [child.pid for child in children if _worker_name(child).startswith("Sanic-Server")]

    def settle(self) -> None:
        """Wait until the service is ``SETTLE_S`` old, so a stop signal lands on a settled one."""
        wait_s = self.started_at + SETTLE_S - time.monotonic()
        if wait_s > 0:
            time.sleep(wait_s)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 90.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.settle()
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._dump_stacks()
        # A second SIGTERM makes Sanic's manager kill what is left (docs/reliability.md).
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                child.kill()
            self.proc.kill()
            self.proc.wait(10)
            raise

    def _dump_stacks(self) -> None:
        """Where each process of a service that did not stop is, into its log (py-spy)."""
        spy = Path(sys.executable).parent / "py-spy"
        if self.proc is None or not spy.exists():
            return
        processes = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        with open(self.log_path, "a") as log:
            for process in processes:
                command = [str(spy), "dump", "--pid", str(process.pid)]
                dump = subprocess.run(command, capture_output=True, text=True)
                log.write(f"--- not stopped: {process.pid} {process.status()}\n{dump.stdout}{dump.stderr}\n")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""


def _worker_name(process: psutil.Process) -> str:
    """Sanic names its server workers in their environment; its manager process has none."""
    try:
        return str(process.environ().get("SANIC_WORKER_NAME", ""))
    except psutil.Error:
        return ""
