from __future__ import annotations

import pytest

from service.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_and_refuses_while_open() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures_to_open=3, open_s=0.5, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()


def test_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(failures_to_open=2, open_s=0.5, clock=Clock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == "closed" and breaker.allow()


def test_one_probe_after_the_pause_closes_or_reopens_it() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures_to_open=1, open_s=0.5, clock=clock)
    breaker.record_failure()
    clock.now += 0.6
    assert breaker.state == "half_open"
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # everyone else waits for it
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 0.6
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failures_to_open=0, open_s=1)
    with pytest.raises(ValueError):
        CircuitBreaker(failures_to_open=1, open_s=0)
