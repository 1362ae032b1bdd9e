"""Stopping a worker's background tasks: cancel them, and wait until they have ended."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger(__name__)

AGAIN_S = 1.0


async def cancel_and_wait(task: asyncio.Task[Any], again_s: float = AGAIN_S) -> None:
    """Cancel ``task`` and wait until it has ended. Its own CancelledError is not raised
    here; any other exception it ended with is.

    A cancellation delivered inside a library's call can be lost there: a worker stopped
    just after its start once waited forever on its beacon task, which had gone back to
    sleep marked "cancelling" (docs/reliability.md, "SIGTERM right after start"). A task
    still running ``again_s`` after its cancellation is cancelled again, with a warning
    naming it, until it ends."""
    if not task.cancelling():
        task.cancel()
    while not (await asyncio.wait({task}, timeout=again_s))[0]:
        name = task.get_name()
        logger.warning("task %s still runs %.1f s after its cancellation; cancelling it again", name, again_s)
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def cancel_all(tasks: Iterable[asyncio.Task[Any]], again_s: float = AGAIN_S) -> None:
    """Cancel every task at once, then wait for each as ``cancel_and_wait`` does: they stop
    together rather than one after another. A task that ended with a failure is logged with
    its name and does not keep the others from being waited for."""
    tasks = list(tasks)
    for task in tasks:
        if not task.cancelling():
            task.cancel()
    for task in tasks:
        try:
            await cancel_and_wait(task, again_s)
        except Exception:
            logger.exception("task %s failed while it was being stopped", task.get_name())
