"""Stopping background tasks: a cancellation that is lost is delivered again."""

from __future__ import annotations

import asyncio
import logging

import pytest

from service.tasks import cancel_all, cancel_and_wait


async def _periodic(swallow: int, ticks: list[int]) -> None:
    """A periodic loop whose first ``swallow`` cancellations are lost inside its call, as a
    library can lose one, after which it goes back to sleep."""
    while True:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if swallow == 0:
                raise
            swallow -= 1
        ticks.append(1)


async def test_a_task_that_ends_on_its_cancellation_is_waited_for() -> None:
    ticks: list[int] = []
    task = asyncio.get_running_loop().create_task(_periodic(0, ticks))
    await asyncio.sleep(0.05)
    await cancel_and_wait(task, again_s=10)
    assert task.cancelled()


async def test_a_lost_cancellation_is_delivered_again(caplog: pytest.LogCaptureFixture) -> None:
    ticks: list[int] = []
    task = asyncio.get_running_loop().create_task(_periodic(2, ticks), name="beacon")
    await asyncio.sleep(0.05)
    with caplog.at_level(logging.WARNING, logger="service.tasks"):
        await asyncio.wait_for(cancel_and_wait(task, again_s=0.05), timeout=5)
    assert task.cancelled()
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2 and all("task beacon still runs" in text for text in warnings), warnings


async def test_a_task_that_failed_raises_its_failure() -> None:
    async def fails() -> None:
        raise ValueError("broken")

    task = asyncio.get_running_loop().create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="broken"):
        await cancel_and_wait(task)


async def test_the_waiter_itself_can_be_cancelled() -> None:
    task = asyncio.get_running_loop().create_task(_periodic(1, []))
    waiter = asyncio.get_running_loop().create_task(cancel_and_wait(task, again_s=10))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not task.done()  # its cancellation was lost, and the waiter stopped waiting
    await cancel_and_wait(task, again_s=0.01)
    assert task.cancelled()


async def test_all_are_cancelled_at_once_and_a_failed_one_keeps_none_from_stopping(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The tasks stop together; one that failed is logged by name and the rest, among them
    one that loses its first cancellation, are still waited for."""
    loop = asyncio.get_running_loop()
    cancelled_at: dict[str, float] = {}
    stopped_at: dict[str, float] = {}

    async def slow_to_stop(name: str) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled_at[name] = loop.time()
            await asyncio.sleep(0.1)  # the task's own clean-up, after its cancellation
            stopped_at[name] = loop.time()
            raise

    async def fails() -> None:
        raise ValueError("broken")

    tasks = {
        "first": loop.create_task(slow_to_stop("first")),
        "failed": loop.create_task(fails(), name="broken-task"),
        "lossy": loop.create_task(_periodic(1, []), name="lossy"),
        "second": loop.create_task(slow_to_stop("second")),
    }
    await asyncio.sleep(0.05)
    with caplog.at_level(logging.WARNING, logger="service.tasks"):
        await asyncio.wait_for(cancel_all(tasks.values(), again_s=0.5), timeout=5)
    assert all(task.done() for task in tasks.values())
    assert tasks["first"].cancelled() and tasks["second"].cancelled() and tasks["lossy"].cancelled()
    # Cancelled together: the second heard of it before the first had finished stopping.
    assert cancelled_at["second"] < stopped_at["first"]
    assert any("task broken-task failed while it was being stopped" in r.getMessage() for r in caplog.records)
