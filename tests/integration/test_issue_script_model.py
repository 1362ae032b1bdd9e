"""A property test of the decision scripts against a small model of the rules, on real Redis.

Random interleavings of issue batches, close, reopen, sync and Redis losing the event's
state; and random state planted in Redis before an open, which the open must refuse or
take without ever breaking I1 or I2. The model plays PostgreSQL too: it keeps every issue
ever decided, which is what a rebuild reads back. After every step Redis must agree with
the model exactly.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from dataclasses import dataclass, field

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from harness.invariants import keyspace
from service.errors import ForeignState
from service.foreign import refuse_foreign
from service.keys import Keyspace
from service.redis_decisions import Outcome, RedisDecisions
from service.redis_events import EventTimes, RedisEvents
from service.redis_link import RedisLink

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
_event_ids = itertools.count(7_000_000_000 + os.getpid() * 100_000)
USERS = [f"u{n}" for n in range(12)]

operation = st.one_of(
    st.tuples(st.just("issue"), st.lists(st.sampled_from(USERS), min_size=1, max_size=8)),
    st.tuples(st.just("close"), st.none()),
    st.tuples(st.just("reopen"), st.none()),
    st.tuples(st.just("sync"), st.none()),
    st.tuples(st.just("lose"), st.none()),
)


@dataclass
class Model:
    quantity: int
    status: str = "open"  # open | closed | lost (Redis has no state)
    issued: dict[str, int] = field(default_factory=dict)  # every issue ever decided ("PostgreSQL")

    def decide(self, users: list[str]) -> list[int]:
        if self.status != "open":
            return [Outcome.MISSING] * len(users)
        outcomes = []
        for user in users:
            if user in self.issued:
                outcomes.append(Outcome.ALREADY_ISSUED)
            elif len(self.issued) >= self.quantity:
                outcomes.append(Outcome.SOLD_OUT)
            else:
                self.issued[user] = len(self.issued) + 1
                outcomes.append(self.issued[user])
        return outcomes


async def _rebuild(events: RedisEvents, event_id: int, model: Model, times: EventTimes) -> None:
    """What open and sync do to Redis: hold, merge what PostgreSQL holds, finish."""
    await events.hold(event_id, "syncing", times)
    records = [(user, ordinal, 0) for user, ordinal in model.issued.items()]
    await events.merge_records(event_id, records)
    await events.finish_sync(event_id, "open", times, max((o for _, o, _ in records), default=0))


async def _run(space: Keyspace, quantity: int, steps: list[tuple[str, list[str] | None]]) -> None:
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    link = RedisLink(redis)
    events = RedisEvents(link, space)
    decisions = RedisDecisions(link, space)
    event_id = next(_event_ids)
    seconds, micros = await redis.time()
    now_us = int(seconds) * 1_000_000 + int(micros)
    times = EventTimes(quantity, now_us - 1_000_000, 0, now_us // 1000 + 600_000)
    model = Model(quantity)
    keys = space.event(event_id)
    try:
        await events.finish_sync(event_id, "open", times, 0)
        for name, users in steps:
            if name == "issue":
                assert users is not None
                reply = await decisions.decide(event_id, users)
                assert reply[1:] == model.decide(users), (name, users, model)
            elif name == "close":
                await events.hold(event_id, "closed", times)
                assert (await decisions.decide(event_id, ["probe"]))[1:] == [Outcome.CLOSED]
                await events.delete(event_id)
                model.status = "closed"
            elif name in ("reopen", "sync"):
                if name == "sync" and model.status == "closed":
                    continue  # sync of a closed event only re-closes it
                await _rebuild(events, event_id, model, times)
                model.status = "open"
            elif name == "lose":
                await redis.delete(keys.meta, keys.seq, keys.users)
                model.status = "lost"
            if model.status == "open":
                records = await redis.hgetall(keys.users)
                assert {u: int(v.split(":")[0]) for u, v in records.items()} == model.issued
                assert int(await redis.get(keys.seq) or 0) == len(model.issued) <= quantity
            else:
                assert await redis.exists(keys.seq, keys.users) == 0
        assert sorted(model.issued.values()) == list(range(1, len(model.issued) + 1))
    finally:
        await redis.delete(keys.meta, keys.seq, keys.users)
        await decisions.close()
        await redis.aclose()


@pytest.fixture(scope="module")
async def space(pg: asyncpg.Pool) -> Keyspace:
    """The keys of the test database's deployment, read once (each example runs its own loop)."""
    return await keyspace(pg)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(quantity=st.integers(min_value=1, max_value=8), steps=st.lists(operation, max_size=25))
def test_the_scripts_follow_the_rules_over_any_interleaving(
    space: Keyspace, quantity: int, steps: list[tuple[str, list[str] | None]]
) -> None:
    asyncio.run(_run(space, quantity, steps))


planted_record = st.tuples(
    st.sampled_from([*USERS, "x0", "x1", "x2"]), st.integers(min_value=-1, max_value=10)
)


async def _run_planted(
    space: Keyspace,
    quantity: int,
    truth_count: int,
    planted: list[tuple[str, int]],
    planted_seq: int | None,
    planted_quantity: int | None,
) -> None:
    """Redis holds state nobody can vouch for when an event is opened: planted records, a
    planted seq, a planted quantity. The open either refuses it (nothing merged, nothing
    issued) or takes it, and then no sequence of issues breaks I1 or I2."""
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    link = RedisLink(redis)
    events = RedisEvents(link, space)
    decisions = RedisDecisions(link, space)
    event_id = next(_event_ids)
    keys = space.event(event_id)
    seconds, micros = await redis.time()
    now_us = int(seconds) * 1_000_000 + int(micros)
    times = EventTimes(quantity, now_us - 1_000_000, 0, now_us // 1000 + 600_000)
    truth = {USERS[n]: n + 1 for n in range(min(truth_count, quantity))}  # what "PostgreSQL" holds
    try:
        if planted:
            await redis.hset(keys.users, mapping={user: f"{ordinal}:0" for user, ordinal in planted})
        if planted_seq is not None:
            await redis.set(keys.seq, planted_seq)
        if planted_quantity is not None:
            await redis.hset(keys.meta, mapping={"status": "closed", "quantity": planted_quantity})
        before = await redis.hgetall(keys.users)
        # What open does: hold, check Redis against PostgreSQL, then merge and finish.
        await events.hold(event_id, "syncing", times)
        state = await events.state(event_id)
        records = [(user, ordinal) async for user, ordinal, _ in events.records(event_id)]
        try:
            refuse_foreign(
                event_id=event_id,
                where="open",
                event_status="open",
                quantity=quantity,
                redis_quantity=state.quantity,
                issued=state.issued,
                records=records,
                stored=truth,
            )
        except ForeignState:
            assert await redis.hgetall(keys.users) == before, "a refusal merged something"
            assert (await decisions.decide(event_id, ["new"]))[1:] == [Outcome.SYNCING]
            return
        taken = dict(records)
        await events.merge_records(event_id, [(u, o, 0) for u, o in truth.items() if u not in taken])
        highest = max([*truth.values(), *taken.values()], default=0)
        await events.finish_sync(event_id, "open", times, highest)
        reply = await decisions.decide(event_id, [f"n{n}" for n in range(quantity + 3)] + list(truth))
        outcomes = reply[1:]
        assert all(
            code in (Outcome.SOLD_OUT, Outcome.ALREADY_ISSUED) or 0 < code <= quantity for code in outcomes
        )
        held = {u: int(v.split(":")[0]) for u, v in (await redis.hgetall(keys.users)).items()}
        assert len(held) <= quantity, f"over-issue: {len(held)} for {quantity}"
        assert len(set(held.values())) == len(held), "an ordinal held twice"
        assert all(1 <= o <= quantity for o in held.values())
        assert all(held.get(u) == o for u, o in truth.items()), "a stored issue was lost or changed"
        # seq may stand above every holder (ordinals whose record nobody kept), never below.
        assert max(held.values(), default=0) <= int(await redis.get(keys.seq)) <= quantity
    finally:
        await redis.delete(keys.meta, keys.seq, keys.users)
        await decisions.close()
        await redis.aclose()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    quantity=st.integers(min_value=1, max_value=8),
    truth_count=st.integers(min_value=0, max_value=8),
    planted=st.lists(planted_record, max_size=10),
    planted_seq=st.none() | st.integers(min_value=0, max_value=12),
    planted_quantity=st.none() | st.integers(min_value=1, max_value=9),
)
def test_state_planted_in_redis_before_open_is_refused_or_never_breaks_the_invariants(
    space: Keyspace,
    quantity: int,
    truth_count: int,
    planted: list[tuple[str, int]],
    planted_seq: int | None,
    planted_quantity: int | None,
) -> None:
    asyncio.run(_run_planted(space, quantity, truth_count, planted, planted_seq, planted_quantity))
