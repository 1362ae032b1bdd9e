"""Stopping a worker's background tasks: cancel one, and wait until it has ended."""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
