"""Joins the issue requests that arrive together in a worker into one decision per event.

The first request of an event in a loop turn schedules a dispatch for the next turn, so an
idle loop adds no wait. One decision per event is in flight at a time, and at most
``max_inflight`` in all; requests arriving meanwhile queue and leave together when their
event's decision returns, so batches grow with load (a Redis round trip and a script call
shared, where a moderate rate would otherwise pay one per request) and the number of Redis
connections stays bounded however many requests are in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Result = TypeVar("Result")
Decide = Callable[[int, list[str]], Awaitable[Sequence[Result]]]


class Coalescer(Generic[Result]):
    def __init__(self, decide: Decide[Result], *, max_batch: int, max_inflight: int) -> None:
        if max_batch < 1 or max_inflight < 1:
            raise ValueError(f"max_batch and max_inflight must be positive, got {max_batch}, {max_inflight}")
        self._decide = decide
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._pending: dict[int, list[tuple[str, asyncio.Future[Result]]]] = {}
        self._inflight = 0
        self._deciding: set[int] = set()  # events with a decision in flight
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Set when the worker stops: what is submitted later is not decided (see close).
        self.closed = False
        # Bound on first use. asyncio.get_running_loop() costs a getpid() system call per
        # call on Python 3.11, several microseconds a request under load (py-spy --native).
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def waiting(self) -> int:
        return sum(len(batch) for batch in self._pending.values())

    def submit(self, event_id: int, user_id: str) -> asyncio.Future[Result]:
        if self.closed:
            raise RuntimeError("the coalescer is closed: the worker is stopping")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        batch = self._pending.get(event_id)
        if batch is None:
            self._pending[event_id] = [(user_id, future)]
        else:
            batch.append((user_id, future))
        if event_id not in self._deciding:  # else its decision's return dispatches it
            self._schedule(loop)
        return future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled and self._inflight < self._max_inflight and self._pending:
            self._scheduled = True
            loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._scheduled = False
        loop = self._loop
        assert loop is not None
        for event_id in list(self._pending):
            if self._inflight >= self._max_inflight:
                break
            if event_id in self._deciding:
                continue
            waiting = self._pending.pop(event_id)
            batch = waiting[: self._max_batch]
            if len(waiting) > self._max_batch:
                # Back of the line: events take turns when several are busy.
                self._pending[event_id] = waiting[self._max_batch :]
            self._inflight += 1
            self._deciding.add(event_id)
            task = loop.create_task(self._run(event_id, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, event_id: int, batch: list[tuple[str, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._decide(event_id, [user for user, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - every failure goes to the waiting requests
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._inflight -= 1
            self._deciding.discard(event_id)
            assert self._loop is not None
            self._schedule(self._loop)

    async def close(self) -> None:
        """Refuse what comes next, and wait for the decisions under way and those already
        queued: their issues must reach the buffer before the writer drains it (I4)."""
        self.closed = True
        while self._tasks or self._pending:
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            else:
                await asyncio.sleep(0)  # a dispatch is scheduled for the next turn
