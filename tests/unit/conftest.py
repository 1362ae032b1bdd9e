"""Unit tests start no servers and need none running."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _stop_the_services_a_test_started() -> None:
    """Replaces the suite's fixture of this name, which needs the test PostgreSQL and Redis
    (through ``start_service``) only to stop services; no unit test starts one."""
