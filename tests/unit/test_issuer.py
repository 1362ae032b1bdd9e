"""The issue path between the request and Redis: refusals, the sold-out flag, the circuit
breaker and the buffer, with Redis's decision and PostgreSQL's lookup faked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from batcher import Buffer, IssueRecord
from service.breaker import CircuitBreaker
from service.directory import EventDirectory
from service.errors import (
    AlreadyIssued,
    Closed,
    Ended,
    EventNotFound,
    NotStarted,
    ServiceError,
    SoldOut,
    Unavailable,
)
from service.issuing import Issuer, SoldOutFlags
from service.redis_decisions import NotReplicated, Outcome
from service.timefmt import iso_us

from .fakes import NOW_US, FakeDecisions, FakeEviction, FakeLookup, FakeTrust, FakeWriter

EVENT = 7
FAILURES_TO_OPEN = 3
DECIDE_WITHIN_S = 0.5


@dataclass
class IssuePath:
    issuer: Issuer
    decisions: FakeDecisions
    buffer: Buffer
    writer: FakeWriter
    lookup: FakeLookup
    eviction: FakeEviction
    trust: FakeTrust
    broken: list[int] = field(default_factory=list)


def _issue_path(buffer_max_rows: int = 100) -> IssuePath:
    decisions, writer, lookup = FakeDecisions(), FakeWriter(), FakeLookup()
    eviction, trust, buffer = FakeEviction(), FakeTrust(), Buffer(buffer_max_rows)
    broken: list[int] = []
    issuer = Issuer(
        decisions,
        buffer,
        writer,
        EventDirectory(lookup, ttl_s=60, epoch=lambda: 0),
        eviction,
        trust,
        broken.append,
        SoldOutFlags(60, lambda: 0),
        lambda: CircuitBreaker(failures_to_open=FAILURES_TO_OPEN, open_s=60),
        max_batch=100,
        max_inflight=4,
        decide_within_s=DECIDE_WITHIN_S,
    )
    return IssuePath(issuer, decisions, buffer, writer, lookup, eviction, trust, broken)


@pytest.fixture
async def path() -> AsyncIterator[IssuePath]:
    path = _issue_path()
    yield path
    await path.issuer.coalescer.close()


async def _refusal(path: IssuePath, user: str = "u1", event_id: int = EVENT) -> ServiceError:
    with pytest.raises(ServiceError) as refused:
        await path.issuer.issue(event_id, user)
    return refused.value


async def test_an_issue_is_answered_with_its_ordinal_and_buffered_for_the_writer(path: IssuePath) -> None:
    assert await path.issuer.issue(EVENT, "u1") == (1, iso_us(NOW_US))
    assert path.buffer.oldest(10) == [IssueRecord(EVENT, "u1", 1, NOW_US)]
    assert path.buffer.reserved == 0 and path.writer.notified == 1


async def test_a_batch_buffers_only_the_users_it_issued_to(path: IssuePath) -> None:
    path.decisions.answers["again"] = Outcome.ALREADY_ISSUED
    answers = await asyncio.gather(
        *(path.issuer.issue(EVENT, user) for user in ("a", "again", "b")), return_exceptions=True
    )
    assert answers[0] == (1, iso_us(NOW_US)) and answers[2] == (2, iso_us(NOW_US))
    assert isinstance(answers[1], AlreadyIssued)
    assert len(path.decisions.calls) == 1  # one decision for the three
    assert [record.user_id for record in path.buffer.oldest(10)] == ["a", "b"]
    assert path.buffer.reserved == 0


async def test_the_decision_carries_a_deadline_the_caller_still_waits_for(path: IssuePath) -> None:
    before_us = time.time_ns() // 1000
    await path.issuer.issue(EVENT, "u1")
    after_us = time.time_ns() // 1000
    ((_, _, deadline_us),) = path.decisions.calls
    assert before_us + DECIDE_WITHIN_S * 1e6 <= deadline_us <= after_us + DECIDE_WITHIN_S * 1e6


@pytest.mark.parametrize(
    ("outcome", "refusal", "status"),
    [
        (Outcome.ALREADY_ISSUED, AlreadyIssued, 409),
        (Outcome.NOT_STARTED, NotStarted, 403),
        (Outcome.ENDED, Ended, 403),
        (Outcome.CLOSED, Closed, 403),
        (Outcome.SYNCING, Unavailable, 503),
        (Outcome.EXPIRED, Unavailable, 503),
    ],
)
async def test_each_refusal_of_the_script_is_its_error(
    path: IssuePath, outcome: Outcome, refusal: type[ServiceError], status: int
) -> None:
    path.decisions.answers["u1"] = outcome
    error = await _refusal(path)
    assert type(error) is refusal and error.status == status
    assert len(path.buffer) == 0 and path.buffer.reserved == 0
    assert path.lookup.calls == [] and path.broken == []


async def test_sold_out_is_remembered_and_the_next_request_is_answered_without_redis(path: IssuePath) -> None:
    path.decisions.answers["u1"] = Outcome.SOLD_OUT
    assert type(await _refusal(path, "u1")) is SoldOut
    error = await _refusal(path, "u2")
    assert type(error) is SoldOut and error.status == 410
    assert len(path.decisions.calls) == 1
    assert path.decisions.calls[0][1] == ["u1"]
    await path.issuer.issue(EVENT + 1, "u2")  # another event is not flagged


@pytest.mark.parametrize(
    ("status", "refusal", "code"),
    [
        (None, EventNotFound, 404),
        ("closed", Closed, 403),
        ("created", NotStarted, 403),
    ],
)
async def test_an_event_redis_lacks_is_answered_from_postgresql(
    path: IssuePath, status: str | None, refusal: type[ServiceError], code: int
) -> None:
    path.decisions.answers["u1"] = Outcome.MISSING
    if status is not None:
        path.lookup.statuses[EVENT] = status
    error = await _refusal(path)
    assert type(error) is refusal and error.status == code
    assert path.lookup.calls == [EVENT] and path.broken == []


async def test_an_open_event_redis_lacks_is_recovered_and_answered_503(path: IssuePath) -> None:
    path.decisions.answers["u1"] = Outcome.MISSING
    path.lookup.statuses[EVENT] = "open"
    assert type(await _refusal(path)) is Unavailable
    assert path.broken == [EVENT]


async def test_when_postgresql_cannot_say_either_the_answer_is_503(path: IssuePath) -> None:
    path.decisions.answers["u1"] = Outcome.MISSING
    path.lookup.failure = ConnectionRefusedError("PostgreSQL is down")
    assert type(await _refusal(path)) is Unavailable
    assert path.broken == []


async def test_broken_keys_answer_503_and_start_a_recovery(path: IssuePath) -> None:
    path.decisions.answers["u1"] = Outcome.BROKEN
    assert type(await _refusal(path)) is Unavailable
    assert path.broken == [EVENT] and path.lookup.calls == []


async def test_failed_decisions_open_the_breaker_of_their_shard_only(path: IssuePath) -> None:
    path.decisions.failure = TimeoutError()
    for n in range(FAILURES_TO_OPEN):
        assert type(await _refusal(path, f"u{n}")) is Unavailable
        assert path.buffer.reserved == 0
    assert len(path.decisions.calls) == FAILURES_TO_OPEN
    path.decisions.failure = None
    assert type(await _refusal(path, "late")) is Unavailable  # open: Redis is not asked
    assert len(path.decisions.calls) == FAILURES_TO_OPEN and path.buffer.reserved == 0
    assert path.issuer.breakers["redis-a"].state == "open"

    path.decisions.shards[EVENT + 1] = "redis-b"
    assert await path.issuer.issue(EVENT + 1, "elsewhere") == (1, iso_us(NOW_US))


async def test_an_unreplicated_decision_is_503_but_not_a_redis_failure(path: IssuePath) -> None:
    path.decisions.failure = NotReplicated(0, 1, [NOW_US, 1])
    for n in range(FAILURES_TO_OPEN + 1):
        assert type(await _refusal(path, f"u{n}")) is Unavailable
    assert len(path.decisions.calls) == FAILURES_TO_OPEN + 1
    assert path.issuer.breakers["redis-a"].state == "closed"
    assert len(path.buffer) == 0 and path.buffer.reserved == 0


async def test_a_full_buffer_answers_503_before_redis_decides() -> None:
    path = _issue_path(buffer_max_rows=1)
    try:
        await path.issuer.issue(EVENT, "u1")
        error = await _refusal(path, "u2")
        assert type(error) is Unavailable and "waiting to be stored" in error.detail
        assert len(path.decisions.calls) == 1 and len(path.buffer) == 1
    finally:
        await path.issuer.coalescer.close()


async def test_an_unverified_shard_answers_503_without_deciding(path: IssuePath) -> None:
    path.trust.untrusted["redis-a"] = "redis-a is not verified against PostgreSQL yet"
    path.decisions.shards[EVENT + 1] = "redis-b"
    error = await _refusal(path)
    assert type(error) is Unavailable and error.detail == "redis-a is not verified against PostgreSQL yet"
    assert await path.issuer.issue(EVENT + 1, "u1") == (1, iso_us(NOW_US))
    assert [call[0] for call in path.decisions.calls] == [EVENT + 1]


async def test_an_unverified_or_evicting_redis_decides_nothing(path: IssuePath) -> None:
    path.trust.refusal = "Redis lost its data"
    assert (await _refusal(path)).detail == "Redis lost its data"
    path.trust.refusal = None
    path.eviction.unsafe = "maxmemory-policy allkeys-lru"
    assert type(await _refusal(path)) is Unavailable
    assert path.decisions.calls == [] and path.buffer.reserved == 0
