"""The issue path: sold-out flag, coalesced Lua decision, buffer. No PostgreSQL query."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from batcher import Buffer, BufferFull, IssueRecord

from .breaker import CircuitBreaker
from .coalescer import Coalescer
from .directory import EventDirectory
from .errors import (
    AlreadyIssued,
    Closed,
    Ended,
    EventNotFound,
    NotStarted,
    ServiceError,
    SoldOut,
    Unavailable,
)
from .failures import REDIS_FAILURES
from .metrics import counted
from .metrics.tally import tally
from .redis_decisions import NotReplicated, Outcome
from .timefmt import iso_us

logger = logging.getLogger(__name__)

_BROKEN_LOG_S = 10.0

_REFUSALS: dict[int, type[ServiceError]] = {
    Outcome.ALREADY_ISSUED: AlreadyIssued,
    Outcome.SOLD_OUT: SoldOut,
    Outcome.NOT_STARTED: NotStarted,
    Outcome.ENDED: Ended,
    Outcome.CLOSED: Closed,
    Outcome.SYNCING: Unavailable,
    Outcome.EXPIRED: Unavailable,
}


class SoldOutFlags:
    """Events this worker saw sold out, answered 410 without Redis for a bounded time.

    A lifecycle operation on this host (sync, open) bumps the epoch and clears them at
    once; elsewhere they lapse after ``ttl_s``.
    """

    def __init__(self, ttl_s: float, epoch: Callable[[], int]) -> None:
        self._ttl_s = ttl_s
        self._epoch = epoch
        self._flags: dict[int, tuple[float, int]] = {}

    def is_set(self, event_id: int) -> bool:
        flag = self._flags.get(event_id)
        if flag is None:
            return False
        expires, epoch = flag
        if time.monotonic() < expires and epoch == self._epoch():
            return True
        del self._flags[event_id]
        return False

    def set(self, event_id: int) -> None:
        if self._ttl_s > 0:
            self._flags[event_id] = (time.monotonic() + self._ttl_s, self._epoch())


class Decisions(Protocol):
    """Redis's decisions (service/redis_decisions.py)."""

    def shard(self, event_id: int) -> str: ...

    async def decide(self, event_id: int, users: Sequence[str], deadline_us: int = 0) -> list[int]: ...


class Flusher(Protocol):
    """The buffer's writer (batcher/writer.py), told when rows were added."""

    def notify(self) -> None: ...


class Eviction(Protocol):
    """Whether Redis may evict keys now (service/eviction.py)."""

    @property
    def unsafe(self) -> str | None: ...


class Verified(Protocol):
    """Which Redis is verified against PostgreSQL (service/trust.py)."""

    @property
    def refusal(self) -> str | None: ...

    @property
    def untrusted(self) -> dict[str, str]: ...


class Issuer:
    def __init__(
        self,
        decisions: Decisions,
        buffer: Buffer,
        writer: Flusher,
        directory: EventDirectory,
        eviction: Eviction,
        trust: Verified,
        on_broken: Callable[[int], None],
        sold_out: SoldOutFlags,
        breaker: Callable[[], CircuitBreaker],
        *,
        max_batch: int,
        max_inflight: int,
        decide_within_s: float,
    ) -> None:
        self._decisions = decisions
        self._buffer = buffer
        self._writer = writer
        self._directory = directory
        self._eviction = eviction
        self._trust = trust
        self._on_broken = on_broken
        self._sold_out = sold_out
        # One circuit per shard (one Redis, or one cluster primary): a failed primary costs
        # its own events fast 503s and leaves the other shards' events alone.
        self._new_breaker = breaker
        self.breakers: dict[str, CircuitBreaker] = {}
        self._decide_within_us = int(decide_within_s * 1_000_000)
        self._broken_logged: dict[int, float] = {}
        self.coalescer: Coalescer[tuple[int, str]] = Coalescer(
            self._decide, max_batch=max_batch, max_inflight=max_inflight
        )

    async def issue(self, event_id: int, user_id: str) -> tuple[int, str]:
        """Issue one coupon: returns (ordinal, issued_at as ISO 8601) or raises the refusal."""
        if self._sold_out.is_set(event_id):
            raise SoldOut()
        if self.coalescer.closed:
            # A request that reached this worker after its drain began (on a kept-alive
            # connection): deciding it now could answer 201 for a row nobody stores.
            raise Unavailable("this worker is stopping; retry")
        outcome, issued_at = await self.coalescer.submit(event_id, user_id)
        if outcome > 0:
            return outcome, issued_at
        if outcome == Outcome.MISSING:
            raise await self._missing(event_id)
        if outcome == Outcome.BROKEN:
            raise self._broken(event_id)
        raise _REFUSALS[outcome]()

    async def _decide(self, event_id: int, users: list[str]) -> list[tuple[int, str]]:
        if self._eviction.unsafe:
            # A Redis that may evict can forget who was served (I2): it decides nothing.
            raise Unavailable("Redis may evict keys; issuing is stopped until it runs with noeviction")
        if self._trust.refusal:
            # Redis is not the one verified against PostgreSQL (connections survived a
            # FLUSHALL, say): it decides nothing until verified (I1-I3).
            raise Unavailable(self._trust.refusal)
        untrusted = self._trust.untrusted
        if untrusted and self._decisions.shard(event_id) in untrusted:
            raise Unavailable(untrusted[self._decisions.shard(event_id)])
        # Room first: a full buffer answers 503 before Redis decides anything (I5).
        try:
            self._buffer.reserve(len(users))
        except BufferFull:
            raise Unavailable("too many issues are waiting to be stored; retry shortly") from None
        shard = self._decisions.shard(event_id)
        breaker = self.breakers.get(shard)
        if breaker is None:
            breaker = self.breakers[shard] = self._new_breaker()
        if not breaker.allow():
            self._buffer.release(len(users))
            counted.breaker_rejections.inc()
            raise Unavailable()
        try:
            # The client's own timeout starts only once the batch is sent (after this line,
            # and after any event-loop lag), so Redis reaching the batch later than this
            # deadline means the caller has given up: it must issue nothing.
            deadline_us = time.time_ns() // 1000 + self._decide_within_us
            started = time.perf_counter()
            reply = await self._decisions.decide(event_id, users, deadline_us)
            tally.observe(counted.decide_duration, time.perf_counter() - started)
            tally.observe(counted.decide_batch, len(users))
        except NotReplicated as exc:
            # Decided, not confirmed: no 201 may rest on it (the primary could lose it).
            # The issues stay on the primary; reconcile stores them if it survives.
            self._buffer.release(len(users))
            breaker.record_success()
            counted.decide_unreplicated.inc()
            logger.warning("issue batch for event %d not replicated in time: %s", event_id, exc)
            raise Unavailable("the issue could not be confirmed; retry shortly") from exc
        except REDIS_FAILURES as exc:
            self._buffer.release(len(users))
            breaker.record_failure()
            counted.decide_failures.inc()
            logger.warning("issue decision failed for event %d: %s", event_id, type(exc).__name__)
            raise Unavailable() from exc
        except BaseException:
            self._buffer.release(len(users))
            breaker.abandon()  # cancelled: no verdict on Redis
            raise
        breaker.record_success()
        issued_at_us, outcomes = reply[0], reply[1:]
        self._buffer.commit(
            (
                IssueRecord(event_id, user, outcome, issued_at_us)
                for user, outcome in zip(users, outcomes, strict=True)
                if outcome > 0
            ),
            reserved=len(users),
        )
        self._writer.notify()
        if outcomes and outcomes[0] == Outcome.BROKEN:  # the script answers it for the whole batch
            counted.broken_state.inc()
        if Outcome.SOLD_OUT in outcomes:
            self._sold_out.set(event_id)
        # One batch, one moment: its text is formatted once, not once per answer.
        issued_at = iso_us(issued_at_us)
        return [(outcome, issued_at) for outcome in outcomes]

    def _broken(self, event_id: int) -> ServiceError:
        now = time.monotonic()
        if now - self._broken_logged.get(event_id, 0.0) > _BROKEN_LOG_S:
            self._broken_logged[event_id] = now
            logger.error(
                "event %d: its Redis keys are not whole (evicted, expired or deleted in part);"
                " answering 503 until it is rebuilt from PostgreSQL",
                event_id,
            )
        self._on_broken(event_id)
        return Unavailable("the event's state is being recovered; retry shortly")

    async def _missing(self, event_id: int) -> ServiceError:
        try:
            status = await self._directory.status(event_id)
        except Exception as exc:  # noqa: BLE001 - PostgreSQL cannot say either: never guess (I5)
            logger.warning("event lookup failed for event %d: %s", event_id, type(exc).__name__)
            return Unavailable()
        if status is None:
            return EventNotFound()
        if status == "closed":
            return Closed()
        if status == "created":
            return NotStarted("the event has not been opened")
        # Open in PostgreSQL but unknown to Redis: Redis lost it (all of it, or the event's
        # meta alone); it is rebuilt from PostgreSQL and the buffers.
        self._on_broken(event_id)
        return Unavailable("the event's state is being recovered; retry shortly")
