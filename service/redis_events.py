"""An event's state in Redis outside the issue path: hold it, rebuild it, read it.

The lifecycle (service/lifecycle.py), reconcile and the verification of a Redis use these;
PostgreSQL is the source of every field written here (service/store.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.lock import Lock

from .keys import Keyspace
from .redis_link import Lane, RedisLink

_MERGE_CHUNK = 5000


@dataclass(frozen=True, slots=True)
class EventTimes:
    """The fields an event's Redis state is built from (PostgreSQL is their source)."""

    quantity: int
    starts_at_us: int
    ends_at_us: int  # 0: open-ended
    expire_at_ms: int

    def args(self) -> list[int]:
        return [self.quantity, self.starts_at_us, self.ends_at_us, self.expire_at_ms]


@dataclass(frozen=True, slots=True)
class RedisEventState:
    status: str | None
    quantity: int | None
    starts_at_us: int | None
    ends_at_us: int | None
    issued: int
    records: int
    # The keys are whole, as the issue script checks: seq present, records never above it,
    # none missing while it is above 0. Redis then holds every issue of the event.
    whole: bool = True


class RedisEvents:
    """Hold and rebuild events in Redis, and read their state and records."""

    def __init__(
        self, link: RedisLink, keys: Keyspace, *, other_calls: int = 8, read_lane: bool = False
    ) -> None:
        """``read_lane``: on one Redis, the reads the public routes make (``state``,
        ``shared_state``, ``issue_of``) go over a lane of ``other_calls`` connections of their
        own (service/redis_link.py:Lane), at a fraction of redis-py's CPU per call."""
        self.link = link
        self.redis = link.redis
        self.keys = keys
        # Reads of the issue routes and admin calls: at most this many at once per worker,
        # so a burst of reads cannot exhaust a cluster node's non-blocking pool.
        self._others = asyncio.Semaphore(other_calls)
        self._lane = Lane(link, other_calls) if read_lane and link.cluster is None else None
        # Per event, the readers waiting on the read under way, and that read (held: a task
        # nobody holds can vanish).
        self._state_waiters: dict[int, list[asyncio.Future[RedisEventState]]] = {}
        self._reading: dict[int, asyncio.Task[None]] = {}
        self._asked: dict[int, dict[str, list[asyncio.Future[str | None]]]] = {}
        self._asking: dict[int, asyncio.Task[None]] = {}  # held: a task nobody holds can vanish

    async def warm(self) -> None:
        if self._lane is not None:
            await self._lane.warm()

    async def close(self) -> None:
        if self._lane is not None:
            await self._lane.close()

    def shard(self, event_id: int) -> str:
        """The Redis serving the event now (service/redis_link.py)."""
        return self.link.shard(self.keys.event(event_id).meta)

    async def hold(self, event_id: int, status: str, times: EventTimes) -> str | None:
        keys = self.keys.event(event_id)
        previous = await self.link.run(self.link.hold, [keys.meta], [status, *times.args()])
        return previous or None

    async def merge_records(self, event_id: int, records: Sequence[tuple[str, int, int]]) -> None:
        """Add (user, ordinal, issued_at_us) records Redis lacks; never overwrites one."""
        users_key = self.keys.event(event_id).users
        for start in range(0, len(records), _MERGE_CHUNK):
            async with self.redis.pipeline(transaction=False) as pipe:
                for user, ordinal, issued_at_us in records[start : start + _MERGE_CHUNK]:
                    pipe.hsetnx(users_key, user, f"{ordinal}:{issued_at_us}")
                await pipe.execute()

    async def finish_sync(
        self, event_id: int, status: str, times: EventTimes, max_ordinal: int
    ) -> tuple[int, int]:
        keys = self.keys.event(event_id)
        seq, records = await self.link.run(
            self.link.finish_sync, [keys.meta, keys.seq, keys.users], [status, *times.args(), max_ordinal]
        )
        return int(seq), int(records)

    async def set_status(self, event_id: int, status: str) -> None:
        await self.redis.hset(self.keys.event(event_id).meta, "status", status)

    async def delete(self, event_id: int) -> None:
        keys = self.keys.event(event_id)
        await self.redis.delete(keys.meta, keys.seq, keys.users)

    async def state(self, event_id: int) -> RedisEventState:
        keys = self.keys.event(event_id)
        meta = ("HMGET", keys.meta, "status", "quantity", "starts_at", "ends_at")
        (status, quantity, starts_at, ends_at), seq, records = await self._read(
            meta, ("GET", keys.seq), ("HLEN", keys.users)
        )
        return RedisEventState(
            status=status,
            quantity=_int(quantity),
            starts_at_us=_int(starts_at),
            ends_at_us=_int(ends_at),
            issued=int(seq or 0),
            records=int(records),
            whole=seq is not None and int(records) <= int(seq) and (int(seq) == 0 or int(records) > 0),
        )

    async def issued_of(self, event_ids: Sequence[int]) -> dict[int, int | None]:
        """Per event, the ordinals Redis has handed out, or None where Redis holds no state
        of it (never opened, closed, or lost): one batched read for all of them."""
        commands: list[tuple[str, ...]] = []
        for event_id in event_ids:
            keys = self.keys.event(event_id)
            commands += [("HGET", keys.meta, "status"), ("GET", keys.seq)]
        replies = await self._read(*commands) if commands else []
        return {
            event_id: None if status is None else int(seq or 0)
            for event_id, status, seq in zip(event_ids, replies[::2], replies[1::2], strict=True)
        }

    async def shared_state(self, event_id: int) -> RedisEventState:
        """``state`` for readers that accept it up to one round trip old (a sale page
        polling the stock): the callers that ask while a read of the event is under way
        share that read, so a stampede of readers costs Redis one read per round trip. A
        reader that gives up (its client left) leaves the read to the others."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[RedisEventState] = loop.create_future()
        waiters = self._state_waiters.get(event_id)
        if waiters is not None:
            waiters.append(waiter)
        else:
            self._state_waiters[event_id] = [waiter]
            self._reading[event_id] = loop.create_task(self._read_state(event_id))
        return await waiter

    async def _read_state(self, event_id: int) -> None:
        try:
            state = await self.state(event_id)
        except BaseException as exc:  # every waiter gets the failure (503)
            del self._reading[event_id]
            _fail(self._state_waiters.pop(event_id), exc)
            if not isinstance(exc, Exception):
                raise
            return
        del self._reading[event_id]
        for waiter in self._state_waiters.pop(event_id):
            if not waiter.done():
                waiter.set_result(state)

    async def record(self, event_id: int, user_id: str) -> tuple[int, int] | None:
        async with self._others:
            value = await self.redis.hget(self.keys.event(event_id).users, user_id)
        return None if value is None else parse_record(str(value))

    async def issue_of(self, event_id: int, user_id: str) -> tuple[tuple[int, int] | None, bool]:
        """The user's (ordinal, issued_at_us) in Redis, and whether Redis holds every issue
        of the event (open there, keys whole), so that a missing record means the user holds
        no coupon. Users asking about one event at once share one HMGET; the event's keys
        are read only for a user without a record, and shared as ``shared_state`` is."""
        value = await self._record_value(event_id, user_id)
        if value is not None:
            return parse_record(str(value)), True
        state = await self.shared_state(event_id)
        return None, state.status == "open" and state.whole

    async def _record_value(self, event_id: int, user_id: str) -> str | None:
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._asked.setdefault(event_id, {}).setdefault(user_id, []).append(future)
        if event_id not in self._asking:
            self._asking[event_id] = asyncio.get_running_loop().create_task(self._read_records(event_id))
        return await future

    async def _read_records(self, event_id: int) -> None:
        """One HMGET per round trip for every user asked about meanwhile, as concurrent
        issues share one decision; runs until nobody is waiting."""
        users_key = self.keys.event(event_id).users
        try:
            while batch := self._asked.pop(event_id, None):
                users = list(batch)
                try:
                    (values,) = await self._read(("HMGET", users_key, *users))
                except BaseException as exc:  # every waiter gets the failure (503)
                    for futures in batch.values():
                        _fail(futures, exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for user, value in zip(users, values, strict=True):
                    for future in batch[user]:
                        if not future.done():
                            future.set_result(value)
        finally:
            # No await since the last pop found nobody: no request can be left waiting,
            # unless this task itself was cancelled (the worker stops).
            del self._asking[event_id]
            for futures in self._asked.pop(event_id, {}).values():
                for future in futures:
                    future.cancel()

    async def _read(self, *commands: tuple[str, ...]) -> list[Any]:
        if self._lane is not None:
            return _raised(await self._lane.call(*commands))
        async with self._others, self.redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            replies: list[Any] = await pipe.execute()
            return replies

    async def records(self, event_id: int) -> AsyncIterator[tuple[str, int, int]]:
        """Every (user, ordinal, issued_at_us) Redis holds for the event."""
        async for user, value in self.redis.hscan_iter(self.keys.event(event_id).users, count=5000):
            ordinal, issued_at_us = parse_record(str(value))
            yield str(user), ordinal, issued_at_us

    def lock(self, name: str, timeout_s: float) -> Lock:
        lock: Lock = self.redis.lock(name, timeout=timeout_s, blocking=False)
        return lock


def _fail(waiters: Iterable[asyncio.Future[Any]], exc: BaseException) -> None:
    """Hands a shared read's failure to the readers still waiting on it."""
    for waiter in waiters:
        if waiter.done():
            continue
        if isinstance(exc, asyncio.CancelledError):
            waiter.cancel()
        else:
            waiter.set_exception(exc)


def parse_record(value: str) -> tuple[int, int]:
    ordinal, _, issued_at_us = value.partition(":")
    return int(ordinal), int(issued_at_us)


def _raised(replies: list[Any]) -> list[Any]:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)
