"""Small stand-ins for Redis, PostgreSQL and the watches, injected where the real ones go.

Each holds the little state its test needs and counts the calls made of it; races come from
an ``asyncio.Event`` a fake waits on, not from patching the code under test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from redis.exceptions import LockError

from service.errors import ForeignState
from service.keys import Keyspace
from service.lifecycle import Recorded
from service.redis_events import RedisEventState
from service.store import EventRow

NOW_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z, the moment every fake decision is made


class FakeDecisions:
    """Decides like the issue script (``RedisDecisions``): ``[now_us, outcome per user]``.

    Users named in ``answers`` get that outcome; every other user the event's next ordinal.
    While ``failure`` is set, every decision raises it instead.
    """

    def __init__(self) -> None:
        self.answers: dict[str, int] = {}
        self.failure: BaseException | None = None
        self.shards: dict[int, str] = {}  # event -> shard; others are on "redis-a"
        self.calls: list[tuple[int, list[str], int]] = []
        self._issued: dict[int, int] = {}

    def shard(self, event_id: int) -> str:
        return self.shards.get(event_id, "redis-a")

    async def decide(self, event_id: int, users: Sequence[str], deadline_us: int = 0) -> list[int]:
        self.calls.append((event_id, list(users), deadline_us))
        if self.failure is not None:
            raise self.failure
        outcomes = []
        for user in users:
            outcome = self.answers.get(user)
            if outcome is None:
                outcome = self._issued[event_id] = self._issued.get(event_id, 0) + 1
            outcomes.append(outcome)
        return [NOW_US, *outcomes]


class FakeWriter:
    """The writer as the issuer sees it: told when rows were added."""

    def __init__(self) -> None:
        self.notified = 0

    def notify(self) -> None:
        self.notified += 1


@dataclass
class FakeEviction:
    unsafe: str | None = None


@dataclass
class FakeTrust:
    refusal: str | None = None
    untrusted: dict[str, str] = field(default_factory=dict)


class FakeLookup:
    """PostgreSQL's answer to "what is this event?" (the event directory's lookup): a row
    with the status given for the event, or None.

    ``started`` is set once a lookup began; while ``gate`` is an unset ``asyncio.Event``,
    lookups wait for it.
    """

    def __init__(self, statuses: dict[int, str] | None = None) -> None:
        self.statuses = dict(statuses or {})
        self.failure: BaseException | None = None
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.calls: list[int] = []

    async def __call__(self, event_id: int) -> EventRow | None:
        self.calls.append(event_id)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        status = self.statuses.get(event_id)
        return None if status is None else event_row(event_id, status=status)


def event_row(event_id: int, *, quantity: int = 100, status: str = "open") -> EventRow:
    starts_at = datetime(2026, 1, 1, tzinfo=UTC)
    return EventRow(event_id, f"event {event_id}", quantity, starts_at, None, status, None)


class FakeStore:
    """PostgreSQL as reconcile reads it: the live events and the ordinals stored of each."""

    def __init__(self, *events: EventRow) -> None:
        self.events = list(events)
        self.stored: dict[int, set[int]] = {}
        self.failure: BaseException | None = None
        self.listings = 0
        self.counts: list[tuple[int, int]] = []

    async def live_events(self) -> list[EventRow]:
        self.listings += 1
        if self.failure is not None:
            raise self.failure
        return list(self.events)

    async def issue_count_through(self, event_id: int, ordinal: int) -> int:
        self.counts.append((event_id, ordinal))
        return sum(1 for stored in self.stored.get(event_id, ()) if stored <= ordinal)


class FakeLease:
    """The reconcile lock: ``busy`` while another worker holds it."""

    def __init__(self, *, busy: bool = False) -> None:
        self.busy = busy
        self.lapsed = False  # released after its timeout: the release fails
        self.renewals = 0
        self.released = False

    async def acquire(self) -> bool:
        return not self.busy

    async def reacquire(self) -> bool:
        self.renewals += 1
        return True

    async def release(self) -> None:
        if self.lapsed:
            raise LockError("Cannot release an unlocked lock")
        self.released = True


class FakeRedisEvents:
    """Redis as reconcile reads it: each event's last ordinal and its records (one per ordinal)."""

    def __init__(self) -> None:
        self.keys = Keyspace("unit")
        self.lease = FakeLease()
        self.issued: dict[int, int] = {}
        self.locks: list[tuple[str, float]] = []
        self.reads: list[int] = []

    def issue(self, event_id: int, count: int) -> None:
        self.issued[event_id] = self.issued.get(event_id, 0) + count

    def lock(self, name: str, timeout_s: float) -> FakeLease:
        self.locks.append((name, timeout_s))
        return self.lease

    async def state(self, event_id: int) -> RedisEventState:
        self.reads.append(event_id)
        issued = self.issued.get(event_id, 0)
        return RedisEventState("open", 100, 0, 0, issued, issued)


class FakeLifecycle:
    """Stores what Redis recorded and PostgreSQL lacks, as ``Lifecycle.store_recorded`` does;
    the ``young`` newest ordinals of an event are left to their writer (not written)."""

    def __init__(self, redis: FakeRedisEvents, store: FakeStore) -> None:
        self._redis = redis
        self._store = store
        self.young: dict[int, int] = {}
        self.foreign: set[int] = set()
        self.failure: BaseException | None = None
        self.stored: list[tuple[int, int | None]] = []

    def refuse_impossible(self, event: EventRow, state: RedisEventState, where: str) -> None:
        if event.id in self.foreign:
            raise ForeignState(f"planted state for event {event.id} ({where})")

    async def store_recorded(self, event: EventRow, *, issued_before_us: int | None = None) -> Recorded:
        self.stored.append((event.id, issued_before_us))
        if self.failure is not None:
            raise self.failure
        issued = self._redis.issued.get(event.id, 0)
        stored = self._store.stored.setdefault(event.id, set())
        missing = set(range(1, issued - self.young.get(event.id, 0) + 1)) - stored
        stored |= missing
        return Recorded(issued, issued, len(missing), len(stored) == issued)
