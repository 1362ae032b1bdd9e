"""nginx (Debian's binary, its own prefix and port) in front of the shared test service as blue."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.service_process import ServiceProcess
from loadtest.blue_green import Stack


@pytest.fixture
def nginx_stack(
    service: ServiceProcess, service_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., Stack]]:
    """Start nginx with the shared service as blue; `issue_rate` 0 renders it without a limit."""
    stacks: list[Stack] = []

    def start(issue_rate: int = 0, issue_burst: int = 20) -> Stack:
        stack = Stack(
            tmp_path / f"stack-{len(stacks)}",
            {**service_env, "READY_TIMEOUT_S": "5", "CHECKS": "2", "CHECK_INTERVAL_S": "0.5"},
            lambda message: None,
            blue_port=service.port,
        )
        stacks.append(stack)
        stack.start_nginx(issue_rate, issue_burst)
        return stack

    yield start
    for stack in stacks:
        stack.close()
