"""A circuit breaker in front of Redis: a down Redis costs a request a fast 503, not a timeout.

After ``failures_to_open`` failed decisions in a row the circuit opens and the issue path
answers 503 at once for ``open_s``; then one probe call is let through: its success closes
the circuit, its failure opens it again (I5: fail fast, never guess).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(
        self, *, failures_to_open: int, open_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failures_to_open < 1:
            raise ValueError(f"failures_to_open must be positive, got {failures_to_open}")
        if open_s <= 0:
            raise ValueError(f"open_s must be positive, got {open_s}")
        self._failures_to_open = failures_to_open
        self._open_s = open_s
        self._clock = clock
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self._open_until is None:
            return "closed"
        return "open" if self._clock() < self._open_until or self._probing else "half_open"

    def allow(self) -> bool:
        """May a call go to Redis now? In half-open state, only one (the probe) may."""
        if self._open_until is None:
            return True
        if self._probing or self._clock() < self._open_until:
            return False
        self._probing = True
        return True

    def record_success(self) -> None:
        self._failures = 0
        self._open_until = None
        self._probing = False

    def abandon(self) -> None:
        """The call allowed did not reach a verdict (cancelled): another probe may go."""
        self._probing = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self._failures_to_open:
            self._open_until = self._clock() + self._open_s
        self._probing = False
